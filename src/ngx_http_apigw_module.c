/*
 * apigw core module: the apigw* directives shared by every feature, the
 * per-request context, the access-phase stage dispatcher, the Redis wait
 * used by the stages, and the $apigw_* variables.
 */

#include "ngx_http_apigw_module.h"
#include "apigw_request_id.h"


static ngx_int_t ngx_http_apigw_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_apigw_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_apigw_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_apigw_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_apigw_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_apigw_init_process(ngx_cycle_t *cycle);
static void ngx_http_apigw_exit_process(ngx_cycle_t *cycle);

static char *ngx_http_apigw_redis_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_apigw_error_format(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_apigw_error_template(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_apigw_error_catalog(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

static void ngx_http_apigw_ctx_cleanup(void *data);
static ngx_int_t ngx_http_apigw_rewrite_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_apigw_preaccess_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_apigw_access_handler(ngx_http_request_t *r);
static void ngx_http_apigw_redis_detach(void *data);
static void ngx_http_apigw_redis_done(void *data,
    ngx_http_apigw_redis_status_e status, redisReply *reply);
static void ngx_http_apigw_resume(ngx_event_t *ev);

static ngx_int_t ngx_http_apigw_variable_str(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_apigw_variable_request_id(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_apigw_variable_remaining(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_apigw_stage_pt  ngx_http_apigw_stages[NGX_HTTP_APIGW_STAGES];
static ngx_http_apigw_subrequest_pt  ngx_http_apigw_subrequest_check;

static const ngx_http_apigw_header_name_t  *const
    ngx_http_apigw_identity_headers[] =
{
    ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_KEY_ID),
    ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_TENANT),
    ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_SCOPES)
};


static ngx_conf_enum_t  ngx_http_apigw_upstream_errors[] = {
    { ngx_string("pass"), APIGW_UPSTREAM_PASS },
    { ngx_string("rewrite"), APIGW_UPSTREAM_REWRITE },
    { ngx_string("normalize"), APIGW_UPSTREAM_NORMALIZE },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_apigw_commands[] = {

    { ngx_string("apigw"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_loc_conf_t, enable),
      NULL },

    { ngx_string("apigw_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_apigw_redis_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apigw_error_format"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_apigw_error_format,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apigw_error_template"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_apigw_error_template,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apigw_error_catalog"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_apigw_error_catalog,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("apigw_error_doc_base"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_loc_conf_t, doc_base),
      NULL },

    { ngx_string("apigw_upstream_errors"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_apigw_loc_conf_t, upstream_errors),
      &ngx_http_apigw_upstream_errors },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_apigw_module_ctx = {
    ngx_http_apigw_preconfiguration,       /* preconfiguration */
    ngx_http_apigw_postconfiguration,      /* postconfiguration */

    ngx_http_apigw_create_main_conf,       /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_apigw_create_loc_conf,        /* create location configuration */
    ngx_http_apigw_merge_loc_conf          /* merge location configuration */
};


ngx_module_t  ngx_http_apigw_module = {
    NGX_MODULE_V1,
    &ngx_http_apigw_module_ctx,            /* module context */
    ngx_http_apigw_commands,               /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_apigw_init_process,           /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_apigw_exit_process,           /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


#define NGX_HTTP_APIGW_VAR_OFFSET(field)                                      \
    offsetof(ngx_http_apigw_ctx_t, field)

static ngx_http_variable_t  ngx_http_apigw_vars[] = {

    { ngx_string("apigw_request_id"), NULL,
      ngx_http_apigw_variable_request_id, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("apigw_error_code"), NULL,
      ngx_http_apigw_variable_str, NGX_HTTP_APIGW_VAR_OFFSET(error_code),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("apigw_key_id"), NULL,
      ngx_http_apigw_variable_str, NGX_HTTP_APIGW_VAR_OFFSET(key_id),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("apigw_tenant"), NULL,
      ngx_http_apigw_variable_str, NGX_HTTP_APIGW_VAR_OFFSET(tenant),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("apigw_scopes"), NULL,
      ngx_http_apigw_variable_str, NGX_HTTP_APIGW_VAR_OFFSET(scopes),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("apigw_ratelimit_remaining"), NULL,
      ngx_http_apigw_variable_remaining, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("apigw_idempotency_status"), NULL,
      ngx_http_apigw_variable_str,
      NGX_HTTP_APIGW_VAR_OFFSET(idempotency_status),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_int_t
ngx_http_apigw_preconfiguration(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_apigw_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    ngx_http_apigw_headers_init();

    /*
     * Every location pass starts in the rewrite phase, also after an
     * error_page or a named location: that is where a new pass is noticed
     * before anything of ours (or the rewrite module's "return") runs.
     * Handlers run in the reverse order of registration, so this one runs
     * before the rewrite module's.
     */
    h = ngx_array_push(&cmcf->phases[NGX_HTTP_REWRITE_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_apigw_rewrite_handler;

    /*
     * Request ids are settled in preaccess, where the location is known
     * (so "apigw on" in a location counts) and satisfy does not apply.
     */
    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_apigw_preaccess_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_apigw_access_handler;

    return ngx_http_apigw_error_filter_init(cf);
}


static void
ngx_http_apigw_template_cleanup(void *data)
{
    apigw_template_free(data);
}


static ngx_int_t
ngx_http_apigw_template_own(ngx_conf_t *cf, apigw_template_t *t)
{
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        apigw_template_free(t);
        return NGX_ERROR;
    }

    cln->handler = ngx_http_apigw_template_cleanup;
    cln->data = t;

    return NGX_OK;
}


static void
ngx_http_apigw_catalog_cleanup(void *data)
{
    apigw_catalog_free(data);
}


static void *
ngx_http_apigw_create_main_conf(ngx_conf_t *cf)
{
    ngx_uint_t                   i;
    ngx_pool_cleanup_t          *cln;
    ngx_http_apigw_main_conf_t  *amcf;

    amcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_main_conf_t));
    if (amcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     amcf->redis = NULL;
     *     amcf->catalog_file = { 0, NULL };
     */

    apigw_catalog_init(&amcf->catalog);

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_apigw_catalog_cleanup;
    cln->data = &amcf->catalog;

    /* built-ins are compiled once per cycle and shared by every location */
    for (i = 0; i < APIGW_FMT__COUNT; i++) {
        amcf->builtin[i] = apigw_template_builtin((apigw_format_t) i);
        if (amcf->builtin[i] == NULL
            || ngx_http_apigw_template_own(cf, amcf->builtin[i]) != NGX_OK)
        {
            return NULL;
        }
    }

    return amcf;
}


static void *
ngx_http_apigw_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_apigw_loc_conf_t  *alcf;

    alcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_loc_conf_t));
    if (alcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     alcf->template = NULL;
     *     alcf->doc_base = { 0, NULL };
     */

    alcf->enable = NGX_CONF_UNSET;
    alcf->upstream_errors = NGX_CONF_UNSET_UINT;

    return alcf;
}


static char *
ngx_http_apigw_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_apigw_loc_conf_t *prev = parent;
    ngx_http_apigw_loc_conf_t *conf = child;

    ngx_http_apigw_main_conf_t  *amcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_uint_value(conf->upstream_errors, prev->upstream_errors,
                              APIGW_UPSTREAM_NORMALIZE);
    ngx_conf_merge_str_value(conf->doc_base, prev->doc_base, "");

    if (conf->template == NULL) {
        conf->template = prev->template;
    }

    if (conf->template == NULL) {
        amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_apigw_module);
        conf->template = amcf->builtin[APIGW_FMT_ERROR_OBJECT];
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_apigw_redis_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_apigw_main_conf_t *amcf = conf;

    if (amcf->redis) {
        return "is duplicate";
    }

    amcf->redis = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_redis_conf_t));
    if (amcf->redis == NULL) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_apigw_redis_conf(cf, amcf->redis);
}


static char *
ngx_http_apigw_error_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apigw_loc_conf_t *alcf = conf;

    int                          fmt;
    ngx_str_t                   *value;
    ngx_http_apigw_main_conf_t  *amcf;

    if (alcf->template) {
        return "is duplicate (apigw_error_format and apigw_error_template "
               "set the same thing)";
    }

    value = cf->args->elts;

    fmt = apigw_format_by_name((const char *) value[1].data, value[1].len);
    if (fmt < 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown error format \"%V\", expected "
                           "error_object, problem_json, data_error_meta, "
                           "error_details or message_errors", &value[1]);
        return NGX_CONF_ERROR;
    }

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_apigw_module);
    alcf->template = amcf->builtin[fmt];

    return NGX_CONF_OK;
}


static char *
ngx_http_apigw_error_template(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apigw_loc_conf_t *alcf = conf;

    char               err[256];
    ngx_str_t         *value, file;
    apigw_template_t  *t;

    if (alcf->template) {
        return "is duplicate (apigw_error_format and apigw_error_template "
               "set the same thing)";
    }

    value = cf->args->elts;
    file = value[1];

    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    err[0] = '\0';
    t = apigw_template_load_file((const char *) file.data, err, sizeof(err));
    if (t == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid error template \"%V\": %s", &file, err);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_apigw_template_own(cf, t) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    alcf->template = t;

    return NGX_CONF_OK;
}


static char *
ngx_http_apigw_error_catalog(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_apigw_main_conf_t *amcf = conf;

    char        err[256];
    ngx_str_t  *value, file;

    if (amcf->catalog_file.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    file = value[1];

    if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    err[0] = '\0';
    if (apigw_catalog_load_file(&amcf->catalog, (const char *) file.data,
                                err, sizeof(err))
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid error catalog \"%V\": %s", &file, err);
        return NGX_CONF_ERROR;
    }

    amcf->catalog_file = file;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_apigw_init_process(ngx_cycle_t *cycle)
{
    ngx_http_apigw_main_conf_t  *amcf;

    /* the master, cache manager and loader never talk to Redis */
    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_apigw_module);
    if (amcf == NULL || amcf->redis == NULL) {
        return NGX_OK;
    }

    return ngx_http_apigw_redis_init_process(cycle, amcf->redis);
}


static void
ngx_http_apigw_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_apigw_redis_exit_process(cycle);
    apigw_sha256_done();
}


