/*
 * Idempotency core: see apigw_idempotency.h for the record schema, the
 * scripts' arguments and replies.
 */
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "apigw_idempotency.h"


/*
 * Every script validates all its arguments before its first write: Redis
 * does not roll a script back when a later command fails, so a bad ttl
 * discovered by PEXPIRE after HSET would leave a lock that never expires.
 * ttl strings are capped at 15 digits for the same reason (PEXPIRE refuses
 * values beyond a 64-bit millisecond count).
 *
 * A key that exists but is not one of our records is reported, never
 * overwritten or treated as free: guessing there could run a request twice.
 */
const char  apigw_idem_script_claim[] =
    "local k = KEYS[1]\n"
    "local fp, ttl, owner = ARGV[1], ARGV[2], ARGV[3]\n"
    "if not fp or fp == '' or not owner or owner == ''\n"
    "   or not string.match(ttl or '', '^[1-9]%d*$') or #ttl > 15 then\n"
    "  return redis.error_reply('ERR apigw idempotency claim: bad arguments')\n"
    "end\n"
    "local corrupt = 'ERR apigw idempotency: corrupt record'\n"
    "local r = redis.call('HMGET', k, 'state', 'fp')\n"
    "if not r[1] then\n"
    "  if redis.call('EXISTS', k) == 1 then\n"
    "    return redis.error_reply(corrupt)\n"
    "  end\n"
    "  redis.call('HSET', k, 'state', 'in_flight', 'fp', fp,\n"
    "             'owner', owner)\n"
    "  redis.call('PEXPIRE', k, ttl)\n"
    "  return {'claimed'}\n"
    "end\n"
    "if not r[2] then\n"
    "  return redis.error_reply(corrupt)\n"
    "end\n"
    "if r[2] ~= fp then\n"
    "  return {'mismatch'}\n"
    "end\n"
    "if r[1] == 'in_flight' then\n"
    /* a lock without expiry would block the key for good: give it one */
    "  local pttl = redis.call('PTTL', k)\n"
    "  if pttl < 0 then\n"
    "    redis.call('PEXPIRE', k, ttl)\n"
    "    pttl = tonumber(ttl)\n"
    "  end\n"
    "  return {'in_flight', pttl}\n"
    "end\n"
    "if r[1] == 'completed' then\n"
    "  local c = redis.call('HMGET', k, 'status', 'nobody')\n"
    "  local status = tonumber(c[1])\n"
    "  if not status then\n"
    "    return redis.error_reply(corrupt)\n"
    "  end\n"
    "  if c[2] == '1' then\n"
    "    return {'completed_nobody', status}\n"
    "  end\n"
    "  local resp = redis.call('HGET', k, 'resp')\n"
    "  if not resp then\n"
    "    return redis.error_reply(corrupt)\n"
    "  end\n"
    "  return {'completed', status, resp}\n"
    "end\n"
    "return redis.error_reply(corrupt)\n";


/*
 * Stores only while this request still holds the lock, or when the lock
 * lapsed and the key is free: the upstream ran either way, and a stored
 * result is what turns the client's retry into a replay.  A key another
 * request has claimed or completed since is never touched.  DEL then HSET
 * so no field of the in-flight state (owner) survives.
 */
const char  apigw_idem_script_complete[] =
    "local k = KEYS[1]\n"
    "local owner, fp, ttl = ARGV[1], ARGV[2], ARGV[3]\n"
    "local status, mode, rec = ARGV[4], ARGV[5], ARGV[6]\n"
    "if not owner or owner == '' or not fp or fp == ''\n"
    "   or not string.match(ttl or '', '^[1-9]%d*$') or #ttl > 15\n"
    "   or not string.match(status or '', '^[1-9]%d%d$')\n"
    "   or not (mode == 'nobody' or (mode == 'full' and rec)) then\n"
    "  return redis.error_reply("
    "'ERR apigw idempotency complete: bad arguments')\n"
    "end\n"
    "local r = redis.call('HMGET', k, 'state', 'owner', 'fp')\n"
    "local ret\n"
    "if r[1] == 'in_flight' and r[2] == owner then\n"
    "  ret = 1\n"
    "  if r[3] then\n"
    "    fp = r[3]\n"
    "  end\n"
    "elseif not r[1] and redis.call('EXISTS', k) == 0 then\n"
    "  ret = 2\n"
    "else\n"
    "  return 0\n"
    "end\n"
    "redis.call('DEL', k)\n"
    "if mode == 'full' then\n"
    "  redis.call('HSET', k, 'state', 'completed', 'fp', fp,\n"
    "             'status', status, 'resp', rec)\n"
    "else\n"
    "  redis.call('HSET', k, 'state', 'completed', 'fp', fp,\n"
    "             'status', status, 'nobody', '1')\n"
    "end\n"
    "redis.call('PEXPIRE', k, ttl)\n"
    "return ret\n";


