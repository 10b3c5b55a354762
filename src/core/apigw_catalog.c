/*
 * The error catalog: built-in defaults and per-deployment overrides.
 *
 * Overrides are applied all-or-nothing: the file is validated completely
 * before the catalog is touched, so a rejected file (nginx -t) leaves the
 * defaults intact.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "apigw_catalog.h"


#define E(id, code, status, type, title, message)                           \
    [id] = { apigw_string(code), apigw_string(type), apigw_string(title),   \
             apigw_string(message), apigw_null_string, status }

#define AUTH    "authentication_error"
#define PERM    "permission_error"
#define REQ     "invalid_request_error"
#define API     "api_error"

static const apigw_catalog_t  apigw_catalog_builtin = {
    {
    E(APIGW_E_MISSING_CREDENTIALS, "missing_credentials", 401, AUTH,
      "Missing credentials", "No API key was provided."),
    E(APIGW_E_INVALID_CREDENTIALS, "invalid_credentials", 401, AUTH,
      "Invalid credentials", "The API key is invalid, revoked or expired."),
    E(APIGW_E_ACCOUNT_DISABLED, "account_disabled", 401, AUTH,
      "Account disabled",
      "The account this API key belongs to is disabled."),
    E(APIGW_E_SCOPE_REQUIRED, "scope_required", 403, PERM,
      "Scope required",
      "This API key lacks the required scope '{required_scope}'."),
    E(APIGW_E_AUTH_UNAVAILABLE, "auth_unavailable", 503, API,
      "Authentication unavailable",
      "API keys cannot be verified right now. "
      "Retry after {retry_after} seconds."),
    E(APIGW_E_RATE_LIMITED, "rate_limited", 429, "rate_limit_error",
      "Rate limited",
      "Rate limit exceeded. Retry after {retry_after} seconds."),
    E(APIGW_E_RATE_LIMITER_UNAVAILABLE, "rate_limiter_unavailable", 503, API,
      "Rate limiter unavailable",
      "The rate limiter is unavailable. Retry after {retry_after} seconds."),
    E(APIGW_E_IDEMPOTENCY_KEY_REQUIRED, "idempotency_key_required", 400, REQ,
      "Idempotency key required",
      "This request requires an Idempotency-Key header."),
    E(APIGW_E_IDEMPOTENCY_KEY_INVALID, "idempotency_key_invalid", 400, REQ,
      "Invalid idempotency key",
      "The Idempotency-Key header must be 1 to 255 printable ASCII "
      "characters without spaces."),
    E(APIGW_E_IDEMPOTENCY_KEY_MISMATCH, "idempotency_key_mismatch", 422, REQ,
      "Idempotency key reused",
      "This Idempotency-Key was already used with a different request."),
    E(APIGW_E_IDEMPOTENCY_KEY_IN_PROGRESS, "idempotency_key_in_progress",
      409, REQ, "Request in progress",
      "A request with this Idempotency-Key is still in progress. "
      "Retry after {retry_after} seconds."),
    E(APIGW_E_IDEMPOTENCY_UNAVAILABLE, "idempotency_unavailable", 503, API,
      "Idempotency unavailable",
      "The idempotency store is unavailable. "
      "Retry after {retry_after} seconds."),
    E(APIGW_E_IDEMPOTENCY_REPLAY_UNAVAILABLE,
      "idempotency_replay_unavailable", 409, REQ, "Replay unavailable",
      "The request with this Idempotency-Key completed, but its response "
      "was too large to store."),

    E(APIGW_E_INVALID_REQUEST, "invalid_request", 400, REQ,
      "Bad request", "The request could not be understood."),
    E(APIGW_E_UNAUTHORIZED, "unauthorized", 401, AUTH,
      "Unauthorized", "Authentication is required."),
    E(APIGW_E_FORBIDDEN, "forbidden", 403, PERM,
      "Forbidden", "Access to this resource is forbidden."),
    E(APIGW_E_NOT_FOUND, "not_found", 404, "not_found_error",
      "Not found", "The requested resource was not found."),
    E(APIGW_E_METHOD_NOT_ALLOWED, "method_not_allowed", 405, REQ,
      "Method not allowed", "The method is not allowed for this resource."),
    E(APIGW_E_NOT_ACCEPTABLE, "not_acceptable", 406, REQ,
      "Not acceptable",
      "The resource cannot be returned in an acceptable format."),
    E(APIGW_E_REQUEST_TIMEOUT, "request_timeout", 408, REQ,
      "Request timeout", "The request was not received in time."),
    E(APIGW_E_CONFLICT, "conflict", 409, REQ,
      "Conflict",
      "The request conflicts with the current state of the resource."),
    E(APIGW_E_GONE, "gone", 410, REQ,
      "Gone", "The requested resource is no longer available."),
    E(APIGW_E_LENGTH_REQUIRED, "length_required", 411, REQ,
      "Length required", "The request must specify its Content-Length."),
    E(APIGW_E_PRECONDITION_FAILED, "precondition_failed", 412, REQ,
      "Precondition failed", "A precondition of the request failed."),
    E(APIGW_E_PAYLOAD_TOO_LARGE, "payload_too_large", 413, REQ,
      "Payload too large", "The request body is too large."),
    E(APIGW_E_URI_TOO_LONG, "uri_too_long", 414, REQ,
      "URI too long", "The request URI is too long."),
    E(APIGW_E_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", 415, REQ,
      "Unsupported media type",
      "The media type of the request body is not supported."),
    E(APIGW_E_RANGE_NOT_SATISFIABLE, "range_not_satisfiable", 416, REQ,
      "Range not satisfiable", "The requested range cannot be satisfied."),
    E(APIGW_E_UNPROCESSABLE_ENTITY, "unprocessable_entity", 422, REQ,
      "Unprocessable entity", "The request could not be processed."),
    E(APIGW_E_TOO_MANY_REQUESTS, "too_many_requests", 429,
      "rate_limit_error", "Too many requests",
      "Too many requests. Slow down and retry later."),
    E(APIGW_E_INTERNAL_ERROR, "internal_error", 500, API,
      "Internal error", "An unexpected error occurred."),
    E(APIGW_E_NOT_IMPLEMENTED, "not_implemented", 501, API,
      "Not implemented", "This functionality is not implemented."),
    E(APIGW_E_UPSTREAM_UNAVAILABLE, "upstream_unavailable", 502, API,
      "Upstream unavailable", "The upstream service is unavailable."),
    E(APIGW_E_SERVICE_UNAVAILABLE, "service_unavailable", 503, API,
      "Service unavailable", "The service is temporarily unavailable."),
    E(APIGW_E_UPSTREAM_TIMEOUT, "upstream_timeout", 504, API,
      "Upstream timeout", "The upstream service did not respond in time."),
    E(APIGW_E_CLIENT_ERROR, "client_error", 400, REQ,
      "Client error", "The request could not be processed."),
    E(APIGW_E_SERVER_ERROR, "server_error", 500, API,
      "Server error", "The upstream service failed."),
    },
    NULL
};

#undef E
#undef AUTH
#undef PERM
#undef REQ
#undef API


/* A block of loaded strings; blocks chain so a catalog can load twice. */
typedef struct apigw_catalog_block_s  apigw_catalog_block_t;

