/*
 * Unit tests of apigw_auth_key: credential parsing, key format, SHA-256,
 * key generation and record verdicts.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "apigw_auth_key.h"

static const char  b62[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#define S(lit)  (const unsigned char *) (lit), sizeof(lit) - 1


/*
 * RAND_bytes interposed so the base62 conversion can be checked on known
 * numbers; with no fake bytes set (or when asked to fail) it behaves as the
 * library's, which libcrypto's own callers also reach through here.
 */
static const unsigned char  *fake_rand;
static int                   fail_rand;

int RAND_bytes(unsigned char *buf, int num);

int
RAND_bytes(unsigned char *buf, int num)
{
    static int  (*real)(unsigned char *, int);

    if (fail_rand) {
        return 0;
    }

    if (fake_rand != NULL) {
        memcpy(buf, fake_rand, num);
        return 1;
    }

    if (real == NULL) {
        *(void **) &real = dlsym(RTLD_NEXT, "RAND_bytes");
        assert_non_null(real);
    }

    return real(buf, num);
}


static int
parse(const char *value, int bearer, char *out, size_t outlen)
{
    apigw_str_t  key = apigw_null_string;

    if (apigw_auth_parse((const unsigned char *) value, strlen(value), bearer,
                         &key) != 0)
    {
        return -1;
    }

    assert_true(key.len < outlen);
    memcpy(out, key.data, key.len);
    out[key.len] = '\0';

    /* the key must point into the header value, not into a copy */
    assert_true(key.data >= (unsigned char *) value);
    assert_true(key.data + key.len <= (unsigned char *) value + strlen(value));

    return 0;
}