const char  apigw_idem_script_release[] =
    "local owner = ARGV[1]\n"
    "if not owner or owner == '' then\n"
    "  return redis.error_reply("
    "'ERR apigw idempotency release: bad arguments')\n"
    "end\n"
    "local r = redis.call('HMGET', KEYS[1], 'state', 'owner')\n"
    "if r[1] == 'in_flight' and r[2] == owner then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";


static void
apigw_idem_hex(const unsigned char *in, size_t n, char *out)
{
    static const char  hex[] = "0123456789abcdef";
    size_t             i;

    for (i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 0x0f];
    }

    out[2 * n] = '\0';
}


static unsigned char
apigw_idem_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char) (c | 0x20) : c;
}


/* lit is lowercase */
static int
apigw_idem_ci_prefix(const unsigned char *p, size_t len, const char *lit)
{
    size_t  i, n;

    n = strlen(lit);

    if (len < n) {
        return 0;
    }

    for (i = 0; i < n; i++) {
        if (apigw_idem_lower(p[i]) != (unsigned char) lit[i]) {
            return 0;
        }
    }

    return 1;
}


static int
apigw_idem_ci_eq(const unsigned char *p, size_t len, const char *lit)
{
    return len == strlen(lit) && apigw_idem_ci_prefix(p, len, lit);
}


/* RFC 9110 tchar */
static int
apigw_idem_token(const unsigned char *p, size_t len)
{
    size_t         i;
    unsigned char  c;

    if (len == 0) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = p[i];

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9'))
        {
            continue;
        }

        if (c == '\0' || strchr("!#$%&'*+-.^_`|~", c) == NULL) {
            return 0;
        }
    }

    return 1;
}


/*
 * What nginx itself would send as a value; anything with NUL, CR or LF in
 * a record is corruption (or an attempt at response splitting).
 */
static int
apigw_idem_value_ok(const unsigned char *p, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (p[i] == '\0' || p[i] == '\r' || p[i] == '\n') {
            return 0;
        }
    }

    return 1;
}


int
apigw_idem_key_parse(const unsigned char *value, size_t len,
    unsigned char *buf, apigw_str_t *key)
{
    size_t                n;
    unsigned char         c;
    const unsigned char  *p, *end;

    if (value == NULL) {
        return -1;
    }

    p = value;
    end = value + len;

    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (end > p && (end[-1] == ' ' || end[-1] == '\t')) {
        end--;
    }

    n = 0;

    if (p < end && *p == '"') {
        p++;

        for ( ;; ) {
            if (p == end) {
                return -1;
            }

            c = *p++;

            if (c == '"') {
                break;
            }

            if (c == '\\') {
                if (p == end) {
                    return -1;
                }

                c = *p++;

                if (c != '"' && c != '\\') {
                    return -1;
                }

            } else if (c < 0x21 || c > 0x7e) {
                return -1;
            }

            if (n == APIGW_IDEM_KEY_MAX) {
                return -1;
            }

            buf[n++] = c;
        }

        /* sf-string parameters or anything else after the string */
        if (p != end) {
            return -1;
        }

    } else {
        if ((size_t) (end - p) > APIGW_IDEM_KEY_MAX) {
            return -1;
        }

        while (p < end) {
            c = *p++;

            if (c < 0x21 || c > 0x7e) {
                return -1;
            }

            buf[n++] = c;
        }
    }

    if (n == 0) {
        return -1;
    }

    key->len = n;
    key->data = buf;

    return 0;
}


static int
apigw_idem_fp_len(EVP_MD_CTX *md, size_t len)
{
    int            i;
    unsigned char  b[8];
    uint64_t       v;

    v = (uint64_t) len;

    for (i = 7; i >= 0; i--) {
        b[i] = (unsigned char) (v & 0xff);
        v >>= 8;
    }

    return EVP_DigestUpdate(md, b, sizeof(b)) == 1 ? 0 : -1;
}


