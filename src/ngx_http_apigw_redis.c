
/*
 * apigw: a small, general Redis client on nginx's event loop.
 *
 * hiredis's async API does the protocol; this file gives it an event-loop
 * adapter of nginx's own (an ngx_connection_t around the hiredis socket),
 * nginx timers for connect and per-command timeouts, one persistent
 * pipelined connection per worker, reconnects with backoff, fail-fast
 * delivery from a posted event while Redis is away, and transparent
 * EVALSHA -> EVAL on NOSCRIPT.  Nothing here ever blocks a worker.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <openssl/sha.h>

#include "ngx_http_apigw_redis.h"
#include "ngx_http_apigw_metrics.h"
#include "apigw_redis_error.h"


#define NGX_HTTP_APIGW_REDIS_DEFAULT_PORT     6379
#define NGX_HTTP_APIGW_REDIS_BACKOFF_MIN      10
#define NGX_HTTP_APIGW_REDIS_BACKOFF_MAX      1000

/* while Redis stays away, repeat the "unavailable" line at most this often */
#define NGX_HTTP_APIGW_REDIS_LOG_INTERVAL     60000

/* EVALSHA sha nkeys / EVAL source nkeys, in front of the caller's argv */
#define NGX_HTTP_APIGW_REDIS_SCRIPT_ARGS      3


typedef enum {
    NGX_HTTP_APIGW_REDIS_IDLE = 0,    /* no context: backoff or no config */
    NGX_HTTP_APIGW_REDIS_CONNECTING,  /* connect or handshake in flight */
    NGX_HTTP_APIGW_REDIS_READY        /* handshake answered */
} ngx_http_apigw_redis_state_e;


typedef struct {
    ngx_http_apigw_redis_conf_t      *conf;
    redisAsyncContext                *ac;
    ngx_http_apigw_redis_state_e      state;

    ngx_msec_t                        last_read;   /* bytes came in */
    ngx_msec_t                        backoff;

    ngx_event_t                       reconnect;
    ngx_event_t                       connect_timer;
    ngx_event_t                       fail;        /* posted, see failed */
    ngx_event_t                       flush;       /* posted: write now */
    ngx_queue_t                       failed;      /* calls to fail soon */

    ngx_uint_t                        attempts;    /* failures while down */
    ngx_msec_t                        down_since;
    ngx_msec_t                        logged;      /* last "down" log line */
    u_char                            reason[128]; /* why we dropped ac */

    unsigned                          inited:1;
    unsigned                          down:1;      /* an outage is logged */
    unsigned                          exiting:1;
    unsigned                          flushing:1;  /* in flush's write */
} ngx_http_apigw_redis_t;


struct ngx_http_apigw_redis_call_s {
    ngx_http_apigw_redis_handler_pt   handler;     /* NULL once detached */
    void                             *data;
    ngx_event_t                       timer;
    ngx_queue_t                       queue;       /* in failed, if queued */
    ngx_msec_t                        start;       /* submitted, for latency */

    /* script calls only: the full argv, kept for the EVAL retry */
    ngx_http_apigw_redis_script_t    *script;
    int                               argc;
    const char                      **argv;
    size_t                           *argvlen;
    u_char                            nkeys[NGX_INT_T_LEN];

    unsigned                          queued:1;
    unsigned                          eval:1;      /* NOSCRIPT seen */
};


static ngx_int_t ngx_http_apigw_redis_parse_addr(ngx_conf_t *cf,
    ngx_http_apigw_redis_conf_t *rcf, ngx_str_t *addr);
static ngx_int_t ngx_http_apigw_redis_parse_msec(ngx_conf_t *cf,
    ngx_str_t *value, size_t skip, ngx_msec_t *msec);
static void ngx_http_apigw_redis_init_events(ngx_log_t *log);

