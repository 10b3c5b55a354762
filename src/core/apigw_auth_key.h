/*
 * API-key handling that needs no nginx: parsing the credential header,
 * hashing, generating keys, and judging a key record.
 */
#ifndef APIGW_AUTH_KEY_H
#define APIGW_AUTH_KEY_H

#include "apigw_str.h"

#define APIGW_KEY_MIN_LEN   16
#define APIGW_KEY_MAX_LEN   256
#define APIGW_SHA256_LEN    32
#define APIGW_SHA256_HEX    64
#define APIGW_KEY_B62_LEN   43    /* base62 digits of a 256-bit number */
#define APIGW_KEY_PREFIX_MAX 16   /* longest --prefix, e.g. "live_" */

/*
 * "Bearer <key>" (scheme case-insensitive, spaces around tolerated) ->
 * key.  bearer == 0 takes the whole value as the key (a custom header).
 * Returns 0, or -1 when the value is malformed (other scheme, empty key).
 */
int apigw_auth_parse(const unsigned char *value, size_t len, int bearer,
    apigw_str_t *key);

/* APIGW_KEY_MIN_LEN..APIGW_KEY_MAX_LEN characters of [A-Za-z0-9_.-]. */
int apigw_auth_key_valid(const unsigned char *key, size_t len);

/*
 * SHA-256 of p.  Returns 0, or -1 when OpenSSL failed.  One digest context
 * is kept and reused: not for concurrent use from several threads (nginx
 * workers and apigw-keys are single-threaded).
 */
int apigw_sha256(const unsigned char *p, size_t len,
    unsigned char out[APIGW_SHA256_LEN]);

/* n bytes as 2n lowercase hex characters (no NUL). */
void apigw_hex(const unsigned char *in, size_t n, char *out);

/*
 * Lowercase hex SHA-256, 64 chars plus NUL.  On failure 64 'x', which is
 * not hex and so names no record the tool ever wrote.
 */
void apigw_sha256_hex(const unsigned char *p, size_t len,
    char out[APIGW_SHA256_HEX + 1]);

/* Frees the reused digest context (at process exit; leak checkers). */
void apigw_sha256_done(void);

/*
 * A new key: prefix + 43 base62 characters from 32 CSPRNG bytes.
 * Returns its length, or -1 when out is too small or randomness failed.
 */
int apigw_key_generate(const char *prefix, char *out, size_t outlen);

/* 1 when prefix is NULL or up to APIGW_KEY_PREFIX_MAX of [A-Za-z0-9_]. */
int apigw_key_prefix_valid(const char *prefix);

typedef struct {
    apigw_str_t  key_id;
    apigw_str_t  tenant;
    apigw_str_t  scopes;          /* space-separated */
    apigw_str_t  status;          /* active | revoked */
    apigw_str_t  expires_at;      /* unix seconds, optional */
    apigw_str_t  account_status;  /* active | disabled (or unverified) */
    apigw_str_t  rate;            /* e.g. 100r/m, optional */
    apigw_str_t  burst;           /* optional */
} apigw_key_record_t;

typedef enum {
    APIGW_KEY_OK = 0,
    APIGW_KEY_INVALID,            /* revoked, expired, broken record */
    APIGW_KEY_DISABLED            /* account not active */
} apigw_key_verdict_t;

apigw_key_verdict_t apigw_key_record_check(const apigw_key_record_t *rec,
    long long now);

/* 1 when the space-separated scopes contain scope exactly. */
int apigw_scopes_has(const apigw_str_t *scopes, const unsigned char *scope,
    size_t len);

#endif
