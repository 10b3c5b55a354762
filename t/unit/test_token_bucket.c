/*
 * Unit tests of apigw_token_bucket: rate and burst parsing, the precision
 * check, bucket keys and their slot parts, script batches (building,
 * arguments, reply decoding), header values and their rounding,
 * the choice of the tightest policy and the local deny cache.  The script
 * itself runs against Redis in t/integration/test_token_bucket_script.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <limits.h>
#include <stdio.h>
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


/* -- batches: building ----------------------------------------------------- */

static apigw_tb_item_t
item(const char *bucket, size_t len, uint64_t cap, uint64_t tokens,
    uint64_t period, uint64_t cost)
{
    apigw_tb_item_t  it;

    it.bucket = (const unsigned char *) bucket;
    it.bucket_len = len;
    it.capacity = cap;
    it.rate.tokens = tokens;
    it.rate.period_ms = period;
    it.cost = cost;

    return it;
}

#define ITEM(lit, cap, tokens, period, cost)                                  \
    item(lit, sizeof(lit) - 1, cap, tokens, period, cost)


/* the arguments of a batch, with a canary after APIGW_TB_BATCH_NUM */
typedef struct {
    size_t         argc;
    const char    *argv[APIGW_TB_BATCH_ARGC + 1];
    size_t         argvlen[APIGW_TB_BATCH_ARGC + 1];
    unsigned char  num[APIGW_TB_BATCH_NUM + 32];
} args_t;

static args_t  args1, args2;


static size_t
args_of(const apigw_tb_batch_t *b, args_t *a)
{
    size_t  i, used;

    memset(a->num, 'Z', sizeof(a->num));
    a->argv[APIGW_TB_BATCH_ARGC] = "canary";
    a->argvlen[APIGW_TB_BATCH_ARGC] = 6;

    a->argc = apigw_tb_batch_argv(b, a->argv, a->argvlen, a->num);

    assert_true(a->argc <= APIGW_TB_BATCH_ARGC);
    assert_string_equal(a->argv[APIGW_TB_BATCH_ARGC], "canary");
    assert_int_equal(a->argvlen[APIGW_TB_BATCH_ARGC], 6);

    for (i = APIGW_TB_BATCH_NUM; i < sizeof(a->num); i++) {
        assert_int_equal(a->num[i], 'Z');
    }

    /* keys first, then numbers packed into num, digits only */
    assert_true(a->argc >= b->nkeys);
    used = 0;

    for (i = b->nkeys; i < a->argc; i++) {
        assert_ptr_equal(a->argv[i], (const char *) a->num + used);
        assert_true(a->argvlen[i] >= 1 && a->argvlen[i] <= 20);
        used += a->argvlen[i];
    }

    assert_true(used <= APIGW_TB_BATCH_NUM);

    for (i = 0; i < used; i++) {
        assert_true(a->num[i] >= '0' && a->num[i] <= '9');
    }

    return a->argc;
}


static void
arg_is(const args_t *a, size_t i, const char *want, size_t len)
{
    assert_true(i < a->argc);
    assert_int_equal(a->argvlen[i], len);
    assert_memory_equal(a->argv[i], want, len);
}

#define ARG_IS(a, i, lit)  arg_is(a, i, lit, sizeof(lit) - 1)


/* the numeric argument i as a number */
static uint64_t
arg_num(const args_t *a, size_t i)
{
    size_t    k;
    uint64_t  n;

    assert_true(i < a->argc);
    n = 0;

    for (k = 0; k < a->argvlen[i]; k++) {
        n = n * 10 + (uint64_t) (a->argv[i][k] - '0');
    }

    return n;
}


static void
args_same(const args_t *x, const args_t *y)
{
    size_t  i;

    assert_int_equal(x->argc, y->argc);

    for (i = 0; i < x->argc; i++) {
        assert_int_equal(x->argvlen[i], y->argvlen[i]);
        assert_memory_equal(x->argv[i], y->argv[i], x->argvlen[i]);
    }
}