static void ngx_http_apigw_redis_connect(void);
static void ngx_http_apigw_redis_handshake_cb(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_http_apigw_redis_drop(const char *reason);
static void ngx_http_apigw_redis_down(const char *reason);
static void ngx_http_apigw_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_apigw_redis_connect_timeout_handler(ngx_event_t *ev);

static void ngx_http_apigw_redis_add_read(void *privdata);
static void ngx_http_apigw_redis_del_read(void *privdata);
static void ngx_http_apigw_redis_add_write(void *privdata);
static void ngx_http_apigw_redis_del_write(void *privdata);
static void ngx_http_apigw_redis_cleanup(void *privdata);
static void ngx_http_apigw_redis_read_handler(ngx_event_t *rev);
static void ngx_http_apigw_redis_write_handler(ngx_event_t *wev);
static void ngx_http_apigw_redis_flush_handler(ngx_event_t *ev);

static ngx_http_apigw_redis_call_t *ngx_http_apigw_redis_call_alloc(
    ngx_http_apigw_redis_script_t *script, int nkeys, int argc,
    const char **argv, const size_t *argvlen);
static ngx_int_t ngx_http_apigw_redis_submit(ngx_http_apigw_redis_call_t *call,
    redisAsyncContext *ac, int argc, const char **argv,
    const size_t *argvlen);
static void ngx_http_apigw_redis_reply_cb(redisAsyncContext *ac, void *r,
    void *privdata);
static void ngx_http_apigw_redis_fail_later(
    ngx_http_apigw_redis_call_t *call);
static void ngx_http_apigw_redis_fail_handler(ngx_event_t *ev);
static void ngx_http_apigw_redis_timeout_handler(ngx_event_t *ev);
static ngx_uint_t ngx_http_apigw_redis_error_reply(redisReply *reply);
static ngx_uint_t ngx_http_apigw_redis_unsupported(const char *cmd,
    size_t len);


/* one connection per worker process: the state is the process's own */
static ngx_http_apigw_redis_t  ngx_http_apigw_redis;

static u_char  ngx_http_apigw_redis_handshake_last;


char *
ngx_http_apigw_redis_conf(ngx_conf_t *cf, ngx_http_apigw_redis_conf_t *rcf)
{
    ngx_int_t    n;
    ngx_str_t   *value;
    ngx_uint_t   i;

    value = cf->args->elts;

    if (cf->args->nelts < 2) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" needs an address: host:port or unix:/path",
                           &value[0]);
        return NGX_CONF_ERROR;
    }

    ngx_memzero(rcf, sizeof(ngx_http_apigw_redis_conf_t));

    ngx_str_set(&rcf->prefix, "apigw:");
    rcf->connect_timeout = 100;
    rcf->timeout = 50;

    if (ngx_http_apigw_redis_parse_addr(cf, rcf, &value[1]) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "username=", 9) == 0) {
            rcf->username.data = value[i].data + 9;
            rcf->username.len = value[i].len - 9;

            if (rcf->username.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "empty \"username=\" in \"%V\"",
                                   &value[0]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "password=", 9) == 0) {
            rcf->password.data = value[i].data + 9;
            rcf->password.len = value[i].len - 9;

            if (rcf->password.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "empty \"password=\" in \"%V\"",
                                   &value[0]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "db=", 3) == 0) {
            n = ngx_atoi(value[i].data + 3, value[i].len - 3);

            if (n == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\": a database number "
                                   "(0 or more) is expected", &value[i]);
                return NGX_CONF_ERROR;
            }

            rcf->db = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "prefix=", 7) == 0) {
            /* "prefix=" alone is allowed: keys without a prefix */
            rcf->prefix.data = value[i].data + 7;
            rcf->prefix.len = value[i].len - 7;
            continue;
        }

        if (ngx_strncmp(value[i].data, "connect_timeout=", 16) == 0) {
            if (ngx_http_apigw_redis_parse_msec(cf, &value[i], 16,
                                                &rcf->connect_timeout)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            if (ngx_http_apigw_redis_parse_msec(cf, &value[i], 8,
                                                &rcf->timeout)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"%V\"; expected "
                           "username=, password=, db=, prefix=, "
                           "connect_timeout= or timeout=", &value[i],
                           &value[0]);
        return NGX_CONF_ERROR;
    }

    if (rcf->username.len && rcf->password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"username=\" needs \"password=\" in \"%V\"",
                           &value[0]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_apigw_redis_parse_addr(ngx_conf_t *cf,
    ngx_http_apigw_redis_conf_t *rcf, ngx_str_t *addr)
{
    size_t      len;
    u_char     *p;
    ngx_url_t   u;

    rcf->addr = *addr;

    if (addr->len >= 5 && ngx_strncasecmp(addr->data, (u_char *) "unix:", 5)
                          == 0)
    {
        len = addr->len - 5;

        if (len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "no path in redis address \"%V\"", addr);
            return NGX_ERROR;
        }

#if (NGX_HAVE_UNIX_DOMAIN)
        if (len >= sizeof(((struct sockaddr_un *) 0)->sun_path)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "too long unix socket path in redis address "
                               "\"%V\"", addr);
            return NGX_ERROR;
        }
#else
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unix domain sockets are not supported "
                           "on this platform: \"%V\"", addr);
        return NGX_ERROR;
#endif

        /* NUL-terminated: hiredis takes a C string */
        p = ngx_pnalloc(cf->pool, len + 1);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_cpystrn(p, addr->data + 5, len + 1);

        rcf->unix_path.data = p;
        rcf->unix_path.len = len;

        return NGX_OK;
    }

    /*
     * hiredis resolves names with a blocking getaddrinfo() on every
     * connect; resolve once here, in the master at configuration time,
     * and give the workers a numeric address.
     */

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *addr;
    u.default_port = NGX_HTTP_APIGW_REDIS_DEFAULT_PORT;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in redis address \"%V\"", u.err, addr);
        }

        return NGX_ERROR;
    }

    if (u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "host not found in redis address \"%V\"", addr);
        return NGX_ERROR;
    }

    if (u.naddrs > 1) {
        ngx_conf_log_error(NGX_LOG_INFO, cf, 0,
                           "redis address \"%V\" resolves to several "
                           "addresses, using %V", addr, &u.addrs[0].name);
    }

    p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    /* without the port, IPv6 comes without brackets, as hiredis wants it */
    len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, p,
                        NGX_SOCKADDR_STRLEN, 0);
    p[len] = '\0';

    rcf->host.data = p;
    rcf->host.len = len;
    rcf->port = ngx_inet_get_port(u.addrs[0].sockaddr);

    return NGX_OK;
}


static ngx_int_t
ngx_http_apigw_redis_parse_msec(ngx_conf_t *cf, ngx_str_t *value,
    size_t skip, ngx_msec_t *msec)
{
    ngx_str_t   s;
    ngx_msec_t  t;

    s.data = value->data + skip;
    s.len = value->len - skip;

    t = ngx_parse_time(&s, 0);

    if (t == (ngx_msec_t) NGX_ERROR || t == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"%V\": a positive time such as "
                           "\"50ms\" or \"1s\" is expected", value);
        return NGX_ERROR;
    }

    *msec = t;

    return NGX_OK;
}


