/*
 * Template compilation.  jansson is used here, at configuration time only:
 * the tree built below is walked by apigw_envelope_render() with nothing
 * but the two-pass writer, so rendering never allocates.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "apigw_json.h"
#include "apigw_template.h"


#define APIGW_TEMPLATE_FILE_MAX  65536

#define APIGW_TP_CODE        0
#define APIGW_TP_MESSAGE     1
#define APIGW_TP_REQUEST_ID  2


/* every allocation of a template is one of these, chained from t->owned */
typedef union apigw_tblock_u  apigw_tblock_t;

union apigw_tblock_u {
    apigw_tblock_t  *next;
    long double      align;
};


typedef struct {
    apigw_template_t  *t;
    char              *err;
    size_t             errlen;
    int                has_code_or_message;

    /* member names from the root to the value being compiled */
    const char        *names[APIGW_TEMPLATE_MAX_DEPTH];
    size_t             nnames;
    int                path_ok;     /* 0 inside arrays or too deep */
} apigw_tctx_t;


static const struct {
    const char    *name;
    apigw_tvar_t   var;
} apigw_tvars[] = {
    { "code", APIGW_TV_CODE },
    { "message", APIGW_TV_MESSAGE },
    { "type", APIGW_TV_TYPE },
    { "title", APIGW_TV_TITLE },
    { "status", APIGW_TV_STATUS },
    { "request_id", APIGW_TV_REQUEST_ID },
    { "correlation_id", APIGW_TV_CORRELATION_ID },
    { "doc_url", APIGW_TV_DOC_URL },
    { "param", APIGW_TV_PARAM },
    { "details", APIGW_TV_DETAILS },
    { "errors", APIGW_TV_ERRORS }
};


static const char  *apigw_format_names[APIGW_FMT__COUNT] = {
    "error_object",
    "problem_json",
    "data_error_meta",
    "error_details",
    "message_errors"
};


static const char  *apigw_builtin_sources[APIGW_FMT__COUNT] = {

    "{\"error\":{\"type\":\"$type\",\"code\":\"$code\","
    "\"message\":\"$message\",\"param\":\"$param\","
    "\"doc_url\":\"$doc_url\",\"details\":\"$details\","
    "\"errors\":\"$errors\",\"correlation_id\":\"$correlation_id\"},"
    "\"request_id\":\"$request_id\"}",

    "{\"type\":\"$doc_url|about:blank\",\"title\":\"$title\","
    "\"status\":\"$status\",\"detail\":\"$message\",\"code\":\"$code\","
    "\"param\":\"$param\",\"errors\":\"$errors\","
    "\"request_id\":\"$request_id\","
    "\"correlation_id\":\"$correlation_id\",\"...\":\"$details\"}",

    "{\"data\":null,\"error\":\"$code\",\"meta\":{"
    "\"request_id\":\"$request_id\","
    "\"correlation_id\":\"$correlation_id\",\"message\":\"$message\","
    "\"param\":\"$param\",\"errors\":\"$errors\",\"...\":\"$details\"}}",

    "{\"error\":{\"code\":\"$code\",\"message\":\"$message\","
    "\"param\":\"$param\",\"details\":\"$details\","
    "\"errors\":\"$errors\",\"request_id\":\"$request_id\","
    "\"correlation_id\":\"$correlation_id\"}}",

    "{\"message\":\"$message\",\"code\":\"$code\",\"errors\":\"$errors\","
    "\"details\":\"$details\",\"request_id\":\"$request_id\","
    "\"correlation_id\":\"$correlation_id\"}"
};


static const char  apigw_ct_json[] = "application/json";
static const char  apigw_ct_problem[] = "application/problem+json";


static void *
apigw_tpl_alloc(apigw_template_t *t, size_t size)
{
    apigw_tblock_t  *b;

    b = calloc(1, sizeof(apigw_tblock_t) + size);
    if (b == NULL) {
        return NULL;
    }

    b->next = t->owned;
    t->owned = b;

    return b + 1;
}


void
apigw_template_free(apigw_template_t *t)
{
    apigw_tblock_t  *b, *next;

    if (t == NULL) {
        return;
    }

    for (b = t->owned; b != NULL; b = next) {
        next = b->next;
        free(b);
    }

    free(t);
}


