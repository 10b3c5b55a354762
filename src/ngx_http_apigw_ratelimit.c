/*
 * Token-bucket rate limits held in Redis: the second access-phase stage
 * (after auth, before idempotency) and a header filter.
 *
 * The bucket arithmetic, the Lua script, the Redis key and the header
 * values live in the pure-C core (apigw_token_bucket.c); this file reads
 * the configuration, evaluates the keys of a request, asks Redis through
 * the per-pass batches of ngx_http_apigw_ratelimit_batch.c, keeps the
 * per-worker deny cache and writes headers.
 *
 * One script call checks every bucket of one key value all or nothing.
 * Policies keyed on different values (say $apigw_tenant and
 * $binary_remote_addr) live in different Redis Cluster slots, so they are
 * checked by one call per key value, one after the other, stopping at the
 * first refusal: a refusal by a later call cannot give back the tokens an
 * earlier call took (the only place all-or-nothing does not hold).
 */

#include "ngx_http_apigw_module.h"
#include "ngx_http_apigw_metrics.h"
#include "ngx_http_apigw_ratelimit_batch.h"
#include "apigw_token_bucket.h"


/* policies one location may apply; bounds every per-request array */
#define NGX_HTTP_APIGW_RL_MAX           16

/*
 * The local deny cache: entries per worker, and the longest a worker
 * refuses on its own.  The cap bounds how long a bucket reset by an
 * operator (DEL in Redis) keeps being refused; a flood at a per-day limit
 * then still costs Redis one call per worker every 10 s.
 */
#define NGX_HTTP_APIGW_RL_DENY_MAX      1024
#define NGX_HTTP_APIGW_RL_DENY_MS       10000

/* at most one "Redis unavailable" line per worker this often */
#define NGX_HTTP_APIGW_RL_LOG_MS        10000

#define NGX_HTTP_APIGW_RL_HDR_OFF       0
#define NGX_HTTP_APIGW_RL_HDR_LEGACY    1
#define NGX_HTTP_APIGW_RL_HDR_IETF      2
#define NGX_HTTP_APIGW_RL_HDR_BOTH      3


typedef struct {
    ngx_str_t                     name;
    apigw_rate_t                  rate;
    uint64_t                      capacity;
    ngx_http_complex_value_t     *key;          /* NULL: $apigw_tenant */
    ngx_flag_t                    fail_closed;
} ngx_http_apigw_rl_policy_t;


typedef struct {
    ngx_array_t                   policies;     /* of ..._rl_policy_t */
} ngx_http_apigw_rl_main_conf_t;


typedef struct {
    ngx_str_t                     name;
    ngx_http_apigw_rl_policy_t   *policy;       /* set once resolved */
    u_char                       *file;         /* where it was named */
    ngx_uint_t                    line;
} ngx_http_apigw_rl_ref_t;


/* a location's list, shared by the locations that inherit it */
typedef struct {
    ngx_array_t                   refs;         /* of ..._rl_ref_t */
    ngx_str_t                     policy_hdr;   /* RateLimit-Policy */
    ngx_uint_t                    resolved;
} ngx_http_apigw_rl_list_t;


typedef struct {
    ngx_http_apigw_rl_list_t     *limits;       /* NULL: none or "off" */
    ngx_uint_t                    headers;
} ngx_http_apigw_rl_loc_conf_t;


/* one policy as it applies to one request */
typedef struct {
    ngx_http_apigw_rl_policy_t   *policy;
    ngx_str_t                     key;          /* the key's value */
    ngx_str_t                     bucket;       /* its Redis key */
    apigw_rate_t                  rate;         /* after per-key override */
    uint64_t                      capacity;
    ngx_uint_t                    group;        /* first item of this key */
    apigw_tb_result_t             res;
    unsigned                      done:1;       /* res is set */
} ngx_http_apigw_rl_item_t;


typedef enum {
    NGX_HTTP_APIGW_RL_START = 0,
    NGX_HTTP_APIGW_RL_WAITING,
    NGX_HTTP_APIGW_RL_REPLIED,
    NGX_HTTP_APIGW_RL_FAILED,
    NGX_HTTP_APIGW_RL_DONE
} ngx_http_apigw_rl_state_e;


typedef enum {
    NGX_HTTP_APIGW_RL_NONE = 0,                 /* no headers */
    NGX_HTTP_APIGW_RL_ALLOWED,
    NGX_HTTP_APIGW_RL_REFUSED,
    NGX_HTTP_APIGW_RL_UNAVAILABLE               /* failed closed */
} ngx_http_apigw_rl_outcome_e;


typedef struct ngx_http_apigw_rl_ctx_s  ngx_http_apigw_rl_ctx_t;

struct ngx_http_apigw_rl_ctx_s {
    ngx_http_apigw_rl_ctx_t      *prev;         /* an earlier pass's */
    ngx_uint_t                    pass;         /* ctx->pass it belongs to */
    ngx_http_apigw_rl_item_t     *items;
    ngx_uint_t                    n;
    ngx_uint_t                    group;        /* the check in flight */
    ngx_msec_t                    sent;
    ngx_http_apigw_rl_waiter_t    waiter;       /* ... and its batch entry */
    apigw_tb_item_t              *check;        /* its buckets, n at most */
    apigw_tb_result_t            *res;
    ngx_http_apigw_rl_state_e     state;
    ngx_http_apigw_rl_outcome_e   outcome;
    ngx_uint_t                    tightest;
    ngx_uint_t                    headers;
    ngx_str_t                     policy_hdr;
    ngx_str_t                     why;          /* of a failed call */
};


typedef struct {
    ngx_str_node_t                sn;           /* sn.str -> data */
    ngx_queue_t                   queue;        /* LRU or free list */
    int64_t                       sent;
    int64_t                       until;
    apigw_tb_result_t             res;
    apigw_rate_t                  rate;
    uint64_t                      capacity;
    u_char                        data[1];
} ngx_http_apigw_rl_deny_t;


typedef struct {
    ngx_rbtree_t                  rbtree;
    ngx_rbtree_node_t             sentinel;
    ngx_queue_t                   lru;          /* most recent first */
    ngx_queue_t                   free;
    size_t                        key_max;
    u_char                       *mem;
} ngx_http_apigw_rl_deny_cache_t;