ngx_int_t
ngx_http_apigw_redis_script_init(ngx_http_apigw_redis_script_t *s)
{
    u_char  digest[SHA_DIGEST_LENGTH];

    if (s->source.len == 0) {
        return NGX_ERROR;
    }

    if (SHA1(s->source.data, s->source.len, digest) == NULL) {
        return NGX_ERROR;
    }

    /* Redis compares the hex digest as given: lowercase, as ngx_hex_dump */
    ngx_hex_dump(s->sha1, digest, SHA_DIGEST_LENGTH);
    s->sha1[2 * SHA_DIGEST_LENGTH] = '\0';

    return NGX_OK;
}


ngx_int_t
ngx_http_apigw_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_apigw_redis_conf_t *rcf)
{
    ngx_http_apigw_redis_t  *rc;

    /*
     * The master, cache manager and cache loader never talk to Redis: a
     * socket opened there would be inherited or left behind.
     */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    rc = &ngx_http_apigw_redis;

    ngx_http_apigw_redis_init_events(cycle->log);

    if (rcf == NULL || rc->conf != NULL) {
        return NGX_OK;
    }

    rc->conf = rcf;
    rc->backoff = NGX_HTTP_APIGW_REDIS_BACKOFF_MIN;

    /*
     * The cached time is the one the master forked us with: other modules'
     * init_process (perl, geoip...) may have taken tens of milliseconds
     * since, and a connect timer armed from it would fire at once.
     */
    ngx_time_update();

    ngx_http_apigw_redis_connect();

    return NGX_OK;
}


static void
ngx_http_apigw_redis_init_events(ngx_log_t *log)
{
    ngx_http_apigw_redis_t  *rc;

    rc = &ngx_http_apigw_redis;

    if (rc->inited) {
        return;
    }

    rc->inited = 1;

    ngx_queue_init(&rc->failed);

    rc->fail.handler = ngx_http_apigw_redis_fail_handler;
    rc->fail.data = rc;
    rc->fail.log = log;

    rc->flush.handler = ngx_http_apigw_redis_flush_handler;
    rc->flush.data = rc;
    rc->flush.log = log;

    /* neither keeps a gracefully exiting worker alive */

    rc->reconnect.handler = ngx_http_apigw_redis_reconnect_handler;
    rc->reconnect.data = rc;
    rc->reconnect.log = log;
    rc->reconnect.cancelable = 1;

    rc->connect_timer.handler = ngx_http_apigw_redis_connect_timeout_handler;
    rc->connect_timer.data = rc;
    rc->connect_timer.log = log;
    rc->connect_timer.cancelable = 1;
}


void
ngx_http_apigw_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t                  *q;
    ngx_http_apigw_redis_t       *rc;
    ngx_http_apigw_redis_call_t  *call;

    rc = &ngx_http_apigw_redis;

    if (!rc->inited) {
        return;
    }

    /*
     * Requests still waiting are never resumed now: their handlers are
     * suppressed rather than called, so nothing runs into a request that
     * will not be finalized.  The calls themselves are freed.
     */

    rc->exiting = 1;

    if (rc->reconnect.timer_set) {
        ngx_del_timer(&rc->reconnect);
    }

    if (rc->connect_timer.timer_set) {
        ngx_del_timer(&rc->connect_timer);
    }

    if (rc->fail.posted) {
        ngx_delete_posted_event(&rc->fail);
    }

    if (rc->flush.posted) {
        ngx_delete_posted_event(&rc->flush);
    }

    while (!ngx_queue_empty(&rc->failed)) {
        q = ngx_queue_head(&rc->failed);
        ngx_queue_remove(q);

        call = ngx_queue_data(q, ngx_http_apigw_redis_call_t, queue);
        ngx_free(call);
    }

    if (rc->ac) {
        /* calls back every pending command, then our cleanup frees c */
        redisAsyncFree(rc->ac);
    }

    rc->ac = NULL;
    rc->state = NGX_HTTP_APIGW_REDIS_IDLE;
}


ngx_uint_t
ngx_http_apigw_redis_connected(void)
{
    return ngx_http_apigw_redis.state == NGX_HTTP_APIGW_REDIS_READY;
}


/* connection management */


