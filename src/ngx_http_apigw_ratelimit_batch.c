/*
 * Rate-limit checks coalesced per event-loop pass
 * (see ngx_http_apigw_ratelimit_batch.h).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_apigw_metrics.h"
#include "ngx_http_apigw_ratelimit_batch.h"


struct ngx_http_apigw_rl_batch_s {
    ngx_str_node_t                 sn;          /* while open: its slot part */
    ngx_queue_t                    queue;       /* open batches, or free */
    ngx_queue_t                    all;         /* freed at exit */
    ngx_uint_t                     n;           /* waiters that joined */
    ngx_uint_t                     items;       /* their items */
    ngx_http_apigw_rl_waiter_t    *waiter[APIGW_TB_BATCH_CHECKS];
                                                /* NULL: the request left */
    ngx_uint_t                     sent[APIGW_TB_BATCH_CHECKS];
                                                /* items in the call */
    u_char                         slot[1];
};


/* one per worker: the open batches and the buffers of a call */
typedef struct {
    ngx_rbtree_t                   tree;        /* open, by slot part */
    ngx_rbtree_node_t              sentinel;
    ngx_queue_t                    open;        /* in the order they opened */
    ngx_queue_t                    free;
    ngx_queue_t                    all;
    ngx_event_t                    flush;
    size_t                         slot_max;
    ngx_http_apigw_redis_script_t *script;
    apigw_tb_batch_t               tb;
    const char                    *argv[APIGW_TB_BATCH_ARGC];
    size_t                         argvlen[APIGW_TB_BATCH_ARGC];
    u_char                         num[APIGW_TB_BATCH_NUM];
    long long                      v[APIGW_TB_REPLY_LEN(APIGW_TB_BATCH_ITEMS)];
} ngx_http_apigw_rl_batcher_t;


static void ngx_http_apigw_rl_batch_flush(ngx_event_t *ev);
static void ngx_http_apigw_rl_batch_send(ngx_http_apigw_rl_batch_t *b);
static void ngx_http_apigw_rl_batch_reply(void *data,
    ngx_http_apigw_redis_status_e status, redisReply *reply);
static void ngx_http_apigw_rl_batch_detach(void *data);


static ngx_http_apigw_rl_batcher_t  *ngx_http_apigw_rl_batcher;


ngx_int_t
ngx_http_apigw_rl_batch_init_process(ngx_cycle_t *cycle,
    ngx_http_apigw_redis_script_t *script, size_t prefix_len)
{
    ngx_http_apigw_rl_batcher_t  *bt;

    if (ngx_http_apigw_rl_batcher) {
        return NGX_OK;
    }

    /* one block for the worker's life: a call allocates no buffer */

    bt = ngx_calloc(sizeof(ngx_http_apigw_rl_batcher_t), cycle->log);
    if (bt == NULL) {
        return NGX_ERROR;
    }

    ngx_rbtree_init(&bt->tree, &bt->sentinel, ngx_str_rbtree_insert_value);
    ngx_queue_init(&bt->open);
    ngx_queue_init(&bt->free);
    ngx_queue_init(&bt->all);

    bt->flush.handler = ngx_http_apigw_rl_batch_flush;
    bt->flush.log = cycle->log;
    bt->flush.data = bt;

    bt->slot_max = APIGW_TB_KEY_LEN(prefix_len, 0);
    bt->script = script;

    ngx_http_apigw_rl_batcher = bt;

    return NGX_OK;
}


void
ngx_http_apigw_rl_batch_exit_process(void)
{
    ngx_queue_t                  *q;
    ngx_http_apigw_rl_batch_t    *b;
    ngx_http_apigw_rl_batcher_t  *bt;

    bt = ngx_http_apigw_rl_batcher;

    if (bt == NULL) {
        return;
    }

    /*
     * Calls still in flight never call back once the Redis client exits
     * (ngx_http_apigw_redis_exit_process), so their batches can go too.
     */

    if (bt->flush.posted) {
        ngx_delete_posted_event(&bt->flush);
    }

    while (!ngx_queue_empty(&bt->all)) {
        q = ngx_queue_head(&bt->all);
        ngx_queue_remove(q);
        b = ngx_queue_data(q, ngx_http_apigw_rl_batch_t, all);
        ngx_free(b);
    }

    ngx_free(bt);
    ngx_http_apigw_rl_batcher = NULL;
}


static ngx_http_apigw_rl_batch_t *
ngx_http_apigw_rl_batch_open(ngx_http_apigw_rl_batcher_t *bt, ngx_str_t *slot,
    uint32_t hash, ngx_log_t *log)
{
    ngx_queue_t                *q;
    ngx_http_apigw_rl_batch_t  *b;

    if (!ngx_queue_empty(&bt->free)) {
        q = ngx_queue_head(&bt->free);
        ngx_queue_remove(q);
        b = ngx_queue_data(q, ngx_http_apigw_rl_batch_t, queue);

    } else {
        b = ngx_alloc(offsetof(ngx_http_apigw_rl_batch_t, slot)
                      + bt->slot_max, log);
        if (b == NULL) {
            return NULL;
        }

        ngx_queue_insert_tail(&bt->all, &b->all);
    }

    b->n = 0;
    b->items = 0;
    ngx_memcpy(b->slot, slot->data, slot->len);

    b->sn.str.len = slot->len;
    b->sn.str.data = b->slot;
    b->sn.node.key = hash;

    ngx_rbtree_insert(&bt->tree, &b->sn.node);
    ngx_queue_insert_tail(&bt->open, &b->queue);

    return b;
}