static void
test_parse_bearer(void **state)
{
    char  k[64];

    assert_int_equal(parse("Bearer abc", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    assert_int_equal(parse("bearer  abc", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    assert_int_equal(parse("BEARER abc", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    assert_int_equal(parse("BeArEr\tabc", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    assert_int_equal(parse("Bearer \t \tabc", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    assert_int_equal(parse("Bearer abc   ", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    assert_int_equal(parse("Bearer abc\t \t", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    assert_int_equal(parse("  Bearer abc", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    assert_int_equal(parse("Bearer live_Ab9", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "live_Ab9");

    /* an inner space stays in the key, for apigw_auth_key_valid to refuse */
    assert_int_equal(parse("Bearer abc def", 1, k, sizeof(k)), 0);
    assert_string_equal(k, "abc def");
}


static void
test_parse_bearer_malformed(void **state)
{
    char  k[64];

    assert_int_equal(parse("Basic x", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("Basic dXNlcjpwYXNz", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("Bearer", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("Bearer ", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("Bearer \t  ", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("Bearerabc", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("Bear abc", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("Token abc", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("abc", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("   ", 1, k, sizeof(k)), -1);
    assert_int_equal(parse("Bearer:abc", 1, k, sizeof(k)), -1);
}


static void
test_parse_bearer_len_bounded(void **state)
{
    apigw_str_t           key;
    static const char     v[] = "Bearer abcdef";

    /* only len bytes count: the value is not NUL-terminated in nginx */
    assert_int_equal(apigw_auth_parse((const unsigned char *) v, 10, 1, &key),
                     0);
    assert_int_equal(key.len, 3);
    assert_memory_equal(key.data, "abc", 3);

    assert_int_equal(apigw_auth_parse((const unsigned char *) v, 6, 1, &key),
                     -1);
    assert_int_equal(apigw_auth_parse(NULL, 0, 1, &key), -1);
}


static void
test_parse_custom_header(void **state)
{
    char  k[64];

    assert_int_equal(parse("abc", 0, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    assert_int_equal(parse("  abc \t", 0, k, sizeof(k)), 0);
    assert_string_equal(k, "abc");

    /* no scheme is stripped from a custom header */
    assert_int_equal(parse("Bearer abc", 0, k, sizeof(k)), 0);
    assert_string_equal(k, "Bearer abc");

    assert_int_equal(parse("", 0, k, sizeof(k)), -1);
    assert_int_equal(parse(" \t ", 0, k, sizeof(k)), -1);
}


static void
test_key_valid(void **state)
{
    char  buf[APIGW_KEY_MAX_LEN + 2];

    assert_int_equal(apigw_auth_key_valid(S("abcdefghijklmnop")), 1);
    assert_int_equal(apigw_auth_key_valid(S("abcdefghijklmno")), 0);
    assert_int_equal(apigw_auth_key_valid(S("live_AZaz09.-_xyz")), 1);
    assert_int_equal(apigw_auth_key_valid(S("abcdefghijklmno+")), 0);
    assert_int_equal(apigw_auth_key_valid(S("abcdefgh ijklmnop")), 0);
    assert_int_equal(apigw_auth_key_valid(S("abcdefghijklmnop\n")), 0);
    assert_int_equal(apigw_auth_key_valid(S("abcdefghijklmn\xc3\xa9")), 0);
    assert_int_equal(apigw_auth_key_valid(NULL, 20), 0);

    memset(buf, 'a', sizeof(buf));
    assert_int_equal(apigw_auth_key_valid((unsigned char *) buf,
                                          APIGW_KEY_MAX_LEN), 1);
    assert_int_equal(apigw_auth_key_valid((unsigned char *) buf,
                                          APIGW_KEY_MAX_LEN + 1), 0);
}


/* the lookup table against the rule it encodes, for every byte value */
static void
test_key_valid_every_byte(void **state)
{
    int            c, want;
    unsigned char  buf[APIGW_KEY_MIN_LEN];

    for (c = 0; c < 256; c++) {
        want = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
               || (c >= '0' && c <= '9') || c == '_' || c == '.'
               || c == '-';

        /* first, middle and last position */
        memset(buf, 'k', sizeof(buf));
        buf[0] = (unsigned char) c;
        assert_int_equal(apigw_auth_key_valid(buf, sizeof(buf)), want);

        memset(buf, 'k', sizeof(buf));
        buf[sizeof(buf) / 2] = (unsigned char) c;
        assert_int_equal(apigw_auth_key_valid(buf, sizeof(buf)), want);

        memset(buf, 'k', sizeof(buf));
        buf[sizeof(buf) - 1] = (unsigned char) c;
        assert_int_equal(apigw_auth_key_valid(buf, sizeof(buf)), want);
    }
}


static void
test_sha256_vectors(void **state)
{
    char    hex[APIGW_SHA256_HEX + 1];
    char   *mil;

    /* FIPS 180-2 / NIST CAVP vectors */
    apigw_sha256_hex(S(""), hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb924"
                             "27ae41e4649b934ca495991b7852b855");

    apigw_sha256_hex(S("abc"), hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223"
                             "b00361a396177a9cb410ff61f20015ad");

    apigw_sha256_hex(S("abcdbcdecdefdefgefghfghighijhijk"
                       "ijkljklmklmnlmnomnopnopq"), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039"
                             "a33ce45964ff2167f6ecedd419db06c1");

    mil = malloc(1000000);
    assert_non_null(mil);
    memset(mil, 'a', 1000000);
    apigw_sha256_hex((unsigned char *) mil, 1000000, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67"
                             "f1809a48a497200e046d39ccc7112cd0");
    free(mil);

    /* only len bytes are hashed */
    apigw_sha256_hex((const unsigned char *) "abcdef", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223"
                             "b00361a396177a9cb410ff61f20015ad");

    apigw_sha256_hex(NULL, 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb924"
                             "27ae41e4649b934ca495991b7852b855");
}


/*
 * The raw digest, from the one reused context: consecutive digests do not
 * leak into each other, and the context is made again after being freed.
 */
static void
test_sha256_raw_reused(void **state)
{
    int            i;
    char           hex[APIGW_SHA256_HEX + 1];
    unsigned char  md[APIGW_SHA256_LEN + 1];

    static const unsigned char  abc[APIGW_SHA256_LEN] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
        0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
        0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad
    };

    for (i = 0; i < 3; i++) {
        md[APIGW_SHA256_LEN] = 0x5a;

        assert_int_equal(apigw_sha256(S("abc"), md), 0);
        assert_memory_equal(md, abc, sizeof(abc));
        assert_int_equal(md[APIGW_SHA256_LEN], 0x5a);   /* 32 bytes only */

        assert_int_equal(apigw_sha256(S("abcdbcdecdefdefgefghfghighijhijk"
                                        "ijkljklmklmnlmnomnopnopq"), md), 0);
        apigw_hex(md, APIGW_SHA256_LEN, hex);
        hex[APIGW_SHA256_HEX] = '\0';
        assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039"
                                 "a33ce45964ff2167f6ecedd419db06c1");

        if (i == 1) {
            apigw_sha256_done();
            apigw_sha256_done();                    /* twice is harmless */
        }
    }

    apigw_sha256_done();
}


static void
test_hex(void **state)
{
    char                        out[9];
    static const unsigned char  in[4] = { 0x00, 0x9f, 0xa0, 0xff };

    memset(out, '#', sizeof(out));
    apigw_hex(in, sizeof(in), out);
    assert_memory_equal(out, "009fa0ff#", 9);      /* 2n chars, no NUL */

    apigw_hex(in, 0, out);
    assert_memory_equal(out, "009fa0ff#", 9);
}


static void
assert_base62(const char *s, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        assert_non_null(memchr(b62, s[i], sizeof(b62) - 1));
    }
}


static void
test_generate_format(void **state)
{
    int   n;
    char  a[128], b[128];

    n = apigw_key_generate(NULL, a, sizeof(a));
    assert_int_equal(n, 43);
    assert_int_equal(strlen(a), 43);
    assert_base62(a, 43);
    assert_int_equal(apigw_auth_key_valid((unsigned char *) a, n), 1);

    n = apigw_key_generate("", b, sizeof(b));
    assert_int_equal(n, 43);
    assert_base62(b, 43);
    assert_string_not_equal(a, b);

    n = apigw_key_generate("live_", a, sizeof(a));
    assert_int_equal(n, 48);
    assert_int_equal(strlen(a), 48);
    assert_memory_equal(a, "live_", 5);
    assert_base62(a + 5, 43);
    assert_int_equal(apigw_auth_key_valid((unsigned char *) a, n), 1);

    n = apigw_key_generate("Test_9", a, sizeof(a));
    assert_int_equal(n, 49);
    assert_memory_equal(a, "Test_9", 6);

    n = apigw_key_generate("abcdefghijklmnop", a, sizeof(a));
    assert_int_equal(n, 16 + 43);
}


static void
test_generate_refuses(void **state)
{
    char  a[128];

    /* exactly big enough: prefix + 43 + NUL */
    assert_int_equal(apigw_key_generate("live_", a, 49), 48);
    assert_int_equal(apigw_key_generate("live_", a, 48), -1);
    assert_int_equal(apigw_key_generate(NULL, a, 44), 43);
    assert_int_equal(apigw_key_generate(NULL, a, 43), -1);
    assert_int_equal(apigw_key_generate(NULL, a, 0), -1);
    assert_int_equal(apigw_key_generate(NULL, NULL, 64), -1);

    assert_int_equal(apigw_key_generate("live-", a, sizeof(a)), -1);
    assert_int_equal(apigw_key_generate("a b", a, sizeof(a)), -1);
    assert_int_equal(apigw_key_generate("a.b", a, sizeof(a)), -1);
    assert_int_equal(apigw_key_generate("abcdefghijklmnopq", a, sizeof(a)),
                     -1);

    assert_int_equal(apigw_key_prefix_valid(NULL), 1);
    assert_int_equal(apigw_key_prefix_valid(""), 1);
    assert_int_equal(apigw_key_prefix_valid("live_"), 1);
    assert_int_equal(apigw_key_prefix_valid("abcdefghijklmnop"), 1);
    assert_int_equal(apigw_key_prefix_valid("abcdefghijklmnopq"), 0);
    assert_int_equal(apigw_key_prefix_valid("k\xc3\xa9y"), 0);
}


static void
test_generate_distribution(void **state)
{
    int     i, j, idx;
    char    k[64];
    size_t  last[62], any[62];

    memset(last, 0, sizeof(last));
    memset(any, 0, sizeof(any));

    for (i = 0; i < 62 * 200; i++) {
        assert_int_equal(apigw_key_generate(NULL, k, sizeof(k)), 43);

        for (j = 0; j < 43; j++) {
            idx = (int) ((const char *) memchr(b62, k[j], 62) - b62);
            any[idx]++;
        }

        /*
         * A uniform 256-bit number read in base 62: the top digit is at
         * most floor(2^256 / 62^42) = 60, and the lowest is uniform.
         */
        idx = (int) ((const char *) memchr(b62, k[0], 62) - b62);
        assert_true(idx <= 60);

        idx = (int) ((const char *) memchr(b62, k[42], 62) - b62);
        last[idx]++;
    }

    /* expected 200 each, sd about 14: 100..300 fails only if broken */
    for (i = 0; i < 62; i++) {
        assert_true(last[i] >= 100 && last[i] <= 300);
        assert_true(any[i] > 0);
    }
}


static void
test_generate_known_numbers(void **state)
{
    int            i;
    char           k[64];
    unsigned char  n[32];

    memset(n, 0, sizeof(n));
    fake_rand = n;
    assert_int_equal(apigw_key_generate(NULL, k, sizeof(k)), 43);
    assert_string_equal(k, "0000000000000000000000000000000000000000000");

    n[31] = 1;
    assert_int_equal(apigw_key_generate("t_", k, sizeof(k)), 45);
    assert_string_equal(k, "t_0000000000000000000000000000000000000000001");

    n[31] = 61;
    assert_int_equal(apigw_key_generate(NULL, k, sizeof(k)), 43);
    assert_string_equal(k, "000000000000000000000000000000000000000000z");

    n[31] = 62;
    assert_int_equal(apigw_key_generate(NULL, k, sizeof(k)), 43);
    assert_string_equal(k, "0000000000000000000000000000000000000000010");

    memset(n, 0xff, sizeof(n));
    assert_int_equal(apigw_key_generate(NULL, k, sizeof(k)), 43);
    assert_string_equal(k, "yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1");

    for (i = 0; i < 32; i++) {
        n[i] = (unsigned char) i;
    }
    assert_int_equal(apigw_key_generate("live_", k, sizeof(k)), 48);
    assert_string_equal(k, "live_003aUlTJC7tjlCTQj2uNU3MFagCXG9LRKRcwGkBIDlf");

    fake_rand = NULL;

    fail_rand = 1;
    assert_int_equal(apigw_key_generate(NULL, k, sizeof(k)), -1);
    fail_rand = 0;
}


static apigw_key_record_t
good_record(void)
{
    apigw_key_record_t  r;

    memset(&r, 0, sizeof(r));
    apigw_str_set(&r.key_id, "key_0123456789abcdef");
    apigw_str_set(&r.tenant, "acme");
    apigw_str_set(&r.scopes, "read write");
    apigw_str_set(&r.status, "active");
    apigw_str_set(&r.account_status, "active");

    return r;
}


static void
test_record_ok(void **state)
{
    apigw_key_record_t  r;

    r = good_record();
    assert_int_equal(apigw_key_record_check(&r, 1700000000), APIGW_KEY_OK);

    /* account_status missing means active */
    r.account_status.len = 0;
    r.account_status.data = NULL;
    assert_int_equal(apigw_key_record_check(&r, 1700000000), APIGW_KEY_OK);

    /* scopes, rate and burst play no part in the verdict */
    r.scopes.len = 0;
    assert_int_equal(apigw_key_record_check(&r, 1700000000), APIGW_KEY_OK);

    /* an empty expires_at reads as no expiry */
    r.expires_at.len = 0;
    r.expires_at.data = (unsigned char *) "";
    assert_int_equal(apigw_key_record_check(&r, 1700000000), APIGW_KEY_OK);
}


static void
test_record_status(void **state)
{
    apigw_key_record_t  r;

    r = good_record();
    apigw_str_set(&r.status, "revoked");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.status, "Active");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.status, "active ");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.status, "activ");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    r.status.len = 0;
    r.status.data = NULL;
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    assert_int_equal(apigw_key_record_check(NULL, 1700000000),
                     APIGW_KEY_INVALID);
}


static void
test_record_broken(void **state)
{
    apigw_key_record_t  r;

    r = good_record();
    r.key_id.len = 0;
    r.key_id.data = NULL;
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    r = good_record();
    r.tenant.len = 0;
    r.tenant.data = NULL;
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    /* an empty record, as a missing hash would give */
    memset(&r, 0, sizeof(r));
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);
}


static void
test_record_expiry(void **state)
{
    apigw_key_record_t  r;

    r = good_record();

    apigw_str_set(&r.expires_at, "1700000001");
    assert_int_equal(apigw_key_record_check(&r, 1700000000), APIGW_KEY_OK);

    /* the second named by expires_at is already past */
    apigw_str_set(&r.expires_at, "1700000000");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.expires_at, "1699999999");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.expires_at, "0");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.expires_at, "9223372036854775807");
    assert_int_equal(apigw_key_record_check(&r, 1700000000), APIGW_KEY_OK);

    apigw_str_set(&r.expires_at, "9223372036854775808");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.expires_at, "99999999999999999999");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.expires_at, "17000000x1");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.expires_at, "-1");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.expires_at, " 1800000000");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    apigw_str_set(&r.expires_at, "1800000000.5");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);
}


static void
test_record_account(void **state)
{
    apigw_key_record_t  r;

    r = good_record();

    apigw_str_set(&r.account_status, "disabled");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_DISABLED);

    apigw_str_set(&r.account_status, "unverified");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_DISABLED);

    apigw_str_set(&r.account_status, "ACTIVE");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_DISABLED);

    apigw_str_set(&r.account_status, "suspended");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_DISABLED);

    apigw_str_set(&r.expires_at, "1700000001");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_DISABLED);
}


static void
test_record_invalid_before_disabled(void **state)
{
    apigw_key_record_t  r;

    r = good_record();
    apigw_str_set(&r.account_status, "disabled");

    apigw_str_set(&r.status, "revoked");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    r = good_record();
    apigw_str_set(&r.account_status, "disabled");
    apigw_str_set(&r.expires_at, "1700000000");
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);

    r = good_record();
    apigw_str_set(&r.account_status, "unverified");
    r.tenant.len = 0;
    assert_int_equal(apigw_key_record_check(&r, 1700000000),
                     APIGW_KEY_INVALID);
}


static int
has(const char *scopes, const char *scope)
{
    apigw_str_t  s;

    s.data = (unsigned char *) scopes;
    s.len = strlen(scopes);

    return apigw_scopes_has(&s, (const unsigned char *) scope, strlen(scope));
}


static void
test_scopes(void **state)
{
    apigw_str_t  s = apigw_null_string;

    assert_int_equal(has("read", "read"), 1);
    assert_int_equal(has("read write", "read"), 1);
    assert_int_equal(has("read write", "write"), 1);
    assert_int_equal(has("write read", "read"), 1);

    /* exact words only */
    assert_int_equal(has("read:all", "read"), 0);
    assert_int_equal(has("read", "read:all"), 0);
    assert_int_equal(has("read read:all", "read:all"), 1);
    assert_int_equal(has("readwrite", "read"), 0);
    assert_int_equal(has("xread", "read"), 0);
    assert_int_equal(has("rea", "read"), 0);
    assert_int_equal(has("Read", "read"), 0);

    /* leading, trailing, doubled spaces and tabs */
    assert_int_equal(has(" read", "read"), 1);
    assert_int_equal(has("read ", "read"), 1);
    assert_int_equal(has("  read  write  ", "write"), 1);
    assert_int_equal(has("write\tread", "read"), 1);
    assert_int_equal(has("  ", "read"), 0);

    /* nothing is inside no scopes, and no scope is inside anything */
    assert_int_equal(has("", "read"), 0);
    assert_int_equal(has("read write", ""), 0);
    assert_int_equal(has("read  write", " "), 0);
    assert_int_equal(apigw_scopes_has(&s, (const unsigned char *) "read", 4),
                     0);
    assert_int_equal(apigw_scopes_has(NULL, (const unsigned char *) "read", 4),
                     0);

    /* len bounds both sides: "read" inside "read write" by length */
    s.data = (unsigned char *) "read write";
    s.len = 3;
    assert_int_equal(apigw_scopes_has(&s, (const unsigned char *) "read", 4),
                     0);
    assert_int_equal(apigw_scopes_has(&s, (const unsigned char *) "rea", 3),
                     1);
    s.len = 10;
    assert_int_equal(apigw_scopes_has(&s, (const unsigned char *) "writer", 5),
                     1);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_bearer),
        cmocka_unit_test(test_parse_bearer_malformed),
        cmocka_unit_test(test_parse_bearer_len_bounded),
        cmocka_unit_test(test_parse_custom_header),
        cmocka_unit_test(test_key_valid),
        cmocka_unit_test(test_key_valid_every_byte),
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_sha256_raw_reused),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_generate_format),
        cmocka_unit_test(test_generate_refuses),
        cmocka_unit_test(test_generate_distribution),
        cmocka_unit_test(test_generate_known_numbers),
        cmocka_unit_test(test_record_ok),
        cmocka_unit_test(test_record_status),
        cmocka_unit_test(test_record_broken),
        cmocka_unit_test(test_record_expiry),
        cmocka_unit_test(test_record_account),
        cmocka_unit_test(test_record_invalid_before_disabled),
        cmocka_unit_test(test_scopes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
