/*
 * apigw metrics: the counters' shared memory zone, the log-phase count of
 * requests, and "apigw_metrics;", a content handler answering the
 * Prometheus text exposition format (version 0.0.4) for the whole
 * instance: every worker's shard summed.
 *
 * The zone is declared by the module itself, at a size fixed by the
 * counter layout, so every worker counts whether or not any location
 * exposes the counters, and a reload keeps them (same name, size and tag:
 * nginx hands the old zone over), as Prometheus counters must only grow.
 */

#include "ngx_http_apigw_module.h"
#include "ngx_http_apigw_metrics.h"


/*
 * A shard per worker (ngx_worker modulo this), each 128-byte aligned so
 * that no two workers write to one cache line, nor to a pair of lines the
 * adjacent-line prefetcher fetches together.
 */
#define NGX_HTTP_APIGW_METRICS_SHARDS  64
#define NGX_HTTP_APIGW_METRICS_STRIDE                                         \
    ngx_align(NGX_HTTP_APIGW_M__COUNT, 128 / sizeof(ngx_atomic_t))

#define NGX_HTTP_APIGW_METRICS_SIZE                                           \
    (NGX_HTTP_APIGW_METRICS_SHARDS * NGX_HTTP_APIGW_METRICS_STRIDE            \
     * sizeof(ngx_atomic_t))

/* the exposition is written into buffers of this size, or a line's size */
#define NGX_HTTP_APIGW_METRICS_BUF     4096


typedef struct {
    ngx_shm_zone_t                   *shm_zone;
} ngx_http_apigw_metrics_main_conf_t;


typedef struct {
    ngx_atomic_t                     *counters;     /* in the zone */
} ngx_http_apigw_metrics_zone_t;


/* one series of a counter family: its label value and its counter */
typedef struct {
    ngx_str_t                         value;
    ngx_uint_t                        slot;
} ngx_http_apigw_metrics_series_t;


typedef struct {
    const char                       *name;
    const char                       *help;
    const char                       *label;        /* NULL: unlabelled */
    ngx_http_apigw_metrics_series_t  *series;       /* null-terminated */
} ngx_http_apigw_metrics_family_t;


typedef struct {
    const char                       *name;
    ngx_str_t                         value;
} ngx_http_apigw_metrics_label_t;


/* the exposition being written: a chain of pool buffers */
typedef struct {
    ngx_http_request_t               *request;
    ngx_chain_t                      *first;
    ngx_chain_t                     **last;
    ngx_buf_t                        *buf;
    size_t                            size;
} ngx_http_apigw_metrics_out_t;


static ngx_int_t ngx_http_apigw_metrics_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_apigw_metrics_create_main_conf(ngx_conf_t *cf);
static ngx_int_t ngx_http_apigw_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_apigw_metrics_init_process(ngx_cycle_t *cycle);
static char *ngx_http_apigw_metrics_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_apigw_metrics_log_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_apigw_metrics_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_apigw_metrics_render(
    ngx_http_apigw_metrics_out_t *out, ngx_atomic_uint_t *v);


ngx_atomic_t  *ngx_http_apigw_metrics_shard;


