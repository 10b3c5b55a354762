/*
 * Templates and envelope rendering: exact bytes of the five built-ins, a
 * custom template, catalog overrides, every compile error, hostile input.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "apigw_template.h"


#define RID       "req_0123456789abcdef01234567"
#define DOC_BASE  "https://docs.example.com/errors/"

#define LIT(s)    s, sizeof(s) - 1


/*
 * Measures, writes into a buffer of exactly that size (guarded on both
 * sides), asserts both passes agree and the bytes are valid JSON.
 */
static char *
render(const apigw_template_t *t, const apigw_envelope_t *e)
{
    size_t         need, got;
    unsigned char *buf;
    json_t        *v;
    json_error_t   jerr;

    need = apigw_envelope_render(t, e, NULL);

    buf = malloc(need + 2);
    assert_non_null(buf);
    buf[need] = 0xA5;
    buf[need + 1] = 0x5A;

    got = apigw_envelope_render(t, e, buf);
    assert_int_equal(got, need);
    assert_int_equal(buf[need], 0xA5);
    assert_int_equal(buf[need + 1], 0x5A);
    buf[need] = '\0';

    v = json_loadb((const char *) buf, need, JSON_ALLOW_NUL, &jerr);
    if (v == NULL) {
        fail_msg("invalid JSON (%s): %s", jerr.text, buf);
    }
    json_decref(v);

    return (char *) buf;
}


static void
assert_render(const apigw_template_t *t, const apigw_envelope_t *e,
    const char *expected)
{
    char  *s;

    s = render(t, e);
    assert_string_equal(s, expected);
    free(s);
}


static void
assert_builtin(apigw_format_t fmt, const apigw_envelope_t *e,
    const char *expected)
{
    apigw_template_t  *t;

    t = apigw_template_builtin(fmt);
    assert_non_null(t);
    assert_render(t, e, expected);
    apigw_template_free(t);
}


static apigw_template_t *
compile_ok(const char *src)
{
    apigw_template_t  *t;
    char               err[256];

    err[0] = '\0';
    t = apigw_template_compile(src, strlen(src), err, sizeof(err));
    if (t == NULL) {
        fail_msg("compile failed: %s", err);
    }

    return t;
}


static void
rate_limited(apigw_envelope_t *e, const apigw_catalog_t *cat)
{
    apigw_envelope_init(e, cat, APIGW_E_RATE_LIMITED);
    apigw_str_set(&e->request_id, RID);
    apigw_str_set(&e->doc_base, DOC_BASE);
    apigw_envelope_detail_int(e, "retry_after", 12);
    apigw_envelope_detail_int(e, "limit", 10);
    apigw_envelope_detail_str(e, "policy", (const unsigned char *)
                              LIT("per_minute"));
}


/* ---- the five built-ins ------------------------------------------------ */

#define RL_MSG    "\"Rate limit exceeded. Retry after 12 seconds.\""
#define RL_DET    "{\"retry_after\":12,\"limit\":10,\"policy\":\"per_minute\"}"
#define RL_SPREAD "\"retry_after\":12,\"limit\":10,\"policy\":\"per_minute\""

static void
test_builtin_rate_limited(void **state)
{
    apigw_envelope_t  e;

    rate_limited(&e, NULL);

    assert_builtin(APIGW_FMT_ERROR_OBJECT, &e,
        "{\"error\":{\"type\":\"rate_limit_error\",\"code\":\"rate_limited\","
        "\"message\":" RL_MSG ","
        "\"doc_url\":\"https://docs.example.com/errors/rate_limited\","
        "\"details\":" RL_DET "},\"request_id\":\"" RID "\"}");

    assert_builtin(APIGW_FMT_PROBLEM_JSON, &e,
        "{\"type\":\"https://docs.example.com/errors/rate_limited\","
        "\"title\":\"Rate limited\",\"status\":429,\"detail\":" RL_MSG ","
        "\"code\":\"rate_limited\",\"request_id\":\"" RID "\","
        RL_SPREAD "}");

    assert_builtin(APIGW_FMT_DATA_ERROR_META, &e,
        "{\"data\":null,\"error\":\"rate_limited\",\"meta\":{"
        "\"request_id\":\"" RID "\",\"message\":" RL_MSG ","
        RL_SPREAD "}}");

    assert_builtin(APIGW_FMT_ERROR_DETAILS, &e,
        "{\"error\":{\"code\":\"rate_limited\",\"message\":" RL_MSG ","
        "\"details\":" RL_DET ",\"request_id\":\"" RID "\"}}");

    assert_builtin(APIGW_FMT_MESSAGE_ERRORS, &e,
        "{\"message\":" RL_MSG ",\"code\":\"rate_limited\","
        "\"details\":" RL_DET ",\"request_id\":\"" RID "\"}");
}


#define UU_MSG  "\"The upstream service is unavailable.\""

