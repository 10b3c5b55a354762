/*
 * API-key authentication: the first access-phase stage.
 *
 * The presented key is hashed at once and only its SHA-256 is used from
 * then on (cache, Redis); the key itself is never logged, never stored and
 * never forwarded.  Redis holds <prefix>key:<sha256 hex> hashes; lookups
 * are cached in shared memory.
 */

#include "ngx_http_apigw_module.h"
#include "ngx_http_apigw_auth_cache.h"
#include "ngx_http_apigw_metrics.h"


typedef struct {
    ngx_http_apigw_auth_cache_t   cache;
} ngx_http_apigw_auth_main_conf_t;


typedef struct {
    ngx_flag_t                    enable;
    ngx_str_t                     header;       /* empty: Authorization */
    ngx_array_t                  *scopes;       /* of ngx_str_t */

    /* what an accepted request loses: its credential, client X-Apigw-* */
    ngx_http_apigw_header_name_t  credential;
    const ngx_http_apigw_header_name_t  *strip[4];
} ngx_http_apigw_auth_loc_conf_t;


typedef enum {
    NGX_HTTP_APIGW_AUTH_START = 0,
    NGX_HTTP_APIGW_AUTH_WAITING,
    NGX_HTTP_APIGW_AUTH_FOUND,
    NGX_HTTP_APIGW_AUTH_UNKNOWN,
    NGX_HTTP_APIGW_AUTH_UNAVAILABLE
} ngx_http_apigw_auth_state_e;


/*
 * Kept for the whole request, across location passes: once a location has
 * accepted the key and removed its header, the digest (and the record
 * found for it) still lets a later location judge the same key.
 */
typedef struct {
    ngx_http_apigw_auth_state_e   state;
    ngx_uint_t                    pass;         /* ctx->pass judged in */
    u_char                        digest[APIGW_SHA256_LEN];
    apigw_key_record_t            rec;
    const ngx_http_apigw_header_name_t  *from;  /* the digest's header */
    unsigned                      have_digest:1;
    unsigned                      found:1;      /* rec is the digest's */
} ngx_http_apigw_auth_ctx_t;


static ngx_int_t ngx_http_apigw_auth_init(ngx_conf_t *cf);
static void *ngx_http_apigw_auth_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_apigw_auth_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_apigw_auth_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_apigw_auth_cache_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_apigw_require_scope(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_apigw_auth_stage(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx);
static ngx_int_t ngx_http_apigw_auth_refuse(ngx_http_request_t *r,
    apigw_err_id_t id);
static ngx_int_t ngx_http_apigw_auth_subrequest(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *mctx);


static ngx_command_t  ngx_http_apigw_auth_commands[] = {

    { ngx_string("apigw_auth"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_auth_loc_conf_t, enable),
      NULL },

    { ngx_string("apigw_auth_header"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_auth_loc_conf_t, header),
      NULL },

    { ngx_string("apigw_require_scope"),
      NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_apigw_require_scope,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apigw_auth_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_apigw_auth_cache_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_apigw_auth_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_apigw_auth_init,              /* postconfiguration */

    ngx_http_apigw_auth_create_main_conf,  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_apigw_auth_create_loc_conf,   /* create location configuration */
    ngx_http_apigw_auth_merge_loc_conf     /* merge location configuration */
};


ngx_module_t  ngx_http_apigw_auth_module = {
    NGX_MODULE_V1,
    &ngx_http_apigw_auth_module_ctx,       /* module context */
    ngx_http_apigw_auth_commands,          /* module directives */
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


static ngx_str_t  ngx_http_apigw_retry_after_name = ngx_string("Retry-After");
static ngx_str_t  ngx_http_apigw_retry_after_1 = ngx_string("1");


static ngx_int_t
ngx_http_apigw_auth_init(ngx_conf_t *cf)
{
    ngx_http_apigw_register_stage(NGX_HTTP_APIGW_AUTH,
                                  ngx_http_apigw_auth_stage);
    ngx_http_apigw_register_subrequest_check(ngx_http_apigw_auth_subrequest);
    return NGX_OK;
}


static void *
ngx_http_apigw_auth_create_main_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_auth_main_conf_t));
}


static void *
ngx_http_apigw_auth_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_apigw_auth_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_auth_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->enable = NGX_CONF_UNSET;
    conf->scopes = NGX_CONF_UNSET_PTR;

    return conf;
}