int
apigw_format_by_name(const char *name, size_t len)
{
    int  i;

    for (i = 0; i < APIGW_FMT__COUNT; i++) {
        if (strlen(apigw_format_names[i]) == len
            && memcmp(apigw_format_names[i], name, len) == 0)
        {
            return i;
        }
    }

    return -1;
}


const char *
apigw_template_builtin_source(apigw_format_t fmt)
{
    if ((unsigned) fmt >= APIGW_FMT__COUNT) {
        return NULL;
    }

    return apigw_builtin_sources[fmt];
}


const char *
apigw_template_content_type(const apigw_template_t *t)
{
    return t->content_type;
}


void
apigw_template_set_content_type(apigw_template_t *t, const char *ct)
{
    size_t   len;
    char    *copy;

    /* the caller's string may live in a pool freed before the template */
    len = strlen(ct);
    copy = apigw_tpl_alloc(t, len + 1);

    if (copy != NULL) {
        memcpy(copy, ct, len + 1);
        t->content_type = copy;
    }
}


const apigw_template_path_t *
apigw_template_path(const apigw_template_t *t, const char *placeholder)
{
    static const apigw_template_path_t  none;

    if (t == NULL) {
        return &none;
    }

    if (strcmp(placeholder, "code") == 0) {
        return &t->paths[APIGW_TP_CODE];
    }

    if (strcmp(placeholder, "message") == 0) {
        return &t->paths[APIGW_TP_MESSAGE];
    }

    if (strcmp(placeholder, "request_id") == 0) {
        return &t->paths[APIGW_TP_REQUEST_ID];
    }

    return &none;
}


/*
 * Classifies a template string: 0 a literal (no "$", or "$$..."), 1 a
 * placeholder (var, detail name and "|fallback" filled in; fallback->data
 * NULL when there is none), -1 an unknown "$name".
 */
static int
apigw_tpl_placeholder(const char *s, size_t len, apigw_tvar_t *var,
    apigw_str_t *detail, apigw_str_t *fallback)
{
    const char  *bar;
    size_t       nlen, i;

    if (len == 0 || s[0] != '$' || (len > 1 && s[1] == '$')) {
        return 0;
    }

    s++;
    len--;

    fallback->data = NULL;
    fallback->len = 0;
    detail->data = NULL;
    detail->len = 0;

    bar = memchr(s, '|', len);
    nlen = (bar != NULL) ? (size_t) (bar - s) : len;

    if (bar != NULL) {
        fallback->data = (unsigned char *) bar + 1;
        fallback->len = len - nlen - 1;
    }

    if (nlen > 8 && memcmp(s, "details.", 8) == 0) {
        *var = APIGW_TV_DETAIL;
        detail->data = (unsigned char *) s + 8;
        detail->len = nlen - 8;
        return 1;
    }

    for (i = 0; i < sizeof(apigw_tvars) / sizeof(apigw_tvars[0]); i++) {
        if (strlen(apigw_tvars[i].name) == nlen
            && memcmp(apigw_tvars[i].name, s, nlen) == 0)
        {
            *var = apigw_tvars[i].var;
            return 1;
        }
    }

    return -1;
}


static int
apigw_tpl_is_spread(const char *key)
{
    return strcmp(key, "...") == 0;
}


/*
 * Validates the whole document in order, so the first problem reported is
 * the first in the file.  Returns -1 on error, 0 for a constant subtree,
 * 1 when the subtree holds placeholders.
 */
