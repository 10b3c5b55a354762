#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "apigw_request_id.h"


#define VALID(s)  apigw_request_id_valid((const unsigned char *) (s),        \
                                         sizeof(s) - 1)


static void
test_valid(void **state)
{
    unsigned char  id[APIGW_REQUEST_ID_MAX + 1];

    assert_true(VALID("a"));
    assert_true(VALID("req_0123456789abcdef01234567"));
    assert_true(VALID("ABC.def_ghi:jkl-0123456789"));
    assert_true(VALID("a1b2c3d4-e5f6-7890-abcd-ef1234567890"));

    memset(id, 'x', sizeof(id));
    assert_true(apigw_request_id_valid(id, APIGW_REQUEST_ID_MAX));
    assert_false(apigw_request_id_valid(id, APIGW_REQUEST_ID_MAX + 1));
}


static void
test_invalid(void **state)
{
    assert_false(VALID(""));
    assert_false(apigw_request_id_valid(NULL, 0));
    assert_false(apigw_request_id_valid(NULL, 4));
    assert_false(VALID("has space"));
    assert_false(VALID("slash/"));
    assert_false(VALID("quote\""));
    assert_false(VALID("new\nline"));
    assert_false(VALID("nul\0byte"));
    assert_false(VALID("caf\xc3\xa9"));
    assert_false(VALID("a+b"));
    assert_false(VALID("{id}"));
}


static void
test_format(void **state)
{
    static const unsigned char  rnd[APIGW_REQUEST_ID_RAND_BYTES] = {
        0x00, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xf0, 0x0f, 0xff
    };
    unsigned char               out[APIGW_REQUEST_ID_GEN_LEN + 1];

    assert_int_equal(APIGW_REQUEST_ID_GEN_LEN, 28);

    memset(out, '#', sizeof(out));
    apigw_request_id_format(out, rnd);

    /* exactly GEN_LEN bytes written, no NUL */
    assert_int_equal(out[APIGW_REQUEST_ID_GEN_LEN], '#');
    assert_memory_equal(out, "req_000123456789abcdeff00fff",
                        APIGW_REQUEST_ID_GEN_LEN);
    assert_true(apigw_request_id_valid(out, APIGW_REQUEST_ID_GEN_LEN));
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_format),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
