/*
 * Header list helpers.  nginx 1.22's ngx_table_elt_t has no "next", so
 * duplicates are found by walking the lists.
 */

#include "ngx_http_apigw_module.h"


static ngx_uint_t
ngx_http_apigw_header_is(ngx_table_elt_t *h, const char *lowcase_name,
    size_t len)
{
    return h->key.len == len
           && ngx_strncasecmp(h->key.data, (u_char *) lowcase_name, len) == 0;
}


/* The number of headers of that name, and the first of them. */

ngx_uint_t
ngx_http_apigw_count_in_header(ngx_http_request_t *r,
    const char *lowcase_name, size_t len, ngx_table_elt_t **first)
{
    ngx_uint_t        i, n;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    n = 0;
    *first = NULL;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return n;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (ngx_http_apigw_header_is(&h[i], lowcase_name, len)) {
            if (n++ == 0) {
                *first = &h[i];
            }
        }
    }
}


ngx_table_elt_t *
ngx_http_apigw_find_in_header(ngx_http_request_t *r, const char *lowcase_name,
    size_t len)
{
    ngx_table_elt_t  *first;

    (void) ngx_http_apigw_count_in_header(r, lowcase_name, len, &first);

    return first;
}


#define NGX_HTTP_APIGW_MAX_NAMES  8


static ngx_uint_t
ngx_http_apigw_header_in(ngx_table_elt_t *h, const char **names,
    const size_t *lens, ngx_uint_t n)
{
    ngx_uint_t  k;

    for (k = 0; k < n; k++) {
        if (ngx_http_apigw_header_is(h, names[k], lens[k])) {
            return 1;
        }
    }

    return 0;
}


/*
 * Upstream modules copy every element of headers_in.headers (the proxy
 * module does not skip hash == 0), so a header that must not reach the
 * upstream is really taken out: the list is rebuilt without it.  Elements
 * are copied, not moved, so pointers like r->headers_in.host stay valid.
 */

ngx_int_t
ngx_http_apigw_remove_in_headers(ngx_http_request_t *r, const char **names,
    ngx_uint_t n)
{
    size_t            lens[NGX_HTTP_APIGW_MAX_NAMES];
    ngx_uint_t        i, total, drop;
    ngx_list_t        old;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *nh;

    /* measured once, not once per header */
    if (n > NGX_HTTP_APIGW_MAX_NAMES) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        lens[i] = ngx_strlen(names[i]);
    }

    total = 0;
    drop = 0;

    part = &r->headers_in.headers.part;
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

        total++;

        if (ngx_http_apigw_header_in(&h[i], names, lens, n)) {
            drop++;

            if (r->headers_in.authorization == &h[i]) {
                r->headers_in.authorization = NULL;
            }
        }
    }

    if (drop == 0) {
        return NGX_OK;
    }

    /*
     * The new list is built in place: an ngx_list_t must not be copied by
     * value, its "last" points into itself.  The old parts stay in the pool.
     */
    old = r->headers_in.headers;

    if (ngx_list_init(&r->headers_in.headers, r->pool, total - drop + 4,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    part = &old.part;
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

        if (ngx_http_apigw_header_in(&h[i], names, lens, n)) {
            continue;
        }

        nh = ngx_list_push(&r->headers_in.headers);
        if (nh == NULL) {
            return NGX_ERROR;
        }

        *nh = h[i];
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_apigw_add_in_header(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_in.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->key = *name;
    h->value = *value;

    h->lowcase_key = ngx_pnalloc(r->pool, name->len);
    if (h->lowcase_key == NULL) {
        return NGX_ERROR;
    }

    h->hash = ngx_hash_strlow(h->lowcase_key, name->data, name->len);

    return NGX_OK;
}


/* Sets a response header, dropping any copy the upstream sent. */

ngx_table_elt_t *
ngx_http_apigw_set_out_header(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

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

        if (h[i].hash != 0
            && h[i].key.len == name->len
            && ngx_strncasecmp(h[i].key.data, name->data, name->len) == 0)
        {
            h[i].hash = 0;
        }
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NULL;
    }

    h->hash = 1;
    h->key = *name;
    h->value = *value;
    h->lowcase_key = NULL;

    return h;
}