ngx_int_t
ngx_http_apigw_rl_batch_add(ngx_http_request_t *r,
    ngx_http_apigw_rl_waiter_t *w)
{
    uint32_t                      hash;
    ngx_str_t                     slot;
    ngx_str_node_t               *sn;
    ngx_http_apigw_rl_batch_t    *b;
    ngx_http_apigw_rl_batcher_t  *bt;

    bt = ngx_http_apigw_rl_batcher;

    if (bt == NULL || w->n == 0 || w->n > APIGW_TB_BATCH_ITEMS) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "apigw rate limit: no batch for this check");
        return NGX_ERROR;
    }

    slot.data = (u_char *) w->items[0].bucket;
    slot.len = apigw_tb_key_slot_len(slot.data, w->items[0].bucket_len);

    if (slot.len == 0 || slot.len > bt->slot_max) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "apigw rate limit: a bucket key without a hash tag");
        return NGX_ERROR;
    }

    hash = ngx_crc32_short(slot.data, slot.len);

    sn = ngx_str_rbtree_lookup(&bt->tree, &slot, hash);
    b = (ngx_http_apigw_rl_batch_t *) sn;

    if (b && (b->n == APIGW_TB_BATCH_CHECKS
              || w->n > APIGW_TB_BATCH_ITEMS - b->items))
    {
        /* full: it goes now, and this check opens the next one */
        ngx_http_apigw_rl_batch_send(b);
        b = NULL;
    }

    if (b == NULL) {
        b = ngx_http_apigw_rl_batch_open(bt, &slot, hash, r->connection->log);
        if (b == NULL) {
            return NGX_ERROR;
        }
    }

    w->batch = b;
    w->slot = b->n;

    b->waiter[b->n] = w;
    b->sent[b->n] = 0;
    b->n++;
    b->items += w->n;

    if (!bt->flush.posted) {
        /*
         * Posted events run after every event of this pass was handled,
         * requests resumed from posted events included: the batch then
         * holds all this pass's checks of its key value.
         */
        ngx_post_event(&bt->flush, &ngx_posted_events);
    }

    return ngx_http_apigw_wait(r, w->ctx, ngx_http_apigw_rl_batch_detach, w);
}


static void
ngx_http_apigw_rl_batch_detach(void *data)
{
    ngx_http_apigw_rl_waiter_t  *w = data;

    /* its items may still be in the call: only the waiter is forgotten */
    w->batch->waiter[w->slot] = NULL;
}


static void
ngx_http_apigw_rl_batch_flush(ngx_event_t *ev)
{
    ngx_queue_t                  *q;
    ngx_http_apigw_rl_batch_t    *b;
    ngx_http_apigw_rl_batcher_t  *bt;

    bt = ev->data;

    while (!ngx_queue_empty(&bt->open)) {
        q = ngx_queue_head(&bt->open);
        b = ngx_queue_data(q, ngx_http_apigw_rl_batch_t, queue);
        ngx_http_apigw_rl_batch_send(b);
    }
}


static void
ngx_http_apigw_rl_batch_release(ngx_http_apigw_rl_batch_t *b)
{
    ngx_queue_insert_head(&ngx_http_apigw_rl_batcher->free, &b->queue);
}


/* ends one waiter's wait with a failure; why is copied */
static void
ngx_http_apigw_rl_batch_fail(ngx_http_apigw_rl_waiter_t *w,
    ngx_http_apigw_redis_status_e status, const char *why, size_t len)
{
    w->status = (status == NGX_HTTP_APIGW_REDIS_OK)
                ? NGX_HTTP_APIGW_REDIS_FAIL : status;

    len = ngx_min(len, 200);

    w->why.data = ngx_pnalloc(w->ctx->request->pool, len);
    w->why.len = w->why.data ? len : 0;

    if (w->why.data) {
        ngx_memcpy(w->why.data, why, len);
    }

    w->handler(w);
    ngx_http_apigw_wait_done(w->ctx);
}


