/*
 * Idempotency-Key handling: the third access-phase stage, a header and a
 * body filter that capture the response of a request holding a key, and a
 * content handler that replays a stored response.
 *
 * The life of a key (the Redis side is in src/core/apigw_idempotency.h):
 *
 *   stage      reads the whole body (without blocking), fingerprints
 *              method + URI with arguments + body, and claims the key:
 *              claimed -> forwarded, capture armed ("miss");
 *              completed -> replayed by our content handler ("replay");
 *              mismatch / in flight / too large -> an envelope.
 *   filters    see the final status, headers and body of a claimed
 *              request (they run after the envelope filter, so what is
 *              stored is what the client received) and complete the key,
 *              or release it when the status is not one to keep.
 *   cleanup    settles a key the response never settled.
 *
 * One rule decides every fault: once the backend may have run the
 * request, the key is never released.  So a storable status seen with an
 * incomplete body completes the key without a body; nginx's own 502 or
 * 504 after the request reached the backend, or a request that ends with
 * no response after that, leaves the lock to expire; only what provably
 * never reached a backend (and the backend's own 5xx, 429, ...) releases
 * it.  A client may wait for a lock to expire; a request is never run
 * twice because of a fault here.
 *
 * complete and release outlive the request: fire-and-forget calls whose
 * memory is their own, retried with backoff while Redis is away, never
 * touching the request.
 */

#include "ngx_http_apigw_module.h"
#include "ngx_http_apigw_metrics.h"
#include "apigw_idempotency.h"


#define NGX_HTTP_APIGW_IDEM_FAIL_CLOSED   0
#define NGX_HTTP_APIGW_IDEM_FAIL_OPEN     1

/* the request body is read from its temp file in pieces of this size */
#define NGX_HTTP_APIGW_IDEM_FILE_CHUNK    65536

/* first capture buffer when the response has no Content-Length */
#define NGX_HTTP_APIGW_IDEM_CAPTURE_MIN   16384

/* Redis strings end at 512 MB; the record head needs some room too */
#define NGX_HTTP_APIGW_IDEM_MAX_BODY      (256 * 1024 * 1024)

/* EVAL source numkeys, then at most 7 arguments ("full": the record) */
#define NGX_HTTP_APIGW_IDEM_OP_HEAD       3
#define NGX_HTTP_APIGW_IDEM_OP_ARGS       (NGX_HTTP_APIGW_IDEM_OP_HEAD + 7)


typedef struct {
    ngx_flag_t                  enable;
    ngx_uint_t                  methods;        /* NGX_HTTP_* bitmask */
    ngx_flag_t                  required;
    ngx_msec_t                  ttl;
    ngx_msec_t                  lock_ttl;
    size_t                      max_body;
    ngx_http_complex_value_t   *scope;
    ngx_uint_t                  fail;
    ngx_str_t                   ns;             /* records' namespace */
} ngx_http_apigw_idem_loc_conf_t;


typedef enum {
    NGX_HTTP_APIGW_IDEM_READING = 0,   /* the body is being read */
    NGX_HTTP_APIGW_IDEM_READ,          /* the body is in: claim */
    NGX_HTTP_APIGW_IDEM_WAITING,       /* the claim is in Redis */
    NGX_HTTP_APIGW_IDEM_REPLIED,       /* its outcome is known */
    NGX_HTTP_APIGW_IDEM_DECIDED
} ngx_http_apigw_idem_phase_e;


typedef enum {
    NGX_HTTP_APIGW_IDEM_CLAIMED = 0,
    NGX_HTTP_APIGW_IDEM_MISMATCH,
    NGX_HTTP_APIGW_IDEM_IN_FLIGHT,
    NGX_HTTP_APIGW_IDEM_COMPLETED,
    NGX_HTTP_APIGW_IDEM_NOBODY,
    NGX_HTTP_APIGW_IDEM_CORRUPT,       /* a completed record we cannot read */
    NGX_HTTP_APIGW_IDEM_UNAVAILABLE
} ngx_http_apigw_idem_outcome_e;


typedef struct {
    ngx_http_request_t               *request;
    ngx_http_apigw_idem_loc_conf_t   *conf;     /* the claiming location */

    ngx_http_apigw_idem_phase_e       phase;
    ngx_http_apigw_idem_outcome_e     outcome;
    ngx_uint_t                        pass;     /* ctx->pass claimed in */

    ngx_str_t                         rkey;     /* the Redis record key */
    apigw_idem_fp_t                   fp;
    char                              fphex[APIGW_IDEM_FP_HEX + 1];
    char                              owner[APIGW_IDEM_OWNER_LEN + 1];

    int64_t                           pttl;     /* in_flight */
    apigw_idem_record_t               rec;      /* completed: the replay */

    /* the response of a claimed request */
    ngx_uint_t                        status;
    apigw_idem_record_t               out;      /* its status and headers */
    u_char                           *buf;      /* record head, then body */
    size_t                            head;     /* head length in buf */
    size_t                            cap;      /* body room in buf */
    size_t                            len;      /* body captured */
    size_t                            max_body;

    unsigned                          owes:1;       /* complete or release */
    unsigned                          armed:1;      /* capture the response */
    unsigned                          timed_out:1;  /* claim may have run */
    unsigned                          header_seen:1;
    unsigned                          capturing:1;
    unsigned                          overflow:1;   /* store without body */
    unsigned                          gone:1;       /* client left */
    unsigned                          replay:1;

    /* the response's end, held until Redis has the completed record */
    ngx_chain_t                      *held;
    ngx_chain_t                      *free;     /* our buffers' links */
    size_t                            done_off; /* the last buffer's data */
    ngx_event_t                       release;
    struct ngx_http_apigw_idem_op_s  *op;       /* the complete in flight */
} ngx_http_apigw_idem_ctx_t;


/*
 * A free bit of r->buffered (the stock filters use 0x01-0x04): while it is
 * set, nginx finalizes the request only once the held end has gone out.
 */
#define NGX_HTTP_APIGW_IDEM_BUFFERED  0x08


/*
 * A complete or release that outlives its request: everything it needs,
 * the arguments included, lives in this one allocation.
 */

typedef enum {
    NGX_HTTP_APIGW_IDEM_OP_FULL = 0,
    NGX_HTTP_APIGW_IDEM_OP_NOBODY,
    NGX_HTTP_APIGW_IDEM_OP_RELEASE
} ngx_http_apigw_idem_op_e;


typedef struct ngx_http_apigw_idem_op_s {
    ngx_event_t                       retry;
    ngx_uint_t                        attempt;
    ngx_http_apigw_idem_ctx_t        *waiter;   /* holds its end; or NULL */
    ngx_http_apigw_idem_op_e          kind;
    int                               argc;
    const char                       *argv[NGX_HTTP_APIGW_IDEM_OP_ARGS];
    size_t                            argvlen[NGX_HTTP_APIGW_IDEM_OP_ARGS];
} ngx_http_apigw_idem_op_t;


static ngx_int_t ngx_http_apigw_idem_init(ngx_conf_t *cf);
static void *ngx_http_apigw_idem_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_apigw_idem_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_apigw_idem_default_ns(ngx_conf_t *cf,
    ngx_str_t *ns);

static ngx_int_t ngx_http_apigw_idem_stage(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx);
static ngx_int_t ngx_http_apigw_idem_start(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx, ngx_http_apigw_idem_loc_conf_t *ilcf);
static void ngx_http_apigw_idem_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_apigw_idem_fingerprint(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx);
static ngx_int_t ngx_http_apigw_idem_claim(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx, ngx_http_apigw_idem_ctx_t *ictx);
static void ngx_http_apigw_idem_claim_reply(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx, ngx_http_apigw_redis_status_e status,
    redisReply *reply);
static ngx_int_t ngx_http_apigw_idem_decide(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx, ngx_http_apigw_idem_ctx_t *ictx);
static ngx_int_t ngx_http_apigw_idem_retry_after(ngx_http_request_t *r,
    ngx_int_t seconds);
static ngx_uint_t ngx_http_apigw_idem_reached_upstream(
    ngx_http_request_t *r);
static void ngx_http_apigw_idem_cleanup(void *data);

static ngx_int_t ngx_http_apigw_idem_precontent(ngx_http_request_t *r);
static ngx_int_t ngx_http_apigw_idem_replay_handler(ngx_http_request_t *r);

static ngx_int_t ngx_http_apigw_idem_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_apigw_idem_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_apigw_idem_capture_start(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx);
static void ngx_http_apigw_idem_keep(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx, u_char *data, size_t size);
static void ngx_http_apigw_idem_capture(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx, ngx_chain_t *in, ngx_uint_t *last,
    ngx_chain_t **done);