static ngx_command_t  ngx_http_apigw_metrics_commands[] = {

    { ngx_string("apigw_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_apigw_metrics_directive,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_apigw_metrics_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_apigw_metrics_postconfiguration, /* postconfiguration */

    ngx_http_apigw_metrics_create_main_conf, /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_apigw_metrics_module = {
    NGX_MODULE_V1,
    &ngx_http_apigw_metrics_module_ctx,    /* module context */
    ngx_http_apigw_metrics_commands,       /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_apigw_metrics_init_process,   /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* the series; a family's list ends with a series of no counter */

#define NGX_HTTP_APIGW_METRICS_END  { ngx_null_string, NGX_HTTP_APIGW_M__COUNT }

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_requests[] = {
    { ngx_string("ok"), NGX_HTTP_APIGW_M_REQUESTS_OK },
    { ngx_string("error"), NGX_HTTP_APIGW_M_REQUESTS_ERROR },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_auth[] = {
    { ngx_string("ok"), NGX_HTTP_APIGW_M_AUTH_OK },
    { ngx_string("missing_credentials"),
      NGX_HTTP_APIGW_M_AUTH_MISSING_CREDENTIALS },
    { ngx_string("invalid_credentials"),
      NGX_HTTP_APIGW_M_AUTH_INVALID_CREDENTIALS },
    { ngx_string("account_disabled"), NGX_HTTP_APIGW_M_AUTH_ACCOUNT_DISABLED },
    { ngx_string("scope_required"), NGX_HTTP_APIGW_M_AUTH_SCOPE_REQUIRED },
    { ngx_string("unavailable"), NGX_HTTP_APIGW_M_AUTH_UNAVAILABLE },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_cache[] = {
    { ngx_string("hit"), NGX_HTTP_APIGW_M_AUTH_CACHE_HIT },
    { ngx_string("miss"), NGX_HTTP_APIGW_M_AUTH_CACHE_MISS },
    { ngx_string("negative_hit"), NGX_HTTP_APIGW_M_AUTH_CACHE_NEGATIVE },
    { ngx_string("stale_hit"), NGX_HTTP_APIGW_M_AUTH_CACHE_STALE },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_ratelimit[] = {
    { ngx_string("allowed"), NGX_HTTP_APIGW_M_RATELIMIT_ALLOWED },
    { ngx_string("denied"), NGX_HTTP_APIGW_M_RATELIMIT_DENIED },
    { ngx_string("denied_locally"), NGX_HTTP_APIGW_M_RATELIMIT_DENIED_LOCALLY },
    { ngx_string("fail_open"), NGX_HTTP_APIGW_M_RATELIMIT_FAIL_OPEN },
    { ngx_string("fail_closed"), NGX_HTTP_APIGW_M_RATELIMIT_FAIL_CLOSED },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_idem[] = {
    { ngx_string("claimed"), NGX_HTTP_APIGW_M_IDEMPOTENCY_CLAIMED },
    { ngx_string("replayed"), NGX_HTTP_APIGW_M_IDEMPOTENCY_REPLAYED },
    { ngx_string("mismatch"), NGX_HTTP_APIGW_M_IDEMPOTENCY_MISMATCH },
    { ngx_string("in_flight"), NGX_HTTP_APIGW_M_IDEMPOTENCY_IN_FLIGHT },
    { ngx_string("unavailable"), NGX_HTTP_APIGW_M_IDEMPOTENCY_UNAVAILABLE },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_settled[] = {
    { ngx_string("stored"), NGX_HTTP_APIGW_M_IDEMPOTENCY_STORED },
    { ngx_string("released"), NGX_HTTP_APIGW_M_IDEMPOTENCY_RELEASED },
    { ngx_string("unacknowledged"), NGX_HTTP_APIGW_M_IDEMPOTENCY_UNACKED },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_commands_s[] = {
    { ngx_null_string, NGX_HTTP_APIGW_M_REDIS_COMMANDS },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_errors_s[] = {
    { ngx_null_string, NGX_HTTP_APIGW_M_REDIS_ERRORS },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_timeouts_s[] = {
    { ngx_null_string, NGX_HTTP_APIGW_M_REDIS_TIMEOUTS },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_reconn_s[] = {
    { ngx_null_string, NGX_HTTP_APIGW_M_REDIS_RECONNECTS },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_err_class[] = {
    { ngx_string("transient"), NGX_HTTP_APIGW_M_REDIS_ERR_TRANSIENT },
    { ngx_string("readonly"), NGX_HTTP_APIGW_M_REDIS_ERR_READONLY },
    { ngx_string("redirect"), NGX_HTTP_APIGW_M_REDIS_ERR_REDIRECT },
    { ngx_string("noscript"), NGX_HTTP_APIGW_M_REDIS_ERR_NOSCRIPT },
    { ngx_string("auth"), NGX_HTTP_APIGW_M_REDIS_ERR_AUTH },
    { ngx_string("other"), NGX_HTTP_APIGW_M_REDIS_ERR_OTHER },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_not_primary[] = {
    { ngx_null_string, NGX_HTTP_APIGW_M_REDIS_NOT_PRIMARY },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_rl_calls_s[] = {
    { ngx_null_string, NGX_HTTP_APIGW_M_RATELIMIT_CALLS },
    NGX_HTTP_APIGW_METRICS_END
};

static ngx_http_apigw_metrics_series_t  ngx_http_apigw_metrics_rl_checks_s[] = {
    { ngx_null_string, NGX_HTTP_APIGW_M_RATELIMIT_CHECKS },
    NGX_HTTP_APIGW_METRICS_END
};


static ngx_http_apigw_metrics_family_t  ngx_http_apigw_metrics_families[] = {

    { "apigw_requests_total",
      "Requests handled with apigw on, counted once each when they end: "
      "ok (status below 400) or error.",
      "outcome", ngx_http_apigw_metrics_requests },

    { "apigw_auth_requests_total",
      "API-key checks by outcome; the refusals are named by their "
      "default error code.",
      "outcome", ngx_http_apigw_metrics_auth },

    { "apigw_auth_cache_lookups_total",
      "Lookups in the shared-memory API-key cache: hit, miss (Redis is "
      "asked) or negative_hit (a key known not to exist).",
      "outcome", ngx_http_apigw_metrics_cache },

    { "apigw_ratelimit_requests_total",
      "Rate-limited requests by outcome: allowed, denied (a bucket in "
      "Redis was empty), denied_locally (a bucket known empty, Redis not "
      "asked), fail_open or fail_closed (Redis unavailable).",
      "outcome", ngx_http_apigw_metrics_ratelimit },

    { "apigw_ratelimit_script_calls_total",
      "Token-bucket script calls made (those failed at once while Redis "
      "is down included); each carries the checks of one key value that "
      "arrived in one event-loop pass of a worker.",
      NULL, ngx_http_apigw_metrics_rl_calls_s },

    { "apigw_ratelimit_script_checks_total",
      "Request checks carried by those calls (checks / calls is the "
      "average batch).",
      NULL, ngx_http_apigw_metrics_rl_checks_s },

    { "apigw_idempotency_requests_total",
      "Requests with an Idempotency-Key by outcome: claimed (first run), "
      "replayed, mismatch (key reused for another request), in_flight or "
      "unavailable (the store).",
      "outcome", ngx_http_apigw_metrics_idem },

    { "apigw_idempotency_settled_total",
      "Claimed idempotency keys settled when the response ended: stored "
      "for replays, or released so the client may retry.",
      "outcome", ngx_http_apigw_metrics_settled },

    { "apigw_redis_commands_total",
      "Redis commands sent by apigw (connection handshakes excluded).",
      NULL, ngx_http_apigw_metrics_commands_s },

    { "apigw_redis_errors_total",
      "Redis commands that failed: not connected, connection lost, or an "
      "error reply.",
      NULL, ngx_http_apigw_metrics_errors_s },

    { "apigw_redis_timeouts_total",
      "Redis commands not answered within the timeout of apigw_redis.",
      NULL, ngx_http_apigw_metrics_timeouts_s },

    { "apigw_redis_error_replies_total",
      "Redis error replies by class: transient (LOADING, BUSY, TRYAGAIN, "
      "CLUSTERDOWN, MASTERDOWN), readonly (the node became a replica: "
      "apigw reconnects), redirect (MOVED, ASK), noscript, auth (NOAUTH, "
      "WRONGPASS, NOPERM) and other (OOM, WRONGTYPE, ...).",
      "class", ngx_http_apigw_metrics_err_class },

    { "apigw_redis_not_primary_total",
      "Connections dropped because ROLE said the node is not a primary "
      "(apigw writes to primaries only).",
      NULL, ngx_http_apigw_metrics_not_primary },

    { "apigw_redis_reconnects_total",
      "Redis connections restored after a connection was lost or "
      "could not be made.",
      NULL, ngx_http_apigw_metrics_reconn_s },

    { NULL, NULL, NULL, NULL }
};


/* the histogram's bounds, in microseconds and as its "le" labels */

static ngx_uint_t  ngx_http_apigw_latency_us[NGX_HTTP_APIGW_LATENCY_BOUNDS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000
};

static ngx_str_t  ngx_http_apigw_latency_le[] = {
    ngx_string("0.0005"), ngx_string("0.001"), ngx_string("0.0025"),
    ngx_string("0.005"), ngx_string("0.01"), ngx_string("0.025"),
    ngx_string("0.05"), ngx_string("0.1"), ngx_string("0.25"),
    ngx_string("0.5"), ngx_string("1"), ngx_string("+Inf")
};


static ngx_str_t  ngx_http_apigw_metrics_class[] = {
    ngx_string("4xx"), ngx_string("5xx")
};


static ngx_str_t  ngx_http_apigw_metrics_cc = ngx_string("Cache-Control");
static ngx_str_t  ngx_http_apigw_metrics_no_store = ngx_string("no-store");
static ngx_str_t  ngx_http_apigw_metrics_allow = ngx_string("Allow");
static ngx_str_t  ngx_http_apigw_metrics_get_head = ngx_string("GET, HEAD");


/* configuration and the zone */

static void *
ngx_http_apigw_metrics_create_main_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_metrics_main_conf_t));
}


static ngx_int_t
ngx_http_apigw_metrics_postconfiguration(ngx_conf_t *cf)
{
    size_t                               size;
    ngx_str_t                            name;
    ngx_http_handler_pt                 *h;
    ngx_http_core_main_conf_t           *cmcf;
    ngx_http_apigw_metrics_zone_t       *zone;
    ngx_http_apigw_metrics_main_conf_t  *mmcf;

    mmcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_apigw_metrics_module);

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_metrics_zone_t));
    if (zone == NULL) {
        return NGX_ERROR;
    }

    /* the counters in whole pages, and room for the slab pool's header */
    size = ngx_align(NGX_HTTP_APIGW_METRICS_SIZE, ngx_pagesize)
           + 2 * ngx_pagesize;

    ngx_str_set(&name, "apigw_metrics");

    mmcf->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                           &ngx_http_apigw_metrics_module);
    if (mmcf->shm_zone == NULL) {
        return NGX_ERROR;
    }

    mmcf->shm_zone->init = ngx_http_apigw_metrics_init_zone;
    mmcf->shm_zone->data = zone;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_apigw_metrics_log_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_apigw_metrics_zone_t  *ozone = data;

    ngx_slab_pool_t                *shpool;
    ngx_http_apigw_metrics_zone_t  *zone;

    zone = shm_zone->data;

    if (ozone) {
        /* a reload: the counters go on from where they were */
        zone->counters = ozone->counters;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->counters = shpool->data;
        return NGX_OK;
    }

    zone->counters = ngx_slab_calloc(shpool, NGX_HTTP_APIGW_METRICS_SIZE);
    if (zone->counters == NULL) {
        return NGX_ERROR;
    }

    shpool->data = (void *) zone->counters;

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_metrics_init_process(ngx_cycle_t *cycle)
{
    ngx_http_apigw_metrics_zone_t       *zone;
    ngx_http_apigw_metrics_main_conf_t  *mmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    mmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_apigw_metrics_module);
    if (mmcf == NULL || mmcf->shm_zone == NULL) {
        return NGX_OK;
    }

    zone = mmcf->shm_zone->data;

    ngx_http_apigw_metrics_shard = zone->counters
                                   + (ngx_worker
                                      % NGX_HTTP_APIGW_METRICS_SHARDS)
                                     * NGX_HTTP_APIGW_METRICS_STRIDE;

    return NGX_OK;
}


static char *
ngx_http_apigw_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_apigw_metrics_handler;

    return NGX_CONF_OK;
}


/* counting */

/*
 * The log phase runs once per main request, whatever ended it and with
 * its final status, also when no response was sent (a client gone: 499).
 */

static ngx_int_t
ngx_http_apigw_metrics_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                  status;
    ngx_http_apigw_loc_conf_t  *alcf;

    if (r != r->main) {
        return NGX_OK;
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_apigw_module);

    if (!alcf->enable) {
        return NGX_OK;
    }

    status = r->err_status ? r->err_status : r->headers_out.status;

    ngx_http_apigw_metric_inc(status && status < NGX_HTTP_BAD_REQUEST
                              ? NGX_HTTP_APIGW_M_REQUESTS_OK
                              : NGX_HTTP_APIGW_M_REQUESTS_ERROR);

    return NGX_OK;
}


void
ngx_http_apigw_metric_code(apigw_err_id_t id, ngx_uint_t status)
{
    if ((ngx_uint_t) id >= APIGW_E__COUNT) {
        return;
    }

    ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_ERRORS + 2 * id
                              + (status >= NGX_HTTP_INTERNAL_SERVER_ERROR));
}


void
ngx_http_apigw_metric_envelope(ngx_http_request_t *r, apigw_envelope_t *e)
{
    ngx_uint_t                   i;
    apigw_catalog_entry_t       *c;
    ngx_http_apigw_main_conf_t  *amcf;

    if (ngx_http_apigw_metrics_shard == NULL) {
        return;
    }

    /*
     * Envelopes are filled from the running catalog, so their code is the
     * entry's own string: its address names the entry even when a catalog
     * file renamed it; an upstream's foreign code is a string of its own.
     */

    amcf = ngx_http_get_module_main_conf(r, ngx_http_apigw_module);
    c = amcf->catalog.entries;

    for (i = 0; i < APIGW_E__COUNT; i++) {
        if (e->code.data == c[i].code.data && e->code.len == c[i].code.len) {
            ngx_http_apigw_metric_code((apigw_err_id_t) i, e->status);
            return;
        }
    }

    ngx_http_apigw_metric_code(apigw_err_for_status(e->status), e->status);
}


void
ngx_http_apigw_metric_auth(apigw_err_id_t id)
{
    ngx_uint_t  slot;

    switch (id) {

    case APIGW_E_MISSING_CREDENTIALS:
        slot = NGX_HTTP_APIGW_M_AUTH_MISSING_CREDENTIALS;
        break;

    case APIGW_E_INVALID_CREDENTIALS:
        slot = NGX_HTTP_APIGW_M_AUTH_INVALID_CREDENTIALS;
        break;

    case APIGW_E_ACCOUNT_DISABLED:
        slot = NGX_HTTP_APIGW_M_AUTH_ACCOUNT_DISABLED;
        break;

    case APIGW_E_SCOPE_REQUIRED:
        slot = NGX_HTTP_APIGW_M_AUTH_SCOPE_REQUIRED;
        break;

    case APIGW_E_AUTH_UNAVAILABLE:
        slot = NGX_HTTP_APIGW_M_AUTH_UNAVAILABLE;
        break;

    default:
        return;
    }

    ngx_http_apigw_metric_inc(slot);
}


void
ngx_http_apigw_metric_observe_redis_latency(ngx_msec_t ms)
{
    ngx_uint_t  i;

    if (ngx_http_apigw_metrics_shard == NULL) {
        return;
    }

    /* i == NGX_HTTP_APIGW_LATENCY_BOUNDS is the slot of +Inf alone */

    for (i = 0; i < NGX_HTTP_APIGW_LATENCY_BOUNDS; i++) {
        if ((uint64_t) ms * 1000 <= ngx_http_apigw_latency_us[i]) {
            break;
        }
    }

    ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_REDIS_LATENCY_BUCKET + i);
    ngx_http_apigw_metric_add(NGX_HTTP_APIGW_M_REDIS_LATENCY_SUM,
                              (ngx_atomic_int_t) ms);
}


/* the exposition */

static ngx_int_t
ngx_http_apigw_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t                            rc;
    ngx_uint_t                           s, i;
    ngx_atomic_t                        *shard;
    ngx_atomic_uint_t                    v[NGX_HTTP_APIGW_M__COUNT];
    ngx_http_apigw_metrics_out_t         out;
    ngx_http_apigw_metrics_zone_t       *zone;
    ngx_http_apigw_metrics_main_conf_t  *mmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        if (ngx_http_apigw_set_out_header(r, &ngx_http_apigw_metrics_allow,
                                          &ngx_http_apigw_metrics_get_head)
            == NULL)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    /* one pass over the shards: a histogram read once stays consistent */

    ngx_memzero(v, sizeof(v));

    mmcf = ngx_http_get_module_main_conf(r, ngx_http_apigw_metrics_module);
    zone = mmcf->shm_zone ? mmcf->shm_zone->data : NULL;

    if (zone && zone->counters) {
        for (s = 0; s < NGX_HTTP_APIGW_METRICS_SHARDS; s++) {
            shard = zone->counters + s * NGX_HTTP_APIGW_METRICS_STRIDE;

            for (i = 0; i < NGX_HTTP_APIGW_M__COUNT; i++) {
                v[i] += shard[i];
            }
        }
    }

    ngx_memzero(&out, sizeof(ngx_http_apigw_metrics_out_t));
    out.request = r;
    out.last = &out.first;

    if (ngx_http_apigw_metrics_render(&out, v) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = out.size;

    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    /* every scrape must see the counters of now, never a cached copy */
    if (ngx_http_apigw_set_out_header(r, &ngx_http_apigw_metrics_cc,
                                      &ngx_http_apigw_metrics_no_store)
        == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf->last_buf = (r == r->main) ? 1 : 0;
    out.buf->last_in_chain = 1;

    return ngx_http_output_filter(r, out.first);
}


/* room for n bytes at the end of the exposition */

static u_char *
ngx_http_apigw_metrics_reserve(ngx_http_apigw_metrics_out_t *out, size_t n)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    b = out->buf;

    if (b && (size_t) (b->end - b->last) >= n) {
        return b->last;
    }

    b = ngx_create_temp_buf(out->request->pool,
                            ngx_max(n, NGX_HTTP_APIGW_METRICS_BUF));
    if (b == NULL) {
        return NULL;
    }

    cl = ngx_alloc_chain_link(out->request->pool);
    if (cl == NULL) {
        return NULL;
    }

    cl->buf = b;
    cl->next = NULL;

    *out->last = cl;
    out->last = &cl->next;
    out->buf = b;

    return b->last;
}


static void
ngx_http_apigw_metrics_commit(ngx_http_apigw_metrics_out_t *out, u_char *p)
{
    out->size += p - out->buf->last;
    out->buf->last = p;
}


/*
 * The exposition format's escapes: in HELP text a backslash and a line
 * feed, in a label value also a double quote.  At most 2 bytes per byte.
 */

static u_char *
ngx_http_apigw_metrics_escape(u_char *dst, u_char *src, size_t len,
    ngx_uint_t label)
{
    while (len--) {

        switch (*src) {

        case '\\':
            *dst++ = '\\';
            *dst++ = '\\';
            break;

        case '\n':
            *dst++ = '\\';
            *dst++ = 'n';
            break;

        case '"':
            if (label) {
                *dst++ = '\\';
            }

            *dst++ = '"';
            break;

        default:
            *dst++ = *src;
        }

        src++;
    }

    return dst;
}


static ngx_int_t
ngx_http_apigw_metrics_family(ngx_http_apigw_metrics_out_t *out,
    const char *name, const char *type, const char *help)
{
    u_char  *p;
    size_t   nlen, hlen;

    nlen = ngx_strlen(name);
    hlen = ngx_strlen(help);

    p = ngx_http_apigw_metrics_reserve(out,
                                       sizeof("# HELP  \n# TYPE  \n")
                                       + 2 * nlen + 2 * hlen
                                       + ngx_strlen(type));
    if (p == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(p, "# HELP %s ", name);
    p = ngx_http_apigw_metrics_escape(p, (u_char *) help, hlen, 0);
    p = ngx_sprintf(p, "\n# TYPE %s %s\n", name, type);

    ngx_http_apigw_metrics_commit(out, p);

    return NGX_OK;
}


/* name{labels} value; milli: v is thousandths, written as a decimal */

static ngx_int_t
ngx_http_apigw_metrics_sample(ngx_http_apigw_metrics_out_t *out,
    const char *name, const char *suffix, ngx_http_apigw_metrics_label_t *l,
    ngx_uint_t nl, ngx_atomic_uint_t v, ngx_uint_t milli)
{
    u_char      *p;
    size_t       n;
    ngx_uint_t   i;

    n = ngx_strlen(name) + ngx_strlen(suffix) + sizeof("{} .000\n")
        + NGX_ATOMIC_T_LEN;

    for (i = 0; i < nl; i++) {
        n += ngx_strlen(l[i].name) + sizeof("=\"\",") + 2 * l[i].value.len;
    }

    p = ngx_http_apigw_metrics_reserve(out, n);
    if (p == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(p, "%s%s", name, suffix);

    for (i = 0; i < nl; i++) {
        p = ngx_sprintf(p, "%c%s=\"", i ? ',' : '{', l[i].name);
        p = ngx_http_apigw_metrics_escape(p, l[i].value.data, l[i].value.len,
                                          1);
        *p++ = '"';
    }

    if (nl) {
        *p++ = '}';
    }

    if (milli) {
        p = ngx_sprintf(p, " %uA.%03uA\n", v / 1000, v % 1000);

    } else {
        p = ngx_sprintf(p, " %uA\n", v);
    }

    ngx_http_apigw_metrics_commit(out, p);

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_metrics_render(ngx_http_apigw_metrics_out_t *out,
    ngx_atomic_uint_t *v)
{
    ngx_uint_t                        i, k, dflt;
    ngx_atomic_uint_t                 n, count;
    const apigw_catalog_t            *cat;
    ngx_http_apigw_metrics_label_t    l[2];
    ngx_http_apigw_metrics_family_t  *f;
    ngx_http_apigw_metrics_series_t  *s;

    for (f = ngx_http_apigw_metrics_families; f->name; f++) {

        if (ngx_http_apigw_metrics_family(out, f->name, "counter", f->help)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (s = f->series; s->slot != NGX_HTTP_APIGW_M__COUNT; s++) {
            l[0].name = f->label;
            l[0].value = s->value;

            if (ngx_http_apigw_metrics_sample(out, f->name, "", l,
                                              f->label ? 1 : 0,
                                              v[s->slot], 0)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    /*
     * Envelopes by default code: each code's usual status class always
     * (a counter that has not moved yet still is a series to rate()), the
     * other class once a catalog file moved the code's status there.
     */

    if (ngx_http_apigw_metrics_family(out, "apigw_errors_total", "counter",
            "Error envelopes sent, by default error code (also when a "
            "catalog file renamed it; an upstream's own code counts as its "
            "status's code) and status class.")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    cat = apigw_catalog_defaults();

    l[0].name = "code";
    l[1].name = "class";

    for (i = 0; i < APIGW_E__COUNT; i++) {
        dflt = (cat->entries[i].status >= NGX_HTTP_INTERNAL_SERVER_ERROR);

        l[0].value.len = cat->entries[i].code.len;
        l[0].value.data = (u_char *) cat->entries[i].code.data;

        for (k = 0; k < 2; k++) {
            n = v[NGX_HTTP_APIGW_M_ERRORS + 2 * i + k];

            if (k != dflt && n == 0) {
                continue;
            }

            l[1].value = ngx_http_apigw_metrics_class[k];

            if (ngx_http_apigw_metrics_sample(out, "apigw_errors_total", "",
                                              l, 2, n, 0)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    /* the histogram: buckets cumulative, +Inf equal to _count by making */

    if (ngx_http_apigw_metrics_family(out, "apigw_redis_latency_seconds",
            "histogram",
            "Time from sending a Redis command to its reply (millisecond "
            "resolution: nginx's cached clock).")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    l[0].name = "le";
    count = 0;

    for (i = 0; i <= NGX_HTTP_APIGW_LATENCY_BOUNDS; i++) {
        count += v[NGX_HTTP_APIGW_M_REDIS_LATENCY_BUCKET + i];
        l[0].value = ngx_http_apigw_latency_le[i];

        if (ngx_http_apigw_metrics_sample(out, "apigw_redis_latency_seconds",
                                          "_bucket", l, 1, count, 0)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ngx_http_apigw_metrics_sample(out, "apigw_redis_latency_seconds",
                                      "_sum", NULL, 0,
                                      v[NGX_HTTP_APIGW_M_REDIS_LATENCY_SUM],
                                      1)
        != NGX_OK
        || ngx_http_apigw_metrics_sample(out, "apigw_redis_latency_seconds",
                                         "_count", NULL, 0, count, 0)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}
