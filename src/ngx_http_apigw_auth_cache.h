/*
 * A shared-memory cache of API-key lookups, across the workers of one
 * nginx instance: positive entries (the key's record) for ttl, negative
 * ones (no such key) for negative_ttl, evicted least-recently-used when the
 * zone is full.  Records are stored, not verdicts, so expiry is judged on
 * every request even from the cache.
 */
#ifndef NGX_HTTP_APIGW_AUTH_CACHE_H
#define NGX_HTTP_APIGW_AUTH_CACHE_H

#include <ngx_config.h>
#include <ngx_core.h>

#include "apigw_auth_key.h"

#define NGX_HTTP_APIGW_KEY_FIELDS  8

typedef struct {
    ngx_shm_zone_t  *shm_zone;
    ngx_msec_t       ttl;
    ngx_msec_t       negative_ttl;
    ngx_msec_t       stale_if_error;   /* 0: never serve expired records */
} ngx_http_apigw_auth_cache_t;

typedef enum {
    NGX_HTTP_APIGW_CACHE_MISS = 0,
    NGX_HTTP_APIGW_CACHE_HIT,
    NGX_HTTP_APIGW_CACHE_NEGATIVE
} ngx_http_apigw_cache_result_e;

/* The record's fields in the order Redis HMGET returns them. */
apigw_str_t *ngx_http_apigw_key_record_field(apigw_key_record_t *rec,
    ngx_uint_t i);
extern const char  *ngx_http_apigw_key_record_names[];

char *ngx_http_apigw_auth_cache_conf(ngx_conf_t *cf,
    ngx_http_apigw_auth_cache_t *cache, ngx_module_t *module);

/*
 * On a hit, the record's strings are copied into pool.  stale: Redis is
 * unreachable, and a positive record that expired at most stale_if_error
 * ago counts as a hit.
 */
ngx_http_apigw_cache_result_e ngx_http_apigw_auth_cache_get(
    ngx_http_apigw_auth_cache_t *cache, const u_char *digest,
    apigw_key_record_t *rec, ngx_pool_t *pool, ngx_uint_t stale);

/* rec == NULL stores a negative entry. */
void ngx_http_apigw_auth_cache_put(ngx_http_apigw_auth_cache_t *cache,
    const u_char *digest, apigw_key_record_t *rec);

#endif
