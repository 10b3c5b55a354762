/*
 * Raising errors from phase handlers and rendering envelopes into request
 * pool buffers.  The envelope itself is built by the pure-C core; this file
 * only bridges nginx strings, pools and headers to it.
 */

#include "ngx_http_apigw_module.h"
#include "ngx_http_apigw_metrics.h"


ngx_int_t
ngx_http_apigw_error(ngx_http_request_t *r, apigw_err_id_t id)
{
    ngx_http_apigw_ctx_t        *ctx;
    ngx_http_apigw_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_apigw_module);

    ctx = ngx_http_apigw_ensure_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->error = id;

    return amcf->catalog.entries[id].status;
}


/*
 * Details are kept in the core's envelope form, so the core decides how a
 * name given twice or one detail too many is handled, in one place.
 */

void
ngx_http_apigw_error_detail_int(ngx_http_request_t *r, const char *name,
    long long v)
{
    ngx_http_apigw_ctx_t  *ctx;

    ctx = ngx_http_apigw_ensure_ctx(r);
    if (ctx) {
        apigw_envelope_detail_int(&ctx->raised, name, v);
    }
}


void
ngx_http_apigw_error_detail_str(ngx_http_request_t *r, const char *name,
    ngx_str_t *v)
{
    u_char                *p;
    ngx_http_apigw_ctx_t  *ctx;

    ctx = ngx_http_apigw_ensure_ctx(r);
    if (ctx == NULL) {
        return;
    }

    /* copied: callers often pass strings from a Redis reply or the stack */
    p = ngx_pnalloc(r->pool, v->len ? v->len : 1);
    if (p == NULL) {
        return;
    }

    ngx_memcpy(p, v->data, v->len);

    apigw_envelope_detail_str(&ctx->raised, name, p, v->len);
}


void
ngx_http_apigw_error_param(ngx_http_request_t *r, ngx_str_t *param)
{
    ngx_http_apigw_ctx_t  *ctx;

    ctx = ngx_http_apigw_ensure_ctx(r);
    if (ctx) {
        ctx->param = *param;
    }
}


void
ngx_http_apigw_envelope_prepare(ngx_http_request_t *r,
    ngx_http_apigw_loc_conf_t *alcf, ngx_http_apigw_ctx_t *ctx,
    apigw_envelope_t *e, apigw_err_id_t id)
{
    ngx_http_apigw_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_apigw_module);

    apigw_envelope_init(e, &amcf->catalog, id);

    e->request_id.len = ctx->request_id.len;
    e->request_id.data = ctx->request_id.data;
    e->doc_base.len = alcf->doc_base.len;
    e->doc_base.data = alcf->doc_base.data;

    if (ctx->error == (ngx_int_t) id) {
        e->param.len = ctx->param.len;
        e->param.data = ctx->param.data;

        ngx_memcpy(e->details, ctx->raised.details,
                   ctx->raised.ndetails * sizeof(apigw_detail_t));
        e->ndetails = ctx->raised.ndetails;
    }
}


ngx_buf_t *
ngx_http_apigw_render(ngx_http_request_t *r, ngx_http_apigw_loc_conf_t *alcf,
    apigw_envelope_t *e)
{
    u_char                *p;
    size_t                 len;
    ngx_buf_t             *b;
    ngx_http_apigw_ctx_t  *ctx;

    len = apigw_envelope_render(alcf->template, e, NULL);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NULL;
    }

    b->last = b->pos + apigw_envelope_render(alcf->template, e, b->pos);

    ngx_http_apigw_metric_envelope(r, e);

    ctx = ngx_http_apigw_get_ctx(r->main);
    if (ctx) {
        /*
         * copied: an upstream's code lives in the analysis result, freed
         * before the log phase reads $apigw_error_code
         */
        p = ngx_pnalloc(r->pool, e->code.len ? e->code.len : 1);
        if (p == NULL) {
            return NULL;
        }

        if (e->code.len) {
            ngx_memcpy(p, e->code.data, e->code.len);
        }

        ctx->error_code.len = e->code.len;
        ctx->error_code.data = p;
    }

    return b;
}


ngx_int_t
ngx_http_apigw_set_json_headers(ngx_http_request_t *r,
    ngx_http_apigw_loc_conf_t *alcf, ngx_buf_t *b)
{
    const char  *ct;

    ct = apigw_template_content_type(alcf->template);

    r->headers_out.content_type.len = ngx_strlen(ct);
    r->headers_out.content_type.data = (u_char *) ct;
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.charset.len = 0;

    r->headers_out.content_length_n = b->last - b->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    /* the envelope is new bytes: nothing the upstream said of its body holds */
    if (r->headers_out.content_encoding) {
        r->headers_out.content_encoding->hash = 0;
        r->headers_out.content_encoding = NULL;
    }

    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    return NGX_OK;
}
