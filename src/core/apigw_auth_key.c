/*
 * API-key handling that needs no nginx: credential parsing, hashing, key
 * generation and the verdict on a key record read from Redis.
 */
#include <limits.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/rand.h>

#include "apigw_auth_key.h"

#define APIGW_KEY_RAND_BYTES  32

static const char  apigw_base62[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static const char  apigw_hex_digits[] = "0123456789abcdef";


static int
apigw_is_ws(unsigned char c)
{
    return c == ' ' || c == '\t';
}


int
apigw_auth_parse(const unsigned char *value, size_t len, int bearer,
    apigw_str_t *key)
{
    const unsigned char  *p, *end;

    if (value == NULL) {
        return -1;
    }

    p = value;
    end = value + len;

    while (p < end && apigw_is_ws(*p)) {
        p++;
    }

    while (end > p && apigw_is_ws(end[-1])) {
        end--;
    }

    if (bearer) {
        /*
         * RFC 9110 auth-schemes are case-insensitive; at least one space
         * must separate the scheme from the credential, or "Bearerabc"
         * would be read as a key.
         */
        if (end - p < 7
            || (p[0] | 0x20) != 'b' || (p[1] | 0x20) != 'e'
            || (p[2] | 0x20) != 'a' || (p[3] | 0x20) != 'r'
            || (p[4] | 0x20) != 'e' || (p[5] | 0x20) != 'r'
            || !apigw_is_ws(p[6]))
        {
            return -1;
        }

        p += 7;

        while (p < end && apigw_is_ws(*p)) {
            p++;
        }
    }

    if (p == end) {
        return -1;
    }

    key->data = (unsigned char *) p;
    key->len = end - p;

    return 0;
}


/* the characters a key may hold: [A-Za-z0-9_.-] */
static const unsigned char  apigw_key_chars[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1,
    ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
    ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
    ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1
};


int
apigw_auth_key_valid(const unsigned char *key, size_t len)
{
    size_t  i;

    if (key == NULL || len < APIGW_KEY_MIN_LEN || len > APIGW_KEY_MAX_LEN) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!apigw_key_chars[key[i]]) {
            return 0;
        }
    }

    return 1;
}


/*
 * OpenSSL 3 looks the algorithm up in its provider tables on every
 * EVP_sha256() digest; fetching it once keeps that lookup off the per-request
 * path.  A race between two first callers only costs one extra reference.
 */
static const EVP_MD *
apigw_sha256_md(void)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    static EVP_MD  *md;

    if (md == NULL) {
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
        if (md == NULL) {
            return EVP_sha256();
        }
    }

    return md;
#else
    return EVP_sha256();
#endif
}


/*
 * EVP_Digest() allocates, zeroes and frees a context on every call, which
 * costs as much as hashing a short key; one context is reset instead.
 */
static EVP_MD_CTX  *apigw_sha256_ctx;


int
apigw_sha256(const unsigned char *p, size_t len,
    unsigned char out[APIGW_SHA256_LEN])
{
    unsigned int  n;

    if (apigw_sha256_ctx == NULL) {
        apigw_sha256_ctx = EVP_MD_CTX_new();
        if (apigw_sha256_ctx == NULL) {
            return -1;
        }
    }

    n = 0;

    if (EVP_DigestInit_ex(apigw_sha256_ctx, apigw_sha256_md(), NULL) != 1
        || EVP_DigestUpdate(apigw_sha256_ctx, p != NULL ? p : (const unsigned char *) "", len) != 1
        || EVP_DigestFinal_ex(apigw_sha256_ctx, out, &n) != 1
        || n != APIGW_SHA256_LEN)
    {
        return -1;
    }

    return 0;
}


void
apigw_sha256_done(void)
{
    EVP_MD_CTX_free(apigw_sha256_ctx);
    apigw_sha256_ctx = NULL;
}


void
apigw_hex(const unsigned char *in, size_t n, char *out)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        out[2 * i] = apigw_hex_digits[in[i] >> 4];
        out[2 * i + 1] = apigw_hex_digits[in[i] & 0x0f];
    }
}


void
apigw_sha256_hex(const unsigned char *p, size_t len,
    char out[APIGW_SHA256_HEX + 1])
{
    unsigned char  md[APIGW_SHA256_LEN];

    if (apigw_sha256(p, len, md) != 0) {
        memset(out, 'x', APIGW_SHA256_HEX);

    } else {
        apigw_hex(md, sizeof(md), out);
    }

    out[APIGW_SHA256_HEX] = '\0';
}


