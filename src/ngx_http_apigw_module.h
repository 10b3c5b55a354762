/*
 * Types shared by the apigw glue files.  The .so holds several nginx
 * modules (core, auth, rate limit, idempotency, metrics), one per concern;
 * this header holds what they share: the core module's confs, the
 * per-request context, the error API and the Redis wait API.
 */
#ifndef NGX_HTTP_APIGW_MODULE_H
#define NGX_HTTP_APIGW_MODULE_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "apigw_auth_key.h"
#include "apigw_catalog.h"
#include "apigw_envelope.h"
#include "apigw_template.h"
#include "apigw_upstream_error.h"
#include "ngx_http_apigw_redis.h"

typedef struct {
    ngx_http_apigw_redis_conf_t  *redis;        /* NULL: no apigw_redis */
    apigw_catalog_t               catalog;
    ngx_str_t                     catalog_file;
    apigw_template_t             *builtin[APIGW_FMT__COUNT];
} ngx_http_apigw_main_conf_t;

typedef struct {
    ngx_flag_t                    enable;
    apigw_template_t             *template;     /* built-in or custom */
    ngx_str_t                     doc_base;
    ngx_uint_t                    upstream_errors;  /* apigw_upstream_mode_t */
} ngx_http_apigw_loc_conf_t;

typedef struct ngx_http_apigw_ctx_s  ngx_http_apigw_ctx_t;

typedef void (*ngx_http_apigw_reply_pt)(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx, ngx_http_apigw_redis_status_e status,
    redisReply *reply);

/* undoes a wait when its request is freed first (see ngx_http_apigw_wait) */
typedef void (*ngx_http_apigw_detach_pt)(void *data);

struct ngx_http_apigw_ctx_s {
    ngx_http_request_t           *request;
    ngx_str_t                     request_id;
    ngx_table_elt_t              *request_id_out;  /* the response's */

    /* an error raised by a phase handler, rendered by the header filter */
    ngx_int_t                     error;        /* apigw_err_id_t or -1 */
    apigw_envelope_t              raised;       /* its details only */
    ngx_str_t                     param;
    ngx_str_t                     error_code;   /* $apigw_error_code */

    /* auth results */
    ngx_str_t                     key_id;
    ngx_str_t                     tenant;
    ngx_str_t                     scopes;
    ngx_str_t                     key_rate;     /* per-key overrides */
    ngx_str_t                     key_burst;

    /* rate limit / idempotency results, for variables */
    ngx_int_t                     ratelimit_remaining;  /* -1: none */
    ngx_str_t                     idempotency_status;

    /*
     * The location pass the checks belong to: r->uri_changes, which every
     * internal redirect, named location and "rewrite ... last" decrements.
     * A new pass runs the stages again, in the location that serves it.
     */
    ngx_uint_t                    pass;
    ngx_uint_t                    error_page_status;  /* err_status then */

    /* the access-phase state machine and its Redis wait */
    ngx_uint_t                    stage;
    ngx_http_apigw_detach_pt      detach;       /* set while waiting */
    void                         *detach_data;
    ngx_http_apigw_reply_pt       reply_handler;
    ngx_event_t                   resume;
    void                         *feature[4];   /* per-feature state */

    /* the error filter's state */
    ngx_buf_t                    *capture;      /* upstream error body */
    size_t                        captured;
    ngx_buf_t                    *envelope;     /* rendered, to be sent */
    unsigned                      filter:2;     /* NGX_HTTP_APIGW_FILTER_* */
    unsigned                      truncated:1;
    unsigned                      sent:1;
    unsigned                      waiting:1;
    unsigned                      request_id_kept:1;
    unsigned                      request_id_dup:1; /* client sent several */
    unsigned                      request_id_sent_in:1; /* ... or any */
    unsigned                      replay:1;     /* stored bytes, as-is */
    unsigned                      request_id_sent:1;
    unsigned                      error_page:1;   /* serving an error_page */
    unsigned                      identity_stripped:1;  /* client copies */
    unsigned                      authenticated:1;  /* an identity holds */
};

