/*
 * The two-pass JSON writer: exact escaping, U+FFFD substitution of every
 * ill-formed UTF-8 sequence, and measure == write.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <cmocka.h>
#include <jansson.h>

#include "apigw_json.h"


/* Escapes in, measuring first; asserts both passes agree. */
static char *
escape(const void *in, size_t len, int quoted)
{
    apigw_writer_t   w;
    size_t           need;
    char            *out;

    w.buf = NULL;
    w.len = 0;

    if (quoted) {
        apigw_w_string(&w, in, len);
    } else {
        apigw_w_escaped(&w, in, len);
    }

    need = w.len;
    out = malloc(need + 1);
    assert_non_null(out);

    w.buf = (unsigned char *) out;
    w.len = 0;

    if (quoted) {
        apigw_w_string(&w, in, len);
    } else {
        apigw_w_escaped(&w, in, len);
    }

    assert_int_equal(w.len, need);
    out[need] = '\0';

    return out;
}


static void
assert_escaped(const void *in, size_t len, const char *expected)
{
    char  *s;

    s = escape(in, len, 0);
    assert_string_equal(s, expected);
    free(s);
}


#define LIT(s)  s, sizeof(s) - 1


static void
test_ascii_passes(void **state)
{
    assert_escaped(LIT("hello, world /~{}[]"), "hello, world /~{}[]");
    assert_escaped("", 0, "");
    assert_escaped(NULL, 0, "");
    /* DEL is legal in JSON strings */
    assert_escaped(LIT("a\x7f" "b"), "a\x7f" "b");
}


static void
test_short_escapes(void **state)
{
    assert_escaped(LIT("\"q\" \\b\\"), "\\\"q\\\" \\\\b\\\\");
    assert_escaped(LIT("a\nb\rc\td\be\ff"), "a\\nb\\rc\\td\\be\\ff");
}


static void
test_control_escapes(void **state)
{
    assert_escaped("\0", 1, "\\u0000");
    assert_escaped(LIT("\x01\x1f\x0b"), "\\u0001\\u001f\\u000b");
    assert_escaped(LIT("x\x1by"), "x\\u001by");
}