int
apigw_key_prefix_valid(const char *prefix)
{
    size_t  i;
    char    c;

    if (prefix == NULL) {
        return 1;
    }

    for (i = 0; prefix[i] != '\0'; i++) {
        if (i == APIGW_KEY_PREFIX_MAX) {
            return 0;
        }

        c = prefix[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
              || (c >= '0' && c <= '9') || c == '_'))
        {
            return 0;
        }
    }

    return 1;
}


int
apigw_key_generate(const char *prefix, char *out, size_t outlen)
{
    int            i, j;
    size_t         plen;
    unsigned int   acc, rem;
    unsigned char  num[APIGW_KEY_RAND_BYTES];

    if (out == NULL || !apigw_key_prefix_valid(prefix)) {
        return -1;
    }

    plen = prefix != NULL ? strlen(prefix) : 0;

    if (outlen < plen + APIGW_KEY_B62_LEN + 1) {
        return -1;
    }

    if (RAND_bytes(num, sizeof(num)) != 1) {
        return -1;
    }

    memcpy(out, prefix != NULL ? prefix : "", plen);

    /*
     * The 256-bit number written in base 62 (62^43 > 2^256), digit by
     * digit from the lowest: every key keeps all 256 bits, where taking
     * each byte modulo 62 would favour some characters.
     */
    for (i = APIGW_KEY_B62_LEN - 1; i >= 0; i--) {
        rem = 0;

        for (j = 0; j < APIGW_KEY_RAND_BYTES; j++) {
            acc = (rem << 8) | num[j];
            num[j] = (unsigned char) (acc / 62);
            rem = acc % 62;
        }

        out[plen + i] = apigw_base62[rem];
    }

    OPENSSL_cleanse(num, sizeof(num));

    out[plen + APIGW_KEY_B62_LEN] = '\0';

    return (int) (plen + APIGW_KEY_B62_LEN);
}


/* -1 unless the string is 1..19 digits that fit a long long. */
static long long
apigw_parse_epoch(const apigw_str_t *s)
{
    size_t     i;
    long long  v;
    int        d;

    if (s->len == 0 || s->len > 19) {
        return -1;
    }

    v = 0;

    for (i = 0; i < s->len; i++) {
        if (s->data[i] < '0' || s->data[i] > '9') {
            return -1;
        }

        d = s->data[i] - '0';

        if (v > (LLONG_MAX - d) / 10) {
            return -1;
        }

        v = v * 10 + d;
    }

    return v;
}


apigw_key_verdict_t
apigw_key_record_check(const apigw_key_record_t *rec, long long now)
{
    long long  exp;

    if (rec == NULL || rec->key_id.len == 0 || rec->tenant.len == 0) {
        return APIGW_KEY_INVALID;
    }

    if (!apigw_str_eq(&rec->status, "active")) {
        return APIGW_KEY_INVALID;
    }

    /* an empty expires_at is treated as absent: the key never expires */
    if (rec->expires_at.len) {
        exp = apigw_parse_epoch(&rec->expires_at);

        if (exp < 0 || exp <= now) {
            return APIGW_KEY_INVALID;
        }
    }

    /*
     * Checked last so that a revoked or expired key of a disabled account
     * still answers invalid_credentials: the account state is only worth
     * telling to the holder of an otherwise good key.
     */
    if (rec->account_status.len
        && !apigw_str_eq(&rec->account_status, "active"))
    {
        return APIGW_KEY_DISABLED;
    }

    return APIGW_KEY_OK;
}


int
apigw_scopes_has(const apigw_str_t *scopes, const unsigned char *scope,
    size_t len)
{
    const unsigned char  *p, *end, *start;

    if (scopes == NULL || scopes->data == NULL || scope == NULL || len == 0) {
        return 0;
    }

    p = scopes->data;
    end = p + scopes->len;

    while (p < end) {
        while (p < end && apigw_is_ws(*p)) {
            p++;
        }

        start = p;

        while (p < end && !apigw_is_ws(*p)) {
            p++;
        }

        if ((size_t) (p - start) == len && memcmp(start, scope, len) == 0) {
            return 1;
        }
    }

    return 0;
}
