/*
 * Envelope templates: a JSON document whose string values "$code",
 * "$message", "$type", "$title", "$status" (number), "$request_id",
 * "$correlation_id" (5xx only), "$doc_url", "$param", "$details" (object),
 * "$errors" (array of {field,message[,code]}) and "$details.NAME" are
 * replaced at render time; a member whose value is absent is dropped.
 * "$var|literal" falls back to the literal when $var is absent, and a member
 * "...": "$details" spreads the details' members into the enclosing object.
 *
 * Compiled once at configuration time into a tree the renderer walks without
 * any JSON library.
 */
#ifndef APIGW_TEMPLATE_H
#define APIGW_TEMPLATE_H

#include "apigw_envelope.h"

typedef enum {
    APIGW_FMT_ERROR_OBJECT = 0,
    APIGW_FMT_PROBLEM_JSON,
    APIGW_FMT_DATA_ERROR_META,
    APIGW_FMT_ERROR_DETAILS,
    APIGW_FMT_MESSAGE_ERRORS,
    APIGW_FMT__COUNT
} apigw_format_t;

/* "error_object" ... "message_errors"; -1 when unknown. */
int apigw_format_by_name(const char *name, size_t len);

/* The JSON source of a built-in format (documented in README). */
const char *apigw_template_builtin_source(apigw_format_t fmt);

/*
 * Compiles a built-in: NULL only when out of memory.  Free it with
 * apigw_template_free().
 */
apigw_template_t *apigw_template_builtin(apigw_format_t fmt);

/*
 * Compiles a template from JSON text.  NULL with a message in err when the
 * text is not JSON (jansson's line, column and text), the root is not an
 * object, a "$..." placeholder is unknown ("$$..." is a literal "$..."),
 * a "..." member is not "$details", it nests deeper than
 * APIGW_TEMPLATE_MAX_NESTING, or neither $code nor $message appears
 * anywhere.  load_file also fails on an unreadable file or one over
 * 64 KB; err never names the file (nginx prefixes it).
 */
apigw_template_t *apigw_template_compile(const char *json, size_t len,
    char *err, size_t errlen);
apigw_template_t *apigw_template_load_file(const char *path,
    char *err, size_t errlen);
void apigw_template_free(apigw_template_t *t);

/* "application/json", or "application/problem+json" for problem_json. */
const char *apigw_template_content_type(const apigw_template_t *t);
void apigw_template_set_content_type(apigw_template_t *t, const char *ct);

/*
 * The JSON paths (member names from the root) where the template puts
 * $code, $message and $request_id; used to tell whether a foreign body is
 * "already in the configured shape".  path_len 0 when absent.
 */
#define APIGW_TEMPLATE_MAX_DEPTH 4
typedef struct {
    const char  *names[APIGW_TEMPLATE_MAX_DEPTH];
    size_t       len;
} apigw_template_path_t;

const apigw_template_path_t *apigw_template_path(const apigw_template_t *t,
    const char *placeholder);   /* "code", "message" or "request_id" */

/*
 * The compiled form, read only by apigw_envelope_render(): a tree of
 * objects and arrays whose constant parts are pre-serialized JSON text.
 */
#define APIGW_TEMPLATE_MAX_NESTING  16

typedef enum {
    APIGW_TV_CODE = 0,
    APIGW_TV_MESSAGE,
    APIGW_TV_TYPE,
    APIGW_TV_TITLE,
    APIGW_TV_STATUS,
    APIGW_TV_REQUEST_ID,
    APIGW_TV_CORRELATION_ID,
    APIGW_TV_DOC_URL,
    APIGW_TV_PARAM,
    APIGW_TV_DETAILS,
    APIGW_TV_DETAIL,            /* $details.NAME */
    APIGW_TV_ERRORS
} apigw_tvar_t;

typedef enum {
    APIGW_TN_RAW = 0,           /* text: constant JSON */
    APIGW_TN_VAR,               /* a placeholder */
    APIGW_TN_OBJECT,
    APIGW_TN_ARRAY
} apigw_tnode_kind_t;

typedef struct apigw_tnode_s  apigw_tnode_t;

typedef struct {
    apigw_str_t      key;       /* "name": escaped; empty in arrays */
    const char      *name;      /* raw name; spreads skip details so named */
    apigw_tnode_t   *value;     /* NULL: "...": "$details" (a spread) */
} apigw_tmember_t;

struct apigw_tnode_s {
    apigw_tnode_kind_t   kind;
    apigw_tvar_t         var;
    apigw_str_t          text;      /* RAW: JSON; VAR: fallback JSON or "" */
    apigw_str_t          detail;    /* APIGW_TV_DETAIL: the detail's name */
    apigw_tmember_t     *members;   /* OBJECT, ARRAY */
    size_t               nmembers;
};

struct apigw_template_s {
    apigw_tnode_t          *root;
    const char             *content_type;
    apigw_template_path_t   paths[3];   /* code, message, request_id */
    void                   *owned;      /* every allocation of the tree */
};

#endif