ngx_http_apigw_redis_conf_t *
ngx_http_apigw_redis_conf_get(ngx_http_request_t *r)
{
    ngx_http_apigw_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_apigw_module);

    return amcf->redis;
}


/* the per-request context */

ngx_http_apigw_ctx_t *
ngx_http_apigw_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t    *cln;
    ngx_http_apigw_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_apigw_module);

    if (ctx == NULL && (r->internal || r->filter_finalize)) {

        /*
         * an internal redirect zeroed r->ctx; the context lives on in its
         * pool cleanup, so the request id and a raised error are kept
         */

        for (cln = r->pool->cleanup; cln; cln = cln->next) {
            if (cln->handler == ngx_http_apigw_ctx_cleanup) {
                ctx = cln->data;
                ngx_http_set_ctx(r, ctx, ngx_http_apigw_module);
                break;
            }
        }
    }

    return ctx;
}


ngx_http_apigw_ctx_t *
ngx_http_apigw_ensure_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t    *cln;
    ngx_http_apigw_ctx_t  *ctx;

    ctx = ngx_http_apigw_get_ctx(r);
    if (ctx) {
        return ctx;
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_apigw_ctx_t));
    if (cln == NULL) {
        return NULL;
    }

    ctx = cln->data;
    ngx_memzero(ctx, sizeof(ngx_http_apigw_ctx_t));

    ctx->request = r;
    ctx->error = -1;
    ctx->ratelimit_remaining = -1;

    ctx->resume.handler = ngx_http_apigw_resume;
    ctx->resume.data = ctx;
    ctx->resume.log = r->connection->log;

    cln->handler = ngx_http_apigw_ctx_cleanup;

    ngx_http_set_ctx(r, ctx, ngx_http_apigw_module);

    return ctx;
}


