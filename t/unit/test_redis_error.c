/* Redis error reply classes (src/core/apigw_redis_error.c). */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "apigw_redis_error.h"


static apigw_redis_err_class_t
cls(const char *s)
{
    return apigw_redis_error_class(s, strlen(s));
}


static void
test_classes(void **state)
{
    assert_int_equal(cls("LOADING Redis is loading the dataset in memory"),
                     APIGW_REDIS_ERR_TRANSIENT);
    assert_int_equal(cls("BUSY Redis is busy running a script."),
                     APIGW_REDIS_ERR_TRANSIENT);
    assert_int_equal(cls("TRYAGAIN Multiple keys request during rehashing"),
                     APIGW_REDIS_ERR_TRANSIENT);
    assert_int_equal(cls("CLUSTERDOWN The cluster is down"),
                     APIGW_REDIS_ERR_TRANSIENT);
    assert_int_equal(cls("MASTERDOWN Link with MASTER is down"),
                     APIGW_REDIS_ERR_TRANSIENT);
    assert_int_equal(cls("READONLY You can't write against a read only "
                         "replica."), APIGW_REDIS_ERR_READONLY);
    assert_int_equal(cls("MOVED 3999 127.0.0.1:6381"),
                     APIGW_REDIS_ERR_REDIRECT);
    assert_int_equal(cls("ASK 3999 127.0.0.1:6381"),
                     APIGW_REDIS_ERR_REDIRECT);
    assert_int_equal(cls("NOSCRIPT No matching script."),
                     APIGW_REDIS_ERR_NOSCRIPT);
    assert_int_equal(cls("NOAUTH Authentication required."),
                     APIGW_REDIS_ERR_AUTH);
    assert_int_equal(cls("WRONGPASS invalid username-password pair"),
                     APIGW_REDIS_ERR_AUTH);
    assert_int_equal(cls("NOPERM this user has no permissions to run the "
                         "'role' command"), APIGW_REDIS_ERR_AUTH);
    assert_int_equal(cls("WRONGTYPE Operation against a key holding the "
                         "wrong kind of value"), APIGW_REDIS_ERR_OTHER);
    assert_int_equal(cls("OOM command not allowed"), APIGW_REDIS_ERR_OTHER);
    assert_int_equal(cls("ERR unknown command"), APIGW_REDIS_ERR_OTHER);
}


static void
test_edges(void **state)
{
    /* the whole first word decides: prefixes and lowercase do not match */
    assert_int_equal(cls("BUSYKEY Target key name already exists."),
                     APIGW_REDIS_ERR_OTHER);
    assert_int_equal(cls("ASKING"), APIGW_REDIS_ERR_OTHER);
    assert_int_equal(cls("moved 1 a:1"), APIGW_REDIS_ERR_OTHER);
    assert_int_equal(cls("READONLY"), APIGW_REDIS_ERR_READONLY);
    assert_int_equal(cls(""), APIGW_REDIS_ERR_OTHER);
    assert_int_equal(apigw_redis_error_class(NULL, 0), APIGW_REDIS_ERR_OTHER);
    /* length-bounded: bytes past len are never read */
    assert_int_equal(apigw_redis_error_class("LOADINGX", 7),
                     APIGW_REDIS_ERR_TRANSIENT);

    assert_string_equal(apigw_redis_error_class_name(APIGW_REDIS_ERR_READONLY),
                        "readonly");
    assert_string_equal(apigw_redis_error_class_name(APIGW_REDIS_ERR__COUNT),
                        "other");
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classes),
        cmocka_unit_test(test_edges),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
