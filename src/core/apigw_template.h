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

/* Compiles a built-in (never fails). Free with apigw_template_free. */
apigw_template_t *apigw_template_builtin(apigw_format_t fmt);

/*
 * Compiles a template from JSON text.  NULL with a message in err when the
 * text is not JSON, the root is not an object, a "$..." placeholder is
 * unknown, or neither $code nor $message appears anywhere.
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

#endif