static char *
ngx_http_apigw_auth_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_apigw_auth_loc_conf_t *prev = parent;
    ngx_http_apigw_auth_loc_conf_t *conf = child;

    ngx_http_apigw_main_conf_t  *amcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_str_value(conf->header, prev->header, "");
    ngx_conf_merge_ptr_value(conf->scopes, prev->scopes, NULL);

    if (conf->enable) {
        amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_apigw_module);

        conf->strip[0] =
                 ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_AUTHORIZATION);

        if (conf->header.len) {
            if (ngx_http_apigw_header_name_conf(cf, &conf->header,
                                                &conf->credential)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            conf->strip[0] = &conf->credential;
        }

        conf->strip[1] = ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_KEY_ID);
        conf->strip[2] = ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_TENANT);
        conf->strip[3] = ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_SCOPES);

        if (amcf->redis == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"apigw_auth\" needs \"apigw_redis\" "
                               "in the http block");
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_apigw_auth_cache_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_apigw_auth_main_conf_t *aamcf = conf;

    return ngx_http_apigw_auth_cache_conf(cf, &aamcf->cache,
                                          &ngx_http_apigw_auth_module);
}


/* every argument is a scope, and repeating the directive adds more */

static char *
ngx_http_apigw_require_scope(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apigw_auth_loc_conf_t *aalcf = conf;

    ngx_str_t   *value, *s;
    ngx_uint_t   i, j;

    if (aalcf->scopes == NGX_CONF_UNSET_PTR) {
        aalcf->scopes = ngx_array_create(cf->pool, 4, sizeof(ngx_str_t));
        if (aalcf->scopes == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        for (j = 0; j < value[i].len; j++) {
            if (value[i].data[j] <= ' ' || value[i].data[j] >= 0x7f) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid scope \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }
        }

        s = ngx_array_push(aalcf->scopes);
        if (s == NULL) {
            return NGX_CONF_ERROR;
        }

        *s = value[i];
    }

    return NGX_CONF_OK;
}


static ngx_table_elt_t *
ngx_http_apigw_auth_credential(ngx_http_request_t *r,
    ngx_http_apigw_auth_loc_conf_t *aalcf)
{
    if (aalcf->header.len == 0) {
        return r->headers_in.authorization;
    }

    return ngx_http_apigw_find_in_header(r, &aalcf->credential);
}


static void
ngx_http_apigw_auth_reply(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_redis_status_e status, redisReply *reply)
{
    u_char                     *p;
    ngx_uint_t                  i, found;
    redisReply                 *e;
    apigw_str_t                *f;
    ngx_http_apigw_auth_ctx_t  *actx;

    actx = ctx->feature[NGX_HTTP_APIGW_AUTH];

    if (status != NGX_HTTP_APIGW_REDIS_OK) {
        actx->state = NGX_HTTP_APIGW_AUTH_UNAVAILABLE;
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR
        && ngx_strncmp(reply->str, "WRONGTYPE", 9) == 0)
    {
        /* something else lives under that name: it is not a key record */
        actx->state = NGX_HTTP_APIGW_AUTH_UNKNOWN;
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        /* logged with its text (rate-limited) and counted by the client */
        actx->state = NGX_HTTP_APIGW_AUTH_UNAVAILABLE;
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements != NGX_HTTP_APIGW_KEY_FIELDS)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "apigw: unexpected reply to the key lookup (type %d)",
                      reply->type);
        actx->state = NGX_HTTP_APIGW_AUTH_UNAVAILABLE;
        return;
    }

    found = 0;

    for (i = 0; i < NGX_HTTP_APIGW_KEY_FIELDS; i++) {
        e = reply->element[i];
        f = ngx_http_apigw_key_record_field(&actx->rec, i);

        f->len = 0;
        f->data = NULL;

        if (e->type != REDIS_REPLY_STRING || e->len == 0) {
            continue;
        }

        p = ngx_pnalloc(r->pool, e->len);
        if (p == NULL) {
            actx->state = NGX_HTTP_APIGW_AUTH_UNAVAILABLE;
            return;
        }

        ngx_memcpy(p, e->str, e->len);

        f->len = e->len;
        f->data = p;
        found = 1;
    }

    actx->state = found ? NGX_HTTP_APIGW_AUTH_FOUND
                        : NGX_HTTP_APIGW_AUTH_UNKNOWN;
}


