/*
 * Upstream error bodies: keep them when they are already in the configured
 * shape, translate known foreign shapes (normalize), else replace them by
 * the envelope of the status's default code.
 *
 * jansson is fine here: this runs only on error bodies of at most
 * APIGW_UPSTREAM_BODY_MAX bytes.  The envelope's strings point into the
 * parsed document (or into blocks chained from it), which lives until
 * apigw_upstream_error_free().
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>

#include "apigw_json.h"
#include "apigw_upstream_error.h"


typedef union apigw_ublock_u  apigw_ublock_t;

union apigw_ublock_u {
    apigw_ublock_t  *next;
    long double      align;
};

typedef struct {
    json_t          *root;
    apigw_ublock_t  *blocks;
} apigw_ue_owned_t;


static const char  apigw_ue_validation_failed[] = "Validation failed.";


static void *
apigw_ue_alloc(apigw_upstream_result_t *res, size_t size)
{
    apigw_ue_owned_t  *o;
    apigw_ublock_t    *b;

    o = res->owned;

    b = malloc(sizeof(apigw_ublock_t) + size);
    if (b == NULL) {
        return NULL;
    }

    b->next = o->blocks;
    o->blocks = b;

    return b + 1;
}


void
apigw_upstream_error_free(apigw_upstream_result_t *res)
{
    apigw_ue_owned_t  *o;
    apigw_ublock_t    *b, *next;

    o = res->owned;

    if (o != NULL) {
        for (b = o->blocks; b != NULL; b = next) {
            next = b->next;
            free(b);
        }

        if (o->root != NULL) {
            json_decref(o->root);
        }

        free(o);
    }

    free(res->body);

    res->owned = NULL;
    res->body = NULL;
    res->body_len = 0;
}


/* At most APIGW_UPSTREAM_MAX_TEXT bytes, never ending inside a character. */
static void
apigw_ue_text(apigw_str_t *dst, const char *s, size_t len)
{
    if (len > APIGW_UPSTREAM_MAX_TEXT) {
        len = APIGW_UPSTREAM_MAX_TEXT;

        while (len > 0 && ((unsigned char) s[len] & 0xC0) == 0x80) {
            len--;
        }
    }

    dst->data = (unsigned char *) s;
    dst->len = len;
}


static const char *
apigw_ue_str(json_t *obj, const char *name, size_t *len)
{
    json_t  *v;

    v = json_is_object(obj) ? json_object_get(obj, name) : NULL;

    if (!json_is_string(v)) {
        return NULL;
    }

    *len = json_string_length(v);

    return json_string_value(v);
}


/* The first of several members that is a string. */
static const char *
apigw_ue_str_any(json_t *obj, const char *const *names, size_t *len)
{
    const char  *s;

    for ( /* void */ ; *names != NULL; names++) {
        s = apigw_ue_str(obj, *names, len);
        if (s != NULL) {
            return s;
        }
    }

    return NULL;
}


static void
apigw_ue_message(apigw_upstream_result_t *res, const char *s, size_t len)
{
    apigw_ue_text(&res->envelope.message, s, len);
    res->envelope.message_literal = 1;
}


/* A foreign code replaces the default only when it is safe to echo. */
static int
apigw_ue_code(apigw_upstream_result_t *res, const char *s, size_t len)
{
    if (s == NULL || !apigw_code_valid((const unsigned char *) s, len)) {
        return 0;
    }

    res->envelope.code.data = (unsigned char *) s;
    res->envelope.code.len = len;

    /* the catalog's doc_url documents the default code, not this one */
    res->envelope.doc_url.data = NULL;
    res->envelope.doc_url.len = 0;

    return 1;
}


static void
apigw_ue_doc_url(apigw_upstream_result_t *res, const char *s, size_t len)
{
    if (s == NULL) {
        return;
    }

    if ((len > 7 && strncasecmp(s, "http://", 7) == 0)
        || (len > 8 && strncasecmp(s, "https://", 8) == 0))
    {
        apigw_ue_text(&res->envelope.doc_url, s, len);
    }
}