static ngx_http_apigw_idem_op_t *ngx_http_apigw_idem_finish(
    ngx_http_apigw_idem_ctx_t *ictx);
static ngx_int_t ngx_http_apigw_idem_hold(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx, ngx_http_apigw_idem_op_t *op,
    ngx_chain_t *in, ngx_chain_t *done);
static ngx_int_t ngx_http_apigw_idem_hold_more(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx, ngx_chain_t *in);
static void ngx_http_apigw_idem_release_handler(ngx_event_t *ev);
static void ngx_http_apigw_idem_acked(ngx_http_apigw_idem_op_t *op,
    ngx_uint_t stored);
static void ngx_http_apigw_idem_drop_output(ngx_http_request_t *r);

static ngx_http_apigw_idem_op_t *ngx_http_apigw_idem_settle(
    ngx_http_apigw_idem_ctx_t *ictx,
    ngx_http_apigw_idem_op_e kind, u_char *rec, size_t len);
static void ngx_http_apigw_idem_op_send(ngx_http_apigw_idem_op_t *op);
static void ngx_http_apigw_idem_op_retry(ngx_event_t *ev);
static void ngx_http_apigw_idem_op_done(void *data,
    ngx_http_apigw_redis_status_e status, redisReply *reply);


static ngx_conf_bitmask_t  ngx_http_apigw_idem_methods_mask[] = {
    { ngx_string("GET"), NGX_HTTP_GET },
    { ngx_string("HEAD"), NGX_HTTP_HEAD },
    { ngx_string("POST"), NGX_HTTP_POST },
    { ngx_string("PUT"), NGX_HTTP_PUT },
    { ngx_string("DELETE"), NGX_HTTP_DELETE },
    { ngx_string("PATCH"), NGX_HTTP_PATCH },
    { ngx_string("OPTIONS"), NGX_HTTP_OPTIONS },
    { ngx_string("MKCOL"), NGX_HTTP_MKCOL },
    { ngx_string("COPY"), NGX_HTTP_COPY },
    { ngx_string("MOVE"), NGX_HTTP_MOVE },
    { ngx_string("PROPFIND"), NGX_HTTP_PROPFIND },
    { ngx_string("PROPPATCH"), NGX_HTTP_PROPPATCH },
    { ngx_string("LOCK"), NGX_HTTP_LOCK },
    { ngx_string("UNLOCK"), NGX_HTTP_UNLOCK },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_apigw_idem_fail_modes[] = {
    { ngx_string("closed"), NGX_HTTP_APIGW_IDEM_FAIL_CLOSED },
    { ngx_string("open"), NGX_HTTP_APIGW_IDEM_FAIL_OPEN },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_apigw_idem_commands[] = {

    { ngx_string("apigw_idempotency"),
      NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_idem_loc_conf_t, enable),
      NULL },

    { ngx_string("apigw_idempotency_methods"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_conf_set_bitmask_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_idem_loc_conf_t, methods),
      &ngx_http_apigw_idem_methods_mask },

    { ngx_string("apigw_idempotency_required"),
      NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_idem_loc_conf_t, required),
      NULL },

    { ngx_string("apigw_idempotency_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_idem_loc_conf_t, ttl),
      NULL },

    { ngx_string("apigw_idempotency_lock_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_idem_loc_conf_t, lock_ttl),
      NULL },

    { ngx_string("apigw_idempotency_max_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_idem_loc_conf_t, max_body),
      NULL },

    { ngx_string("apigw_idempotency_scope"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_idem_loc_conf_t, scope),
      NULL },

    { ngx_string("apigw_idempotency_namespace"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_idem_loc_conf_t, ns),
      NULL },

    { ngx_string("apigw_idempotency_fail"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_idem_loc_conf_t, fail),
      &ngx_http_apigw_idem_fail_modes },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_apigw_idempotency_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_apigw_idem_init,              /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_apigw_idem_create_loc_conf,   /* create location configuration */
    ngx_http_apigw_idem_merge_loc_conf     /* merge location configuration */
};


ngx_module_t  ngx_http_apigw_idempotency_module = {
    NGX_MODULE_V1,
    &ngx_http_apigw_idempotency_module_ctx, /* module context */
    ngx_http_apigw_idem_commands,          /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;

static ngx_http_apigw_redis_script_t  ngx_http_apigw_idem_claim_script;

/* delays before the 2nd, 3rd ... attempt of a complete or release */
static ngx_msec_t  ngx_http_apigw_idem_backoff[] = { 100, 500, 2000, 5000 };

static ngx_str_t  ngx_http_apigw_idem_retry_after_name =
    ngx_string("Retry-After");
static ngx_str_t  ngx_http_apigw_idem_replayed_name =
    ngx_string("Idempotent-Replayed");
static ngx_str_t  ngx_http_apigw_idem_replayed_value = ngx_string("true");
static ngx_str_t  ngx_http_apigw_idem_param =
    ngx_string("Idempotency-Key");


/* configuration */

static ngx_int_t
ngx_http_apigw_idem_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    ngx_http_apigw_idem_claim_script.source.data =
        (u_char *) apigw_idem_script_claim;
    ngx_http_apigw_idem_claim_script.source.len =
        ngx_strlen(apigw_idem_script_claim);

    if (ngx_http_apigw_redis_script_init(&ngx_http_apigw_idem_claim_script)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_apigw_register_stage(NGX_HTTP_APIGW_IDEMPOTENCY,
                                  ngx_http_apigw_idem_stage);

    /*
     * The replay handler is (re)installed just before the content phase:
     * an internal redirect after the access phase (try_files, a named
     * location) sets the new location's content handler, which for a
     * replayed request must never be the upstream.
     */

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_apigw_idem_precontent;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_apigw_idem_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_apigw_idem_body_filter;

    return NGX_OK;
}


static void *
ngx_http_apigw_idem_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_apigw_idem_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_idem_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->methods = 0;
     */

    conf->enable = NGX_CONF_UNSET;
    conf->required = NGX_CONF_UNSET;
    conf->ttl = NGX_CONF_UNSET_MSEC;
    conf->lock_ttl = NGX_CONF_UNSET_MSEC;
    conf->max_body = NGX_CONF_UNSET_SIZE;
    conf->scope = NGX_CONF_UNSET_PTR;
    conf->fail = NGX_CONF_UNSET_UINT;

    return conf;
}


/*
 * Records do not cross server blocks unless configured to: two services
 * behind one nginx would otherwise replay each other's responses.  The
 * default namespace names the server block by what every node of a
 * deployment has in common, its configuration: its first server_name
 * ("srv:api.example.com", so its http and https blocks, and nodes on other
 * ports, share), or for a block without one the ports it listens on
 * ("srv::8080,8081").
 */

static ngx_int_t
ngx_http_apigw_idem_default_ns(ngx_conf_t *cf, ngx_str_t *ns)
{
    u_char                     *p, *last;
    ngx_uint_t                  i, j, k, n;
    in_port_t                   seen[32];
    ngx_http_conf_port_t       *port;
    ngx_http_conf_addr_t       *addr;
    ngx_http_core_srv_conf_t   *cscf, **servers;
    ngx_http_core_main_conf_t  *cmcf;

    cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);
    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    n = 0;

    if (cscf->server_name.len == 0 && cmcf->ports) {
        port = cmcf->ports->elts;

        for (i = 0; i < cmcf->ports->nelts && n < 32; i++) {
            addr = port[i].addrs.elts;

            for (j = 0; j < port[i].addrs.nelts; j++) {
                servers = addr[j].servers.elts;

                for (k = 0; k < addr[j].servers.nelts; k++) {
                    if (servers[k] == cscf) {
                        break;
                    }
                }

                if (k < addr[j].servers.nelts) {
                    for (k = 0; k < n && seen[k] != port[i].port; k++) {
                        /* void */
                    }

                    if (k == n) {
                        seen[n++] = port[i].port;
                    }

                    break;
                }
            }
        }
    }

    ns->len = sizeof("srv:") - 1 + cscf->server_name.len
              + n * (sizeof(":65535") - 1);
    ns->data = ngx_pnalloc(cf->pool, ns->len);
    if (ns->data == NULL) {
        return NGX_ERROR;
    }

    last = ns->data + ns->len;

    p = ngx_cpymem(ns->data, "srv:", sizeof("srv:") - 1);
    p = ngx_cpymem(p, cscf->server_name.data, cscf->server_name.len);

    for (i = 0; i < n; i++) {
        p = ngx_slprintf(p, last, "%c%d", i ? ',' : ':', (int) seen[i]);
    }

    ns->len = p - ns->data;

    return NGX_OK;
}


static char *
ngx_http_apigw_idem_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_apigw_idem_loc_conf_t *prev = parent;
    ngx_http_apigw_idem_loc_conf_t *conf = child;

    ngx_http_apigw_main_conf_t  *amcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_bitmask_value(conf->methods, prev->methods,
                                 (NGX_CONF_BITMASK_SET
                                  |NGX_HTTP_POST|NGX_HTTP_PATCH));
    ngx_conf_merge_value(conf->required, prev->required, 0);
    ngx_conf_merge_msec_value(conf->ttl, prev->ttl, 86400000);
    ngx_conf_merge_msec_value(conf->lock_ttl, prev->lock_ttl, 60000);
    ngx_conf_merge_size_value(conf->max_body, prev->max_body, 1024 * 1024);
    ngx_conf_merge_ptr_value(conf->scope, prev->scope, NULL);
    ngx_conf_merge_uint_value(conf->fail, prev->fail,
                              NGX_HTTP_APIGW_IDEM_FAIL_CLOSED);

    if (conf->ns.data == NULL) {
        conf->ns = prev->ns;
    }

    if (conf->ns.data == NULL && conf->enable
        && ngx_http_apigw_idem_default_ns(cf, &conf->ns) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (conf->ttl == 0 || conf->lock_ttl == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"apigw_idempotency_ttl\" and "
                           "\"apigw_idempotency_lock_ttl\" must be "
                           "positive");
        return NGX_CONF_ERROR;
    }

    if (conf->max_body > NGX_HTTP_APIGW_IDEM_MAX_BODY) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"apigw_idempotency_max_body\" must not exceed "
                           "256m (stored responses are Redis strings)");
        return NGX_CONF_ERROR;
    }

    if (conf->enable) {
        amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_apigw_module);

        if (amcf->redis == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"apigw_idempotency\" needs \"apigw_redis\" "
                               "in the http block");
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* the access-phase stage */