static ngx_int_t ngx_http_apigw_rl_init(ngx_conf_t *cf);
static void *ngx_http_apigw_rl_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_apigw_rl_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_apigw_rl_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_apigw_rl_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_apigw_rl_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_apigw_rl_resolve(ngx_conf_t *cf,
    ngx_http_apigw_rl_list_t *list);
static ngx_int_t ngx_http_apigw_rl_init_process(ngx_cycle_t *cycle);
static void ngx_http_apigw_rl_exit_process(ngx_cycle_t *cycle);

static ngx_int_t ngx_http_apigw_rl_stage(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx);
static ngx_int_t ngx_http_apigw_rl_header_filter(ngx_http_request_t *r);


static ngx_conf_enum_t  ngx_http_apigw_rl_headers[] = {
    { ngx_string("off"), NGX_HTTP_APIGW_RL_HDR_OFF },
    { ngx_string("legacy"), NGX_HTTP_APIGW_RL_HDR_LEGACY },
    { ngx_string("ietf"), NGX_HTTP_APIGW_RL_HDR_IETF },
    { ngx_string("both"), NGX_HTTP_APIGW_RL_HDR_BOTH },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_apigw_rl_commands[] = {

    { ngx_string("apigw_rate_limit_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_apigw_rl_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apigw_rate_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_apigw_rl_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apigw_rate_limit_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_rl_loc_conf_t, headers),
      &ngx_http_apigw_rl_headers },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_apigw_ratelimit_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_apigw_rl_init,                /* postconfiguration */

    ngx_http_apigw_rl_create_main_conf,    /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_apigw_rl_create_loc_conf,     /* create location configuration */
    ngx_http_apigw_rl_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_apigw_ratelimit_module = {
    NGX_MODULE_V1,
    &ngx_http_apigw_ratelimit_module_ctx,  /* module context */
    ngx_http_apigw_rl_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_apigw_rl_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_apigw_rl_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;

static ngx_http_apigw_redis_script_t  ngx_http_apigw_rl_script;

static ngx_http_apigw_rl_deny_cache_t  *ngx_http_apigw_rl_deny;

/* the rate-limited "Redis unavailable" message */
static ngx_msec_t   ngx_http_apigw_rl_log_last;
static ngx_uint_t   ngx_http_apigw_rl_log_logged;
static ngx_uint_t   ngx_http_apigw_rl_log_skipped;

/* the rate-limited "bad per-key override" message */
static ngx_msec_t   ngx_http_apigw_rl_bad_last;
static ngx_uint_t   ngx_http_apigw_rl_bad_logged;

static ngx_str_t  ngx_http_apigw_rl_h_limit = ngx_string("X-RateLimit-Limit");
static ngx_str_t  ngx_http_apigw_rl_h_remaining =
    ngx_string("X-RateLimit-Remaining");
static ngx_str_t  ngx_http_apigw_rl_h_reset = ngx_string("X-RateLimit-Reset");
static ngx_str_t  ngx_http_apigw_rl_h_policy = ngx_string("RateLimit-Policy");
static ngx_str_t  ngx_http_apigw_rl_h_ratelimit = ngx_string("RateLimit");
static ngx_str_t  ngx_http_apigw_rl_h_retry = ngx_string("Retry-After");
static ngx_str_t  ngx_http_apigw_rl_one = ngx_string("1");


/* configuration */

static ngx_int_t
ngx_http_apigw_rl_init(ngx_conf_t *cf)
{
    ngx_http_apigw_rl_loc_conf_t  *rlcf;

    /* the script never changes: its SHA is computed once per cycle */
    ngx_http_apigw_rl_script.source.data = (u_char *) apigw_token_bucket_lua;
    ngx_http_apigw_rl_script.source.len = ngx_strlen(apigw_token_bucket_lua);

    if (ngx_http_apigw_redis_script_init(&ngx_http_apigw_rl_script)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * The http level's own list is never merged into anything when no
     * server inherits it; an unknown name there must fail "nginx -t" too.
     */
    rlcf = ngx_http_conf_get_module_loc_conf(cf,
                                             ngx_http_apigw_ratelimit_module);

    if (rlcf->limits != NGX_CONF_UNSET_PTR && rlcf->limits != NULL
        && ngx_http_apigw_rl_resolve(cf, rlcf->limits) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_apigw_register_stage(NGX_HTTP_APIGW_RATELIMIT,
                                  ngx_http_apigw_rl_stage);

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_apigw_rl_header_filter;

    return NGX_OK;
}


static void *
ngx_http_apigw_rl_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_apigw_rl_main_conf_t  *rmcf;

    rmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_rl_main_conf_t));
    if (rmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&rmcf->policies, cf->pool, 4,
                       sizeof(ngx_http_apigw_rl_policy_t))
        != NGX_OK)
    {
        return NULL;
    }

    return rmcf;
}


static void *
ngx_http_apigw_rl_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_apigw_rl_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_rl_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->limits = NGX_CONF_UNSET_PTR;
    conf->headers = NGX_CONF_UNSET_UINT;

    return conf;
}


static char *
ngx_http_apigw_rl_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_apigw_rl_loc_conf_t *prev = parent;
    ngx_http_apigw_rl_loc_conf_t *conf = child;

    /* as limit_req: a level that names any policy replaces the parent's */
    ngx_conf_merge_ptr_value(conf->limits, prev->limits, NULL);
    ngx_conf_merge_uint_value(conf->headers, prev->headers,
                              NGX_HTTP_APIGW_RL_HDR_LEGACY);

    if (conf->limits && ngx_http_apigw_rl_resolve(cf, conf->limits) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_apigw_rl_parse_fail(ngx_str_t *v, ngx_flag_t *closed)
{
    if (v->len == 4 && ngx_strncmp(v->data, "open", 4) == 0) {
        *closed = 0;
        return NGX_OK;
    }

    if (v->len == 6 && ngx_strncmp(v->data, "closed", 6) == 0) {
        *closed = 1;
        return NGX_OK;
    }

    return NGX_ERROR;
}


static char *
ngx_http_apigw_rl_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apigw_rl_main_conf_t *rmcf = conf;

    uint64_t                           burst;
    ngx_str_t                         *value, s;
    ngx_uint_t                         i, have_rate, have_burst;
    const char                        *err;
    ngx_http_apigw_rl_policy_t        *p;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (!apigw_tb_name_valid(value[1].data, value[1].len)
        || (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid rate limit policy name \"%V\": 1 to %d "
                           "of A-Z a-z 0-9 _ . - (\"off\" is reserved)",
                           &value[1], APIGW_TB_NAME_MAX);
        return NGX_CONF_ERROR;
    }

    p = rmcf->policies.elts;

    for (i = 0; i < rmcf->policies.nelts; i++) {
        if (p[i].name.len == value[1].len
            && ngx_strncmp(p[i].name.data, value[1].data, value[1].len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate rate limit policy \"%V\"",
                               &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    p = ngx_array_push(&rmcf->policies);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    /*
     * fail=open by default: a limiter is there to keep clients fair, and
     * a Redis outage must not turn into an outage of every API behind
     * the gateway (auth, whose failure would let strangers in, answers
     * 503 instead).  Policies that guard something costly say fail=closed.
     */
    ngx_memzero(p, sizeof(ngx_http_apigw_rl_policy_t));

    p->name = value[1];

    have_rate = 0;
    have_burst = 0;
    burst = 0;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "rate=", 5) == 0) {
            err = apigw_rate_parse(value[i].data + 5, value[i].len - 5,
                                   &p->rate);
            if (err) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\": %s", &value[i], err);
                return NGX_CONF_ERROR;
            }

            have_rate = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "burst=", 6) == 0) {
            err = apigw_burst_parse(value[i].data + 6, value[i].len - 6,
                                    &burst);
            if (err) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\": %s", &value[i], err);
                return NGX_CONF_ERROR;
            }

            have_burst = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "key=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            if (s.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "empty \"key=\" in \"%V\"", &value[1]);
                return NGX_CONF_ERROR;
            }

            p->key = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
            if (p->key == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

            ccv.cf = cf;
            ccv.value = &s;
            ccv.complex_value = p->key;

            if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "fail=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            if (ngx_http_apigw_rl_parse_fail(&s, &p->fail_closed) != NGX_OK)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\": expected fail=open or "
                                   "fail=closed", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (!have_rate) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have a \"rate=\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    p->capacity = have_burst ? burst : p->rate.tokens;

    err = apigw_tb_check(p->capacity, &p->rate);
    if (err) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "rate limit policy \"%V\": %s", &value[1], err);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_apigw_rl_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apigw_rl_loc_conf_t *rlcf = conf;

    ngx_str_t                 *value;
    ngx_uint_t                 i, j;
    ngx_http_apigw_rl_ref_t   *ref, *refs;
    ngx_http_apigw_rl_list_t  *list;

    value = cf->args->elts;

    if (cf->args->nelts == 2
        && value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0)
    {
        if (rlcf->limits != NGX_CONF_UNSET_PTR) {
            return "is duplicate (\"off\" and a policy at the same level)";
        }

        rlcf->limits = NULL;
        return NGX_CONF_OK;
    }

    if (rlcf->limits == NULL) {
        return "is duplicate (\"off\" and a policy at the same level)";
    }

    if (rlcf->limits == NGX_CONF_UNSET_PTR) {
        list = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_rl_list_t));
        if (list == NULL) {
            return NGX_CONF_ERROR;
        }

        if (ngx_array_init(&list->refs, cf->pool, 2,
                           sizeof(ngx_http_apigw_rl_ref_t))
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        rlcf->limits = list;
    }

    list = rlcf->limits;

    /*
     * Policies are found by name once the whole http block is read (in the
     * merge), so a location may name a zone declared further down.
     */

    for (i = 1; i < cf->args->nelts; i++) {
        refs = list->refs.elts;

        for (j = 0; j < list->refs.nelts; j++) {
            if (refs[j].name.len == value[i].len
                && ngx_strncmp(refs[j].name.data, value[i].data,
                               value[i].len)
                   == 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "rate limit policy \"%V\" is applied "
                                   "twice", &value[i]);
                return NGX_CONF_ERROR;
            }
        }

        if (list->refs.nelts == NGX_HTTP_APIGW_RL_MAX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "at most %d rate limit policies apply to one "
                               "location", NGX_HTTP_APIGW_RL_MAX);
            return NGX_CONF_ERROR;
        }

        ref = ngx_array_push(&list->refs);
        if (ref == NULL) {
            return NGX_CONF_ERROR;
        }

        ref->name = value[i];
        ref->policy = NULL;
        ref->file = cf->conf_file->file.name.data;
        ref->line = cf->conf_file->line;
    }

    return NGX_CONF_OK;
}