static int
apigw_tpl_scan(apigw_tctx_t *ctx, json_t *v, int depth)
{
    const char   *key, *s;
    json_t       *child;
    size_t        i, len;
    apigw_tvar_t  var;
    apigw_str_t   detail, fallback;
    int           rc, any;

    any = 0;

    switch (json_typeof(v)) {

    case JSON_OBJECT:
    case JSON_ARRAY:
        if (depth > APIGW_TEMPLATE_MAX_NESTING) {
            snprintf(ctx->err, ctx->errlen,
                     "the template nests deeper than %d levels",
                     APIGW_TEMPLATE_MAX_NESTING);
            return -1;
        }

        if (json_is_array(v)) {
            json_array_foreach(v, i, child) {
                rc = apigw_tpl_scan(ctx, child, depth + 1);
                if (rc < 0) {
                    return -1;
                }
                any |= rc;
            }

            return any;
        }

        json_object_foreach(v, key, child) {
            if (apigw_tpl_is_spread(key)) {
                if (!json_is_string(child)
                    || strcmp(json_string_value(child), "$details") != 0)
                {
                    snprintf(ctx->err, ctx->errlen,
                             "the member \"...\" must be \"$details\"");
                    return -1;
                }

                any = 1;
                continue;
            }

            rc = apigw_tpl_scan(ctx, child, depth + 1);
            if (rc < 0) {
                return -1;
            }
            any |= rc;
        }

        return any;

    case JSON_STRING:
        s = json_string_value(v);
        len = json_string_length(v);

        rc = apigw_tpl_placeholder(s, len, &var, &detail, &fallback);

        if (rc < 0) {
            len = (fallback.data != NULL)
                  ? (size_t) ((const char *) fallback.data - s - 1) : len;
            snprintf(ctx->err, ctx->errlen, "unknown placeholder \"%.*s\" "
                     "(a literal string starting with \"$\" is written "
                     "\"$$...\")", (int) (len > 64 ? 64 : len), s);
            return -1;
        }

        if (rc == 1 && (var == APIGW_TV_CODE || var == APIGW_TV_MESSAGE)) {
            ctx->has_code_or_message = 1;
        }

        return rc;

    default:
        return 0;
    }
}


/* Shortest text that reads back as the same double, as %g would write. */
static void
apigw_tpl_real(apigw_writer_t *w, double d)
{
    char  tmp[40];
    int   prec, n;

    n = 0;

    for (prec = 1; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        if (strtod(tmp, NULL) == d) {
            break;
        }
    }

    apigw_w_raw(w, tmp, (size_t) n);

    /* keep it a real: 2.0 stays 2.0, not 2 */
    if (strpbrk(tmp, ".eE") == NULL) {
        apigw_w_raw(w, ".0", 2);
    }
}


static void
apigw_tpl_const(apigw_writer_t *w, json_t *v)
{
    const char  *key, *s;
    json_t      *child;
    size_t       i, len;
    int          first;

    switch (json_typeof(v)) {

    case JSON_OBJECT:
        apigw_w_raw(w, "{", 1);
        first = 1;

        json_object_foreach(v, key, child) {
            if (!first) {
                apigw_w_raw(w, ",", 1);
            }
            first = 0;

            apigw_w_string(w, (const unsigned char *) key, strlen(key));
            apigw_w_raw(w, ":", 1);
            apigw_tpl_const(w, child);
        }

        apigw_w_raw(w, "}", 1);
        break;

    case JSON_ARRAY:
        apigw_w_raw(w, "[", 1);

        json_array_foreach(v, i, child) {
            if (i != 0) {
                apigw_w_raw(w, ",", 1);
            }
            apigw_tpl_const(w, child);
        }

        apigw_w_raw(w, "]", 1);
        break;

    case JSON_STRING:
        s = json_string_value(v);
        len = json_string_length(v);

        /* "$$x" is the literal "$x" */
        if (len > 1 && s[0] == '$' && s[1] == '$') {
            s++;
            len--;
        }

        apigw_w_string(w, (const unsigned char *) s, len);
        break;

    case JSON_INTEGER:
        apigw_w_int(w, (long long) json_integer_value(v));
        break;

    case JSON_REAL:
        apigw_tpl_real(w, json_real_value(v));
        break;

    case JSON_TRUE:
        apigw_w_lit(w, "true");
        break;

    case JSON_FALSE:
        apigw_w_lit(w, "false");
        break;

    default:
        apigw_w_lit(w, "null");
        break;
    }
}


