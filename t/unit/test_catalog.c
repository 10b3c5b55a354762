#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "apigw_catalog.h"


#define LIT(s)  s, sizeof(s) - 1

#define assert_str(str, lit)                                                  \
    do {                                                                      \
        assert_int_equal((str).len, sizeof(lit) - 1);                         \
        assert_memory_equal((str).data, lit, sizeof(lit) - 1);                \
    } while (0)


static void
assert_entry(const apigw_catalog_t *cat, apigw_err_id_t id, const char *code,
    int status, const char *type, const char *title, const char *message)
{
    const apigw_catalog_entry_t  *e = &cat->entries[id];

    assert_true(apigw_str_eq(&e->code, code));
    assert_int_equal(e->status, status);
    assert_true(apigw_str_eq(&e->type, type));
    assert_true(apigw_str_eq(&e->title, title));
    assert_true(apigw_str_eq(&e->message, message));
    assert_int_equal(e->doc_url.len, 0);
}


static void
test_defaults_own_conditions(void **state)
{
    const apigw_catalog_t  *c = apigw_catalog_defaults();

    assert_entry(c, APIGW_E_MISSING_CREDENTIALS, "missing_credentials", 401,
                 "authentication_error", "Missing credentials",
                 "No API key was provided.");
    assert_entry(c, APIGW_E_INVALID_CREDENTIALS, "invalid_credentials", 401,
                 "authentication_error", "Invalid credentials",
                 "The API key is invalid, revoked or expired.");
    assert_entry(c, APIGW_E_ACCOUNT_DISABLED, "account_disabled", 401,
                 "authentication_error", "Account disabled",
                 "The account this API key belongs to is disabled.");
    assert_entry(c, APIGW_E_SCOPE_REQUIRED, "scope_required", 403,
                 "permission_error", "Scope required",
                 "This API key lacks the required scope "
                 "'{required_scope}'.");
    assert_entry(c, APIGW_E_AUTH_UNAVAILABLE, "auth_unavailable", 503,
                 "api_error", "Authentication unavailable",
                 "API keys cannot be verified right now. "
                 "Retry after {retry_after} seconds.");
    assert_entry(c, APIGW_E_RATE_LIMITED, "rate_limited", 429,
                 "rate_limit_error", "Rate limited",
                 "Rate limit exceeded. Retry after {retry_after} seconds.");
    assert_entry(c, APIGW_E_RATE_LIMITER_UNAVAILABLE,
                 "rate_limiter_unavailable", 503, "api_error",
                 "Rate limiter unavailable",
                 "The rate limiter is unavailable. "
                 "Retry after {retry_after} seconds.");
    assert_entry(c, APIGW_E_IDEMPOTENCY_KEY_REQUIRED,
                 "idempotency_key_required", 400, "invalid_request_error",
                 "Idempotency key required",
                 "This request requires an Idempotency-Key header.");
    assert_entry(c, APIGW_E_IDEMPOTENCY_KEY_INVALID,
                 "idempotency_key_invalid", 400, "invalid_request_error",
                 "Invalid idempotency key",
                 "The Idempotency-Key header must be 1 to 255 printable "
                 "ASCII characters without spaces.");
    assert_entry(c, APIGW_E_IDEMPOTENCY_KEY_MISMATCH,
                 "idempotency_key_mismatch", 422, "invalid_request_error",
                 "Idempotency key reused",
                 "This Idempotency-Key was already used with a different "
                 "request.");
    assert_entry(c, APIGW_E_IDEMPOTENCY_KEY_IN_PROGRESS,
                 "idempotency_key_in_progress", 409, "invalid_request_error",
                 "Request in progress",
                 "A request with this Idempotency-Key is still in progress. "
                 "Retry after {retry_after} seconds.");
    assert_entry(c, APIGW_E_IDEMPOTENCY_UNAVAILABLE,
                 "idempotency_unavailable", 503, "api_error",
                 "Idempotency unavailable",
                 "The idempotency store is unavailable. "
                 "Retry after {retry_after} seconds.");
    assert_entry(c, APIGW_E_IDEMPOTENCY_REPLAY_UNAVAILABLE,
                 "idempotency_replay_unavailable", 409,
                 "invalid_request_error", "Replay unavailable",
                 "The request with this Idempotency-Key completed, but its "
                 "response was too large to store.");
}