/* "a";q=1;w=2, "b";q=3;w=4 -- the RateLimit-Policy field of a list */

static size_t
ngx_http_apigw_rl_policy_item(u_char *p, size_t room, ngx_uint_t first,
    ngx_str_t *name, uint64_t capacity, apigw_rate_t *rate)
{
    size_t       n, sep;
    apigw_str_t  s;

    s.len = name->len;
    s.data = name->data;

    sep = first ? 0 : 2;
    n = apigw_tb_hdr_policy(NULL, 0, &s, capacity, rate);

    if (p == NULL || room < sep + n) {
        return sep + n;
    }

    if (sep) {
        *p++ = ',';
        *p++ = ' ';
    }

    return sep + apigw_tb_hdr_policy(p, n, &s, capacity, rate);
}


/* appends item i of RateLimit-Policy; returns its end */

static u_char *
ngx_http_apigw_rl_policy_add(u_char *p, u_char *end, ngx_uint_t i,
    ngx_str_t *name, uint64_t capacity, apigw_rate_t *rate)
{
    return p + ngx_http_apigw_rl_policy_item(p, end - p, i == 0, name,
                                             capacity, rate);
}


static ngx_int_t
ngx_http_apigw_rl_resolve(ngx_conf_t *cf, ngx_http_apigw_rl_list_t *list)
{
    u_char                         *p, *end;
    size_t                          len;
    ngx_uint_t                      i, j;
    ngx_http_apigw_rl_ref_t        *refs;
    ngx_http_apigw_main_conf_t     *amcf;
    ngx_http_apigw_rl_policy_t     *pol;
    ngx_http_apigw_rl_main_conf_t  *rmcf;

    if (list->resolved) {
        return NGX_OK;
    }

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_apigw_module);
    rmcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_apigw_ratelimit_module);
    refs = list->refs.elts;

    if (amcf->redis == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"apigw_rate_limit\" needs \"apigw_redis\" in the "
                      "http block, in %s:%ui", refs[0].file, refs[0].line);
        return NGX_ERROR;
    }

    /* a '{' in the prefix would move the hash tag out of the bucket key */
    if (ngx_strlchr(amcf->redis->prefix.data,
                    amcf->redis->prefix.data + amcf->redis->prefix.len, '{'))
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"apigw_rate_limit\" needs an \"apigw_redis\" prefix "
                      "without \"{\", in %s:%ui", refs[0].file, refs[0].line);
        return NGX_ERROR;
    }

    pol = rmcf->policies.elts;

    for (i = 0; i < list->refs.nelts; i++) {

        for (j = 0; j < rmcf->policies.nelts; j++) {
            if (pol[j].name.len == refs[i].name.len
                && ngx_strncmp(pol[j].name.data, refs[i].name.data,
                               refs[i].name.len)
                   == 0)
            {
                refs[i].policy = &pol[j];
                break;
            }
        }

        if (refs[i].policy == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "unknown rate limit policy \"%V\" (no "
                          "\"apigw_rate_limit_zone %V ...\") in %s:%ui",
                          &refs[i].name, &refs[i].name, refs[i].file,
                          refs[i].line);
            return NGX_ERROR;
        }
    }

    /* the field most requests send, formatted once */

    len = 0;

    for (i = 0; i < list->refs.nelts; i++) {
        len += ngx_http_apigw_rl_policy_item(NULL, 0, i == 0,
                                             &refs[i].policy->name,
                                             refs[i].policy->capacity,
                                             &refs[i].policy->rate);
    }

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    list->policy_hdr.data = p;
    end = p + len;

    for (i = 0; i < list->refs.nelts; i++) {
        p = ngx_http_apigw_rl_policy_add(p, end, i, &refs[i].policy->name,
                                         refs[i].policy->capacity,
                                         &refs[i].policy->rate);
    }

    list->policy_hdr.len = p - list->policy_hdr.data;
    list->resolved = 1;

    return NGX_OK;
}


