/*
 * apigw-keys: creates and manages the API-key records that the apigw nginx
 * module reads from Redis.  A key is shown once, when it is made; Redis only
 * ever holds its SHA-256, so every later command names a key by its key_id
 * through a small index kept beside the records.
 *
 * This is a short-lived command, so it talks to Redis synchronously and
 * answers any failure by printing it and exiting with a documented status.
 */
#include <ctype.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "apigw_auth_key.h"

#define KEYS_OK          0
#define KEYS_NOTFOUND    1
#define KEYS_USAGE       2
#define KEYS_REDIS       3
#define KEYS_FAIL        4

#define ARGS_MAX         48
#define TX_ATTEMPTS      16
#define BATCH            256
#define TENANT_MAX       128
#define KEY_ID_MAX       64
#define SCOPE_MAX        128
#define SCOPES_MAX       2048
#define NAMESPACE_MAX    64

#define DEFAULT_REDIS    "127.0.0.1:6379"
#define DEFAULT_NS       "apigw:"


/* command-specific options, as bits, so each command can refuse others */
enum {
    OPT_TENANT      = 1 << 0,
    OPT_SCOPES      = 1 << 1,
    OPT_KEY_ID      = 1 << 2,
    OPT_PREFIX      = 1 << 3,
    OPT_EXPIRES_IN  = 1 << 4,
    OPT_EXPIRES_AT  = 1 << 5,
    OPT_RATE        = 1 << 6,
    OPT_BURST       = 1 << 7,
    OPT_GRACE       = 1 << 8
};

static const char  *opt_names[] = {
    "--tenant", "--scopes", "--key-id", "--prefix", "--expires-in",
    "--expires-at", "--rate", "--burst", "--grace"
};

typedef struct {
    const char  *redis;
    const char  *password;
    long         db;
    int          db_set;
    const char  *ns;
    int          json;
    int          help;

    unsigned     given;
    const char  *tenant;
    char        *scopes;          /* normalised: single spaces, no dups */
    const char  *key_id;
    const char  *prefix;
    const char  *expires_in;
    const char  *expires_at;
    const char  *rate;
    const char  *burst;
    const char  *grace;

    long long    now;
    long long    expiry;          /* 0: none */
    long long    grace_sec;
} opts_t;

typedef struct cmd_s  cmd_t;

struct cmd_s {
    const char  *name;
    int        (*run)(opts_t *o, char **args);
    int          nargs;
    unsigned     allowed;
    const char  *usage;
    const char  *help;
};

typedef struct {
    int          argc;
    const char  *argv[ARGS_MAX];
    size_t       len[ARGS_MAX];
} args_t;


static redisContext  *rc;
static const cmd_t   *cur_cmd;
static int            tx_queued;


static void die(int code, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 2, 3)));

static void
die(int code, const char *fmt, ...)
{
    va_list  ap;

    fflush(stdout);
    fputs("apigw-keys: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);

    if (code == KEYS_USAGE) {
        fprintf(stderr, "Try 'apigw-keys %s%s--help'.\n",
                cur_cmd ? cur_cmd->name : "", cur_cmd ? " " : "");
    }

    exit(code);
}


static void *
xmalloc(size_t n)
{
    void  *p = malloc(n);

    if (p == NULL) {
        die(KEYS_FAIL, "out of memory");
    }

    return p;
}


static char *
xstrdup(const char *s)
{
    size_t  n = strlen(s) + 1;

    return memcpy(xmalloc(n), s, n);
}


/* The concatenation of the NULL-terminated arguments, e.g. a Redis key. */
static char *
cat(const char *s, ...)
{
    va_list      ap;
    size_t       n;
    char        *r, *p;
    const char  *a;

    n = 1;
    va_start(ap, s);
    for (a = s; a != NULL; a = va_arg(ap, const char *)) {
        n += strlen(a);
    }
    va_end(ap);

    r = p = xmalloc(n);

    va_start(ap, s);
    for (a = s; a != NULL; a = va_arg(ap, const char *)) {
        n = strlen(a);
        memcpy(p, a, n);
        p += n;
    }
    va_end(ap);

    *p = '\0';

    return r;
}


/* ---- values ---- */


static int
all_digits(const char *s)
{
    if (*s == '\0') {
        return 0;
    }

    for ( /* void */ ; *s; s++) {
        if (*s < '0' || *s > '9') {
            return 0;
        }
    }

    return 1;
}


/* -1 unless s is 1..15 digits: every count this tool takes fits easily. */
static long long
parse_uint(const char *s)
{
    if (!all_digits(s) || strlen(s) > 15) {
        return -1;
    }

    return strtoll(s, NULL, 10);
}


/* "90", "90s", "15m", "1h", "30d", "2w" -> seconds, or -1. */
static long long
parse_duration(const char *s)
{
    size_t      n;
    long long   v, mul;
    char        num[16];

    n = strlen(s);

    if (n == 0 || n >= sizeof(num)) {
        return -1;
    }

    mul = 1;

    switch (s[n - 1]) {
    case 's': mul = 1; n--; break;
    case 'm': mul = 60; n--; break;
    case 'h': mul = 3600; n--; break;
    case 'd': mul = 86400; n--; break;
    case 'w': mul = 7 * 86400; n--; break;
    }

    memcpy(num, s, n);
    num[n] = '\0';

    v = parse_uint(num);

    /* a century is far beyond any key lifetime and keeps the sum small */
    if (v < 0 || v > 100LL * 366 * 86400 / mul) {
        return -1;
    }

    return v * mul;
}


static int
name_valid(const char *s, size_t max)
{
    size_t  n;

    for (n = 0; s[n]; n++) {
        if (!(isalnum((unsigned char) s[n]) || strchr("_.:@-", s[n]))) {
            return 0;
        }
    }

    return n > 0 && n <= max;
}


static int
rate_valid(const char *s)
{
    const char  *p = s;

    if (*p < '1' || *p > '9') {
        return 0;
    }

    while (*p >= '0' && *p <= '9') {
        p++;
    }

    if (p - s > 9) {
        return 0;
    }

    return p[0] == 'r' && p[1] == '/' && p[2] != '\0'
           && strchr("smhd", p[2]) && p[3] == '\0';
}


static int
hex64(const char *s, size_t len)
{
    size_t  i;

    if (len != APIGW_SHA256_HEX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!strchr("0123456789abcdef", s[i]) || s[i] == '\0') {
            return 0;
        }
    }

    return 1;
}


/*
 * Appends the words of s to the normalised list: the module matches scopes
 * as space-separated words, so single spaces and no duplicates keep what it
 * sees equal to what list and show print.
 */
static void
scopes_add(opts_t *o, const char *s)
{
    size_t       n, have;
    char        *out, word[SCOPE_MAX + 1];
    const char  *p, *start;
    apigw_str_t  cur;

    have = o->scopes ? strlen(o->scopes) : 0;
    out = xmalloc(have + strlen(s) + 2);
    memcpy(out, o->scopes ? o->scopes : "", have + 1);
    free(o->scopes);
    o->scopes = out;

    for (p = s; *p; /* void */ ) {
        while (*p == ' ' || *p == '\t' || *p == ',') {
            p++;
        }

        start = p;

        while (*p && *p != ' ' && *p != '\t' && *p != ',') {
            if ((unsigned char) *p < 0x21 || (unsigned char) *p > 0x7e) {
                die(KEYS_USAGE, "--scopes: only printable ASCII words, "
                    "separated by spaces");
            }
            p++;
        }

        n = p - start;

        if (n == 0) {
            continue;
        }

        if (n > SCOPE_MAX) {
            die(KEYS_USAGE, "--scopes: a scope is longer than %d characters",
                SCOPE_MAX);
        }

        memcpy(word, start, n);
        word[n] = '\0';

        cur.data = (unsigned char *) out;
        cur.len = have;

        if (apigw_scopes_has(&cur, (unsigned char *) word, n)) {
            continue;
        }

        if (have) {
            out[have++] = ' ';
        }

        memcpy(out + have, word, n);
        have += n;
        out[have] = '\0';
    }

    if (have > SCOPES_MAX) {
        die(KEYS_USAGE, "--scopes: longer than %d characters", SCOPES_MAX);
    }
}


static void
random_hex(char *out, size_t nbytes)
{
    size_t         i;
    unsigned char  b[32];

    if (nbytes > sizeof(b) || RAND_bytes(b, (int) nbytes) != 1) {
        die(KEYS_FAIL, "no random bytes from the system");
    }

    for (i = 0; i < nbytes; i++) {
        out[2 * i] = "0123456789abcdef"[b[i] >> 4];
        out[2 * i + 1] = "0123456789abcdef"[b[i] & 0x0f];
    }

    out[2 * nbytes] = '\0';
}


