/*
 * The error filters: X-Request-Id on every response, and one envelope for
 * every error the client sees.
 *
 * nginx's own errors (r->err_status set by the special response handler),
 * errors raised by apigw's phase handlers and error responses of content
 * handlers are rendered in the header filter and their body is swallowed.
 * Upstream error bodies are captured (at most 64 KB; the copy filter, which
 * runs before us, hands over memory buffers because we ask for them) with
 * the header held back, then kept, amended or replaced once the body is
 * complete, so Content-Length is always exact.
 */

#include "ngx_http_apigw_module.h"


static ngx_int_t ngx_http_apigw_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_apigw_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


ngx_int_t
ngx_http_apigw_error_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_apigw_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_apigw_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_envelope_for_status(ngx_http_request_t *r,
    ngx_http_apigw_loc_conf_t *alcf, ngx_http_apigw_ctx_t *ctx,
    ngx_uint_t status)
{
    ngx_buf_t                   *b;
    apigw_err_id_t               id;
    apigw_envelope_t             e;
    ngx_http_apigw_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_apigw_module);

    /*
     * A raised error is used only while the status is still its own: if
     * something failed after it was raised, the status tells the truth.
     */
    if (ctx->error >= 0
        && (ngx_uint_t) amcf->catalog.entries[ctx->error].status == status)
    {
        id = (apigw_err_id_t) ctx->error;

    } else {
        id = apigw_err_for_status((int) status);
    }

    ngx_http_apigw_envelope_prepare(r, alcf, ctx, &e, id);
    e.status = (int) status;

    b = ngx_http_apigw_render(r, alcf, &e);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->last_buf = 1;
    b->last_in_chain = 1;

    ctx->envelope = b;
    ctx->filter = NGX_HTTP_APIGW_FILTER_ENVELOPE;

    return ngx_http_apigw_set_json_headers(r, alcf, b);
}


