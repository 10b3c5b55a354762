/*
 * Token-bucket rate limiting without nginx: rate and burst parsing, the
 * Redis script and its reply, the Redis key of a bucket, the rate-limit
 * response headers, and the local deny cache rule.
 *
 * The bucket lives in Redis and is changed by one atomic script
 * (apigw_token_bucket_lua) that takes its clock from Redis TIME, so nginx
 * nodes with skewed clocks share one exact bucket.  The script may check
 * several buckets at once, all or nothing: a request refused by one policy
 * consumes no token of any other (e.g. a flood refused by "10r/s" must not
 * drain "10000r/d").  Every bucket of one call must live in one Redis
 * Cluster slot, so the hash tag of a bucket key is the rate-limit key value
 * alone, never the policy name (see apigw_tb_key).
 *
 * Script call.  One carries a batch: the checks of one or more requests
 * whose buckets share one hash tag (one key value), built and decoded by
 * the apigw_tb_batch_* functions below:
 *
 *   EVALSHA sha m  key_1 .. key_m               distinct bucket keys
 *                  s  (capacity tokens period_ms cost) x s    parameter sets
 *                  c  then per check: n  (key set) x n        1-based indexes
 *
 *   capacity   bucket size in tokens (burst=, default the rate's N)
 *   tokens     refill: this many tokens ...
 *   period_ms  ... per this many milliseconds (apigw_rate_t)
 *   cost       tokens a request takes, 1 <= cost <= capacity
 *
 * Checks are decided in order, each all or nothing over its n buckets,
 * as if each were its own call at the same Redis TIME.  Reply: now_ms,
 * then 3 integers per item, checks and items in the order sent,
 *
 *   remaining reset_ms retry_after_ms      (retry_after_ms 0: allowed)
 *
 * decoded by apigw_tb_reply_now() and apigw_tb_decode_item().  A request is
 * allowed only when every bucket of its check allowed
 * (apigw_tb_all_allowed()).
 */
#ifndef APIGW_TOKEN_BUCKET_H
#define APIGW_TOKEN_BUCKET_H

#include <stdint.h>
#include "apigw_str.h"

/* largest N of "Nr/s" and largest burst */
#define APIGW_TB_MAX_TOKENS     1000000000ULL

/*
 * Redis Lua numbers are doubles: the script counts in integer sub-token
 * units and needs capacity * (period_ms / gcd(period_ms, tokens)) within
 * 2^53 to stay exact (apigw_tb_check).
 */
#define APIGW_TB_MAX_UNITS      9007199254740992ULL

/* longer rate-limit key values are replaced by their SHA-256 in the key */
#define APIGW_TB_KEY_MAX        128

/* policy names: 1..64 of [A-Za-z0-9_.-] */
#define APIGW_TB_NAME_MAX       64

/* digits of any value the header functions print (int64, with sign) */
#define APIGW_TB_INT_LEN        20

/* room for a RateLimit / RateLimit-Policy value of a name of n bytes */
#define APIGW_TB_SF_LEN(n)      (2 * (n) + 2 + 2 * (3 + APIGW_TB_INT_LEN))

/* room for apigw_tb_key() of a prefix and policy of these lengths */
#define APIGW_TB_KEY_LEN(prefix_len, policy_len)                              \
    ((prefix_len) + sizeof("{rlh:}:") - 1 + 2 * APIGW_TB_KEY_MAX              \
     + (policy_len))

/* the Redis script; see apigw_token_bucket.c for its design */
extern const char apigw_token_bucket_lua[];

typedef struct {
    uint64_t  tokens;       /* refill this many tokens ... */
    uint64_t  period_ms;    /* ... every this many milliseconds */
} apigw_rate_t;

/*
 * "Nr/s", "Nr/m", "Nr/h", "Nr/d" with 1 <= N <= APIGW_TB_MAX_TOKENS.
 * Returns NULL, or a static message for "nginx -t" (the value is not
 * quoted in it: the caller adds it).
 */
const char *apigw_rate_parse(const unsigned char *p, size_t len,
    apigw_rate_t *rate);

/* A positive integer up to APIGW_TB_MAX_TOKENS; NULL or a message. */
const char *apigw_burst_parse(const unsigned char *p, size_t len,
    uint64_t *burst);

/*
 * Whether the script can count this capacity at this rate exactly (see
 * APIGW_TB_MAX_UNITS).  NULL or a message.  Call it for every configured
 * policy and for every per-key override read from Redis.
 */
const char *apigw_tb_check(uint64_t capacity, const apigw_rate_t *rate);

/* 1 when the name is 1..APIGW_TB_NAME_MAX of [A-Za-z0-9_.-]. */
int apigw_tb_name_valid(const unsigned char *p, size_t len);

