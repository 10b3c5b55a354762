/*
 * Redis replies: arbitrary bytes from the Redis socket through hiredis's
 * own RESP reader (redisReaderFeed / redisReaderGetReply, as the module's
 * async context uses it), then every reply through the core decoding the
 * glue applies to it:
 *
 *   - an all-integer array: the token-bucket script's reply to a batch,
 *     as ngx_http_apigw_rl_batch_reply() checks it, into
 *     apigw_tb_reply_now() and apigw_tb_decode_item() per item, split
 *     into requests (checks) of 1..FZ_RL_MAX items, then the header math
 *     and the local deny cache of each request's results;
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


/*
 * The capacity the glue sent for item i: picked by the input from values
 * the glue sends (1 .. APIGW_TB_MAX_TOKENS), values it never sends (0,
 * over the maximum) and the item's own remaining, so that decoding both
 * succeeds and fails.
 */
static uint64_t
fz_capacity(uint64_t clock, size_t i, long long remaining)
{
    switch ((clock >> ((i % 21) * 3)) & 7) {
    case 0:
        return 1;
    case 1:
        return 10;
    case 2:
        return APIGW_TB_MAX_TOKENS;
    case 3:
        return 0;
    case 4:
        return APIGW_TB_MAX_TOKENS + 1;
    case 5:
        return remaining > 0 ? (uint64_t) remaining + 1 : 1;
    default:
        return remaining > 0 ? (uint64_t) remaining : 1;
    }
}


/* One request's results, as ngx_http_apigw_rl_* uses them. */
static void
fz_check(apigw_tb_result_t *res, size_t k, uint64_t clock)
{
    size_t              i, t, n;
    int64_t             sent, until, now;
    unsigned char      *out;
    apigw_tb_result_t   local;
    apigw_str_t         name = apigw_string("per_minute");

    (void) apigw_tb_all_allowed(res, k);

    t = apigw_tb_tightest(res, k);
    FZ_ASSERT(t < k, "the tightest is one of them");

    for (i = 0; i < k; i++) {
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


/*
 * The script's reply to a batch: now_ms, then 3 integers per item.  The
 * items are split into checks (requests) of 1..FZ_RL_MAX items by the
 * input, as ngx_http_apigw_rl_batch_reply() splits them by waiter.
 */
static void
fz_token_bucket(redisReply *reply, uint64_t clock)
{
    int                 ok;
    size_t              i, nv, items, j, k, off;
    uint64_t            cap;
    int64_t             now;
    long long          *v;
    apigw_tb_result_t   res[FZ_RL_MAX], one;

    nv = reply->elements;

    /* up to one item more than a batch may hold */
    if (nv > APIGW_TB_REPLY_LEN(APIGW_TB_BATCH_ITEMS + 1)) {
        return;
    }

    for (i = 0; i < nv; i++) {
        if (reply->element[i]->type != REDIS_REPLY_INTEGER) {
            return;
        }
    }

    v = malloc(nv * sizeof(long long));
    FZ_ASSERT(v != NULL, "out of memory");

    for (i = 0; i < nv; i++) {
        v[i] = reply->element[i]->integer;
    }

    items = (nv - 1) / 3;

    /* the length must be exactly that of the items sent */
    FZ_ASSERT(apigw_tb_reply_now(v, nv, items + 1, &now) == -1,
              "a reply short of an item is refused");
    FZ_ASSERT(items == 0 || apigw_tb_reply_now(v, nv, items - 1, &now) == -1,
              "a reply with an item too many is refused");

    now = -7;
    ok = apigw_tb_reply_now(v, nv, items, &now) == 0;

    FZ_ASSERT(ok == (nv == 1 + 3 * items
                     && items >= 1 && items <= APIGW_TB_BATCH_ITEMS
                     && v[0] >= 1 && v[0] <= (long long) APIGW_TB_MAX_UNITS),
              "reply_now: 1 + 3 per item, 1..256 items, now in 1 .. 2^53");

    if (!ok) {
        free(v);
        return;
    }

    FZ_ASSERT(now == v[0], "now_ms is the first integer");

    off = 1;
    k = 0;

    for (j = 0; j < items; j++) {
        cap = fz_capacity(clock, j, v[off]);

        if (apigw_tb_decode_item(&one, cap, now, &v[off]) != 0) {
            FZ_ASSERT(cap < 1 || cap > APIGW_TB_MAX_TOKENS
                      || v[off] < 0 || (uint64_t) v[off] > cap
                      || v[off + 1] < 0
                      || v[off + 1] > (long long) APIGW_TB_MAX_UNITS
                      || v[off + 2] < 0
                      || v[off + 2] > (long long) APIGW_TB_MAX_UNITS,
                      "decode refuses only values out of range");

            /* the glue fails that request; the others go on */
            if (k) {
                fz_check(res, k, clock);
            }

            k = 0;
            off += 3;
            continue;
        }

        FZ_ASSERT(one.remaining >= 0 && one.remaining <= one.limit,
                  "0 <= remaining <= limit");
        FZ_ASSERT(one.limit == (int64_t) cap, "limit is the capacity sent");
        FZ_ASSERT(one.reset_ms >= 0
                  && one.reset_ms <= (int64_t) APIGW_TB_MAX_UNITS
                  && one.retry_after_ms >= 0
                  && one.retry_after_ms <= (int64_t) APIGW_TB_MAX_UNITS,
                  "reset and retry within 0 .. 2^53");
        FZ_ASSERT(one.allowed == (one.retry_after_ms == 0),
                  "allowed is retry_after_ms == 0");
        FZ_ASSERT(one.now_ms == now, "the reply's one clock");
        FZ_ASSERT(one.remaining == v[off] && one.reset_ms == v[off + 1]
                  && one.retry_after_ms == v[off + 2], "values kept");

        res[k++] = one;
        off += 3;

        /* a check ends after 1..FZ_RL_MAX items, as the input says */
        if (k == FZ_RL_MAX || ((clock >> (j % 61)) & 1)) {
            fz_check(res, k, clock);
            k = 0;
        }
    }

    if (k) {
        fz_check(res, k, clock);
    }

    FZ_ASSERT(off == nv, "every integer read once");

    free(v);
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
