/*
 * Request ids: a valid incoming X-Request-Id is kept, anything else is
 * replaced by "req_" + 24 hex characters from OpenSSL's CSPRNG; the id goes
 * upstream, back to the client on every response and into every envelope.
 */

#include "ngx_http_apigw_module.h"
#include "apigw_request_id.h"

#include <openssl/rand.h>


/*
 * RAND_bytes per request costs a lock and a DRBG call; drawing a block at a
 * time amortizes that.  The block is tied to the pid that drew it, so a
 * fork can never make two workers hand out the same ids.
 */
#define NGX_HTTP_APIGW_RAND_BLOCK  (APIGW_REQUEST_ID_RAND_BYTES * 64)

static u_char      ngx_http_apigw_rand[NGX_HTTP_APIGW_RAND_BLOCK];
static size_t      ngx_http_apigw_rand_pos = NGX_HTTP_APIGW_RAND_BLOCK;
static ngx_pid_t   ngx_http_apigw_rand_pid;


static ngx_int_t
ngx_http_apigw_random(u_char *out, size_t n)
{
    if (ngx_http_apigw_rand_pid != ngx_pid
        || ngx_http_apigw_rand_pos + n > NGX_HTTP_APIGW_RAND_BLOCK)
    {
        if (RAND_bytes(ngx_http_apigw_rand, NGX_HTTP_APIGW_RAND_BLOCK) != 1) {
            return NGX_ERROR;
        }

        ngx_http_apigw_rand_pos = 0;
        ngx_http_apigw_rand_pid = ngx_pid;
    }

    ngx_memcpy(out, ngx_http_apigw_rand + ngx_http_apigw_rand_pos, n);

    /* what was handed out is never handed out again */
    ngx_memzero(ngx_http_apigw_rand + ngx_http_apigw_rand_pos, n);
    ngx_http_apigw_rand_pos += n;

    return NGX_OK;
}


ngx_int_t
ngx_http_apigw_request_id_init(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx)
{
    u_char           *p, rnd[APIGW_REQUEST_ID_RAND_BYTES];
    ngx_table_elt_t  *h;

    if (ctx->request_id.len) {
        return NGX_OK;
    }

    /* one walk: the first copy is the candidate, the count is for later */
    ctx->request_id_dup = ngx_http_apigw_count_in_header(r,
                              ngx_http_apigw_header_name(
                                  NGX_HTTP_APIGW_H_REQUEST_ID),
                              &h)
                          > 1;

    ctx->request_id_sent_in = (h != NULL);

    if (h && apigw_request_id_valid(h->value.data, h->value.len)) {
        ctx->request_id = h->value;
        ctx->request_id_kept = 1;
        return NGX_OK;
    }

    if (ngx_http_apigw_random(rnd, sizeof(rnd)) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "apigw: RAND_bytes() failed");
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, APIGW_REQUEST_ID_GEN_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    apigw_request_id_format(p, rnd);

    ctx->request_id.data = p;
    ctx->request_id.len = APIGW_REQUEST_ID_GEN_LEN;

    return NGX_OK;
}


ngx_int_t
ngx_http_apigw_request_id_to_upstream(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx)
{
    static const ngx_http_apigw_header_name_t  *const names[] = {
        ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_REQUEST_ID)
    };

    if (ctx->request_id_sent) {
        return NGX_OK;
    }

    ctx->request_id_sent = 1;

    /*
     * A kept id is already the only thing the upstream will see unless
     * the client sent the header twice; otherwise every client copy goes
     * and ours is added, so the upstream never sees two ids.
     */

    if (ctx->request_id_kept && !ctx->request_id_dup) {
        return NGX_OK;
    }

    /* the common case, no id from the client: nothing to take out */
    if (ctx->request_id_sent_in
        && ngx_http_apigw_remove_in_headers(r, names, 1) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_apigw_add_in_header(r,
                       ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_REQUEST_ID),
                       &ctx->request_id);
}


ngx_int_t
ngx_http_apigw_request_id_header(ngx_http_request_t *r,
    ngx_http_apigw_ctx_t *ctx)
{
    if (ngx_http_apigw_request_id_init(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx->request_id_out = ngx_http_apigw_set_out_header(r,
            &ngx_http_apigw_header_name(NGX_HTTP_APIGW_H_REQUEST_ID)->key,
            &ctx->request_id);

    if (ctx->request_id_out == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}