/* the per-worker deny cache */

static ngx_int_t
ngx_http_apigw_rl_init_process(ngx_cycle_t *cycle)
{
    size_t                           size, name_max;
    u_char                          *p;
    ngx_uint_t                       i;
    ngx_http_apigw_rl_deny_t        *d;
    ngx_http_apigw_main_conf_t      *amcf;
    ngx_http_apigw_rl_policy_t      *pol;
    ngx_http_apigw_rl_main_conf_t   *rmcf;
    ngx_http_apigw_rl_deny_cache_t  *dc;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_apigw_module);
    rmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_apigw_ratelimit_module);

    if (amcf == NULL || amcf->redis == NULL || rmcf == NULL
        || rmcf->policies.nelts == 0 || ngx_http_apigw_rl_deny != NULL)
    {
        return NGX_OK;
    }

    name_max = 0;
    pol = rmcf->policies.elts;

    for (i = 0; i < rmcf->policies.nelts; i++) {
        name_max = ngx_max(name_max, pol[i].name.len);
    }

    /*
     * Every entry is allocated here, once, in one block owned by the
     * worker: the cache never grows and never allocates per request.
     * Keys are bounded (long key values are hashed by apigw_tb_key).
     */

    dc = ngx_alloc(sizeof(ngx_http_apigw_rl_deny_cache_t), cycle->log);
    if (dc == NULL) {
        return NGX_ERROR;
    }

    dc->key_max = APIGW_TB_KEY_LEN(amcf->redis->prefix.len, name_max);

    size = ngx_align(offsetof(ngx_http_apigw_rl_deny_t, data) + dc->key_max,
                     NGX_ALIGNMENT);

    dc->mem = ngx_alloc(size * NGX_HTTP_APIGW_RL_DENY_MAX, cycle->log);
    if (dc->mem == NULL) {
        ngx_free(dc);
        return NGX_ERROR;
    }

    ngx_rbtree_init(&dc->rbtree, &dc->sentinel, ngx_str_rbtree_insert_value);
    ngx_queue_init(&dc->lru);
    ngx_queue_init(&dc->free);

    p = dc->mem;

    for (i = 0; i < NGX_HTTP_APIGW_RL_DENY_MAX; i++) {
        d = (ngx_http_apigw_rl_deny_t *) p;
        ngx_queue_insert_tail(&dc->free, &d->queue);
        p += size;
    }

    ngx_http_apigw_rl_deny = dc;

    return ngx_http_apigw_rl_batch_init_process(cycle,
                                                &ngx_http_apigw_rl_script,
                                                amcf->redis->prefix.len);
}


static void
ngx_http_apigw_rl_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_apigw_rl_batch_exit_process();

    if (ngx_http_apigw_rl_deny) {
        ngx_free(ngx_http_apigw_rl_deny->mem);
        ngx_free(ngx_http_apigw_rl_deny);
        ngx_http_apigw_rl_deny = NULL;
    }
}


static ngx_http_apigw_rl_deny_t *
ngx_http_apigw_rl_deny_find(ngx_str_t *bucket, uint32_t hash)
{
    ngx_str_node_t  *sn;

    sn = ngx_str_rbtree_lookup(&ngx_http_apigw_rl_deny->rbtree, bucket, hash);
    if (sn == NULL) {
        return NULL;
    }

    return (ngx_http_apigw_rl_deny_t *) sn;
}