static void
test_defaults_http(void **state)
{
    const apigw_catalog_t  *c = apigw_catalog_defaults();

    assert_entry(c, APIGW_E_INVALID_REQUEST, "invalid_request", 400,
                 "invalid_request_error", "Bad request",
                 "The request could not be understood.");
    assert_entry(c, APIGW_E_UNAUTHORIZED, "unauthorized", 401,
                 "authentication_error", "Unauthorized",
                 "Authentication is required.");
    assert_entry(c, APIGW_E_FORBIDDEN, "forbidden", 403, "permission_error",
                 "Forbidden", "Access to this resource is forbidden.");
    assert_entry(c, APIGW_E_NOT_FOUND, "not_found", 404, "not_found_error",
                 "Not found", "The requested resource was not found.");
    assert_entry(c, APIGW_E_METHOD_NOT_ALLOWED, "method_not_allowed", 405,
                 "invalid_request_error", "Method not allowed",
                 "The method is not allowed for this resource.");
    assert_entry(c, APIGW_E_PAYLOAD_TOO_LARGE, "payload_too_large", 413,
                 "invalid_request_error", "Payload too large",
                 "The request body is too large.");
    assert_entry(c, APIGW_E_TOO_MANY_REQUESTS, "too_many_requests", 429,
                 "rate_limit_error", "Too many requests",
                 "Too many requests. Slow down and retry later.");
    assert_entry(c, APIGW_E_INTERNAL_ERROR, "internal_error", 500,
                 "api_error", "Internal error",
                 "An unexpected error occurred.");
    assert_entry(c, APIGW_E_UPSTREAM_UNAVAILABLE, "upstream_unavailable",
                 502, "api_error", "Upstream unavailable",
                 "The upstream service is unavailable.");
    assert_entry(c, APIGW_E_SERVICE_UNAVAILABLE, "service_unavailable", 503,
                 "api_error", "Service unavailable",
                 "The service is temporarily unavailable.");
    assert_entry(c, APIGW_E_UPSTREAM_TIMEOUT, "upstream_timeout", 504,
                 "api_error", "Upstream timeout",
                 "The upstream service did not respond in time.");
    assert_entry(c, APIGW_E_CLIENT_ERROR, "client_error", 400,
                 "invalid_request_error", "Client error",
                 "The request could not be processed.");
    assert_entry(c, APIGW_E_SERVER_ERROR, "server_error", 500, "api_error",
                 "Server error", "The upstream service failed.");

    assert_true(apigw_str_eq(&c->entries[APIGW_E_UNSUPPORTED_MEDIA_TYPE].title,
                             "Unsupported media type"));
}


/* Every entry is complete, unique, and its code looks itself up. */
static void
test_defaults_complete(void **state)
{
    const apigw_catalog_t        *c = apigw_catalog_defaults();
    const apigw_catalog_entry_t  *e;
    int                           i, j;

    assert_null(c->owned);

    for (i = 0; i < APIGW_E__COUNT; i++) {
        e = &c->entries[i];

        assert_true(apigw_code_valid(e->code.data, e->code.len));
        assert_true(apigw_code_valid(e->type.data, e->type.len));
        assert_true(e->title.len > 0);
        assert_true(e->message.len > 0);
        assert_in_range(e->status, 400, 599);
        assert_int_equal(apigw_err_by_code(e->code.data, e->code.len), i);

        if (i != APIGW_E_CLIENT_ERROR && i != APIGW_E_SERVER_ERROR
            && i >= APIGW_E_INVALID_REQUEST)
        {
            assert_int_equal(apigw_err_for_status(e->status), i);
        }

        for (j = 0; j < i; j++) {
            assert_false(e->code.len == c->entries[j].code.len
                         && memcmp(e->code.data, c->entries[j].code.data,
                                   e->code.len) == 0);
        }
    }
}


static void
test_err_for_status(void **state)
{
    static const struct {
        int             status;
        apigw_err_id_t  id;
    } map[] = {
        { 400, APIGW_E_INVALID_REQUEST }, { 401, APIGW_E_UNAUTHORIZED },
        { 403, APIGW_E_FORBIDDEN }, { 404, APIGW_E_NOT_FOUND },
        { 405, APIGW_E_METHOD_NOT_ALLOWED }, { 406, APIGW_E_NOT_ACCEPTABLE },
        { 408, APIGW_E_REQUEST_TIMEOUT }, { 409, APIGW_E_CONFLICT },
        { 410, APIGW_E_GONE }, { 411, APIGW_E_LENGTH_REQUIRED },
        { 412, APIGW_E_PRECONDITION_FAILED },
        { 413, APIGW_E_PAYLOAD_TOO_LARGE }, { 414, APIGW_E_URI_TOO_LONG },
        { 415, APIGW_E_UNSUPPORTED_MEDIA_TYPE },
        { 416, APIGW_E_RANGE_NOT_SATISFIABLE },
        { 422, APIGW_E_UNPROCESSABLE_ENTITY },
        { 429, APIGW_E_TOO_MANY_REQUESTS }, { 500, APIGW_E_INTERNAL_ERROR },
        { 501, APIGW_E_NOT_IMPLEMENTED },
        { 502, APIGW_E_UPSTREAM_UNAVAILABLE },
        { 503, APIGW_E_SERVICE_UNAVAILABLE },
        { 504, APIGW_E_UPSTREAM_TIMEOUT },
        { 402, APIGW_E_CLIENT_ERROR }, { 407, APIGW_E_CLIENT_ERROR },
        { 418, APIGW_E_CLIENT_ERROR }, { 451, APIGW_E_CLIENT_ERROR },
        { 499, APIGW_E_CLIENT_ERROR }, { 505, APIGW_E_SERVER_ERROR },
        { 507, APIGW_E_SERVER_ERROR }, { 599, APIGW_E_SERVER_ERROR },
    };
    size_t  i;

    for (i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        assert_int_equal(apigw_err_for_status(map[i].status), map[i].id);
    }
}


