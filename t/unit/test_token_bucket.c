/*
 * Unit tests of apigw_token_bucket: rate and burst parsing, the precision
 * check, bucket keys, reply decoding, header values and their rounding,
 * the choice of the tightest policy and the local deny cache.  The script
 * itself runs against Redis in t/integration/test_token_bucket_script.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "apigw_token_bucket.h"

#define S(lit)  (const unsigned char *) (lit), sizeof(lit) - 1

static apigw_str_t
str(const char *p, size_t len)
{
    apigw_str_t  s;

    s.data = (unsigned char *) p;
    s.len = len;

    return s;
}

#define STR(lit)  str(lit, sizeof(lit) - 1)


static apigw_tb_result_t
res(int allowed, int64_t remaining, int64_t limit, int64_t reset_ms,
    int64_t retry_ms, int64_t now_ms)
{
    apigw_tb_result_t  r;

    r.allowed = allowed;
    r.remaining = remaining;
    r.limit = limit;
    r.reset_ms = reset_ms;
    r.retry_after_ms = retry_ms;
    r.now_ms = now_ms;

    return r;
}


/* -- rates and bursts ------------------------------------------------------ */

static void
rate_ok(const unsigned char *p, size_t len, uint64_t tokens, uint64_t period)
{
    apigw_rate_t  rate;

    memset(&rate, 0xaa, sizeof(rate));
    assert_null(apigw_rate_parse(p, len, &rate));
    assert_int_equal(rate.tokens, tokens);
    assert_int_equal(rate.period_ms, period);
}


static const char *
rate_bad(const unsigned char *p, size_t len)
{
    const char    *err;
    apigw_rate_t   rate = { 7, 7 };

    err = apigw_rate_parse(p, len, &rate);
    assert_non_null(err);
    assert_true(strlen(err) > 10);

    /* a refused rate leaves the output alone */
    assert_int_equal(rate.tokens, 7);
    assert_int_equal(rate.period_ms, 7);

    return err;
}


static void
test_rate_parse_valid(void **state)
{
    rate_ok(S("10r/s"), 10, 1000);
    rate_ok(S("1r/s"), 1, 1000);
    rate_ok(S("100r/m"), 100, 60000);
    rate_ok(S("5r/h"), 5, 3600000);
    rate_ok(S("7r/d"), 7, 86400000);
    rate_ok(S("010r/s"), 10, 1000);
    rate_ok(S("1000000000r/s"), 1000000000, 1000);
    rate_ok(S("1000000000r/d"), 1000000000, 86400000);

    /* only len bytes count: no NUL needed */
    rate_ok((const unsigned char *) "3r/mXYZ", 4, 3, 60000);
}


static void
test_rate_parse_invalid(void **state)
{
    assert_non_null(strstr(rate_bad(S("")), "empty"));
    assert_non_null(apigw_rate_parse(NULL, 0, NULL));

    /* no or zero number: the count message */
    assert_non_null(strstr(rate_bad(S("r/s")), "number of requests"));
    assert_non_null(strstr(rate_bad(S("0r/s")), "from 1"));
    assert_non_null(strstr(rate_bad(S("000r/s")), "from 1"));
    rate_bad(S("-1r/s"));
    rate_bad(S("+1r/s"));
    rate_bad(S(" 1r/s"));

    /* overflow: past the cap, and far past 2^64 */
    assert_non_null(strstr(rate_bad(S("1000000001r/s")), "1000000000"));
    rate_bad(S("18446744073709551617r/s"));
    rate_bad(S("99999999999999999999999999999999999999r/s"));

    /* garbage after the number */
    assert_non_null(strstr(rate_bad(S("10")), "r/s, r/m, r/h or r/d"));
    rate_bad(S("10r"));
    rate_bad(S("10r/"));
    rate_bad(S("10 r/s"));
    rate_bad(S("10r/s "));
    rate_bad(S("10r/ss"));
    rate_bad(S("10R/S"));
    rate_bad(S("10r\\s"));
    rate_bad(S("1.5r/s"));
    rate_bad(S("10/s"));
    rate_bad(S("10r/s\0"));
    assert_non_null(strstr(rate_bad(S("10r/x")), "s, m, h or d"));
    rate_bad(S("10r/M"));
}