int
apigw_idem_fp_init(apigw_idem_fp_t *fp, const unsigned char *method,
    size_t method_len, const unsigned char *uri, size_t uri_len)
{
    /* the NUL is hashed too: a tag, not a prefix of the method frame */
    static const char  tag[] = "apigw-idempotency-fingerprint-v1";
    EVP_MD_CTX        *md;

    md = EVP_MD_CTX_new();
    fp->md = md;

    if (md == NULL) {
        return -1;
    }

    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1
        || EVP_DigestUpdate(md, tag, sizeof(tag)) != 1
        || apigw_idem_fp_len(md, method_len) != 0
        || (method_len && EVP_DigestUpdate(md, method, method_len) != 1)
        || apigw_idem_fp_len(md, uri_len) != 0
        || (uri_len && EVP_DigestUpdate(md, uri, uri_len) != 1))
    {
        return -1;
    }

    return 0;
}


int
apigw_idem_fp_update(apigw_idem_fp_t *fp, const unsigned char *p,
    size_t len)
{
    if (fp->md == NULL) {
        return -1;
    }

    if (len == 0) {
        return 0;
    }

    return EVP_DigestUpdate(fp->md, p, len) == 1 ? 0 : -1;
}


int
apigw_idem_fp_final(apigw_idem_fp_t *fp, char out[APIGW_IDEM_FP_HEX + 1])
{
    int            rc;
    unsigned int   n;
    unsigned char  d[EVP_MAX_MD_SIZE];

    if (fp->md == NULL) {
        return -1;
    }

    n = 0;
    rc = EVP_DigestFinal_ex(fp->md, d, &n);

    EVP_MD_CTX_free(fp->md);
    fp->md = NULL;

    if (rc != 1 || n != APIGW_IDEM_FP_HEX / 2) {
        return -1;
    }

    apigw_idem_hex(d, n, out);

    return 0;
}


void
apigw_idem_fp_abort(apigw_idem_fp_t *fp)
{
    if (fp->md != NULL) {
        EVP_MD_CTX_free(fp->md);
        fp->md = NULL;
    }
}


int
apigw_idem_header_replayable(const unsigned char *name, size_t len)
{
    size_t  i;

    static const char  *keep[] = {
        "content-type",
        "content-encoding",        /* the stored body is encoded with it */
        "content-language",
        "content-location",
        "content-disposition",
        "content-range",
        "location",
        "cache-control",
        "etag",
        "last-modified",
        "expires",
        "vary",
        "link",
        "allow",                   /* required on a replayed 405 */
        "www-authenticate",        /* required on a replayed 401 */
        NULL
    };

    if (name == NULL || !apigw_idem_token(name, len)) {
        return 0;
    }

    if (len > 2 && apigw_idem_ci_prefix(name, len, "x-")) {
        return !apigw_idem_ci_eq(name, len, "x-request-id")
               && !apigw_idem_ci_prefix(name, len, "x-apigw-")
               && !apigw_idem_ci_prefix(name, len, "x-ratelimit-")
               && !apigw_idem_ci_prefix(name, len, "x-accel-");
    }

    for (i = 0; keep[i] != NULL; i++) {
        if (apigw_idem_ci_eq(name, len, keep[i])) {
            return 1;
        }
    }

    return 0;
}


/* 0 on overflow */
static size_t
apigw_idem_add(size_t a, size_t b)
{
    return (b > SIZE_MAX - a) ? 0 : a + b;
}


/* Size of everything but the body, or 0 when rec cannot be encoded. */
static size_t
apigw_idem_head_size(const apigw_idem_record_t *rec)
{
    size_t                      i, n, kept;
    const apigw_idem_header_t  *h;

    if (rec->status < 100 || rec->status > 999
        || (uint64_t) rec->body.len > 0xffffffffu
        || (rec->body.len && rec->body.data == NULL)
        || (rec->nheaders && rec->headers == NULL))
    {
        return 0;
    }

    n = 1 + 2 + 2 + 4;
    kept = 0;

    for (i = 0; i < rec->nheaders; i++) {
        h = &rec->headers[i];

        if (!apigw_idem_header_replayable(h->name.data, h->name.len)) {
            continue;
        }

        if (++kept > APIGW_IDEM_MAX_HEADERS
            || h->name.len > 0xffff
            || (uint64_t) h->value.len > 0xffffffffu
            || (h->value.len && h->value.data == NULL)
            || !apigw_idem_value_ok(h->value.data, h->value.len))
        {
            return 0;
        }

        n = apigw_idem_add(n, 2 + 4);
        n = n ? apigw_idem_add(n, h->name.len) : 0;
        n = n ? apigw_idem_add(n, h->value.len) : 0;

        if (n == 0) {
            return 0;
        }
    }

    return n;
}


