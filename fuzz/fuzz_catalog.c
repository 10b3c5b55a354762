/*
 * apigw_catalog_load_json() on arbitrary text.  Invariants: a refusal
 * explains itself and leaves the catalog exactly as it was (the file is
 * validated completely before anything is applied); an accepted catalog
 * renders every code through the built-in formats as valid JSON, with its
 * {name} references and with a second catalog layered on top.
 */
#include "fuzz_common.h"


static apigw_template_t  *fz_builtins[APIGW_FMT__COUNT];


/* every code through one built-in format (all of them over the runs) */
static void
fz_render_all(const apigw_catalog_t *cat, int fmt)
{
    int                  id;
    size_t               len;
    unsigned char       *out;
    apigw_envelope_t     e;

    for (id = 0; id < APIGW_E__COUNT; id++) {
        apigw_envelope_init(&e, cat, (apigw_err_id_t) id);

        FZ_ASSERT(e.status >= 400 && e.status <= 599, "status in range");
        FZ_ASSERT(apigw_code_valid(e.code.data, e.code.len), "code valid");

        apigw_str_set(&e.request_id, "req_0123456789abcdef01234567");
        apigw_str_set(&e.doc_base, "https://docs.example.com/errors/");
        apigw_envelope_detail_int(&e, "retry_after", 12);
        apigw_envelope_detail_str(&e, "required_scope",
                                  (const unsigned char *) "a\"{b}\\", 6);
        apigw_envelope_detail_str(&e, "policy",
                                  (const unsigned char *) "{limit}", 7);

        out = fz_render(fz_builtins[fmt % APIGW_FMT__COUNT], &e, &len);
        free(out);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int               i, rc;
    char              err[256];
    apigw_catalog_t   cat, before;

    if (fz_builtins[0] == NULL) {
        for (i = 0; i < APIGW_FMT__COUNT; i++) {
            fz_builtins[i] = apigw_template_builtin((apigw_format_t) i);
            FZ_ASSERT(fz_builtins[i] != NULL, "built-in compiles");
        }
    }

    apigw_catalog_init(&cat);
    FZ_ASSERT(cat.owned == NULL, "init allocates nothing");

    err[0] = '\0';
    before = cat;

    rc = apigw_catalog_load_json(&cat, (const char *) data, size, err,
                                 sizeof(err));

    if (rc != 0) {
        FZ_ASSERT(rc == -1, "-1 on refusal");
        FZ_ASSERT(err[0] != '\0', "a refused catalog has a message");
        FZ_ASSERT(memcmp(&cat, &before, sizeof(cat)) == 0,
                  "a refused catalog changes nothing");
        apigw_catalog_free(&cat);
        return 0;
    }

    fz_render_all(&cat, (int) (size % APIGW_FMT__COUNT));

    /* the same file again over the loaded one: overrides stack */
    before = cat;
    rc = apigw_catalog_load_json(&cat, (const char *) data, size, err,
                                 sizeof(err));
    FZ_ASSERT(rc == 0, "a catalog accepted once is accepted again");

    for (i = 0; i < APIGW_E__COUNT; i++) {
        FZ_ASSERT(cat.entries[i].status == before.entries[i].status
                  && cat.entries[i].code.len == before.entries[i].code.len
                  && memcmp(cat.entries[i].code.data,
                            before.entries[i].code.data,
                            cat.entries[i].code.len) == 0,
                  "loading is idempotent");
    }

    fz_render_all(&cat, (int) (size % APIGW_FMT__COUNT) + 1);
    apigw_catalog_free(&cat);

    return 0;
}