static void
test_burst_parse(void **state)
{
    uint64_t  b;

    b = 0;
    assert_null(apigw_burst_parse(S("1"), &b));
    assert_int_equal(b, 1);
    assert_null(apigw_burst_parse(S("50"), &b));
    assert_int_equal(b, 50);
    assert_null(apigw_burst_parse(S("1000000000"), &b));
    assert_int_equal(b, 1000000000);

    b = 42;
    assert_non_null(apigw_burst_parse(S(""), &b));
    assert_non_null(apigw_burst_parse(NULL, 0, &b));
    assert_non_null(apigw_burst_parse(S("0"), &b));
    assert_non_null(apigw_burst_parse(S("-1"), &b));
    assert_non_null(apigw_burst_parse(S("1.5"), &b));
    assert_non_null(apigw_burst_parse(S("1e3"), &b));
    assert_non_null(apigw_burst_parse(S("10 "), &b));
    assert_non_null(apigw_burst_parse(S("10r/s"), &b));
    assert_non_null(apigw_burst_parse(S("1000000001"), &b));
    assert_non_null(apigw_burst_parse(S("184467440737095516160"), &b));
    assert_int_equal(b, 42);
}


static void
test_check(void **state)
{
    apigw_rate_t  r;

    r.tokens = 10;
    r.period_ms = 1000;
    assert_null(apigw_tb_check(10, &r));
    assert_null(apigw_tb_check(1000000000, &r));
    assert_non_null(apigw_tb_check(0, &r));
    assert_non_null(apigw_tb_check(1000000001, &r));

    /* 1r/d: one token is 86400000 units; 2^53 / 86400000 = 104249991 */
    r.tokens = 1;
    r.period_ms = 86400000;
    assert_null(apigw_tb_check(104249991, &r));
    assert_non_null(strstr(apigw_tb_check(104249992, &r), "burst"));

    /* 100000r/d: gcd 100000, one token is 864 units */
    r.tokens = 100000;
    assert_null(apigw_tb_check(1000000000, &r));

    /* 7r/d: gcd 1, the same 86400000 units a token as 1r/d */
    r.tokens = 7;
    assert_null(apigw_tb_check(104249991, &r));
    assert_non_null(apigw_tb_check(104249992, &r));

    /* 7r/m: 60000 units a token, any burst up to the cap fits */
    r.period_ms = 60000;
    assert_null(apigw_tb_check(1000000000, &r));

    r.tokens = 0;
    assert_non_null(apigw_tb_check(10, &r));
    r.tokens = 1;
    r.period_ms = 0;
    assert_non_null(apigw_tb_check(10, &r));
}


static void
test_name_valid(void **state)
{
    assert_true(apigw_tb_name_valid(S("per_second")));
    assert_true(apigw_tb_name_valid(S("api.v1-daily")));
    assert_true(apigw_tb_name_valid(S(
        "a234567890123456789012345678901234567890123456789012345678901234")));
    assert_false(apigw_tb_name_valid(S(
        "a2345678901234567890123456789012345678901234567890123456789012345")));
    assert_false(apigw_tb_name_valid(S("")));
    assert_false(apigw_tb_name_valid(S("a b")));
    assert_false(apigw_tb_name_valid(S("a\"b")));
    assert_false(apigw_tb_name_valid(S("a}b")));
    assert_false(apigw_tb_name_valid(S("a\0b")));
}


/* -- keys ------------------------------------------------------------------ */

static void
key_is(const apigw_str_t *prefix, const apigw_str_t *policy,
    const apigw_str_t *key, const unsigned char *want, size_t wantlen)
{
    size_t         n;
    unsigned char  buf[512];

    n = apigw_tb_key(NULL, 0, prefix, policy, key);
    assert_int_equal(n, wantlen);
    assert_true(n <= APIGW_TB_KEY_LEN(prefix->len, policy->len));

    /* too small a buffer: measured, nothing written */
    memset(buf, 'Z', sizeof(buf));
    assert_int_equal(apigw_tb_key(buf, n - 1, prefix, policy, key), n);
    assert_int_equal(buf[0], 'Z');

    memset(buf, 'Z', sizeof(buf));
    assert_int_equal(apigw_tb_key(buf, n, prefix, policy, key), n);
    assert_memory_equal(buf, want, n);
    assert_int_equal(buf[n], 'Z');
}