static void
new_key_id(char out[KEY_ID_MAX + 1])
{
    memcpy(out, "key_", 4);
    random_hex(out + 4, 8);
}


static char *
fmt_ll(long long v)
{
    char  buf[32];

    snprintf(buf, sizeof(buf), "%lld", v);

    return xstrdup(buf);
}


static void
fmt_time(const char *epoch, char *out, size_t size)
{
    time_t     t;
    struct tm  tm;

    out[0] = '\0';

    if (epoch == NULL || !all_digits(epoch) || strlen(epoch) > 12) {
        return;
    }

    t = (time_t) strtoll(epoch, NULL, 10);

    if (gmtime_r(&t, &tm) != NULL) {
        strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
}


/* ---- Redis ---- */


static void
args_add(args_t *a, const char *s)
{
    if (a->argc == ARGS_MAX) {
        die(KEYS_FAIL, "internal: too many command arguments");
    }

    a->argv[a->argc] = s;
    a->len[a->argc] = strlen(s);
    a->argc++;
}


static void
args_vset(args_t *a, const char *first, va_list ap)
{
    const char  *s;

    a->argc = 0;

    for (s = first; s != NULL; s = va_arg(ap, const char *)) {
        args_add(a, s);
    }
}


static void
redis_fail(void)
{
    die(KEYS_REDIS, "redis: %s", rc->errstr[0] ? rc->errstr : "I/O error");
}


static redisReply *
check_reply(redisReply *r, const char *what)
{
    if (r == NULL) {
        redis_fail();
    }

    if (r->type == REDIS_REPLY_ERROR) {
        die(KEYS_REDIS, "redis: %s: %s", what, r->str);
    }

    return r;
}


static redisReply *
run_args(args_t *a)
{
    return check_reply(redisCommandArgv(rc, a->argc, a->argv, a->len),
                       a->argv[0]);
}


/* Runs one command given as NULL-terminated strings, each one argument. */
static redisReply *
call(const char *first, ...)
{
    va_list  ap;
    args_t   a;

    va_start(ap, first);
    args_vset(&a, first, ap);
    va_end(ap);

    return run_args(&a);
}


static void
call_free(const char *first, ...)
{
    va_list  ap;
    args_t   a;

    va_start(ap, first);
    args_vset(&a, first, ap);
    va_end(ap);

    freeReplyObject(run_args(&a));
}


static void
append(const char *first, ...)
{
    va_list  ap;
    args_t   a;

    va_start(ap, first);
    args_vset(&a, first, ap);
    va_end(ap);

    if (redisAppendCommandArgv(rc, a.argc, a.argv, a.len) != REDIS_OK) {
        redis_fail();
    }
}


static redisReply *
next_reply(const char *what)
{
    void  *r = NULL;

    if (redisGetReply(rc, &r) != REDIS_OK) {
        redis_fail();
    }

    return check_reply(r, what);
}


static void
tx_begin(void)
{
    append("MULTI", NULL);
    tx_queued = 1;
}


static void
tx_args(args_t *a)
{
    if (redisAppendCommandArgv(rc, a->argc, a->argv, a->len) != REDIS_OK) {
        redis_fail();
    }

    tx_queued++;
}


static void
tx_add(const char *first, ...)
{
    va_list  ap;
    args_t   a;

    va_start(ap, first);
    args_vset(&a, first, ap);
    va_end(ap);

    tx_args(&a);
}


/*
 * Sends EXEC and reads the whole pipeline.  Returns 0 when a WATCHed key
 * changed (nothing was written: the caller reads again and retries).
 */
static int
tx_exec(void)
{
    int          i, n;
    size_t       j;
    void        *v;
    redisReply  *r;
    char         err[256];

    append("EXEC", NULL);
    n = tx_queued + 1;
    err[0] = '\0';

    for (i = 0; i < n; i++) {
        v = NULL;

        if (redisGetReply(rc, &v) != REDIS_OK) {
            redis_fail();
        }

        r = v;

        if (i < n - 1) {
            if (r->type == REDIS_REPLY_ERROR && err[0] == '\0') {
                snprintf(err, sizeof(err), "%s", r->str);
            }

            freeReplyObject(r);
            continue;
        }

        if (r->type == REDIS_REPLY_NIL) {
            freeReplyObject(r);
            return 0;
        }

        if (r->type == REDIS_REPLY_ERROR) {
            die(KEYS_REDIS, "redis: transaction refused: %s",
                err[0] ? err : r->str);
        }

        for (j = 0; r->type == REDIS_REPLY_ARRAY && j < r->elements; j++) {
            if (r->element[j]->type == REDIS_REPLY_ERROR) {
                die(KEYS_REDIS, "redis: transaction partly applied: %s",
                    r->element[j]->str);
            }
        }

        freeReplyObject(r);
    }

    return 1;
}


static void
tx_contended(void)
{
    die(KEYS_REDIS, "redis: records kept changing under %d attempts; "
        "try again", TX_ATTEMPTS);
}


static void
redis_connect(const opts_t *o)
{
    int             port;
    long            v;
    char           *host, *colon, *close, *end, db[24];
    struct timeval  ctv = { 3, 0 }, tv = { 10, 0 };

    if (strncmp(o->redis, "unix:", 5) == 0) {
        if (o->redis[5] == '\0') {
            die(KEYS_USAGE, "--redis: unix: needs a socket path");
        }

        rc = redisConnectUnixWithTimeout(o->redis + 5, ctv);

    } else {
        host = xstrdup(o->redis);
        port = 6379;

        if (host[0] == '[') {
            close = strchr(host, ']');
            if (close == NULL || (close[1] != '\0' && close[1] != ':')) {
                die(KEYS_USAGE, "--redis: bad address \"%s\"", o->redis);
            }

            *close = '\0';
            colon = close[1] == ':' ? close + 1 : NULL;
            memmove(host, host + 1, close - host);

        } else {
            colon = strrchr(host, ':');

            /* a bare IPv6 address: its last colon is no port separator */
            if (colon != NULL && strchr(host, ':') != colon) {
                colon = NULL;
            }
        }

        if (colon != NULL) {
            *colon = '\0';
            v = strtol(colon + 1, &end, 10);

            if (colon[1] == '\0' || *end != '\0' || v < 1 || v > 65535) {
                die(KEYS_USAGE, "--redis: bad port in \"%s\"", o->redis);
            }

            port = (int) v;
        }

        if (host[0] == '\0') {
            die(KEYS_USAGE, "--redis: bad address \"%s\"", o->redis);
        }

        rc = redisConnectWithTimeout(host, port, ctv);
        free(host);
    }

    if (rc == NULL) {
        die(KEYS_REDIS, "redis %s: cannot allocate a connection", o->redis);
    }

    if (rc->err) {
        die(KEYS_REDIS, "redis %s: %s", o->redis, rc->errstr);
    }

    if (redisSetTimeout(rc, tv) != REDIS_OK) {
        redis_fail();
    }

    if (o->password != NULL && o->password[0] != '\0') {
        call_free("AUTH", o->password, NULL);
    }

    if (o->db != 0) {
        snprintf(db, sizeof(db), "%ld", o->db);
        call_free("SELECT", db, NULL);
    }
}


/* ---- records ---- */


static const char *
field(const redisReply *h, const char *name)
{
    size_t  i;

    if (h == NULL || h->type != REDIS_REPLY_ARRAY) {
        return NULL;
    }

    for (i = 0; i + 1 < h->elements; i += 2) {
        if (h->element[i]->type == REDIS_REPLY_STRING
            && strcmp(h->element[i]->str, name) == 0
            && h->element[i + 1]->type == REDIS_REPLY_STRING)
        {
            return h->element[i + 1]->str;
        }
    }

    return NULL;
}


static void
str_from(apigw_str_t *s, const char *v)
{
    s->data = (unsigned char *) v;
    s->len = v ? strlen(v) : 0;
}


/* Why the module would accept or refuse this record, for show. */
static const char *
verdict(const redisReply *h, long long now)
{
    apigw_key_record_t  rec;
    const char         *st;

    str_from(&rec.key_id, field(h, "key_id"));
    str_from(&rec.tenant, field(h, "tenant"));
    str_from(&rec.scopes, field(h, "scopes"));
    str_from(&rec.status, field(h, "status"));
    str_from(&rec.expires_at, field(h, "expires_at"));
    str_from(&rec.account_status, field(h, "account_status"));
    str_from(&rec.rate, field(h, "rate"));
    str_from(&rec.burst, field(h, "burst"));

    switch (apigw_key_record_check(&rec, now)) {
    case APIGW_KEY_OK:
        return "accepted";
    case APIGW_KEY_DISABLED:
        return "refused: account_disabled";
    default:
        break;
    }

    st = field(h, "status");

    if (rec.key_id.len == 0 || rec.tenant.len == 0) {
        return "refused: invalid_credentials (broken record)";
    }

    if (st == NULL || strcmp(st, "active") != 0) {
        return st && strcmp(st, "revoked") == 0
               ? "refused: invalid_credentials (revoked)"
               : "refused: invalid_credentials (bad status)";
    }

    return "refused: invalid_credentials (expired)";
}


typedef struct {
    char         sha[APIGW_SHA256_HEX + 1];
    char        *keyid_key;       /* NS keyid:<id> */
    char        *rec_key;         /* NS key:<sha> */
    redisReply  *index;           /* HGETALL of the index */
    redisReply  *rec;             /* HGETALL of the record, may be empty */
} found_t;


static void
found_free(found_t *f)
{
    free(f->keyid_key);
    free(f->rec_key);

    if (f->index) {
        freeReplyObject(f->index);
    }

    if (f->rec) {
        freeReplyObject(f->rec);
    }

    memset(f, 0, sizeof(*f));
}


/*
 * Reads a key's index entry and record under WATCH, so a transaction built
 * from what was read fails rather than overwrite a concurrent change.
 * Returns 0, or KEYS_NOTFOUND.  A dangling index entry (its record deleted
 * by hand) is found, with f->rec empty, for delete to clean up.
 */
static int
find_key(const opts_t *o, const char *id, found_t *f)
{
    const char  *sha;

    memset(f, 0, sizeof(*f));

    f->keyid_key = cat(o->ns, "keyid:", id, NULL);
    call_free("WATCH", f->keyid_key, NULL);

    f->index = call("HGETALL", f->keyid_key, NULL);
    sha = field(f->index, "sha256");

    if (sha == NULL) {
        return KEYS_NOTFOUND;
    }

    if (!hex64(sha, strlen(sha))) {
        die(KEYS_FAIL, "index %s holds no SHA-256; fix or delete it",
            f->keyid_key);
    }

    memcpy(f->sha, sha, APIGW_SHA256_HEX + 1);
    f->rec_key = cat(o->ns, "key:", f->sha, NULL);

    call_free("WATCH", f->rec_key, NULL);
    f->rec = call("HGETALL", f->rec_key, NULL);

    return 0;
}


static void
need_key(const opts_t *o, const char *id, found_t *f, int allow_dangling)
{
    if (find_key(o, id, f) != 0) {
        die(KEYS_NOTFOUND, "no key with key_id \"%s\"", id);
    }

    if (!allow_dangling && f->rec->elements == 0) {
        die(KEYS_NOTFOUND, "key_id \"%s\" is indexed but its record is gone; "
            "'apigw-keys delete %s' removes the index entry", id, id);
    }
}


/* ---- JSON output ---- */


static json_t *
jstr(const char *v)
{
    json_t  *j;
    char    *copy, *p;

    if (v == NULL) {
        return json_null();
    }

    j = json_string(v);

    if (j != NULL) {
        return j;
    }

    /* hand-edited records may hold bytes that are not UTF-8 */
    copy = xstrdup(v);

    for (p = copy; *p; p++) {
        if ((unsigned char) *p > 0x7e) {
            *p = '?';
        }
    }

    j = json_string(copy);
    free(copy);

    return j;
}


/* epoch seconds and counts print as numbers when they are numbers */
static json_t *
jnum(const char *v)
{
    if (v != NULL && all_digits(v) && strlen(v) <= 18) {
        return json_integer(strtoll(v, NULL, 10));
    }

    return jstr(v);
}


static int
numeric_field(const char *name)
{
    static const char  *nums[] = {
        "expires_at", "created_at", "revoked_at", "rotated_at", "burst",
        "updated_at", NULL
    };
    int  i;

    for (i = 0; nums[i]; i++) {
        if (strcmp(nums[i], name) == 0) {
            return 1;
        }
    }

    return 0;
}


static void
json_print(json_t *j)
{
    char  *s;

    s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);

    if (s == NULL) {
        die(KEYS_FAIL, "cannot encode JSON output");
    }

    puts(s);
    free(s);
    json_decref(j);
}