static ngx_http_apigw_idem_ctx_t *
ngx_http_apigw_idem_get(ngx_http_request_t *r)
{
    ngx_http_apigw_ctx_t  *ctx;

    ctx = ngx_http_apigw_get_ctx(r);

    return ctx ? ctx->feature[NGX_HTTP_APIGW_IDEMPOTENCY] : NULL;
}


static ngx_int_t
ngx_http_apigw_idem_stage(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx)
{
    ngx_http_apigw_idem_ctx_t       *ictx;
    ngx_http_apigw_idem_loc_conf_t  *ilcf;

    ictx = ctx->feature[NGX_HTTP_APIGW_IDEMPOTENCY];

    if (ictx && ictx->pass != ctx->pass) {

        /*
         * Another location serves the request now.  A key claimed (or
         * possibly claimed) by an earlier one stays claimed: its capture
         * records whatever response the request ends with, and a second
         * claim would find our own lock.  A key that was refused there is
         * judged again here, never let through.
         */

        if (ictx->owes || ictx->armed || ictx->replay) {
            ictx->pass = ctx->pass;
            return NGX_DECLINED;
        }

        ictx = NULL;
        ctx->feature[NGX_HTTP_APIGW_IDEMPOTENCY] = NULL;
    }

    if (ictx == NULL) {
        ilcf = ngx_http_get_module_loc_conf(r,
                                         ngx_http_apigw_idempotency_module);

        if (!ilcf->enable || !(r->method & ilcf->methods)) {
            return NGX_DECLINED;
        }

        return ngx_http_apigw_idem_start(r, ctx, ilcf);
    }

    switch (ictx->phase) {

    case NGX_HTTP_APIGW_IDEM_READ:

        if (ngx_http_apigw_idem_fingerprint(r, ictx) != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_http_apigw_idem_claim(r, ctx, ictx);

    case NGX_HTTP_APIGW_IDEM_REPLIED:
        ictx->phase = NGX_HTTP_APIGW_IDEM_DECIDED;
        return ngx_http_apigw_idem_decide(r, ctx, ictx);

    case NGX_HTTP_APIGW_IDEM_DECIDED:
        return NGX_DECLINED;

    default: /* READING, WAITING: an early event; the wait goes on */
        return NGX_AGAIN;
    }
}


static ngx_int_t
ngx_http_apigw_idem_start(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_idem_loc_conf_t *ilcf)
{
    size_t                      n;
    u_char                      buf[APIGW_IDEM_KEY_MAX];
    ngx_int_t                   rc;
    ngx_uint_t                  copies;
    ngx_str_t                   scope, tenant;
    apigw_str_t                 key, prefix, ns, space;
    ngx_table_elt_t            *h;
    ngx_pool_cleanup_t         *cln;
    ngx_http_apigw_idem_ctx_t  *ictx;

    copies = ngx_http_apigw_count_in_header(r,
                 ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_IDEMPOTENCY_KEY),
                 &h);

    if (h == NULL) {
        if (ilcf->required) {
            return ngx_http_apigw_error(r, APIGW_E_IDEMPOTENCY_KEY_REQUIRED);
        }

        return NGX_DECLINED;
    }

    /* two fields would be one comma-joined value: never a valid key */
    if (copies != 1
        || apigw_idem_key_parse(h->value.data, h->value.len, buf, &key) != 0)
    {
        ngx_http_apigw_error_param(r, &ngx_http_apigw_idem_param);
        return ngx_http_apigw_error(r, APIGW_E_IDEMPOTENCY_KEY_INVALID);
    }

    /*
     * The namespace: the tenant of an authenticated request; else the
     * configured scope, kept apart from tenant names by its "scope:"
     * prefix so that a client-chosen value can never name a tenant's keys;
     * else "-", shared by every unauthenticated client of the location.
     */

    if (ctx->tenant.len) {
        tenant = ctx->tenant;

    } else if (ilcf->scope) {
        if (ngx_http_complex_value(r, ilcf->scope, &scope) != NGX_OK) {
            return NGX_ERROR;
        }

        tenant.len = sizeof("scope:") - 1 + scope.len;
        tenant.data = ngx_pnalloc(r->pool, tenant.len);
        if (tenant.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(ngx_cpymem(tenant.data, "scope:", sizeof("scope:") - 1),
                   scope.data, scope.len);

    } else {
        ngx_str_set(&tenant, "-");
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_apigw_idem_ctx_t));
    if (cln == NULL) {
        return NGX_ERROR;
    }

    ictx = cln->data;
    ngx_memzero(ictx, sizeof(ngx_http_apigw_idem_ctx_t));

    ictx->request = r;
    ictx->conf = ilcf;
    ictx->phase = NGX_HTTP_APIGW_IDEM_READING;
    ictx->pass = ctx->pass;

    cln->handler = ngx_http_apigw_idem_cleanup;

    prefix.len = ngx_http_apigw_redis_conf_get(r)->prefix.len;
    prefix.data = ngx_http_apigw_redis_conf_get(r)->prefix.data;
    ns.len = tenant.len;
    ns.data = tenant.data;

    n = apigw_idem_redis_key_len(prefix.len, ns.len);

    ictx->rkey.data = ngx_pnalloc(r->pool, n);
    if (ictx->rkey.data == NULL) {
        return NGX_ERROR;
    }

    space.len = ilcf->ns.len;
    space.data = ilcf->ns.data;

    ictx->rkey.len = apigw_idem_redis_key_ns(&prefix, &ns, &space, &key,
                                             ictx->rkey.data, n);

    if (ictx->rkey.len == 0 || apigw_idem_owner_token(ictx->owner) != 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "apigw idempotency: hashing or randomness failed");
        return NGX_ERROR;
    }

    ctx->feature[NGX_HTTP_APIGW_IDEMPOTENCY] = ictx;

    /*
     * The mirror module's way of reading the body in an early phase: the
     * body handler resumes the phases, re-entering this stage; the extra
     * reference read_client_request_body() takes is dropped here.
     */

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_apigw_idem_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        ictx->phase = NGX_HTTP_APIGW_IDEM_DECIDED;
        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);

    /* the request may be gone now: neither r nor ictx is touched */

    return NGX_DONE;
}


