/*
 * apigw metrics: counters of the whole nginx instance in one shared memory
 * zone, created whenever the module is loaded, and exposed in Prometheus
 * text format by "apigw_metrics;" in a location.
 *
 * Counting is the hot path, so it is an inline atomic add and nothing
 * more: each worker owns a cache-line aligned shard of the counters, so
 * workers never contend for a line, and the shards are summed only when
 * the metrics are read.  The atomic add still matters: during a reload an
 * old worker and a new one may share a shard.  Before the zone exists (the
 * master, a configuration test, no http block) every call is a no-op.
 */
#ifndef NGX_HTTP_APIGW_METRICS_H
#define NGX_HTTP_APIGW_METRICS_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "apigw_catalog.h"
#include "apigw_envelope.h"


/* the Redis latency histogram: 11 bounds, 0.5 ms .. 1 s, and +Inf */
#define NGX_HTTP_APIGW_LATENCY_BOUNDS  11


/*
 * The counters callers name.  One increment per event, where the comment
 * says; the exposition's series are listed in ngx_http_apigw_metrics.c.
 */
typedef enum {
    /* apigw_requests_total{outcome}: each main request once, at its end */
    NGX_HTTP_APIGW_M_REQUESTS_OK = 0,
    NGX_HTTP_APIGW_M_REQUESTS_ERROR,

    /* the Redis client: calls submitted, and how they ended */
    NGX_HTTP_APIGW_M_REDIS_COMMANDS,
    NGX_HTTP_APIGW_M_REDIS_ERRORS,
    NGX_HTTP_APIGW_M_REDIS_TIMEOUTS,
    NGX_HTTP_APIGW_M_REDIS_RECONNECTS,
    /* apigw_redis_error_replies_total{class}: apigw_redis_err_class_t */
    NGX_HTTP_APIGW_M_REDIS_ERR_TRANSIENT,
    NGX_HTTP_APIGW_M_REDIS_ERR_READONLY,
    NGX_HTTP_APIGW_M_REDIS_ERR_REDIRECT,
    NGX_HTTP_APIGW_M_REDIS_ERR_NOSCRIPT,
    NGX_HTTP_APIGW_M_REDIS_ERR_AUTH,
    NGX_HTTP_APIGW_M_REDIS_ERR_OTHER,
    /* connections dropped because the node was not a primary */
    NGX_HTTP_APIGW_M_REDIS_NOT_PRIMARY,

    /* apigw_auth_cache_lookups_total{outcome} */
    NGX_HTTP_APIGW_M_AUTH_CACHE_HIT,
    NGX_HTTP_APIGW_M_AUTH_CACHE_MISS,
    NGX_HTTP_APIGW_M_AUTH_CACHE_NEGATIVE,
    NGX_HTTP_APIGW_M_AUTH_CACHE_STALE,      /* served during an outage */

    /* apigw_auth_requests_total{outcome}: one per authenticated request */
    NGX_HTTP_APIGW_M_AUTH_OK,
    NGX_HTTP_APIGW_M_AUTH_MISSING_CREDENTIALS,
    NGX_HTTP_APIGW_M_AUTH_INVALID_CREDENTIALS,
    NGX_HTTP_APIGW_M_AUTH_ACCOUNT_DISABLED,
    NGX_HTTP_APIGW_M_AUTH_SCOPE_REQUIRED,
    NGX_HTTP_APIGW_M_AUTH_UNAVAILABLE,

    /* apigw_ratelimit_requests_total{outcome}: one per limited request */
    NGX_HTTP_APIGW_M_RATELIMIT_ALLOWED,
    NGX_HTTP_APIGW_M_RATELIMIT_DENIED,          /* Redis said empty */
    NGX_HTTP_APIGW_M_RATELIMIT_DENIED_LOCALLY,  /* known empty, no Redis */
    NGX_HTTP_APIGW_M_RATELIMIT_FAIL_OPEN,
    NGX_HTTP_APIGW_M_RATELIMIT_FAIL_CLOSED,
    /* token-bucket script calls, and the checks they carried (batches) */
    NGX_HTTP_APIGW_M_RATELIMIT_CALLS,
    NGX_HTTP_APIGW_M_RATELIMIT_CHECKS,

    /* apigw_idempotency_requests_total{outcome}: one per keyed request */
    NGX_HTTP_APIGW_M_IDEMPOTENCY_CLAIMED,
    NGX_HTTP_APIGW_M_IDEMPOTENCY_REPLAYED,
    NGX_HTTP_APIGW_M_IDEMPOTENCY_MISMATCH,
    NGX_HTTP_APIGW_M_IDEMPOTENCY_IN_FLIGHT,
    NGX_HTTP_APIGW_M_IDEMPOTENCY_UNAVAILABLE,

    /* apigw_idempotency_settled_total{outcome}: one per claimed key */
    NGX_HTTP_APIGW_M_IDEMPOTENCY_STORED,
    NGX_HTTP_APIGW_M_IDEMPOTENCY_RELEASED,
    /* a response's end that went out before Redis acknowledged its record */
    NGX_HTTP_APIGW_M_IDEMPOTENCY_UNACKED,

    /*
     * Below: slots filled only through the functions further down (the
     * Redis latency histogram, the envelopes by code and status class).
     */
    NGX_HTTP_APIGW_M_REDIS_LATENCY_SUM,         /* milliseconds */
    NGX_HTTP_APIGW_M_REDIS_LATENCY_BUCKET,
    NGX_HTTP_APIGW_M_ERRORS = NGX_HTTP_APIGW_M_REDIS_LATENCY_BUCKET
                              + NGX_HTTP_APIGW_LATENCY_BOUNDS + 1,
    NGX_HTTP_APIGW_M__COUNT = NGX_HTTP_APIGW_M_ERRORS + 2 * APIGW_E__COUNT
} ngx_http_apigw_metric_e;


/* this worker's shard of the zone; NULL outside workers */
extern ngx_atomic_t  *ngx_http_apigw_metrics_shard;


static ngx_inline void
ngx_http_apigw_metric_add(ngx_uint_t id, ngx_atomic_int_t n)
{
    if (ngx_http_apigw_metrics_shard) {
        (void) ngx_atomic_fetch_add(&ngx_http_apigw_metrics_shard[id], n);
    }
}


#define ngx_http_apigw_metric_inc(id)  ngx_http_apigw_metric_add(id, 1)


/*
 * An error envelope of this code was sent with this status:
 * apigw_errors_total{code="<default code name>",class="4xx|5xx"}.
 */
void ngx_http_apigw_metric_code(apigw_err_id_t id, ngx_uint_t status);

/*
 * The same for an envelope about to be rendered: its code is matched
 * against the running catalog (renamed codes count under their default
 * name); an upstream's own code counts as its status's default code.
 */
void ngx_http_apigw_metric_envelope(ngx_http_request_t *r,
    apigw_envelope_t *e);

/* An API-key refusal raised with this code (auth codes only). */
void ngx_http_apigw_metric_auth(apigw_err_id_t id);

/* One Redis reply, ms after its command was submitted. */
void ngx_http_apigw_metric_observe_redis_latency(ngx_msec_t ms);


extern ngx_module_t  ngx_http_apigw_metrics_module;

#endif