static void
flush_or_die(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        die(KEYS_FAIL, "cannot write to standard output");
    }
}


/* ---- commands ---- */


static const char  *record_order[] = {
    "key_id", "tenant", "status", "account_status", "scopes", "expires_at",
    "rate", "burst", "created_at", NULL
};


/*
 * Queues the HSET of a new record and its index entries: the part create
 * and rotate share.
 */
static void
tx_new_key(const opts_t *o, const char *sha, const char *id,
    const char *tenant, const char *scopes, const char *account,
    const char *rate, const char *burst, const char *prefix,
    const char *expires, const char *created, const char *from)
{
    args_t  a;
    char   *rec_key, *keyid_key, *set_key;

    rec_key = cat(o->ns, "key:", sha, NULL);
    keyid_key = cat(o->ns, "keyid:", id, NULL);
    set_key = cat(o->ns, "tenant:", tenant, ":keys", NULL);

    a.argc = 0;
    args_add(&a, "HSET");
    args_add(&a, rec_key);
    args_add(&a, "key_id");
    args_add(&a, id);
    args_add(&a, "tenant");
    args_add(&a, tenant);
    args_add(&a, "scopes");
    args_add(&a, scopes ? scopes : "");
    args_add(&a, "status");
    args_add(&a, "active");
    args_add(&a, "account_status");
    args_add(&a, account);
    args_add(&a, "created_at");
    args_add(&a, created);

    if (expires) {
        args_add(&a, "expires_at");
        args_add(&a, expires);
    }

    if (rate) {
        args_add(&a, "rate");
        args_add(&a, rate);
    }

    if (burst) {
        args_add(&a, "burst");
        args_add(&a, burst);
    }

    if (prefix && prefix[0]) {
        args_add(&a, "key_prefix");
        args_add(&a, prefix);
    }

    if (from) {
        args_add(&a, "rotated_from");
        args_add(&a, from);
    }

    tx_args(&a);
    tx_add("HSET", keyid_key, "sha256", sha, "tenant", tenant, NULL);
    tx_add("SADD", set_key, id, NULL);

    free(rec_key);
    free(keyid_key);
    free(set_key);
}


static void
print_new_key(const opts_t *o, const char *key, const char *id,
    const char *tenant, const char *scopes, const char *account,
    const char *expires, const char *rate, const char *burst,
    const char *created)
{
    json_t  *j;

    if (o->json) {
        j = json_object();
        json_object_set_new(j, "key", jstr(key));
        json_object_set_new(j, "key_id", jstr(id));
        json_object_set_new(j, "tenant", jstr(tenant));
        json_object_set_new(j, "scopes", jstr(scopes ? scopes : ""));
        json_object_set_new(j, "status", jstr("active"));
        json_object_set_new(j, "account_status", jstr(account));
        json_object_set_new(j, "expires_at", jnum(expires));
        json_object_set_new(j, "rate", jstr(rate));
        json_object_set_new(j, "burst", jnum(burst));
        json_object_set_new(j, "created_at", jnum(created));
        json_print(j);

    } else {
        printf("key: %s\nkey_id: %s\ntenant: %s\n", key, id, tenant);
    }

    if (fflush(stdout) != 0 || ferror(stdout)) {
        die(KEYS_FAIL, "key %s was stored but could not be printed; "
            "remove it with 'apigw-keys delete %s'", id, id);
    }

    fprintf(stderr, "apigw-keys: the key is shown only this once; "
            "Redis keeps its SHA-256 only\n");

    if (strcmp(account, "active") != 0) {
        fprintf(stderr, "apigw-keys: account %s is %s: the key is refused "
                "until 'apigw-keys enable-account %s'\n",
                tenant, account, tenant);
    }
}