static void
ngx_http_apigw_idem_body_handler(ngx_http_request_t *r)
{
    ngx_http_apigw_idem_ctx_t  *ictx;

    ictx = ngx_http_apigw_idem_get(r);

    ictx->phase = NGX_HTTP_APIGW_IDEM_READ;

    /* the upstream gets the body after we read it */
    r->preserve_body = 1;

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


static ngx_int_t
ngx_http_apigw_idem_fingerprint(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx)
{
    off_t         pos, saved;
    u_char       *chunk;
    size_t        size;
    ssize_t       n;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_file_t   *file;
    ngx_chain_t  *cl;

    if (apigw_idem_fp_init(&ictx->fp, r->method_name.data,
                           r->method_name.len, r->unparsed_uri.data,
                           r->unparsed_uri.len)
        != 0)
    {
        goto failed;
    }

    chunk = NULL;
    rc = NGX_OK;

    for (cl = r->request_body ? r->request_body->bufs : NULL;
         cl && rc == NGX_OK;
         cl = cl->next)
    {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            if (apigw_idem_fp_update(&ictx->fp, b->pos, b->last - b->pos)
                != 0)
            {
                rc = NGX_ERROR;
            }

            continue;
        }

        if (!b->in_file || b->file_last <= b->file_pos) {
            continue;
        }

        /* a body larger than client_body_buffer_size, in its temp file */

        if (chunk == NULL) {
            chunk = ngx_alloc(NGX_HTTP_APIGW_IDEM_FILE_CHUNK,
                              r->connection->log);
            if (chunk == NULL) {
                rc = NGX_ERROR;
                break;
            }
        }

        file = b->file;

        /* ngx_read_file() moves the offset others may rely on */
        saved = file->offset;

        for (pos = b->file_pos; pos < b->file_last; pos += n) {
            size = (size_t) ngx_min(b->file_last - pos,
                                    NGX_HTTP_APIGW_IDEM_FILE_CHUNK);

            n = ngx_read_file(file, chunk, size, pos);

            if (n == NGX_ERROR || n == 0) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "apigw idempotency: cannot read the request "
                              "body from \"%V\"", &file->name);
                rc = NGX_ERROR;
                break;
            }

            if (apigw_idem_fp_update(&ictx->fp, chunk, n) != 0) {
                rc = NGX_ERROR;
                break;
            }
        }

        file->offset = saved;
    }

    if (chunk) {
        ngx_free(chunk);
    }

    if (rc != NGX_OK) {
        apigw_idem_fp_abort(&ictx->fp);
        return NGX_ERROR;
    }

    if (apigw_idem_fp_final(&ictx->fp, ictx->fphex) != 0) {
        goto failed;
    }

    return NGX_OK;

failed:

    apigw_idem_fp_abort(&ictx->fp);

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "apigw idempotency: fingerprint failed");

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_apigw_idem_claim(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_idem_ctx_t *ictx)
{
    u_char       ttl[NGX_INT64_LEN];
    size_t       argvlen[4];
    ngx_int_t    rc;
    const char  *argv[4];

    argv[0] = (const char *) ictx->rkey.data;
    argvlen[0] = ictx->rkey.len;
    argv[1] = ictx->fphex;
    argvlen[1] = APIGW_IDEM_FP_HEX;
    argv[2] = (const char *) ttl;
    argvlen[2] = ngx_sprintf(ttl, "%M", ictx->conf->lock_ttl) - ttl;
    argv[3] = ictx->owner;
    argvlen[3] = APIGW_IDEM_OWNER_LEN;

    ictx->phase = NGX_HTTP_APIGW_IDEM_WAITING;

    rc = ngx_http_apigw_redis_wait(r, ctx, &ngx_http_apigw_idem_claim_script,
                                   1, 4, argv, argvlen,
                                   ngx_http_apigw_idem_claim_reply);

    if (rc == NGX_AGAIN) {
        /* from now on Redis may hold a lock in our name */
        ictx->owes = 1;
    }

    return rc;
}


static ngx_int_t
ngx_http_apigw_idem_reply_is(redisReply *e, const char *s)
{
    size_t  n;

    n = ngx_strlen(s);

    return (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS)
           && (size_t) e->len == n
           && ngx_strncmp(e->str, s, n) == 0;
}


static void
ngx_http_apigw_idem_claim_reply(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx, ngx_http_apigw_redis_status_e status,
    redisReply *reply)
{
    u_char                     *p;
    redisReply                 *e;
    apigw_idem_header_t        *headers;
    ngx_http_apigw_idem_ctx_t  *ictx;

    ictx = ctx->feature[NGX_HTTP_APIGW_IDEMPOTENCY];

    ictx->phase = NGX_HTTP_APIGW_IDEM_REPLIED;
    ictx->outcome = NGX_HTTP_APIGW_IDEM_UNAVAILABLE;

    if (status != NGX_HTTP_APIGW_REDIS_OK) {

        /* a command that timed out may still run: the lock may be ours */
        if (status == NGX_HTTP_APIGW_REDIS_TIMEOUT) {
            ictx->timed_out = 1;

        } else {
            ictx->owes = 0;
        }

        return;
    }

    /* every other reply is final: the script wrote nothing, or we know */
    ictx->owes = 0;

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "apigw idempotency: claim of \"%V\" refused: %*s",
                      &ictx->rkey, (size_t) reply->len, reply->str);
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
        goto unexpected;
    }

    e = reply->element[0];

    if (ngx_http_apigw_idem_reply_is(e, "claimed")) {
        ictx->owes = 1;
        ictx->outcome = NGX_HTTP_APIGW_IDEM_CLAIMED;
        return;
    }

    if (ngx_http_apigw_idem_reply_is(e, "mismatch")) {
        ictx->outcome = NGX_HTTP_APIGW_IDEM_MISMATCH;
        return;
    }

    if (ngx_http_apigw_idem_reply_is(e, "in_flight")) {
        if (reply->elements != 2
            || reply->element[1]->type != REDIS_REPLY_INTEGER)
        {
            goto unexpected;
        }

        ictx->pttl = (int64_t) reply->element[1]->integer;
        ictx->outcome = NGX_HTTP_APIGW_IDEM_IN_FLIGHT;
        return;
    }

    if (ngx_http_apigw_idem_reply_is(e, "completed_nobody")) {
        ictx->outcome = NGX_HTTP_APIGW_IDEM_NOBODY;
        return;
    }

    if (!ngx_http_apigw_idem_reply_is(e, "completed")
        || reply->elements != 3
        || reply->element[2]->type != REDIS_REPLY_STRING)
    {
        goto unexpected;
    }

    /* a stored response: copied, as hiredis frees the reply after us */

    e = reply->element[2];
    ictx->outcome = NGX_HTTP_APIGW_IDEM_CORRUPT;

    p = ngx_pnalloc(r->pool, e->len ? e->len : 1);
    headers = ngx_palloc(r->pool,
                         APIGW_IDEM_MAX_HEADERS * sizeof(apigw_idem_header_t));

    if (p == NULL || headers == NULL) {
        return;
    }

    ngx_memcpy(p, e->str, e->len);

    if (apigw_idem_record_decode(p, e->len, headers, APIGW_IDEM_MAX_HEADERS,
                                 &ictx->rec)
        != 0)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "apigw idempotency: the stored response of \"%V\" "
                      "cannot be decoded", &ictx->rkey);
        return;
    }

    ictx->outcome = NGX_HTTP_APIGW_IDEM_COMPLETED;

    return;

unexpected:

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "apigw idempotency: unexpected reply to the claim of "
                  "\"%V\" (type %d)", &ictx->rkey, reply->type);
}