static apigw_field_error_t *
apigw_ue_add_error(apigw_upstream_result_t *res, const char *msg,
    size_t len)
{
    apigw_field_error_t  *fe;

    if (res->envelope.nerrors == APIGW_UPSTREAM_MAX_ERRORS) {
        return NULL;
    }

    fe = &res->errors[res->envelope.nerrors++];
    memset(fe, 0, sizeof(apigw_field_error_t));
    apigw_ue_text(&fe->message, msg, len);

    return fe;
}


/*
 * A pydantic "loc" (["body", "items", 0, "name"]) as "items.0.name": the
 * leading part naming where the value came from is dropped unless it is
 * all there is.
 */
static int
apigw_ue_loc(apigw_upstream_result_t *res, json_t *loc, apigw_str_t *out)
{
    apigw_writer_t   w;
    json_t          *v;
    size_t           i, start;
    const char      *s;
    int              pass, first;

    out->len = 0;
    out->data = NULL;

    if (!json_is_array(loc) || json_array_size(loc) == 0) {
        return 0;
    }

    start = 0;
    s = json_string_value(json_array_get(loc, 0));

    if (s != NULL && json_array_size(loc) > 1
        && (strcmp(s, "body") == 0 || strcmp(s, "query") == 0
            || strcmp(s, "path") == 0))
    {
        start = 1;
    }

    w.buf = NULL;

    for (pass = 0; pass < 2; pass++) {
        w.len = 0;
        first = 1;

        for (i = start; i < json_array_size(loc); i++) {
            v = json_array_get(loc, i);

            if (!json_is_string(v) && !json_is_integer(v)) {
                continue;
            }

            if (!first) {
                apigw_w_raw(&w, ".", 1);
            }
            first = 0;

            if (json_is_string(v)) {
                apigw_w_raw(&w, json_string_value(v), json_string_length(v));
            } else {
                apigw_w_int(&w, (long long) json_integer_value(v));
            }
        }

        if (pass == 0) {
            w.buf = apigw_ue_alloc(res, w.len + 1);
            if (w.buf == NULL) {
                return -1;
            }
        }
    }

    apigw_ue_text(out, (const char *) w.buf, w.len);

    return 0;
}


/*
 * One element of an "errors" list, in any of the usual spellings:
 * {"field"|"name"|"pointer"|"param"|"loc", "message"|"msg"|"detail"|
 * "reason", "code"|"type"}, or a bare string.
 */
static int
apigw_ue_field_error(apigw_upstream_result_t *res, json_t *item)
{
    static const char *const  fields[] = {
        "field", "name", "pointer", "param", NULL
    };
    static const char *const  messages[] = {
        "message", "msg", "detail", "reason", NULL
    };
    static const char *const  codes[] = { "code", "type", NULL };

    apigw_field_error_t  *fe;
    const char           *s;
    size_t                len;

    if (json_is_string(item)) {
        apigw_ue_add_error(res, json_string_value(item),
                           json_string_length(item));
        return 0;
    }

    s = apigw_ue_str_any(item, messages, &len);
    if (s == NULL) {
        return 0;
    }

    fe = apigw_ue_add_error(res, s, len);
    if (fe == NULL) {
        return 0;
    }

    s = apigw_ue_str_any(item, fields, &len);

    if (s != NULL) {
        apigw_ue_text(&fe->field, s, len);

    } else if (apigw_ue_loc(res, json_object_get(item, "loc"), &fe->field)
               != 0)
    {
        return -1;
    }

    s = apigw_ue_str_any(item, codes, &len);

    if (s != NULL && apigw_code_valid((const unsigned char *) s, len)) {
        fe->code.data = (unsigned char *) s;
        fe->code.len = len;
    }

    return 0;
}