static int
cmd_create(opts_t *o, char **args)
{
    int          attempt, n;
    char         key[APIGW_KEY_PREFIX_MAX + APIGW_KEY_B62_LEN + 1];
    char         sha[APIGW_SHA256_HEX + 1], id[KEY_ID_MAX + 1];
    char        *keyid_key, *acct_key, *created, *expires, *burst;
    char         account[32];
    const char  *st;
    redisReply  *r;

    n = apigw_key_generate(o->prefix, key, sizeof(key));
    if (n < 0) {
        die(KEYS_FAIL, "cannot generate a key: no random bytes");
    }

    apigw_sha256_hex((unsigned char *) key, n, sha);

    if (o->key_id) {
        snprintf(id, sizeof(id), "%s", o->key_id);
    } else {
        new_key_id(id);
    }

    created = fmt_ll(o->now);
    expires = o->expiry ? fmt_ll(o->expiry) : NULL;
    burst = o->burst ? fmt_ll(parse_uint(o->burst)) : NULL;
    acct_key = cat(o->ns, "account:", o->tenant, NULL);

    for (attempt = 0; attempt < TX_ATTEMPTS; attempt++) {
        keyid_key = cat(o->ns, "keyid:", id, NULL);

        call_free("WATCH", keyid_key, acct_key, NULL);

        r = call("EXISTS", keyid_key, NULL);
        free(keyid_key);

        if (r->integer) {
            freeReplyObject(r);

            if (o->key_id) {
                die(KEYS_FAIL, "key_id \"%s\" is already in use", id);
            }

            call_free("UNWATCH", NULL);
            new_key_id(id);
            continue;
        }

        freeReplyObject(r);

        /* a key made for a disabled account must not slip past the block */
        r = call("HGET", acct_key, "status", NULL);
        st = r->type == REDIS_REPLY_STRING ? r->str : NULL;
        snprintf(account, sizeof(account), "%s", st ? st : "active");
        freeReplyObject(r);

        tx_begin();
        tx_new_key(o, sha, id, o->tenant, o->scopes, account, o->rate, burst,
                   o->prefix, expires, created, NULL);

        if (st == NULL) {
            tx_add("HSET", acct_key, "status", "active", "updated_at",
                   created, NULL);
        }

        if (tx_exec()) {
            break;
        }
    }

    if (attempt == TX_ATTEMPTS) {
        tx_contended();
    }

    print_new_key(o, key, id, o->tenant, o->scopes, account, expires,
                  o->rate, burst, created);

    OPENSSL_cleanse(key, sizeof(key));
    free(created);
    free(expires);
    free(burst);
    free(acct_key);

    return KEYS_OK;
}


typedef struct {
    char  *key_id;
    char  *tenant;
    char  *status;
    char  *account;
    char  *expires;
    char  *scopes;
} row_t;


static int
row_cmp(const void *a, const void *b)
{
    const row_t  *x = a, *y = b;
    int           c;

    c = strcmp(x->tenant, y->tenant);

    return c ? c : strcmp(x->key_id, y->key_id);
}


static int
str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}


static char *
reply_dup(const redisReply *r)
{
    return xstrdup(r != NULL && r->type == REDIS_REPLY_STRING ? r->str : "");
}


/* The key_ids of every record: SCAN over the index, for list without -t. */
static char **
scan_ids(const opts_t *o, size_t *count)
{
    size_t       n, cap, i, plen;
    char        *pattern, *p, cursor[32], **ids;
    const char  *s;
    redisReply  *r, *keys;

    /* the namespace is literal text inside a glob pattern */
    pattern = xmalloc(2 * strlen(o->ns) + sizeof("keyid:*"));
    for (p = pattern, s = o->ns; *s; s++) {
        if (strchr("*?[]\\", *s)) {
            *p++ = '\\';
        }
        *p++ = *s;
    }
    strcpy(p, "keyid:*");

    plen = strlen(o->ns) + sizeof("keyid:") - 1;
    n = 0;
    cap = 64;
    ids = xmalloc(cap * sizeof(char *));
    strcpy(cursor, "0");

    do {
        r = call("SCAN", cursor, "MATCH", pattern, "COUNT", "1000", NULL);

        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2
            || r->element[0]->type != REDIS_REPLY_STRING
            || r->element[1]->type != REDIS_REPLY_ARRAY)
        {
            die(KEYS_REDIS, "redis: unexpected SCAN reply");
        }

        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        keys = r->element[1];

        for (i = 0; i < keys->elements; i++) {
            if (keys->element[i]->type != REDIS_REPLY_STRING
                || keys->element[i]->len <= plen)
            {
                continue;
            }

            if (n == cap) {
                cap *= 2;
                ids = realloc(ids, cap * sizeof(char *));
                if (ids == NULL) {
                    die(KEYS_FAIL, "out of memory");
                }
            }

            ids[n++] = xstrdup(keys->element[i]->str + plen);
        }

        freeReplyObject(r);

    } while (strcmp(cursor, "0") != 0);

    free(pattern);

    /* SCAN may return a key twice */
    qsort(ids, n, sizeof(char *), str_cmp);

    for (i = 0, *count = 0; i < n; i++) {
        if (*count && strcmp(ids[*count - 1], ids[i]) == 0) {
            free(ids[i]);
            continue;
        }
        ids[(*count)++] = ids[i];
    }

    return ids;
}


static char **
tenant_ids(const opts_t *o, const char *tenant, size_t *count)
{
    size_t       i;
    char        *set_key, **ids;
    redisReply  *r;

    set_key = cat(o->ns, "tenant:", tenant, ":keys", NULL);
    r = call("SMEMBERS", set_key, NULL);
    free(set_key);

    ids = xmalloc((r->elements + 1) * sizeof(char *));

    for (i = 0, *count = 0; i < r->elements; i++) {
        if (r->element[i]->type == REDIS_REPLY_STRING) {
            ids[(*count)++] = xstrdup(r->element[i]->str);
        }
    }

    freeReplyObject(r);

    return ids;
}


/* Reads the rows of the given key_ids, BATCH ids per pipelined round trip. */
static row_t *
read_rows(const opts_t *o, char **ids, size_t count, size_t *nrows)
{
    size_t       i, j, m;
    row_t       *rows;
    char        *k, *shas[BATCH];
    redisReply  *r;

    rows = xmalloc((count + 1) * sizeof(row_t));
    *nrows = 0;

    for (i = 0; i < count; i += BATCH) {
        m = count - i < BATCH ? count - i : BATCH;

        for (j = 0; j < m; j++) {
            k = cat(o->ns, "keyid:", ids[i + j], NULL);
            append("HGET", k, "sha256", NULL);
            free(k);
        }

        for (j = 0; j < m; j++) {
            r = next_reply("HGET");
            shas[j] = (r->type == REDIS_REPLY_STRING
                       && hex64(r->str, r->len)) ? xstrdup(r->str) : NULL;
            freeReplyObject(r);

            if (shas[j]) {
                k = cat(o->ns, "key:", shas[j], NULL);
                append("HMGET", k, "tenant", "status", "account_status",
                       "expires_at", "scopes", NULL);
                free(k);
            }
        }

        for (j = 0; j < m; j++) {
            if (shas[j] == NULL) {
                /* deleted since the ids were read */
                continue;
            }

            free(shas[j]);
            r = next_reply("HMGET");

            if (r->type != REDIS_REPLY_ARRAY || r->elements != 5) {
                die(KEYS_REDIS, "redis: unexpected HMGET reply");
            }

            rows[*nrows].key_id = xstrdup(ids[i + j]);
            rows[*nrows].tenant = reply_dup(r->element[0]);
            rows[*nrows].status = r->element[1]->type == REDIS_REPLY_STRING
                                  ? xstrdup(r->element[1]->str)
                                  : xstrdup("missing");
            rows[*nrows].account = reply_dup(r->element[2]);
            rows[*nrows].expires = reply_dup(r->element[3]);
            rows[*nrows].scopes = reply_dup(r->element[4]);
            (*nrows)++;

            freeReplyObject(r);
        }
    }

    return rows;
}


static void
rows_free(row_t *rows, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        free(rows[i].key_id);
        free(rows[i].tenant);
        free(rows[i].status);
        free(rows[i].account);
        free(rows[i].expires);
        free(rows[i].scopes);
    }

    free(rows);
}


static void
widen(int *w, const char *s)
{
    int  n = (int) strlen(s);

    if (n > *w) {
        *w = n;
    }
}