static ngx_int_t
ngx_http_apigw_idem_decide(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_idem_ctx_t *ictx)
{
    int64_t  secs;

    switch (ictx->outcome) {

    case NGX_HTTP_APIGW_IDEM_CLAIMED:
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_IDEMPOTENCY_CLAIMED);
        ngx_str_set(&ctx->idempotency_status, "miss");
        ictx->armed = 1;
        ictx->max_body = ictx->conf->max_body;
        return NGX_DECLINED;

    case NGX_HTTP_APIGW_IDEM_MISMATCH:
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_IDEMPOTENCY_MISMATCH);
        ngx_str_set(&ctx->idempotency_status, "conflict");
        return ngx_http_apigw_error(r, APIGW_E_IDEMPOTENCY_KEY_MISMATCH);

    case NGX_HTTP_APIGW_IDEM_IN_FLIGHT:
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_IDEMPOTENCY_IN_FLIGHT);
        ngx_str_set(&ctx->idempotency_status, "in_flight");

        secs = (ictx->pttl + 999) / 1000;
        if (secs < 1) {
            secs = 1;
        }

        if (ngx_http_apigw_idem_retry_after(r, (ngx_int_t) secs) != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_http_apigw_error(r, APIGW_E_IDEMPOTENCY_KEY_IN_PROGRESS);

    case NGX_HTTP_APIGW_IDEM_COMPLETED:
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_IDEMPOTENCY_REPLAYED);
        ngx_str_set(&ctx->idempotency_status, "replay");
        ictx->replay = 1;
        return NGX_DECLINED;

    case NGX_HTTP_APIGW_IDEM_NOBODY:
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_IDEMPOTENCY_REPLAYED);
        ngx_str_set(&ctx->idempotency_status, "replay");
        return ngx_http_apigw_error(r,
                                    APIGW_E_IDEMPOTENCY_REPLAY_UNAVAILABLE);

    case NGX_HTTP_APIGW_IDEM_CORRUPT:

        /*
         * The request ran, but its record cannot be read (written by a
         * newer version, or damaged): "retry later", whatever the fail
         * mode, as forwarding would run it a second time.
         */

        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_IDEMPOTENCY_UNAVAILABLE);

        if (ngx_http_apigw_idem_retry_after(r, 1) != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_http_apigw_error(r, APIGW_E_IDEMPOTENCY_UNAVAILABLE);

    default: /* NGX_HTTP_APIGW_IDEM_UNAVAILABLE */
        break;
    }

    ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_IDEMPOTENCY_UNAVAILABLE);

    if (ictx->conf->fail == NGX_HTTP_APIGW_IDEM_FAIL_OPEN) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "apigw idempotency: store unavailable, request "
                      "forwarded without idempotency protection");

        /*
         * A claim that timed out may have taken the key after all: the
         * response then settles it as if it had, so that a retry is not
         * refused as "in progress" for the whole lock ttl, or run again.
         */

        if (ictx->timed_out) {
            ictx->armed = 1;
            ictx->max_body = ictx->conf->max_body;
        }

        return NGX_DECLINED;
    }

    /* a lock the timed-out claim may have taken is released at cleanup */

    if (ngx_http_apigw_idem_retry_after(r, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_apigw_error(r, APIGW_E_IDEMPOTENCY_UNAVAILABLE);
}


static ngx_int_t
ngx_http_apigw_idem_retry_after(ngx_http_request_t *r, ngx_int_t seconds)
{
    ngx_str_t  value;

    value.data = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (value.data == NULL) {
        return NGX_ERROR;
    }

    value.len = ngx_sprintf(value.data, "%i", seconds) - value.data;

    if (ngx_http_apigw_set_out_header(r,
                                      &ngx_http_apigw_idem_retry_after_name,
                                      &value)
        == NULL)
    {
        return NGX_ERROR;
    }

    ngx_http_apigw_error_detail_int(r, "retry_after", seconds);

    return NGX_OK;
}


/*
 * 1 when (part of) the request was written to a backend, on this attempt
 * or an earlier one: from then on the backend may run it.
 */

static ngx_uint_t
ngx_http_apigw_idem_reached_upstream(ngx_http_request_t *r)
{
    ngx_uint_t                  i;
    ngx_http_upstream_t        *u;
    ngx_http_upstream_state_t  *state;

    u = r->upstream;

    if (u == NULL) {
        return 0;
    }

    if (u->request_sent) {
        return 1;
    }

    if (r->upstream_states) {
        state = r->upstream_states->elts;

        for (i = 0; i < r->upstream_states->nelts; i++) {
            if (state[i].bytes_sent > 0) {
                return 1;
            }
        }
    }

    return 0;
}


/*
 * The request is going away.  Whatever the response did not settle is
 * settled here, by one rule: once the upstream may have run, the key is
 * never released.
 */

static void
ngx_http_apigw_idem_cleanup(void *data)
{
    ngx_http_apigw_idem_ctx_t  *ictx = data;

    apigw_idem_fp_abort(&ictx->fp);

    /* a complete still in flight must not wake a freed request */
    if (ictx->op) {
        ictx->op->waiter = NULL;
        ictx->op = NULL;
    }

    if (ictx->release.posted) {
        ngx_delete_posted_event(&ictx->release);
    }

    if (!ictx->owes) {
        return;
    }

    if (ictx->header_seen) {

        /*
         * A storable status was sent, but the body never completed: the
         * upstream failed mid-body, or the client left where the body
         * cannot be taken over (HTTP/2, a send timeout) and nginx stopped
         * reading the upstream.  The upstream did run.
         */

        ngx_http_apigw_idem_settle(ictx, NGX_HTTP_APIGW_IDEM_OP_NOBODY,
                                   NULL, 0);
        return;
    }

    if (ngx_http_apigw_idem_reached_upstream(ictx->request)) {

        /*
         * The request went upstream and no response came back: it may
         * have run there.  The lock expires by itself.
         */

        ngx_log_error(NGX_LOG_INFO, ictx->request->connection->log, 0,
                      "apigw idempotency: request ended without a response, "
                      "\"%V\" stays locked for its lock ttl", &ictx->rkey);
        ictx->owes = 0;
        return;
    }

    /* never reached a backend (refused, failed early, a pending claim) */

    ngx_http_apigw_idem_settle(ictx, NGX_HTTP_APIGW_IDEM_OP_RELEASE, NULL, 0);
}


/* replay */

static ngx_int_t
ngx_http_apigw_idem_precontent(ngx_http_request_t *r)
{
    ngx_http_apigw_idem_ctx_t  *ictx;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    ictx = ngx_http_apigw_idem_get(r);

    if (ictx && ictx->replay) {
        r->content_handler = ngx_http_apigw_idem_replay_handler;
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_apigw_idem_same(ngx_str_t *name, const char *lit)
{
    size_t  n;

    n = ngx_strlen(lit);

    return name->len == n && ngx_strncasecmp(name->data, (u_char *) lit, n)
                             == 0;
}


/*
 * Content-Type as nginx keeps it: the type up to a "; charset=" goes to
 * content_type_len and the charset is known, so that the charset filter
 * and the header filter treat a replay as they treated the original.
 */

static void
ngx_http_apigw_idem_set_content_type(ngx_http_request_t *r, ngx_str_t *v)
{
    u_char  *p, *semi, *end;

    r->headers_out.content_type = *v;
    r->headers_out.content_type_len = v->len;
    r->headers_out.content_type_lowcase = NULL;
    ngx_str_null(&r->headers_out.charset);

    end = v->data + v->len;

    for (semi = v->data; semi < end; semi++) {

        if (*semi != ';') {
            continue;
        }

        p = semi + 1;

        while (p < end && *p == ' ') {
            p++;
        }

        if (end - p < 8 || ngx_strncasecmp(p, (u_char *) "charset=", 8) != 0)
        {
            continue;
        }

        p += 8;

        if (p < end && *p == '"') {
            p++;
        }

        r->headers_out.content_type_len = semi - v->data;
        r->headers_out.charset.data = p;
        r->headers_out.charset.len = end - p;

        if (end > p && end[-1] == '"') {
            r->headers_out.charset.len--;
        }

        return;
    }
}


static ngx_int_t
ngx_http_apigw_idem_replay_handler(ngx_http_request_t *r)
{
    ngx_int_t                   rc;
    ngx_str_t                   name, value;
    ngx_buf_t                  *b;
    ngx_uint_t                  i;
    ngx_chain_t                 out;
    ngx_table_elt_t            *h;
    apigw_idem_record_t        *rec;
    ngx_http_apigw_ctx_t       *ctx;
    ngx_http_apigw_idem_ctx_t  *ictx;

    ctx = ngx_http_apigw_get_ctx(r);
    ictx = ctx->feature[NGX_HTTP_APIGW_IDEMPOTENCY];
    rec = &ictx->rec;

    /* the body was read for the fingerprint already */

    r->headers_out.status = rec->status;

    /* as for the proxied original: a conditional retry gets no 304 */
    r->disable_not_modified = 1;

    for (i = 0; i < rec->nheaders; i++) {
        name.len = rec->headers[i].name.len;
        name.data = rec->headers[i].name.data;
        value.len = rec->headers[i].value.len;
        value.data = rec->headers[i].value.data;

        if (ngx_http_apigw_idem_same(&name, "content-type")) {
            ngx_http_apigw_idem_set_content_type(r, &value);
            continue;
        }

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        h->key = name;
        h->value = value;

        h->lowcase_key = ngx_pnalloc(r->pool, name.len);
        if (h->lowcase_key == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_strlow(h->lowcase_key, name.data, name.len);

        /*
         * Location stays a plain header: the upstream module does the
         * same, so that nginx never turns a relative one into an absolute
         * one, and the replay matches the original.  The others are what
         * gzip, not_modified and range look at.
         */

        if (ngx_http_apigw_idem_same(&name, "content-encoding")) {
            r->headers_out.content_encoding = h;

        } else if (ngx_http_apigw_idem_same(&name, "etag")) {
            r->headers_out.etag = h;

        } else if (ngx_http_apigw_idem_same(&name, "last-modified")) {
            r->headers_out.last_modified = h;
            r->headers_out.last_modified_time =
                                       ngx_parse_http_time(value.data,
                                                           value.len);

        } else if (ngx_http_apigw_idem_same(&name, "www-authenticate")) {
            r->headers_out.www_authenticate = h;
        }
    }

    if (ngx_http_apigw_set_out_header(r, &ngx_http_apigw_idem_replayed_name,
                                      &ngx_http_apigw_idem_replayed_value)
        == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.content_length_n = rec->body.len;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    /* the envelope filter leaves the stored bytes alone, errors included */
    ctx->replay = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    if (rec->body.len == 0) {
        return ngx_http_send_special(r, NGX_HTTP_LAST);
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = rec->body.data;
    b->last = rec->body.data + rec->body.len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* capture */

static ngx_int_t
ngx_http_apigw_idem_header_filter(ngx_http_request_t *r)
{
    ngx_int_t                   rc;
    ngx_http_apigw_idem_ctx_t  *ictx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ictx = ngx_http_apigw_idem_get(r);

    if (ictx == NULL || !ictx->armed || !ictx->owes || ictx->header_seen) {
        return ngx_http_next_header_filter(r);
    }

    ictx->header_seen = 1;
    ictx->status = r->headers_out.status;

    /*
     * Not kept: statuses a retry should be allowed to change (5xx, 429,
     * ...), and nginx's own error pages for a request that never went
     * upstream (an access module after us refused it, try_files found
     * nothing): the backend did not run, so the retry may.
     */

    if (!apigw_idem_storable(ictx->status)
        || (r->err_status && r->upstream == NULL))
    {
        if (r->err_status
            && r->upstream
            && r->upstream->headers_in.status_n == 0
            && ngx_http_apigw_idem_reached_upstream(r))
        {
            /*
             * nginx's 502 or 504, not the backend's answer: a timeout, a
             * reset, a premature close after the request was sent.  The
             * backend may have run it, may still be running it: a retry
             * waits for the lock to expire instead of running it again.
             */

            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "apigw idempotency: no answer from the upstream, "
                          "\"%V\" stays locked for its lock ttl",
                          &ictx->rkey);
            ictx->owes = 0;
            return ngx_http_next_header_filter(r);
        }

        ngx_http_apigw_idem_settle(ictx, NGX_HTTP_APIGW_IDEM_OP_RELEASE,
                                   NULL, 0);
        return ngx_http_next_header_filter(r);
    }

    if (ngx_http_apigw_idem_capture_start(r, ictx) != NGX_OK) {
        /* not storable as it is: kept without its body, never released */
        ngx_http_apigw_idem_settle(ictx, NGX_HTTP_APIGW_IDEM_OP_NOBODY,
                                   NULL, 0);
        return ngx_http_next_header_filter(r);
    }

    rc = ngx_http_next_header_filter(r);

    /* HEAD, 204, 304: there is no body to wait for */
    if (ictx->capturing && r->header_only) {
        ngx_http_apigw_idem_finish(ictx);
    }

    return rc;
}


static ngx_int_t
ngx_http_apigw_idem_capture_start(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx)
{
    u_char               *p;
    size_t                head;
    off_t                 cl;
    ngx_str_t             ct;
    ngx_uint_t            i, n;
    ngx_list_part_t      *part;
    ngx_table_elt_t      *h;
    apigw_idem_header_t  *out;

    n = 1;

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash != 0) {
            n++;
        }
    }

    out = ngx_palloc(r->pool, n * sizeof(apigw_idem_header_t));
    if (out == NULL) {
        return NGX_ERROR;
    }

    n = 0;

    /* Content-Type lives outside the list; as the header filter sends it */

    ct = r->headers_out.content_type;

    if (ct.len) {
        if (r->headers_out.content_type_len == ct.len
            && r->headers_out.charset.len)
        {
            p = ngx_pnalloc(r->pool, ct.len + sizeof("; charset=") - 1
                                     + r->headers_out.charset.len);
            if (p == NULL) {
                return NGX_ERROR;
            }

            ct.data = p;
            p = ngx_cpymem(p, r->headers_out.content_type.data,
                           r->headers_out.content_type.len);
            p = ngx_cpymem(p, "; charset=", sizeof("; charset=") - 1);
            p = ngx_cpymem(p, r->headers_out.charset.data,
                           r->headers_out.charset.len);
            ct.len = p - ct.data;

        } else {
            ct.data = ngx_pstrdup(r->pool, &r->headers_out.content_type);
            if (ct.data == NULL) {
                return NGX_ERROR;
            }
        }

        out[n].name.len = sizeof("Content-Type") - 1;
        out[n].name.data = (u_char *) "Content-Type";
        out[n].value.len = ct.len;
        out[n].value.data = ct.data;
        n++;
    }

    /* copies: filters after us may still change the list */

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0
            || !apigw_idem_header_replayable(h[i].key.data, h[i].key.len)
            || ngx_http_apigw_idem_same(&h[i].key, "content-type"))
        {
            continue;
        }

        out[n].name.len = h[i].key.len;
        out[n].name.data = ngx_pstrdup(r->pool, &h[i].key);
        out[n].value.len = h[i].value.len;
        out[n].value.data = NULL;

        if (out[n].name.data == NULL) {
            return NGX_ERROR;
        }

        if (h[i].value.len) {
            out[n].value.data = ngx_pstrdup(r->pool, &h[i].value);
            if (out[n].value.data == NULL) {
                return NGX_ERROR;
            }
        }

        n++;
    }

    ictx->out.status = ictx->status;
    ictx->out.headers = out;
    ictx->out.nheaders = n;
    ictx->out.body.len = 0;
    ictx->out.body.data = NULL;

    /* the head's length does not depend on the body's */
    head = apigw_idem_record_size(&ictx->out);

    if (head == 0) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "apigw idempotency: the response headers cannot be "
                      "stored, \"%V\" is kept without a replay",
                      &ictx->rkey);
        return NGX_DECLINED;
    }

    cl = r->headers_out.content_length_n;

    if (cl > (off_t) ictx->max_body) {
        return NGX_DECLINED;
    }

    ictx->cap = (cl >= 0) ? (size_t) cl
                          : ngx_min(ictx->max_body,
                                    NGX_HTTP_APIGW_IDEM_CAPTURE_MIN);

    ictx->buf = ngx_pnalloc(r->pool, head + ictx->cap);
    if (ictx->buf == NULL) {
        return NGX_ERROR;
    }

    ictx->head = head;
    ictx->len = 0;
    ictx->capturing = 1;

    /* the copy filter, before us, then reads file buffers into memory */
    r->filter_need_in_memory = 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_idem_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_int_t                   rc;
    ngx_uint_t                  last;
    ngx_chain_t                *cl, *done;
    ngx_http_apigw_idem_ctx_t  *ictx;

    if (r != r->main) {
        return ngx_http_next_body_filter(r, in);
    }

    ictx = ngx_http_apigw_idem_get(r);

    if (ictx && ictx->gone) {

        /*
         * Nobody to send to: nothing is passed on any more (a flush would
         * only fail and stop the upstream), everything is taken here.
         */

        last = 0;

        if (ictx->capturing) {
            ngx_http_apigw_idem_capture(r, ictx, in, &last, NULL);

            if (last) {
                ngx_http_apigw_idem_finish(ictx);
            }

        } else {
            for (cl = in; cl; cl = cl->next) {
                cl->buf->pos = cl->buf->last;
                cl->buf->file_pos = cl->buf->file_last;
            }
        }

        return NGX_OK;
    }

    if (ictx && ictx->held) {
        /* whatever follows the held end waits behind it */
        return ngx_http_apigw_idem_hold_more(r, ictx, in);
    }

    if (in == NULL || ictx == NULL || !ictx->capturing) {
        return ngx_http_next_body_filter(r, in);
    }

    last = 0;
    done = NULL;

    ngx_http_apigw_idem_capture(r, ictx, in, &last, &done);

    /*
     * Stored before the client sees the end, so a retry sent the moment
     * the response is complete, to any node, is a replay: the end (the
     * body's last byte, or the chunked or closing end of a body without
     * Content-Length) waits for Redis's answer to the complete.
     */
    if (last || done) {
        return ngx_http_apigw_idem_hold(r, ictx,
                                        ngx_http_apigw_idem_finish(ictx), in,
                                        done);
    }

    rc = ngx_http_next_body_filter(r, in);

    if (rc == NGX_ERROR && r->connection->error && ictx->capturing
#if (NGX_HTTP_V2)
        && r->stream == NULL
#endif
       )
    {
        /*
         * The client is gone mid-response.  Left to itself, the upstream
         * module would now stop reading the response and close the
         * upstream connection: the record would lose its body.  Instead
         * everything still coming is taken here, so the client's retry is
         * answered with the whole response (proxy_ignore_client_abort on
         * keeps the upstream going until then).
         */

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "apigw idempotency: client gone, still capturing the "
                      "response for \"%V\"", &ictx->rkey);

        ngx_http_apigw_idem_drop_output(r);
        ictx->gone = 1;

        return NGX_OK;
    }

    return rc;
}