static void
ngx_http_apigw_redis_connect(void)
{
    int                           n;
    void                         *last;
    size_t                        argvlen[3];
    ngx_log_t                    *log;
    const char                   *argv[3];
    redisAsyncContext            *ac;
    ngx_connection_t             *c;
    ngx_http_apigw_redis_t       *rc;
    ngx_http_apigw_redis_conf_t  *rcf;
    u_char                        db[NGX_INT_T_LEN];

    rc = &ngx_http_apigw_redis;
    rcf = rc->conf;
    log = rc->reconnect.log;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                   "apigw redis connect to %V", &rcf->addr);

    /* host is numeric (see parse_addr): no resolver call happens here */

    if (rcf->unix_path.len) {
        ac = redisAsyncConnectUnix((const char *) rcf->unix_path.data);

    } else {
        ac = redisAsyncConnect((const char *) rcf->host.data, rcf->port);
    }

    if (ac == NULL) {
        ngx_http_apigw_redis_down("out of memory");
        return;
    }

    if (ac->err) {
        ngx_cpystrn(rc->reason, (u_char *) ac->errstr, sizeof(rc->reason));
        redisAsyncFree(ac);
        ngx_http_apigw_redis_down((const char *) rc->reason);
        return;
    }

    c = ngx_get_connection(ac->c.fd, log);

    if (c == NULL) {
        /* nothing attached yet: this closes the socket and nothing else */
        redisAsyncFree(ac);
        ngx_http_apigw_redis_down("no free nginx connection");
        return;
    }

    c->data = ac;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);
    c->read->handler = ngx_http_apigw_redis_read_handler;
    c->write->handler = ngx_http_apigw_redis_write_handler;
    c->read->log = log;
    c->write->log = log;

    ac->ev.data = c;
    ac->ev.addRead = ngx_http_apigw_redis_add_read;
    ac->ev.delRead = ngx_http_apigw_redis_del_read;
    ac->ev.addWrite = ngx_http_apigw_redis_add_write;
    ac->ev.delWrite = ngx_http_apigw_redis_del_write;
    ac->ev.cleanup = ngx_http_apigw_redis_cleanup;

    rc->ac = ac;
    rc->state = NGX_HTTP_APIGW_REDIS_CONNECTING;
    rc->last_read = ngx_current_msec;
    rc->reason[0] = '\0';

    /*
     * The handshake goes first into the output buffer, so callers' commands
     * queued while connecting are pipelined behind it and never run
     * unauthenticated or on the wrong database.  Its last reply, ROLE's,
     * proves Redis is answering (not just that the kernel accepted the
     * connection) and that the node is a primary: only that makes the
     * connection ready and resets the backoff.  A replica (an old primary
     * after a failover, a name that points at the wrong node) is dropped
     * before anything is written to it; the calls queued behind fail.
     */

    last = &ngx_http_apigw_redis_handshake_last;

    if (rcf->password.len) {
        n = 0;
        argv[n] = "AUTH";
        argvlen[n++] = 4;

        if (rcf->username.len) {
            argv[n] = (const char *) rcf->username.data;
            argvlen[n++] = rcf->username.len;
        }

        argv[n] = (const char *) rcf->password.data;
        argvlen[n++] = rcf->password.len;

        if (redisAsyncCommandArgv(ac, ngx_http_apigw_redis_handshake_cb,
                                  NULL, n, argv, argvlen)
            != REDIS_OK)
        {
            goto failed;
        }
    }

    if (rcf->db) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = (const char *) db;
        argvlen[1] = ngx_sprintf(db, "%i", rcf->db) - db;

        if (redisAsyncCommandArgv(ac, ngx_http_apigw_redis_handshake_cb,
                                  NULL, 2, argv, argvlen)
            != REDIS_OK)
        {
            goto failed;
        }
    }

    argv[0] = "ROLE";
    argvlen[0] = 4;

    if (redisAsyncCommandArgv(ac, ngx_http_apigw_redis_handshake_cb,
                              last, 1, argv, argvlen)
        != REDIS_OK)
    {
        goto failed;
    }

    ngx_add_timer(&rc->connect_timer, rcf->connect_timeout);

    return;

failed:

    ngx_http_apigw_redis_drop("out of memory");
}


static void
ngx_http_apigw_redis_handshake_cb(redisAsyncContext *ac, void *r,
    void *privdata)
{
    u_char                  *p;
    redisReply              *reply;
    ngx_http_apigw_redis_t  *rc;

    rc = &ngx_http_apigw_redis;
    reply = r;

    /* NULL: the context is going away; its cleanup reports why */

    if (reply == NULL || ac != rc->ac) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        /* e.g. a wrong password or db: fail the connection, not calls */
        p = ngx_snprintf(rc->reason, sizeof(rc->reason) - 1,
                         "handshake refused: %*s", reply->len, reply->str);
        *p = '\0';

        ngx_http_apigw_redis_drop((const char *) rc->reason);
        return;
    }

    if (privdata != &ngx_http_apigw_redis_handshake_last) {
        return;
    }

    /* ROLE: ["master", offset, replicas] on a primary */

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 1
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[0]->len != 6
        || ngx_strncmp(reply->element[0]->str, "master", 6) != 0)
    {
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_REDIS_NOT_PRIMARY);

        p = ngx_snprintf(rc->reason, sizeof(rc->reason) - 1,
                         "not a primary (ROLE: %*s), not used",
                         (reply->type == REDIS_REPLY_ARRAY
                          && reply->elements
                          && reply->element[0]->type == REDIS_REPLY_STRING)
                         ? reply->element[0]->len : 1,
                         (reply->type == REDIS_REPLY_ARRAY
                          && reply->elements
                          && reply->element[0]->type == REDIS_REPLY_STRING)
                         ? reply->element[0]->str : "?");
        *p = '\0';

        ngx_http_apigw_redis_drop((const char *) rc->reason);
        return;
    }

    if (rc->connect_timer.timer_set) {
        ngx_del_timer(&rc->connect_timer);
    }

    rc->state = NGX_HTTP_APIGW_REDIS_READY;
    rc->backoff = NGX_HTTP_APIGW_REDIS_BACKOFF_MIN;

    if (rc->down) {
        ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_REDIS_RECONNECTS);

        /* at the level of the outage line, so the pair is always seen */
        ngx_log_error(NGX_LOG_ERR, rc->reconnect.log, 0,
                      "redis connection to %V restored after %M ms",
                      &rc->conf->addr, ngx_current_msec - rc->down_since);

    } else {
        ngx_log_error(NGX_LOG_INFO, rc->reconnect.log, 0,
                      "redis connection to %V established",
                      &rc->conf->addr);
    }

    rc->down = 0;
    rc->attempts = 0;
}