static int
cmd_list(opts_t *o, char **args)
{
    size_t        i, count, nrows;
    int           w[5];
    char        **ids;
    const char   *cols[5];
    row_t        *rows, *row;
    json_t       *arr, *j;

    if (o->tenant) {
        ids = tenant_ids(o, o->tenant, &count);
    } else {
        ids = scan_ids(o, &count);
    }

    rows = read_rows(o, ids, count, &nrows);
    qsort(rows, nrows, sizeof(row_t), row_cmp);

    for (i = 0; i < count; i++) {
        free(ids[i]);
    }

    free(ids);

    for (i = 0; i < nrows; i++) {
        row = &rows[i];

        /* an active key past its expiry is refused: say so */
        if (strcmp(row->status, "active") == 0 && all_digits(row->expires)
            && strtoll(row->expires, NULL, 10) <= o->now)
        {
            free(row->status);
            row->status = xstrdup("expired");
        }
    }

    if (o->json) {
        arr = json_array();

        for (i = 0; i < nrows; i++) {
            row = &rows[i];
            j = json_object();
            json_object_set_new(j, "key_id", jstr(row->key_id));
            json_object_set_new(j, "tenant", jstr(row->tenant));
            json_object_set_new(j, "status", jstr(row->status));
            json_object_set_new(j, "account_status",
                                jstr(row->account[0] ? row->account
                                                     : "active"));
            json_object_set_new(j, "expires_at",
                                jnum(row->expires[0] ? row->expires : NULL));
            json_object_set_new(j, "scopes", jstr(row->scopes));
            json_array_append_new(arr, j);
        }

        json_print(arr);
        flush_or_die();
        rows_free(rows, nrows);
        return KEYS_OK;
    }

    if (nrows == 0) {
        fprintf(stderr, "apigw-keys: no keys%s%s\n",
                o->tenant ? " for tenant " : "", o->tenant ? o->tenant : "");
        rows_free(rows, nrows);
        return KEYS_OK;
    }

    cols[0] = "KEY_ID";
    cols[1] = "TENANT";
    cols[2] = "STATUS";
    cols[3] = "ACCOUNT";
    cols[4] = "EXPIRES_AT";

    for (i = 0; i < 5; i++) {
        w[i] = (int) strlen(cols[i]);
    }

    for (i = 0; i < nrows; i++) {
        row = &rows[i];
        widen(&w[0], row->key_id);
        widen(&w[1], row->tenant);
        widen(&w[2], row->status);
        widen(&w[3], row->account);
        widen(&w[4], row->expires);
    }

    printf("%-*s  %-*s  %-*s  %-*s  %-*s  SCOPES\n", w[0], cols[0], w[1],
           cols[1], w[2], cols[2], w[3], cols[3], w[4], cols[4]);

    for (i = 0; i < nrows; i++) {
        row = &rows[i];

        printf("%-*s  %-*s  %-*s  %-*s  %-*s  %s\n",
               w[0], row->key_id, w[1], row->tenant, w[2], row->status,
               w[3], row->account[0] ? row->account : "active",
               w[4], row->expires[0] ? row->expires : "-",
               row->scopes[0] ? row->scopes : "-");
    }

    flush_or_die();
    rows_free(rows, nrows);

    return KEYS_OK;
}


static void
show_line(const char *name, const char *v)
{
    char  when[40];

    fmt_time(numeric_field(name) && strcmp(name, "burst") != 0 ? v : NULL,
             when, sizeof(when));

    if (v[0] == '\0') {
        printf("%s\n", name);

    } else if (when[0]) {
        printf("%-15s %s (%s)\n", name, v, when);

    } else {
        printf("%-15s %s\n", name, v);
    }
}


static int
cmd_show(opts_t *o, char **args)
{
    size_t        i, k;
    int           listed;
    found_t       f;
    json_t       *j;
    const char   *name, *v;
    redisReply   *h;

    need_key(o, args[0], &f, 0);
    call_free("UNWATCH", NULL);
    h = f.rec;

    if (o->json) {
        j = json_object();

        for (k = 0; record_order[k]; k++) {
            v = field(h, record_order[k]);
            if (v != NULL) {
                json_object_set_new(j, record_order[k],
                                    numeric_field(record_order[k])
                                    ? jnum(v) : jstr(v));
            }
        }

        for (i = 0; i + 1 < h->elements; i += 2) {
            name = h->element[i]->str;

            for (k = 0, listed = 0; record_order[k]; k++) {
                listed |= strcmp(name, record_order[k]) == 0;
            }

            if (!listed) {
                v = h->element[i + 1]->str;
                json_object_set_new(j, name, numeric_field(name)
                                             ? jnum(v) : jstr(v));
            }
        }

        json_object_set_new(j, "verdict", jstr(verdict(h, o->now)));
        json_print(j);
        flush_or_die();
        found_free(&f);

        return KEYS_OK;
    }

    for (k = 0; record_order[k]; k++) {
        v = field(h, record_order[k]);

        if (v != NULL) {
            show_line(record_order[k], v);
        }
    }

    for (i = 0; i + 1 < h->elements; i += 2) {
        name = h->element[i]->str;

        for (k = 0, listed = 0; record_order[k]; k++) {
            listed |= strcmp(name, record_order[k]) == 0;
        }

        if (listed) {
            continue;
        }

        show_line(name, h->element[i + 1]->str);
    }

    printf("%-15s %s\n", "verdict", verdict(h, o->now));

    flush_or_die();
    found_free(&f);

    return KEYS_OK;
}


static void
print_result(const opts_t *o, const char *id, const char *what)
{
    json_t  *j;

    if (o->json) {
        j = json_object();
        json_object_set_new(j, "key_id", jstr(id));
        json_object_set_new(j, "result", jstr(what));
        json_print(j);

    } else {
        printf("%s: %s\n", what, id);
    }

    flush_or_die();
}


static int
cmd_revoke(opts_t *o, char **args)
{
    int          attempt;
    char        *now;
    found_t      f;
    const char  *st;

    now = fmt_ll(o->now);

    for (attempt = 0; attempt < TX_ATTEMPTS; attempt++) {
        need_key(o, args[0], &f, 0);

        st = field(f.rec, "status");

        if (st != NULL && strcmp(st, "revoked") == 0) {
            call_free("UNWATCH", NULL);
            print_result(o, args[0], "already revoked");
            found_free(&f);
            free(now);
            return KEYS_OK;
        }

        tx_begin();
        tx_add("HSET", f.rec_key, "status", "revoked", "revoked_at", now,
               NULL);

        if (tx_exec()) {
            break;
        }

        found_free(&f);
    }

    if (attempt == TX_ATTEMPTS) {
        tx_contended();
    }

    print_result(o, args[0], "revoked");
    found_free(&f);
    free(now);

    return KEYS_OK;
}


static int
cmd_delete(opts_t *o, char **args)
{
    int          attempt;
    char        *set_key;
    found_t      f;
    const char  *tenant;

    for (attempt = 0; attempt < TX_ATTEMPTS; attempt++) {
        need_key(o, args[0], &f, 1);

        tenant = field(f.index, "tenant");
        if (tenant == NULL) {
            tenant = field(f.rec, "tenant");
        }

        tx_begin();
        tx_add("DEL", f.rec_key, f.keyid_key, NULL);

        if (tenant != NULL) {
            set_key = cat(o->ns, "tenant:", tenant, ":keys", NULL);
            tx_add("SREM", set_key, args[0], NULL);
            free(set_key);
        }

        if (tx_exec()) {
            break;
        }

        found_free(&f);
    }

    if (attempt == TX_ATTEMPTS) {
        tx_contended();
    }

    found_free(&f);
    print_result(o, args[0], "deleted");

    return KEYS_OK;
}


static int
set_account(opts_t *o, const char *tenant, const char *status)
{
    int          attempt, done;
    size_t       i, count, n;
    char        *set_key, *acct_key, *k, **ids, **recs, *now;
    redisReply  *r, *acct;
    json_t      *j;

    if (!name_valid(tenant, TENANT_MAX)) {
        die(KEYS_USAGE, "bad tenant \"%s\": 1-%d characters of "
            "[A-Za-z0-9_.:@-]", tenant, TENANT_MAX);
    }

    set_key = cat(o->ns, "tenant:", tenant, ":keys", NULL);
    acct_key = cat(o->ns, "account:", tenant, NULL);
    now = fmt_ll(o->now);
    n = 0;

    for (attempt = 0, done = 0; !done && attempt < TX_ATTEMPTS; attempt++) {
        /* a key created meanwhile changes the set: the EXEC then fails */
        call_free("WATCH", set_key, acct_key, NULL);

        acct = call("EXISTS", acct_key, NULL);
        ids = tenant_ids(o, tenant, &count);

        if (count == 0 && acct->integer == 0) {
            die(KEYS_NOTFOUND, "no tenant \"%s\"", tenant);
        }

        freeReplyObject(acct);

        recs = xmalloc((count + 1) * sizeof(char *));

        for (i = 0; i < count; i++) {
            k = cat(o->ns, "keyid:", ids[i], NULL);
            append("HGET", k, "sha256", NULL);
            free(k);
        }

        for (i = 0; i < count; i++) {
            r = next_reply("HGET");
            recs[i] = (r->type == REDIS_REPLY_STRING && hex64(r->str, r->len))
                      ? cat(o->ns, "key:", r->str, NULL) : NULL;
            freeReplyObject(r);
        }

        /*
         * Only records that exist are touched: an HSET on a deleted one
         * would bring back a hash with nothing but account_status.
         */
        for (i = 0; i < count; i++) {
            if (recs[i]) {
                append("WATCH", recs[i], NULL);
                append("EXISTS", recs[i], NULL);
            }
        }

        for (i = 0; i < count; i++) {
            if (recs[i]) {
                freeReplyObject(next_reply("WATCH"));
                r = next_reply("EXISTS");

                if (r->integer == 0) {
                    free(recs[i]);
                    recs[i] = NULL;
                }

                freeReplyObject(r);
            }
        }

        tx_begin();
        n = 0;

        for (i = 0; i < count; i++) {
            if (recs[i]) {
                tx_add("HSET", recs[i], "account_status", status, NULL);
                n++;
            }
        }

        tx_add("HSET", acct_key, "status", status, "updated_at", now, NULL);

        done = tx_exec();

        for (i = 0; i < count; i++) {
            free(recs[i]);
            free(ids[i]);
        }

        free(recs);
        free(ids);
    }

    if (!done) {
        tx_contended();
    }

    if (o->json) {
        j = json_object();
        json_object_set_new(j, "tenant", jstr(tenant));
        json_object_set_new(j, "account_status", jstr(status));
        json_object_set_new(j, "keys", json_integer((json_int_t) n));
        json_print(j);

    } else {
        printf("account %s: %s (%zu key%s)\n", tenant, status, n,
               n == 1 ? "" : "s");
    }

    flush_or_die();

    free(set_key);
    free(acct_key);
    free(now);

    return KEYS_OK;
}