static void
test_key(void **state)
{
    apigw_str_t  prefix = STR("apigw:");
    apigw_str_t  empty = STR("");
    apigw_str_t  policy = STR("per_sec");
    apigw_str_t  key = STR("acme");
    apigw_str_t  bin = STR("a\0}{b\r\n\xff");
    apigw_str_t  brace = STR("}x");
    char         long_key[APIGW_TB_KEY_MAX + 1];
    apigw_str_t  lk;

    key_is(&prefix, &policy, &key, S("apigw:{rl:acme}:per_sec"));
    key_is(&empty, &policy, &key, S("{rl:acme}:per_sec"));
    key_is(&prefix, &empty, &key, S("apigw:{rl:acme}:"));

    /* binary bytes copied as they are, NUL and braces included */
    key_is(&prefix, &policy, &bin,
           S("apigw:{rl:a\0}{b\r\n\xff}:per_sec"));

    /* a key starting with '}' still leaves a non-empty hash tag ("rl:") */
    key_is(&prefix, &policy, &brace, S("apigw:{rl:}x}:per_sec"));

    /* APIGW_TB_KEY_MAX bytes stay literal, one more is hashed */
    memset(long_key, 'a', sizeof(long_key));
    lk = str(long_key, APIGW_TB_KEY_MAX);
    assert_int_equal(apigw_tb_key(NULL, 0, &prefix, &policy, &lk),
                     6 + 4 + APIGW_TB_KEY_MAX + 2 + 7);

    lk.len = APIGW_TB_KEY_MAX + 1;
    key_is(&prefix, &policy, &lk,
           S("apigw:{rlh:c12cb024a2e5551cca0e08fce8f1c5e3"
             "14555cc3fef6329ee994a3db752166ae}:per_sec"));

    /* refused: empty key, '{' in the prefix, '}' in the policy */
    assert_int_equal(apigw_tb_key(NULL, 0, &prefix, &policy, &empty), 0);
    prefix = STR("ap{gw:");
    assert_int_equal(apigw_tb_key(NULL, 0, &prefix, &policy, &key), 0);
    prefix = STR("ap}gw:");
    assert_int_equal(apigw_tb_key(NULL, 0, &prefix, &policy, &key),
                     6 + 4 + 4 + 2 + 7);
    prefix = STR("apigw:");
    policy = STR("a}b");
    assert_int_equal(apigw_tb_key(NULL, 0, &prefix, &policy, &key), 0);
}


/* -- replies --------------------------------------------------------------- */

static void
test_decode(void **state)
{
    apigw_tb_result_t  out[3];
    long long          v[12] = { 1, 4, 5, 200, 0, 1700000000123LL,
                                 0, 0, 10, 1000, 100, 1700000000123LL };
    long long          bad[6];

    assert_int_equal(apigw_tb_decode(out, 3, v, 6), 1);
    assert_int_equal(out[0].allowed, 1);
    assert_int_equal(out[0].remaining, 4);
    assert_int_equal(out[0].limit, 5);
    assert_int_equal(out[0].reset_ms, 200);
    assert_int_equal(out[0].retry_after_ms, 0);
    assert_int_equal(out[0].now_ms, 1700000000123LL);

    assert_int_equal(apigw_tb_decode(out, 3, v, 12), 2);
    assert_int_equal(out[1].allowed, 0);
    assert_int_equal(out[1].limit, 10);
    assert_int_equal(out[1].retry_after_ms, 100);
    assert_false(apigw_tb_all_allowed(out, 2));
    assert_true(apigw_tb_all_allowed(out, 1));

    /* counts */
    assert_int_equal(apigw_tb_decode(out, 3, v, 0), -1);
    assert_int_equal(apigw_tb_decode(out, 3, v, 5), -1);
    assert_int_equal(apigw_tb_decode(out, 3, v, 7), -1);
    assert_int_equal(apigw_tb_decode(out, 1, v, 12), -1);

    /* values */
#define BAD(i, val)                                                           \
    memcpy(bad, v, sizeof(bad));                                              \
    bad[i] = (val);                                                           \
    assert_int_equal(apigw_tb_decode(out, 3, bad, 6), -1)

    BAD(0, 2);
    BAD(0, -1);
    BAD(1, -1);
    BAD(1, 6);                  /* remaining over the limit */
    BAD(2, 0);
    BAD(2, 1000000001);
    BAD(3, -1);
    BAD(3, 9007199254740993LL);
    BAD(4, -5);
    BAD(5, 0);
    BAD(5, -1700000000000LL);
#undef BAD
}