/*
 * Drops the current connection.  redisAsyncFree() calls back every pending
 * command with a NULL reply (each caller sees FAIL) before its cleanup hook
 * frees the nginx connection and ngx_http_apigw_redis_down() schedules the
 * reconnect.  From inside a hiredis callback hiredis defers all this until
 * the callback returns, still within the same event handler.
 */

static void
ngx_http_apigw_redis_drop(const char *reason)
{
    ngx_http_apigw_redis_t  *rc;

    rc = &ngx_http_apigw_redis;

    if (rc->ac == NULL) {
        return;
    }

    if ((u_char *) reason != rc->reason) {
        ngx_cpystrn(rc->reason, (u_char *) reason, sizeof(rc->reason));
    }

    redisAsyncFree(rc->ac);
}


/*
 * The one place where a connection (or an attempt) ends.  It logs state
 * changes, not events: "lost" once, the first failure to reconnect, then a
 * reminder at most every NGX_HTTP_APIGW_REDIS_LOG_INTERVAL, and "restored"
 * once; at 10k rps with Redis down the log stays quiet.  It never calls a
 * caller's handler: it may run from inside hiredis's cleanup.
 */

static void
ngx_http_apigw_redis_down(const char *reason)
{
    ngx_uint_t               was_ready;
    ngx_http_apigw_redis_t  *rc;

    rc = &ngx_http_apigw_redis;

    was_ready = (rc->state == NGX_HTTP_APIGW_REDIS_READY);

    rc->ac = NULL;
    rc->state = NGX_HTTP_APIGW_REDIS_IDLE;

    if (rc->connect_timer.timer_set) {
        ngx_del_timer(&rc->connect_timer);
    }

    if (rc->exiting) {
        return;
    }

    if (was_ready) {
        ngx_log_error(NGX_LOG_ERR, rc->reconnect.log, 0,
                      "redis connection to %V lost: %s",
                      &rc->conf->addr, reason);

        rc->down = 1;
        rc->attempts = 0;
        rc->down_since = ngx_current_msec;
        rc->logged = ngx_current_msec;

    } else {
        rc->attempts++;

        if (!rc->down) {
            ngx_log_error(NGX_LOG_ERR, rc->reconnect.log, 0,
                          "redis connection to %V failed: %s",
                          &rc->conf->addr, reason);

            rc->down = 1;
            rc->down_since = ngx_current_msec;
            rc->logged = ngx_current_msec;

        } else if ((ngx_msec_int_t) (ngx_current_msec - rc->logged)
                   >= NGX_HTTP_APIGW_REDIS_LOG_INTERVAL)
        {
            ngx_log_error(NGX_LOG_ERR, rc->reconnect.log, 0,
                          "redis at %V still unavailable after %ui "
                          "attempt(s): %s",
                          &rc->conf->addr, rc->attempts, reason);

            rc->logged = ngx_current_msec;
        }
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rc->reconnect.log, 0,
                   "apigw redis reconnect in %M ms: %s", rc->backoff, reason);

    ngx_add_timer(&rc->reconnect, rc->backoff);

    rc->backoff = ngx_min(rc->backoff * 2, NGX_HTTP_APIGW_REDIS_BACKOFF_MAX);
}


static void
ngx_http_apigw_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_apigw_redis_t  *rc;

    rc = ev->data;

    if (rc->ac == NULL && !rc->exiting) {
        ngx_http_apigw_redis_connect();
    }
}


static void
ngx_http_apigw_redis_connect_timeout_handler(ngx_event_t *ev)
{
    ngx_http_apigw_redis_drop("connect timed out");
}


/*
 * The event-loop adapter.  ev.data is the nginx connection, c->data the
 * hiredis context.
 *
 * Events are registered level-triggered (ngx_add_event with
 * NGX_LEVEL_EVENT, not ngx_handle_read_event, which asks epoll for
 * edge-triggered events): redisAsyncHandleRead() reads at most 16 KiB per
 * call and cannot tell us whether it drained the socket, so with
 * edge-triggered events the rest of a large reply would never wake us.
 * Level-triggered, epoll simply reports the socket again on the next
 * iteration, interleaved fairly with the other connections.  hiredis
 * removes the write event as soon as its output buffer is empty, so level
 * triggering costs no busy loop.
 */