/* An array of error items, or Laravel's {"field": ["message", ...]}. */
static int
apigw_ue_errors(apigw_upstream_result_t *res, json_t *errors)
{
    apigw_field_error_t  *fe;
    const char           *key;
    json_t               *v, *item;
    size_t                i;

    if (json_is_array(errors)) {
        json_array_foreach(errors, i, item) {
            if (apigw_ue_field_error(res, item) != 0) {
                return -1;
            }
        }

        return 0;
    }

    if (!json_is_object(errors)) {
        return 0;
    }

    json_object_foreach(errors, key, v) {
        if (json_is_string(v)) {
            fe = apigw_ue_add_error(res, json_string_value(v),
                                    json_string_length(v));
            if (fe != NULL) {
                apigw_ue_text(&fe->field, key, strlen(key));
            }
            continue;
        }

        json_array_foreach(v, i, item) {
            if (!json_is_string(item)) {
                continue;
            }

            fe = apigw_ue_add_error(res, json_string_value(item),
                                    json_string_length(item));
            if (fe != NULL) {
                apigw_ue_text(&fe->field, key, strlen(key));
            }
        }
    }

    return 0;
}


/* FastAPI/pydantic: {"detail":[{"loc":[...],"msg":"...","type":"..."}]} */
static int
apigw_ue_pydantic(apigw_upstream_result_t *res, json_t *detail)
{
    apigw_field_error_t  *fe;
    json_t               *item;
    const char           *msg, *type;
    size_t                i, n, len, tlen;

    n = 0;

    json_array_foreach(detail, i, item) {
        msg = apigw_ue_str(item, "msg", &len);
        if (msg == NULL) {
            continue;
        }

        if (n++ == 0) {
            apigw_ue_message(res, msg, len);
        }

        fe = apigw_ue_add_error(res, msg, len);
        if (fe == NULL) {
            continue;
        }

        if (apigw_ue_loc(res, json_object_get(item, "loc"), &fe->field)
            != 0)
        {
            return -1;
        }

        type = apigw_ue_str(item, "type", &tlen);

        if (type != NULL
            && apigw_code_valid((const unsigned char *) type, tlen))
        {
            fe->code.data = (unsigned char *) type;
            fe->code.len = tlen;
        }
    }

    if (n > 1) {
        apigw_ue_message(res, apigw_ue_validation_failed,
                         sizeof(apigw_ue_validation_failed) - 1);
    }

    return n != 0;
}


/* {"error":{"code","message","type","param","doc_url","errors"}} */
static int
apigw_ue_error_object(apigw_upstream_result_t *res, json_t *eo)
{
    const char  *s;
    size_t       len;
    int          matched;

    matched = 0;

    s = apigw_ue_str(eo, "code", &len);
    if (!apigw_ue_code(res, s, len)) {
        s = apigw_ue_str(eo, "type", &len);
        if (!apigw_ue_code(res, s, len)) {
            /* Google APIs put the symbolic code in "status" */
            s = apigw_ue_str(eo, "status", &len);
            matched |= apigw_ue_code(res, s, len);

        } else {
            matched = 1;
        }

    } else {
        matched = 1;
    }

    s = apigw_ue_str(eo, "message", &len);
    if (s != NULL) {
        apigw_ue_message(res, s, len);
        matched = 1;
    }

    if (!matched) {
        return 0;
    }

    s = apigw_ue_str(eo, "param", &len);
    if (s != NULL) {
        apigw_ue_text(&res->envelope.param, s, len);
    }

    s = apigw_ue_str(eo, "doc_url", &len);
    apigw_ue_doc_url(res, s, len);

    return apigw_ue_errors(res, json_object_get(eo, "errors")) == 0 ? 1 : -1;
}


static int
apigw_ue_rfc9457_like(json_t *root)
{
    json_t  *title, *detail;

    title = json_object_get(root, "title");
    detail = json_object_get(root, "detail");

    return (json_is_string(title) || json_is_string(detail))
           && (json_is_string(json_object_get(root, "type"))
               || json_is_string(title)
               || json_is_integer(json_object_get(root, "status")));
}


