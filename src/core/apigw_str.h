/*
 * Byte strings shared by the pure-C core.
 *
 * apigw_str_t has the same layout as nginx's ngx_str_t ({len, data}) so the
 * glue can hand nginx strings to the core without copying; the core itself
 * never includes an nginx header.
 */
#ifndef APIGW_STR_H
#define APIGW_STR_H

#include <stddef.h>
#include <string.h>

typedef struct {
    size_t          len;
    unsigned char  *data;
} apigw_str_t;

#define apigw_string(s)     { sizeof(s) - 1, (unsigned char *) (s) }
#define apigw_null_string   { 0, NULL }
#define apigw_str_set(str, text)                                              \
    do { (str)->len = sizeof(text) - 1;                                       \
         (str)->data = (unsigned char *) (text); } while (0)

static inline int
apigw_str_eq(const apigw_str_t *s, const char *lit)
{
    size_t n = strlen(lit);
    return s->len == n && (n == 0 || memcmp(s->data, lit, n) == 0);
}

#endif
