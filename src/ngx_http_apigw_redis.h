/*
 * A small general Redis client on nginx's event loop: hiredis's async API
 * behind an adapter of our own (an ngx_connection_t around the hiredis fd,
 * nginx timers for connect and per-command timeouts).  One persistent,
 * pipelined connection per worker, reconnected with backoff.  Nothing here
 * ever blocks a worker.
 */
#ifndef NGX_HTTP_APIGW_REDIS_H
#define NGX_HTTP_APIGW_REDIS_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <hiredis/hiredis.h>

typedef struct {
    ngx_str_t       addr;            /* as written: host:port or unix:/path */
    ngx_str_t       host;            /* numeric address, resolved at config */
    in_port_t       port;
    ngx_str_t       unix_path;       /* non-empty for unix: sockets */
    ngx_str_t       username;        /* ACL user; empty: AUTH password */
    ngx_str_t       password;
    ngx_int_t       db;
    ngx_str_t       prefix;          /* prepended to every key; "apigw:" */
    ngx_msec_t      connect_timeout; /* 100ms */
    ngx_msec_t      timeout;         /* per command; 50ms */
} ngx_http_apigw_redis_conf_t;

typedef enum {
    NGX_HTTP_APIGW_REDIS_OK = 0,     /* reply may still be an error reply */
    NGX_HTTP_APIGW_REDIS_FAIL,       /* not connected, connection lost */
    NGX_HTTP_APIGW_REDIS_TIMEOUT
} ngx_http_apigw_redis_status_e;

/*
 * Called exactly once per call that was not cancelled, never from inside
 * the submitting function.  The reply belongs to hiredis and is freed when
 * the handler returns: copy what you need.  reply is NULL unless status is
 * NGX_HTTP_APIGW_REDIS_OK.
 */
typedef void (*ngx_http_apigw_redis_handler_pt)(void *data,
    ngx_http_apigw_redis_status_e status, redisReply *reply);

typedef struct ngx_http_apigw_redis_call_s  ngx_http_apigw_redis_call_t;

typedef struct {
    ngx_str_t       source;
    u_char          sha1[41];        /* hex, NUL-terminated */
} ngx_http_apigw_redis_script_t;

/* Parses "addr [password=] [db=] [prefix=] [connect_timeout=] [timeout=]". */
char *ngx_http_apigw_redis_conf(ngx_conf_t *cf,
    ngx_http_apigw_redis_conf_t *rcf);

/* Computes the SHA1 of script->source at configuration time. */
ngx_int_t ngx_http_apigw_redis_script_init(ngx_http_apigw_redis_script_t *s);

/* Worker lifecycle: connect in init_process, free in exit_process. */
ngx_int_t ngx_http_apigw_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_apigw_redis_conf_t *rcf);
void ngx_http_apigw_redis_exit_process(ngx_cycle_t *cycle);

/*
 * Submits a command (argv is binary-safe and copied before return).  With a
 * script, sends EVALSHA sha nkeys argv... and, on NOSCRIPT, transparently
 * EVAL.  Returns NULL only on allocation failure; when Redis is down the
 * handler is called soon with NGX_HTTP_APIGW_REDIS_FAIL (from a posted
 * event, never re-entrantly).
 */
ngx_http_apigw_redis_call_t *ngx_http_apigw_redis_call(
    ngx_http_apigw_redis_script_t *script, int nkeys,
    int argc, const char **argv, const size_t *argvlen,
    ngx_http_apigw_redis_handler_pt handler, void *data);

/*
 * After this the handler is never called; safe at any time before it was
 * (and from inside it).  Once the handler has returned, the call may be
 * freed: forget the pointer in the handler, never cancel it afterwards.
 */
void ngx_http_apigw_redis_cancel(ngx_http_apigw_redis_call_t *call);

/* Connection state, for fail-fast decisions and metrics. */
ngx_uint_t ngx_http_apigw_redis_connected(void);

#endif