/* Serializes into template memory: measure, allocate, write. */
static int
apigw_tpl_text(apigw_template_t *t, apigw_str_t *out, json_t *v,
    const char *key, const apigw_str_t *str)
{
    apigw_writer_t  w;
    int             pass;

    w.buf = NULL;

    for (pass = 0; pass < 2; pass++) {
        w.len = 0;

        if (v != NULL) {
            apigw_tpl_const(&w, v);

        } else if (key != NULL) {
            apigw_w_string(&w, (const unsigned char *) key, strlen(key));
            apigw_w_raw(&w, ":", 1);

        } else {
            apigw_w_string(&w, str->data, str->len);
        }

        if (pass == 0) {
            w.buf = apigw_tpl_alloc(t, w.len + 1);
            if (w.buf == NULL) {
                return -1;
            }
        }
    }

    out->data = w.buf;
    out->len = w.len;

    return 0;
}


static char *
apigw_tpl_strdup(apigw_template_t *t, const char *s, size_t len)
{
    char  *p;

    p = apigw_tpl_alloc(t, len + 1);
    if (p != NULL) {
        memcpy(p, s, len);
    }

    return p;
}


static void
apigw_tpl_record_path(apigw_tctx_t *ctx, apigw_tvar_t var)
{
    apigw_template_path_t  *path;
    size_t                  i;

    if (var == APIGW_TV_CODE) {
        path = &ctx->t->paths[APIGW_TP_CODE];
    } else if (var == APIGW_TV_MESSAGE) {
        path = &ctx->t->paths[APIGW_TP_MESSAGE];
    } else if (var == APIGW_TV_REQUEST_ID) {
        path = &ctx->t->paths[APIGW_TP_REQUEST_ID];
    } else {
        return;
    }

    /* the first occurrence reachable through objects alone counts */
    if (!ctx->path_ok || path->len != 0) {
        return;
    }

    for (i = 0; i < ctx->nnames; i++) {
        path->names[i] = ctx->names[i];
    }

    path->len = ctx->nnames;
}


static apigw_tnode_t *apigw_tpl_build(apigw_tctx_t *ctx, json_t *v);


static int
apigw_tpl_build_members(apigw_tctx_t *ctx, apigw_tnode_t *n, json_t *v)
{
    const char       *key;
    json_t           *child;
    apigw_tmember_t  *m;
    size_t            i, saved_nnames;
    int               saved_ok;

    n->nmembers = json_is_object(v) ? json_object_size(v)
                                    : json_array_size(v);

    n->members = apigw_tpl_alloc(ctx->t,
                                 n->nmembers * sizeof(apigw_tmember_t) + 1);
    if (n->members == NULL) {
        return -1;
    }

    saved_nnames = ctx->nnames;
    saved_ok = ctx->path_ok;

    if (json_is_array(v)) {
        ctx->path_ok = 0;

        json_array_foreach(v, i, child) {
            n->members[i].value = apigw_tpl_build(ctx, child);
            if (n->members[i].value == NULL) {
                return -1;
            }
        }

        ctx->path_ok = saved_ok;
        return 0;
    }

    m = n->members;

    json_object_foreach(v, key, child) {

        m->name = apigw_tpl_strdup(ctx->t, key, strlen(key));
        if (m->name == NULL
            || apigw_tpl_text(ctx->t, &m->key, NULL, key, NULL) != 0)
        {
            return -1;
        }

        if (apigw_tpl_is_spread(key)) {
            m->value = NULL;
            m++;
            continue;
        }

        if (ctx->nnames < APIGW_TEMPLATE_MAX_DEPTH) {
            ctx->names[ctx->nnames] = m->name;
        } else {
            ctx->path_ok = 0;
        }
        ctx->nnames++;

        m->value = apigw_tpl_build(ctx, child);

        ctx->nnames = saved_nnames;
        ctx->path_ok = saved_ok;

        if (m->value == NULL) {
            return -1;
        }

        m++;
    }

    return 0;
}


