/*
 * The API-key lookup cache in shared memory: an rbtree keyed by the key's
 * SHA-256 and LRU queues, in the manner of limit_req's zone.
 *
 * Records and negative entries live apart.  Anyone can send unknown keys,
 * as many as they like, without holding a valid one: negative entries are
 * capped at a quarter of the zone and evict only each other, so a spray of
 * random keys can never push a good key's record out (and with it the
 * record stale_if_error would serve during an outage).  A record that
 * needs room takes it from negative entries first, then from the least
 * recently used records.
 */

#include "ngx_http_apigw_auth_cache.h"
#include "ngx_http_apigw_metrics.h"


#define NGX_HTTP_APIGW_DIGEST_LEN  32


typedef struct {
    u_char          color;
    u_char          negative;
    u_short         len;
    ngx_queue_t     queue;
    ngx_msec_t      expires;
    u_char          digest[NGX_HTTP_APIGW_DIGEST_LEN];
    u_char          data[1];
} ngx_http_apigw_auth_cache_node_t;


/* a record's (or a negative entry's) eviction round: entries at most */
#define NGX_HTTP_APIGW_CACHE_EVICT  8
#define NGX_HTTP_APIGW_CACHE_ROUNDS 16


typedef struct {
    ngx_rbtree_t        rbtree;
    ngx_rbtree_node_t   sentinel;
    ngx_queue_t         queue;          /* records, most recent first */
    ngx_queue_t         negative;       /* negative entries, likewise */
    ngx_uint_t          nnegative;
    ngx_uint_t          negative_max;   /* a quarter of the zone's room */
} ngx_http_apigw_auth_cache_sh_t;


typedef struct {
    ngx_http_apigw_auth_cache_sh_t  *sh;
    ngx_slab_pool_t                 *shpool;
} ngx_http_apigw_auth_cache_zone_t;


const char  *ngx_http_apigw_key_record_names[] = {
    "key_id", "tenant", "scopes", "status", "expires_at", "account_status",
    "rate", "burst"
};


apigw_str_t *
ngx_http_apigw_key_record_field(apigw_key_record_t *rec, ngx_uint_t i)
{
    switch (i) {
    case 0: return &rec->key_id;
    case 1: return &rec->tenant;
    case 2: return &rec->scopes;
    case 3: return &rec->status;
    case 4: return &rec->expires_at;
    case 5: return &rec->account_status;
    case 6: return &rec->rate;
    default: return &rec->burst;
    }
}