static void
test_valid_utf8_passes(void **state)
{
    /* é, €, 😀, U+10FFFF, U+FFFD itself */
    assert_escaped(LIT("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"),
                   "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    assert_escaped(LIT("\xf4\x8f\xbf\xbf"), "\xf4\x8f\xbf\xbf");
    assert_escaped(LIT("\xef\xbf\xbd"), "\xef\xbf\xbd");
    /* the smallest 2-, 3- and 4-byte forms */
    assert_escaped(LIT("\xc2\x80\xe0\xa0\x80\xf0\x90\x80\x80"),
                   "\xc2\x80\xe0\xa0\x80\xf0\x90\x80\x80");
}


static void
test_line_separators(void **state)
{
    assert_escaped(LIT("a\xe2\x80\xa8" "b\xe2\x80\xa9" "c"),
                   "a\\u2028b\\u2029c");
    /* the neighbours stay raw */
    assert_escaped(LIT("\xe2\x80\xa7\xe2\x80\xaa"),
                   "\xe2\x80\xa7\xe2\x80\xaa");
}


#define FFFD "\xef\xbf\xbd"

static void
test_invalid_utf8(void **state)
{
    /* lone continuation bytes and impossible lead bytes */
    assert_escaped(LIT("a\x80" "b"), "a" FFFD "b");
    assert_escaped(LIT("\xbf\xfe\xff"), FFFD FFFD FFFD);
    assert_escaped(LIT("\xf5\x80"), FFFD FFFD);

    /* overlongs: C0/C1 are never valid, E0 80.., F0 80.. neither */
    assert_escaped(LIT("\xc0\xaf"), FFFD FFFD);
    assert_escaped(LIT("\xc1\xbf"), FFFD FFFD);
    assert_escaped(LIT("\xe0\x80\xaf"), FFFD FFFD FFFD);
    assert_escaped(LIT("\xf0\x80\x80\xaf"), FFFD FFFD FFFD FFFD);

    /* surrogates U+D800, U+DFFF */
    assert_escaped(LIT("\xed\xa0\x80"), FFFD FFFD FFFD);
    assert_escaped(LIT("\xed\xbf\xbf"), FFFD FFFD FFFD);

    /* above U+10FFFF */
    assert_escaped(LIT("\xf4\x90\x80\x80"), FFFD FFFD FFFD FFFD);

    /* truncated: the maximal subpart is one U+FFFD */
    assert_escaped(LIT("\xe2\x82"), FFFD);
    assert_escaped(LIT("\xe2\x82" "A"), FFFD "A");
    assert_escaped(LIT("\xf0\x9f\x98"), FFFD);
    assert_escaped(LIT("\xf0\x9f\x98\""), FFFD "\\\"");
    assert_escaped(LIT("x\xc3"), "x" FFFD);

    /* a broken sequence does not swallow a following valid one */
    assert_escaped(LIT("\xe2\xc3\xa9"), FFFD "\xc3\xa9");
}


static void
test_string_quotes(void **state)
{
    char  *s;

    s = escape(LIT("say \"hi\"\n"), 1);
    assert_string_equal(s, "\"say \\\"hi\\\"\\n\"");
    free(s);

    s = escape("", 0, 1);
    assert_string_equal(s, "\"\"");
    free(s);
}


static void
test_int_and_raw(void **state)
{
    unsigned char   buf[128];
    apigw_writer_t  w;

    w.buf = buf;
    w.len = 0;

    apigw_w_int(&w, 0);
    apigw_w_lit(&w, ",");
    apigw_w_int(&w, -42);
    apigw_w_lit(&w, ",");
    apigw_w_int(&w, LLONG_MAX);
    apigw_w_lit(&w, ",");
    apigw_w_int(&w, LLONG_MIN);
    apigw_w_raw(&w, "!", 1);
    apigw_w_raw(&w, NULL, 0);

    assert_int_equal(w.len, strlen("0,-42,9223372036854775807,"
                                   "-9223372036854775808!"));
    assert_memory_equal(buf, "0,-42,9223372036854775807,"
                        "-9223372036854775808!", w.len);

    /* measuring counts the same */
    w.buf = NULL;
    w.len = 0;
    apigw_w_int(&w, LLONG_MIN);
    assert_int_equal(w.len, 20);
}


/* Any bytes at all must come out as a string jansson accepts. */
static void
test_random_bytes_give_valid_json(void **state)
{
    unsigned char   in[64];
    char           *s;
    json_t         *v;
    json_error_t    jerr;
    unsigned int    seed;
    int             i, j, len;

    seed = 12345;

    for (i = 0; i < 20000; i++) {
        len = rand_r(&seed) % (int) sizeof(in);

        for (j = 0; j < len; j++) {
            /* bias toward the interesting bytes */
            switch (rand_r(&seed) % 4) {
            case 0:
                in[j] = (unsigned char) (0x80 + rand_r(&seed) % 0x80);
                break;
            case 1:
                in[j] = (unsigned char) (rand_r(&seed) % 0x20);
                break;
            default:
                in[j] = (unsigned char) (rand_r(&seed) % 256);
                break;
            }
        }

        s = escape(in, (size_t) len, 1);
        v = json_loads(s, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);

        if (v == NULL) {
            fail_msg("invalid JSON for input %d: %s", i, jerr.text);
        }

        assert_true(json_is_string(v));
        json_decref(v);
        free(s);
    }
}


/* Valid UTF-8 without specials must round-trip through jansson. */
static void
test_roundtrip(void **state)
{
    static const char  in[] = "\"\\/\b\f\n\r\t\x01 \xc3\xa9\xe2\x82\xac"
                              "\xe2\x80\xa8\xf0\x9f\x98\x80";
    char              *s;
    json_t            *v;

    s = escape(LIT(in), 1);
    v = json_loads(s, JSON_DECODE_ANY, NULL);
    assert_non_null(v);
    assert_int_equal(json_string_length(v), sizeof(in) - 1);
    assert_memory_equal(json_string_value(v), in, sizeof(in) - 1);
    json_decref(v);
    free(s);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ascii_passes),
        cmocka_unit_test(test_short_escapes),
        cmocka_unit_test(test_control_escapes),
        cmocka_unit_test(test_valid_utf8_passes),
        cmocka_unit_test(test_line_separators),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_string_quotes),
        cmocka_unit_test(test_int_and_raw),
        cmocka_unit_test(test_random_bytes_give_valid_json),
        cmocka_unit_test(test_roundtrip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