/*
 * The Redis key of one bucket:
 *
 *     <prefix>{rl:<key>}:<policy>
 *     <prefix>{rlh:<sha256 hex of key>}:<policy>  when key > APIGW_TB_KEY_MAX
 *
 * The hash tag holds only the key value, so every policy of one key value
 * shares a Cluster slot and one script call can check them together; it
 * is never empty, whatever bytes the key holds.  The key is copied as is,
 * NUL and braces included (the script gets it as a binary-safe argument);
 * long keys are hashed so a client-controlled key cannot grow Redis
 * memory.  Names cannot collide: the policy holds no '}', so the last '}'
 * ends the key.
 *
 * Returns the length of the key, writing it only when buf is not NULL and
 * len is at least that; 0 when the key is empty (like limit_req, the
 * caller does not account such requests), the prefix holds '{' (it would
 * move the hash tag) or the policy holds '}'.
 */
size_t apigw_tb_key(unsigned char *buf, size_t len, const apigw_str_t *prefix,
    const apigw_str_t *policy, const apigw_str_t *key);

/*
 * The part of a bucket key that picks its Redis Cluster slot and names
 * its key value: the prefix and the hash tag, up to and including the
 * last '}'.  Buckets with equal parts may share one script call.  Returns
 * its length, 0 when key is not an apigw_tb_key().
 */
size_t apigw_tb_key_slot_len(const unsigned char *key, size_t len);

/* One bucket's part of the script's reply. */
typedef struct {
    int       allowed;          /* 1: this bucket had the tokens */
    int64_t   remaining;        /* whole tokens left after this request */
    int64_t   limit;            /* capacity */
    int64_t   reset_ms;         /* until the bucket is full again */
    int64_t   retry_after_ms;   /* refused: until it holds cost tokens */
    int64_t   now_ms;           /* Redis TIME of the decision, unix ms */
} apigw_tb_result_t;

/* One bucket of one request's check. */
typedef struct {
    const unsigned char  *bucket;       /* apigw_tb_key() */
    size_t                bucket_len;
    uint64_t              capacity;
    apigw_rate_t          rate;
    uint64_t              cost;
} apigw_tb_item_t;

/*
 * Bounds of one script call: Redis runs a script alone, so a batch must
 * stay short (256 items take Redis well under a millisecond).
 */
#define APIGW_TB_BATCH_CHECKS   64
#define APIGW_TB_BATCH_ITEMS    256

/* arguments after the script's sha and key count, at most */
#define APIGW_TB_BATCH_ARGC                                                   \
    (APIGW_TB_BATCH_ITEMS + 1 + 4 * APIGW_TB_BATCH_ITEMS + 1                  \
     + APIGW_TB_BATCH_CHECKS + 2 * APIGW_TB_BATCH_ITEMS)

/* room apigw_tb_batch_argv() may need for the numbers it prints */
#define APIGW_TB_BATCH_NUM                                                    \
    (21 + 4 * APIGW_TB_BATCH_ITEMS * 20 + 21                                  \
     + APIGW_TB_BATCH_CHECKS * 3 + 2 * APIGW_TB_BATCH_ITEMS * 3)

/* integers in the reply to a batch of n items */
#define APIGW_TB_REPLY_LEN(n)   (1 + 3 * (n))

/*
 * A batch being built.  It points at the callers' bucket keys, which must
 * live until apigw_tb_batch_argv()'s arguments have been sent.
 */
typedef struct {
    size_t                nkeys;
    size_t                nsets;
    size_t                nchecks;
    size_t                nitems;
    const unsigned char  *key[APIGW_TB_BATCH_ITEMS];
    size_t                key_len[APIGW_TB_BATCH_ITEMS];
    struct {
        uint64_t          capacity;
        apigw_rate_t      rate;
        uint64_t          cost;
    }                     set[APIGW_TB_BATCH_ITEMS];
    uint16_t              item_key[APIGW_TB_BATCH_ITEMS];
    uint16_t              item_set[APIGW_TB_BATCH_ITEMS];
    uint16_t              check_items[APIGW_TB_BATCH_CHECKS];
} apigw_tb_batch_t;

void apigw_tb_batch_init(apigw_tb_batch_t *b);

/*
 * Adds one request's check of n buckets (all of one hash tag: the caller
 * groups them).  Returns 0, or -1 and leaves the batch unchanged when it
 * is full (APIGW_TB_BATCH_*) or an item is out of range (empty key, cost
 * outside 1..capacity, apigw_tb_check() refuses it, its bucket is already
 * an item of this check).
 */
int apigw_tb_batch_add(apigw_tb_batch_t *b, const apigw_tb_item_t *items,
    size_t n);

