/*
 * Upstream error bodies: kept, given the request id, translated from a
 * foreign shape, or replaced by the status's default envelope.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "apigw_upstream_error.h"


#define RID  "req_0123456789abcdef01234567"
#define LIT(s)  s, sizeof(s) - 1

static const apigw_str_t  rid = apigw_string(RID);
static const apigw_str_t  ct_json = apigw_string("application/json");
static const apigw_str_t  ct_html = apigw_string("text/html");

static apigw_template_t  *tpl[APIGW_FMT__COUNT];


static int
setup(void **state)
{
    int  i;

    for (i = 0; i < APIGW_FMT__COUNT; i++) {
        tpl[i] = apigw_template_builtin(i);
        if (tpl[i] == NULL) {
            return -1;
        }
    }

    return 0;
}


static int
teardown(void **state)
{
    int  i;

    for (i = 0; i < APIGW_FMT__COUNT; i++) {
        apigw_template_free(tpl[i]);
    }

    return 0;
}


static void
analyze(apigw_upstream_result_t *res, apigw_upstream_mode_t mode,
    apigw_format_t fmt, int status, const apigw_str_t *ct,
    const apigw_str_t *ce, const char *body, int truncated)
{
    assert_int_equal(apigw_upstream_error_analyze(mode, tpl[fmt], NULL,
        status, ct, ce, (const unsigned char *) body,
        body ? strlen(body) : 0, truncated, &rid, res), 0);
}


static void
normalize(apigw_upstream_result_t *res, int status, const char *body)
{
    analyze(res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, status,
            &ct_json, NULL, body, 0);
}


/* Renders the result's envelope; measure == write, valid JSON. */
static void
assert_envelope(apigw_upstream_result_t *res, apigw_format_t fmt,
    const char *expected)
{
    size_t          need, got;
    unsigned char  *buf;
    json_t         *v;

    assert_int_equal(res->action, APIGW_UE_ENVELOPE);

    need = apigw_envelope_render(tpl[fmt], &res->envelope, NULL);
    buf = malloc(need + 1);
    assert_non_null(buf);

    got = apigw_envelope_render(tpl[fmt], &res->envelope, buf);
    assert_int_equal(got, need);
    buf[need] = '\0';

    v = json_loads((const char *) buf, 0, NULL);
    assert_non_null(v);
    json_decref(v);

    assert_string_equal((char *) buf, expected);
    free(buf);
}


static void
assert_body(apigw_upstream_result_t *res, const char *expected)
{
    assert_int_equal(res->action, APIGW_UE_REPLACE_BODY);
    assert_non_null(res->body);
    assert_int_equal(res->body_len, strlen(expected));
    assert_memory_equal(res->body, expected, res->body_len);
}


#define EO_DEFAULT_500                                                        \
    "{\"error\":{\"type\":\"api_error\",\"code\":\"internal_error\","         \
    "\"message\":\"An unexpected error occurred.\","                          \
    "\"correlation_id\":\"" RID "\"},\"request_id\":\"" RID "\"}"

#define EO_DEFAULT_400                                                        \
    "{\"error\":{\"type\":\"invalid_request_error\","                         \
    "\"code\":\"invalid_request\","                                           \
    "\"message\":\"The request could not be understood.\"},"                  \
    "\"request_id\":\"" RID "\"}"


/* ---- bodies that are never parsed ------------------------------------- */

static void
test_html_body(void **state)
{
    apigw_upstream_result_t  res;

    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_html, NULL,
            "<html><head><title>500 Internal Server Error</title></head>"
            "<body>{\"error\":\"x\"}</body></html>", 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    assert_int_equal(res.envelope.message_literal, 0);
    apigw_upstream_error_free(&res);

    /* text that merely looks like JSON later on */
    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, NULL, "error: {\"message\":\"x\"}", 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    apigw_upstream_error_free(&res);

    /* a JSON array is not an error object */
    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, NULL, "[{\"message\":\"x\"}]", 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    apigw_upstream_error_free(&res);
}