/* Appends to the record's body; over max_body it is kept without one. */

static void
ngx_http_apigw_idem_keep(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx, u_char *data, size_t size)
{
    u_char  *p;
    size_t   cap;

    if (ictx->len + size > ictx->cap) {

        if (ictx->len + size > ictx->max_body) {
            ictx->overflow = 1;
            return;
        }

        /* no (or a wrong) Content-Length: grow, up to max_body */

        cap = ngx_max(ictx->cap * 2, ictx->len + size);
        cap = ngx_min(cap, ictx->max_body);

        p = ngx_pnalloc(r->pool, ictx->head + cap);
        if (p == NULL) {
            ictx->overflow = 1;
            return;
        }

        ngx_memcpy(p + ictx->head, ictx->buf + ictx->head, ictx->len);
        ngx_pfree(r->pool, ictx->buf);

        ictx->buf = p;
        ictx->cap = cap;
    }

    ngx_memcpy(ictx->buf + ictx->head + ictx->len, data, size);
    ictx->len += size;
}


static void
ngx_http_apigw_idem_capture(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx, ngx_chain_t *in, ngx_uint_t *last,
    ngx_chain_t **done)
{
    size_t        before;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (b->last_buf) {
            *last = 1;
        }

        if (!ictx->overflow) {
            if (ngx_buf_in_memory(b)) {
                if (b->last > b->pos) {
                    before = ictx->len;

                    ngx_http_apigw_idem_keep(r, ictx, b->pos,
                                             b->last - b->pos);

                    /* the buffer with the body's last byte (Content-Length) */
                    if (done && !ictx->overflow
                        && r->headers_out.content_length_n > 0
                        && ictx->len
                           == (size_t) r->headers_out.content_length_n)
                    {
                        *done = cl;
                        ictx->done_off = before;
                    }
                }

            } else if (ngx_buf_size(b)) {
                /* the copy filter should have read it: never guess */
                ictx->overflow = 1;
            }
        }

        if (ictx->gone) {
            /* not passed on: it must look sent to the upstream module */
            b->pos = b->last;
            b->file_pos = b->file_last;
        }
    }
}