size_t
apigw_idem_record_size(const apigw_idem_record_t *rec)
{
    size_t  head;

    head = apigw_idem_head_size(rec);

    return head ? apigw_idem_add(head, rec->body.len) : 0;
}


static unsigned char *
apigw_idem_put(unsigned char *p, uint64_t v, int bytes)
{
    int  i;

    for (i = bytes - 1; i >= 0; i--) {
        p[i] = (unsigned char) (v & 0xff);
        v >>= 8;
    }

    return p + bytes;
}


size_t
apigw_idem_record_encode_head(const apigw_idem_record_t *rec,
    unsigned char *out, size_t size)
{
    size_t                      i, head, kept;
    unsigned char              *p;
    const apigw_idem_header_t  *h;

    head = apigw_idem_head_size(rec);

    if (head == 0 || head > size || out == NULL) {
        return 0;
    }

    kept = 0;

    for (i = 0; i < rec->nheaders; i++) {
        if (apigw_idem_header_replayable(rec->headers[i].name.data,
                                         rec->headers[i].name.len))
        {
            kept++;
        }
    }

    p = out;
    *p++ = APIGW_IDEM_RECORD_VERSION;
    p = apigw_idem_put(p, rec->status, 2);
    p = apigw_idem_put(p, kept, 2);

    for (i = 0; i < rec->nheaders; i++) {
        h = &rec->headers[i];

        if (!apigw_idem_header_replayable(h->name.data, h->name.len)) {
            continue;
        }

        p = apigw_idem_put(p, h->name.len, 2);
        memcpy(p, h->name.data, h->name.len);
        p += h->name.len;

        p = apigw_idem_put(p, h->value.len, 4);

        if (h->value.len) {
            memcpy(p, h->value.data, h->value.len);
            p += h->value.len;
        }
    }

    p = apigw_idem_put(p, rec->body.len, 4);

    return (size_t) (p - out);
}


size_t
apigw_idem_record_encode(const apigw_idem_record_t *rec, unsigned char *out,
    size_t size)
{
    size_t  total, head;

    total = apigw_idem_record_size(rec);

    if (total == 0 || total > size) {
        return 0;
    }

    head = apigw_idem_record_encode_head(rec, out, size);

    if (head == 0) {
        return 0;
    }

    if (rec->body.len) {
        memcpy(out + head, rec->body.data, rec->body.len);
    }

    return head + rec->body.len;
}


static uint64_t
apigw_idem_get(const unsigned char *p, int bytes)
{
    int       i;
    uint64_t  v;

    v = 0;

    for (i = 0; i < bytes; i++) {
        v = (v << 8) | p[i];
    }

    return v;
}


int
apigw_idem_record_decode(const unsigned char *p, size_t len,
    apigw_idem_header_t *headers, size_t max, apigw_idem_record_t *rec)
{
    size_t                i, count, kept, nl, vl, bl;
    unsigned              status;
    const unsigned char  *end, *name, *value;

    /* every length is checked against what is left before it is used */
#define apigw_idem_need(n)                                                    \
    do {                                                                      \
        if ((size_t) (end - p) < (size_t) (n)) {                              \
            return -1;                                                        \
        }                                                                     \
    } while (0)

    if (p == NULL) {
        return -1;
    }

    end = p + len;

    apigw_idem_need(1 + 2 + 2);

    if (p[0] != APIGW_IDEM_RECORD_VERSION) {
        return -1;
    }

    status = (unsigned) apigw_idem_get(p + 1, 2);
    count = (size_t) apigw_idem_get(p + 3, 2);
    p += 5;

    if (status < 100 || status > 999 || count > APIGW_IDEM_MAX_HEADERS) {
        return -1;
    }

    kept = 0;

    for (i = 0; i < count; i++) {
        apigw_idem_need(2);
        nl = (size_t) apigw_idem_get(p, 2);
        p += 2;

        apigw_idem_need(nl);
        name = p;
        p += nl;

        apigw_idem_need(4);
        vl = (size_t) apigw_idem_get(p, 4);
        p += 4;

        apigw_idem_need(vl);
        value = p;
        p += vl;

        if (!apigw_idem_token(name, nl) || !apigw_idem_value_ok(value, vl)) {
            return -1;
        }

        if (!apigw_idem_header_replayable(name, nl)) {
            continue;
        }

        if (kept == max) {
            return -1;
        }

        headers[kept].name.len = nl;
        headers[kept].name.data = (unsigned char *) name;
        headers[kept].value.len = vl;
        headers[kept].value.data = (unsigned char *) value;
        kept++;
    }

    apigw_idem_need(4);
    bl = (size_t) apigw_idem_get(p, 4);
    p += 4;

    if ((size_t) (end - p) != bl) {
        return -1;
    }

#undef apigw_idem_need

    rec->status = status;
    rec->headers = headers;
    rec->nheaders = kept;
    rec->body.len = bl;
    rec->body.data = (unsigned char *) p;

    return 0;
}