/* Only runs on a document apigw_tpl_scan() accepted. */
static apigw_tnode_t *
apigw_tpl_build(apigw_tctx_t *ctx, json_t *v)
{
    apigw_tnode_t  *n;
    apigw_str_t     detail, fallback;
    apigw_tvar_t    var;
    int             rc;

    n = apigw_tpl_alloc(ctx->t, sizeof(apigw_tnode_t));
    if (n == NULL) {
        return NULL;
    }

    /* depth is irrelevant here: the scan already enforced it */
    rc = apigw_tpl_scan(ctx, v, 0);

    if (rc == 0) {
        n->kind = APIGW_TN_RAW;
        return apigw_tpl_text(ctx->t, &n->text, v, NULL, NULL) == 0
               ? n : NULL;
    }

    if (json_is_string(v)) {
        (void) apigw_tpl_placeholder(json_string_value(v),
                                     json_string_length(v),
                                     &var, &detail, &fallback);
        n->kind = APIGW_TN_VAR;
        n->var = var;

        if (var == APIGW_TV_DETAIL) {
            n->detail.len = detail.len;
            n->detail.data = (unsigned char *)
                apigw_tpl_strdup(ctx->t, (const char *) detail.data,
                                 detail.len);
            if (n->detail.data == NULL) {
                return NULL;
            }
        }

        if (fallback.data != NULL
            && apigw_tpl_text(ctx->t, &n->text, NULL, NULL, &fallback) != 0)
        {
            return NULL;
        }

        apigw_tpl_record_path(ctx, var);
        return n;
    }

    n->kind = json_is_object(v) ? APIGW_TN_OBJECT : APIGW_TN_ARRAY;

    return apigw_tpl_build_members(ctx, n, v) == 0 ? n : NULL;
}


apigw_template_t *
apigw_template_compile(const char *json, size_t len, char *err,
    size_t errlen)
{
    json_t            *root;
    json_error_t       jerr;
    apigw_template_t  *t;
    apigw_tctx_t       ctx;

    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        snprintf(err, errlen, "invalid JSON at line %d, column %d: %s",
                 jerr.line, jerr.column, jerr.text);
        return NULL;
    }

    t = NULL;

    if (!json_is_object(root)) {
        snprintf(err, errlen, "the template must be a JSON object");
        goto done;
    }

    memset(&ctx, 0, sizeof(ctx));
    ctx.err = err;
    ctx.errlen = errlen;
    ctx.path_ok = 1;

    if (apigw_tpl_scan(&ctx, root, 1) < 0) {
        goto done;
    }

    if (!ctx.has_code_or_message) {
        snprintf(err, errlen,
                 "the template has neither \"$code\" nor \"$message\"");
        goto done;
    }

    t = calloc(1, sizeof(apigw_template_t));
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }

    t->content_type = apigw_ct_json;
    ctx.t = t;

    t->root = apigw_tpl_build(&ctx, root);
    if (t->root == NULL) {
        snprintf(err, errlen, "out of memory");
        apigw_template_free(t);
        t = NULL;
    }

done:

    json_decref(root);
    return t;
}


apigw_template_t *
apigw_template_builtin(apigw_format_t fmt)
{
    apigw_template_t  *t;
    const char        *src;
    char               err[256];

    src = apigw_template_builtin_source(fmt);
    if (src == NULL) {
        return NULL;
    }

    t = apigw_template_compile(src, strlen(src), err, sizeof(err));

    if (t != NULL && fmt == APIGW_FMT_PROBLEM_JSON) {
        t->content_type = apigw_ct_problem;
    }

    return t;
}


apigw_template_t *
apigw_template_load_file(const char *path, char *err, size_t errlen)
{
    FILE              *f;
    char              *buf;
    size_t             n;
    int                failed;
    apigw_template_t  *t;

    f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open the template: %s",
                 strerror(errno));
        return NULL;
    }

    /* one byte more than allowed tells "too large" without fstat() */
    buf = malloc(APIGW_TEMPLATE_FILE_MAX + 1);
    if (buf == NULL) {
        fclose(f);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }

    n = fread(buf, 1, APIGW_TEMPLATE_FILE_MAX + 1, f);
    failed = ferror(f);
    fclose(f);

    t = NULL;

    if (failed) {
        snprintf(err, errlen, "cannot read the template: %s",
                 strerror(errno));

    } else if (n > APIGW_TEMPLATE_FILE_MAX) {
        snprintf(err, errlen, "the template is larger than %d bytes",
                 APIGW_TEMPLATE_FILE_MAX);

    } else {
        t = apigw_template_compile(buf, n, err, errlen);
    }

    free(buf);

    return t;
}