static ngx_http_apigw_idem_op_t *
ngx_http_apigw_idem_finish(ngx_http_apigw_idem_ctx_t *ictx)
{
    size_t  n;

    ictx->capturing = 0;

    if (ictx->overflow) {
        return ngx_http_apigw_idem_settle(ictx, NGX_HTTP_APIGW_IDEM_OP_NOBODY,
                                          NULL, 0);
    }

    ictx->out.body.len = ictx->len;
    ictx->out.body.data = ictx->buf + ictx->head;

    n = apigw_idem_record_encode_head(&ictx->out, ictx->buf, ictx->head);

    if (n != ictx->head) {
        return ngx_http_apigw_idem_settle(ictx, NGX_HTTP_APIGW_IDEM_OP_NOBODY,
                                          NULL, 0);
    }

    return ngx_http_apigw_idem_settle(ictx, NGX_HTTP_APIGW_IDEM_OP_FULL,
                                      ictx->buf, ictx->head + ictx->len);
}


/*
 * Passes on what comes before the last buffer and keeps the rest until
 * the complete is answered (or fails: the response never waits longer
 * than the Redis timeout).  The links are copied: callers such as
 * ngx_http_send_special() pass chains on their stack.
 */

static ngx_int_t
ngx_http_apigw_idem_hold(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx, ngx_http_apigw_idem_op_t *op,
    ngx_chain_t *in, ngx_chain_t *done)
{
    size_t        n;
    u_char       *p;
    ngx_int_t     rc;
    ngx_buf_t    *b, *one;
    ngx_chain_t  *cl, *out, **ll, **hl, *tail;

    if (op == NULL) {
        /* nothing sent to wait for (no memory): as before, do not wait */
        return ngx_http_next_body_filter(r, in);
    }

    /*
     * What goes out now and what is held, in links of our own: the
     * caller's links may live on its stack.  With Content-Length the held
     * end is the body's last byte, served from the captured copy (the
     * original buffer is consumed here and goes back to its owner);
     * without it, the last buffer itself.
     */

    out = NULL;
    ll = &out;
    hl = &ictx->held;
    tail = NULL;

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (tail == NULL && cl == done) {
            n = b->last - b->pos;
            p = ictx->buf + ictx->head + ictx->done_off;

            if (n > 1) {
                *ll = ngx_chain_get_free_buf(r->pool, &ictx->free);
                if (*ll == NULL) {
                    return NGX_ERROR;
                }

                (*ll)->buf->memory = 1;
                (*ll)->buf->pos = p;
                (*ll)->buf->last = p + n - 1;
                ll = &(*ll)->next;
            }

            *hl = ngx_chain_get_free_buf(r->pool, &ictx->free);
            if (*hl == NULL) {
                return NGX_ERROR;
            }

            one = (*hl)->buf;
            one->memory = 1;
            one->pos = p + n - 1;
            one->last = p + n;
            one->flush = b->flush;
            one->last_buf = b->last_buf;
            one->last_in_chain = b->last_in_chain;

            hl = &(*hl)->next;
            tail = cl;

            b->pos = b->last;
            continue;
        }

        if (tail == NULL && done == NULL && b->last_buf) {
            tail = cl;
        }

        if (tail == NULL) {
            *ll = ngx_alloc_chain_link(r->pool);
            if (*ll == NULL) {
                return NGX_ERROR;
            }

            (*ll)->buf = b;
            ll = &(*ll)->next;
            continue;
        }

        *hl = ngx_alloc_chain_link(r->pool);
        if (*hl == NULL) {
            return NGX_ERROR;
        }

        (*hl)->buf = b;
        hl = &(*hl)->next;
    }

    *ll = NULL;
    *hl = NULL;

    if (ictx->held == NULL) {
        /* the end was not in this chain after all */
        return ngx_http_next_body_filter(r, in);
    }

    op->waiter = ictx;
    ictx->op = op;

    ictx->release.handler = ngx_http_apigw_idem_release_handler;
    ictx->release.data = ictx;
    ictx->release.log = r->connection->log;

    r->buffered |= NGX_HTTP_APIGW_IDEM_BUFFERED;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "apigw idempotency: end of \"%V\" held for the complete",
                   &ictx->rkey);

    if (out == NULL) {
        return NGX_AGAIN;
    }

    rc = ngx_http_next_body_filter(r, out);

    return rc == NGX_ERROR ? NGX_ERROR : NGX_AGAIN;
}


static ngx_int_t
ngx_http_apigw_idem_hold_more(ngx_http_request_t *r,
    ngx_http_apigw_idem_ctx_t *ictx, ngx_chain_t *in)
{
    ngx_chain_t  *cl, **hl;

    for (hl = &ictx->held; *hl; hl = &(*hl)->next) { /* void */ }

    for (cl = in; cl; cl = cl->next) {
        *hl = ngx_alloc_chain_link(r->pool);
        if (*hl == NULL) {
            return NGX_ERROR;
        }

        (*hl)->buf = cl->buf;
        hl = &(*hl)->next;
    }

    *hl = NULL;

    return NGX_AGAIN;
}


/* the complete's first answer, or its failure: the end may go out now */

static void
ngx_http_apigw_idem_acked(ngx_http_apigw_idem_op_t *op, ngx_uint_t stored)
{
    ngx_http_apigw_idem_ctx_t  *ictx;

    ictx = op->waiter;

    if (ictx == NULL) {
        return;
    }

    op->waiter = NULL;
    ictx->op = NULL;

    if (!stored) {
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_IDEMPOTENCY_UNACKED);
    }

    /* never resume a request from inside a reply callback */
    ngx_post_event(&ictx->release, &ngx_posted_events);
}


static void
ngx_http_apigw_idem_release_handler(ngx_event_t *ev)
{
    ngx_int_t                   rc;
    ngx_chain_t                *held;
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_apigw_idem_ctx_t  *ictx;

    ictx = ev->data;
    r = ictx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    held = ictx->held;
    ictx->held = NULL;

    r->buffered &= ~NGX_HTTP_APIGW_IDEM_BUFFERED;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "apigw idempotency: end of \"%V\" released",
                   &ictx->rkey);

    rc = ngx_http_next_body_filter(r, held);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);

    } else {
        /* ngx_http_writer, once the content handler is done, ends it */
        r->write_event_handler(r);
    }

    ngx_http_run_posted_requests(c);
}


/*
 * After a failed write, what the write filter still holds will never be
 * sent; marked consumed, its buffers go back to the upstream module, which
 * needs them to go on reading the response.  The content was captured on
 * its way through.
 */

