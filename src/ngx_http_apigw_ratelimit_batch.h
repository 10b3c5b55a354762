/*
 * Rate-limit checks coalesced per event-loop pass.
 *
 * Every request of a limited location needs one token-bucket script call.
 * Run one by one, the script's fixed cost (the call itself, TIME, reading
 * and writing the bucket) dominates Redis's CPU, and a busy key value is
 * exactly the case where many checks arrive together.  So a check is not
 * sent at once: it joins the batch of its key value (its bucket keys' hash
 * tag, so a batch never spans Redis Cluster slots), and at the end of the
 * worker's current event-loop pass (a posted event) each batch goes out as
 * one script call.  Nothing waits longer for it: hiredis would only have
 * written the commands on the next pass anyway.  Each check stays atomic
 * and all or nothing; Redis decides the checks of a batch in the order
 * they joined (see apigw_token_bucket.c).
 */
#ifndef NGX_HTTP_APIGW_RATELIMIT_BATCH_H
#define NGX_HTTP_APIGW_RATELIMIT_BATCH_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "apigw_token_bucket.h"
#include "ngx_http_apigw_module.h"

typedef struct ngx_http_apigw_rl_batch_s   ngx_http_apigw_rl_batch_t;
typedef struct ngx_http_apigw_rl_waiter_s  ngx_http_apigw_rl_waiter_t;

/*
 * Called once per waiter still attached when its batch's reply (or failure)
 * is in: results are in w->res (status OK) or w->why says what failed.
 * The request then resumes from a posted event.
 */
typedef void (*ngx_http_apigw_rl_batch_pt)(ngx_http_apigw_rl_waiter_t *w);

/* one request's check; lives in the request's pool */
struct ngx_http_apigw_rl_waiter_s {
    ngx_http_apigw_ctx_t           *ctx;
    apigw_tb_item_t                *items;      /* n, of one hash tag */
    apigw_tb_result_t              *res;        /* n, filled on reply */
    ngx_uint_t                      n;
    ngx_http_apigw_rl_batch_pt      handler;
    void                           *data;
    ngx_http_apigw_redis_status_e   status;
    ngx_str_t                       why;        /* status not OK, or a
                                                   broken reply */
    ngx_msec_t                      sent;       /* when its call left */
    /* private */
    ngx_http_apigw_rl_batch_t      *batch;
    ngx_uint_t                      slot;
};

/*
 * Queues the check and returns NGX_AGAIN (the stage returns it), or
 * NGX_ERROR.  w->ctx, items, res, n, handler and data must be set.
 */
ngx_int_t ngx_http_apigw_rl_batch_add(ngx_http_request_t *r,
    ngx_http_apigw_rl_waiter_t *w);

/* Worker lifecycle (only where rate limits and Redis are configured). */
ngx_int_t ngx_http_apigw_rl_batch_init_process(ngx_cycle_t *cycle,
    ngx_http_apigw_redis_script_t *script, size_t prefix_len);
void ngx_http_apigw_rl_batch_exit_process(void);

#endif