static void
ngx_http_apigw_rl_deny_drop(ngx_http_apigw_rl_deny_t *d)
{
    ngx_rbtree_delete(&ngx_http_apigw_rl_deny->rbtree, &d->sn.node);
    ngx_queue_remove(&d->queue);
    ngx_queue_insert_head(&ngx_http_apigw_rl_deny->free, &d->queue);
}


/*
 * Refuses from the cache the items whose bucket is known empty (the rate
 * must match: a key with another per-key override refills otherwise).
 * Returns 1 when one was: Redis would refuse the request too, and being
 * all or nothing, it would take no token of the other buckets either.
 */

static ngx_uint_t
ngx_http_apigw_rl_deny_check(ngx_http_apigw_rl_ctx_t *rctx)
{
    int64_t                    now;
    ngx_uint_t                 i, hit;
    ngx_http_apigw_rl_deny_t  *d;
    ngx_http_apigw_rl_item_t  *it;

    if (ngx_http_apigw_rl_deny == NULL
        || ngx_queue_empty(&ngx_http_apigw_rl_deny->lru))
    {
        return 0;
    }

    now = (int64_t) ngx_current_msec;
    hit = 0;

    for (i = 0; i < rctx->n; i++) {
        it = &rctx->items[i];

        d = ngx_http_apigw_rl_deny_find(&it->bucket,
                                        ngx_crc32_short(it->bucket.data,
                                                        it->bucket.len));
        if (d == NULL) {
            continue;
        }

        if (now >= d->until) {
            ngx_http_apigw_rl_deny_drop(d);
            continue;
        }

        if (d->capacity != it->capacity
            || d->rate.tokens != it->rate.tokens
            || d->rate.period_ms != it->rate.period_ms)
        {
            continue;
        }

        if (apigw_tb_deny_local(&d->res, d->sent, d->until, now, &it->res)) {
            it->done = 1;
            hit = 1;

            ngx_queue_remove(&d->queue);
            ngx_queue_insert_head(&ngx_http_apigw_rl_deny->lru, &d->queue);
        }
    }

    return hit;
}


static void
ngx_http_apigw_rl_deny_put(ngx_http_apigw_rl_item_t *it, int64_t sent)
{
    int64_t                          until;
    uint32_t                         hash;
    ngx_queue_t                     *q;
    ngx_http_apigw_rl_deny_t        *d;
    ngx_http_apigw_rl_deny_cache_t  *dc;

    dc = ngx_http_apigw_rl_deny;

    if (dc == NULL || it->bucket.len > dc->key_max) {
        /* a reload in single-process mode made longer keys: no cache */
        return;
    }

    until = apigw_tb_deny_until(&it->res, sent, NGX_HTTP_APIGW_RL_DENY_MS);
    if (until == 0) {
        return;
    }

    hash = ngx_crc32_short(it->bucket.data, it->bucket.len);

    d = ngx_http_apigw_rl_deny_find(&it->bucket, hash);

    if (d == NULL) {
        if (ngx_queue_empty(&dc->free)) {
            /* the least recently refused bucket makes room */
            q = ngx_queue_last(&dc->lru);
            ngx_http_apigw_rl_deny_drop(
                ngx_queue_data(q, ngx_http_apigw_rl_deny_t, queue));
        }

        q = ngx_queue_head(&dc->free);
        ngx_queue_remove(q);

        d = ngx_queue_data(q, ngx_http_apigw_rl_deny_t, queue);

        ngx_memcpy(d->data, it->bucket.data, it->bucket.len);
        d->sn.str.len = it->bucket.len;
        d->sn.str.data = d->data;
        d->sn.node.key = hash;

        ngx_rbtree_insert(&dc->rbtree, &d->sn.node);

    } else {
        ngx_queue_remove(&d->queue);
    }

    ngx_queue_insert_head(&dc->lru, &d->queue);

    d->sent = sent;
    d->until = until;
    d->res = it->res;
    d->rate = it->rate;
    d->capacity = it->capacity;
}


/* the stage */

/*
 * A per-key override (the key record's rate and burst) replaces the rate
 * and capacity of every policy for this request: rate=Nr/m alone gives
 * capacity N, as in apigw_rate_limit_zone; burst alone keeps the policy's
 * rate.  Values Redis holds are not trusted: a broken one is logged
 * (rate-limited: one bad record must not fill the log) and the policy
 * applies unchanged.
 */

static void
ngx_http_apigw_rl_bad_override(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx, const char *err)
{
    if (ngx_http_apigw_rl_bad_logged
        && ngx_current_msec - ngx_http_apigw_rl_bad_last
           < NGX_HTTP_APIGW_RL_LOG_MS)
    {
        return;
    }

    ngx_http_apigw_rl_bad_logged = 1;
    ngx_http_apigw_rl_bad_last = ngx_current_msec;

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "apigw rate limit: ignoring the rate \"%V\" and burst "
                  "\"%V\" of key_id \"%V\": %s; the policies apply",
                  &ctx->key_rate, &ctx->key_burst, &ctx->key_id, err);
}


static ngx_int_t
ngx_http_apigw_rl_override(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    apigw_rate_t *rate, uint64_t *burst)
{
    const char  *err;

    err = NULL;

    if (ctx->key_rate.len) {
        err = apigw_rate_parse(ctx->key_rate.data, ctx->key_rate.len, rate);
    }

    if (err == NULL && ctx->key_burst.len) {
        err = apigw_burst_parse(ctx->key_burst.data, ctx->key_burst.len,
                                burst);
    }

    if (err == NULL) {
        return NGX_OK;
    }

    ngx_http_apigw_rl_bad_override(r, ctx, err);

    return NGX_DECLINED;
}


/* an earlier location pass of this request took a token of this policy */