static void
test_batch_one(void **state)
{
    apigw_tb_batch_t  b;
    apigw_tb_item_t   it = ITEM("a", 1, 1, 1000, 1);

    apigw_tb_batch_init(&b);
    assert_int_equal(b.nkeys + b.nsets + b.nchecks + b.nitems, 0);

    /* an empty check is no check */
    assert_int_equal(apigw_tb_batch_add(&b, &it, 0), -1);
    assert_int_equal(b.nchecks, 0);

    assert_int_equal(apigw_tb_batch_add(&b, &it, 1), 0);
    assert_int_equal(b.nkeys, 1);
    assert_int_equal(b.nsets, 1);
    assert_int_equal(b.nchecks, 1);
    assert_int_equal(b.nitems, 1);

    /* the smallest call: 1 key, 1 set, 1 check of 1 item */
    assert_int_equal(args_of(&b, &args1), 10);
    assert_ptr_equal(args1.argv[0], it.bucket);
    ARG_IS(&args1, 0, "a");
    ARG_IS(&args1, 1, "1");             /* sets */
    ARG_IS(&args1, 2, "1");             /* capacity */
    ARG_IS(&args1, 3, "1");             /* tokens */
    ARG_IS(&args1, 4, "1000");          /* period_ms */
    ARG_IS(&args1, 5, "1");             /* cost */
    ARG_IS(&args1, 6, "1");             /* checks */
    ARG_IS(&args1, 7, "1");             /* items */
    ARG_IS(&args1, 8, "1");             /* key 1, counted from 1 */
    ARG_IS(&args1, 9, "1");             /* set 1 */

    /* init empties a used batch */
    apigw_tb_batch_init(&b);
    assert_int_equal(b.nkeys + b.nsets + b.nchecks + b.nitems, 0);
}


static void
test_batch_argv(void **state)
{
    apigw_tb_batch_t  b;
    apigw_tb_item_t   c1[2], c2[2];
    char              day[] = "apigw:{rl:acme}:per_day";

    /*
     * Two requests of one key value: the second shares the per_day bucket
     * and its parameters (sent once, named twice) and adds per_min with a
     * cost of 2.  Its per_day key is another copy of the same bytes.
     */
    c1[0] = ITEM("apigw:{rl:acme}:per_sec", 10, 10, 1000, 1);
    c1[1] = ITEM("apigw:{rl:acme}:per_day", 1000, 1000, 86400000, 1);
    c2[0] = item(day, sizeof(day) - 1, 1000, 1000, 86400000, 1);
    c2[1] = ITEM("apigw:{rl:acme}:per_min", 5, 5, 60000, 2);

    apigw_tb_batch_init(&b);
    assert_int_equal(apigw_tb_batch_add(&b, c1, 2), 0);
    assert_int_equal(apigw_tb_batch_add(&b, c2, 2), 0);
    assert_int_equal(b.nkeys, 3);
    assert_int_equal(b.nsets, 3);
    assert_int_equal(b.nchecks, 2);
    assert_int_equal(b.nitems, 4);

    assert_int_equal(args_of(&b, &args1), 3 + 1 + 3 * 4 + 1 + 5 + 5);

    /* keys: the callers' memory, the first copy of each */
    assert_ptr_equal(args1.argv[0], c1[0].bucket);
    assert_ptr_equal(args1.argv[1], c1[1].bucket);
    assert_ptr_equal(args1.argv[2], c2[1].bucket);
    ARG_IS(&args1, 0, "apigw:{rl:acme}:per_sec");
    ARG_IS(&args1, 1, "apigw:{rl:acme}:per_day");
    ARG_IS(&args1, 2, "apigw:{rl:acme}:per_min");

    /* the key count is not an argument: it is b.nkeys */
    ARG_IS(&args1, 3, "3");
    ARG_IS(&args1, 4, "10");
    ARG_IS(&args1, 5, "10");
    ARG_IS(&args1, 6, "1000");
    ARG_IS(&args1, 7, "1");
    ARG_IS(&args1, 8, "1000");
    ARG_IS(&args1, 9, "1000");
    ARG_IS(&args1, 10, "86400000");
    ARG_IS(&args1, 11, "1");
    ARG_IS(&args1, 12, "5");
    ARG_IS(&args1, 13, "5");
    ARG_IS(&args1, 14, "60000");
    ARG_IS(&args1, 15, "2");

    ARG_IS(&args1, 16, "2");            /* checks */
    ARG_IS(&args1, 17, "2");            /* check 1: 2 items */
    ARG_IS(&args1, 18, "1");            /*   per_sec, set 1 */
    ARG_IS(&args1, 19, "1");
    ARG_IS(&args1, 20, "2");            /*   per_day, set 2 */
    ARG_IS(&args1, 21, "2");
    ARG_IS(&args1, 22, "2");            /* check 2: 2 items */
    ARG_IS(&args1, 23, "2");            /*   per_day, set 2 again */
    ARG_IS(&args1, 24, "2");
    ARG_IS(&args1, 25, "3");            /*   per_min, set 3 */
    ARG_IS(&args1, 26, "3");

    /* the arguments depend on the batch only: a second call is the same */
    assert_int_equal(args_of(&b, &args2), args1.argc);
    args_same(&args1, &args2);
}