static int
cmd_disable(opts_t *o, char **args)
{
    return set_account(o, args[0], "disabled");
}


static int
cmd_enable(opts_t *o, char **args)
{
    return set_account(o, args[0], "active");
}


static int
cmd_rotate(opts_t *o, char **args)
{
    int          attempt, n;
    char         key[APIGW_KEY_PREFIX_MAX + APIGW_KEY_B62_LEN + 1];
    char         sha[APIGW_SHA256_HEX + 1], id[KEY_ID_MAX + 1];
    char         account[32], prefix[APIGW_KEY_PREFIX_MAX + 1];
    char        *keyid_key, *acct_key, *created, *expires, *old_exp;
    char        *tenant, *scopes, *rate, *burst;
    const char  *st, *v;
    found_t      f;
    redisReply  *r;
    json_t      *j;
    long long    until;

    if (o->key_id) {
        snprintf(id, sizeof(id), "%s", o->key_id);
    } else {
        new_key_id(id);
    }

    if (strcmp(id, args[0]) == 0) {
        die(KEYS_USAGE, "--key-id: the new key needs a key_id of its own");
    }

    created = fmt_ll(o->now);
    expires = o->expiry ? fmt_ll(o->expiry) : NULL;
    old_exp = NULL;
    tenant = scopes = rate = burst = NULL;
    acct_key = NULL;
    n = 0;

    for (attempt = 0; attempt < TX_ATTEMPTS; attempt++) {
        need_key(o, args[0], &f, 0);

        st = field(f.rec, "status");

        if (st == NULL || strcmp(st, "active") != 0) {
            die(KEYS_FAIL, "key_id \"%s\" is %s: only an active key can be "
                "rotated; create a new one instead", args[0],
                st ? st : "broken (no status)");
        }

        v = field(f.rec, "tenant");
        if (v == NULL || v[0] == '\0') {
            die(KEYS_FAIL, "key_id \"%s\" has no tenant: broken record",
                args[0]);
        }

        free(tenant);
        free(scopes);
        free(rate);
        free(burst);
        free(acct_key);
        free(old_exp);

        tenant = xstrdup(v);
        v = field(f.rec, "scopes");
        scopes = xstrdup(v ? v : "");
        v = field(f.rec, "rate");
        rate = v ? xstrdup(v) : NULL;
        v = field(f.rec, "burst");
        burst = v ? xstrdup(v) : NULL;

        v = o->prefix ? o->prefix : field(f.rec, "key_prefix");
        snprintf(prefix, sizeof(prefix), "%s",
                 v && apigw_key_prefix_valid(v) ? v : "");

        keyid_key = cat(o->ns, "keyid:", id, NULL);
        acct_key = cat(o->ns, "account:", tenant, NULL);
        call_free("WATCH", keyid_key, acct_key, NULL);

        r = call("EXISTS", keyid_key, NULL);
        free(keyid_key);

        if (r->integer) {
            freeReplyObject(r);

            if (o->key_id) {
                die(KEYS_FAIL, "key_id \"%s\" is already in use", id);
            }

            call_free("UNWATCH", NULL);
            found_free(&f);
            new_key_id(id);
            continue;
        }

        freeReplyObject(r);

        r = call("HGET", acct_key, "status", NULL);
        v = r->type == REDIS_REPLY_STRING ? r->str
                                          : field(f.rec, "account_status");
        snprintf(account, sizeof(account), "%s", v ? v : "active");
        freeReplyObject(r);

        n = apigw_key_generate(prefix, key, sizeof(key));
        if (n < 0) {
            die(KEYS_FAIL, "cannot generate a key: no random bytes");
        }

        apigw_sha256_hex((unsigned char *) key, n, sha);

        tx_begin();
        tx_new_key(o, sha, id, tenant, scopes, account, rate, burst, prefix,
                   expires, created, args[0]);

        if (o->grace_sec > 0) {
            /* the grace period may shorten the old key's life, not extend */
            until = o->now + o->grace_sec;
            v = field(f.rec, "expires_at");
            if (v && all_digits(v) && strlen(v) <= 18
                && strtoll(v, NULL, 10) < until)
            {
                until = strtoll(v, NULL, 10);
            }

            old_exp = fmt_ll(until);
            tx_add("HSET", f.rec_key, "expires_at", old_exp, "rotated_to", id,
                   "rotated_at", created, NULL);

        } else {
            tx_add("HSET", f.rec_key, "status", "revoked", "revoked_at",
                   created, "rotated_to", id, "rotated_at", created, NULL);
        }

        if (tx_exec()) {
            break;
        }

        found_free(&f);
    }

    if (attempt == TX_ATTEMPTS) {
        tx_contended();
    }

    found_free(&f);

    if (o->json) {
        j = json_object();
        json_object_set_new(j, "key", jstr(key));
        json_object_set_new(j, "key_id", jstr(id));
        json_object_set_new(j, "tenant", jstr(tenant));
        json_object_set_new(j, "scopes", jstr(scopes));
        json_object_set_new(j, "account_status", jstr(account));
        json_object_set_new(j, "expires_at", jnum(expires));
        json_object_set_new(j, "rotated_from", jstr(args[0]));
        json_object_set_new(j, "old_status",
                            jstr(old_exp ? "active" : "revoked"));
        json_object_set_new(j, "old_expires_at", jnum(old_exp));
        json_print(j);

    } else {
        printf("key: %s\nkey_id: %s\ntenant: %s\n", key, id, tenant);

        if (old_exp) {
            printf("old key %s: expires at %s\n", args[0], old_exp);
        } else {
            printf("old key %s: revoked\n", args[0]);
        }
    }

    if (fflush(stdout) != 0 || ferror(stdout)) {
        die(KEYS_FAIL, "key %s was stored but could not be printed; "
            "rotate %s again", id, id);
    }

    fprintf(stderr, "apigw-keys: the key is shown only this once; "
            "Redis keeps its SHA-256 only\n");

    OPENSSL_cleanse(key, sizeof(key));
    free(tenant);
    free(scopes);
    free(rate);
    free(burst);
    free(acct_key);
    free(old_exp);
    free(created);
    free(expires);

    return KEYS_OK;
}


/* ---- help ---- */


