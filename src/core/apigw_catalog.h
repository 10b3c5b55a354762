/*
 * The error catalog: every code apigw can emit, with its default status,
 * type, title, message and doc_url, and the per-deployment overrides loaded
 * from an apigw_error_catalog JSON file.
 *
 * Messages may reference details as {name}; the renderer substitutes them
 * (e.g. "Retry after {retry_after} seconds.").
 */
#ifndef APIGW_CATALOG_H
#define APIGW_CATALOG_H

#include "apigw_str.h"

typedef enum {
    /* the module's own conditions (SPEC "Error conditions") */
    APIGW_E_MISSING_CREDENTIALS = 0,
    APIGW_E_INVALID_CREDENTIALS,
    APIGW_E_ACCOUNT_DISABLED,
    APIGW_E_SCOPE_REQUIRED,
    APIGW_E_AUTH_UNAVAILABLE,
    APIGW_E_RATE_LIMITED,
    APIGW_E_RATE_LIMITER_UNAVAILABLE,
    APIGW_E_IDEMPOTENCY_KEY_REQUIRED,
    APIGW_E_IDEMPOTENCY_KEY_INVALID,
    APIGW_E_IDEMPOTENCY_KEY_MISMATCH,
    APIGW_E_IDEMPOTENCY_KEY_IN_PROGRESS,
    APIGW_E_IDEMPOTENCY_UNAVAILABLE,
    APIGW_E_IDEMPOTENCY_REPLAY_UNAVAILABLE,

    /* HTTP statuses from nginx itself or from an upstream */
    APIGW_E_INVALID_REQUEST,          /* 400 */
    APIGW_E_UNAUTHORIZED,             /* 401 */
    APIGW_E_FORBIDDEN,                /* 403 */
    APIGW_E_NOT_FOUND,                /* 404 */
    APIGW_E_METHOD_NOT_ALLOWED,       /* 405 */
    APIGW_E_NOT_ACCEPTABLE,           /* 406 */
    APIGW_E_REQUEST_TIMEOUT,          /* 408 */
    APIGW_E_CONFLICT,                 /* 409 */
    APIGW_E_GONE,                     /* 410 */
    APIGW_E_LENGTH_REQUIRED,          /* 411 */
    APIGW_E_PRECONDITION_FAILED,      /* 412 */
    APIGW_E_PAYLOAD_TOO_LARGE,        /* 413 */
    APIGW_E_URI_TOO_LONG,             /* 414 */
    APIGW_E_UNSUPPORTED_MEDIA_TYPE,   /* 415 */
    APIGW_E_RANGE_NOT_SATISFIABLE,    /* 416 */
    APIGW_E_UNPROCESSABLE_ENTITY,     /* 422 */
    APIGW_E_TOO_MANY_REQUESTS,        /* 429 from an upstream */
    APIGW_E_INTERNAL_ERROR,           /* 500 */
    APIGW_E_NOT_IMPLEMENTED,          /* 501 */
    APIGW_E_UPSTREAM_UNAVAILABLE,     /* 502 */
    APIGW_E_SERVICE_UNAVAILABLE,      /* 503 */
    APIGW_E_UPSTREAM_TIMEOUT,         /* 504 */
    APIGW_E_CLIENT_ERROR,             /* any other 4xx */
    APIGW_E_SERVER_ERROR,             /* any other 5xx */

    APIGW_E__COUNT
} apigw_err_id_t;

typedef struct {
    apigw_str_t  code;
    apigw_str_t  type;
    apigw_str_t  title;
    apigw_str_t  message;   /* may hold {detail} references */
    apigw_str_t  doc_url;   /* empty: doc_base + code, or absent */
    int          status;
} apigw_catalog_entry_t;

typedef struct {
    apigw_catalog_entry_t  entries[APIGW_E__COUNT];
    void                  *owned;   /* storage of loaded strings */
} apigw_catalog_t;

/* The built-in defaults (static storage, never freed). */
const apigw_catalog_t *apigw_catalog_defaults(void);

/* Copies the defaults into cat (no allocation). */
void apigw_catalog_init(apigw_catalog_t *cat);

/*
 * Applies a JSON catalog file's overrides:
 *   { "rate_limited": { "code": "simio_rate_limited", "status": 429,
 *                       "type": "...", "title": "...", "message": "...",
 *                       "doc_url": "..." }, ... }
 * Keys are the default codes. Returns 0, or -1 with a message naming the
 * problem (unknown code, wrong member type, status out of 400..599, code not
 * matching [A-Za-z0-9_.-]{1,64}, ...) in err.
 */
int apigw_catalog_load_json(apigw_catalog_t *cat, const char *json,
    size_t len, char *err, size_t errlen);
int apigw_catalog_load_file(apigw_catalog_t *cat, const char *path,
    char *err, size_t errlen);
void apigw_catalog_free(apigw_catalog_t *cat);

/* The default code for an HTTP status (404 -> APIGW_E_NOT_FOUND, ...). */
apigw_err_id_t apigw_err_for_status(int status);

/* Looks up a default code name ("rate_limited"); -1 when unknown. */
int apigw_err_by_code(const unsigned char *code, size_t len);

/* [A-Za-z0-9_.-]{1,64}: safe to echo as a code from a foreign body. */
int apigw_code_valid(const unsigned char *p, size_t len);

#endif