struct apigw_catalog_block_s {
    apigw_catalog_block_t  *next;
};


const apigw_catalog_t *
apigw_catalog_defaults(void)
{
    return &apigw_catalog_builtin;
}


void
apigw_catalog_init(apigw_catalog_t *cat)
{
    memcpy(cat->entries, apigw_catalog_builtin.entries,
           sizeof(cat->entries));
    cat->owned = NULL;
}


void
apigw_catalog_free(apigw_catalog_t *cat)
{
    apigw_catalog_block_t  *b, *next;

    for (b = cat->owned; b != NULL; b = next) {
        next = b->next;
        free(b);
    }

    /* the entries pointed into the blocks just freed */
    apigw_catalog_init(cat);
}


apigw_err_id_t
apigw_err_for_status(int status)
{
    switch (status) {
    case 400: return APIGW_E_INVALID_REQUEST;
    case 401: return APIGW_E_UNAUTHORIZED;
    case 403: return APIGW_E_FORBIDDEN;
    case 404: return APIGW_E_NOT_FOUND;
    case 405: return APIGW_E_METHOD_NOT_ALLOWED;
    case 406: return APIGW_E_NOT_ACCEPTABLE;
    case 408: return APIGW_E_REQUEST_TIMEOUT;
    case 409: return APIGW_E_CONFLICT;
    case 410: return APIGW_E_GONE;
    case 411: return APIGW_E_LENGTH_REQUIRED;
    case 412: return APIGW_E_PRECONDITION_FAILED;
    case 413: return APIGW_E_PAYLOAD_TOO_LARGE;
    case 414: return APIGW_E_URI_TOO_LONG;
    case 415: return APIGW_E_UNSUPPORTED_MEDIA_TYPE;
    case 416: return APIGW_E_RANGE_NOT_SATISFIABLE;
    case 422: return APIGW_E_UNPROCESSABLE_ENTITY;
    case 429: return APIGW_E_TOO_MANY_REQUESTS;
    case 500: return APIGW_E_INTERNAL_ERROR;
    case 501: return APIGW_E_NOT_IMPLEMENTED;
    case 502: return APIGW_E_UPSTREAM_UNAVAILABLE;
    case 503: return APIGW_E_SERVICE_UNAVAILABLE;
    case 504: return APIGW_E_UPSTREAM_TIMEOUT;
    default:
        break;
    }

    /* statuses outside 4xx/5xx never reach here in practice; be total */
    return status >= 500 ? APIGW_E_SERVER_ERROR : APIGW_E_CLIENT_ERROR;
}


int
apigw_err_by_code(const unsigned char *code, size_t len)
{
    const apigw_str_t  *c;
    int                 i;

    for (i = 0; i < APIGW_E__COUNT; i++) {
        c = &apigw_catalog_builtin.entries[i].code;

        if (c->len == len && memcmp(c->data, code, len) == 0) {
            return i;
        }
    }

    return -1;
}


