/*
 * Redis error replies, by what a client should do about them.  Knows
 * nothing of nginx: the glue counts, logs and acts on the class.
 */
#ifndef APIGW_REDIS_ERROR_H
#define APIGW_REDIS_ERROR_H

#include <stddef.h>

typedef enum {
    /* LOADING, BUSY, TRYAGAIN, CLUSTERDOWN, MASTERDOWN: wait and retry */
    APIGW_REDIS_ERR_TRANSIENT = 0,
    /* READONLY: the node is a replica now; reconnect to the primary */
    APIGW_REDIS_ERR_READONLY,
    /* MOVED, ASK: the key lives on another Cluster node */
    APIGW_REDIS_ERR_REDIRECT,
    /* NOSCRIPT: the script cache was flushed; load it again */
    APIGW_REDIS_ERR_NOSCRIPT,
    /* NOAUTH, WRONGPASS, NOPERM: the credentials or the ACL */
    APIGW_REDIS_ERR_AUTH,
    /* OOM, WRONGTYPE, ERR and the rest: a real error of this call */
    APIGW_REDIS_ERR_OTHER,
    APIGW_REDIS_ERR__COUNT
} apigw_redis_err_class_t;

/* The class of an error reply's text (its first word decides). */
apigw_redis_err_class_t apigw_redis_error_class(const char *s, size_t len);

/* A short lowercase name of a class, for metrics and logs. */
const char *apigw_redis_error_class_name(apigw_redis_err_class_t c);

#endif