/* RFC 9457: {"type","title","status","detail"[,"code"][,"errors"]} */
static int
apigw_ue_rfc9457(apigw_upstream_result_t *res, json_t *root)
{
    const char  *s;
    size_t       len;

    s = apigw_ue_str(root, "detail", &len);
    if (s == NULL) {
        s = apigw_ue_str(root, "title", &len);
    }

    if (s != NULL) {
        apigw_ue_message(res, s, len);
    }

    s = apigw_ue_str(root, "code", &len);
    (void) apigw_ue_code(res, s, len);

    s = apigw_ue_str(root, "type", &len);
    apigw_ue_doc_url(res, s, len);

    if (apigw_ue_errors(res, json_object_get(root, "errors")) != 0
        || apigw_ue_errors(res, json_object_get(root, "invalid-params"))
           != 0)
    {
        return -1;
    }

    return 1;
}


/*
 * The foreign shapes in order.  Returns 1 when one matched, 0 when none
 * did (the default envelope stays), -1 on allocation failure.
 */
static int
apigw_ue_normalize(apigw_upstream_result_t *res, json_t *root)
{
    static const char *const  descriptions[] = {
        "message", "error_description", NULL
    };

    json_t      *detail, *error, *errors;
    const char  *s, *msg;
    size_t       len, mlen;
    int          rc, rfc;

    rfc = apigw_ue_rfc9457_like(root);
    detail = json_object_get(root, "detail");

    if (json_is_array(detail)) {
        rc = apigw_ue_pydantic(res, detail);
        if (rc != 0) {
            return rc;
        }
    }

    /* {"detail":"text"} (FastAPI, DRF); an RFC 9457 "detail" waits */
    if (json_is_string(detail) && !rfc) {
        apigw_ue_message(res, json_string_value(detail),
                         json_string_length(detail));
        s = apigw_ue_str(root, "code", &len);
        (void) apigw_ue_code(res, s, len);
        return 1;
    }

    error = json_object_get(root, "error");
    errors = json_object_get(root, "errors");
    msg = apigw_ue_str(root, "message", &mlen);

    /* {"message","errors":[...]}; with a string "error" it is the next */
    if (msg != NULL && (json_is_array(errors) || json_is_object(errors)
                        || error == NULL))
    {
        apigw_ue_message(res, msg, mlen);
        s = apigw_ue_str(root, "code", &len);
        (void) apigw_ue_code(res, s, len);
        return apigw_ue_errors(res, errors) == 0 ? 1 : -1;
    }

    /* {"error":"code","message"|"error_description"} */
    if (json_is_string(error)) {
        s = json_string_value(error);
        len = json_string_length(error);
        msg = apigw_ue_str_any(root, descriptions, &mlen);

        if (!apigw_ue_code(res, s, len) && msg == NULL) {
            /* "error": "Not Found" is a message, not a code */
            msg = s;
            mlen = len;
        }

        if (msg != NULL) {
            apigw_ue_message(res, msg, mlen);
        }

        return 1;
    }

    if (json_is_object(error)) {
        rc = apigw_ue_error_object(res, error);
        if (rc != 0) {
            return rc;
        }
    }

    if (rfc) {
        return apigw_ue_rfc9457(res, root);
    }

    return 0;
}


static json_t *
apigw_ue_at(json_t *root, const apigw_template_path_t *path, size_t len)
{
    json_t  *v;
    size_t   i;

    v = root;

    for (i = 0; i < len && v != NULL; i++) {
        v = json_is_object(v) ? json_object_get(v, path->names[i]) : NULL;
    }

    return v;
}


/*
 * 1 when the body is already in the template's shape (action KEEP, or
 * REPLACE_BODY with the request id added), 0 when not, -1 on allocation
 * failure.
 */
