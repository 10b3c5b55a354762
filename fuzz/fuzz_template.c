/*
 * apigw_template_compile() on arbitrary text, and every template it accepts
 * rendered with a fuzzed envelope.
 *
 * Input: the template's JSON text, a NUL byte, then the envelope fields of
 * fz_envelope() (fuzz_common.h).  Invariants: a refusal always explains
 * itself; the rendering measures what it writes and is an object without
 * repeated keys; an envelope rendered through a template with $code or
 * $message at a recorded path is recognised as "already in the configured
 * shape" by the upstream-error code (rewrite mode keeps it).
 */
#include "fuzz_common.h"
#include "apigw_upstream_error.h"


static void
fz_check_own_shape(const apigw_template_t *t, const apigw_envelope_t *e,
    const unsigned char *out, size_t len)
{
    apigw_upstream_result_t       res;
    const apigw_template_path_t  *cp, *mp;
    int                           rc;

    cp = apigw_template_path(t, "code");
    mp = apigw_template_path(t, "message");

    FZ_ASSERT(cp->len <= APIGW_TEMPLATE_MAX_DEPTH, "path depth");
    FZ_ASSERT(mp->len <= APIGW_TEMPLATE_MAX_DEPTH, "path depth");
    FZ_ASSERT(apigw_template_path(t, "request_id")->len
              <= APIGW_TEMPLATE_MAX_DEPTH, "path depth");

    if ((cp->len == 0 && mp->len == 0) || len > APIGW_UPSTREAM_BODY_MAX) {
        return;
    }

    rc = apigw_upstream_error_analyze(APIGW_UPSTREAM_REWRITE, t, NULL,
                                      e->status, NULL, NULL, out, len, 0,
                                      &e->request_id, &res);
    FZ_ASSERT(rc == 0, "analyze succeeds");

    FZ_ASSERT(res.action != APIGW_UE_ENVELOPE,
              "an envelope of this template is in this template's shape");

    if (res.action == APIGW_UE_REPLACE_BODY) {
        fz_json_loose(res.body, res.body_len);
    }

    apigw_upstream_error_free(&res);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                 err[256];
    size_t               tlen, len;
    const uint8_t       *nul;
    unsigned char       *out;
    apigw_template_t    *t;
    apigw_envelope_t     e;
    apigw_field_error_t  errs[FZ_MAX_ERRORS];
    fz_t                 f;

    nul = memchr(data, '\0', size);
    tlen = nul ? (size_t) (nul - data) : size;

    memset(err, 0x55, sizeof(err));
    err[sizeof(err) - 1] = '\0';
    err[0] = '\0';

    t = apigw_template_compile((const char *) data, tlen, err, sizeof(err));

    if (t == NULL) {
        FZ_ASSERT(err[0] != '\0', "a refused template has a message");
        FZ_ASSERT(memchr(err, '\0', sizeof(err)) != NULL,
                  "the message is terminated");
        return 0;
    }

    FZ_ASSERT(t->root != NULL && t->root->kind == APIGW_TN_OBJECT,
              "the root compiles to an object");

    fz_init(&f, nul ? nul + 1 : data + size, nul ? size - tlen - 1 : 0);
    fz_envelope(&f, NULL, &e, errs);

    out = fz_render(t, &e, &len);
    fz_check_own_shape(t, &e, out, len);
    free(out);

    apigw_template_free(t);

    return 0;
}