static ngx_uint_t
ngx_http_apigw_rl_charged(ngx_http_apigw_rl_ctx_t *rctx,
    ngx_http_apigw_rl_policy_t *pol)
{
    ngx_uint_t  i;

    for ( /* void */ ; rctx; rctx = rctx->prev) {
        for (i = 0; i < rctx->n; i++) {
            if (rctx->items[i].policy == pol
                && rctx->items[i].done
                && rctx->items[i].res.allowed)
            {
                return 1;
            }
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_apigw_rl_prepare(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_rl_loc_conf_t *rlcf, ngx_http_apigw_rl_ctx_t **out)
{
    u_char                       *p, *end;
    size_t                        len;
    uint64_t                      burst, ocap;
    ngx_str_t                     key;
    ngx_uint_t                    i, j, n, override, overridden;
    const char                   *err;
    apigw_str_t                   prefix, name, k;
    apigw_rate_t                  rate, orate;
    ngx_http_apigw_rl_ref_t      *refs;
    ngx_http_apigw_rl_ctx_t      *rctx;
    ngx_http_apigw_rl_item_t     *it;
    ngx_http_apigw_rl_list_t     *list;
    ngx_http_apigw_rl_policy_t   *pol;
    ngx_http_apigw_redis_conf_t  *rcf;

    *out = NULL;

    rate.tokens = 0;
    rate.period_ms = 0;
    burst = 0;

    list = rlcf->limits;
    refs = list->refs.elts;

    /* one block, sized to the location's policies: zeroed per request */
    rctx = ngx_pcalloc(r->pool, sizeof(ngx_http_apigw_rl_ctx_t)
                                + list->refs.nelts
                                  * (sizeof(ngx_http_apigw_rl_item_t)
                                     + sizeof(apigw_tb_item_t)
                                     + sizeof(apigw_tb_result_t)));
    if (rctx == NULL) {
        return NGX_ERROR;
    }

    rctx->items = (ngx_http_apigw_rl_item_t *) (rctx + 1);
    rctx->check = (apigw_tb_item_t *) (rctx->items + list->refs.nelts);
    rctx->res = (apigw_tb_result_t *) (rctx->check + list->refs.nelts);

    override = (ctx->key_rate.len || ctx->key_burst.len)
               && ngx_http_apigw_rl_override(r, ctx, &rate, &burst)
                  == NGX_OK;
    overridden = 0;

    rcf = ngx_http_apigw_redis_conf_get(r);

    prefix.len = rcf->prefix.len;
    prefix.data = rcf->prefix.data;

    n = 0;

    for (i = 0; i < list->refs.nelts; i++) {
        pol = refs[i].policy;

        /* a policy charges one request once, whichever locations apply it */
        if (ngx_http_apigw_rl_charged(ctx->feature[NGX_HTTP_APIGW_RATELIMIT],
                                      pol))
        {
            continue;
        }

        if (pol->key) {
            if (ngx_http_complex_value(r, pol->key, &key) != NGX_OK) {
                return NGX_ERROR;
            }

        } else {
            key = ctx->tenant;
        }

        /* as limit_req: a request without a key is not accounted */
        if (key.len == 0) {
            continue;
        }

        it = &rctx->items[n];

        it->policy = pol;
        it->key = key;
        it->rate = pol->rate;
        it->capacity = pol->capacity;

        if (override) {
            orate = rate.tokens ? rate : pol->rate;
            ocap = burst ? burst : (rate.tokens ? rate.tokens
                                                : pol->capacity);

            /* checked per policy: burst alone meets each policy's rate */
            err = apigw_tb_check(ocap, &orate);

            if (err == NULL) {
                it->rate = orate;
                it->capacity = ocap;
                overridden = 1;

            } else {
                ngx_http_apigw_rl_bad_override(r, ctx, err);
            }
        }

        name.len = pol->name.len;
        name.data = pol->name.data;
        k.len = key.len;
        k.data = key.data;

        p = ngx_pnalloc(r->pool, APIGW_TB_KEY_LEN(prefix.len, name.len));
        if (p == NULL) {
            return NGX_ERROR;
        }

        len = apigw_tb_key(p, APIGW_TB_KEY_LEN(prefix.len, name.len),
                           &prefix, &name, &k);
        if (len == 0) {
            continue;
        }

        it->bucket.len = len;
        it->bucket.data = p;

        /* one script call per key value: one Redis Cluster slot each */
        it->group = n;

        for (j = 0; j < n; j++) {
            if (rctx->items[j].key.len == key.len
                && ngx_memcmp(rctx->items[j].key.data, key.data, key.len)
                   == 0)
            {
                it->group = rctx->items[j].group;
                break;
            }
        }

        n++;
    }

    if (n == 0) {
        return NGX_OK;
    }

    rctx->n = n;
    rctx->headers = rlcf->headers;

    if (!(rlcf->headers & NGX_HTTP_APIGW_RL_HDR_IETF)) {
        /* not sent */

    } else if (n == list->refs.nelts && !overridden) {
        rctx->policy_hdr = list->policy_hdr;

    } else {
        /* RateLimit-Policy lists what applied to this request */

        len = 0;

        for (i = 0; i < n; i++) {
            it = &rctx->items[i];
            len += ngx_http_apigw_rl_policy_item(NULL, 0, i == 0,
                                                 &it->policy->name,
                                                 it->capacity, &it->rate);
        }

        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        rctx->policy_hdr.data = p;
        end = p + len;

        for (i = 0; i < n; i++) {
            it = &rctx->items[i];
            p = ngx_http_apigw_rl_policy_add(p, end, i, &it->policy->name,
                                             it->capacity, &it->rate);
        }

        rctx->policy_hdr.len = p - rctx->policy_hdr.data;
    }

    *out = rctx;

    return NGX_OK;
}


static void
ngx_http_apigw_rl_unavailable_log(ngx_http_request_t *r,
    ngx_http_apigw_rl_ctx_t *rctx, ngx_uint_t closed)
{
    ngx_uint_t  skipped, level;

    /*
     * A Redis outage makes every request fail the same way: one line per
     * worker every NGX_HTTP_APIGW_RL_LOG_MS, with the count in between.
     */

    if (ngx_http_apigw_rl_log_logged
        && ngx_current_msec - ngx_http_apigw_rl_log_last
           < NGX_HTTP_APIGW_RL_LOG_MS)
    {
        ngx_http_apigw_rl_log_skipped++;
        return;
    }

    skipped = ngx_http_apigw_rl_log_skipped;

    ngx_http_apigw_rl_log_logged = 1;
    ngx_http_apigw_rl_log_last = ngx_current_msec;
    ngx_http_apigw_rl_log_skipped = 0;

    level = closed ? NGX_LOG_ERR : NGX_LOG_WARN;

    ngx_log_error(level, r->connection->log, 0,
                  "apigw rate limit: Redis unavailable (%V), policy \"%V\" "
                  "fails %s; %ui more such requests since the last message",
                  &rctx->why, &rctx->items[rctx->group].policy->name,
                  closed ? "closed: 503" : "open: request let through",
                  skipped);
}


static void
ngx_http_apigw_rl_reply(ngx_http_apigw_rl_waiter_t *w)
{
    ngx_uint_t                 i, k;
    ngx_http_apigw_rl_ctx_t   *rctx = w->data;
    ngx_http_apigw_rl_item_t  *it;

    rctx->sent = w->sent;

    if (w->status != NGX_HTTP_APIGW_REDIS_OK) {
        rctx->why = w->why;
        rctx->state = NGX_HTTP_APIGW_RL_FAILED;
        return;
    }

    k = 0;

    for (i = rctx->group; i < rctx->n; i++) {
        it = &rctx->items[i];

        if (it->group == rctx->group) {
            it->res = rctx->res[k++];
            it->done = 1;
        }
    }

    rctx->state = NGX_HTTP_APIGW_RL_REPLIED;
}


static ngx_int_t
ngx_http_apigw_rl_send(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_rl_ctx_t *rctx, ngx_uint_t group)
{
    ngx_uint_t                   i, k;
    apigw_tb_item_t             *c;
    ngx_http_apigw_rl_item_t    *it;
    ngx_http_apigw_rl_waiter_t  *w;

    /* the buckets of one key value: one hash tag, one check */

    k = 0;

    for (i = group; i < rctx->n; i++) {
        it = &rctx->items[i];

        if (it->group != group) {
            continue;
        }

        c = &rctx->check[k++];

        c->bucket = it->bucket.data;
        c->bucket_len = it->bucket.len;
        c->capacity = it->capacity;
        c->rate = it->rate;
        c->cost = 1;
    }

    rctx->group = group;
    rctx->state = NGX_HTTP_APIGW_RL_WAITING;

    w = &rctx->waiter;

    w->ctx = ctx;
    w->items = rctx->check;
    w->res = rctx->res;
    w->n = k;
    w->handler = ngx_http_apigw_rl_reply;
    w->data = rctx;

    return ngx_http_apigw_rl_batch_add(r, w);
}


static void
ngx_http_apigw_rl_settle(ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_rl_ctx_t *rctx, ngx_http_apigw_rl_outcome_e outcome)
{
    ngx_uint_t                 i, n, t;
    ngx_uint_t                 map[NGX_HTTP_APIGW_RL_MAX];
    apigw_tb_result_t          res[NGX_HTTP_APIGW_RL_MAX];
    ngx_http_apigw_rl_item_t  *it;

    /* the headers describe the bucket closest to empty among the known */

    n = 0;

    for (i = 0; i < rctx->n; i++) {
        it = &rctx->items[i];

        if (it->done) {
            res[n] = it->res;
            map[n] = i;
            n++;
        }
    }

    t = apigw_tb_tightest(res, n);

    rctx->tightest = map[t];
    rctx->outcome = outcome;
    rctx->state = NGX_HTTP_APIGW_RL_DONE;

    ctx->ratelimit_remaining = (ngx_int_t) res[t].remaining;
}


static ngx_int_t
ngx_http_apigw_rl_refuse(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_rl_ctx_t *rctx, ngx_uint_t metric)
{
    ngx_http_apigw_rl_item_t  *it;

    ngx_http_apigw_metric_inc(metric);

    ngx_http_apigw_rl_settle(ctx, rctx, NGX_HTTP_APIGW_RL_REFUSED);

    it = &rctx->items[rctx->tightest];

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "apigw rate limit: policy \"%V\" refused, retry after "
                  "%L ms", &it->policy->name, it->res.retry_after_ms);

    ngx_http_apigw_error_detail_int(r, "retry_after",
                                    apigw_tb_retry_after_s(&it->res));
    ngx_http_apigw_error_detail_int(r, "limit", it->res.limit);
    ngx_http_apigw_error_detail_str(r, "policy", &it->policy->name);

    return ngx_http_apigw_error(r, APIGW_E_RATE_LIMITED);
}


static ngx_int_t
ngx_http_apigw_rl_fail(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_rl_ctx_t *rctx)
{
    ngx_uint_t  i;

    /* the policies not yet counted decide; one closed one closes */

    for (i = rctx->group; i < rctx->n; i++) {
        if (!rctx->items[i].done && rctx->items[i].policy->fail_closed) {
            break;
        }
    }

    rctx->state = NGX_HTTP_APIGW_RL_DONE;

    ngx_http_apigw_rl_unavailable_log(r, rctx, i < rctx->n);

    if (i == rctx->n) {
        /* failing open: no headers, there is nothing true to say */
        rctx->outcome = NGX_HTTP_APIGW_RL_NONE;
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_RATELIMIT_FAIL_OPEN);
        return NGX_DECLINED;
    }

    rctx->outcome = NGX_HTTP_APIGW_RL_UNAVAILABLE;
    ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_RATELIMIT_FAIL_CLOSED);

    ngx_http_apigw_error_detail_int(r, "retry_after", 1);

    return ngx_http_apigw_error(r, APIGW_E_RATE_LIMITER_UNAVAILABLE);
}