static void
test_batch_dedupe(void **state)
{
    size_t            i;
    apigw_tb_batch_t  b;
    apigw_tb_item_t   it[8];
    char              copy[] = "k\0a";

    /* keys are compared by their bytes: through NUL, and by length */
    it[0] = ITEM("k\0a", 10, 10, 1000, 1);
    it[1] = ITEM("k\0b", 10, 10, 1000, 1);
    it[2] = item(copy, 3, 10, 10, 1000, 1);
    it[3] = ITEM("k\0ab", 10, 10, 1000, 1);
    it[4] = ITEM("k", 10, 10, 1000, 1);

    apigw_tb_batch_init(&b);
    assert_int_equal(apigw_tb_batch_add(&b, it, 2), 0);
    assert_int_equal(apigw_tb_batch_add(&b, &it[2], 3), 0);
    assert_int_equal(b.nkeys, 4);
    assert_int_equal(b.nsets, 1);
    assert_int_equal(b.nitems, 5);
    assert_int_equal(b.item_key[0], 0);
    assert_int_equal(b.item_key[1], 1);
    assert_int_equal(b.item_key[2], 0);
    assert_int_equal(b.item_key[3], 2);
    assert_int_equal(b.item_key[4], 3);

    args_of(&b, &args1);
    ARG_IS(&args1, 0, "k\0a");
    ARG_IS(&args1, 1, "k\0b");
    ARG_IS(&args1, 2, "k\0ab");
    ARG_IS(&args1, 3, "k");

    /* sets: equal only when all four numbers are */
    it[0] = ITEM("x", 10, 10, 1000, 1);
    it[1] = ITEM("x", 11, 10, 1000, 1);         /* capacity */
    it[2] = ITEM("x", 10, 11, 1000, 1);         /* tokens */
    it[3] = ITEM("x", 10, 10, 60000, 1);        /* period */
    it[4] = ITEM("x", 10, 10, 1000, 2);         /* cost */
    it[5] = ITEM("y", 10, 10, 1000, 1);         /* = it[0] */
    it[6] = ITEM("y", 10, 10, 60000, 1);        /* = it[3] */
    it[7] = ITEM("y", 10, 11, 60000, 1);        /* new */

    /* one check each: a check never names a bucket twice */
    apigw_tb_batch_init(&b);

    for (i = 0; i < 8; i++) {
        assert_int_equal(apigw_tb_batch_add(&b, &it[i], 1), 0);
    }

    assert_int_equal(b.nkeys, 2);
    assert_int_equal(b.nsets, 6);
    assert_int_equal(b.nchecks, 8);
    assert_int_equal(b.nitems, 8);

    assert_int_equal(b.item_set[0], 0);
    assert_int_equal(b.item_set[1], 1);
    assert_int_equal(b.item_set[2], 2);
    assert_int_equal(b.item_set[3], 3);
    assert_int_equal(b.item_set[4], 4);
    assert_int_equal(b.item_set[5], 0);
    assert_int_equal(b.item_set[6], 3);
    assert_int_equal(b.item_set[7], 5);

    /* 2 keys, "6", 6 sets, "8", then "1" and 1 pair per check */
    assert_int_equal(args_of(&b, &args1), 2 + 1 + 24 + 1 + 8 * 3);
    ARG_IS(&args1, 2, "6");
    ARG_IS(&args1, 23, "10");                   /* set 6 */
    ARG_IS(&args1, 24, "11");
    ARG_IS(&args1, 25, "60000");
    ARG_IS(&args1, 26, "1");
    ARG_IS(&args1, 27, "8");
    ARG_IS(&args1, 28, "1");
    ARG_IS(&args1, 29, "1");                    /* x, set 1 */
    ARG_IS(&args1, 30, "1");
    ARG_IS(&args1, 44, "2");                    /* y, set 1 */
    ARG_IS(&args1, 45, "1");
    ARG_IS(&args1, 47, "2");                    /* y, set 4 (period) */
    ARG_IS(&args1, 48, "4");
    ARG_IS(&args1, 50, "2");                    /* y, set 6 */
    ARG_IS(&args1, 51, "6");
}


/* APIGW_TB_BATCH_ITEMS distinct bucket keys */
static char     keys[APIGW_TB_BATCH_ITEMS + 1][16];
static size_t   keys_len[APIGW_TB_BATCH_ITEMS + 1];

static void
keys_make(void)
{
    size_t  i;
    int     n;

    for (i = 0; i <= APIGW_TB_BATCH_ITEMS; i++) {
        n = snprintf(keys[i], sizeof(keys[i]), "{rl:k}:p%zu", i);
        assert_true(n > 0 && (size_t) n < sizeof(keys[i]));
        keys_len[i] = (size_t) n;
    }
}