/*
 * The call's arguments after the key count (which is b->nkeys): keys
 * point at the callers' memory, numbers are printed into num, which needs
 * APIGW_TB_BATCH_NUM bytes; argv and argvlen need APIGW_TB_BATCH_ARGC
 * entries.  Returns the number of arguments.
 */
size_t apigw_tb_batch_argv(const apigw_tb_batch_t *b, const char **argv,
    size_t *argvlen, unsigned char *num);

/*
 * The reply to a batch of nitems items, already turned into nv integers:
 * -1 when its length or now_ms is wrong (a foreign or broken reply: treat
 * as Redis failure), else 0 and *now_ms.
 */
int apigw_tb_reply_now(const long long *v, size_t nv, size_t nitems,
    int64_t *now_ms);

/*
 * One item's 3 integers (at v) into out, for the capacity it was sent
 * with.  -1 when a value is out of range.
 */
int apigw_tb_decode_item(apigw_tb_result_t *out, uint64_t capacity,
    int64_t now_ms, const long long *v);

/* 1 when every bucket allowed: the request goes on and was counted. */
int apigw_tb_all_allowed(const apigw_tb_result_t *res, size_t n);

/*
 * The result the headers describe: the bucket closest to empty.  Refused
 * buckets first (among them the longest retry_after_ms, so Retry-After is
 * never too early), then the smallest remaining / limit, ties to the
 * smallest remaining, then the first.  Returns an index, n when n is 0.
 */
size_t apigw_tb_tightest(const apigw_tb_result_t *res, size_t n);

/*
 * Numbers behind the headers.  All round up: a client that waits the
 * advertised time always finds what was promised.
 */
int64_t apigw_tb_reset_epoch(const apigw_tb_result_t *r);  /* unix s, full */
int64_t apigw_tb_reset_s(const apigw_tb_result_t *r);      /* s until full */
int64_t apigw_tb_retry_after_s(const apigw_tb_result_t *r); /* 0: allowed */
int64_t apigw_tb_window_s(uint64_t capacity, const apigw_rate_t *rate);

/*
 * Header values.  Each returns the value's length and writes it (no NUL)
 * only when buf is not NULL and len is at least that length: call with
 * NULL to measure, or with a buffer of the APIGW_TB_* size.
 */

/* X-RateLimit-Limit: the capacity */
size_t apigw_tb_hdr_limit(unsigned char *buf, size_t len,
    const apigw_tb_result_t *r);

/* X-RateLimit-Remaining */
size_t apigw_tb_hdr_remaining(unsigned char *buf, size_t len,
    const apigw_tb_result_t *r);

/* X-RateLimit-Reset: unix seconds when the bucket is full again */
size_t apigw_tb_hdr_reset(unsigned char *buf, size_t len,
    const apigw_tb_result_t *r);

/* Retry-After: whole seconds, at least 1; 0 bytes when r was allowed */
size_t apigw_tb_hdr_retry_after(unsigned char *buf, size_t len,
    const apigw_tb_result_t *r);

/*
 * RateLimit-Policy item: "name";q=<capacity>;w=<seconds to refill an
 * empty bucket>.  Several policies make a list: join items with ", ".
 */
size_t apigw_tb_hdr_policy(unsigned char *buf, size_t len,
    const apigw_str_t *name, uint64_t capacity, const apigw_rate_t *rate);

/* RateLimit item: "name";r=<remaining>;t=<seconds until full> */
size_t apigw_tb_hdr_ratelimit(unsigned char *buf, size_t len,
    const apigw_str_t *name, const apigw_tb_result_t *r);

/*
 * Local deny cache.  While a bucket is known empty a worker may refuse
 * without asking Redis.  Redis's clock and the local clock differ by an
 * unknown offset, so only the duration travels: the deadline is the local
 * (monotonic, e.g. ngx_current_msec) time at which the command was SENT
 * plus retry_after_ms.  Redis decided after the send, so its token comes
 * at or after that deadline: the cache never refuses a request Redis
 * would have allowed; at worst it asks Redis one round trip early.
 *
 * Returns that deadline, or 0 when the result was allowed (nothing to
 * cache).  max_ms > 0 caps the time cached (a deleted bucket or a reload
 * with another rate is then seen within max_ms).
 */
int64_t apigw_tb_deny_until(const apigw_tb_result_t *r, int64_t sent_ms,
    int64_t max_ms);

/*
 * A refusal from the cache: when now_local is before until (from
 * apigw_tb_deny_until of cached and sent_ms), fills out with cached as it
 * stands at now_local (retry, reset and now moved on by the time since
 * sent_ms, Retry-After still at least 1) and returns 1; else returns 0 and
 * the caller asks Redis.
 */
int apigw_tb_deny_local(const apigw_tb_result_t *cached, int64_t sent_ms,
    int64_t until, int64_t now_local, apigw_tb_result_t *out);

#endif