static void
ngx_http_apigw_ctx_cleanup(void *data)
{
    ngx_http_apigw_ctx_t  *ctx = data;

    /*
     * The request is going away with a Redis reply possibly pending: the
     * call (or batch) lives outside the request pool, so detaching it here
     * is enough for the late reply to be dropped without touching freed
     * memory.
     */

    if (ctx->detach) {
        ctx->detach(ctx->detach_data);
        ctx->detach = NULL;
    }

    if (ctx->resume.posted) {
        ngx_delete_posted_event(&ctx->resume);
    }
}


/* the phase handlers */

ngx_uint_t
ngx_http_apigw_pass(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx)
{
    if (ctx->pass == r->uri_changes) {
        return 0;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "apigw new location pass %ui, err_status %ui",
                   r->uri_changes, r->err_status);

    ctx->pass = r->uri_changes;
    ctx->stage = 0;

    /*
     * What an earlier location raised was answered there, or handed to
     * the operator's error_page: this location's checks decide anew.
     */
    ctx->error = -1;
    ctx->raised.ndetails = 0;
    ngx_str_null(&ctx->param);

    /*
     * A pass that starts with err_status set is an error_page without
     * "=": nginx serves the operator's page with the error's status.
     */
    ctx->error_page = (r->err_status != 0);
    ctx->error_page_status = r->err_status;

    return 1;
}