static void
ngx_http_apigw_rl_batch_send(ngx_http_apigw_rl_batch_t *b)
{
    size_t                        argc;
    ngx_uint_t                    i;
    const char                   *why;
    ngx_http_apigw_rl_waiter_t   *w;
    ngx_http_apigw_redis_call_t  *call;
    ngx_http_apigw_rl_batcher_t  *bt;

    bt = ngx_http_apigw_rl_batcher;

    ngx_rbtree_delete(&bt->tree, &b->sn.node);
    ngx_queue_remove(&b->queue);

    apigw_tb_batch_init(&bt->tb);

    for (i = 0; i < b->n; i++) {
        w = b->waiter[i];

        if (w == NULL) {
            continue;
        }

        if (apigw_tb_batch_add(&bt->tb, w->items, w->n) != 0) {
            /* the glue checks every item first: this is a bug, not load */
            b->waiter[i] = NULL;
            why = "a check the token bucket script cannot take";
            ngx_http_apigw_rl_batch_fail(w, NGX_HTTP_APIGW_REDIS_FAIL,
                                         why, ngx_strlen(why));
            continue;
        }

        b->sent[i] = w->n;

        /*
         * The deny cache's deadline counts from here: Redis decides
         * after the send, so a token it promises never comes earlier.
         */
        w->sent = ngx_current_msec;
    }

    if (bt->tb.nchecks == 0) {
        ngx_http_apigw_rl_batch_release(b);
        return;
    }

    argc = apigw_tb_batch_argv(&bt->tb, bt->argv, bt->argvlen, bt->num);

    call = ngx_http_apigw_redis_call(bt->script, (int) bt->tb.nkeys,
                                     (int) argc, bt->argv, bt->argvlen,
                                     ngx_http_apigw_rl_batch_reply, b);
    if (call == NULL) {
        why = "out of memory";

        for (i = 0; i < b->n; i++) {
            w = b->waiter[i];

            if (w) {
                ngx_http_apigw_rl_batch_fail(w, NGX_HTTP_APIGW_REDIS_FAIL,
                                             why, ngx_strlen(why));
            }
        }

        ngx_http_apigw_rl_batch_release(b);
        return;
    }

    ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_RATELIMIT_CALLS);
    ngx_http_apigw_metric_add(NGX_HTTP_APIGW_M_RATELIMIT_CHECKS,
                              (ngx_atomic_int_t) bt->tb.nchecks);
}


/* the reply's integers into bt->v; NULL or what is wrong with it */
static const char *
ngx_http_apigw_rl_batch_ints(ngx_http_apigw_rl_batcher_t *bt,
    ngx_http_apigw_rl_batch_t *b, redisReply *reply, int64_t *now)
{
    size_t       i, nv, items;
    redisReply  *e;

    items = 0;

    for (i = 0; i < b->n; i++) {
        items += b->sent[i];
    }

    nv = APIGW_TB_REPLY_LEN(items);

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != nv) {
        return "unexpected reply to the token bucket script";
    }

    for (i = 0; i < nv; i++) {
        e = reply->element[i];

        if (e->type != REDIS_REPLY_INTEGER) {
            return "a token bucket reply that is not all integers";
        }

        bt->v[i] = e->integer;
    }

    if (apigw_tb_reply_now(bt->v, nv, items, now) != 0) {
        return "a token bucket reply out of range";
    }

    return NULL;
}


static void
ngx_http_apigw_rl_batch_reply(void *data,
    ngx_http_apigw_redis_status_e status, redisReply *reply)
{
    size_t                        off, len;
    int64_t                       now;
    ngx_uint_t                    i, j;
    const char                   *why;
    ngx_http_apigw_rl_batch_t    *b = data;
    ngx_http_apigw_rl_waiter_t   *w;
    ngx_http_apigw_rl_batcher_t  *bt;

    bt = ngx_http_apigw_rl_batcher;

    now = 0;
    len = 0;

    if (status == NGX_HTTP_APIGW_REDIS_TIMEOUT) {
        why = "no reply in time";

    } else if (status != NGX_HTTP_APIGW_REDIS_OK) {
        why = "not connected";

    } else if (reply->type == REDIS_REPLY_ERROR) {
        why = reply->str;
        len = reply->len;

    } else {
        why = ngx_http_apigw_rl_batch_ints(bt, b, reply, &now);
    }

    if (why && len == 0) {
        len = ngx_strlen(why);
    }

    off = 1;

    for (i = 0; i < b->n; i++) {
        w = b->waiter[i];

        if (w == NULL || why) {
            if (w) {
                ngx_http_apigw_rl_batch_fail(w, status, why, len);
            }

            off += 3 * b->sent[i];
            continue;
        }

        for (j = 0; j < b->sent[i]; j++) {
            if (apigw_tb_decode_item(&w->res[j], w->items[j].capacity, now,
                                     &bt->v[off + 3 * j])
                != 0)
            {
                break;
            }
        }

        off += 3 * b->sent[i];

        if (j < b->sent[i]) {
            why = "a token bucket reply out of range";
            ngx_http_apigw_rl_batch_fail(w, NGX_HTTP_APIGW_REDIS_FAIL, why,
                                         ngx_strlen(why));
            why = NULL;
            continue;
        }

        w->status = NGX_HTTP_APIGW_REDIS_OK;
        w->handler(w);
        ngx_http_apigw_wait_done(w->ctx);
    }

    ngx_http_apigw_rl_batch_release(b);
}