static void
test_builtin_5xx(void **state)
{
    apigw_envelope_t  e;

    apigw_envelope_init(&e, NULL, APIGW_E_UPSTREAM_UNAVAILABLE);
    apigw_str_set(&e.request_id, RID);

    assert_builtin(APIGW_FMT_ERROR_OBJECT, &e,
        "{\"error\":{\"type\":\"api_error\",\"code\":\"upstream_unavailable\","
        "\"message\":" UU_MSG ",\"correlation_id\":\"" RID "\"},"
        "\"request_id\":\"" RID "\"}");

    assert_builtin(APIGW_FMT_PROBLEM_JSON, &e,
        "{\"type\":\"about:blank\",\"title\":\"Upstream unavailable\","
        "\"status\":502,\"detail\":" UU_MSG ","
        "\"code\":\"upstream_unavailable\",\"request_id\":\"" RID "\","
        "\"correlation_id\":\"" RID "\"}");

    assert_builtin(APIGW_FMT_DATA_ERROR_META, &e,
        "{\"data\":null,\"error\":\"upstream_unavailable\",\"meta\":{"
        "\"request_id\":\"" RID "\",\"correlation_id\":\"" RID "\","
        "\"message\":" UU_MSG "}}");

    assert_builtin(APIGW_FMT_ERROR_DETAILS, &e,
        "{\"error\":{\"code\":\"upstream_unavailable\",\"message\":" UU_MSG
        ",\"request_id\":\"" RID "\",\"correlation_id\":\"" RID "\"}}");

    assert_builtin(APIGW_FMT_MESSAGE_ERRORS, &e,
        "{\"message\":" UU_MSG ",\"code\":\"upstream_unavailable\","
        "\"request_id\":\"" RID "\",\"correlation_id\":\"" RID "\"}");

    /* the glue sets the real status: 500 is still 5xx, 499 is not */
    e.status = 500;
    assert_builtin(APIGW_FMT_MESSAGE_ERRORS, &e,
        "{\"message\":" UU_MSG ",\"code\":\"upstream_unavailable\","
        "\"request_id\":\"" RID "\",\"correlation_id\":\"" RID "\"}");
    e.status = 499;
    assert_builtin(APIGW_FMT_MESSAGE_ERRORS, &e,
        "{\"message\":" UU_MSG ",\"code\":\"upstream_unavailable\","
        "\"request_id\":\"" RID "\"}");

    /* no request id: neither member */
    e.status = 502;
    e.request_id.len = 0;
    assert_builtin(APIGW_FMT_ERROR_DETAILS, &e,
        "{\"error\":{\"code\":\"upstream_unavailable\",\"message\":" UU_MSG
        "}}");
}


#define IK_MSG  "\"The Idempotency-Key header must be 1 to 255 printable " \
                "ASCII characters without spaces.\""

static void
test_builtin_param(void **state)
{
    apigw_envelope_t  e;

    apigw_envelope_init(&e, NULL, APIGW_E_IDEMPOTENCY_KEY_INVALID);
    apigw_str_set(&e.request_id, RID);
    apigw_str_set(&e.param, "Idempotency-Key");

    assert_builtin(APIGW_FMT_ERROR_OBJECT, &e,
        "{\"error\":{\"type\":\"invalid_request_error\","
        "\"code\":\"idempotency_key_invalid\",\"message\":" IK_MSG ","
        "\"param\":\"Idempotency-Key\"},\"request_id\":\"" RID "\"}");

    assert_builtin(APIGW_FMT_PROBLEM_JSON, &e,
        "{\"type\":\"about:blank\",\"title\":\"Invalid idempotency key\","
        "\"status\":400,\"detail\":" IK_MSG ","
        "\"code\":\"idempotency_key_invalid\",\"param\":\"Idempotency-Key\","
        "\"request_id\":\"" RID "\"}");

    assert_builtin(APIGW_FMT_DATA_ERROR_META, &e,
        "{\"data\":null,\"error\":\"idempotency_key_invalid\",\"meta\":{"
        "\"request_id\":\"" RID "\",\"message\":" IK_MSG ","
        "\"param\":\"Idempotency-Key\"}}");

    assert_builtin(APIGW_FMT_ERROR_DETAILS, &e,
        "{\"error\":{\"code\":\"idempotency_key_invalid\","
        "\"message\":" IK_MSG ",\"param\":\"Idempotency-Key\","
        "\"request_id\":\"" RID "\"}}");

    /* message_errors has no place for param */
    assert_builtin(APIGW_FMT_MESSAGE_ERRORS, &e,
        "{\"message\":" IK_MSG ",\"code\":\"idempotency_key_invalid\","
        "\"request_id\":\"" RID "\"}");
}


#define FE  "[{\"field\":\"email\",\"message\":\"must be a valid email\"," \
            "\"code\":\"invalid_format\"},"                                \
            "{\"field\":\"age\",\"message\":\"must be >= 18\"}]"
#define VF  "\"Validation failed.\""