static const char  manual[] =
"NAME\n"
"    apigw-keys - create and manage the API keys of the apigw nginx module\n"
"\n"
"SYNOPSIS\n"
"    apigw-keys [OPTIONS] COMMAND [ARGUMENTS] [OPTIONS]\n"
"    apigw-keys COMMAND --help\n"
"    apigw-keys --help\n"
"\n"
"DESCRIPTION\n"
"    apigw-keys writes the Redis records that ngx_http_apigw_module reads\n"
"    to authenticate requests (apigw_auth on).  A key is printed once, by\n"
"    create or rotate; Redis keeps only its SHA-256, so a lost key cannot\n"
"    be shown again, only rotated.  Every other command names a key by its\n"
"    key_id, which is not secret.\n"
"\n"
"    Redis layout, NS being the namespace (default \"apigw:\"):\n"
"      NSkey:<sha256 hex>       hash: key_id tenant scopes status\n"
"                               account_status expires_at rate burst\n"
"                               created_at [key_prefix revoked_at\n"
"                               rotated_to rotated_from rotated_at]\n"
"      NSkeyid:<key_id>         hash: sha256 tenant (the index)\n"
"      NStenant:<tenant>:keys   set of the tenant's key_ids\n"
"      NSaccount:<tenant>       hash: status updated_at\n"
"\n"
"    nginx caches lookups (apigw_auth_cache): revoke, delete and\n"
"    disable-account take effect within that cache's ttl.\n"
"\n"
"COMMANDS\n"
"    create --tenant T [--scopes \"a b\"] [--key-id ID] [--prefix P]\n"
"           [--expires-in DUR | --expires-at EPOCH] [--rate RATE]\n"
"           [--burst N]\n"
"        Make a key and print it once, with its key_id.  Its account\n"
"        status is the tenant's (see disable-account).\n"
"\n"
"    list [--tenant T]\n"
"        One line per key: key_id, tenant, status (\"expired\" for an\n"
"        active key past its expiry), account status, expires_at,\n"
"        scopes.  Never prints keys or their hashes.\n"
"\n"
"    show KEY_ID\n"
"        Every field of the key's record, and whether the module would\n"
"        accept it now.\n"
"\n"
"    revoke KEY_ID\n"
"        Mark the key revoked; the module answers invalid_credentials.\n"
"\n"
"    rotate KEY_ID [--grace DUR] [--key-id ID] [--prefix P]\n"
"           [--expires-in DUR | --expires-at EPOCH]\n"
"        Make a new key with the old one's tenant, scopes, rate, burst\n"
"        and prefix, and print it once.  The old key is revoked now, or\n"
"        with --grace expires after DUR (never later than it would have).\n"
"\n"
"    delete KEY_ID\n"
"        Remove the record and its index entries.\n"
"\n"
"    disable-account TENANT\n"
"    enable-account TENANT\n"
"        Set account_status on every key of the tenant, and on the\n"
"        tenant's account record so keys created later inherit it.\n"
"        Keys of a disabled account are answered account_disabled.\n"
"\n"
"    help [COMMAND]\n"
"        This text, or one command's.\n"
"\n"
"OPTIONS\n"
"    Options may come before or after the command.\n"
"\n"
"    --redis ADDR\n"
"        host:port, [ipv6]:port or unix:/path/to.sock.  Default\n"
"        $APIGW_REDIS, else " DEFAULT_REDIS ".\n"
"    --password PASSWORD\n"
"        Redis AUTH password.  Default $APIGW_REDIS_PASSWORD, which is\n"
"        better: other local users can read command lines.\n"
"    --db N\n"
"        Redis database.  Default $APIGW_REDIS_DB, else 0.\n"
"    --namespace NS, --prefix-key NS\n"
"        Prefix of every Redis key; must equal the prefix= of the\n"
"        apigw_redis directive.  Default $APIGW_NAMESPACE, else \""
DEFAULT_NS "\".\n"
"    --json\n"
"        Print JSON instead of text.\n"
"    -h, --help\n"
"        Print this manual, or with a command, its help.\n"
"\n"
"    --tenant T     tenant (account) name: 1-128 of [A-Za-z0-9_.:@-]\n"
"    --scopes S     space- or comma-separated scopes, printable ASCII;\n"
"                   may be given more than once\n"
"    --key-id ID    key_id to use instead of key_ + 16 random hex digits:\n"
"                   1-64 of [A-Za-z0-9_.:@-]\n"
"    --prefix P     text before the random part of the key, e.g. live_:\n"
"                   0-16 of [A-Za-z0-9_]\n"
"    --expires-in DUR   the key expires DUR from now\n"
"    --expires-at EPOCH the key expires at this unix time\n"
"    --rate RATE    per-key rate, Nr/s, Nr/m, Nr/h or Nr/d\n"
"    --burst N      per-key bucket capacity\n"
"    --grace DUR    rotate: how long the old key keeps working\n"
"\n"
"    DUR is a number of seconds, or a number followed by s, m, h, d or w\n"
"    (e.g. 90s, 15m, 1h, 30d, 2w).\n"
"\n"
"EXIT STATUS\n"
"    0   success\n"
"    1   not found: no such key_id or tenant\n"
"    2   usage: unknown command or option, missing or bad value\n"
"    3   Redis: cannot connect, authentication failed, command failed\n"
"    4   other failure: key_id already in use, rotating a key that is\n"
"        not active, no random bytes, output could not be written\n"
"\n"
"ENVIRONMENT\n"
"    APIGW_REDIS, APIGW_REDIS_PASSWORD, APIGW_REDIS_DB, APIGW_NAMESPACE\n"
"        Defaults of --redis, --password, --db and --namespace.\n"
"\n"
"EXAMPLES\n"
"    Create a key for tenant acme, valid 90 days, 100 requests a minute:\n"
"        apigw-keys create --tenant acme --scopes \"orders:read orders:write\""
"\n"
"            --prefix live_ --expires-in 90d --rate 100r/m\n"
"\n"
"    Keys of one tenant, as JSON:\n"
"        apigw-keys list --tenant acme --json\n"
"\n"
"    Replace a key, the old one working one more hour:\n"
"        apigw-keys rotate key_3f9a0c1d2e4b5a69 --grace 1h\n"
"\n"
"    Block a tenant on another Redis:\n"
"        APIGW_REDIS=unix:/run/redis/redis.sock \\\n"
"            apigw-keys disable-account acme\n";


static const cmd_t  commands[] = {
    { "create", cmd_create, 0,
      OPT_TENANT | OPT_SCOPES | OPT_KEY_ID | OPT_PREFIX | OPT_EXPIRES_IN
      | OPT_EXPIRES_AT | OPT_RATE | OPT_BURST,
      "create --tenant T [--scopes \"a b\"] [--key-id ID] [--prefix P]\n"
      "       [--expires-in DUR | --expires-at EPOCH] [--rate RATE] "
      "[--burst N]",
      "Makes a key for tenant T and prints it once (key: and key_id: lines,\n"
      "or a JSON object with --json).  Redis keeps only its SHA-256.\n"
      "The key is P followed by 43 base62 characters from 32 random bytes.\n"
      "Its account_status is the tenant's account status (active for a\n"
      "new tenant).\n"
      "\n"
      "  --tenant T         required; 1-128 of [A-Za-z0-9_.:@-]\n"
      "  --scopes S         space- or comma-separated, may repeat\n"
      "  --key-id ID        default key_ + 16 random hex digits\n"
      "  --prefix P         e.g. live_; 0-16 of [A-Za-z0-9_]\n"
      "  --expires-in DUR   e.g. 30d; or --expires-at EPOCH\n"
      "  --rate RATE        e.g. 100r/m (s, m, h, d)\n"
      "  --burst N          bucket capacity for this key\n" },

    { "list", cmd_list, 0, OPT_TENANT,
      "list [--tenant T]",
      "Lists keys, sorted by tenant and key_id: key_id, tenant, status,\n"
      "account status, expires_at and scopes.  Keys and their hashes are\n"
      "never printed.  An active key past its expiry shows as expired.\n" },

    { "show", cmd_show, 1, 0,
      "show KEY_ID",
      "Prints every field of the key's record (times also in UTC) and the\n"
      "module's verdict on it now.  Exit status 1 if there is no such key.\n" },

    { "revoke", cmd_revoke, 1, 0,
      "revoke KEY_ID",
      "Sets status=revoked and revoked_at.  Revoking a revoked key changes\n"
      "nothing.  Exit status 1 if there is no such key.\n" },

    { "rotate", cmd_rotate, 1,
      OPT_GRACE | OPT_KEY_ID | OPT_PREFIX | OPT_EXPIRES_IN | OPT_EXPIRES_AT,
      "rotate KEY_ID [--grace DUR] [--key-id ID] [--prefix P]\n"
      "       [--expires-in DUR | --expires-at EPOCH]",
      "Makes a new key with the tenant, scopes, rate, burst and prefix of\n"
      "KEY_ID and prints it once.  Without --grace (or with --grace 0) the\n"
      "old key is revoked at once; with --grace DUR it keeps working until\n"
      "DUR from now (or its own expiry, if sooner).  The old record gets\n"
      "rotated_to, the new one rotated_from.  Only active keys rotate.\n" },

    { "delete", cmd_delete, 1, 0,
      "delete KEY_ID",
      "Removes the key's record and index entries.  Prefer revoke, which\n"
      "keeps the record for show and audit.  Exit status 1 if there is no\n"
      "such key.\n" },

    { "disable-account", cmd_disable, 1, 0,
      "disable-account TENANT",
      "Sets account_status=disabled on every key of TENANT and on its\n"
      "account record, so keys created later are disabled too.  The module\n"
      "answers their requests 401 account_disabled.  Exit status 1 if the\n"
      "tenant has no keys and no account record.\n" },

    { "enable-account", cmd_enable, 1, 0,
      "enable-account TENANT",
      "Sets account_status=active on every key of TENANT and on its\n"
      "account record.  Revoked and expired keys stay refused.\n" },

    { NULL, NULL, 0, 0, NULL, NULL }
};


static const cmd_t *
find_cmd(const char *name)
{
    const cmd_t  *c;

    for (c = commands; c->name; c++) {
        if (strcmp(c->name, name) == 0) {
            return c;
        }
    }

    return NULL;
}


static void
cmd_help(const cmd_t *c)
{
    printf("Usage: apigw-keys %s\n\n%s\n"
           "Global options: --redis ADDR, --password PW, --db N, "
           "--namespace NS,\n--json.  See 'apigw-keys --help'.\n",
           c->usage, c->help);
}


/* ---- main ---- */