static void
test_err_by_code(void **state)
{
    assert_int_equal(apigw_err_by_code((const unsigned char *)
                                       LIT("rate_limited")),
                     APIGW_E_RATE_LIMITED);
    assert_int_equal(apigw_err_by_code((const unsigned char *)
                                       LIT("server_error")),
                     APIGW_E_SERVER_ERROR);
    assert_int_equal(apigw_err_by_code((const unsigned char *)
                                       LIT("rate_limite")), -1);
    assert_int_equal(apigw_err_by_code((const unsigned char *)
                                       LIT("rate_limitedx")), -1);
    assert_int_equal(apigw_err_by_code((const unsigned char *) "", 0), -1);
}


static void
test_code_valid(void **state)
{
    char  buf[66];

    assert_true(apigw_code_valid((const unsigned char *)
                                 LIT("simio_rate.limited-1")));
    assert_true(apigw_code_valid((const unsigned char *) LIT("A")));
    assert_false(apigw_code_valid((const unsigned char *) "", 0));
    assert_false(apigw_code_valid(NULL, 0));
    assert_false(apigw_code_valid((const unsigned char *) LIT("a b")));
    assert_false(apigw_code_valid((const unsigned char *) LIT("a\"b")));
    assert_false(apigw_code_valid((const unsigned char *) LIT("a/b")));
    assert_false(apigw_code_valid((const unsigned char *) LIT("caf\xc3\xa9")));
    assert_false(apigw_code_valid((const unsigned char *) LIT("a\0b")));

    memset(buf, 'x', sizeof(buf));
    assert_true(apigw_code_valid((const unsigned char *) buf, 64));
    assert_false(apigw_code_valid((const unsigned char *) buf, 65));
}


static void
test_load_overrides(void **state)
{
    static const char  json[] =
        "{\"rate_limited\":{\"code\":\"simio_rate_limited\",\"status\":503,"
        "\"doc_url\":\"https://simio.example/docs/rl\","
        "\"title\":\"Slow down\",\"message\":\"Wait {retry_after}s.\","
        "\"type\":\"throttle_error\"},"
        "\"not_found\":{\"code\":\"simio_not_found\"}}";

    apigw_catalog_t  cat;
    char             err[256];
    const apigw_catalog_entry_t  *e;

    apigw_catalog_init(&cat);
    assert_null(cat.owned);

    err[0] = '\0';
    assert_int_equal(apigw_catalog_load_json(&cat, json, sizeof(json) - 1,
                                             err, sizeof(err)), 0);
    assert_string_equal(err, "");
    assert_non_null(cat.owned);

    e = &cat.entries[APIGW_E_RATE_LIMITED];
    assert_str(e->code, "simio_rate_limited");
    assert_int_equal(e->status, 503);
    assert_str(e->doc_url, "https://simio.example/docs/rl");
    assert_str(e->title, "Slow down");
    assert_str(e->message, "Wait {retry_after}s.");
    assert_str(e->type, "throttle_error");

    /* the strings belong to the catalog, not to a freed parse tree */
    assert_true((unsigned char *) cat.owned < e->code.data);

    e = &cat.entries[APIGW_E_NOT_FOUND];
    assert_str(e->code, "simio_not_found");
    assert_int_equal(e->status, 404);
    assert_str(e->title, "Not found");

    /* others untouched, and the defaults never change */
    assert_str(cat.entries[APIGW_E_FORBIDDEN].code, "forbidden");
    assert_true(apigw_str_eq(
        &apigw_catalog_defaults()->entries[APIGW_E_RATE_LIMITED].code,
        "rate_limited"));

    /* a second file applies on top */
    assert_int_equal(apigw_catalog_load_json(&cat,
        LIT("{\"not_found\":{\"status\":410}}"), err, sizeof(err)), 0);
    assert_int_equal(cat.entries[APIGW_E_NOT_FOUND].status, 410);
    assert_str(cat.entries[APIGW_E_NOT_FOUND].code, "simio_not_found");
    assert_str(cat.entries[APIGW_E_RATE_LIMITED].code, "simio_rate_limited");

    apigw_catalog_free(&cat);
    assert_null(cat.owned);
    assert_str(cat.entries[APIGW_E_RATE_LIMITED].code, "rate_limited");
    assert_int_equal(cat.entries[APIGW_E_NOT_FOUND].status, 404);
}