static void
test_builtin_field_errors(void **state)
{
    static const apigw_field_error_t  errs[2] = {
        { apigw_string("email"), apigw_string("must be a valid email"),
          apigw_string("invalid_format") },
        { apigw_string("age"), apigw_string("must be >= 18"),
          apigw_null_string }
    };
    apigw_envelope_t                  e;

    apigw_envelope_init(&e, NULL, APIGW_E_UNPROCESSABLE_ENTITY);
    apigw_str_set(&e.request_id, RID);
    apigw_str_set(&e.message, "Validation failed.");
    e.errors = errs;
    e.nerrors = 2;

    assert_builtin(APIGW_FMT_ERROR_OBJECT, &e,
        "{\"error\":{\"type\":\"invalid_request_error\","
        "\"code\":\"unprocessable_entity\",\"message\":" VF ","
        "\"errors\":" FE "},\"request_id\":\"" RID "\"}");

    assert_builtin(APIGW_FMT_PROBLEM_JSON, &e,
        "{\"type\":\"about:blank\",\"title\":\"Unprocessable entity\","
        "\"status\":422,\"detail\":" VF ",\"code\":\"unprocessable_entity\","
        "\"errors\":" FE ",\"request_id\":\"" RID "\"}");

    assert_builtin(APIGW_FMT_DATA_ERROR_META, &e,
        "{\"data\":null,\"error\":\"unprocessable_entity\",\"meta\":{"
        "\"request_id\":\"" RID "\",\"message\":" VF ","
        "\"errors\":" FE "}}");

    assert_builtin(APIGW_FMT_ERROR_DETAILS, &e,
        "{\"error\":{\"code\":\"unprocessable_entity\",\"message\":" VF ","
        "\"errors\":" FE ",\"request_id\":\"" RID "\"}}");

    assert_builtin(APIGW_FMT_MESSAGE_ERRORS, &e,
        "{\"message\":" VF ",\"code\":\"unprocessable_entity\","
        "\"errors\":" FE ",\"request_id\":\"" RID "\"}");
}


static void
test_builtin_meta(void **state)
{
    static const char *const  names[APIGW_FMT__COUNT] = {
        "error_object", "problem_json", "data_error_meta", "error_details",
        "message_errors"
    };
    apigw_template_t         *t;
    int                       i;

    for (i = 0; i < APIGW_FMT__COUNT; i++) {
        assert_int_equal(apigw_format_by_name(names[i], strlen(names[i])),
                         i);

        t = apigw_template_builtin(i);
        assert_non_null(t);
        assert_string_equal(apigw_template_content_type(t),
                            i == APIGW_FMT_PROBLEM_JSON
                            ? "application/problem+json"
                            : "application/json");
        apigw_template_free(t);
    }

    assert_int_equal(apigw_format_by_name(LIT("error_objec")), -1);
    assert_int_equal(apigw_format_by_name(LIT("error_objects")), -1);
    assert_int_equal(apigw_format_by_name("", 0), -1);
    assert_null(apigw_template_builtin_source(APIGW_FMT__COUNT));

    assert_string_equal(apigw_template_builtin_source(APIGW_FMT_ERROR_OBJECT),
        "{\"error\":{\"type\":\"$type\",\"code\":\"$code\","
        "\"message\":\"$message\",\"param\":\"$param\","
        "\"doc_url\":\"$doc_url\",\"details\":\"$details\","
        "\"errors\":\"$errors\",\"correlation_id\":\"$correlation_id\"},"
        "\"request_id\":\"$request_id\"}");
    assert_string_equal(apigw_template_builtin_source(APIGW_FMT_PROBLEM_JSON),
        "{\"type\":\"$doc_url|about:blank\",\"title\":\"$title\","
        "\"status\":\"$status\",\"detail\":\"$message\",\"code\":\"$code\","
        "\"param\":\"$param\",\"errors\":\"$errors\","
        "\"request_id\":\"$request_id\","
        "\"correlation_id\":\"$correlation_id\",\"...\":\"$details\"}");
    assert_string_equal(
        apigw_template_builtin_source(APIGW_FMT_DATA_ERROR_META),
        "{\"data\":null,\"error\":\"$code\",\"meta\":{"
        "\"request_id\":\"$request_id\","
        "\"correlation_id\":\"$correlation_id\",\"message\":\"$message\","
        "\"param\":\"$param\",\"errors\":\"$errors\",\"...\":\"$details\"}}");
    assert_string_equal(
        apigw_template_builtin_source(APIGW_FMT_ERROR_DETAILS),
        "{\"error\":{\"code\":\"$code\",\"message\":\"$message\","
        "\"param\":\"$param\",\"details\":\"$details\","
        "\"errors\":\"$errors\",\"request_id\":\"$request_id\","
        "\"correlation_id\":\"$correlation_id\"}}");
    assert_string_equal(
        apigw_template_builtin_source(APIGW_FMT_MESSAGE_ERRORS),
        "{\"message\":\"$message\",\"code\":\"$code\",\"errors\":\"$errors\","
        "\"details\":\"$details\",\"request_id\":\"$request_id\","
        "\"correlation_id\":\"$correlation_id\"}");

    t = compile_ok("{\"m\":\"$message\"}");
    assert_string_equal(apigw_template_content_type(t), "application/json");
    apigw_template_set_content_type(t, "application/vnd.err+json");
    assert_string_equal(apigw_template_content_type(t),
                        "application/vnd.err+json");
    apigw_template_free(t);
}