int
apigw_code_valid(const unsigned char *p, size_t len)
{
    size_t         i;
    unsigned char  c;

    if (p == NULL || len == 0 || len > 64) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = p[i];

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-')
        {
            continue;
        }

        return 0;
    }

    return 1;
}


/*
 * One pass over the parsed file.  With store == NULL it validates and adds
 * up the bytes the strings need; with store set (only after a successful
 * validating pass) it copies the strings there and cannot fail.
 */
static int
apigw_catalog_apply(json_t *root, apigw_catalog_entry_t *entries,
    unsigned char **store, size_t *need, char *err, size_t errlen)
{
    const char             *key, *name;
    json_t                 *obj, *v;
    json_int_t              status;
    apigw_str_t            *field;
    apigw_catalog_entry_t  *e;
    size_t                  len;
    int                     id;

    json_object_foreach(root, key, obj) {

        id = apigw_err_by_code((const unsigned char *) key, strlen(key));
        if (id < 0) {
            snprintf(err, errlen, "unknown code \"%.64s\"", key);
            return -1;
        }

        if (!json_is_object(obj)) {
            snprintf(err, errlen, "\"%s\": the value must be an object",
                     key);
            return -1;
        }

        e = &entries[id];

        json_object_foreach(obj, name, v) {

            if (strcmp(name, "status") == 0) {
                if (!json_is_integer(v)) {
                    snprintf(err, errlen,
                             "\"%s\": \"status\" must be an integer", key);
                    return -1;
                }

                status = json_integer_value(v);
                if (status < 400 || status > 599) {
                    snprintf(err, errlen,
                             "\"%s\": \"status\" must be within 400..599",
                             key);
                    return -1;
                }

                e->status = (int) status;
                continue;
            }

            if (strcmp(name, "code") == 0) {
                field = &e->code;
            } else if (strcmp(name, "type") == 0) {
                field = &e->type;
            } else if (strcmp(name, "title") == 0) {
                field = &e->title;
            } else if (strcmp(name, "message") == 0) {
                field = &e->message;
            } else if (strcmp(name, "doc_url") == 0) {
                field = &e->doc_url;
            } else {
                snprintf(err, errlen, "\"%s\": unknown member \"%.64s\"",
                         key, name);
                return -1;
            }

            if (!json_is_string(v)) {
                snprintf(err, errlen, "\"%s\": \"%s\" must be a string",
                         key, name);
                return -1;
            }

            len = json_string_length(v);

            if ((field == &e->code || field == &e->type)
                && !apigw_code_valid((const unsigned char *)
                                     json_string_value(v), len))
            {
                snprintf(err, errlen, "\"%s\": \"%s\" must be 1 to 64 "
                         "characters of [A-Za-z0-9_.-]", key, name);
                return -1;
            }

            if (store == NULL) {
                *need += len + 1;
                continue;
            }

            memcpy(*store, json_string_value(v), len);
            (*store)[len] = '\0';
            field->data = *store;
            field->len = len;
            *store += len + 1;
        }
    }

    return 0;
}


static int
apigw_catalog_load(apigw_catalog_t *cat, json_t *root, char *err,
    size_t errlen)
{
    apigw_catalog_entry_t   scratch[APIGW_E__COUNT];
    apigw_catalog_block_t  *b;
    unsigned char          *store;
    size_t                  need;

    if (!json_is_object(root)) {
        snprintf(err, errlen, "the catalog must be a JSON object");
        return -1;
    }

    need = 0;
    memcpy(scratch, cat->entries, sizeof(scratch));

    if (apigw_catalog_apply(root, scratch, NULL, &need, err, errlen) != 0) {
        return -1;
    }

    b = malloc(sizeof(apigw_catalog_block_t) + need);
    if (b == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }

    b->next = cat->owned;
    cat->owned = b;
    store = (unsigned char *) (b + 1);

    return apigw_catalog_apply(root, cat->entries, &store, &need, err,
                               errlen);
}


static void
apigw_catalog_json_error(const json_error_t *jerr, char *err, size_t errlen)
{
    if (jerr->line > 0) {
        snprintf(err, errlen, "invalid JSON at line %d, column %d: %s",
                 jerr->line, jerr->column, jerr->text);
    } else {
        snprintf(err, errlen, "%s", jerr->text);
    }
}


int
apigw_catalog_load_json(apigw_catalog_t *cat, const char *json,
    size_t len, char *err, size_t errlen)
{
    json_t       *root;
    json_error_t  jerr;
    int           rc;

    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        apigw_catalog_json_error(&jerr, err, errlen);
        return -1;
    }

    rc = apigw_catalog_load(cat, root, err, errlen);
    json_decref(root);

    return rc;
}


int
apigw_catalog_load_file(apigw_catalog_t *cat, const char *path,
    char *err, size_t errlen)
{
    json_t       *root;
    json_error_t  jerr;
    int           rc;

    root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        apigw_catalog_json_error(&jerr, err, errlen);
        return -1;
    }

    rc = apigw_catalog_load(cat, root, err, errlen);
    json_decref(root);

    return rc;
}