static void
ngx_http_apigw_redis_add_read(void *privdata)
{
    ngx_connection_t  *c;

    c = privdata;

    if (!c->read->active) {
        (void) ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_apigw_redis_del_read(void *privdata)
{
    ngx_connection_t  *c;

    c = privdata;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


/*
 * hiredis asks for a write event whenever it has buffered a command.  On
 * a connected socket that is almost always writable, so instead of adding
 * the event now and removing it after the write (two epoll_ctl calls, and
 * the write only on the next loop iteration) the write is done from a
 * posted event at the end of this pass: every command of the pass goes in
 * one write(), and the event is only registered when the socket is full
 * (hiredis asks again from inside that write).  Before the connection is
 * up the write event is what reports connect() done, so it is real.
 */

static void
ngx_http_apigw_redis_add_write(void *privdata)
{
    ngx_connection_t        *c;
    redisAsyncContext       *ac;
    ngx_http_apigw_redis_t  *rc;

    c = privdata;
    ac = c->data;
    rc = &ngx_http_apigw_redis;

    if (c->write->active) {
        return;
    }

    if (!rc->flushing && ac == rc->ac && (ac->c.flags & REDIS_CONNECTED)) {
        if (!rc->flush.posted) {
            ngx_post_event(&rc->flush, &ngx_posted_events);
        }

        return;
    }

    (void) ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
}


static void
ngx_http_apigw_redis_flush_handler(ngx_event_t *ev)
{
    ngx_http_apigw_redis_t  *rc;

    rc = ev->data;

    if (rc->ac == NULL || !(rc->ac->c.flags & REDIS_CONNECTED)) {
        /* dropped meanwhile: its commands were failed with it */
        return;
    }

    /* the context may be freed inside: only rc is touched afterwards */

    rc->flushing = 1;
    redisAsyncHandleWrite(rc->ac);
    rc->flushing = 0;
}


static void
ngx_http_apigw_redis_del_write(void *privdata)
{
    ngx_connection_t  *c;

    c = privdata;

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


/*
 * Called by hiredis while it frees the context, after the pending commands
 * were called back and before it closes the socket itself: so the nginx
 * connection is released here without ngx_close_connection(), which would
 * close the fd a second time.
 */

static void
ngx_http_apigw_redis_cleanup(void *privdata)
{
    const char              *reason;
    ngx_connection_t        *c;
    redisAsyncContext       *ac;
    ngx_http_apigw_redis_t  *rc;

    rc = &ngx_http_apigw_redis;
    c = privdata;
    ac = c->data;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "apigw redis cleanup fd:%d", c->fd);

    /* removed explicitly: the fd is still open and will be closed later */

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->read->closed = 1;
    c->write->closed = 1;

    /*
     * ngx_free_connection() still needs c->fd (for the files[] slot of
     * poll and select); the fd is marked gone only afterwards, as in
     * ngx_close_connection(), so that an event of this very epoll batch
     * for the same connection is recognized as stale.
     */

    ngx_free_connection(c);

    c->fd = (ngx_socket_t) -1;

    if (ac != rc->ac) {
        return;
    }

    if (ac->err) {
        reason = ac->errstr;

    } else if (rc->reason[0]) {
        reason = (const char *) rc->reason;

    } else {
        reason = "connection closed";
    }

    ngx_http_apigw_redis_down(reason);
}


/* the context may be freed inside these: c is not touched afterwards */

static void
ngx_http_apigw_redis_read_handler(ngx_event_t *rev)
{
    ngx_connection_t  *c;

    c = rev->data;

    /* bytes (or EOF, which ends the connection anyway): Redis is alive */
    ngx_http_apigw_redis.last_read = ngx_current_msec;

    redisAsyncHandleRead(c->data);
}


static void
ngx_http_apigw_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t  *c;

    c = wev->data;

    redisAsyncHandleWrite(c->data);
}


/* calls */


ngx_http_apigw_redis_call_t *
ngx_http_apigw_redis_call(ngx_http_apigw_redis_script_t *script, int nkeys,
    int argc, const char **argv, const size_t *argvlen,
    ngx_http_apigw_redis_handler_pt handler, void *data)
{
    ngx_log_t                    *log;
    ngx_http_apigw_redis_t       *rc;
    ngx_http_apigw_redis_call_t  *call;

    rc = &ngx_http_apigw_redis;
    log = ngx_cycle->log;

    if (!rc->inited) {
        /* no worker init ran (no apigw_redis): every call fails */
        ngx_http_apigw_redis_init_events(log);
    }

    call = ngx_http_apigw_redis_call_alloc(script, nkeys, argc, argv,
                                           argvlen);
    if (call == NULL) {
        return NULL;
    }

    call->handler = handler;
    call->data = data;
    call->start = ngx_current_msec;

    ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_REDIS_COMMANDS);

    call->timer.handler = ngx_http_apigw_redis_timeout_handler;
    call->timer.data = call;
    call->timer.log = log;

    if (script == NULL
        && (argc < 1 || ngx_http_apigw_redis_unsupported(argv[0], argvlen[0])))
    {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "apigw redis: unsupported command");
        ngx_http_apigw_redis_fail_later(call);
        return call;
    }

    if (script && (nkeys < 0 || nkeys > argc || argc < 0)) {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "apigw redis: invalid script call, %d keys of %d "
                      "arguments", nkeys, argc);
        ngx_http_apigw_redis_fail_later(call);
        return call;
    }

    if (rc->ac == NULL) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0,
                       "apigw redis not connected, failing call");
        ngx_http_apigw_redis_fail_later(call);
        return call;
    }

    /* hiredis formats argv into its own buffer now: no copy is needed */

    if (ngx_http_apigw_redis_submit(call, rc->ac, argc, argv, argvlen)
        != NGX_OK)
    {
        /* the context is being freed, or hiredis is out of memory */
        ngx_http_apigw_redis_fail_later(call);
        return call;
    }

    ngx_add_timer(&call->timer, rc->conf->timeout);

    return call;
}


/*
 * One ngx_alloc() holds the call, and for scripts its argv with three
 * leading slots for EVALSHA/EVAL, sha/source and nkeys, plus a copy of the
 * caller's bytes: a NOSCRIPT retry may happen long after the caller's
 * buffers (in a request pool) are gone.
 */

