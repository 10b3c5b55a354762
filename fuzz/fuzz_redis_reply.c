/*
 * Redis replies: arbitrary bytes from the Redis socket through hiredis's
 * own RESP reader (redisReaderFeed / redisReaderGetReply, as the module's
 * async context uses it), then every reply through the core decoding the
 * glue applies to it:
 *
 *   - an all-integer array: the token-bucket script's reply, as
 *     ngx_http_apigw_rl_reply() checks it, into apigw_tb_decode(), then the
 *     header math and the local deny cache of the decoded results;
 *   - an 8-element array: HMGET of a key record, as
 *     ngx_http_apigw_auth_reply() copies it, into apigw_key_record_check(),
 *     apigw_scopes_has() and the per-key rate/burst overrides;
 *   - {"completed", status, record}: the idempotency claim reply, as
 *     ngx_http_apigw_idem_claim_reply() reads it, into
 *     apigw_idem_record_decode().
 *
 * The glue functions themselves take ngx_http_request_t and live on
 * nginx's pools and event loop: they are not reachable without nginx, so
 * their checks of the redisReply (types, element counts) are restated
 * here.  hiredis is the system library, not instrumented for coverage:
 * the fuzzer steers by our code's coverage only.
 *
 * hiredis 0.14 allocates an array of N pointers as soon as it reads a
 * "*N" header; a hostile server can ask for any N.  Inputs announcing more
 * than FZ_MAX_ELEMENTS elements are skipped so libFuzzer's malloc limit
 * does not report that (a property of hiredis and of trusting Redis).
 */
#include <hiredis/hiredis.h>

#include "fuzz_common.h"
#include "apigw_auth_key.h"
#include "apigw_idempotency.h"
#include "apigw_token_bucket.h"


#define FZ_MAX_ELEMENTS  4096
#define FZ_RL_MAX        16         /* NGX_HTTP_APIGW_RL_MAX */
#define FZ_KEY_FIELDS    8          /* NGX_HTTP_APIGW_KEY_FIELDS */


static int
fz_huge_array(const uint8_t *data, size_t size)
{
    size_t    i, j;
    uint64_t  n;

    for (i = 0; i < size; i++) {
        if (data[i] != '*') {
            continue;
        }

        n = 0;

        for (j = i + 1; j < size && data[j] >= '0' && data[j] <= '9'; j++) {
            n = n * 10 + (data[j] - '0');

            if (n > FZ_MAX_ELEMENTS) {
                return 1;
            }
        }
    }

    return 0;
}


static void
fz_check_hdr(size_t (*fn)(unsigned char *, size_t,
    const apigw_tb_result_t *), const apigw_tb_result_t *r)
{
    size_t          n;
    unsigned char  *out;

    n = fn(NULL, 0, r);
    FZ_ASSERT(n <= APIGW_TB_INT_LEN, "fits APIGW_TB_INT_LEN");

    out = malloc(n ? n : 1);
    FZ_ASSERT(out != NULL, "out of memory");
    FZ_ASSERT(fn(out, n, r) == n, "measured length == written length");
    free(out);
}


static void
fz_token_bucket(redisReply *reply, uint64_t clock)
{
    int                 got;
    size_t              i, k, nv, t, n;
    long long           v[FZ_RL_MAX * APIGW_TB_REPLY_INTS];
    int64_t             sent, until, now;
    unsigned char      *out;
    apigw_tb_result_t   res[FZ_RL_MAX], local;
    apigw_str_t         name = apigw_string("per_minute");

    nv = reply->elements;

    if (nv == 0 || nv > FZ_RL_MAX * APIGW_TB_REPLY_INTS
        || nv % APIGW_TB_REPLY_INTS != 0)
    {
        return;
    }

    k = nv / APIGW_TB_REPLY_INTS;

    for (i = 0; i < nv; i++) {
        if (reply->element[i]->type != REDIS_REPLY_INTEGER) {
            return;
        }

        v[i] = reply->element[i]->integer;
    }

    got = apigw_tb_decode(res, k, v, nv);

    FZ_ASSERT(apigw_tb_decode(res, k - 1, v, nv) == -1,
              "more results than room is refused");

    if (got < 0) {
        return;
    }

    FZ_ASSERT((size_t) got == k, "one result per bucket");

    (void) apigw_tb_all_allowed(res, k);

    t = apigw_tb_tightest(res, k);
    FZ_ASSERT(t < k, "the tightest is one of them");

    for (i = 0; i < k; i++) {
        FZ_ASSERT(res[i].remaining <= res[i].limit, "remaining <= limit");

        fz_check_hdr(apigw_tb_hdr_limit, &res[i]);
        fz_check_hdr(apigw_tb_hdr_remaining, &res[i]);
        fz_check_hdr(apigw_tb_hdr_reset, &res[i]);
        fz_check_hdr(apigw_tb_hdr_retry_after, &res[i]);

        FZ_ASSERT(apigw_tb_reset_s(&res[i]) >= 0, "reset >= 0");
        FZ_ASSERT(res[i].allowed ? apigw_tb_retry_after_s(&res[i]) == 0
                                 : apigw_tb_retry_after_s(&res[i]) >= 1,
                  "Retry-After at least 1 when refused");

        n = apigw_tb_hdr_ratelimit(NULL, 0, &name, &res[i]);
        FZ_ASSERT(n <= APIGW_TB_SF_LEN(name.len), "RateLimit room");
        out = malloc(n);
        FZ_ASSERT(out != NULL, "out of memory");
        FZ_ASSERT(apigw_tb_hdr_ratelimit(out, n, &name, &res[i]) == n,
                  "measured length == written length");
        free(out);

        /* the deny cache on a monotonic clock, as ngx_current_msec */
        sent = (int64_t) (clock & 0x3ffffffffffULL);
        until = apigw_tb_deny_until(&res[i], sent, (i & 1) ? 1000 : 0);

        if (res[i].allowed || res[i].retry_after_ms == 0) {
            FZ_ASSERT(until == 0, "nothing to cache");
            continue;
        }

        FZ_ASSERT(until > sent, "a deadline after the send");

        now = sent + (int64_t) ((clock >> 42) & 0xffffffff);

        if (apigw_tb_deny_local(&res[i], sent, until, now, &local)) {
            FZ_ASSERT(now < until, "refused only before the deadline");
            FZ_ASSERT(!local.allowed && local.retry_after_ms >= 1
                      && local.reset_ms >= local.retry_after_ms,
                      "a cached refusal is a refusal");
            fz_check_hdr(apigw_tb_hdr_retry_after, &local);
            fz_check_hdr(apigw_tb_hdr_reset, &local);

        } else {
            FZ_ASSERT(now >= until, "the cache answers before the deadline");
        }
    }
}