static void
test_batch_limits(void **state)
{
    size_t            i;
    apigw_tb_batch_t  b;
    apigw_tb_item_t   it[APIGW_TB_BATCH_ITEMS + 1];

    keys_make();

    for (i = 0; i <= APIGW_TB_BATCH_ITEMS; i++) {
        it[i] = item(keys[i], keys_len[i], 10, 10, 1000, 1);
    }

    /* APIGW_TB_BATCH_CHECKS checks, then no more, however small */
    apigw_tb_batch_init(&b);

    for (i = 0; i < APIGW_TB_BATCH_CHECKS; i++) {
        assert_int_equal(apigw_tb_batch_add(&b, &it[i], 1), 0);
    }

    assert_int_equal(apigw_tb_batch_add(&b, &it[0], 1), -1);
    assert_int_equal(apigw_tb_batch_add(&b, &it[200], 1), -1);
    assert_int_equal(b.nchecks, APIGW_TB_BATCH_CHECKS);
    assert_int_equal(b.nitems, APIGW_TB_BATCH_CHECKS);
    assert_int_equal(b.nkeys, APIGW_TB_BATCH_CHECKS);
    assert_int_equal(b.nsets, 1);

    /* APIGW_TB_BATCH_ITEMS items in one check, not one more */
    apigw_tb_batch_init(&b);
    assert_int_equal(apigw_tb_batch_add(&b, it, APIGW_TB_BATCH_ITEMS + 1),
                     -1);
    assert_int_equal(b.nkeys + b.nsets + b.nchecks + b.nitems, 0);
    assert_int_equal(apigw_tb_batch_add(&b, it, APIGW_TB_BATCH_ITEMS), 0);
    assert_int_equal(b.nitems, APIGW_TB_BATCH_ITEMS);
    assert_int_equal(b.nkeys, APIGW_TB_BATCH_ITEMS);
    assert_int_equal(apigw_tb_batch_add(&b, it, 1), -1);
    assert_int_equal(b.nchecks, 1);

    /* a check that does not fit whole is refused, a smaller one fits */
    apigw_tb_batch_init(&b);
    assert_int_equal(apigw_tb_batch_add(&b, it, APIGW_TB_BATCH_ITEMS - 6),
                     0);
    assert_int_equal(apigw_tb_batch_add(&b, &it[APIGW_TB_BATCH_ITEMS - 6],
                                        7), -1);
    assert_int_equal(b.nitems, APIGW_TB_BATCH_ITEMS - 6);
    assert_int_equal(b.nkeys, APIGW_TB_BATCH_ITEMS - 6);
    assert_int_equal(b.nchecks, 1);
    assert_int_equal(apigw_tb_batch_add(&b, &it[APIGW_TB_BATCH_ITEMS - 6],
                                        6), 0);
    assert_int_equal(b.nitems, APIGW_TB_BATCH_ITEMS);
    assert_int_equal(b.nkeys, APIGW_TB_BATCH_ITEMS);
    assert_int_equal(b.nchecks, 2);

    assert_int_equal(args_of(&b, &args1),
                     APIGW_TB_BATCH_ITEMS + 1 + 4 + 1
                     + 2 + 2 * APIGW_TB_BATCH_ITEMS);
    ARG_IS(&args1, APIGW_TB_BATCH_ITEMS + 5, "2");
    ARG_IS(&args1, APIGW_TB_BATCH_ITEMS + 6, "250");
    ARG_IS(&args1, args1.argc - 2, "256");
    ARG_IS(&args1, args1.argc - 1, "1");
}


static void
refused_leaves_batch(apigw_tb_batch_t *b, const apigw_tb_item_t *items,
    size_t n)
{
    size_t  nkeys, nsets, nchecks, nitems;

    nkeys = b->nkeys;
    nsets = b->nsets;
    nchecks = b->nchecks;
    nitems = b->nitems;
    args_of(b, &args1);

    assert_int_equal(apigw_tb_batch_add(b, items, n), -1);

    assert_int_equal(b->nkeys, nkeys);
    assert_int_equal(b->nsets, nsets);
    assert_int_equal(b->nchecks, nchecks);
    assert_int_equal(b->nitems, nitems);
    args_of(b, &args2);
    args_same(&args1, &args2);
}