static void
ngx_http_apigw_idem_drop_output(ngx_http_request_t *r)
{
    ngx_chain_t  *cl;

    for (cl = r->out; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }

    r->out = NULL;
    r->connection->buffered &= ~NGX_HTTP_WRITE_BUFFERED;
}


/* complete and release: fire and forget, with retries */

/*
 * complete and release go out as plain EVAL, not EVALSHA: the client
 * answers NOSCRIPT by sending the script again behind whatever was queued
 * since, and a retry's claim queued in between would then run first and
 * find the key still in flight.  EVAL keeps them in the connection's
 * order, ahead of any request the client sends after seeing the response.
 */

static ngx_http_apigw_idem_op_t *
ngx_http_apigw_idem_settle(ngx_http_apigw_idem_ctx_t *ictx,
    ngx_http_apigw_idem_op_e kind, u_char *rec, size_t len)
{
    int                        i, argc;
    u_char                    *p, ttl[NGX_INT64_LEN], status[NGX_INT_T_LEN];
    size_t                     size, argvlen[NGX_HTTP_APIGW_IDEM_OP_ARGS];
    const char                *argv[NGX_HTTP_APIGW_IDEM_OP_ARGS];
    ngx_http_apigw_idem_op_t  *op;

    ictx->owes = 0;
    ictx->capturing = 0;

    ngx_http_apigw_metric_inc(kind == NGX_HTTP_APIGW_IDEM_OP_RELEASE
                              ? NGX_HTTP_APIGW_M_IDEMPOTENCY_RELEASED
                              : NGX_HTTP_APIGW_M_IDEMPOTENCY_STORED);

    argv[0] = "EVAL";
    argvlen[0] = 4;

    if (kind == NGX_HTTP_APIGW_IDEM_OP_RELEASE) {
        argv[1] = apigw_idem_script_release;

    } else {
        argv[1] = apigw_idem_script_complete;
    }

    argvlen[1] = ngx_strlen(argv[1]);
    argv[2] = "1";
    argvlen[2] = 1;

    argv[3] = (const char *) ictx->rkey.data;
    argvlen[3] = ictx->rkey.len;
    argv[4] = ictx->owner;
    argvlen[4] = APIGW_IDEM_OWNER_LEN;
    argc = 5;

    if (kind != NGX_HTTP_APIGW_IDEM_OP_RELEASE) {
        argv[5] = ictx->fphex;
        argvlen[5] = APIGW_IDEM_FP_HEX;
        argv[6] = (const char *) ttl;
        argvlen[6] = ngx_sprintf(ttl, "%M", ictx->conf->ttl) - ttl;
        argv[7] = (const char *) status;
        argvlen[7] = ngx_sprintf(status, "%ui", ictx->status) - status;

        if (kind == NGX_HTTP_APIGW_IDEM_OP_FULL) {
            argv[8] = "full";
            argvlen[8] = 4;
            argv[9] = (const char *) rec;
            argvlen[9] = len;
            argc = 10;

        } else {
            argv[8] = "nobody";
            argvlen[8] = 6;
            argc = 9;
        }
    }

    /* the script source is static: only the arguments are copied */

    size = sizeof(ngx_http_apigw_idem_op_t);

    for (i = NGX_HTTP_APIGW_IDEM_OP_HEAD; i < argc; i++) {
        size += argvlen[i];
    }

    op = ngx_alloc(size, ngx_cycle->log);
    if (op == NULL) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "apigw idempotency: no memory to settle \"%V\"",
                      &ictx->rkey);
        return NULL;
    }

    ngx_memzero(op, sizeof(ngx_http_apigw_idem_op_t));

    op->kind = kind;
    op->argc = argc;

    p = (u_char *) (op + 1);

    for (i = 0; i < argc; i++) {
        op->argvlen[i] = argvlen[i];

        if (i < NGX_HTTP_APIGW_IDEM_OP_HEAD) {
            op->argv[i] = argv[i];
            continue;
        }

        op->argv[i] = (const char *) p;
        p = ngx_cpymem(p, argv[i], argvlen[i]);
    }

    op->retry.handler = ngx_http_apigw_idem_op_retry;
    op->retry.data = op;
    op->retry.log = ngx_cycle->log;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "apigw idempotency: settle \"%V\" kind:%d",
                   &ictx->rkey, (int) kind);

    ngx_http_apigw_idem_op_send(op);

    /* alive still: a failed send is retried from a timer, never freed here */
    return op;
}


static void
ngx_http_apigw_idem_op_send(ngx_http_apigw_idem_op_t *op)
{
    if (ngx_http_apigw_redis_call(NULL, 0, op->argc, op->argv, op->argvlen,
                                  ngx_http_apigw_idem_op_done, op)
        == NULL)
    {
        ngx_http_apigw_idem_op_done(op, NGX_HTTP_APIGW_REDIS_FAIL, NULL);
    }
}


static void
ngx_http_apigw_idem_op_retry(ngx_event_t *ev)
{
    ngx_http_apigw_idem_op_send(ev->data);
}


static void
ngx_http_apigw_idem_op_done(void *data, ngx_http_apigw_redis_status_e status,
    redisReply *reply)
{
    ngx_http_apigw_idem_op_t *op = data;

    ngx_str_t    key;
    ngx_uint_t   level;
    const char  *what;

    key.data = (u_char *) op->argv[NGX_HTTP_APIGW_IDEM_OP_HEAD];
    key.len = op->argvlen[NGX_HTTP_APIGW_IDEM_OP_HEAD];

    what = (op->kind == NGX_HTTP_APIGW_IDEM_OP_RELEASE) ? "release"
                                                        : "complete";

    if (status == NGX_HTTP_APIGW_REDIS_OK) {

        if (reply->type == REDIS_REPLY_INTEGER) {

            if (reply->integer == 0
                && op->kind != NGX_HTTP_APIGW_IDEM_OP_RELEASE)
            {
                /*
                 * On a first attempt: the lock lapsed and another request
                 * took the key while the upstream was still running ours.
                 * On a retry: most likely our own earlier attempt.
                 */

                level = op->attempt ? NGX_LOG_NOTICE : NGX_LOG_ERR;

                ngx_log_error(level, ngx_cycle->log, 0,
                              "apigw idempotency: \"%V\" was taken by "
                              "another request before it completed; "
                              "apigw_idempotency_lock_ttl may be shorter "
                              "than the upstream's run time", &key);
            }

            ngx_http_apigw_idem_acked(op, 1);
            ngx_free(op);
            return;
        }

        if (reply->type == REDIS_REPLY_ERROR
            && op->kind == NGX_HTTP_APIGW_IDEM_OP_FULL)
        {
            /*
             * Refused with the response (out of memory, too large): a
             * record without it still stops a second run.
             */

            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "apigw idempotency: storing the response of "
                          "\"%V\" failed (%*s), keeping it without a body",
                          &key, (size_t) reply->len, reply->str);

            op->kind = NGX_HTTP_APIGW_IDEM_OP_NOBODY;
            op->argv[NGX_HTTP_APIGW_IDEM_OP_HEAD + 5] = "nobody";
            op->argvlen[NGX_HTTP_APIGW_IDEM_OP_HEAD + 5] = 6;
            op->argc = NGX_HTTP_APIGW_IDEM_OP_HEAD + 6;

            /* not from inside hiredis's callback */
            ngx_add_timer(&op->retry, 1);
            return;
        }

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "apigw idempotency: %s of \"%V\" failed: %*s", what,
                      &key,
                      (size_t) (reply->type == REDIS_REPLY_ERROR
                                ? reply->len : 0),
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");
        ngx_http_apigw_idem_acked(op, 0);
        ngx_free(op);
        return;
    }

    /*
     * Not connected or timed out: the response waited long enough, its
     * end goes out now.  A retry is harmless, both scripts are guarded.
     */

    ngx_http_apigw_idem_acked(op, 0);

    if (op->attempt < sizeof(ngx_http_apigw_idem_backoff)
                      / sizeof(ngx_http_apigw_idem_backoff[0]))
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "apigw idempotency: %s of \"%V\" %s, retrying", what,
                      &key, status == NGX_HTTP_APIGW_REDIS_TIMEOUT
                            ? "timed out" : "failed");

        ngx_add_timer(&op->retry, ngx_http_apigw_idem_backoff[op->attempt]);
        op->attempt++;
        return;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "apigw idempotency: %s of \"%V\" failed, giving up; %s",
                  what, &key,
                  op->kind == NGX_HTTP_APIGW_IDEM_OP_RELEASE
                  ? "the key stays locked for its lock ttl"
                  : "the key stays locked for its lock ttl, then a retry "
                    "runs the request again");

    ngx_free(op);
}