static ngx_int_t
ngx_http_apigw_header_filter(ngx_http_request_t *r)
{
    ngx_uint_t                  status;
    ngx_http_apigw_ctx_t       *ctx;
    ngx_http_apigw_loc_conf_t  *alcf;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_apigw_module);

    if (!alcf->enable) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_apigw_ensure_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_apigw_request_id_header(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx->filter = NGX_HTTP_APIGW_FILTER_NONE;
    ctx->sent = 0;

    if (ctx->pass != r->uri_changes) {
        /* no phase of ours saw this pass: what was raised is an old pass's */
        ctx->error = -1;
        ctx->error_page = 0;
    }

    status = r->headers_out.status;

    if (status < NGX_HTTP_BAD_REQUEST || ctx->replay) {
        return ngx_http_next_header_filter(r);
    }

    /*
     * The operator's error_page is served as configured: apigw only adds
     * the request id.  An error this location raises itself (a protected
     * error page refusing the request), or a new one of nginx's while
     * serving the page, still gets its envelope.
     */
    if (ctx->error_page
        && ctx->error < 0
        && (r->err_status == 0
            || (ngx_uint_t) r->err_status == ctx->error_page_status))
    {
        return ngx_http_next_header_filter(r);
    }

    if (r->err_status || r->upstream == NULL || ctx->error >= 0) {

        /* nginx's own error page, an apigw error, or a content handler's */

        if (ngx_http_apigw_envelope_for_status(r, alcf, ctx, status)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        return ngx_http_next_header_filter(r);
    }

    if (alcf->upstream_errors == APIGW_UPSTREAM_PASS) {
        return ngx_http_next_header_filter(r);
    }

    if (r->header_only) {
        /* no body to look at: describe what a GET would have received */
        if (ngx_http_apigw_envelope_for_status(r, alcf, ctx, status)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        return ngx_http_next_header_filter(r);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "apigw capturing upstream error body, status %ui",
                   status);

    ctx->filter = NGX_HTTP_APIGW_FILTER_CAPTURE;
    ctx->captured = 0;
    ctx->truncated = 0;
    ctx->capture = NULL;

    r->filter_need_in_memory = 1;

    /* the header waits until the body is known */
    return NGX_OK;
}


static void
ngx_http_apigw_consume(ngx_chain_t *in, ngx_uint_t *last)
{
    ngx_chain_t  *cl;

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;

        if (cl->buf->last_buf || cl->buf->last_in_chain) {
            *last = 1;
        }
    }
}


static ngx_int_t
ngx_http_apigw_capture(ngx_http_request_t *r, ngx_http_apigw_ctx_t *ctx,
    ngx_chain_t *in, ngx_uint_t *last)
{
    size_t      size, room, cap;
    ngx_buf_t  *b;
    ngx_chain_t *cl;

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (b->last_buf || b->last_in_chain) {
            *last = 1;
        }

        if (!ngx_buf_in_memory(b)) {
            if (ngx_buf_size(b)) {
                /* the copy filter should have read it; never guess */
                ctx->truncated = 1;
            }

            b->file_pos = b->file_last;
            continue;
        }

        size = b->last - b->pos;

        if (size == 0 || ctx->truncated) {
            b->pos = b->last;
            continue;
        }

        if (ctx->capture == NULL) {
            cap = APIGW_UPSTREAM_BODY_MAX;

            if (r->headers_out.content_length_n > 0
                && r->headers_out.content_length_n < (off_t) cap)
            {
                cap = (size_t) r->headers_out.content_length_n;
            }

            ctx->capture = ngx_create_temp_buf(r->pool, cap);
            if (ctx->capture == NULL) {
                return NGX_ERROR;
            }
        }

        room = ctx->capture->end - ctx->capture->last;

        if (size > room) {
            if (ctx->captured + size > APIGW_UPSTREAM_BODY_MAX) {
                ctx->truncated = 1;
                b->pos = b->last;
                continue;
            }

            /* Content-Length understated the body: grow to the cap */
            b = ngx_create_temp_buf(r->pool, APIGW_UPSTREAM_BODY_MAX);
            if (b == NULL) {
                return NGX_ERROR;
            }

            b->last = ngx_cpymem(b->pos, ctx->capture->pos, ctx->captured);
            ctx->capture = b;
            b = cl->buf;
        }

        ctx->capture->last = ngx_cpymem(ctx->capture->last, b->pos, size);
        ctx->captured += size;
        b->pos = b->last;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_finish_capture(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx)
{
    u_char                     *body;
    size_t                      len;
    ngx_int_t                   rc;
    ngx_buf_t                  *b;
    ngx_str_t                   ctype, cenc;
    ngx_chain_t                 out;
    apigw_str_t                 ct, ce, rid;
    apigw_upstream_result_t     res;
    ngx_http_apigw_loc_conf_t  *alcf;
    ngx_http_apigw_main_conf_t *amcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_apigw_module);
    amcf = ngx_http_get_module_main_conf(r, ngx_http_apigw_module);

    body = ctx->capture ? ctx->capture->pos : NULL;
    len = ctx->captured;

    ctype = r->headers_out.content_type;
    ngx_str_null(&cenc);

    if (r->headers_out.content_encoding
        && r->headers_out.content_encoding->hash)
    {
        cenc = r->headers_out.content_encoding->value;
    }

    ct.len = ctype.len;
    ct.data = ctype.data;
    ce.len = cenc.len;
    ce.data = cenc.data;
    rid.len = ctx->request_id.len;
    rid.data = ctx->request_id.data;

    if (apigw_upstream_error_analyze(
            (apigw_upstream_mode_t) alcf->upstream_errors, alcf->template,
            &amcf->catalog, (int) r->headers_out.status, &ct, &ce,
            body, len, ctx->truncated, &rid, &res)
        != 0)
    {
        return NGX_ERROR;
    }

    switch (res.action) {

    case APIGW_UE_KEEP:
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            apigw_upstream_error_free(&res);
            return NGX_ERROR;
        }

        if (len) {
            b->pos = body;
            b->last = body + len;
            b->memory = 1;
        }

        r->headers_out.content_length_n = len;

        if (r->headers_out.content_length) {
            r->headers_out.content_length->hash = 0;
            r->headers_out.content_length = NULL;
        }

        break;

    case APIGW_UE_REPLACE_BODY:
        b = ngx_create_temp_buf(r->pool, res.body_len ? res.body_len : 1);
        if (b == NULL) {
            apigw_upstream_error_free(&res);
            return NGX_ERROR;
        }

        b->last = ngx_cpymem(b->pos, res.body, res.body_len);

        r->headers_out.content_length_n = res.body_len;

        if (r->headers_out.content_length) {
            r->headers_out.content_length->hash = 0;
            r->headers_out.content_length = NULL;
        }

        ngx_http_clear_accept_ranges(r);
        ngx_http_clear_etag(r);

        break;

    default: /* APIGW_UE_ENVELOPE */
        res.envelope.status = (int) r->headers_out.status;
        res.envelope.request_id = rid;
        res.envelope.doc_base.len = alcf->doc_base.len;
        res.envelope.doc_base.data = alcf->doc_base.data;

        b = ngx_http_apigw_render(r, alcf, &res.envelope);
        if (b == NULL) {
            apigw_upstream_error_free(&res);
            return NGX_ERROR;
        }

        ngx_http_apigw_set_json_headers(r, alcf, b);

        break;
    }

    apigw_upstream_error_free(&res);

    b->last_buf = 1;
    b->last_in_chain = 1;

    ctx->filter = NGX_HTTP_APIGW_FILTER_NONE;
    ctx->sent = 1;

    rc = ngx_http_next_header_filter(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_next_body_filter(r, &out);
}


static ngx_int_t
ngx_http_apigw_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_uint_t             last;
    ngx_chain_t            out;
    ngx_http_apigw_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_body_filter(r, in);
    }

    ctx = ngx_http_apigw_get_ctx(r);

    if (ctx == NULL || ctx->filter == NGX_HTTP_APIGW_FILTER_NONE) {
        return ngx_http_next_body_filter(r, in);
    }

    if (in == NULL) {
        /* a flush of what the next filters hold */
        return ngx_http_next_body_filter(r, in);
    }

    last = 0;

    if (ctx->filter == NGX_HTTP_APIGW_FILTER_ENVELOPE) {

        ngx_http_apigw_consume(in, &last);

        if (ctx->sent || !last || r->header_only) {
            return NGX_OK;
        }

        ctx->sent = 1;

        out.buf = ctx->envelope;
        out.next = NULL;

        return ngx_http_next_body_filter(r, &out);
    }

    /* NGX_HTTP_APIGW_FILTER_CAPTURE */

    if (ngx_http_apigw_capture(r, ctx, in, &last) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!last) {
        return NGX_OK;
    }

    return ngx_http_apigw_finish_capture(r, ctx);
}