static void
test_truncated(void **state)
{
    apigw_upstream_result_t  res;

    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, NULL,
            "{\"error\":{\"code\":\"x\",\"message\":\"y\"},"
            "\"request_id\":\"r\"}", 1);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    apigw_upstream_error_free(&res);
}


static void
test_content_encoding(void **state)
{
    static const apigw_str_t  gzip = apigw_string("gzip");
    static const apigw_str_t  identity = apigw_string("Identity");
    static const apigw_str_t  empty = apigw_null_string;
    apigw_upstream_result_t   res;

    /* gzip bytes start with 1f 8b, but even '{' would not be trusted */
    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, &gzip, "{\"error\":\"db_down\"}", 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    apigw_upstream_error_free(&res);

    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, &identity, "{\"error\":\"db_down\"}", 0);
    assert_true(apigw_str_eq(&res.envelope.code, "db_down"));
    apigw_upstream_error_free(&res);

    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, &empty, "{\"error\":\"db_down\"}", 0);
    assert_true(apigw_str_eq(&res.envelope.code, "db_down"));
    apigw_upstream_error_free(&res);
}


static void
test_empty_and_invalid(void **state)
{
    apigw_upstream_result_t  res;

    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            NULL, NULL, NULL, 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    apigw_upstream_error_free(&res);

    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, NULL, " \r\n\t ", 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    apigw_upstream_error_free(&res);

    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, NULL, "{\"error\":{\"code\":\"x\"", 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    apigw_upstream_error_free(&res);

    /* invalid UTF-8 inside an otherwise fine body */
    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, NULL, "{\"message\":\"bad \xff byte\"}", 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    apigw_upstream_error_free(&res);

    /* an unknown shape */
    normalize(&res, 500, "{\"oops\":true,\"reason\":\"x\"}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_500);
    apigw_upstream_error_free(&res);

    /* PASS is never analyzed by the glue, but answers KEEP */
    analyze(&res, APIGW_UPSTREAM_PASS, APIGW_FMT_ERROR_OBJECT, 500,
            &ct_json, NULL, "<html></html>", 0);
    assert_int_equal(res.action, APIGW_UE_KEEP);
    apigw_upstream_error_free(&res);
    apigw_upstream_error_free(&res);
}


/* ---- already in the configured shape ---------------------------------- */

static void
test_keep_and_request_id(void **state)
{
    apigw_upstream_result_t  res;

    /* in shape, request id present: untouched, whatever the mode */
    analyze(&res, APIGW_UPSTREAM_REWRITE, APIGW_FMT_ERROR_OBJECT, 409,
            &ct_json, NULL,
            "{\"error\":{\"code\":\"dup\",\"message\":\"exists\"},"
            "\"request_id\":\"theirs\"}", 0);
    assert_int_equal(res.action, APIGW_UE_KEEP);
    assert_null(res.body);
    apigw_upstream_error_free(&res);

    /* the id appended where the template puts it; order and data kept */
    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 409,
            &ct_json, NULL,
            "\n { \"z\": 1, \"error\": {\"message\": \"exists \\u00e9\","
            " \"code\": \"dup\", \"extra\": [1, 2.5, null, true]} }", 0);
    assert_body(&res, "{\"z\":1,\"error\":{\"message\":\"exists \xc3\xa9\","
                "\"code\":\"dup\",\"extra\":[1,2.5,null,true]},"
                "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);
    assert_null(res.body);

    /* nested request_id path: error_details */
    analyze(&res, APIGW_UPSTREAM_REWRITE, APIGW_FMT_ERROR_DETAILS, 404,
            &ct_json, NULL, "{\"error\":{\"code\":\"no_user\","
            "\"message\":\"No such user\"}}", 0);
    assert_body(&res, "{\"error\":{\"code\":\"no_user\","
                "\"message\":\"No such user\",\"request_id\":\"" RID "\"}}");
    apigw_upstream_error_free(&res);

    /* data_error_meta: into meta */
    analyze(&res, APIGW_UPSTREAM_REWRITE, APIGW_FMT_DATA_ERROR_META, 404,
            &ct_json, NULL, "{\"data\":null,\"error\":\"no_user\","
            "\"meta\":{\"message\":\"No such user\"}}", 0);
    assert_body(&res, "{\"data\":null,\"error\":\"no_user\","
                "\"meta\":{\"message\":\"No such user\","
                "\"request_id\":\"" RID "\"}}");
    apigw_upstream_error_free(&res);

    /* problem_json: code and detail at the root */
    analyze(&res, APIGW_UPSTREAM_REWRITE, APIGW_FMT_PROBLEM_JSON, 403,
            &ct_json, NULL, "{\"type\":\"about:blank\",\"title\":\"No\","
            "\"status\":403,\"detail\":\"Nope\",\"code\":\"no\"}", 0);
    assert_body(&res, "{\"type\":\"about:blank\",\"title\":\"No\","
                "\"status\":403,\"detail\":\"Nope\",\"code\":\"no\","
                "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* no request id to add: KEEP */
    assert_int_equal(apigw_upstream_error_analyze(APIGW_UPSTREAM_REWRITE,
        tpl[APIGW_FMT_MESSAGE_ERRORS], NULL, 400, &ct_json, NULL,
        (const unsigned char *) LIT("{\"message\":\"m\",\"code\":\"c\"}"),
        0, NULL, &res), 0);
    assert_int_equal(res.action, APIGW_UE_KEEP);
    apigw_upstream_error_free(&res);

    /* a code that is not a string is not the shape */
    analyze(&res, APIGW_UPSTREAM_REWRITE, APIGW_FMT_MESSAGE_ERRORS, 400,
            &ct_json, NULL, "{\"message\":\"m\",\"code\":42}", 0);
    assert_int_equal(res.action, APIGW_UE_ENVELOPE);
    apigw_upstream_error_free(&res);
}


/* ---- rewrite vs normalize --------------------------------------------- */

static void
test_rewrite_vs_normalize(void **state)
{
    static const char  body[] =
        "{\"error\":\"invalid_grant\",\"error_description\":"
        "\"Token expired {retry_after}\"}";

    apigw_upstream_result_t  res;

    analyze(&res, APIGW_UPSTREAM_REWRITE, APIGW_FMT_ERROR_OBJECT, 400,
            &ct_json, NULL, body, 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_400);
    apigw_upstream_error_free(&res);

    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_ERROR_OBJECT, 400,
            &ct_json, NULL, body, 0);
    assert_int_equal(res.envelope.message_literal, 1);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"invalid_request_error\","
        "\"code\":\"invalid_grant\","
        "\"message\":\"Token expired {retry_after}\"},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);
}


/* ---- foreign shapes ---------------------------------------------------- */

static void
test_pydantic(void **state)
{
    apigw_upstream_result_t  res;

    normalize(&res, 422,
        "{\"detail\":[{\"loc\":[\"body\",\"email\"],"
        "\"msg\":\"value is not a valid email address\","
        "\"type\":\"value_error.email\"},"
        "{\"loc\":[\"query\",\"items\",0,\"qty\"],"
        "\"msg\":\"ensure this value is greater than 0\","
        "\"type\":\"value_error.number.not_gt\"},"
        "{\"loc\":[\"body\"],\"msg\":\"Field required\","
        "\"type\":\"missing\"},"
        "{\"loc\":[\"header\",\"x-token\"],\"msg\":\"bad\","
        "\"type\":\"bad type!\"},"
        "\"not an item\"]}");

    assert_int_equal(res.envelope.status, 422);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"invalid_request_error\","
        "\"code\":\"unprocessable_entity\","
        "\"message\":\"Validation failed.\",\"errors\":["
        "{\"field\":\"email\",\"message\":\"value is not a valid email "
        "address\",\"code\":\"value_error.email\"},"
        "{\"field\":\"items.0.qty\",\"message\":\"ensure this value is "
        "greater than 0\",\"code\":\"value_error.number.not_gt\"},"
        "{\"field\":\"body\",\"message\":\"Field required\","
        "\"code\":\"missing\"},"
        "{\"field\":\"header.x-token\",\"message\":\"bad\"}]},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* one error: its message is the envelope's */
    normalize(&res, 422,
        "{\"detail\":[{\"loc\":[\"path\",\"id\"],\"msg\":\"not an int\","
        "\"type\":\"type_error.integer\"}]}");
    assert_envelope(&res, APIGW_FMT_MESSAGE_ERRORS,
        "{\"message\":\"not an int\",\"code\":\"unprocessable_entity\","
        "\"errors\":[{\"field\":\"id\",\"message\":\"not an int\","
        "\"code\":\"type_error.integer\"}],\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* {"detail":"text"} */
    normalize(&res, 401, "{\"detail\":\"Not authenticated\"}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"authentication_error\","
        "\"code\":\"unauthorized\",\"message\":\"Not authenticated\"},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);
}


static void
test_message_errors(void **state)
{
    apigw_upstream_result_t  res;

    normalize(&res, 400,
        "{\"message\":\"Validation Failed\",\"code\":\"validation_failed\","
        "\"errors\":[{\"field\":\"title\",\"message\":\"is required\","
        "\"code\":\"missing_field\"},{\"field\":\"body\","
        "\"message\":\"too long\"},\"a bare string\",{\"nomessage\":1}]}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"invalid_request_error\","
        "\"code\":\"validation_failed\",\"message\":\"Validation Failed\","
        "\"errors\":[{\"field\":\"title\",\"message\":\"is required\","
        "\"code\":\"missing_field\"},{\"field\":\"body\","
        "\"message\":\"too long\"},{\"field\":\"\","
        "\"message\":\"a bare string\"}]},\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* Laravel's errors object */
    normalize(&res, 422,
        "{\"message\":\"The given data was invalid.\",\"errors\":{"
        "\"email\":[\"The email field is required.\",\"Bad email.\"],"
        "\"name\":\"Too short.\"}}");
    assert_envelope(&res, APIGW_FMT_MESSAGE_ERRORS,
        "{\"message\":\"The given data was invalid.\","
        "\"code\":\"unprocessable_entity\",\"errors\":["
        "{\"field\":\"email\",\"message\":\"The email field is required.\"},"
        "{\"field\":\"email\",\"message\":\"Bad email.\"},"
        "{\"field\":\"name\",\"message\":\"Too short.\"}],"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* a bare message; its braces stay text */
    normalize(&res, 429, "{\"message\":\"Slow down {retry_after}\"}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"rate_limit_error\","
        "\"code\":\"too_many_requests\","
        "\"message\":\"Slow down {retry_after}\"},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);
}


static void
test_error_string(void **state)
{
    apigw_upstream_result_t  res;

    normalize(&res, 409, "{\"error\":\"already_exists\","
              "\"message\":\"The widget exists.\"}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"invalid_request_error\","
        "\"code\":\"already_exists\",\"message\":\"The widget exists.\"},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* Spring Boot: "error" is a reason phrase, not a code */
    normalize(&res, 404, "{\"timestamp\":\"2024-01-01T00:00:00Z\","
              "\"status\":404,\"error\":\"Not Found\","
              "\"message\":\"No message available\",\"path\":\"/x\"}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"not_found_error\",\"code\":\"not_found\","
        "\"message\":\"No message available\"},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    normalize(&res, 404, "{\"error\":\"Not Found\"}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"not_found_error\",\"code\":\"not_found\","
        "\"message\":\"Not Found\"},\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* a code alone keeps the catalog message */
    normalize(&res, 404, "{\"error\":\"no_such_widget\"}");
    assert_int_equal(res.envelope.message_literal, 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"not_found_error\",\"code\":\"no_such_widget\","
        "\"message\":\"The requested resource was not found.\"},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);
}


static void
test_error_object(void **state)
{
    apigw_upstream_result_t  res;

    /*
     * Under error_object these bodies are already in shape (see
     * test_keep_and_request_id): translate them for problem_json.
     * Stripe; 402 is "any other 4xx".
     */
    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_PROBLEM_JSON, 402,
            &ct_json, NULL,
        "{\"error\":{\"type\":\"card_error\",\"code\":\"card_declined\","
        "\"message\":\"Your card was declined.\",\"param\":\"number\","
        "\"doc_url\":\"https://stripe.com/docs/error-codes/card-declined\","
        "\"decline_code\":\"generic_decline\"}}", 0);
    assert_int_equal(res.envelope.status, 402);
    assert_envelope(&res, APIGW_FMT_PROBLEM_JSON,
        "{\"type\":\"https://stripe.com/docs/error-codes/card-declined\","
        "\"title\":\"Client error\",\"status\":402,"
        "\"detail\":\"Your card was declined.\",\"code\":\"card_declined\","
        "\"param\":\"number\",\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* Google: numeric code, symbolic status; a 5xx gets correlation_id */
    normalize(&res, 503,
        "{\"error\":{\"code\":503,\"message\":\"The service is down.\","
        "\"status\":\"UNAVAILABLE\"}}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"api_error\",\"code\":\"UNAVAILABLE\","
        "\"message\":\"The service is down.\","
        "\"correlation_id\":\"" RID "\"},\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* an unsafe code falls back to the status's, the message stays */
    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_MESSAGE_ERRORS, 400,
            &ct_json, NULL,
            "{\"error\":{\"code\":\"bad code\\\"<x>\",\"message\":\"m\"}}",
            0);
    assert_envelope(&res, APIGW_FMT_MESSAGE_ERRORS,
        "{\"message\":\"m\",\"code\":\"invalid_request\","
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* in the configured shape, the shape wins over translation */
    normalize(&res, 400,
        "{\"error\":{\"code\":\"bad code\",\"message\":\"m\"}}");
    assert_body(&res, "{\"error\":{\"code\":\"bad code\",\"message\":\"m\"},"
                "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* an error object with nothing usable is no match */
    normalize(&res, 400, "{\"error\":{\"when\":1}}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT, EO_DEFAULT_400);
    apigw_upstream_error_free(&res);
}


static void
test_rfc9457(void **state)
{
    apigw_upstream_result_t  res;

    normalize(&res, 403,
        "{\"type\":\"https://example.com/probs/out-of-credit\","
        "\"title\":\"You do not have enough credit.\",\"status\":403,"
        "\"detail\":\"Your current balance is 30, but that costs 50.\","
        "\"instance\":\"/account/12345/msgs/abc\","
        "\"code\":\"out_of_credit\"}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"permission_error\","
        "\"code\":\"out_of_credit\",\"message\":\"Your current balance is "
        "30, but that costs 50.\","
        "\"doc_url\":\"https://example.com/probs/out-of-credit\"},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* RFC 9457's own invalid-params example, about:blank, no detail */
    normalize(&res, 400,
        "{\"type\":\"about:blank\",\"title\":\"Your request is not valid.\","
        "\"invalid-params\":[{\"name\":\"age\","
        "\"reason\":\"must be a positive integer\"},"
        "{\"name\":\"color\",\"reason\":\"must be 'green', 'red' or "
        "'blue'\"}]}");
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"invalid_request_error\","
        "\"code\":\"invalid_request\","
        "\"message\":\"Your request is not valid.\",\"errors\":["
        "{\"field\":\"age\",\"message\":\"must be a positive integer\"},"
        "{\"field\":\"color\",\"message\":\"must be 'green', 'red' or "
        "'blue'\"}]},\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* "errors" with JSON pointers */
    normalize(&res, 422,
        "{\"type\":\"https://example.net/validation-error\","
        "\"title\":\"Your request is not valid.\",\"status\":422,"
        "\"errors\":[{\"detail\":\"must be a positive integer\","
        "\"pointer\":\"#/age\"}]}");
    assert_envelope(&res, APIGW_FMT_MESSAGE_ERRORS,
        "{\"message\":\"Your request is not valid.\","
        "\"code\":\"unprocessable_entity\",\"errors\":[{\"field\":\"#/age\","
        "\"message\":\"must be a positive integer\"}],"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);
}


static void
test_limits(void **state)
{
    apigw_upstream_result_t  res;
    char                    *body, *p;
    int                      i;

    /* 1023 bytes, then a 2-byte character straddling the 1024 limit */
    body = malloc(4096);
    assert_non_null(body);
    p = body + sprintf(body, "{\"message\":\"");
    memset(p, 'a', 1023);
    p += 1023;
    p += sprintf(p, "\xc3\xa9tail\"}");

    normalize(&res, 400, body);
    assert_int_equal(res.envelope.message.len, 1023);
    assert_int_equal(res.envelope.message.data[1022], 'a');
    apigw_upstream_error_free(&res);

    p = body + sprintf(body, "{\"message\":\"");
    memset(p, 'b', 2000);
    p += 2000;
    sprintf(p, "\"}");

    normalize(&res, 400, body);
    assert_int_equal(res.envelope.message.len, APIGW_UPSTREAM_MAX_TEXT);
    apigw_upstream_error_free(&res);

    /* at most APIGW_UPSTREAM_MAX_ERRORS field errors */
    p = body + sprintf(body, "{\"message\":\"m\",\"errors\":[");
    for (i = 0; i < 40; i++) {
        p += sprintf(p, "%s{\"field\":\"f%d\",\"message\":\"x\"}",
                     i ? "," : "", i);
    }
    sprintf(p, "]}");

    normalize(&res, 400, body);
    assert_int_equal(res.envelope.nerrors, APIGW_UPSTREAM_MAX_ERRORS);
    assert_true(res.envelope.errors == res.errors);
    assert_true(apigw_str_eq(&res.errors[31].field, "f31"));
    apigw_upstream_error_free(&res);

    free(body);
}


/* The catalog's type/title come from the status's entry, renamed or not. */
static void
test_catalog_and_status(void **state)
{
    static const char  json[] =
        "{\"not_found\":{\"code\":\"simio_not_found\","
        "\"doc_url\":\"https://simio.example/nf\"}}";

    apigw_catalog_t          cat;
    apigw_upstream_result_t  res;
    char                     err[128];

    apigw_catalog_init(&cat);
    assert_int_equal(apigw_catalog_load_json(&cat, json, sizeof(json) - 1,
                                             err, sizeof(err)), 0);

    assert_int_equal(apigw_upstream_error_analyze(APIGW_UPSTREAM_NORMALIZE,
        tpl[APIGW_FMT_ERROR_OBJECT], &cat, 404, &ct_html, NULL,
        (const unsigned char *) LIT("<h1>gone</h1>"), 0, &rid, &res), 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"not_found_error\",\"code\":\"simio_not_found\","
        "\"message\":\"The requested resource was not found.\","
        "\"doc_url\":\"https://simio.example/nf\"},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    /* a foreign code drops the doc_url that documents the default one */
    assert_int_equal(apigw_upstream_error_analyze(APIGW_UPSTREAM_NORMALIZE,
        tpl[APIGW_FMT_ERROR_OBJECT], &cat, 404, &ct_json, NULL,
        (const unsigned char *) LIT("{\"error\":\"no_widget\"}"), 0, &rid,
        &res), 0);
    assert_envelope(&res, APIGW_FMT_ERROR_OBJECT,
        "{\"error\":{\"type\":\"not_found_error\",\"code\":\"no_widget\","
        "\"message\":\"The requested resource was not found.\"},"
        "\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);

    apigw_catalog_free(&cat);

    /* the real status is kept for any other 4xx/5xx */
    analyze(&res, APIGW_UPSTREAM_NORMALIZE, APIGW_FMT_PROBLEM_JSON, 418,
            &ct_html, NULL, "teapot", 0);
    assert_envelope(&res, APIGW_FMT_PROBLEM_JSON,
        "{\"type\":\"about:blank\",\"title\":\"Client error\",\"status\":418,"
        "\"detail\":\"The request could not be processed.\","
        "\"code\":\"client_error\",\"request_id\":\"" RID "\"}");
    apigw_upstream_error_free(&res);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_html_body),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_content_encoding),
        cmocka_unit_test(test_empty_and_invalid),
        cmocka_unit_test(test_keep_and_request_id),
        cmocka_unit_test(test_rewrite_vs_normalize),
        cmocka_unit_test(test_pydantic),
        cmocka_unit_test(test_message_errors),
        cmocka_unit_test(test_error_string),
        cmocka_unit_test(test_error_object),
        cmocka_unit_test(test_rfc9457),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_catalog_and_status),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