static void
test_batch_refused(void **state)
{
    size_t            i, pos;
    apigw_tb_batch_t  b;
    apigw_tb_item_t   first[2], check[3], bad[10];

    first[0] = ITEM("{rl:a}:s", 10, 10, 1000, 1);
    first[1] = ITEM("{rl:a}:d", 1000, 1000, 86400000, 1);

    bad[0] = item("{rl:a}:z", 0, 10, 10, 1000, 1);          /* empty key */
    bad[1] = ITEM("{rl:a}:z", 10, 10, 1000, 0);             /* cost 0 */
    bad[2] = ITEM("{rl:a}:z", 10, 10, 1000, 11);            /* cost > cap */
    bad[3] = ITEM("{rl:a}:z", 0, 10, 1000, 0);              /* capacity 0 */
    bad[4] = ITEM("{rl:a}:z", 1000000001, 10, 1000, 1);     /* cap > max */
    bad[5] = ITEM("{rl:a}:z", 10, 0, 1000, 1);              /* tokens 0 */
    bad[6] = ITEM("{rl:a}:z", 10, 1000000001, 1000, 1);     /* > max */
    bad[7] = ITEM("{rl:a}:z", 10, 10, 0, 1);                /* period 0 */
    /* 1r/d: 86400000 units a token, 104249992 tokens pass 2^53 */
    bad[8] = ITEM("{rl:a}:z", 104249992, 1, 86400000, 1);
    bad[9] = ITEM("{rl:a}:z", 10, 10, 9007199254740993ULL, 1);

    apigw_tb_batch_init(&b);
    assert_int_equal(apigw_tb_batch_add(&b, first, 2), 0);

    /* refused wherever the bad item is, after a new key and a new set */
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (pos = 0; pos < 3; pos++) {
            check[0] = ITEM("{rl:a}:new", 7, 7, 60000, 1);
            check[1] = ITEM("{rl:a}:s", 10, 10, 3600000, 2);
            check[2] = ITEM("{rl:a}:d", 1000, 1000, 86400000, 1);
            check[pos] = bad[i];
            refused_leaves_batch(&b, check, 3);
        }

        refused_leaves_batch(&b, &bad[i], 1);
    }

    /* one bucket twice in one check, by the same or another set */
    check[0] = ITEM("{rl:a}:s", 10, 10, 1000, 1);
    check[1] = ITEM("{rl:a}:new", 7, 7, 60000, 1);
    check[2] = ITEM("{rl:a}:s", 10, 10, 1000, 1);
    refused_leaves_batch(&b, check, 3);
    check[2] = ITEM("{rl:a}:s", 20, 10, 1000, 2);
    refused_leaves_batch(&b, check, 3);
    check[0] = ITEM("{rl:a}:q", 10, 10, 1000, 1);
    check[1] = ITEM("{rl:a}:q", 10, 10, 1000, 1);
    refused_leaves_batch(&b, check, 2);

    /* the largest capacity the rate counts exactly is taken */
    check[0] = ITEM("{rl:a}:z", 104249991, 1, 86400000, 104249991);
    assert_int_equal(apigw_tb_batch_add(&b, check, 1), 0);

    /* a good check next: no trace of the refused ones in its indexes */
    check[0] = ITEM("{rl:a}:new", 7, 7, 60000, 1);
    check[1] = ITEM("{rl:a}:s", 10, 10, 1000, 1);
    assert_int_equal(apigw_tb_batch_add(&b, check, 2), 0);
    assert_int_equal(b.nkeys, 4);
    assert_int_equal(b.nsets, 4);
    assert_int_equal(b.nchecks, 3);
    assert_int_equal(b.nitems, 5);

    /* 4 keys, "4", 16, "3", "2" 2 pairs, "1" 1 pair, "2" 2 pairs */
    assert_int_equal(args_of(&b, &args1), 4 + 1 + 16 + 1 + 5 + 3 + 5);
    ARG_IS(&args1, 2, "{rl:a}:z");
    ARG_IS(&args1, 3, "{rl:a}:new");
    ARG_IS(&args1, 4, "4");
    ARG_IS(&args1, 13, "104249991");
    ARG_IS(&args1, 16, "104249991");
    ARG_IS(&args1, 17, "7");
    ARG_IS(&args1, 21, "3");
    ARG_IS(&args1, 27, "1");
    ARG_IS(&args1, 28, "3");
    ARG_IS(&args1, 29, "3");
    ARG_IS(&args1, 30, "2");
    ARG_IS(&args1, 31, "4");            /* new: key 4, set 4 */
    ARG_IS(&args1, 32, "4");
    ARG_IS(&args1, 33, "1");            /* s: key 1, set 1 */
    ARG_IS(&args1, 34, "1");
}


/*
 * The largest arguments there are: every item its own key and its own set
 * of the longest numbers apigw_tb_check() accepts (capacity, tokens and
 * cost of 10 digits, a period of 16), as many checks as allowed.
 */