/* ---- paths ------------------------------------------------------------- */

static void
assert_path(const apigw_template_t *t, const char *ph, size_t n, ...)
{
    const apigw_template_path_t  *p;
    va_list                       ap;
    size_t                        i;

    p = apigw_template_path(t, ph);
    assert_non_null(p);
    assert_int_equal(p->len, n);

    va_start(ap, n);
    for (i = 0; i < n; i++) {
        assert_string_equal(p->names[i], va_arg(ap, const char *));
    }
    va_end(ap);
}


static void
test_paths(void **state)
{
    apigw_template_t  *t;

    t = apigw_template_builtin(APIGW_FMT_ERROR_OBJECT);
    assert_path(t, "code", 2, "error", "code");
    assert_path(t, "message", 2, "error", "message");
    assert_path(t, "request_id", 1, "request_id");
    assert_path(t, "title", 0);
    apigw_template_free(t);

    t = apigw_template_builtin(APIGW_FMT_PROBLEM_JSON);
    assert_path(t, "code", 1, "code");
    assert_path(t, "message", 1, "detail");
    assert_path(t, "request_id", 1, "request_id");
    apigw_template_free(t);

    t = apigw_template_builtin(APIGW_FMT_DATA_ERROR_META);
    assert_path(t, "code", 1, "error");
    assert_path(t, "message", 2, "meta", "message");
    assert_path(t, "request_id", 2, "meta", "request_id");
    apigw_template_free(t);

    t = apigw_template_builtin(APIGW_FMT_ERROR_DETAILS);
    assert_path(t, "code", 2, "error", "code");
    assert_path(t, "message", 2, "error", "message");
    assert_path(t, "request_id", 2, "error", "request_id");
    apigw_template_free(t);

    t = apigw_template_builtin(APIGW_FMT_MESSAGE_ERRORS);
    assert_path(t, "code", 1, "code");
    assert_path(t, "message", 1, "message");
    assert_path(t, "request_id", 1, "request_id");
    apigw_template_free(t);

    /* inside an array: none; a later object-only occurrence counts */
    t = compile_ok("{\"x\":[\"$code\",{\"r\":\"$request_id\"}],"
                   "\"y\":{\"c\":\"$code|none\"},\"m\":\"$message\"}");
    assert_path(t, "code", 2, "y", "c");
    assert_path(t, "message", 1, "m");
    assert_path(t, "request_id", 0);
    apigw_template_free(t);

    /* deeper than APIGW_TEMPLATE_MAX_DEPTH names: none */
    t = compile_ok("{\"a\":{\"b\":{\"c\":{\"d\":\"$code\","
                   "\"e\":{\"m\":\"$message\"}}}}}");
    assert_path(t, "code", 4, "a", "b", "c", "d");
    assert_path(t, "message", 0);
    apigw_template_free(t);

    assert_path(NULL, "code", 0);
}


/* ---- a custom template ------------------------------------------------- */

static void
test_custom_template(void **state)
{
    static const char  src[] =
        "{\n"
        "  \"ok\": false,\n"
        "  \"status\": \"$status\",\n"
        "  \"error\": {\n"
        "    \"id\": \"$code\",\n"
        "    \"text\": \"$message\",\n"
        "    \"kind\": \"$type|generic\",\n"
        "    \"link\": \"$doc_url|https://example.com/none\",\n"
        "    \"retry\": \"$details.retry_after\",\n"
        "    \"policy\": \"$details.policy\",\n"
        "    \"missing\": \"$details.nope\",\n"
        "    \"fallback\": \"$details.nope|n/a\",\n"
        "    \"meta\": {\n"
        "      \"n\": 1.5, \"big\": -12, \"t\": true, \"nil\": null,\n"
        "      \"list\": [1, \"two\", {\"x\": \"$$literal\"}, [], {}],\n"
        "      \"tags\": [\"$code\", \"$param\", \"$details.limit\"],\n"
        "      \"...\": \"$details\"\n"
        "    }\n"
        "  },\n"
        "  \"price\": \"$$5\",\n"
        "  \"a\\\"b\\u00e9\\n\": \"key escaped\",\n"
        "  \"trace\": [\"$request_id\", \"$correlation_id\"]\n"
        "}\n";

    apigw_template_t  *t;
    apigw_envelope_t   e;

    t = compile_ok(src);
    rate_limited(&e, NULL);
    e.doc_base.len = 0;

    assert_render(t, &e,
        "{\"ok\":false,\"status\":429,\"error\":{\"id\":\"rate_limited\","
        "\"text\":" RL_MSG ",\"kind\":\"rate_limit_error\","
        "\"link\":\"https://example.com/none\",\"retry\":12,"
        "\"policy\":\"per_minute\",\"fallback\":\"n/a\","
        "\"meta\":{\"n\":1.5,\"big\":-12,\"t\":true,\"nil\":null,"
        "\"list\":[1,\"two\",{\"x\":\"$literal\"},[],{}],"
        "\"tags\":[\"rate_limited\",10]," RL_SPREAD "}},"
        "\"price\":\"$5\",\"a\\\"b\xc3\xa9\\n\":\"key escaped\","
        "\"trace\":[\"" RID "\"]}");

    /* a 5xx without details or doc_base, with a param */
    apigw_envelope_init(&e, NULL, APIGW_E_UPSTREAM_TIMEOUT);
    apigw_str_set(&e.request_id, RID);
    apigw_str_set(&e.param, "q");

    assert_render(t, &e,
        "{\"ok\":false,\"status\":504,\"error\":{\"id\":\"upstream_timeout\","
        "\"text\":\"The upstream service did not respond in time.\","
        "\"kind\":\"api_error\",\"link\":\"https://example.com/none\","
        "\"fallback\":\"n/a\","
        "\"meta\":{\"n\":1.5,\"big\":-12,\"t\":true,\"nil\":null,"
        "\"list\":[1,\"two\",{\"x\":\"$literal\"},[],{}],"
        "\"tags\":[\"upstream_timeout\",\"q\"]}},"
        "\"price\":\"$5\",\"a\\\"b\xc3\xa9\\n\":\"key escaped\","
        "\"trace\":[\"" RID "\",\"" RID "\"]}");

    apigw_template_free(t);
}


