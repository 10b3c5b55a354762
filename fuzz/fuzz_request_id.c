/*
 * X-Request-Id: apigw_request_id_valid() against an independent reading
 * of the rule (1..128 of [A-Za-z0-9._:-]), and apigw_request_id_format()
 * of fuzzed random bytes always yielding a valid id.
 */
#include "fuzz_common.h"
#include "apigw_request_id.h"


static int
fz_reference_valid(const unsigned char *p, size_t len)
{
    static const char  ok[] = "abcdefghijklmnopqrstuvwxyz"
                              "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-";
    size_t             i;

    if (len < 1 || len > 128) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (p[i] == '\0' || strchr(ok, p[i]) == NULL) {
            return 0;
        }
    }

    return 1;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char   *in, *out;
    unsigned char    rnd[APIGW_REQUEST_ID_RAND_BYTES];
    apigw_str_t      s;
    size_t           i;

    s.data = (unsigned char *) data;
    s.len = size;
    in = fz_dup(&s);

    FZ_ASSERT(apigw_request_id_valid(in, size)
              == fz_reference_valid(in, size),
              "validation matches the rule");

    memset(rnd, 0, sizeof(rnd));
    memcpy(rnd, in, size < sizeof(rnd) ? size : sizeof(rnd));

    out = malloc(APIGW_REQUEST_ID_GEN_LEN);
    FZ_ASSERT(out != NULL, "out of memory");

    apigw_request_id_format(out, rnd);

    FZ_ASSERT(apigw_request_id_valid(out, APIGW_REQUEST_ID_GEN_LEN),
              "a generated id is valid");
    FZ_ASSERT(memcmp(out, "req_", 4) == 0, "req_ prefix");

    for (i = 4; i < APIGW_REQUEST_ID_GEN_LEN; i++) {
        FZ_ASSERT((out[i] >= '0' && out[i] <= '9')
                  || (out[i] >= 'a' && out[i] <= 'f'), "lowercase hex");
    }

    free(out);
    free(in);

    return 0;
}