static void
fz_key_record(redisReply *reply)
{
    size_t               i;
    redisReply          *e;
    unsigned char       *copies[FZ_KEY_FIELDS];
    apigw_str_t         *f[FZ_KEY_FIELDS];
    apigw_key_record_t   rec;
    apigw_rate_t         rate;
    uint64_t             burst;
    const char          *err;

    memset(&rec, 0, sizeof(rec));

    f[0] = &rec.key_id;
    f[1] = &rec.tenant;
    f[2] = &rec.scopes;
    f[3] = &rec.status;
    f[4] = &rec.expires_at;
    f[5] = &rec.account_status;
    f[6] = &rec.rate;
    f[7] = &rec.burst;

    for (i = 0; i < FZ_KEY_FIELDS; i++) {
        e = reply->element[i];
        copies[i] = NULL;

        if (e->type != REDIS_REPLY_STRING || e->len == 0) {
            continue;
        }

        copies[i] = malloc(e->len);
        FZ_ASSERT(copies[i] != NULL, "out of memory");
        memcpy(copies[i], e->str, e->len);

        f[i]->data = copies[i];
        f[i]->len = e->len;
    }

    (void) apigw_key_record_check(&rec, 1700000000LL);
    (void) apigw_scopes_has(&rec.scopes, (const unsigned char *) "orders:read",
                            11);

    if (rec.rate.len) {
        err = apigw_rate_parse(rec.rate.data, rec.rate.len, &rate);

        if (err == NULL) {
            burst = rate.tokens;

            if (rec.burst.len == 0
                || apigw_burst_parse(rec.burst.data, rec.burst.len, &burst)
                   == NULL)
            {
                (void) apigw_tb_check(burst, &rate);
            }
        }
    }

    for (i = 0; i < FZ_KEY_FIELDS; i++) {
        free(copies[i]);
    }
}


static int
fz_reply_is(redisReply *e, const char *s)
{
    size_t  n;

    n = strlen(s);

    return (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS)
           && (size_t) e->len == n && memcmp(e->str, s, n) == 0;
}


static void
fz_idem_claim(redisReply *reply)
{
    redisReply           *e;
    unsigned char        *p;
    apigw_idem_header_t  *headers;
    apigw_idem_record_t   rec;

    if (!fz_reply_is(reply->element[0], "completed")
        || reply->elements != 3
        || reply->element[2]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    e = reply->element[2];

    p = malloc(e->len ? e->len : 1);
    headers = malloc(APIGW_IDEM_MAX_HEADERS * sizeof(apigw_idem_header_t));
    FZ_ASSERT(p != NULL && headers != NULL, "out of memory");

    if (e->len) {
        memcpy(p, e->str, e->len);
    }

    if (apigw_idem_record_decode(p, e->len, headers, APIGW_IDEM_MAX_HEADERS,
                                 &rec) == 0)
    {
        FZ_ASSERT(rec.nheaders <= APIGW_IDEM_MAX_HEADERS, "bounded");
        FZ_ASSERT(rec.body.data + rec.body.len == p + e->len, "whole");
    }

    free(headers);
    free(p);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int           n;
    void         *r;
    uint64_t      clock;
    size_t        i;
    redisReader  *reader;
    redisReply   *reply;

    if (fz_huge_array(data, size)) {
        return 0;
    }

    clock = 0;

    for (i = 0; i < size && i < 8; i++) {
        clock = (clock << 8) | data[i];
    }

    reader = redisReaderCreate();
    FZ_ASSERT(reader != NULL, "out of memory");

    /* in two feeds, as a reply may arrive split across reads */
    n = redisReaderFeed(reader, (const char *) data, size / 2);
    if (n == REDIS_OK) {
        n = redisReaderFeed(reader, (const char *) data + size / 2,
                            size - size / 2);
    }

    while (n == REDIS_OK) {
        r = NULL;

        if (redisReaderGetReply(reader, &r) != REDIS_OK || r == NULL) {
            break;
        }

        reply = r;

        if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
            fz_token_bucket(reply, clock);

            if (reply->elements == FZ_KEY_FIELDS) {
                fz_key_record(reply);
            }

            fz_idem_claim(reply);
        }

        freeReplyObject(reply);
    }

    redisReaderFree(reader);

    return 0;
}
