/*
 * API keys: the credential header (apigw_auth_parse, both Bearer and a
 * bare custom header), key validation, hashing, the verdict on a key record
 * as HMGET returns it from Redis (apigw_key_record_check), scopes, and key
 * generation with a fuzzed prefix.
 *
 * Input fields (fuzz_common.h): bearer flag, header value, then the record
 * fields key_id tenant scopes status expires_at account_status rate burst,
 * now, a required scope, a key prefix.  Every result is compared with an
 * independent reading of the rules in the header comments and README.
 */
#include <ctype.h>
#include <strings.h>

#include "fuzz_common.h"
#include "apigw_auth_key.h"


static int
fz_ws(unsigned char c)
{
    return c == ' ' || c == '\t';
}


static int
fz_key_char(unsigned char c)
{
    return isascii(c) && (isalnum(c) || c == '_' || c == '.' || c == '-');
}


static void
fz_check_parse(const unsigned char *v, size_t len, int bearer)
{
    size_t       b, e;
    apigw_str_t  key;
    int          rc, expect;

    key.data = NULL;
    key.len = 0;

    rc = apigw_auth_parse(v, len, bearer, &key);

    /* the reference: trim, then the scheme and at least one SP/HTAB */
    b = 0;
    e = len;

    while (b < e && fz_ws(v[b])) {
        b++;
    }

    while (e > b && fz_ws(v[e - 1])) {
        e--;
    }

    expect = 0;

    if (bearer) {
        if (e - b >= 7 && strncasecmp((const char *) v + b, "bearer", 6) == 0
            && fz_ws(v[b + 6]))
        {
            b += 7;

            while (b < e && fz_ws(v[b])) {
                b++;
            }

        } else {
            expect = -1;
        }
    }

    if (expect == 0 && b == e) {
        expect = -1;
    }

    FZ_ASSERT(rc == expect, "parse verdict matches the rule");

    if (rc == 0) {
        FZ_ASSERT(key.data == v + b && key.len == e - b,
                  "the key is the trimmed credential");
    }
}


static void
fz_check_key(const unsigned char *k, size_t len)
{
    size_t  i;
    int     expect;
    char    hex[APIGW_SHA256_HEX + 1];

    expect = (len >= APIGW_KEY_MIN_LEN && len <= APIGW_KEY_MAX_LEN);

    for (i = 0; expect && i < len; i++) {
        expect = fz_key_char(k[i]);
    }

    FZ_ASSERT(apigw_auth_key_valid(k, len) == expect,
              "key validation matches the rule");

    if (!expect) {
        return;
    }

    apigw_sha256_hex(k, len, hex);

    FZ_ASSERT(hex[APIGW_SHA256_HEX] == '\0', "terminated");

    for (i = 0; i < APIGW_SHA256_HEX; i++) {
        FZ_ASSERT((hex[i] >= '0' && hex[i] <= '9')
                  || (hex[i] >= 'a' && hex[i] <= 'f'), "lowercase hex");
    }
}


static long long
fz_epoch(const apigw_str_t *s)
{
    size_t     i;
    long long  v;

    if (s->len == 0 || s->len > 19) {
        return -1;
    }

    v = 0;

    for (i = 0; i < s->len; i++) {
        if (!isdigit(s->data[i])) {
            return -1;
        }

        if (v > (LLONG_MAX - (s->data[i] - '0')) / 10) {
            return -1;
        }

        v = v * 10 + (s->data[i] - '0');
    }

    return v;
}


static void
fz_check_record(const apigw_key_record_t *rec, long long now)
{
    apigw_key_verdict_t  got, expect;
    long long            exp;

    got = apigw_key_record_check(rec, now);

    expect = APIGW_KEY_OK;

    if (rec->key_id.len == 0 || rec->tenant.len == 0
        || !apigw_str_eq(&rec->status, "active"))
    {
        expect = APIGW_KEY_INVALID;

    } else if (rec->expires_at.len
               && ((exp = fz_epoch(&rec->expires_at)) < 0 || exp <= now))
    {
        expect = APIGW_KEY_INVALID;

    } else if (rec->account_status.len
               && !apigw_str_eq(&rec->account_status, "active"))
    {
        expect = APIGW_KEY_DISABLED;
    }

    FZ_ASSERT(got == expect, "record verdict matches the rule");
}