static ngx_http_apigw_redis_call_t *
ngx_http_apigw_redis_call_alloc(ngx_http_apigw_redis_script_t *script,
    int nkeys, int argc, const char **argv, const size_t *argvlen)
{
    int                           i, n;
    size_t                        size;
    u_char                       *p;
    ngx_http_apigw_redis_call_t  *call;

    size = sizeof(ngx_http_apigw_redis_call_t);
    n = 0;

    if (script && argc >= 0) {
        n = argc + NGX_HTTP_APIGW_REDIS_SCRIPT_ARGS;
        size += n * (sizeof(size_t) + sizeof(char *));

        for (i = 0; i < argc; i++) {
            size += argvlen[i] + 1;
        }
    }

    call = ngx_alloc(size, ngx_cycle->log);
    if (call == NULL) {
        return NULL;
    }

    ngx_memzero(call, sizeof(ngx_http_apigw_redis_call_t));

    if (n == 0) {
        return call;
    }

    call->script = script;
    call->argc = n;

    /* size_t first: the struct's size keeps it aligned, then pointers */
    call->argvlen = (size_t *) (call + 1);
    call->argv = (const char **) (call->argvlen + n);
    p = (u_char *) (call->argv + n);

    call->argvlen[2] = ngx_sprintf(call->nkeys, "%d", nkeys) - call->nkeys;
    call->argv[2] = (const char *) call->nkeys;

    for (i = 0; i < argc; i++) {
        call->argv[i + NGX_HTTP_APIGW_REDIS_SCRIPT_ARGS] = (const char *) p;
        call->argvlen[i + NGX_HTTP_APIGW_REDIS_SCRIPT_ARGS] = argvlen[i];

        p = ngx_cpymem(p, argv[i], argvlen[i]);
        *p++ = '\0';
    }

    return call;
}


/* argv is the caller's for plain commands, unused (NULL) for scripts */

static ngx_int_t
ngx_http_apigw_redis_submit(ngx_http_apigw_redis_call_t *call,
    redisAsyncContext *ac, int argc, const char **argv, const size_t *argvlen)
{
    if (call->script) {
        if (call->eval) {
            call->argv[0] = "EVAL";
            call->argvlen[0] = 4;
            call->argv[1] = (const char *) call->script->source.data;
            call->argvlen[1] = call->script->source.len;

        } else {
            call->argv[0] = "EVALSHA";
            call->argvlen[0] = 7;
            call->argv[1] = (const char *) call->script->sha1;
            call->argvlen[1] = 2 * SHA_DIGEST_LENGTH;
        }

        argc = call->argc;
        argv = call->argv;
        argvlen = call->argvlen;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, call->timer.log, 0,
                   "apigw redis call %p: %*s", call, argvlen[0], argv[0]);

    if (redisAsyncCommandArgv(ac, ngx_http_apigw_redis_reply_cb, call,
                              argc, argv, argvlen)
        != REDIS_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * hiredis calls this exactly once per submitted command: with its reply,
 * or with NULL when the context is freed.  Only here is a submitted call
 * freed, since hiredis holds it as privdata until then.
 */

static void
ngx_http_apigw_redis_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    ngx_uint_t                        readonly;
    redisReply                       *reply;
    ngx_http_apigw_redis_t           *rc;
    ngx_http_apigw_redis_call_t      *call;
    ngx_http_apigw_redis_handler_pt   handler;

    rc = &ngx_http_apigw_redis;
    call = privdata;
    reply = r;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, call->timer.log, 0,
                   "apigw redis reply %p: type:%d handler:%p",
                   call, reply ? reply->type : -1, call->handler);

    /*
     * SCRIPT FLUSH, a restart or a failover forgot the script: send it
     * whole, once, pipelined behind what is already queued; the handler
     * sees only the final reply, and the call's timer keeps running.
     */

    if (reply
        && reply->type == REDIS_REPLY_ERROR
        && call->script
        && !call->eval
        && call->handler
        && reply->len >= 8
        && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0)
    {
        call->eval = 1;

        if (ngx_http_apigw_redis_submit(call, ac, 0, NULL, NULL) == NGX_OK)
        {
            return;
        }

        reply = NULL;
    }

    if (call->timer.timer_set) {
        ngx_del_timer(&call->timer);
    }

    if (reply && reply->type == REDIS_REPLY_ERROR) {
        readonly = ngx_http_apigw_redis_error_reply(reply);

    } else {
        readonly = 0;
    }

    /* also for a call whose caller gave up: Redis took that long */
    if (reply) {
        ngx_http_apigw_metric_observe_redis_latency(ngx_current_msec
                                                    - call->start);
    }

    handler = call->handler;
    call->handler = NULL;

    if (handler && !rc->exiting) {
        if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
            ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_REDIS_ERRORS);
        }

        handler(call->data,
                reply ? NGX_HTTP_APIGW_REDIS_OK : NGX_HTTP_APIGW_REDIS_FAIL,
                reply);
    }

    ngx_free(call);

    /*
     * READONLY: the node was demoted under us (a failover).  Reconnecting
     * asks ROLE again: a primary behind the same address is used at once,
     * a replica is refused and retried with backoff, so no write is sent
     * to a replica for longer than one call.
     */
    if (readonly && rc->ac == ac && !rc->exiting) {
        ngx_http_apigw_redis_drop("the node is a replica now (READONLY)");
    }
}


/*
 * Every error reply is counted by class and logged with Redis's own text,
 * at most one line per class per second per worker: an outage of one kind
 * must not flood the log.  Returns 1 for READONLY.
 */