/* -- headers --------------------------------------------------------------- */

#define HDR_IS(fn, r, want)                                                   \
    do {                                                                      \
        unsigned char  b_[64];                                                \
        size_t         n_;                                                    \
        memset(b_, 'Z', sizeof(b_));                                          \
        n_ = fn(NULL, 0, r);                                                  \
        assert_int_equal(n_, sizeof(want) - 1);                               \
        assert_int_equal(fn(b_, n_ - 1, r), n_);                              \
        assert_int_equal(b_[0], 'Z');                                         \
        assert_int_equal(fn(b_, sizeof(b_), r), n_);                          \
        assert_memory_equal(b_, want, n_);                                    \
        assert_int_equal(b_[n_], 'Z');                                        \
    } while (0)


static void
test_headers_legacy(void **state)
{
    apigw_tb_result_t  r;
    unsigned char      buf[8];

    r = res(1, 4, 5, 200, 0, 1700000000123LL);
    HDR_IS(apigw_tb_hdr_limit, &r, "5");
    HDR_IS(apigw_tb_hdr_remaining, &r, "4");
    HDR_IS(apigw_tb_hdr_reset, &r, "1700000001");

    /* allowed: no Retry-After at all */
    assert_int_equal(apigw_tb_hdr_retry_after(NULL, 0, &r), 0);
    assert_int_equal(apigw_tb_hdr_retry_after(buf, sizeof(buf), &r), 0);
    assert_int_equal(apigw_tb_retry_after_s(&r), 0);

    r = res(0, 0, 1000000000, 12345, 1001, 1700000000000LL);
    HDR_IS(apigw_tb_hdr_limit, &r, "1000000000");
    HDR_IS(apigw_tb_hdr_remaining, &r, "0");
    HDR_IS(apigw_tb_hdr_reset, &r, "1700000013");
    HDR_IS(apigw_tb_hdr_retry_after, &r, "2");
}


static void
test_rounding(void **state)
{
    apigw_tb_result_t  r;

    /* Retry-After rounds up and is never 0 on a refusal */
    r = res(0, 0, 10, 100, 1, 1700000000000LL);
    assert_int_equal(apigw_tb_retry_after_s(&r), 1);
    HDR_IS(apigw_tb_hdr_retry_after, &r, "1");
    r.retry_after_ms = 0;           /* never from the script; still 1 */
    HDR_IS(apigw_tb_hdr_retry_after, &r, "1");
    r.retry_after_ms = 999;
    assert_int_equal(apigw_tb_retry_after_s(&r), 1);
    r.retry_after_ms = 1000;
    assert_int_equal(apigw_tb_retry_after_s(&r), 1);
    r.retry_after_ms = 1001;
    assert_int_equal(apigw_tb_retry_after_s(&r), 2);
    r.retry_after_ms = 86400000;
    HDR_IS(apigw_tb_hdr_retry_after, &r, "86400");

    /* Reset: the epoch second at or after the instant the bucket is full */
    r = res(1, 9, 10, 877, 0, 1700000000123LL);
    assert_int_equal(apigw_tb_reset_epoch(&r), 1700000001);
    r.reset_ms = 878;
    assert_int_equal(apigw_tb_reset_epoch(&r), 1700000002);
    r.reset_ms = 0;                 /* full: now, rounded up */
    assert_int_equal(apigw_tb_reset_epoch(&r), 1700000001);
    r.now_ms = 1700000000000LL;
    assert_int_equal(apigw_tb_reset_epoch(&r), 1700000000);

    /* seconds until full (RateLimit t=) */
    r.reset_ms = 0;
    assert_int_equal(apigw_tb_reset_s(&r), 0);
    r.reset_ms = 1;
    assert_int_equal(apigw_tb_reset_s(&r), 1);
    r.reset_ms = 1000;
    assert_int_equal(apigw_tb_reset_s(&r), 1);
    r.reset_ms = 1001;
    assert_int_equal(apigw_tb_reset_s(&r), 2);
}


