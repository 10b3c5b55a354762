/*
 * One error as the client will see it, and its rendering through a
 * template.  Every string is borrowed: the envelope never owns memory.
 */
#ifndef APIGW_ENVELOPE_H
#define APIGW_ENVELOPE_H

#include "apigw_str.h"
#include "apigw_catalog.h"

#define APIGW_MAX_DETAILS   8

typedef enum {
    APIGW_DETAIL_INT = 0,
    APIGW_DETAIL_STR
} apigw_detail_kind_t;

typedef struct {
    const char          *name;      /* NUL-terminated, a JSON-safe literal */
    apigw_detail_kind_t  kind;
    long long            num;
    apigw_str_t          str;
} apigw_detail_t;

typedef struct {
    apigw_str_t  field;
    apigw_str_t  message;
    apigw_str_t  code;      /* optional */
} apigw_field_error_t;

typedef struct apigw_template_s  apigw_template_t;

typedef struct {
    apigw_str_t                 code;
    apigw_str_t                 type;
    apigw_str_t                 title;
    apigw_str_t                 message;     /* may hold {detail} refs */
    apigw_str_t                 doc_url;     /* explicit doc_url wins */
    apigw_str_t                 doc_base;    /* else doc_base + code */
    apigw_str_t                 param;
    apigw_str_t                 request_id;
    int                         status;

    /*
     * 1: message is upstream text, emitted as is; {name} is never
     * substituted, so an upstream cannot make the renderer interpret it.
     */
    int                         message_literal;

    apigw_detail_t              details[APIGW_MAX_DETAILS];
    size_t                      ndetails;

    const apigw_field_error_t  *errors;
    size_t                      nerrors;
} apigw_envelope_t;

/* Fills code/type/title/message/doc_url/status from a catalog entry. */
void apigw_envelope_init(apigw_envelope_t *e, const apigw_catalog_t *cat,
    apigw_err_id_t id);

/* Adds a detail; silently ignored past APIGW_MAX_DETAILS. */
void apigw_envelope_detail_int(apigw_envelope_t *e, const char *name,
    long long v);
void apigw_envelope_detail_str(apigw_envelope_t *e, const char *name,
    const unsigned char *p, size_t len);

/*
 * Renders e through t.  With out == NULL only measures; returns the number
 * of bytes (written or needed).  Render twice: once to size, once to write.
 */
size_t apigw_envelope_render(const apigw_template_t *t,
    const apigw_envelope_t *e, unsigned char *out);

#endif