static ngx_uint_t
ngx_http_apigw_redis_error_reply(redisReply *reply)
{
    ngx_msec_t                 now;
    apigw_redis_err_class_t    cls;

    static ngx_msec_t          logged[APIGW_REDIS_ERR__COUNT];
    static ngx_uint_t          skipped[APIGW_REDIS_ERR__COUNT];

    cls = apigw_redis_error_class(reply->str, reply->len);

    ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_REDIS_ERR_TRANSIENT + cls);

    /* NOSCRIPT is handled (the script is sent whole): not worth a line */
    if (cls != APIGW_REDIS_ERR_NOSCRIPT) {
        now = ngx_current_msec;

        if (logged[cls] == 0 || now - logged[cls] >= 1000) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "redis error reply (%s): %*s%s",
                          apigw_redis_error_class_name(cls),
                          (size_t) ngx_min(reply->len, 256), reply->str,
                          skipped[cls] ? " (and more like it)" : "");
            logged[cls] = now ? now : 1;
            skipped[cls] = 0;

        } else {
            skipped[cls]++;
        }
    }

    return cls == APIGW_REDIS_ERR_READONLY;
}


static void
ngx_http_apigw_redis_timeout_handler(ngx_event_t *ev)
{
    u_char                           *p;
    ngx_http_apigw_redis_t           *rc;
    ngx_http_apigw_redis_call_t      *call;
    ngx_http_apigw_redis_handler_pt   handler;

    rc = &ngx_http_apigw_redis;
    call = ev->data;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                   "apigw redis call %p timed out", call);

    ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_REDIS_TIMEOUTS);

    /* hiredis still holds the call: it is freed when its reply comes */

    handler = call->handler;
    call->handler = NULL;

    if (handler) {
        handler(call->data, NGX_HTTP_APIGW_REDIS_TIMEOUT, NULL);
    }

    /*
     * Replies come in order, so commands behind one that timed out wait
     * behind it.  If not a byte has come back for a whole timeout, the
     * server is stopped or unreachable (a SIGSTOPped Redis still accepts
     * connections in the kernel): drop the connection so that the calls
     * queued behind fail now and later calls fail fast during the backoff,
     * instead of each waiting out its own timeout.  A server that is slow
     * but sending (a busy one, a large reply on its way) keeps its
     * connection.  call may be freed by the drop: not touched afterwards.
     */

    if (rc->ac
        && (ngx_msec_int_t) (ngx_current_msec - rc->last_read)
           >= (ngx_msec_int_t) rc->conf->timeout)
    {
        p = ngx_snprintf(rc->reason, sizeof(rc->reason) - 1,
                         "no reply within %M ms", rc->conf->timeout);
        *p = '\0';

        ngx_http_apigw_redis_drop((const char *) rc->reason);
    }
}


/*
 * A call that cannot be sent is failed from a posted event, so that the
 * handler never runs inside ngx_http_apigw_redis_call(): its caller must be
 * able to return NGX_AGAIN first.
 */

static void
ngx_http_apigw_redis_fail_later(ngx_http_apigw_redis_call_t *call)
{
    ngx_http_apigw_redis_t  *rc;

    rc = &ngx_http_apigw_redis;

    call->queued = 1;
    ngx_queue_insert_tail(&rc->failed, &call->queue);

    ngx_post_event(&rc->fail, &ngx_posted_events);
}


static void
ngx_http_apigw_redis_fail_handler(ngx_event_t *ev)
{
    ngx_queue_t                       failed, *q;
    ngx_http_apigw_redis_t           *rc;
    ngx_http_apigw_redis_call_t      *call;
    ngx_http_apigw_redis_handler_pt   handler;

    rc = ev->data;

    /* calls failed by these handlers wait for the next posting */

    if (ngx_queue_empty(&rc->failed)) {
        return;
    }

    ngx_queue_init(&failed);
    ngx_queue_add(&failed, &rc->failed);
    ngx_queue_init(&rc->failed);

    while (!ngx_queue_empty(&failed)) {
        q = ngx_queue_head(&failed);
        ngx_queue_remove(q);

        call = ngx_queue_data(q, ngx_http_apigw_redis_call_t, queue);
        call->queued = 0;

        handler = call->handler;
        call->handler = NULL;

        if (handler) {
            ngx_http_apigw_metric_inc(NGX_HTTP_APIGW_M_REDIS_ERRORS);
            handler(call->data, NGX_HTTP_APIGW_REDIS_FAIL, NULL);
        }

        ngx_free(call);
    }
}


void
ngx_http_apigw_redis_cancel(ngx_http_apigw_redis_call_t *call)
{
    if (call == NULL) {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, call->timer.log, 0,
                   "apigw redis cancel %p", call);

    if (call->timer.timer_set) {
        ngx_del_timer(&call->timer);
    }

    call->handler = NULL;

    if (call->queued) {
        ngx_queue_remove(&call->queue);
        ngx_free(call);
    }

    /* else hiredis holds it: freed by the reply callback */
}


/*
 * Commands whose replies do not map one to one onto commands would
 * desynchronize hiredis's callback list from our calls.
 */

static ngx_uint_t
ngx_http_apigw_redis_unsupported(const char *cmd, size_t len)
{
    static ngx_str_t  bad[] = {
        ngx_string("subscribe"),
        ngx_string("psubscribe"),
        ngx_string("unsubscribe"),
        ngx_string("punsubscribe"),
        ngx_string("monitor")
    };

    ngx_uint_t  i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (len == bad[i].len
            && ngx_strncasecmp((u_char *) cmd, bad[i].data, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}