static void
test_reals_and_numbers(void **state)
{
    apigw_template_t  *t;
    apigw_envelope_t   e;

    t = compile_ok("{\"c\":\"$code\",\"r\":[0.1,2.0,-0.5,1e300,123456789.25,"
                   "1.7976931348623157e308,0,-9223372036854775807]}");
    apigw_envelope_init(&e, NULL, APIGW_E_GONE);

    assert_render(t, &e,
        "{\"c\":\"gone\",\"r\":[0.1,2.0,-0.5,1e+300,123456789.25,"
        "1.7976931348623157e+308,0,-9223372036854775807]}");

    apigw_template_free(t);
}


/* Dropped members keep the commas right wherever they are. */
static void
test_absent_members_and_commas(void **state)
{
    apigw_template_t  *t;
    apigw_envelope_t   e;

    t = compile_ok("{\"p\":\"$param\",\"...\":\"$details\",\"d\":\"$doc_url\","
                   "\"c\":\"$code\",\"e\":\"$errors\",\"x\":{\"p\":\"$param\","
                   "\"r\":\"$correlation_id\"},\"l\":[\"$param\",\"$param\"],"
                   "\"z\":\"$details\"}");

    apigw_envelope_init(&e, NULL, APIGW_E_NOT_FOUND);
    assert_render(t, &e, "{\"c\":\"not_found\",\"x\":{},\"l\":[]}");

    apigw_str_set(&e.param, "id");
    apigw_envelope_detail_int(&e, "n", 1);
    assert_render(t, &e,
        "{\"p\":\"id\",\"n\":1,\"c\":\"not_found\",\"x\":{\"p\":\"id\"},"
        "\"l\":[\"id\",\"id\"],\"z\":{\"n\":1}}");

    apigw_template_free(t);

    /* the spread first, and at the end */
    t = compile_ok("{\"...\":\"$details\",\"m\":\"$message\"}");
    assert_render(t, &e, "{\"n\":1,\"m\":\"The requested resource was not "
                  "found.\"}");
    apigw_template_free(t);

    t = compile_ok("{\"m\":\"$message\",\"...\":\"$details\"}");
    e.ndetails = 0;
    assert_render(t, &e, "{\"m\":\"The requested resource was not "
                  "found.\"}");
    apigw_template_free(t);
}


/* A spread never repeats a member name the object already has. */
static void
test_spread_skips_clashes(void **state)
{
    apigw_template_t  *t;
    apigw_envelope_t   e;

    t = compile_ok("{\"code\":\"$code\",\"limit\":\"fixed\","
                   "\"...\":\"$details\"}");
    rate_limited(&e, NULL);
    apigw_envelope_detail_str(&e, "code", (const unsigned char *)
                              LIT("evil"));

    assert_render(t, &e,
        "{\"code\":\"rate_limited\",\"limit\":\"fixed\",\"retry_after\":12,"
        "\"policy\":\"per_minute\"}");

    apigw_template_free(t);
}