static ngx_int_t
ngx_http_apigw_auth_lookup(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_auth_ctx_t *actx)
{
    u_char                       *p;
    ngx_uint_t                    i;
    const char                   *argv[2 + NGX_HTTP_APIGW_KEY_FIELDS];
    size_t                        argvlen[2 + NGX_HTTP_APIGW_KEY_FIELDS];
    ngx_http_apigw_redis_conf_t  *rcf;

    rcf = ngx_http_apigw_redis_conf_get(r);

    p = ngx_pnalloc(r->pool, rcf->prefix.len + sizeof("key:") - 1
                             + APIGW_SHA256_HEX);
    if (p == NULL) {
        return NGX_ERROR;
    }

    argv[0] = "HMGET";
    argvlen[0] = sizeof("HMGET") - 1;

    argv[1] = (const char *) p;
    p = ngx_cpymem(p, rcf->prefix.data, rcf->prefix.len);
    p = ngx_cpymem(p, "key:", sizeof("key:") - 1);
    apigw_hex(actx->digest, sizeof(actx->digest), (char *) p);
    argvlen[1] = p + APIGW_SHA256_HEX - (u_char *) argv[1];

    for (i = 0; i < NGX_HTTP_APIGW_KEY_FIELDS; i++) {
        argv[2 + i] = ngx_http_apigw_key_record_names[i];
        argvlen[2 + i] = ngx_strlen(ngx_http_apigw_key_record_names[i]);
    }

    actx->state = NGX_HTTP_APIGW_AUTH_WAITING;

    return ngx_http_apigw_redis_wait(r, ctx, NULL, 0,
                                     2 + NGX_HTTP_APIGW_KEY_FIELDS,
                                     argv, argvlen,
                                     ngx_http_apigw_auth_reply);
}


/* Only the gateway's own view of the caller may reach the upstream. */

static ngx_int_t
ngx_http_apigw_auth_forward(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_auth_loc_conf_t *aalcf, apigw_key_record_t *rec)
{
    ctx->key_id.len = rec->key_id.len;
    ctx->key_id.data = rec->key_id.data;
    ctx->tenant.len = rec->tenant.len;
    ctx->tenant.data = rec->tenant.data;
    ctx->scopes.len = rec->scopes.len;
    ctx->scopes.data = rec->scopes.data;
    ctx->key_rate.len = rec->rate.len;
    ctx->key_rate.data = rec->rate.data;
    ctx->key_burst.len = rec->burst.len;
    ctx->key_burst.data = rec->burst.data;

    if (ngx_http_apigw_remove_in_headers(r, aalcf->strip, 4) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the client's X-Apigw-* went with the credential: ours stay */
    ctx->identity_stripped = 1;
    ctx->authenticated = 1;

    if (ngx_http_apigw_add_in_header(r,
                 ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_KEY_ID),
                 &ctx->key_id)
        != NGX_OK
        || ngx_http_apigw_add_in_header(r,
                 ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_TENANT),
                 &ctx->tenant)
           != NGX_OK
        || ngx_http_apigw_add_in_header(r,
                 ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_SCOPES),
                 &ctx->scopes)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_str_t *