static void
max_batch(size_t per_check)
{
    size_t            i, c, a, k;
    apigw_rate_t      rate;
    apigw_tb_batch_t  b;
    apigw_tb_item_t   it[APIGW_TB_BATCH_ITEMS];

    keys_make();

    for (i = 0; i < APIGW_TB_BATCH_ITEMS; i++) {
        /* (9007199 - i) * 10^9 ms: 16 digits, 9007199 - i units a token */
        it[i] = item(keys[i], keys_len[i], 1000000000, 1000000000,
                     (9007199 - i) * 1000000000ULL, 1000000000);
        rate = it[i].rate;
        assert_null(apigw_tb_check(it[i].capacity, &rate));
    }

    apigw_tb_batch_init(&b);

    for (i = 0; i < APIGW_TB_BATCH_ITEMS; i += per_check) {
        assert_int_equal(apigw_tb_batch_add(&b, &it[i], per_check), 0);
    }

    assert_int_equal(b.nkeys, APIGW_TB_BATCH_ITEMS);
    assert_int_equal(b.nsets, APIGW_TB_BATCH_ITEMS);
    assert_int_equal(b.nitems, APIGW_TB_BATCH_ITEMS);
    assert_int_equal(b.nchecks, APIGW_TB_BATCH_ITEMS / per_check);

    /* args_of checks the canaries after APIGW_TB_BATCH_ARGC and _NUM */
    assert_int_equal(args_of(&b, &args1),
                     APIGW_TB_BATCH_ITEMS + 1 + 4 * APIGW_TB_BATCH_ITEMS + 1
                     + b.nchecks + 2 * APIGW_TB_BATCH_ITEMS);

    /* read back: what the script will parse */
    a = APIGW_TB_BATCH_ITEMS;
    assert_int_equal(arg_num(&args1, a++), APIGW_TB_BATCH_ITEMS);

    for (i = 0; i < APIGW_TB_BATCH_ITEMS; i++) {
        assert_int_equal(arg_num(&args1, a++), 1000000000);
        assert_int_equal(arg_num(&args1, a++), 1000000000);
        assert_int_equal(arg_num(&args1, a++),
                         (9007199 - i) * 1000000000ULL);
        assert_int_equal(arg_num(&args1, a++), 1000000000);
    }

    assert_int_equal(arg_num(&args1, a++), b.nchecks);
    k = 0;

    for (c = 0; c < b.nchecks; c++) {
        assert_int_equal(arg_num(&args1, a++), per_check);

        for (i = 0; i < per_check; i++, k++) {
            assert_int_equal(arg_num(&args1, a++), k + 1);
            assert_int_equal(arg_num(&args1, a++), k + 1);
        }
    }

    assert_int_equal(a, args1.argc);
    ARG_IS(&args1, a - 1, "256");
}


static void
test_batch_max(void **state)
{
    /* 64 checks of 4: every bound reached at once */
    assert_int_equal(APIGW_TB_BATCH_ITEMS / 4, APIGW_TB_BATCH_CHECKS);
    max_batch(4);
    assert_int_equal(args1.argc, APIGW_TB_BATCH_ARGC);

    /* one check of every item, two of half */
    max_batch(APIGW_TB_BATCH_ITEMS);
    max_batch(APIGW_TB_BATCH_ITEMS / 2);
}


/* -- batches: replies ------------------------------------------------------ */

static void
test_reply_now(void **state)
{
    int64_t    now;
    long long  v[APIGW_TB_REPLY_LEN(APIGW_TB_BATCH_ITEMS + 1)];

    memset(v, 0, sizeof(v));
    v[0] = 1700000000123LL;

    assert_int_equal(APIGW_TB_REPLY_LEN(1), 4);
    assert_int_equal(APIGW_TB_REPLY_LEN(2), 7);

    now = -7;
    assert_int_equal(apigw_tb_reply_now(v, 4, 1, &now), 0);
    assert_int_equal(now, 1700000000123LL);
    now = -7;
    assert_int_equal(apigw_tb_reply_now(v, 7, 2, &now), 0);
    assert_int_equal(now, 1700000000123LL);
    assert_int_equal(apigw_tb_reply_now(v, APIGW_TB_REPLY_LEN(256), 256,
                                        &now), 0);

    /* exactly 1 + 3 per item sent, and items within the batch bound */
    now = -7;
    assert_int_equal(apigw_tb_reply_now(v, 0, 0, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, 1, 0, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, 4, 0, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, 1, 1, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, 3, 1, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, 5, 1, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, 6, 1, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, 7, 1, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, 4, 2, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, 10, 2, &now), -1);
    assert_int_equal(apigw_tb_reply_now(v, APIGW_TB_REPLY_LEN(257), 257,
                                        &now), -1);

    /* now: unix ms, 1 .. 2^53 */
    v[0] = 1;
    assert_int_equal(apigw_tb_reply_now(v, 4, 1, &now), 0);
    assert_int_equal(now, 1);
    v[0] = 9007199254740992LL;
    assert_int_equal(apigw_tb_reply_now(v, 4, 1, &now), 0);
    assert_int_equal(now, 9007199254740992LL);

    now = -7;
    v[0] = 0;
    assert_int_equal(apigw_tb_reply_now(v, 4, 1, &now), -1);
    v[0] = -1;
    assert_int_equal(apigw_tb_reply_now(v, 4, 1, &now), -1);
    v[0] = -1700000000123LL;
    assert_int_equal(apigw_tb_reply_now(v, 4, 1, &now), -1);
    v[0] = 9007199254740993LL;
    assert_int_equal(apigw_tb_reply_now(v, 4, 1, &now), -1);
    v[0] = LLONG_MAX;
    assert_int_equal(apigw_tb_reply_now(v, 4, 1, &now), -1);
    v[0] = LLONG_MIN;
    assert_int_equal(apigw_tb_reply_now(v, 4, 1, &now), -1);

    /* (today: a refused reply leaves now_ms alone) */
    assert_int_equal(now, -7);
}