#define NGX_HTTP_APIGW_FILTER_NONE      0
#define NGX_HTTP_APIGW_FILTER_ENVELOPE  1   /* replace body with envelope */
#define NGX_HTTP_APIGW_FILTER_CAPTURE   2   /* buffer upstream error body */

/* feature[] slots, also the order of the access-phase stages */
#define NGX_HTTP_APIGW_AUTH         0
#define NGX_HTTP_APIGW_RATELIMIT    1
#define NGX_HTTP_APIGW_IDEMPOTENCY  2
#define NGX_HTTP_APIGW_STAGES       3

/*
 * An access-phase stage.  Called (again) until it stops returning
 * NGX_AGAIN: NGX_DECLINED passes to the next stage, NGX_AGAIN means it
 * waits on Redis through ngx_http_apigw_redis_wait() and will be called
 * again when the reply is in, NGX_DONE means it resumes the phases itself
 * (e.g. from a request body handler, as the mirror module does), a status
 * >= 400 (from ngx_http_apigw_error())
 * ends the request with that envelope, NGX_ERROR is a 500.  Feature modules
 * register theirs from their postconfiguration, so the core module needs
 * no symbol of theirs and the order is always auth, rate limit,
 * idempotency.
 */
typedef ngx_int_t (*ngx_http_apigw_stage_pt)(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx);

void ngx_http_apigw_register_stage(ngx_uint_t slot,
    ngx_http_apigw_stage_pt handler);

/*
 * nginx runs no access phase in subrequests (SSI, mirror, auth_request):
 * a feature that must still guard its locations there registers a
 * preaccess check; it returns NGX_DECLINED or a status.
 */
typedef ngx_int_t (*ngx_http_apigw_subrequest_pt)(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *main_ctx);

void ngx_http_apigw_register_subrequest_check(
    ngx_http_apigw_subrequest_pt handler);

/*
 * Starts a new location pass if the request moved since the last one
 * (see ctx->pass); returns 1 when it did.
 */
ngx_uint_t ngx_http_apigw_pass(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx);

extern ngx_module_t  ngx_http_apigw_module;

/*
 * The context survives internal redirects (error_page, try_files): like
 * realip, it is found again through its pool cleanup, so the request id,
 * the key's digest and what the policies charged stay with the request;
 * the checks themselves run again in every location pass.
 */
ngx_http_apigw_ctx_t *ngx_http_apigw_get_ctx(ngx_http_request_t *r);
ngx_http_apigw_ctx_t *ngx_http_apigw_ensure_ctx(ngx_http_request_t *r);

/* request ids (ngx_http_apigw_request_id.c) */
ngx_int_t ngx_http_apigw_request_id_init(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx);
ngx_int_t ngx_http_apigw_request_id_to_upstream(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx);
ngx_int_t ngx_http_apigw_request_id_header(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx);

/*
 * Raising an error from a phase handler: records it and returns the
 * catalog's status for it, which the handler returns; nginx then finalizes
 * the request with that status and the header filter renders the envelope.
 */
ngx_int_t ngx_http_apigw_error(ngx_http_request_t *r, apigw_err_id_t id);
void ngx_http_apigw_error_detail_int(ngx_http_request_t *r,
    const char *name, long long v);
void ngx_http_apigw_error_detail_str(ngx_http_request_t *r,
    const char *name, ngx_str_t *v);
void ngx_http_apigw_error_param(ngx_http_request_t *r, ngx_str_t *param);

/* Renders an envelope into a pool buffer (ngx_http_apigw_error.c). */
ngx_buf_t *ngx_http_apigw_render(ngx_http_request_t *r,
    ngx_http_apigw_loc_conf_t *alcf, apigw_envelope_t *e);
void ngx_http_apigw_envelope_prepare(ngx_http_request_t *r,
    ngx_http_apigw_loc_conf_t *alcf, ngx_http_apigw_ctx_t *ctx,
    apigw_envelope_t *e, apigw_err_id_t id);