ngx_http_apigw_auth_missing_scope(ngx_http_apigw_auth_loc_conf_t *aalcf,
    apigw_key_record_t *rec)
{
    ngx_str_t   *scope;
    ngx_uint_t   i;

    if (aalcf->scopes == NULL) {
        return NULL;
    }

    scope = aalcf->scopes->elts;

    for (i = 0; i < aalcf->scopes->nelts; i++) {
        if (!apigw_scopes_has(&rec->scopes, scope[i].data, scope[i].len)) {
            return &scope[i];
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_apigw_auth_judge(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_auth_loc_conf_t *aalcf, apigw_key_record_t *rec)
{
    ngx_str_t  *scope;

    switch (apigw_key_record_check(rec, (long long) ngx_time())) {

    case APIGW_KEY_OK:
        break;

    case APIGW_KEY_DISABLED:
        return ngx_http_apigw_auth_refuse(r, APIGW_E_ACCOUNT_DISABLED);

    default:
        return ngx_http_apigw_auth_refuse(r, APIGW_E_INVALID_CREDENTIALS);
    }

    scope = ngx_http_apigw_auth_missing_scope(aalcf, rec);

    if (scope) {
        ngx_http_apigw_error_detail_str(r, "required_scope", scope);
        return ngx_http_apigw_auth_refuse(r, APIGW_E_SCOPE_REQUIRED);
    }

    if (ngx_http_apigw_auth_forward(r, ctx, aalcf, rec) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "apigw auth: key_id \"%V\" accepted", &ctx->key_id);

    ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_AUTH_OK);

    return NGX_DECLINED;
}


/* every refusal goes through here: each is counted once, by its code */

static ngx_int_t
ngx_http_apigw_auth_refuse(ngx_http_request_t *r, apigw_err_id_t id)
{
    ngx_http_apigw_metric_auth(id);

    return ngx_http_apigw_error(r, id);
}


static ngx_uint_t
ngx_http_apigw_auth_same_header(const ngx_http_apigw_header_name_t *a,
    const ngx_http_apigw_header_name_t *b)
{
    return a == b
           || (a->lowcase.len == b->lowcase.len
               && ngx_memcmp(a->lowcase.data, b->lowcase.data, a->lowcase.len)
                  == 0);
}


/*
 * The credential of this pass: the header if it is (still) there, else
 * the digest an earlier location took from the same header before it
 * removed it.  NGX_DECLINED: none; NGX_OK: actx->digest is set.
 */

static ngx_int_t
ngx_http_apigw_auth_digest(ngx_http_request_t *r,
    ngx_http_apigw_auth_loc_conf_t *aalcf, ngx_http_apigw_auth_ctx_t *actx)
{
    u_char            digest[APIGW_SHA256_LEN];
    apigw_str_t       key;
    ngx_table_elt_t  *h;

    h = ngx_http_apigw_auth_credential(r, aalcf);

    if (h == NULL || h->value.len == 0) {
        if (actx->have_digest
            && ngx_http_apigw_auth_same_header(actx->from, aalcf->strip[0]))
        {
            return NGX_OK;
        }

        return NGX_DECLINED;
    }

    if (apigw_auth_parse(h->value.data, h->value.len,
                         aalcf->header.len == 0, &key)
        != 0
        || !apigw_auth_key_valid(key.data, key.len))
    {
        return NGX_HTTP_UNAUTHORIZED;
    }

    if (apigw_sha256(key.data, key.len, digest) != 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "apigw: SHA-256 of the key failed");
        return NGX_ERROR;
    }

    if (!actx->have_digest
        || ngx_memcmp(digest, actx->digest, APIGW_SHA256_LEN) != 0)
    {
        ngx_memcpy(actx->digest, digest, APIGW_SHA256_LEN);
        actx->found = 0;
    }

    actx->have_digest = 1;
    actx->from = aalcf->strip[0];

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_auth_stage(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx)
{
    ngx_int_t                         rc;
    ngx_http_apigw_auth_ctx_t        *actx;
    ngx_http_apigw_auth_loc_conf_t   *aalcf;
    ngx_http_apigw_auth_main_conf_t  *aamcf;

    aalcf = ngx_http_get_module_loc_conf(r, ngx_http_apigw_auth_module);

    if (!aalcf->enable) {
        return NGX_DECLINED;
    }

    aamcf = ngx_http_get_module_main_conf(r, ngx_http_apigw_auth_module);
    actx = ctx->feature[NGX_HTTP_APIGW_AUTH];

    if (actx == NULL) {
        actx = ngx_pcalloc(r->pool, sizeof(ngx_http_apigw_auth_ctx_t));
        if (actx == NULL) {
            return NGX_ERROR;
        }

        ctx->feature[NGX_HTTP_APIGW_AUTH] = actx;
        actx->pass = ctx->pass;

    } else if (actx->pass != ctx->pass) {
        /* another location serves the request now: it judges the key */
        actx->pass = ctx->pass;
        actx->state = NGX_HTTP_APIGW_AUTH_START;
    }

    switch (actx->state) {

    case NGX_HTTP_APIGW_AUTH_START:

        rc = ngx_http_apigw_auth_digest(r, aalcf, actx);

        if (rc == NGX_DECLINED) {
            return ngx_http_apigw_auth_refuse(r, APIGW_E_MISSING_CREDENTIALS);
        }

        if (rc == NGX_HTTP_UNAUTHORIZED) {
            return ngx_http_apigw_auth_refuse(r, APIGW_E_INVALID_CREDENTIALS);
        }

        if (rc != NGX_OK) {
            return rc;
        }

        if (actx->found) {
            /* this request's own lookup, in an earlier location */
            return ngx_http_apigw_auth_judge(r, ctx, aalcf, &actx->rec);
        }

        switch (ngx_http_apigw_auth_cache_get(&aamcf->cache, actx->digest,
                                              &actx->rec, r->pool, 0))
        {
        case NGX_HTTP_APIGW_CACHE_HIT:
            actx->state = NGX_HTTP_APIGW_AUTH_FOUND;
            actx->found = 1;
            return ngx_http_apigw_auth_judge(r, ctx, aalcf, &actx->rec);

        case NGX_HTTP_APIGW_CACHE_NEGATIVE:
            return ngx_http_apigw_auth_refuse(r, APIGW_E_INVALID_CREDENTIALS);

        default:
            break;
        }

        return ngx_http_apigw_auth_lookup(r, ctx, actx);

    case NGX_HTTP_APIGW_AUTH_WAITING:
        /* re-entered before the reply: keep waiting */
        return NGX_AGAIN;

    case NGX_HTTP_APIGW_AUTH_FOUND:
        if (!actx->found) {
            ngx_http_apigw_auth_cache_put(&aamcf->cache, actx->digest,
                                          &actx->rec);
            actx->found = 1;
        }

        return ngx_http_apigw_auth_judge(r, ctx, aalcf, &actx->rec);

    case NGX_HTTP_APIGW_AUTH_UNKNOWN:
        ngx_http_apigw_auth_cache_put(&aamcf->cache, actx->digest, NULL);
        return ngx_http_apigw_auth_refuse(r, APIGW_E_INVALID_CREDENTIALS);

    default: /* NGX_HTTP_APIGW_AUTH_UNAVAILABLE */

        /*
         * A record that expired from the cache a short while ago still
         * vouches for its key while Redis cannot (stale_if_error), like
         * proxy_cache_use_stale: an outage then costs nothing to keys in
         * use, at the price of revocations waiting for Redis to return.
         */
        if (aamcf->cache.stale_if_error
            && ngx_http_apigw_auth_cache_get(&aamcf->cache, actx->digest,
                                             &actx->rec, r->pool, 1)
               == NGX_HTTP_APIGW_CACHE_HIT)
        {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "apigw auth: Redis unavailable, stale record");
            actx->found = 1;
            return ngx_http_apigw_auth_judge(r, ctx, aalcf, &actx->rec);
        }

        /*
         * Never a 401 here: that would tell a client with a good key that
         * its key is bad.  A 503 says "retry", which is the truth.
         */
        if (ngx_http_apigw_set_out_header(r, &ngx_http_apigw_retry_after_name,
                                          &ngx_http_apigw_retry_after_1)
            == NULL)
        {
            return NGX_ERROR;
        }

        ngx_http_apigw_error_detail_int(r, "retry_after", 1);

        return ngx_http_apigw_auth_refuse(r, APIGW_E_AUTH_UNAVAILABLE);
    }
}


/*
 * Subrequests (SSI, mirror, auth_request) run no access phase, and apigw
 * never authenticates in one: a subrequest into a protected location is
 * served only on the identity its main request established, judged
 * against this location's scopes, so it can never carry a credential or
 * an identity that nobody checked.  No envelope: nginx finalizes the
 * subrequest with the status (auth_request passes it on as its own).
 */

static ngx_int_t
ngx_http_apigw_auth_subrequest(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *mctx)
{
    ngx_str_t                       *scope;
    apigw_err_id_t                   id;
    ngx_http_apigw_auth_ctx_t       *actx;
    ngx_http_apigw_main_conf_t      *amcf;
    ngx_http_apigw_auth_loc_conf_t  *aalcf;

    aalcf = ngx_http_get_module_loc_conf(r, ngx_http_apigw_auth_module);

    if (!aalcf->enable) {
        return NGX_DECLINED;
    }

    actx = mctx ? mctx->feature[NGX_HTTP_APIGW_AUTH] : NULL;

    if (actx == NULL || !mctx->authenticated || !actx->found) {
        id = APIGW_E_MISSING_CREDENTIALS;

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "apigw auth: subrequest \"%V\" refused: its main "
                      "request established no identity", &r->uri);

    } else {
        scope = ngx_http_apigw_auth_missing_scope(aalcf, &actx->rec);

        if (scope == NULL) {
            return NGX_DECLINED;
        }

        id = APIGW_E_SCOPE_REQUIRED;

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "apigw auth: subrequest \"%V\" refused: scope "
                      "\"%V\" required", &r->uri, scope);
    }

    ngx_http_apigw_metric_auth(id);

    amcf = ngx_http_get_module_main_conf(r, ngx_http_apigw_module);

    return amcf->catalog.entries[id].status;
}
