/*
 * Header list helpers.  nginx 1.22's ngx_table_elt_t has no "next", so
 * duplicates are found by walking the lists.
 */

#include "ngx_http_apigw_module.h"


/*
 * The request header names apigw looks for or adds, lowercased and hashed
 * once (ngx_http_apigw_headers_init) instead of on every request.
 */
ngx_http_apigw_header_name_t  ngx_http_apigw_header_names[] = {
    { ngx_string("Authorization"), ngx_string("authorization"), 0 },
    { ngx_string("X-Request-Id"), ngx_string("x-request-id"), 0 },
    { ngx_string("X-Apigw-Key-Id"), ngx_string("x-apigw-key-id"), 0 },
    { ngx_string("X-Apigw-Tenant"), ngx_string("x-apigw-tenant"), 0 },
    { ngx_string("X-Apigw-Scopes"), ngx_string("x-apigw-scopes"), 0 },
    { ngx_string("Idempotency-Key"), ngx_string("idempotency-key"), 0 }
};


void
ngx_http_apigw_headers_init(void)
{
    ngx_uint_t                     i;
    ngx_http_apigw_header_name_t  *n;

    for (i = 0; i < NGX_HTTP_APIGW_H_NUM; i++) {
        n = &ngx_http_apigw_header_names[i];
        n->hash = ngx_hash_key(n->lowcase.data, n->lowcase.len);
    }
}


/* A name from the configuration (apigw_auth_header), made like the above. */

ngx_int_t
ngx_http_apigw_header_name_conf(ngx_conf_t *cf, ngx_str_t *name,
    ngx_http_apigw_header_name_t *hn)
{
    hn->key = *name;
    hn->lowcase.len = name->len;

    hn->lowcase.data = ngx_pnalloc(cf->pool, name->len);
    if (hn->lowcase.data == NULL) {
        return NGX_ERROR;
    }

    hn->hash = ngx_hash_strlow(hn->lowcase.data, name->data, name->len);

    return NGX_OK;
}


/*
 * nginx fills lowcase_key from the very bytes of key for every header it
 * parses (HTTP/2 names are lowercase and lowcase_key is key), so comparing
 * it is exact; the hash is not used, as a module may zero it.  A header
 * pushed by some module without lowcase_key is compared the slow way.
 */
static ngx_inline ngx_uint_t
ngx_http_apigw_header_is(ngx_table_elt_t *h,
    const ngx_http_apigw_header_name_t *name)
{
    if (h->key.len != name->lowcase.len) {
        return 0;
    }

    if (h->lowcase_key) {
        return ngx_memcmp(h->lowcase_key, name->lowcase.data,
                          name->lowcase.len)
               == 0;
    }

    return ngx_strncasecmp(h->key.data, name->lowcase.data,
                           name->lowcase.len)
           == 0;
}


/* The number of headers of that name, and the first of them. */

ngx_uint_t
ngx_http_apigw_count_in_header(ngx_http_request_t *r,
    const ngx_http_apigw_header_name_t *name, ngx_table_elt_t **first)
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

        if (ngx_http_apigw_header_is(&h[i], name)) {
            if (n++ == 0) {
                *first = &h[i];
            }
        }
    }
}


ngx_table_elt_t *
ngx_http_apigw_find_in_header(ngx_http_request_t *r,
    const ngx_http_apigw_header_name_t *name)
{
    ngx_table_elt_t  *first;

    (void) ngx_http_apigw_count_in_header(r, name, &first);

    return first;
}


/*
 * Removal matches every spelling an upstream could take for the same name:
 * any case, and "_" for "-" (with underscores_in_headers on, X_Apigw_Tenant
 * reaches a CGI-style upstream as HTTP_X_APIGW_TENANT, as X-Apigw-Tenant
 * does).
 */
static ngx_inline ngx_uint_t
ngx_http_apigw_header_like(ngx_table_elt_t *h,
    const ngx_http_apigw_header_name_t *name)
{
    u_char   c, *k;
    size_t   i;

    if (h->key.len != name->lowcase.len) {
        return 0;
    }

    k = h->lowcase_key ? h->lowcase_key : h->key.data;

    for (i = 0; i < name->lowcase.len; i++) {
        c = ngx_tolower(k[i]);

        if (c == '_') {
            c = '-';
        }

        if (c != name->lowcase.data[i]) {
            return 0;
        }
    }

    return 1;
}


static ngx_uint_t
ngx_http_apigw_header_in(ngx_table_elt_t *h,
    const ngx_http_apigw_header_name_t *const *names, ngx_uint_t n)
{
    ngx_uint_t  k;

    for (k = 0; k < n; k++) {
        if (ngx_http_apigw_header_like(h, names[k])) {
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
ngx_http_apigw_remove_in_headers(ngx_http_request_t *r,
    const ngx_http_apigw_header_name_t *const *names, ngx_uint_t n)
{
    ngx_uint_t        i, total, drop;
    ngx_list_t        old;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *nh;

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

        if (ngx_http_apigw_header_in(&h[i], names, n)) {
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

        if (ngx_http_apigw_header_in(&h[i], names, n)) {
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


/*
 * lowcase_key points at the shared lowercase name: nginx only reads it
 * (the proxy module looks it up in its proxy_set_header hash).
 */
ngx_int_t
ngx_http_apigw_add_in_header(ngx_http_request_t *r,
    const ngx_http_apigw_header_name_t *name, ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    /*
     * nginx never initialises the list of an HTTP/0.9 request, which has
     * no headers; the upstream still gets ours.
     */
    if (r->headers_in.headers.nalloc == 0
        && ngx_list_init(&r->headers_in.headers, r->pool, 4,
                         sizeof(ngx_table_elt_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    h = ngx_list_push(&r->headers_in.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = name->hash;
    h->key = name->key;
    h->lowcase_key = name->lowcase.data;
    h->value = *value;

    return NGX_OK;
}


/* Sets a response header, dropping any copy the upstream sent. */

/*
 * Every response header of that name goes (hash 0), but keep: set_out_header
 * replaces a header this way, and the request-id filter uses it to drop
 * what add_header pushed after apigw's own.
 */

void
ngx_http_apigw_clear_out_headers(ngx_http_request_t *r, ngx_str_t *name,
    ngx_table_elt_t *keep)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (&h[i] != keep
            && h[i].hash != 0
            && h[i].key.len == name->len
            && ngx_strncasecmp(h[i].key.data, name->data, name->len) == 0)
        {
            h[i].hash = 0;
        }
    }
}


ngx_table_elt_t *
ngx_http_apigw_set_out_header(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    ngx_http_apigw_clear_out_headers(r, name, NULL);

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