static void
test_window(void **state)
{
    apigw_rate_t  r;

    r.tokens = 10;
    r.period_ms = 1000;
    assert_int_equal(apigw_tb_window_s(10, &r), 1);
    assert_int_equal(apigw_tb_window_s(50, &r), 5);
    assert_int_equal(apigw_tb_window_s(5, &r), 1);     /* 0.5 s, up */
    assert_int_equal(apigw_tb_window_s(11, &r), 2);    /* 1.1 s, up */

    r.tokens = 100;
    r.period_ms = 60000;
    assert_int_equal(apigw_tb_window_s(100, &r), 60);

    r.tokens = 7;
    assert_int_equal(apigw_tb_window_s(10, &r), 86);   /* 85.714 s */

    r.tokens = 1000;
    r.period_ms = 86400000;
    assert_int_equal(apigw_tb_window_s(1000, &r), 86400);
    assert_int_equal(apigw_tb_window_s(1000000000, &r), 86400000000LL);
}


static void
sf_is(size_t (*fn)(unsigned char *, size_t, const apigw_str_t *,
    const apigw_tb_result_t *), const apigw_str_t *name,
    const apigw_tb_result_t *r, const unsigned char *want, size_t wantlen)
{
    size_t         n;
    unsigned char  buf[256];

    n = fn(NULL, 0, name, r);
    assert_int_equal(n, wantlen);
    assert_true(n <= APIGW_TB_SF_LEN(name->len));

    memset(buf, 'Z', sizeof(buf));
    assert_int_equal(fn(buf, n - 1, name, r), n);
    assert_int_equal(buf[0], 'Z');
    assert_int_equal(fn(buf, n, name, r), n);
    assert_memory_equal(buf, want, n);
    assert_int_equal(buf[n], 'Z');
}


static void
policy_is(const apigw_str_t *name, uint64_t cap, uint64_t tokens,
    uint64_t period, const unsigned char *want, size_t wantlen)
{
    size_t         n;
    apigw_rate_t   r;
    unsigned char  buf[256];

    r.tokens = tokens;
    r.period_ms = period;

    n = apigw_tb_hdr_policy(NULL, 0, name, cap, &r);
    assert_int_equal(n, wantlen);
    assert_true(n <= APIGW_TB_SF_LEN(name->len));

    memset(buf, 'Z', sizeof(buf));
    assert_int_equal(apigw_tb_hdr_policy(buf, n - 1, name, cap, &r), n);
    assert_int_equal(buf[0], 'Z');
    assert_int_equal(apigw_tb_hdr_policy(buf, n, name, cap, &r), n);
    assert_memory_equal(buf, want, n);
    assert_int_equal(buf[n], 'Z');
}


static void
test_headers_ietf(void **state)
{
    apigw_tb_result_t  r;
    apigw_str_t        name = STR("per_min");
    apigw_str_t        odd = STR("a\"b\\c");
    apigw_str_t        ctl = STR("a\tb\x7f\xc3\xa9");

    policy_is(&name, 100, 100, 60000, S("\"per_min\";q=100;w=60"));
    policy_is(&name, 5, 10, 1000, S("\"per_min\";q=5;w=1"));
    policy_is(&name, 1000000000, 1, 1000,
              S("\"per_min\";q=1000000000;w=1000000000"));

    /* an sf-string escapes " and \, and carries nothing unprintable */
    policy_is(&odd, 10, 10, 1000, S("\"a\\\"b\\\\c\";q=10;w=1"));
    policy_is(&ctl, 10, 10, 1000, S("\"a?b???\";q=10;w=1"));

    r = res(1, 50, 100, 30000, 0, 1700000000000LL);
    sf_is(apigw_tb_hdr_ratelimit, &name, &r, S("\"per_min\";r=50;t=30"));

    r = res(0, 0, 100, 59401, 601, 1700000000000LL);
    sf_is(apigw_tb_hdr_ratelimit, &name, &r, S("\"per_min\";r=0;t=60"));

    r = res(1, 9, 10, 1, 0, 1700000000000LL);
    sf_is(apigw_tb_hdr_ratelimit, &odd, &r, S("\"a\\\"b\\\\c\";r=9;t=1"));

    /* full bucket: t=0 */
    r = res(1, 10, 10, 0, 0, 1700000000000LL);
    sf_is(apigw_tb_hdr_ratelimit, &name, &r, S("\"per_min\";r=10;t=0"));
}


/* -- several policies ------------------------------------------------------ */