ngx_int_t ngx_http_apigw_set_json_headers(ngx_http_request_t *r,
    ngx_http_apigw_loc_conf_t *alcf, ngx_buf_t *b);

/* filters (ngx_http_apigw_error_filter.c) */
ngx_int_t ngx_http_apigw_error_filter_init(ngx_conf_t *cf);

/*
 * Waiting on Redis from a phase handler: submits the call, and returns
 * NGX_AGAIN; when the reply (or failure, or timeout) comes, handler runs
 * with the reply and the phases resume from a posted event, re-entering the
 * phase handler.  A request freed meanwhile cancels the call.
 */
ngx_int_t ngx_http_apigw_redis_wait(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx, ngx_http_apigw_redis_script_t *script,
    int nkeys, int argc, const char **argv, const size_t *argvlen,
    ngx_http_apigw_reply_pt handler);

/*
 * Waiting on something other than a call of the request's own, e.g. a
 * batch of checks shared with other requests: the stage calls this and
 * returns what it returns (NGX_AGAIN); detach(data) runs if the request is
 * freed before the wait ends, so the other side forgets it; whoever ends
 * the wait calls ngx_http_apigw_wait_done(), which resumes the request
 * from a posted event (never from inside the caller).
 */
ngx_int_t ngx_http_apigw_wait(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx, ngx_http_apigw_detach_pt detach, void *data);
void ngx_http_apigw_wait_done(ngx_http_apigw_ctx_t *ctx);

ngx_http_apigw_redis_conf_t *ngx_http_apigw_redis_conf_get(
    ngx_http_request_t *r);

/* Header helpers shared by the glue files (ngx_http_apigw_headers.c). */
typedef struct {
    ngx_str_t                     key;        /* as apigw sends it */
    ngx_str_t                     lowcase;
    ngx_uint_t                    hash;       /* ngx_hash_key(lowcase) */
} ngx_http_apigw_header_name_t;

typedef enum {
    NGX_HTTP_APIGW_H_AUTHORIZATION = 0,
    NGX_HTTP_APIGW_H_REQUEST_ID,
    NGX_HTTP_APIGW_H_KEY_ID,
    NGX_HTTP_APIGW_H_TENANT,
    NGX_HTTP_APIGW_H_SCOPES,
    NGX_HTTP_APIGW_H_IDEMPOTENCY_KEY,
    NGX_HTTP_APIGW_H_NUM
} ngx_http_apigw_header_e;

extern ngx_http_apigw_header_name_t  ngx_http_apigw_header_names[];

#define ngx_http_apigw_header_name(id)  (&ngx_http_apigw_header_names[id])

void ngx_http_apigw_headers_init(void);
ngx_int_t ngx_http_apigw_header_name_conf(ngx_conf_t *cf, ngx_str_t *name,
    ngx_http_apigw_header_name_t *hn);
ngx_table_elt_t *ngx_http_apigw_set_out_header(ngx_http_request_t *r,
    ngx_str_t *name, ngx_str_t *value);
void ngx_http_apigw_clear_out_headers(ngx_http_request_t *r,
    ngx_str_t *name, ngx_table_elt_t *keep);
ngx_table_elt_t *ngx_http_apigw_find_in_header(ngx_http_request_t *r,
    const ngx_http_apigw_header_name_t *name);
ngx_uint_t ngx_http_apigw_count_in_header(ngx_http_request_t *r,
    const ngx_http_apigw_header_name_t *name, ngx_table_elt_t **first);
ngx_int_t ngx_http_apigw_remove_in_headers(ngx_http_request_t *r,
    const ngx_http_apigw_header_name_t *const *names, ngx_uint_t n);
ngx_int_t ngx_http_apigw_add_in_header(ngx_http_request_t *r,
    const ngx_http_apigw_header_name_t *name, ngx_str_t *value);

#endif