int
apigw_idem_storable(unsigned status)
{
    if (status < 200 || status >= 500) {
        return 0;
    }

    switch (status) {
    case 408:
    case 409:
    case 425:
    case 429:
        return 0;
    default:
        return 1;
    }
}


size_t
apigw_idem_redis_key_len(size_t prefix_len, size_t tenant_len)
{
    return prefix_len + sizeof("idem:{") - 1 + tenant_len
           + sizeof("}:") - 1 + APIGW_IDEM_FP_HEX;
}


size_t
apigw_idem_redis_key(const apigw_str_t *prefix, const apigw_str_t *tenant,
    const apigw_str_t *key, unsigned char *out, size_t size)
{
    apigw_str_t  none = { 0, NULL };

    return apigw_idem_redis_key_ns(prefix, tenant, &none, key, out, size);
}


static int
apigw_idem_key_digest(const apigw_str_t *ns, const apigw_str_t *key,
    unsigned char *d, unsigned int *dn)
{
    int             ok;
    size_t          i;
    EVP_MD_CTX     *md;
    unsigned char   len[8];

    if (ns->len == 0) {
        return EVP_Digest(key->data, key->len, d, dn, EVP_sha256(), NULL)
               == 1 ? 0 : -1;
    }

    for (i = 0; i < 8; i++) {
        len[i] = (unsigned char) ((uint64_t) ns->len >> (56 - 8 * i));
    }

    md = EVP_MD_CTX_new();
    if (md == NULL) {
        return -1;
    }

    ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1
         && EVP_DigestUpdate(md, len, sizeof(len)) == 1
         && EVP_DigestUpdate(md, ns->data, ns->len) == 1
         && EVP_DigestUpdate(md, key->data, key->len) == 1
         && EVP_DigestFinal_ex(md, d, dn) == 1;

    EVP_MD_CTX_free(md);

    return ok ? 0 : -1;
}


size_t
apigw_idem_redis_key_ns(const apigw_str_t *prefix, const apigw_str_t *tenant,
    const apigw_str_t *ns, const apigw_str_t *key, unsigned char *out,
    size_t size)
{
    size_t          n;
    unsigned int    dn;
    unsigned char  *p, d[EVP_MAX_MD_SIZE];
    char            hex[APIGW_IDEM_FP_HEX + 1];

    n = apigw_idem_redis_key_len(prefix->len, tenant->len);

    if (n > size || key->len == 0) {
        return 0;
    }

    dn = 0;

    if (apigw_idem_key_digest(ns, key, d, &dn) != 0
        || dn != APIGW_IDEM_FP_HEX / 2)
    {
        return 0;
    }

    apigw_idem_hex(d, dn, hex);

    p = out;

    if (prefix->len) {
        memcpy(p, prefix->data, prefix->len);
        p += prefix->len;
    }

    memcpy(p, "idem:{", sizeof("idem:{") - 1);
    p += sizeof("idem:{") - 1;

    if (tenant->len) {
        memcpy(p, tenant->data, tenant->len);
        p += tenant->len;
    }

    memcpy(p, "}:", 2);
    p += 2;

    memcpy(p, hex, APIGW_IDEM_FP_HEX);

    return n;
}


int
apigw_idem_owner_token(char out[APIGW_IDEM_OWNER_LEN + 1])
{
    unsigned char  rnd[APIGW_IDEM_OWNER_LEN / 2];

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        return -1;
    }

    apigw_idem_hex(rnd, sizeof(rnd), out);

    return 0;
}