static void
test_details(void **state)
{
    apigw_template_t  *t;
    apigw_envelope_t   e;
    char               name[APIGW_MAX_DETAILS + 2][16];
    int                i;

    t = compile_ok("{\"c\":\"$code\",\"d\":\"$details\"}");
    apigw_envelope_init(&e, NULL, APIGW_E_GONE);

    /* setting a detail twice keeps its first position, last value */
    apigw_envelope_detail_int(&e, "a", 1);
    apigw_envelope_detail_int(&e, "b", 2);
    apigw_envelope_detail_str(&e, "a", (const unsigned char *) LIT("x"));
    apigw_envelope_detail_int(&e, "neg", -7);
    apigw_envelope_detail_str(&e, "empty", (const unsigned char *) "", 0);

    assert_render(t, &e, "{\"c\":\"gone\",\"d\":{\"a\":\"x\",\"b\":2,"
                  "\"neg\":-7,\"empty\":\"\"}}");

    /* past APIGW_MAX_DETAILS they are ignored */
    apigw_envelope_init(&e, NULL, APIGW_E_GONE);
    for (i = 0; i < APIGW_MAX_DETAILS + 2; i++) {
        snprintf(name[i], sizeof(name[i]), "d%d", i);
        apigw_envelope_detail_int(&e, name[i], i);
    }
    assert_int_equal(e.ndetails, APIGW_MAX_DETAILS);

    assert_render(t, &e, "{\"c\":\"gone\",\"d\":{\"d0\":0,\"d1\":1,\"d2\":2,"
                  "\"d3\":3,\"d4\":4,\"d5\":5,\"d6\":6,\"d7\":7}}");

    apigw_template_free(t);
}


static void
test_message_substitution(void **state)
{
    apigw_template_t  *t;
    apigw_envelope_t   e;

    t = compile_ok("{\"m\":\"$message\"}");
    rate_limited(&e, NULL);
    apigw_envelope_detail_str(&e, "policy", (const unsigned char *)
                              LIT("a\"b\n"));
    apigw_str_set(&e.message,
                  "x{retry_after}y{nope}z{policy}{}{{limit}}{limit");

    assert_render(t, &e, "{\"m\":\"x12y{nope}za\\\"b\\n{}{10}{limit\"}");

    /* upstream text is never interpreted */
    e.message_literal = 1;
    assert_render(t, &e,
        "{\"m\":\"x{retry_after}y{nope}z{policy}{}{{limit}}{limit\"}");

    e.message.len = 0;
    assert_render(t, &e, "{\"m\":\"\"}");

    /* the catalog's own reference */
    apigw_envelope_init(&e, NULL, APIGW_E_SCOPE_REQUIRED);
    apigw_envelope_detail_str(&e, "required_scope", (const unsigned char *)
                              LIT("orders:write"));
    assert_render(t, &e, "{\"m\":\"This API key lacks the required scope "
                  "'orders:write'.\"}");

    apigw_template_free(t);
}


static void
test_catalog_override(void **state)
{
    static const char  json[] =
        "{\"rate_limited\":{\"code\":\"simio_rate_limited\",\"status\":503,"
        "\"doc_url\":\"https://simio.example/docs/rl\"},"
        "\"not_found\":{\"code\":\"simio_not_found\"}}";

    apigw_catalog_t    cat;
    apigw_envelope_t   e;
    char               err[256];

    apigw_catalog_init(&cat);
    assert_int_equal(apigw_catalog_load_json(&cat, json, sizeof(json) - 1,
                                             err, sizeof(err)), 0);

    apigw_envelope_init(&e, &cat, APIGW_E_RATE_LIMITED);
    apigw_str_set(&e.request_id, RID);
    apigw_str_set(&e.doc_base, DOC_BASE);
    apigw_envelope_detail_int(&e, "retry_after", 12);

    /* the explicit doc_url beats doc_base; 503 brings correlation_id */
    assert_builtin(APIGW_FMT_ERROR_OBJECT, &e,
        "{\"error\":{\"type\":\"rate_limit_error\","
        "\"code\":\"simio_rate_limited\",\"message\":" RL_MSG ","
        "\"doc_url\":\"https://simio.example/docs/rl\","
        "\"details\":{\"retry_after\":12},\"correlation_id\":\"" RID "\"},"
        "\"request_id\":\"" RID "\"}");

    assert_builtin(APIGW_FMT_PROBLEM_JSON, &e,
        "{\"type\":\"https://simio.example/docs/rl\","
        "\"title\":\"Rate limited\",\"status\":503,\"detail\":" RL_MSG ","
        "\"code\":\"simio_rate_limited\",\"request_id\":\"" RID "\","
        "\"correlation_id\":\"" RID "\",\"retry_after\":12}");

    /* doc_base + the renamed code */
    apigw_envelope_init(&e, &cat, APIGW_E_NOT_FOUND);
    apigw_str_set(&e.doc_base, DOC_BASE);
    assert_builtin(APIGW_FMT_ERROR_OBJECT, &e,
        "{\"error\":{\"type\":\"not_found_error\","
        "\"code\":\"simio_not_found\","
        "\"message\":\"The requested resource was not found.\","
        "\"doc_url\":\"https://docs.example.com/errors/simio_not_found\"}}");

    apigw_catalog_free(&cat);
}


/* ---- hostile input ----------------------------------------------------- */

#define HOSTILE      "a\r\nb\"c\\d\0e\x01\xc3(\xed\xa0\x80\xe2\x80\xa8" "f" \
                     "\xf0\x9f\x98\x80\xff"