enum {
    O_REDIS = 256, O_PASSWORD, O_DB, O_NAMESPACE, O_JSON, O_TENANT,
    O_SCOPES, O_KEY_ID, O_PREFIX, O_EXPIRES_IN, O_EXPIRES_AT, O_RATE,
    O_BURST, O_GRACE
};

static const struct option  long_opts[] = {
    { "redis",      required_argument, NULL, O_REDIS },
    { "password",   required_argument, NULL, O_PASSWORD },
    { "db",         required_argument, NULL, O_DB },
    { "namespace",  required_argument, NULL, O_NAMESPACE },
    { "prefix-key", required_argument, NULL, O_NAMESPACE },
    { "json",       no_argument,       NULL, O_JSON },
    { "tenant",     required_argument, NULL, O_TENANT },
    { "scopes",     required_argument, NULL, O_SCOPES },
    { "key-id",     required_argument, NULL, O_KEY_ID },
    { "prefix",     required_argument, NULL, O_PREFIX },
    { "expires-in", required_argument, NULL, O_EXPIRES_IN },
    { "expires-at", required_argument, NULL, O_EXPIRES_AT },
    { "rate",       required_argument, NULL, O_RATE },
    { "burst",      required_argument, NULL, O_BURST },
    { "grace",      required_argument, NULL, O_GRACE },
    { "help",       no_argument,       NULL, 'h' },
    { NULL, 0, NULL, 0 }
};


static const char *
env_or(const char *name, const char *def)
{
    const char  *v = getenv(name);

    return v != NULL && v[0] != '\0' ? v : def;
}


/* Checks option values before anything touches Redis. */
static void
validate(opts_t *o)
{
    const char  *db, *p;
    long long    v;

    db = o->db_set ? NULL : env_or("APIGW_REDIS_DB", NULL);
    if (db != NULL) {
        v = parse_uint(db);
        if (v < 0 || v > 1000000) {
            die(KEYS_USAGE, "APIGW_REDIS_DB: not a database number: \"%s\"",
                db);
        }
        o->db = (long) v;
    }

    if (o->ns[0] == '\0' || strlen(o->ns) > NAMESPACE_MAX) {
        die(KEYS_USAGE, "--namespace: 1-%d characters", NAMESPACE_MAX);
    }

    for (p = o->ns; *p; p++) {
        if ((unsigned char) *p < 0x21 || (unsigned char) *p > 0x7e) {
            die(KEYS_USAGE, "--namespace: printable ASCII without spaces");
        }
    }

    if (o->tenant && !name_valid(o->tenant, TENANT_MAX)) {
        die(KEYS_USAGE, "--tenant: 1-%d characters of [A-Za-z0-9_.:@-]",
            TENANT_MAX);
    }

    if (o->key_id && !name_valid(o->key_id, KEY_ID_MAX)) {
        die(KEYS_USAGE, "--key-id: 1-%d characters of [A-Za-z0-9_.:@-]",
            KEY_ID_MAX);
    }

    if (o->prefix && !apigw_key_prefix_valid(o->prefix)) {
        die(KEYS_USAGE, "--prefix: 0-%d characters of [A-Za-z0-9_]",
            APIGW_KEY_PREFIX_MAX);
    }

    if (o->expires_in && o->expires_at) {
        die(KEYS_USAGE, "--expires-in and --expires-at exclude each other");
    }

    if (o->expires_in) {
        v = parse_duration(o->expires_in);
        if (v <= 0) {
            die(KEYS_USAGE, "--expires-in: a duration such as 3600, 1h or "
                "30d, more than zero");
        }
        o->expiry = o->now + v;
    }

    if (o->expires_at) {
        v = parse_uint(o->expires_at);
        if (v < 0) {
            die(KEYS_USAGE, "--expires-at: unix time in seconds");
        }
        if (v <= o->now) {
            die(KEYS_USAGE, "--expires-at: %s is not in the future",
                o->expires_at);
        }
        o->expiry = v;
    }

    if (o->rate && !rate_valid(o->rate)) {
        die(KEYS_USAGE, "--rate: Nr/s, Nr/m, Nr/h or Nr/d, e.g. 100r/m");
    }

    if (o->burst) {
        v = parse_uint(o->burst);
        if (v < 1 || v > 1000000000) {
            die(KEYS_USAGE, "--burst: a whole number from 1");
        }
    }

    if (o->grace) {
        o->grace_sec = parse_duration(o->grace);
        if (o->grace_sec < 0) {
            die(KEYS_USAGE, "--grace: a duration such as 0, 15m or 1h");
        }
    }
}


int
main(int argc, char **argv)
{
    int            c, i, nargs, rv;
    unsigned       bad;
    char         **args;
    long long      v;
    opts_t         o;
    const char    *name;

    memset(&o, 0, sizeof(o));
    o.redis = env_or("APIGW_REDIS", DEFAULT_REDIS);
    o.password = env_or("APIGW_REDIS_PASSWORD", NULL);
    o.ns = env_or("APIGW_NAMESPACE", DEFAULT_NS);
    o.now = (long long) time(NULL);

    args = xmalloc((argc + 1) * sizeof(char *));
    nargs = 0;
    name = NULL;
    opterr = 0;

    /* "-" keeps operands in place whatever POSIXLY_CORRECT says */
    while ((c = getopt_long(argc, argv, "-h", long_opts, NULL)) != -1) {
        switch (c) {
        case 1:
            if (name == NULL) {
                name = optarg;
                cur_cmd = find_cmd(name);
            } else {
                args[nargs++] = optarg;
            }
            break;
        case 'h':
            o.help = 1;
            break;
        case O_REDIS:
            o.redis = optarg;
            break;
        case O_PASSWORD:
            o.password = optarg;
            break;
        case O_DB:
            v = parse_uint(optarg);
            if (v < 0 || v > 1000000) {
                die(KEYS_USAGE, "--db: not a database number: \"%s\"",
                    optarg);
            }
            o.db = (long) v;
            o.db_set = 1;
            break;
        case O_NAMESPACE:
            o.ns = optarg;
            break;
        case O_JSON:
            o.json = 1;
            break;
        case O_TENANT:
            o.tenant = optarg;
            o.given |= OPT_TENANT;
            break;
        case O_SCOPES:
            scopes_add(&o, optarg);
            o.given |= OPT_SCOPES;
            break;
        case O_KEY_ID:
            o.key_id = optarg;
            o.given |= OPT_KEY_ID;
            break;
        case O_PREFIX:
            o.prefix = optarg;
            o.given |= OPT_PREFIX;
            break;
        case O_EXPIRES_IN:
            o.expires_in = optarg;
            o.given |= OPT_EXPIRES_IN;
            break;
        case O_EXPIRES_AT:
            o.expires_at = optarg;
            o.given |= OPT_EXPIRES_AT;
            break;
        case O_RATE:
            o.rate = optarg;
            o.given |= OPT_RATE;
            break;
        case O_BURST:
            o.burst = optarg;
            o.given |= OPT_BURST;
            break;
        case O_GRACE:
            o.grace = optarg;
            o.given |= OPT_GRACE;
            break;
        default:
            die(KEYS_USAGE, "unknown option, or option without its value: "
                "%s", argv[optind - 1]);
        }
    }

    if (name != NULL && strcmp(name, "help") == 0) {
        if (nargs == 0) {
            fputs(manual, stdout);
            free(args);
            return KEYS_OK;
        }

        cur_cmd = find_cmd(args[0]);
        if (cur_cmd == NULL || nargs > 1) {
            cur_cmd = NULL;
            die(KEYS_USAGE, "no help for \"%s\"", args[0]);
        }

        cmd_help(cur_cmd);
        free(args);
        return KEYS_OK;
    }

    if (o.help) {
        if (cur_cmd != NULL) {
            cmd_help(cur_cmd);
        } else {
            fputs(manual, stdout);
        }
        free(args);
        free(o.scopes);
        return KEYS_OK;
    }

    if (name == NULL) {
        die(KEYS_USAGE, "no command given");
    }

    if (cur_cmd == NULL) {
        die(KEYS_USAGE, "unknown command \"%s\"", name);
    }

    if (nargs != cur_cmd->nargs) {
        die(KEYS_USAGE, nargs < cur_cmd->nargs ? "missing argument: %s"
                                                : "too many arguments: %s",
            cur_cmd->usage);
    }

    bad = o.given & ~cur_cmd->allowed;
    for (i = 0; bad; i++, bad >>= 1) {
        if (bad & 1) {
            die(KEYS_USAGE, "%s does not apply to %s", opt_names[i],
                cur_cmd->name);
        }
    }

    if (cur_cmd->run == cmd_create && o.tenant == NULL) {
        die(KEYS_USAGE, "create needs --tenant");
    }

    validate(&o);
    redis_connect(&o);

    rv = cur_cmd->run(&o, args);

    redisFree(rc);
    free(args);
    free(o.scopes);

    return rv;
}
