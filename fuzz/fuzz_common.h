/*
 * Helpers shared by the libFuzzer targets of fuzz/: splitting an input into
 * fields, building an envelope from them, rendering through the two-pass
 * writer with the invariants every renderer must keep, and checking JSON.
 *
 * Input convention of the structured targets: fields separated by the byte
 * 0x1E (ASCII record separator), so the seeds under fuzz/corpus/ stay
 * readable; a field may hold any other byte.  A target that needs one
 * opaque blob (a template, a body) takes it first, up to a NUL byte, or
 * last, as "the rest".
 *
 * FZ_ASSERT aborts: libFuzzer reports the abort as a crash and keeps the
 * input.  Every target is a single file including this header.
 */
#ifndef APIGW_FUZZ_COMMON_H
#define APIGW_FUZZ_COMMON_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "apigw_json.h"
#include "apigw_catalog.h"
#include "apigw_envelope.h"
#include "apigw_template.h"


#define FZ_SEP  0x1e

#define FZ_ASSERT(cond, what)                                                 \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: invariant broken: %s (%s)\n",             \
                    __FILE__, __LINE__, what, #cond);                         \
            abort();                                                          \
        }                                                                     \
    } while (0)


typedef struct {
    const unsigned char  *p;
    const unsigned char  *end;
} fz_t;


static void
fz_init(fz_t *f, const uint8_t *data, size_t size)
{
    f->p = data;
    f->end = data + size;
}


/* The next field (up to 0x1E or the end); empty once exhausted. */
static apigw_str_t
fz_field(fz_t *f)
{
    apigw_str_t           s;
    const unsigned char  *q;

    s.data = (unsigned char *) f->p;

    q = memchr(f->p, FZ_SEP, (size_t) (f->end - f->p));
    if (q == NULL) {
        q = f->end;
    }

    s.len = (size_t) (q - f->p);
    f->p = (q < f->end) ? q + 1 : q;

    return s;
}


/* Everything left, separators included. */
static apigw_str_t
fz_rest(fz_t *f)
{
    apigw_str_t  s;

    s.data = (unsigned char *) f->p;
    s.len = (size_t) (f->end - f->p);
    f->p = f->end;

    return s;
}


static int
fz_more(const fz_t *f)
{
    return f->p < f->end;
}


/* A field as a decimal long long: optional '-', digits, saturating. */
static long long
fz_int(fz_t *f)
{
    apigw_str_t         s;
    size_t              i;
    int                 neg;
    unsigned long long  v;

    s = fz_field(f);
    v = 0;
    neg = 0;
    i = 0;

    if (s.len && s.data[0] == '-') {
        neg = 1;
        i = 1;
    }

    for ( /* void */ ; i < s.len && s.data[i] >= '0' && s.data[i] <= '9';
         i++)
    {
        if (v > (unsigned long long) LLONG_MAX / 10) {
            v = (unsigned long long) LLONG_MAX;
            break;
        }

        v = v * 10 + (unsigned long long) (s.data[i] - '0');

        if (v > (unsigned long long) LLONG_MAX) {
            v = (unsigned long long) LLONG_MAX;
            break;
        }
    }

    return neg ? -(long long) v : (long long) v;
}


/* A private copy of s in an allocation of exactly s.len bytes (min 1). */
static unsigned char *
fz_dup(const apigw_str_t *s)
{
    unsigned char  *p;

    p = malloc(s->len ? s->len : 1);
    FZ_ASSERT(p != NULL, "out of memory");

    if (s->len) {
        memcpy(p, s->data, s->len);
    }

    return p;
}


/*
 * Strict UTF-8 (RFC 3629: no overlongs, surrogates or > U+10FFFF), written
 * independently of apigw_json.c so the writer is checked against another
 * reading of the rules.
 */
static int
fz_utf8_valid(const unsigned char *p, size_t len)
{
    size_t    i, n, k;
    uint32_t  cp, min;

    for (i = 0; i < len; i += n) {
        if (p[i] < 0x80) {
            n = 1;
            continue;
        }

        if ((p[i] & 0xe0) == 0xc0) {
            n = 2;
            cp = p[i] & 0x1f;
            min = 0x80;

        } else if ((p[i] & 0xf0) == 0xe0) {
            n = 3;
            cp = p[i] & 0x0f;
            min = 0x800;

        } else if ((p[i] & 0xf8) == 0xf0) {
            n = 4;
            cp = p[i] & 0x07;
            min = 0x10000;

        } else {
            return 0;
        }

        if (len - i < n) {
            return 0;
        }

        for (k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            cp = (cp << 6) | (p[i + k] & 0x3f);
        }

        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;
        }
    }

    return 1;
}


/*
 * out is a JSON text apigw produced: valid UTF-8, parsed by jansson with no
 * repeated member name (the renderer promises unique keys), no raw U+2028 or
 * U+2029.  Returns the parsed document (json_decref it).
 */
