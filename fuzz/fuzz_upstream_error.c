/*
 * apigw_upstream_error_analyze() in all three modes on arbitrary upstream
 * error responses, and the result rendered the way the glue sends it.
 *
 * Input fields (fuzz_common.h): mode, status, Content-Type,
 * Content-Encoding, template (0-4 the built-ins, 5-7 custom ones),
 * catalog (odd: a renaming catalog), truncated, request id, then the body
 * as the rest of the input.
 *
 * Invariants: pass keeps; a replaced body and every envelope are JSON
 * without repeated keys; an envelope's code is safe to echo, upstream text
 * is cut to APIGW_UPSTREAM_MAX_TEXT, a foreign doc_url is http(s).
 */
#include <strings.h>

#include "fuzz_common.h"
#include "apigw_upstream_error.h"


#define FZ_NTEMPLATES  (APIGW_FMT__COUNT + 3)

static const char  *fz_custom[] = {
    /* README's example */
    "{\"ok\": false, \"failure\": {\"id\": \"$code\", \"text\": \"$message\","
    " \"http\": \"$status\", \"help\": \"$doc_url|https://help.example.com/\","
    " \"retry\": \"$details.retry_after\"}, \"rid\": \"$request_id\"}",

    /* paths at the deepest recorded level */
    "{\"a\": {\"b\": {\"c\": {\"code\": \"$code\", \"rid\": \"$request_id\"}}},"
    " \"m\": [\"$message\", \"$errors\"], \"...\": \"$details\"}",

    /* code too deep to be recorded, request id inside an array */
    "{\"a\": {\"b\": {\"c\": {\"d\": {\"code\": \"$code\"}}}},"
    " \"message\": \"$message\", \"ids\": [\"$request_id\"],"
    " \"lit\": \"$$code\", \"n\": [1, 2.5, true, null, {}]}"
};

static const char  fz_catalog_json[] =
    "{\"not_found\": {\"code\": \"x_not_found\", \"message\": "
    "\"Nothing at {path} ({retry_after}).\", \"doc_url\": "
    "\"https://x.example/nf\"}, \"internal_error\": {\"status\": 599, "
    "\"title\": \"\\u00e9\\u2028\"}, \"server_error\": {\"type\": \"t\"}}";

static apigw_template_t  *fz_templates[FZ_NTEMPLATES];
static apigw_catalog_t    fz_catalog;


static void
fz_setup(void)
{
    int   i;
    char  err[256];

    for (i = 0; i < APIGW_FMT__COUNT; i++) {
        fz_templates[i] = apigw_template_builtin((apigw_format_t) i);
        FZ_ASSERT(fz_templates[i] != NULL, "built-in compiles");
    }

    for (i = 0; i < 3; i++) {
        fz_templates[APIGW_FMT__COUNT + i] =
            apigw_template_compile(fz_custom[i], strlen(fz_custom[i]), err,
                                   sizeof(err));
        if (fz_templates[APIGW_FMT__COUNT + i] == NULL) {
            fprintf(stderr, "custom template %d: %s\n", i, err);
        }
        FZ_ASSERT(fz_templates[APIGW_FMT__COUNT + i] != NULL,
                  "custom template compiles");
    }

    apigw_catalog_init(&fz_catalog);
    FZ_ASSERT(apigw_catalog_load_json(&fz_catalog, fz_catalog_json,
                                      sizeof(fz_catalog_json) - 1, err,
                                      sizeof(err)) == 0,
              "the test catalog loads");
}


static void
fz_check_text(const apigw_str_t *s)
{
    FZ_ASSERT(s->len <= APIGW_UPSTREAM_MAX_TEXT, "upstream text is cut");
}


static void
fz_check_envelope(const apigw_upstream_result_t *res,
    const apigw_template_t *t)
{
    size_t                  i, len;
    unsigned char          *out;
    const apigw_envelope_t *e;

    e = &res->envelope;

    FZ_ASSERT(apigw_code_valid(e->code.data, e->code.len),
              "the envelope's code is safe to echo");
    FZ_ASSERT(e->nerrors <= APIGW_UPSTREAM_MAX_ERRORS, "errors bounded");

    if (e->message_literal) {
        fz_check_text(&e->message);
    }

    fz_check_text(&e->param);

    if (e->doc_url.len) {
        FZ_ASSERT(e->doc_url.len <= 1024, "doc_url bounded");
    }

    for (i = 0; i < e->nerrors; i++) {
        fz_check_text(&e->errors[i].field);
        fz_check_text(&e->errors[i].message);
        FZ_ASSERT(e->errors[i].code.len == 0
                  || apigw_code_valid(e->errors[i].code.data,
                                      e->errors[i].code.len),
                  "a field error's code is safe to echo");
    }

    out = fz_render(t, e, &len);
    free(out);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                       rc, status, truncated;
    long long                 mode, ti, ci;
    apigw_str_t               ct, ce, rid, body;
    const apigw_template_t   *t;
    const apigw_catalog_t    *cat;
    apigw_upstream_result_t   res;
    unsigned char            *copy;
    fz_t                      f;

    if (fz_templates[0] == NULL) {
        fz_setup();
    }

    fz_init(&f, data, size);

    mode = fz_int(&f);
    status = (int) fz_int(&f);
    ct = fz_field(&f);
    ce = fz_field(&f);
    ti = fz_int(&f);
    ci = fz_int(&f);
    truncated = (int) (fz_int(&f) & 1);
    rid = fz_field(&f);
    body = fz_rest(&f);

    mode = (mode < 0 ? -mode : mode) % 3;
    t = fz_templates[(ti < 0 ? -ti : ti) % FZ_NTEMPLATES];
    cat = (ci & 1) ? &fz_catalog : NULL;

    /* the body in an allocation of its own size: overreads are caught */
    copy = fz_dup(&body);

    rc = apigw_upstream_error_analyze((apigw_upstream_mode_t) mode, t, cat,
                                      status, &ct, &ce,
                                      body.len ? copy : NULL, body.len,
                                      truncated, &rid, &res);
    FZ_ASSERT(rc == 0, "analyze fails only when out of memory");

    FZ_ASSERT(res.envelope.status == status, "the status is kept");

    switch (res.action) {

    case APIGW_UE_KEEP:
        FZ_ASSERT(res.body == NULL, "keep has no body");
        if (mode != APIGW_UPSTREAM_PASS) {
            fz_json_loose(copy, body.len);
        }
        break;

    case APIGW_UE_REPLACE_BODY:
        FZ_ASSERT(mode != APIGW_UPSTREAM_PASS, "pass never replaces");
        FZ_ASSERT(res.body != NULL && res.body_len > 0, "a body");
        fz_json_loose(res.body, res.body_len);
        break;

    case APIGW_UE_ENVELOPE:
        FZ_ASSERT(mode != APIGW_UPSTREAM_PASS, "pass never envelopes");
        fz_check_envelope(&res, t);
        break;

    default:
        FZ_ASSERT(0, "a known action");
    }

    if (ce.len && !(ce.len == 8
                    && strncasecmp((char *) ce.data, "identity", 8) == 0))
    {
        FZ_ASSERT(mode == APIGW_UPSTREAM_PASS
                  || res.action == APIGW_UE_ENVELOPE,
                  "an encoded body is never kept");
    }

    apigw_upstream_error_free(&res);
    free(copy);

    return 0;
}