static void
item_ok(uint64_t cap, long long rem, long long reset, long long retry)
{
    long long          v[3];
    apigw_tb_result_t  out;

    v[0] = rem;
    v[1] = reset;
    v[2] = retry;

    memset(&out, 0xaa, sizeof(out));
    assert_int_equal(apigw_tb_decode_item(&out, cap, 1700000000123LL, v), 0);
    assert_int_equal(out.allowed, retry == 0);
    assert_int_equal(out.remaining, rem);
    assert_int_equal(out.limit, cap);
    assert_int_equal(out.reset_ms, reset);
    assert_int_equal(out.retry_after_ms, retry);
    assert_int_equal(out.now_ms, 1700000000123LL);
}


static void
item_bad(uint64_t cap, long long rem, long long reset, long long retry)
{
    long long          v[3];
    apigw_tb_result_t  out, was;

    v[0] = rem;
    v[1] = reset;
    v[2] = retry;

    memset(&out, 0xaa, sizeof(out));
    was = out;
    assert_int_equal(apigw_tb_decode_item(&out, cap, 1700000000123LL, v),
                     -1);
    assert_memory_equal(&out, &was, sizeof(out));
}


static void
test_decode_item(void **state)
{
    item_ok(5, 4, 200, 0);
    item_ok(10, 0, 12345, 1001);
    item_ok(1, 0, 1000, 0);             /* took the last token */
    item_ok(5, 5, 0, 0);                /* full */
    item_ok(1000000000, 1000000000, 0, 0);
    item_ok(1000000000, 0, 9007199254740992LL, 9007199254740992LL);

    /* allowed is retry_after_ms == 0, whatever remaining says: a bucket
     * refused only because another of its check was keeps its tokens */
    item_ok(10, 10, 0, 0);
    item_ok(10, 3, 700, 0);
    item_ok(10, 0, 1000, 1);
    item_ok(10, 9, 100, 1);             /* cost > 9 */

    /* remaining 0 .. capacity */
    item_bad(5, -1, 200, 0);
    item_bad(5, 6, 200, 0);
    item_bad(1, 2, 0, 0);
    item_bad(5, LLONG_MAX, 0, 0);
    item_bad(5, LLONG_MIN, 0, 0);

    /* reset and retry 0 .. 2^53 */
    item_bad(5, 4, -1, 0);
    item_bad(5, 4, 9007199254740993LL, 0);
    item_bad(5, 4, LLONG_MAX, 0);
    item_bad(5, 4, LLONG_MIN, 0);
    item_bad(5, 0, 200, -1);
    item_bad(5, 0, 200, 9007199254740993LL);
    item_bad(5, 0, 200, LLONG_MAX);
    item_bad(5, 0, 200, LLONG_MIN);

    /* the capacity sent must be one the script takes */
    item_bad(0, 0, 0, 0);
    item_bad(1000000001, 0, 0, 0);
    item_bad(UINT64_MAX, 0, 0, 0);
}


static void
test_decode_batch(void **state)
{
    int64_t            now;
    apigw_tb_result_t  res[3];

    /*
     * Two checks: per_sec + per_day, then per_day refused on its own.
     * Items follow one another in the order sent, 3 integers each.
     */
    long long  v[] = { 1700000000123LL,
                       9, 100, 0,   999, 86400, 0,
                       0, 86400000, 86400 };

    assert_int_equal(apigw_tb_reply_now(v, 10, 3, &now), 0);
    assert_int_equal(apigw_tb_decode_item(&res[0], 10, now, &v[1]), 0);
    assert_int_equal(apigw_tb_decode_item(&res[1], 1000, now, &v[4]), 0);
    assert_int_equal(apigw_tb_decode_item(&res[2], 1000, now, &v[7]), 0);

    assert_true(apigw_tb_all_allowed(res, 2));
    assert_int_equal(res[0].limit, 10);
    assert_int_equal(res[1].limit, 1000);
    assert_int_equal(apigw_tb_tightest(res, 2), 0);     /* 9/10 < 999/1000 */

    assert_false(apigw_tb_all_allowed(&res[2], 1));
    assert_int_equal(res[2].retry_after_ms, 86400);
    assert_int_equal(res[2].now_ms, 1700000000123LL);

    /* decoded against the capacity of its own set: 999 > 10 is wrong */
    assert_int_equal(apigw_tb_decode_item(&res[1], 10, now, &v[4]), -1);
}


/* -- batches: Redis Cluster slots ------------------------------------------ */