static json_t *
fz_json_check(const unsigned char *out, size_t len, size_t flags)
{
    json_t        *v;
    json_error_t   err;
    size_t         i;

    FZ_ASSERT(fz_utf8_valid(out, len), "output is valid UTF-8");

    for (i = 0; i + 2 < len; i++) {
        FZ_ASSERT(!(out[i] == 0xe2 && out[i + 1] == 0x80
                    && (out[i + 2] == 0xa8 || out[i + 2] == 0xa9)),
                  "no raw U+2028/U+2029 in the output");
    }

    v = json_loadb((const char *) out, len,
                   JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | flags, &err);
    if (v == NULL) {
        fprintf(stderr, "jansson: %s at %d:%d\n%.*s\n", err.text, err.line,
                err.column, (int) (len > 4096 ? 4096 : len), out);
    }

    FZ_ASSERT(v != NULL, "the output is JSON without repeated keys");

    return v;
}


/*
 * A JSON document apigw passes on or re-serializes from an upstream: JSON
 * (duplicate keys and raw U+2028 are the upstream's business), UTF-8.
 */
static void
fz_json_loose(const unsigned char *p, size_t len)
{
    json_t        *v;
    json_error_t   err;

    FZ_ASSERT(fz_utf8_valid(p, len), "a passed body is valid UTF-8");

    v = json_loadb((const char *) p, len, JSON_ALLOW_NUL, &err);
    FZ_ASSERT(v != NULL, "a passed body is JSON");
    json_decref(v);
}


/*
 * Renders e through t the way the glue does (measure, allocate exactly,
 * write) and checks the output.  Returns it (free it), length in *len.
 */
static unsigned char *
fz_render(const apigw_template_t *t, const apigw_envelope_t *e, size_t *len)
{
    size_t          need, got;
    unsigned char  *out;
    json_t         *v;

    need = apigw_envelope_render(t, e, NULL);
    FZ_ASSERT(need > 0, "an envelope is never empty");

    out = malloc(need);
    FZ_ASSERT(out != NULL, "out of memory");

    got = apigw_envelope_render(t, e, out);
    FZ_ASSERT(got == need, "measured length == written length");

    v = fz_json_check(out, got, 0);
    FZ_ASSERT(json_is_object(v), "the envelope is an object");
    json_decref(v);

    *len = got;

    return out;
}


/*
 * The detail names the glue uses, and a few that clash with template
 * members (a spread must skip those).
 */
static const char *const  fz_detail_names[] = {
    "retry_after", "limit", "policy", "required_scope", "code",
    "message", "request_id", "type", "status", "error", "x"
};

#define FZ_NDETAIL_NAMES                                                      \
    (sizeof(fz_detail_names) / sizeof(fz_detail_names[0]))

#define FZ_MAX_ERRORS  8


/*
 * Fills e from fields:
 *   err-id status flags code type title message doc_url doc_base param
 *   request_id, then items: "D<name index><kind>value" a detail
 *   (kind 'i' an integer, else a string), "E" a field error whose field,
 *   message and code follow as the next three fields.
 * Field bytes stay in the input; errs holds FZ_MAX_ERRORS.
 */
static void
fz_envelope(fz_t *f, const apigw_catalog_t *cat, apigw_envelope_t *e,
    apigw_field_error_t *errs)
{
    apigw_str_t   s;
    long long     id, v;
    size_t        n, i;
    const char   *name;

    id = fz_int(f);
    apigw_envelope_init(e, cat, (apigw_err_id_t) (id < 0 ? -id : id));

    if (fz_more(f)) {
        e->status = (int) fz_int(f);
    }

#define FZ_SET(fld)                                                           \
    do {                                                                      \
        s = fz_field(f);                                                      \
        if (s.len) {                                                          \
            e->fld = s;                                                       \
        }                                                                     \
    } while (0)

    e->message_literal = (int) (fz_int(f) & 1);
    FZ_SET(code);
    FZ_SET(type);
    FZ_SET(title);
    FZ_SET(message);
    FZ_SET(doc_url);
    FZ_SET(doc_base);
    FZ_SET(param);
    FZ_SET(request_id);

#undef FZ_SET

    n = 0;

    while (fz_more(f)) {
        s = fz_field(f);

        if (s.len >= 3 && s.data[0] == 'D') {
            name = fz_detail_names[s.data[1] % FZ_NDETAIL_NAMES];

            if (s.data[2] == 'i') {
                /* digits 0..7 only: 18 of them stay within a long long */
                v = 0;

                for (i = 3; i < s.len && i < 21; i++) {
                    v = v * 10 + (s.data[i] & 7);
                }

                apigw_envelope_detail_int(e, name, (s.len & 1) ? -v : v);

            } else {
                apigw_envelope_detail_str(e, name, s.data + 3, s.len - 3);
            }

            continue;
        }

        if (s.len >= 1 && s.data[0] == 'E' && n < FZ_MAX_ERRORS) {
            memset(&errs[n], 0, sizeof(apigw_field_error_t));
            errs[n].field = fz_field(f);
            errs[n].message = fz_field(f);
            errs[n].code = fz_field(f);
            n++;
        }
    }

    e->errors = n ? errs : NULL;
    e->nerrors = n;
}

#endif