#define HOSTILE_OUT  "a\\r\\nb\\\"c\\\\d\\u0000e\\u0001\xef\xbf\xbd(" \
                     "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\\u2028f"   \
                     "\xf0\x9f\x98\x80\xef\xbf\xbd"
/* what jansson reads back from HOSTILE_OUT */
#define HOSTILE_VAL  "a\r\nb\"c\\d\0e\x01\xef\xbf\xbd(" \
                     "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xe2\x80\xa8" "f" \
                     "\xf0\x9f\x98\x80\xef\xbf\xbd"

static void
test_hostile_strings(void **state)
{
    static const apigw_field_error_t  errs[1] = {
        { { sizeof(HOSTILE) - 1, (unsigned char *) HOSTILE },
          { sizeof(HOSTILE) - 1, (unsigned char *) HOSTILE },
          { sizeof(HOSTILE) - 1, (unsigned char *) HOSTILE } }
    };
    apigw_template_t                 *t;
    apigw_envelope_t                  e;
    json_t                           *root, *v;
    char                             *s;
    int                               fmt;

    apigw_envelope_init(&e, NULL, APIGW_E_INTERNAL_ERROR);

#define SET_HOSTILE(f)                                                        \
    (f).data = (unsigned char *) HOSTILE; (f).len = sizeof(HOSTILE) - 1

    SET_HOSTILE(e.message);
    SET_HOSTILE(e.code);
    SET_HOSTILE(e.type);
    SET_HOSTILE(e.title);
    SET_HOSTILE(e.param);
    SET_HOSTILE(e.request_id);
    SET_HOSTILE(e.doc_base);
    e.message_literal = 1;
    e.errors = errs;
    e.nerrors = 1;
    apigw_envelope_detail_str(&e, "h", (const unsigned char *) HOSTILE,
                              sizeof(HOSTILE) - 1);

    for (fmt = 0; fmt < APIGW_FMT__COUNT; fmt++) {
        t = apigw_template_builtin(fmt);
        s = render(t, &e);

        root = json_loads(s, JSON_ALLOW_NUL, NULL);
        assert_non_null(root);

        v = json_object_get(root, "request_id");
        if (v == NULL) {
            v = json_object_get(json_object_get(root, "error"),
                                "request_id");
        }
        if (v == NULL) {
            v = json_object_get(json_object_get(root, "meta"), "request_id");
        }

        assert_non_null(v);
        assert_int_equal(json_string_length(v), sizeof(HOSTILE_VAL) - 1);
        assert_memory_equal(json_string_value(v), HOSTILE_VAL,
                            sizeof(HOSTILE_VAL) - 1);

        json_decref(root);
        free(s);
        apigw_template_free(t);
    }

    /* and the exact bytes once */
    t = compile_ok("{\"m\":\"$message\",\"u\":\"$doc_url\","
                   "\"d\":\"$details.h\"}");
    assert_render(t, &e,
        "{\"m\":\"" HOSTILE_OUT "\",\"u\":\"" HOSTILE_OUT HOSTILE_OUT "\","
        "\"d\":\"" HOSTILE_OUT "\"}");

    /* substitution escapes what it inserts */
    e.message_literal = 0;
    apigw_str_set(&e.message, "<{h}>");
    assert_render(t, &e,
        "{\"m\":\"<" HOSTILE_OUT ">\",\"u\":\"" HOSTILE_OUT HOSTILE_OUT
        "\",\"d\":\"" HOSTILE_OUT "\"}");
    apigw_template_free(t);

#undef SET_HOSTILE
}


/* ---- compile errors ---------------------------------------------------- */

static void
expect_compile_error(const char *src, const char *expected)
{
    apigw_template_t  *t;
    char               err[512];

    err[0] = '\0';
    t = apigw_template_compile(src, strlen(src), err, sizeof(err));
    assert_null(t);
    assert_string_equal(err, expected);
}


static char *
nested(int levels)
{
    char  *s, *p;
    int    i;

    /* {"c":"$code","a": + (levels - 1) arrays + 1 + closings + } */
    s = malloc(64 + 2 * (size_t) levels);
    assert_non_null(s);

    p = s + sprintf(s, "{\"c\":\"$code\",\"a\":");
    for (i = 1; i < levels; i++) {
        *p++ = '[';
    }
    *p++ = '1';
    for (i = 1; i < levels; i++) {
        *p++ = ']';
    }
    strcpy(p, "}");

    return s;
}