static int
apigw_ue_shape(apigw_upstream_result_t *res, const apigw_template_t *tpl,
    json_t *root, const apigw_str_t *request_id)
{
    const apigw_template_path_t  *cp, *mp, *rp;
    json_t                       *parent, *id;
    const char                   *name;
    size_t                        size;

    if (tpl == NULL) {
        return 0;
    }

    cp = apigw_template_path(tpl, "code");
    mp = apigw_template_path(tpl, "message");
    rp = apigw_template_path(tpl, "request_id");

    if (cp->len == 0 && mp->len == 0) {
        return 0;
    }

    if ((cp->len != 0 && !json_is_string(apigw_ue_at(root, cp, cp->len)))
        || (mp->len != 0 && !json_is_string(apigw_ue_at(root, mp, mp->len))))
    {
        return 0;
    }

    res->action = APIGW_UE_KEEP;

    if (rp->len == 0 || request_id == NULL || request_id->len == 0) {
        return 1;
    }

    parent = apigw_ue_at(root, rp, rp->len - 1);
    name = rp->names[rp->len - 1];

    if (!json_is_object(parent) || json_object_get(parent, name) != NULL) {
        return 1;
    }

    /* NULL only for an id that is not UTF-8, which the glue never makes */
    id = json_stringn((const char *) request_id->data, request_id->len);
    if (id == NULL) {
        return 1;
    }

    if (json_object_set_new(parent, name, id) != 0) {
        return -1;
    }

    size = json_dumpb(root, NULL, 0, JSON_COMPACT);
    if (size == 0) {
        return -1;
    }

    res->body = malloc(size);
    if (res->body == NULL) {
        return -1;
    }

    res->body_len = json_dumpb(root, (char *) res->body, size, JSON_COMPACT);
    res->action = APIGW_UE_REPLACE_BODY;

    return 1;
}


int
apigw_upstream_error_analyze(apigw_upstream_mode_t mode,
    const apigw_template_t *tpl, const apigw_catalog_t *cat, int status,
    const apigw_str_t *content_type, const apigw_str_t *content_encoding,
    const unsigned char *body, size_t len, int truncated,
    const apigw_str_t *request_id, apigw_upstream_result_t *res)
{
    const unsigned char  *p, *end;
    apigw_ue_owned_t     *o;
    json_error_t          jerr;
    int                   rc;

    memset(res, 0, sizeof(apigw_upstream_result_t));

    apigw_envelope_init(&res->envelope, cat, apigw_err_for_status(status));
    res->envelope.status = status;
    res->envelope.errors = res->errors;

    if (request_id != NULL) {
        res->envelope.request_id = *request_id;
    }

    if (mode == APIGW_UPSTREAM_PASS) {
        res->action = APIGW_UE_KEEP;
        return 0;
    }

    res->action = APIGW_UE_ENVELOPE;

    /* a compressed body cannot be read, so it cannot be trusted either */
    if (content_encoding != NULL && content_encoding->len != 0
        && !(content_encoding->len == 8
             && strncasecmp((const char *) content_encoding->data,
                            "identity", 8) == 0))
    {
        return 0;
    }

    if (truncated || body == NULL || len == 0
        || len > APIGW_UPSTREAM_BODY_MAX)
    {
        return 0;
    }

    /* the Content-Type is often wrong both ways: judge by the bytes */
    p = body;
    end = body + len;

    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    {
        p++;
    }

    if (p == end || *p != '{') {
        return 0;
    }

    o = calloc(1, sizeof(apigw_ue_owned_t));
    if (o == NULL) {
        return -1;
    }

    res->owned = o;

    o->root = json_loadb((const char *) body, len, JSON_ALLOW_NUL, &jerr);

    if (o->root == NULL) {
        if (json_error_code(&jerr) == json_error_out_of_memory) {
            goto failed;
        }

        return 0;
    }

    rc = apigw_ue_shape(res, tpl, o->root, request_id);

    if (rc != 0) {
        if (rc < 0) {
            goto failed;
        }

        return 0;
    }

    if (mode != APIGW_UPSTREAM_NORMALIZE) {
        return 0;
    }

    if (apigw_ue_normalize(res, o->root) < 0) {
        goto failed;
    }

    return 0;

failed:

    apigw_upstream_error_free(res);
    return -1;
}