static ngx_int_t
ngx_http_apigw_rl_stage(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx)
{
    ngx_int_t                      rc;
    ngx_uint_t                     i, refused;
    ngx_http_apigw_rl_ctx_t       *rctx;
    ngx_http_apigw_rl_item_t      *it;
    ngx_http_apigw_rl_loc_conf_t  *rlcf;

    rctx = ctx->feature[NGX_HTTP_APIGW_RATELIMIT];

    if (rctx == NULL || rctx->pass != ctx->pass) {

        /*
         * The first pass, or another location serves the request now:
         * its policies apply, less those an earlier location charged.
         * The earlier pass's outcome stays for the headers if none does.
         */

        rlcf = ngx_http_get_module_loc_conf(r,
                                            ngx_http_apigw_ratelimit_module);

        if (rlcf->limits == NULL) {
            return NGX_DECLINED;
        }

        rc = ngx_http_apigw_rl_prepare(r, ctx, rlcf, &rctx);

        if (rc != NGX_OK) {
            return rc;
        }

        if (rctx == NULL) {
            return NGX_DECLINED;
        }

        rctx->pass = ctx->pass;
        rctx->prev = ctx->feature[NGX_HTTP_APIGW_RATELIMIT];
        ctx->feature[NGX_HTTP_APIGW_RATELIMIT] = rctx;

        if (ngx_http_apigw_rl_deny_check(rctx)) {
            return ngx_http_apigw_rl_refuse(r, ctx, rctx,
                                     NGX_HTTP_APIGW_M_RATELIMIT_DENIED_LOCALLY);
        }

        return ngx_http_apigw_rl_send(r, ctx, rctx, 0);
    }

    switch (rctx->state) {

    case NGX_HTTP_APIGW_RL_WAITING:
        return NGX_AGAIN;

    case NGX_HTTP_APIGW_RL_REPLIED:

        refused = 0;

        for (i = rctx->group; i < rctx->n; i++) {
            it = &rctx->items[i];

            if (it->group == rctx->group && !it->res.allowed) {
                ngx_http_apigw_rl_deny_put(it, (int64_t) rctx->sent);
                refused = 1;
            }
        }

        if (refused) {
            return ngx_http_apigw_rl_refuse(r, ctx, rctx,
                                            NGX_HTTP_APIGW_M_RATELIMIT_DENIED);
        }

        /* the next key value, if the policies use several */

        for (i = rctx->group + 1; i < rctx->n; i++) {
            if (rctx->items[i].group == i) {
                return ngx_http_apigw_rl_send(r, ctx, rctx, i);
            }
        }

        ngx_http_apigw_rl_settle(ctx, rctx, NGX_HTTP_APIGW_RL_ALLOWED);
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_RATELIMIT_ALLOWED);

        return NGX_DECLINED;

    case NGX_HTTP_APIGW_RL_FAILED:
        return ngx_http_apigw_rl_fail(r, ctx, rctx);

    default: /* NGX_HTTP_APIGW_RL_DONE */
        return NGX_DECLINED;
    }
}


