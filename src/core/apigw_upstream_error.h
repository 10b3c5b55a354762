/*
 * What to do with an upstream error body (status >= 400), decided from the
 * status, Content-Type, Content-Encoding and at most 64 KB of body:
 *
 *   pass       leave it alone (the glue never calls this for pass)
 *   rewrite    a JSON body already in the configured shape passes (the
 *              request id added where missing); anything else becomes the
 *              envelope of the status's code
 *   normalize  as rewrite, and known foreign shapes are translated keeping
 *              their code, message and field errors:
 *                FastAPI/pydantic {"detail":[{"loc","msg","type"}]} / {"detail":"..."}
 *                {"message","errors":[{"field","message"}]}
 *                {"error":"code","message"}
 *                {"error":{"code","message"}}
 *                RFC 9457 problem+json
 */
#ifndef APIGW_UPSTREAM_ERROR_H
#define APIGW_UPSTREAM_ERROR_H

#include "apigw_envelope.h"
#include "apigw_template.h"

#define APIGW_UPSTREAM_BODY_MAX     65536
#define APIGW_UPSTREAM_MAX_ERRORS   32
#define APIGW_UPSTREAM_MAX_TEXT     1024    /* longer messages are cut */

typedef enum {
    APIGW_UPSTREAM_PASS = 0,
    APIGW_UPSTREAM_REWRITE,
    APIGW_UPSTREAM_NORMALIZE
} apigw_upstream_mode_t;

typedef enum {
    APIGW_UE_KEEP = 0,      /* send the upstream body unchanged */
    APIGW_UE_REPLACE_BODY,  /* send result->body (request id added) */
    APIGW_UE_ENVELOPE       /* render result->envelope */
} apigw_ue_action_t;

typedef struct {
    apigw_ue_action_t    action;

    /* APIGW_UE_REPLACE_BODY: malloc'ed, freed by apigw_upstream_error_free */
    unsigned char       *body;
    size_t               body_len;

    /*
     * APIGW_UE_ENVELOPE: filled from the catalog entry of the status, then
     * overridden by what a foreign shape carried (code, message, param,
     * errors, doc_url).  Strings point into storage owned by this result.
     */
    apigw_envelope_t     envelope;
    apigw_field_error_t  errors[APIGW_UPSTREAM_MAX_ERRORS];

    void                *owned;     /* parsed JSON and copies */
} apigw_upstream_result_t;

/*
 * body may be NULL/0 (empty or HEAD).  truncated: the body was over
 * APIGW_UPSTREAM_BODY_MAX and is not parsed.  request_id goes into the
 * envelope and is added to pass-through bodies that lack it.
 * content_encoding: a body with any encoding but identity is not parsed.
 * Returns 0, or -1 on allocation failure.
 */
int apigw_upstream_error_analyze(apigw_upstream_mode_t mode,
    const apigw_template_t *tpl, const apigw_catalog_t *cat, int status,
    const apigw_str_t *content_type, const apigw_str_t *content_encoding,
    const unsigned char *body, size_t len, int truncated,
    const apigw_str_t *request_id, apigw_upstream_result_t *res);

void apigw_upstream_error_free(apigw_upstream_result_t *res);

#endif