static void
fz_check_scopes(const apigw_str_t *scopes, const apigw_str_t *scope)
{
    size_t  i, j;
    int     expect;

    expect = 0;

    if (scopes->data != NULL && scope->len != 0) {
        for (i = 0; i < scopes->len; i = j) {
            while (i < scopes->len && fz_ws(scopes->data[i])) {
                i++;
            }

            for (j = i; j < scopes->len && !fz_ws(scopes->data[j]); j++) {
                /* void */
            }

            if (j - i == scope->len
                && memcmp(scopes->data + i, scope->data, scope->len) == 0)
            {
                expect = 1;
            }

            if (j == i) {
                break;
            }
        }
    }

    FZ_ASSERT(apigw_scopes_has(scopes, scope->data, scope->len) == expect,
              "scope matching is exact, word by word");
}


static void
fz_check_generate(const apigw_str_t *prefix)
{
    char    *p, *out;
    size_t   i, outlen;
    int      n, expect;

    p = malloc(prefix->len + 1);
    FZ_ASSERT(p != NULL, "out of memory");
    memcpy(p, prefix->data, prefix->len);
    p[prefix->len] = '\0';

    expect = strlen(p) <= APIGW_KEY_PREFIX_MAX;

    for (i = 0; expect && p[i] != '\0'; i++) {
        expect = isascii((unsigned char) p[i])
                 && (isalnum((unsigned char) p[i]) || p[i] == '_');
    }

    FZ_ASSERT(apigw_key_prefix_valid(p) == expect, "prefix rule");

    outlen = strlen(p) + APIGW_KEY_B62_LEN + 1;
    out = malloc(outlen);
    FZ_ASSERT(out != NULL, "out of memory");

    n = apigw_key_generate(p, out, outlen);

    if (expect) {
        FZ_ASSERT(n == (int) (outlen - 1) && out[n] == '\0',
                  "a key of prefix + 43 characters");
        FZ_ASSERT(apigw_auth_key_valid((unsigned char *) out, (size_t) n),
                  "a generated key is a valid key");
        FZ_ASSERT(memcmp(out, p, strlen(p)) == 0, "it starts with prefix");

    } else {
        FZ_ASSERT(n == -1, "a bad prefix is refused");
    }

    FZ_ASSERT(apigw_key_generate(p, out, outlen - 1) == -1,
              "a short buffer is refused");

    free(out);
    free(p);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                  bearer;
    long long            now;
    unsigned char       *v;
    apigw_str_t          value, scope, prefix, key;
    apigw_key_record_t   rec;
    fz_t                 f;

    fz_init(&f, data, size);

    bearer = (int) (fz_int(&f) & 1);
    value = fz_field(&f);

    v = fz_dup(&value);

    fz_check_parse(v, value.len, bearer);
    fz_check_parse(v, value.len, !bearer);

    if (apigw_auth_parse(v, value.len, bearer, &key) == 0) {
        fz_check_key(key.data, key.len);
    }

    fz_check_key(v, value.len);

    memset(&rec, 0, sizeof(rec));
    rec.key_id = fz_field(&f);
    rec.tenant = fz_field(&f);
    rec.scopes = fz_field(&f);
    rec.status = fz_field(&f);
    rec.expires_at = fz_field(&f);
    rec.account_status = fz_field(&f);
    rec.rate = fz_field(&f);
    rec.burst = fz_field(&f);
    now = fz_int(&f);
    scope = fz_field(&f);
    prefix = fz_field(&f);

    fz_check_record(&rec, now);
    fz_check_scopes(&rec.scopes, &scope);

    if (prefix.len <= 64) {
        fz_check_generate(&prefix);
    }

    free(v);

    return 0;
}