/* the header filter */

static ngx_int_t
ngx_http_apigw_rl_set(ngx_http_request_t *r, ngx_str_t *name, u_char *p,
    size_t len)
{
    ngx_str_t  v;

    v.len = len;
    v.data = p;

    return ngx_http_apigw_set_out_header(r, name, &v) ? NGX_OK : NGX_ERROR;
}


static ngx_int_t
ngx_http_apigw_rl_header_filter(ngx_http_request_t *r)
{
    u_char                    *p;
    size_t                     n, room;
    apigw_str_t                name;
    apigw_tb_result_t         *res;
    ngx_http_apigw_ctx_t      *ctx;
    ngx_http_apigw_rl_ctx_t   *rctx;
    ngx_http_apigw_rl_item_t  *it;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_apigw_get_ctx(r);

    if (ctx == NULL || ctx->feature[NGX_HTTP_APIGW_RATELIMIT] == NULL) {
        return ngx_http_next_header_filter(r);
    }

    rctx = ctx->feature[NGX_HTTP_APIGW_RATELIMIT];

    if (rctx->outcome == NGX_HTTP_APIGW_RL_UNAVAILABLE) {
        if (r->headers_out.status == NGX_HTTP_SERVICE_UNAVAILABLE
            && ngx_http_apigw_set_out_header(r, &ngx_http_apigw_rl_h_retry,
                                             &ngx_http_apigw_rl_one)
               == NULL)
        {
            return NGX_ERROR;
        }

        return ngx_http_next_header_filter(r);
    }

    if (rctx->outcome != NGX_HTTP_APIGW_RL_ALLOWED
        && rctx->outcome != NGX_HTTP_APIGW_RL_REFUSED)
    {
        return ngx_http_next_header_filter(r);
    }

    it = &rctx->items[rctx->tightest];
    res = &it->res;

    name.len = it->policy->name.len;
    name.data = it->policy->name.data;

    /* every value into one piece of the request pool */

    room = 4 * APIGW_TB_INT_LEN + APIGW_TB_SF_LEN(name.len);

    p = ngx_pnalloc(r->pool, room);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (rctx->headers & NGX_HTTP_APIGW_RL_HDR_LEGACY) {

        n = apigw_tb_hdr_limit(p, room, res);
        if (ngx_http_apigw_rl_set(r, &ngx_http_apigw_rl_h_limit, p, n)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p += n;
        room -= n;

        n = apigw_tb_hdr_remaining(p, room, res);
        if (ngx_http_apigw_rl_set(r, &ngx_http_apigw_rl_h_remaining, p, n)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p += n;
        room -= n;

        n = apigw_tb_hdr_reset(p, room, res);
        if (ngx_http_apigw_rl_set(r, &ngx_http_apigw_rl_h_reset, p, n)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p += n;
        room -= n;
    }

    if (rctx->headers & NGX_HTTP_APIGW_RL_HDR_IETF) {

        if (ngx_http_apigw_set_out_header(r, &ngx_http_apigw_rl_h_policy,
                                          &rctx->policy_hdr)
            == NULL)
        {
            return NGX_ERROR;
        }

        n = apigw_tb_hdr_ratelimit(p, room, &name, res);
        if (ngx_http_apigw_rl_set(r, &ngx_http_apigw_rl_h_ratelimit, p, n)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p += n;
        room -= n;
    }

    /* Retry-After belongs to our own refusal only, whatever "headers" */

    if (rctx->outcome == NGX_HTTP_APIGW_RL_REFUSED
        && r->headers_out.status == NGX_HTTP_TOO_MANY_REQUESTS)
    {
        n = apigw_tb_hdr_retry_after(p, room, res);
        if (ngx_http_apigw_rl_set(r, &ngx_http_apigw_rl_h_retry, p, n)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return ngx_http_next_header_filter(r);
}