static ngx_int_t
ngx_http_apigw_rewrite_handler(ngx_http_request_t *r)
{
    ngx_http_apigw_ctx_t       *ctx;
    ngx_http_apigw_loc_conf_t  *alcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_apigw_module);

    if (alcf->enable) {
        ctx = ngx_http_apigw_ensure_ctx(r);
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

    } else {
        /* a context of an earlier location still needs to see the move */
        ctx = ngx_http_apigw_get_ctx(r);
        if (ctx == NULL) {
            return NGX_DECLINED;
        }
    }

    (void) ngx_http_apigw_pass(r, ctx);

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_apigw_preaccess_handler(ngx_http_request_t *r)
{
    ngx_http_apigw_ctx_t       *ctx;
    ngx_http_apigw_loc_conf_t  *alcf;

    if (r != r->main) {
        if (ngx_http_apigw_subrequest_check == NULL) {
            return NGX_DECLINED;
        }

        return ngx_http_apigw_subrequest_check(r,
                                           ngx_http_apigw_get_ctx(r->main));
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_apigw_module);

    if (!alcf->enable) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_apigw_ensure_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    (void) ngx_http_apigw_pass(r, ctx);

    if (ngx_http_apigw_request_id_init(r, ctx) != NGX_OK
        || ngx_http_apigw_request_id_to_upstream(r, ctx) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * Upstreams behind apigw trust X-Apigw-*: a client's copies never pass,
     * whether or not this location authenticates (auth adds the real ones).
     * Once is enough: later passes would only take away an identity that
     * an earlier location established.
     */
    if (!ctx->identity_stripped) {
        if (ngx_http_apigw_remove_in_headers(r,
                                             ngx_http_apigw_identity_headers,
                                             3)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->identity_stripped = 1;
    }

    return NGX_DECLINED;
}


void
ngx_http_apigw_register_subrequest_check(ngx_http_apigw_subrequest_pt h)
{
    ngx_http_apigw_subrequest_check = h;
}


void
ngx_http_apigw_register_stage(ngx_uint_t slot, ngx_http_apigw_stage_pt h)
{
    ngx_http_apigw_stages[slot] = h;
}


static ngx_int_t
ngx_http_apigw_access_handler(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_uint_t               i;
    ngx_http_apigw_ctx_t    *ctx;
    ngx_http_apigw_stage_pt  stage;

    for (i = 0; i < NGX_HTTP_APIGW_STAGES; i++) {
        if (ngx_http_apigw_stages[i]) {
            break;
        }
    }

    if (i == NGX_HTTP_APIGW_STAGES) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_apigw_ensure_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* checks belong to the location that serves the request */
    (void) ngx_http_apigw_pass(r, ctx);

    if (ctx->waiting) {
        /* a spurious write event while the Redis reply is pending */
        return NGX_AGAIN;
    }

    for ( /* void */ ; ctx->stage < NGX_HTTP_APIGW_STAGES; ctx->stage++) {

        stage = ngx_http_apigw_stages[ctx->stage];
        if (stage == NULL) {
            continue;
        }

        rc = stage(r, ctx);

        if (rc == NGX_DECLINED) {
            continue;
        }

        if (rc == NGX_AGAIN || rc == NGX_DONE) {
            return rc;
        }

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /* an envelope was raised; later stages must not run on a retry */
        ctx->stage = NGX_HTTP_APIGW_STAGES;

        return rc;
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_apigw_redis_wait(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_redis_script_t *script, int nkeys, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_apigw_reply_pt handler)
{
    ngx_http_apigw_redis_call_t  *call;

    call = ngx_http_apigw_redis_call(script, nkeys, argc, argv, argvlen,
                                     ngx_http_apigw_redis_done, ctx);
    if (call == NULL) {
        return NGX_ERROR;
    }

    ctx->reply_handler = handler;

    return ngx_http_apigw_wait(r, ctx, ngx_http_apigw_redis_detach, call);
}


static void
ngx_http_apigw_redis_detach(void *data)
{
    ngx_http_apigw_redis_cancel(data);
}


static void
ngx_http_apigw_redis_done(void *data, ngx_http_apigw_redis_status_e status,
    redisReply *reply)
{
    ngx_http_apigw_ctx_t  *ctx = data;

    /* the call is over: nothing to cancel any more */
    ctx->detach = NULL;

    /* the reply is freed by hiredis when we return: parse it now */
    ctx->reply_handler(ctx->request, ctx, status, reply);

    ngx_http_apigw_wait_done(ctx);
}


ngx_int_t
ngx_http_apigw_wait(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_http_apigw_detach_pt detach, void *data)
{
    ctx->detach = detach;
    ctx->detach_data = data;
    ctx->waiting = 1;

    /*
     * Notice a client that goes away while we wait, so the request is
     * freed (and the wait detached) at once rather than after the reply.
     */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    return NGX_AGAIN;
}


void
ngx_http_apigw_wait_done(ngx_http_apigw_ctx_t *ctx)
{
    ctx->detach = NULL;
    ctx->waiting = 0;

    /* never resume a request from inside a reply callback */
    ngx_post_event(&ctx->resume, &ngx_posted_events);
}


static void
ngx_http_apigw_resume(ngx_event_t *ev)
{
    ngx_connection_t      *c;
    ngx_http_request_t    *r;
    ngx_http_apigw_ctx_t  *ctx;

    ctx = ev->data;
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "apigw resume \"%V\"", &r->uri);

    /*
     * The wait is over: whether a client that closes now ends the request
     * is the content handler's decision (proxy_ignore_client_abort), not
     * ngx_http_test_reading()'s, which the upstream module never replaces
     * when it ignores client aborts.
     */
    r->read_event_handler = ngx_http_block_reading;

    r->write_event_handler(r);

    ngx_http_run_posted_requests(c);
}


/* variables */

static ngx_int_t
ngx_http_apigw_variable_str(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t             *s;
    ngx_http_apigw_ctx_t  *ctx;

    ctx = ngx_http_apigw_get_ctx(r->main);
    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((u_char *) ctx + data);

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->data = s->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_variable_request_id(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_apigw_ctx_t  *ctx;

    /* usable in proxy_set_header and logs even before preaccess ran */
    ctx = ngx_http_apigw_ensure_ctx(r->main);
    if (ctx == NULL || ngx_http_apigw_request_id_init(r->main, ctx) != NGX_OK)
    {
        return NGX_ERROR;
    }

    v->len = ctx->request_id.len;
    v->data = ctx->request_id.data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_variable_remaining(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                *p;
    ngx_http_apigw_ctx_t  *ctx;

    ctx = ngx_http_apigw_get_ctx(r->main);
    if (ctx == NULL || ctx->ratelimit_remaining < 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%i", ctx->ratelimit_remaining) - p;
    v->data = p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}