static size_t
slot_of(const char *prefix, const char *policy, const char *key,
    size_t key_len, unsigned char *buf, size_t len)
{
    size_t       n;
    apigw_str_t  p, po, k;

    p = str(prefix, strlen(prefix));
    po = str(policy, strlen(policy));
    k = str(key, key_len);

    n = apigw_tb_key(buf, len, &p, &po, &k);
    assert_true(n > 0 && n <= len);

    return n;
}


static void
slot_is(const char *prefix, const char *policy, const char *key,
    size_t key_len, const unsigned char *want, size_t wantlen)
{
    size_t         n;
    unsigned char  buf[512];

    n = slot_of(prefix, policy, key, key_len, buf, sizeof(buf));

    assert_int_equal(apigw_tb_key_slot_len(buf, n), wantlen);
    assert_memory_equal(buf, want, wantlen);

    /* every policy of one key value: the same part */
    n = slot_of(prefix, "per_day", key, key_len, buf, sizeof(buf));
    assert_int_equal(apigw_tb_key_slot_len(buf, n), wantlen);
    assert_memory_equal(buf, want, wantlen);

    n = slot_of(prefix, "", key, key_len, buf, sizeof(buf));
    assert_int_equal(n, wantlen + 1);                   /* the ':' */
    assert_int_equal(apigw_tb_key_slot_len(buf, n), wantlen);
}

#define SLOT_IS(prefix, policy, key, want)                                    \
    slot_is(prefix, policy, key, sizeof(key) - 1, S(want))


static void
test_key_slot_len(void **state)
{
    char           long_key[APIGW_TB_KEY_MAX + 1];
    unsigned char  want[APIGW_TB_KEY_MAX + 16];

    SLOT_IS("apigw:", "per_sec", "acme", "apigw:{rl:acme}");
    SLOT_IS("", "per_sec", "acme", "{rl:acme}");

    /* key values holding braces: the last '}' ends the part */
    SLOT_IS("apigw:", "per_sec", "a}b", "apigw:{rl:a}b}");
    SLOT_IS("apigw:", "per_sec", "a{b", "apigw:{rl:a{b}");
    SLOT_IS("apigw:", "per_sec", "}", "apigw:{rl:}}");
    SLOT_IS("apigw:", "per_sec", "}x{", "apigw:{rl:}x{}");
    SLOT_IS("apigw:", "per_sec", "{}}{", "apigw:{rl:{}}{}");
    SLOT_IS("apigw:", "per_sec", "a\0}\n", "apigw:{rl:a\0}\n}");

    /* a '}' in the prefix is before the tag */
    SLOT_IS("ap}gw:", "per_sec", "acme", "ap}gw:{rl:acme}");

    /* distinct key values, distinct parts, even when one is a prefix */
    SLOT_IS("apigw:", "per_sec", "a}", "apigw:{rl:a}}");
    SLOT_IS("apigw:", "per_sec", "a", "apigw:{rl:a}");

    /* a long key value is hashed into {rlh:...} */
    memset(long_key, 'k', sizeof(long_key));
    memcpy(want, "apigw:{rl:", 10);
    memset(want + 10, 'k', APIGW_TB_KEY_MAX);
    want[10 + APIGW_TB_KEY_MAX] = '}';
    slot_is("apigw:", "per_sec", long_key, APIGW_TB_KEY_MAX, want,
            10 + APIGW_TB_KEY_MAX + 1);
    slot_is("apigw:", "per_sec", long_key, APIGW_TB_KEY_MAX + 1,
            S("apigw:{rlh:9094034fb2d0ce2e407c9b260f2806ab"
              "2efb352e200722fd6296d9cf1cf7e6f5}"));

    /* not a bucket key: no '}' at all */
    assert_int_equal(apigw_tb_key_slot_len(S("apigw:rl:acme:per_sec")), 0);
    assert_int_equal(apigw_tb_key_slot_len(S("{rl:acme")), 0);
    assert_int_equal(apigw_tb_key_slot_len(S("")), 0);
    assert_int_equal(apigw_tb_key_slot_len(NULL, 0), 0);

    /* only len bytes count */
    assert_int_equal(apigw_tb_key_slot_len(S("}")), 1);
    assert_int_equal(apigw_tb_key_slot_len((const unsigned char *) "a}b}c",
                                           3), 2);
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
        cmocka_unit_test(test_batch_one),
        cmocka_unit_test(test_batch_argv),
        cmocka_unit_test(test_batch_dedupe),
        cmocka_unit_test(test_batch_limits),
        cmocka_unit_test(test_batch_refused),
        cmocka_unit_test(test_batch_max),
        cmocka_unit_test(test_reply_now),
        cmocka_unit_test(test_decode_item),
        cmocka_unit_test(test_decode_batch),
        cmocka_unit_test(test_key_slot_len),
        cmocka_unit_test(test_headers_legacy),
        cmocka_unit_test(test_rounding),
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_headers_ietf),
        cmocka_unit_test(test_tightest),
        cmocka_unit_test(test_deny_cache),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