static void
test_tightest(void **state)
{
    apigw_tb_result_t  r[4];

    memset(r, 0, sizeof(r));

    assert_int_equal(apigw_tb_tightest(r, 0), 0);

    r[0] = res(1, 5, 10, 500, 0, 1);
    assert_int_equal(apigw_tb_tightest(r, 1), 0);

    /* smallest remaining / limit: 90/1000 beats 5/10 */
    r[1] = res(1, 90, 1000, 500, 0, 1);
    assert_int_equal(apigw_tb_tightest(r, 2), 1);

    /* a refusal beats any ratio, wherever it is */
    r[2] = res(0, 3, 4, 500, 250, 1);
    assert_int_equal(apigw_tb_tightest(r, 3), 2);

    /* among refusals the longest wait: Retry-After must cover both */
    r[3] = res(0, 0, 1000, 5000, 900, 1);
    assert_int_equal(apigw_tb_tightest(r, 4), 3);
    r[3].retry_after_ms = 100;
    assert_int_equal(apigw_tb_tightest(r, 4), 2);

    /* equal ratio: the smaller remaining */
    r[0] = res(1, 10, 100, 1, 0, 1);
    r[1] = res(1, 1, 10, 1, 0, 1);
    assert_int_equal(apigw_tb_tightest(r, 2), 1);
    r[0] = res(1, 1, 10, 1, 0, 1);
    r[1] = res(1, 10, 100, 1, 0, 1);
    assert_int_equal(apigw_tb_tightest(r, 2), 0);

    /* all equal: the first */
    r[0] = res(1, 3, 10, 1, 0, 1);
    r[1] = res(1, 3, 10, 1, 0, 1);
    r[2] = res(1, 3, 10, 1, 0, 1);
    assert_int_equal(apigw_tb_tightest(r, 3), 0);

    /* large limits do not overflow the comparison */
    r[0] = res(1, 999999999, 1000000000, 1, 0, 1);
    r[1] = res(1, 999999998, 999999999, 1, 0, 1);
    assert_int_equal(apigw_tb_tightest(r, 2), 1);
}


/* -- local deny cache ------------------------------------------------------ */

static void
test_deny_cache(void **state)
{
    int64_t            until;
    apigw_tb_result_t  r, out;

    /* allowed: nothing to cache */
    r = res(1, 0, 10, 1000, 0, 1700000000000LL);
    assert_int_equal(apigw_tb_deny_until(&r, 5000, 0), 0);
    assert_int_equal(apigw_tb_deny_local(&r, 5000, 0, 5001, &out), 0);

    /* refused: the send time plus the wait, in local time */
    r = res(0, 0, 10, 1000, 100, 1700000000000LL);
    until = apigw_tb_deny_until(&r, 5000, 0);
    assert_int_equal(until, 5100);
    assert_int_equal(apigw_tb_deny_until(&r, 5000, 30), 5030);
    assert_int_equal(apigw_tb_deny_until(&r, 5000, 1000), 5100);

    memset(&out, 0, sizeof(out));
    assert_int_equal(apigw_tb_deny_local(&r, 5000, until, 5040, &out), 1);
    assert_int_equal(out.allowed, 0);
    assert_int_equal(out.limit, 10);
    assert_int_equal(out.remaining, 0);
    assert_int_equal(out.retry_after_ms, 60);
    assert_int_equal(out.reset_ms, 960);
    assert_int_equal(out.now_ms, 1700000000040LL);
    assert_int_equal(apigw_tb_retry_after_s(&out), 1);

    /* the last local ms still refuses with Retry-After >= 1 */
    assert_int_equal(apigw_tb_deny_local(&r, 5000, until, 5099, &out), 1);
    assert_int_equal(out.retry_after_ms, 1);

    /* from the deadline on, ask Redis */
    assert_int_equal(apigw_tb_deny_local(&r, 5000, until, 5100, &out), 0);
    assert_int_equal(apigw_tb_deny_local(&r, 5000, until, 9999, &out), 0);

    /* a local clock before the send time counts as no time passed */
    assert_int_equal(apigw_tb_deny_local(&r, 5000, until, 4000, &out), 1);
    assert_int_equal(out.retry_after_ms, 100);
    assert_int_equal(out.now_ms, 1700000000000LL);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_parse_valid),
        cmocka_unit_test(test_rate_parse_invalid),
        cmocka_unit_test(test_burst_parse),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_name_valid),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_headers_legacy),
        cmocka_unit_test(test_rounding),
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_headers_ietf),
        cmocka_unit_test(test_tightest),
        cmocka_unit_test(test_deny_cache),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