static void
expect_load_error(const char *json, const char *expected)
{
    apigw_catalog_t  cat;
    char             err[256];

    apigw_catalog_init(&cat);
    err[0] = '\0';

    assert_int_equal(apigw_catalog_load_json(&cat, json, strlen(json),
                                             err, sizeof(err)), -1);
    assert_string_equal(err, expected);

    /* all or nothing: nothing applied, nothing owned */
    assert_null(cat.owned);
    assert_memory_equal(cat.entries, apigw_catalog_defaults()->entries,
                        sizeof(cat.entries));
}


static void
test_load_errors(void **state)
{
    expect_load_error("{\"rate_limited\":", "invalid JSON at line 1, "
                      "column 16: unexpected token near end of file");
    expect_load_error("[]", "the catalog must be a JSON object");
    expect_load_error("{\"rate_limited\":{\"code\":\"x\"},\"nope\":{}}",
                      "unknown code \"nope\"");
    expect_load_error("{\"simio_rate_limited\":{}}",
                      "unknown code \"simio_rate_limited\"");
    expect_load_error("{\"rate_limited\":\"x\"}",
                      "\"rate_limited\": the value must be an object");
    expect_load_error("{\"rate_limited\":{\"colour\":\"red\"}}",
                      "\"rate_limited\": unknown member \"colour\"");
    expect_load_error("{\"rate_limited\":{\"status\":\"429\"}}",
                      "\"rate_limited\": \"status\" must be an integer");
    expect_load_error("{\"rate_limited\":{\"status\":429.0}}",
                      "\"rate_limited\": \"status\" must be an integer");
    expect_load_error("{\"rate_limited\":{\"status\":399}}",
                      "\"rate_limited\": \"status\" must be within 400..599");
    expect_load_error("{\"rate_limited\":{\"status\":600}}",
                      "\"rate_limited\": \"status\" must be within 400..599");
    expect_load_error("{\"rate_limited\":{\"title\":5}}",
                      "\"rate_limited\": \"title\" must be a string");
    expect_load_error("{\"rate_limited\":{\"doc_url\":null}}",
                      "\"rate_limited\": \"doc_url\" must be a string");
    expect_load_error("{\"rate_limited\":{\"code\":\"rate limited\"}}",
                      "\"rate_limited\": \"code\" must be 1 to 64 "
                      "characters of [A-Za-z0-9_.-]");
    expect_load_error("{\"rate_limited\":{\"code\":\"\"}}",
                      "\"rate_limited\": \"code\" must be 1 to 64 "
                      "characters of [A-Za-z0-9_.-]");
    expect_load_error("{\"gone\":{\"type\":\"<script>\"}}",
                      "\"gone\": \"type\" must be 1 to 64 "
                      "characters of [A-Za-z0-9_.-]");
    expect_load_error("{\"gone\":{\"code\":\"a\"},\"gone\":{\"code\":\"b\"}}",
                      "invalid JSON at line 1, column 27: duplicate object "
                      "key near '\"gone\"'");
}


static void
test_load_file(void **state)
{
    static const char  json[] =
        "{\n  \"upstream_timeout\": {\"code\": \"gw_timeout\"}\n}\n";

    apigw_catalog_t  cat;
    char             path[] = "/tmp/apigw_catalog_XXXXXX";
    char             err[256];
    int              fd;

    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, json, sizeof(json) - 1),
                     (ssize_t) sizeof(json) - 1);
    close(fd);

    apigw_catalog_init(&cat);
    assert_int_equal(apigw_catalog_load_file(&cat, path, err, sizeof(err)),
                     0);
    assert_str(cat.entries[APIGW_E_UPSTREAM_TIMEOUT].code, "gw_timeout");
    apigw_catalog_free(&cat);

    unlink(path);

    apigw_catalog_init(&cat);
    assert_int_equal(apigw_catalog_load_file(&cat, path, err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "No such file or directory"));
    assert_null(cat.owned);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_own_conditions),
        cmocka_unit_test(test_defaults_http),
        cmocka_unit_test(test_defaults_complete),
        cmocka_unit_test(test_err_for_status),
        cmocka_unit_test(test_err_by_code),
        cmocka_unit_test(test_code_valid),
        cmocka_unit_test(test_load_overrides),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_load_file),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
