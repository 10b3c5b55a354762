/*
 * Rate-limit directive and per-key override parsing (apigw_rate_parse,
 * apigw_burst_parse: the same functions read "rate=" / "burst=" from
 * nginx.conf and a key's rate/burst fields from Redis), then what the glue
 * does with an accepted pair: apigw_tb_check, the RateLimit-Policy value,
 * and the bucket's Redis key of a client-controlled key value.
 *
 * Input fields (fuzz_common.h): rate, burst, policy name, prefix, then the
 * rest as the rate-limit key value.  Every verdict is compared with an
 * independent reading of the grammar; every measured length is the
 * written length.
 */
#include "fuzz_common.h"
#include "apigw_token_bucket.h"


/* "N" with 1 <= N <= APIGW_TB_MAX_TOKENS, no sign, no spaces; 0 if not */
static uint64_t
fz_count(const unsigned char *p, size_t len)
{
    size_t    i;
    uint64_t  n;

    if (len == 0) {
        return 0;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }

        n = n * 10 + (uint64_t) (p[i] - '0');

        if (n > APIGW_TB_MAX_TOKENS) {
            return 0;
        }
    }

    return n;
}


static void
fz_check_rate(const apigw_str_t *s, apigw_rate_t *rate, int *ok)
{
    unsigned char  *p;
    const char     *err;
    uint64_t        n, period;

    p = fz_dup(s);
    rate->tokens = 0;
    rate->period_ms = 0;

    err = apigw_rate_parse(p, s->len, rate);

    n = 0;
    period = 0;

    if (s->len >= 4 && p[s->len - 3] == 'r' && p[s->len - 2] == '/') {
        n = fz_count(p, s->len - 3);

        switch (p[s->len - 1]) {
        case 's': period = 1000; break;
        case 'm': period = 60000; break;
        case 'h': period = 3600000; break;
        case 'd': period = 86400000; break;
        }
    }

    if (n == 0 || period == 0) {
        FZ_ASSERT(err != NULL && err[0] != '\0', "refused with a message");
        *ok = 0;

    } else {
        FZ_ASSERT(err == NULL, "accepted");
        FZ_ASSERT(rate->tokens == n && rate->period_ms == period,
                  "the rate read is the rate written");
        *ok = 1;
    }

    free(p);
}


static void
fz_check_burst(const apigw_str_t *s, uint64_t *burst, int *ok)
{
    unsigned char  *p;
    const char     *err;
    uint64_t        n;

    p = fz_dup(s);
    *burst = 0;

    err = apigw_burst_parse(p, s->len, burst);
    n = fz_count(p, s->len);

    if (n == 0) {
        FZ_ASSERT(err != NULL && err[0] != '\0', "refused with a message");
        *ok = 0;

    } else {
        FZ_ASSERT(err == NULL && *burst == n, "the burst read is written");
        *ok = 1;
    }

    free(p);
}


static void
fz_check_policy(const apigw_str_t *name, uint64_t capacity,
    const apigw_rate_t *rate)
{
    size_t          n, got;
    unsigned char  *out;
    int             valid;
    size_t          i;

    valid = name->len >= 1 && name->len <= APIGW_TB_NAME_MAX;

    for (i = 0; valid && i < name->len; i++) {
        valid = (name->data[i] >= 'a' && name->data[i] <= 'z')
                || (name->data[i] >= 'A' && name->data[i] <= 'Z')
                || (name->data[i] >= '0' && name->data[i] <= '9')
                || name->data[i] == '_' || name->data[i] == '.'
                || name->data[i] == '-';
    }

    FZ_ASSERT(apigw_tb_name_valid(name->data, name->len) == valid,
              "policy name rule");

    FZ_ASSERT(apigw_tb_window_s(capacity, rate) >= 1, "a window >= 1 s");

    n = apigw_tb_hdr_policy(NULL, 0, name, capacity, rate);
    FZ_ASSERT(n <= APIGW_TB_SF_LEN(name->len), "fits the documented room");

    out = malloc(n);
    FZ_ASSERT(out != NULL, "out of memory");

    got = apigw_tb_hdr_policy(out, n, name, capacity, rate);
    FZ_ASSERT(got == n, "measured length == written length");

    for (i = 0; i < n; i++) {
        FZ_ASSERT(out[i] >= 0x20 && out[i] < 0x7f,
                  "a header value of printable ASCII");
    }

    free(out);
}


static void
fz_check_key(const apigw_str_t *prefix, const apigw_str_t *policy,
    const apigw_str_t *key)
{
    size_t          n, got;
    unsigned char  *out;
    int             refuse;

    refuse = key->len == 0
             || memchr(prefix->data, '{', prefix->len) != NULL
             || memchr(policy->data, '}', policy->len) != NULL;

    n = apigw_tb_key(NULL, 0, prefix, policy, key);

    if (refuse) {
        FZ_ASSERT(n == 0, "refused");
        return;
    }

    FZ_ASSERT(n > 0 && n <= APIGW_TB_KEY_LEN(prefix->len, policy->len),
              "fits the documented room");

    out = malloc(n);
    FZ_ASSERT(out != NULL, "out of memory");

    got = apigw_tb_key(out, n, prefix, policy, key);
    FZ_ASSERT(got == n, "measured length == written length");

    FZ_ASSERT(memcmp(out, prefix->data, prefix->len) == 0
              && out[prefix->len] == '{', "the hash tag follows the prefix");
    FZ_ASSERT(memcmp(out + n - policy->len - 2, "}:", 2) == 0
              && memcmp(out + n - policy->len, policy->data, policy->len)
                 == 0, "the policy ends the key");

    free(out);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int            rok, bok;
    uint64_t       burst, capacity;
    const char    *err;
    apigw_rate_t   rate;
    apigw_str_t    rs, bs, name, prefix, key;
    fz_t           f;

    fz_init(&f, data, size);

    rs = fz_field(&f);
    bs = fz_field(&f);
    name = fz_field(&f);
    prefix = fz_field(&f);
    key = fz_rest(&f);

    fz_check_rate(&rs, &rate, &rok);
    fz_check_burst(&bs, &burst, &bok);

    if (rok) {
        capacity = bok ? burst : rate.tokens;
        err = apigw_tb_check(capacity, &rate);

        if (err == NULL) {
            fz_check_policy(&name, capacity, &rate);
        }
    }

    fz_check_key(&prefix, &name, &key);

    return 0;
}
