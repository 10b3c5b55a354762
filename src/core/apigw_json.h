/*
 * A two-pass JSON writer: the same code measures (buf == NULL) and then
 * writes into a buffer of exactly that size, so callers allocate once from
 * whatever pool they own and the output length is always exact.
 */
#ifndef APIGW_JSON_H
#define APIGW_JSON_H

#include "apigw_str.h"

typedef struct {
    unsigned char  *buf;    /* NULL: measure only */
    size_t          len;    /* bytes produced so far (written or measured) */
} apigw_writer_t;

void apigw_w_raw(apigw_writer_t *w, const void *data, size_t len);
void apigw_w_lit(apigw_writer_t *w, const char *s);
void apigw_w_int(apigw_writer_t *w, long long v);

/*
 * Writes the bytes as the inside of a JSON string (no quotes): ", \ and
 * control characters are escaped, and any byte sequence that is not valid
 * UTF-8 becomes U+FFFD, so arbitrary input (headers, upstream text) always
 * yields valid JSON.
 */
void apigw_w_escaped(apigw_writer_t *w, const unsigned char *p, size_t len);

/* "…" : the escaped string with quotes. */
void apigw_w_string(apigw_writer_t *w, const unsigned char *p, size_t len);

#endif
