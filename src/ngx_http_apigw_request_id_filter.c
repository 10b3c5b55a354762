/*
 * Exactly one X-Request-Id on every response: apigw's.
 *
 * The error filter sets apigw's id early, but the headers filter
 * (add_header X-Request-Id $request_id, a common line) runs after it and
 * would add a second, conflicting one.  This module's header filter sits
 * behind the headers filter (see ngx_module_order in config) and removes
 * every other copy: the id a client quotes must be the one in the
 * envelope and in the upstream's logs.
 */

#include "ngx_http_apigw_module.h"


static ngx_int_t ngx_http_apigw_request_id_filter_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_apigw_request_id_filter(ngx_http_request_t *r);


static ngx_http_module_t  ngx_http_apigw_request_id_filter_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_apigw_request_id_filter_init, /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_apigw_request_id_filter_module = {
    NGX_MODULE_V1,
    &ngx_http_apigw_request_id_filter_module_ctx, /* module context */
    NULL,                                  /* module directives */
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


static ngx_int_t
ngx_http_apigw_request_id_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_apigw_request_id_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_request_id_filter(ngx_http_request_t *r)
{
    ngx_http_apigw_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_apigw_get_ctx(r);

    if (ctx == NULL || ctx->request_id_out == NULL) {
        return ngx_http_next_header_filter(r);
    }

    ngx_http_apigw_clear_out_headers(r,
        &ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_REQUEST_ID)->key,
        ctx->request_id_out);

    /* whoever cleared ours (more_clear_headers and the like) loses too */
    ctx->request_id_out->hash = 1;

    return ngx_http_next_header_filter(r);
}