static void
test_compile_errors(void **state)
{
    apigw_template_t  *t;
    char              *s;

    expect_compile_error("{\"code\": \"$code\",}",
        "invalid JSON at line 1, column 18: string or '}' expected "
        "near '}'");
    expect_compile_error("{\n  \"code\": \"$code\"\n  \"m\": 1\n}",
        "invalid JSON at line 3, column 5: '}' expected near '\"m\"'");
    expect_compile_error("",
        "invalid JSON at line 1, column 0: '[' or '{' expected near end of "
        "file");
    expect_compile_error("{\"c\":\"$code\"} x",
        "invalid JSON at line 1, column 15: end of file expected near 'x'");
    expect_compile_error("{\"c\":\"$code\",\"c\":\"$message\"}",
        "invalid JSON at line 1, column 16: duplicate object key near "
        "'\"c\"'");

    expect_compile_error("[\"$code\"]", "the template must be a JSON object");

    expect_compile_error("{\"c\":\"$code\",\"x\":{\"y\":[\"$nope\"]}}",
        "unknown placeholder \"$nope\" (a literal string starting with "
        "\"$\" is written \"$$...\")");
    expect_compile_error("{\"c\":\"$code\",\"x\":\"$\"}",
        "unknown placeholder \"$\" (a literal string starting with "
        "\"$\" is written \"$$...\")");
    expect_compile_error("{\"c\":\"$Code|x\"}",
        "unknown placeholder \"$Code\" (a literal string starting with "
        "\"$\" is written \"$$...\")");
    expect_compile_error("{\"c\":\"$code\",\"x\":\"$details.\"}",
        "unknown placeholder \"$details.\" (a literal string starting "
        "with \"$\" is written \"$$...\")");
    expect_compile_error("{\"c\":\"$code\",\"x\":\"$code \"}",
        "unknown placeholder \"$code \" (a literal string starting "
        "with \"$\" is written \"$$...\")");

    expect_compile_error("{\"c\":\"$code\",\"...\":\"$errors\"}",
        "the member \"...\" must be \"$details\"");
    expect_compile_error("{\"c\":\"$code\",\"...\":{}}",
        "the member \"...\" must be \"$details\"");

    expect_compile_error("{\"s\":\"$status\",\"r\":\"$request_id\","
                         "\"l\":\"$$code\",\"x\":[\"$type\"]}",
        "the template has neither \"$code\" nor \"$message\"");
    expect_compile_error("{}",
        "the template has neither \"$code\" nor \"$message\"");

    /* 16 levels compile, 17 do not */
    s = nested(16);
    t = compile_ok(s);
    apigw_template_free(t);
    free(s);

    s = nested(17);
    expect_compile_error(s, "the template nests deeper than 16 levels");
    free(s);

    /* the first problem in document order is the one reported */
    expect_compile_error("{\"a\":\"$bad\",\"b\":[[[[[[[[[[[[[[[[[1]]]]]]]]]]"
                         "]]]]]]]}",
        "unknown placeholder \"$bad\" (a literal string starting with "
        "\"$\" is written \"$$...\")");
}


static void
test_load_file(void **state)
{
    static const char  src[] = "{\"oops\": \"$message\"}";

    apigw_template_t  *t;
    apigw_envelope_t   e;
    char               path[] = "/tmp/apigw_template_XXXXXX";
    char               err[256];
    char              *big;
    FILE              *f;
    int                fd;

    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(src, f);
    fclose(f);

    t = apigw_template_load_file(path, err, sizeof(err));
    assert_non_null(t);
    apigw_envelope_init(&e, NULL, APIGW_E_GONE);
    assert_render(t, &e, "{\"oops\":\"The requested resource is no longer "
                  "available.\"}");
    apigw_template_free(t);

    /* exactly 64 KB is fine, one byte more is not */
    big = malloc(65537);
    assert_non_null(big);
    memset(big, ' ', 65537);
    memcpy(big, src, sizeof(src) - 1);

    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(big, 1, 65536, f), 65536);
    fclose(f);

    t = apigw_template_load_file(path, err, sizeof(err));
    assert_non_null(t);
    apigw_template_free(t);

    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(big, 1, 65537, f), 65537);
    fclose(f);
    free(big);

    t = apigw_template_load_file(path, err, sizeof(err));
    assert_null(t);
    assert_string_equal(err, "the template is larger than 65536 bytes");

    f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"a\":\n\"$nope\"}", f);
    fclose(f);

    t = apigw_template_load_file(path, err, sizeof(err));
    assert_null(t);
    assert_string_equal(err, "unknown placeholder \"$nope\" (a literal "
                        "string starting with \"$\" is written \"$$...\")");

    unlink(path);

    t = apigw_template_load_file(path, err, sizeof(err));
    assert_null(t);
    assert_string_equal(err, "cannot open the template: No such file or "
                        "directory");

    t = apigw_template_load_file("/", err, sizeof(err));
    assert_null(t);
    assert_string_equal(err, "cannot read the template: Is a directory");
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin_rate_limited),
        cmocka_unit_test(test_builtin_5xx),
        cmocka_unit_test(test_builtin_param),
        cmocka_unit_test(test_builtin_field_errors),
        cmocka_unit_test(test_builtin_meta),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_custom_template),
        cmocka_unit_test(test_reals_and_numbers),
        cmocka_unit_test(test_absent_members_and_commas),
        cmocka_unit_test(test_spread_skips_clashes),
        cmocka_unit_test(test_details),
        cmocka_unit_test(test_message_substitution),
        cmocka_unit_test(test_catalog_override),
        cmocka_unit_test(test_hostile_strings),
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_load_file),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