static void
ngx_http_apigw_auth_cache_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t                 **p;
    ngx_http_apigw_auth_cache_node_t   *cn, *cnt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else { /* node->key == temp->key */

            cn = (ngx_http_apigw_auth_cache_node_t *) &node->color;
            cnt = (ngx_http_apigw_auth_cache_node_t *) &temp->color;

            p = (ngx_memcmp(cn->digest, cnt->digest,
                            NGX_HTTP_APIGW_DIGEST_LEN) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static ngx_int_t
ngx_http_apigw_auth_cache_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_apigw_auth_cache_zone_t  *ozone = data;

    size_t                             len;
    ngx_http_apigw_auth_cache_zone_t  *zone;

    zone = shm_zone->data;

    if (ozone) {
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;
        return NGX_OK;
    }

    zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->sh = zone->shpool->data;
        return NGX_OK;
    }

    zone->sh = ngx_slab_alloc(zone->shpool,
                              sizeof(ngx_http_apigw_auth_cache_sh_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    zone->shpool->data = zone->sh;

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_apigw_auth_cache_insert_value);

    ngx_queue_init(&zone->sh->queue);
    ngx_queue_init(&zone->sh->negative);

    /* a negative entry is a fixed-size node: the slab rounds it to 2^n */
    for (len = 8;
         len < offsetof(ngx_rbtree_node_t, color)
               + offsetof(ngx_http_apigw_auth_cache_node_t, data);
         len <<= 1)
    { /* void */ }

    zone->sh->negative_max = shm_zone->shm.size / 4 / len;

    len = sizeof(" in apigw_auth_cache zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in apigw_auth_cache zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full cache evicts; running out of room is not worth a log line */
    zone->shpool->log_nomem = 0;

    return NGX_OK;
}


char *
ngx_http_apigw_auth_cache_conf(ngx_conf_t *cf,
    ngx_http_apigw_auth_cache_t *cache, ngx_module_t *module)
{
    u_char                            *p;
    ssize_t                            size;
    ngx_str_t                         *value, name, s;
    ngx_int_t                          ms;
    ngx_uint_t                         i;
    ngx_http_apigw_auth_cache_zone_t  *zone;

    if (cache->shm_zone) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = 0;
    ngx_str_null(&name);
    cache->ttl = 30000;
    cache->negative_ttl = 5000;
    cache->stale_if_error = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            name.data = value[i].data + 5;
            p = (u_char *) ngx_strchr(name.data, ':');

            if (p == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            name.len = p - name.data;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR || name.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" is too small", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "ttl=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            ms = ngx_parse_time(&s, 0);
            if (ms == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid ttl \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            cache->ttl = (ngx_msec_t) ms;
            continue;
        }

        if (ngx_strncmp(value[i].data, "negative_ttl=", 13) == 0) {
            s.data = value[i].data + 13;
            s.len = value[i].len - 13;

            ms = ngx_parse_time(&s, 0);
            if (ms == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid negative_ttl \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            cache->negative_ttl = (ngx_msec_t) ms;
            continue;
        }

        if (ngx_strncmp(value[i].data, "stale_if_error=", 15) == 0) {
            s.data = value[i].data + 15;
            s.len = value[i].len - 15;

            ms = ngx_parse_time(&s, 0);
            if (ms == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid stale_if_error \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            cache->stale_if_error = (ngx_msec_t) ms;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"apigw_auth_cache\" must have "
                           "\"zone\" parameter");
        return NGX_CONF_ERROR;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_apigw_auth_cache_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    cache->shm_zone = ngx_shared_memory_add(cf, &name, size, module);
    if (cache->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (cache->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", &name);
        return NGX_CONF_ERROR;
    }

    cache->shm_zone->init = ngx_http_apigw_auth_cache_init_zone;
    cache->shm_zone->data = zone;

    return NGX_CONF_OK;
}


/* A SHA-256 is already evenly spread: its first bytes are the tree key. */

static ngx_inline ngx_uint_t
ngx_http_apigw_auth_cache_hash(const u_char *digest)
{
    return (ngx_uint_t) digest[0] << 24 | (ngx_uint_t) digest[1] << 16
           | (ngx_uint_t) digest[2] << 8 | digest[3];
}


static ngx_rbtree_node_t *
ngx_http_apigw_auth_cache_find(ngx_http_apigw_auth_cache_zone_t *zone,
    ngx_uint_t hash, const u_char *digest)
{
    ngx_int_t                          rc;
    ngx_rbtree_node_t                 *node, *sentinel;
    ngx_http_apigw_auth_cache_node_t  *cn;

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        cn = (ngx_http_apigw_auth_cache_node_t *) &node->color;

        rc = ngx_memcmp(digest, cn->digest, NGX_HTTP_APIGW_DIGEST_LEN);

        if (rc == 0) {
            return node;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static void
ngx_http_apigw_auth_cache_delete(ngx_http_apigw_auth_cache_zone_t *zone,
    ngx_rbtree_node_t *node)
{
    ngx_http_apigw_auth_cache_node_t  *cn;

    cn = (ngx_http_apigw_auth_cache_node_t *) &node->color;

    if (cn->negative) {
        zone->sh->nnegative--;
    }

    ngx_queue_remove(&cn->queue);
    ngx_rbtree_delete(&zone->sh->rbtree, node);
    ngx_slab_free_locked(zone->shpool, node);
}


ngx_http_apigw_cache_result_e
ngx_http_apigw_auth_cache_get(ngx_http_apigw_auth_cache_t *cache,
    const u_char *digest, apigw_key_record_t *rec, ngx_pool_t *pool,
    ngx_uint_t stale)
{
    ngx_msec_int_t                     age;
    u_char                            *p, *copy;
    size_t                             n;
    ngx_uint_t                         i, hash;
    ngx_rbtree_node_t                 *node;
    apigw_str_t                       *f;
    ngx_http_apigw_cache_result_e      rc;
    ngx_http_apigw_auth_cache_node_t  *cn;
    ngx_http_apigw_auth_cache_zone_t  *zone;

    if (cache->shm_zone == NULL) {
        return NGX_HTTP_APIGW_CACHE_MISS;
    }

    zone = cache->shm_zone->data;
    hash = ngx_http_apigw_auth_cache_hash(digest);

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = ngx_http_apigw_auth_cache_find(zone, hash, digest);

    if (node == NULL) {
        ngx_shmtx_unlock(&zone->shpool->mutex);

        if (!stale) {
            ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_AUTH_CACHE_MISS);
        }

        return NGX_HTTP_APIGW_CACHE_MISS;
    }

    cn = (ngx_http_apigw_auth_cache_node_t *) &node->color;

    /* how long ago the entry expired; <= 0: still fresh */
    age = (ngx_msec_int_t) (ngx_current_msec - cn->expires);

    if (age >= 0 && (!stale || cn->negative)) {

        /*
         * An expired record is kept while it may still stand in for Redis
         * during an outage (stale_if_error); a negative entry never does:
         * the key may have been created since.
         */

        if (cn->negative || age > (ngx_msec_int_t) cache->stale_if_error) {
            ngx_http_apigw_auth_cache_delete(zone, node);
        }

        ngx_shmtx_unlock(&zone->shpool->mutex);

        if (!stale) {
            ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_AUTH_CACHE_MISS);
        }

        return NGX_HTTP_APIGW_CACHE_MISS;
    }

    if (age >= 0 && age > (ngx_msec_int_t) cache->stale_if_error) {
        ngx_http_apigw_auth_cache_delete(zone, node);
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return NGX_HTTP_APIGW_CACHE_MISS;
    }

    ngx_queue_remove(&cn->queue);
    ngx_queue_insert_head(cn->negative ? &zone->sh->negative
                                       : &zone->sh->queue,
                          &cn->queue);

    if (cn->negative) {
        ngx_shmtx_unlock(&zone->shpool->mutex);
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_AUTH_CACHE_NEGATIVE);
        return NGX_HTTP_APIGW_CACHE_NEGATIVE;
    }

    /* copied out under the lock: the entry may be evicted right after */
    copy = ngx_pnalloc(pool, cn->len);
    rc = NGX_HTTP_APIGW_CACHE_MISS;

    if (copy) {
        ngx_memcpy(copy, cn->data, cn->len);
        rc = NGX_HTTP_APIGW_CACHE_HIT;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    if (rc != NGX_HTTP_APIGW_CACHE_HIT) {
        /* no memory for the copy: Redis is asked, as on a miss */
        if (!stale) {
            ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_AUTH_CACHE_MISS);
        }

        return rc;
    }

    ngx_http_apigw_metric_inc(stale ? NGX_HTTP_APIGW_M_AUTH_CACHE_STALE
                                    : NGX_HTTP_APIGW_M_AUTH_CACHE_HIT);

    p = copy;

    for (i = 0; i < NGX_HTTP_APIGW_KEY_FIELDS; i++) {
        f = ngx_http_apigw_key_record_field(rec, i);

        n = (size_t) p[0] << 8 | p[1];
        p += 2;

        f->len = n;
        f->data = n ? p : NULL;
        p += n;
    }

    return NGX_HTTP_APIGW_CACHE_HIT;
}


/* evicts up to n of the least recently used entries of one queue */

static ngx_uint_t
ngx_http_apigw_auth_cache_evict(ngx_http_apigw_auth_cache_zone_t *zone,
    ngx_queue_t *queue, ngx_uint_t n)
{
    ngx_uint_t                         evicted;
    ngx_queue_t                       *q;
    ngx_rbtree_node_t                 *node;
    ngx_http_apigw_auth_cache_node_t  *cn;

    evicted = 0;

    while (n-- && !ngx_queue_empty(queue)) {
        q = ngx_queue_last(queue);
        cn = ngx_queue_data(q, ngx_http_apigw_auth_cache_node_t, queue);
        node = (ngx_rbtree_node_t *)
                   ((u_char *) cn - offsetof(ngx_rbtree_node_t, color));

        ngx_http_apigw_auth_cache_delete(zone, node);
        evicted++;
    }

    return evicted;
}


/*
 * Room for a new entry: a negative one only ever takes it from other
 * negative ones; a record from negative entries first, then from records.
 * Bounded: a zone too fragmented to fit the entry after that many rounds
 * simply does not cache it.
 */

static ngx_rbtree_node_t *
ngx_http_apigw_auth_cache_alloc(ngx_http_apigw_auth_cache_zone_t *zone,
    size_t size, ngx_uint_t negative)
{
    ngx_uint_t          round;
    ngx_rbtree_node_t  *node;

    if (negative && zone->sh->nnegative >= zone->sh->negative_max) {
        (void) ngx_http_apigw_auth_cache_evict(zone, &zone->sh->negative, 1);
    }

    for (round = 0; round < NGX_HTTP_APIGW_CACHE_ROUNDS; round++) {

        node = ngx_slab_alloc_locked(zone->shpool, size);
        if (node) {
            return node;
        }

        if (ngx_http_apigw_auth_cache_evict(zone, &zone->sh->negative,
                                            NGX_HTTP_APIGW_CACHE_EVICT))
        {
            continue;
        }

        if (negative
            || ngx_http_apigw_auth_cache_evict(zone, &zone->sh->queue,
                                               NGX_HTTP_APIGW_CACHE_EVICT)
               == 0)
        {
            break;
        }
    }

    return NULL;
}


void
ngx_http_apigw_auth_cache_put(ngx_http_apigw_auth_cache_t *cache,
    const u_char *digest, apigw_key_record_t *rec)
{
    u_char                            *p;
    size_t                             size, len;
    ngx_uint_t                         i, hash;
    ngx_rbtree_node_t                 *node;
    apigw_str_t                       *f;
    ngx_http_apigw_auth_cache_node_t  *cn;
    ngx_http_apigw_auth_cache_zone_t  *zone;

    if (cache->shm_zone == NULL) {
        return;
    }

    len = 0;

    if (rec) {
        for (i = 0; i < NGX_HTTP_APIGW_KEY_FIELDS; i++) {
            f = ngx_http_apigw_key_record_field(rec, i);

            if (f->len > 0xffff) {
                return;
            }

            len += 2 + f->len;
        }

        if (len > 0xffff) {
            return;
        }
    }

    zone = cache->shm_zone->data;
    hash = ngx_http_apigw_auth_cache_hash(digest);

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_apigw_auth_cache_node_t, data)
           + len;

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = ngx_http_apigw_auth_cache_find(zone, hash, digest);
    if (node) {
        ngx_http_apigw_auth_cache_delete(zone, node);
    }

    node = ngx_http_apigw_auth_cache_alloc(zone, size, rec == NULL);

    if (node == NULL) {
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return;
    }

    node->key = hash;

    cn = (ngx_http_apigw_auth_cache_node_t *) &node->color;

    ngx_memcpy(cn->digest, digest, NGX_HTTP_APIGW_DIGEST_LEN);
    cn->negative = (rec == NULL);
    cn->len = (u_short) len;
    cn->expires = ngx_current_msec
                  + (rec ? cache->ttl : cache->negative_ttl);

    p = cn->data;

    for (i = 0; rec && i < NGX_HTTP_APIGW_KEY_FIELDS; i++) {
        f = ngx_http_apigw_key_record_field(rec, i);

        *p++ = (u_char) (f->len >> 8);
        *p++ = (u_char) (f->len & 0xff);

        /* an absent field has no data pointer: memcpy(p, NULL, 0) is UB */
        if (f->len) {
            p = ngx_cpymem(p, f->data, f->len);
        }
    }

    ngx_rbtree_insert(&zone->sh->rbtree, node);

    if (rec) {
        ngx_queue_insert_head(&zone->sh->queue, &cn->queue);

    } else {
        ngx_queue_insert_head(&zone->sh->negative, &cn->queue);
        zone->sh->nnegative++;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}
