#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "apigw_idempotency.h"


#define S(lit)  (const unsigned char *) (lit), sizeof(lit) - 1


/* Idempotency-Key parsing */

typedef struct {
    const char  *in;
    size_t       len;       /* 0: strlen(in) */
    const char  *out;       /* NULL: invalid */
} key_case_t;


static void
test_key_parse_table(void **state)
{
    size_t          i;
    apigw_str_t     key;
    unsigned char   buf[APIGW_IDEM_KEY_MAX];

    static const key_case_t  cases[] = {
        { "abc", 0, "abc" },
        { "a", 0, "a" },
        { "order-123_x.y:z/w", 0, "order-123_x.y:z/w" },
        { "!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", 0,
          "!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" },
        { "ab\"c", 0, "ab\"c" },                /* a bare key may hold " */
        { "  abc\t", 0, "abc" },                /* OWS is not the value */
        { "\"abc\"", 0, "abc" },
        { " \"abc\" ", 0, "abc" },
        { "\"a\\\"b\"", 0, "a\"b" },
        { "\"a\\\\b\"", 0, "a\\b" },
        { "\"\\\\\"", 0, "\\" },
        { "\"\\\"\"", 0, "\"" },
        { "", 0, NULL },
        { "   ", 0, NULL },
        { "\"\"", 0, NULL },                     /* empty sf-string */
        { "\"abc", 0, NULL },                    /* unterminated */
        { "\"abc\\\"", 0, NULL },                /* escaped, unterminated */
        { "\"abc\\", 0, NULL },                  /* dangling backslash */
        { "\"a\\nb\"", 0, NULL },                /* only \" and \\ */
        { "\"abc\"x", 0, NULL },                 /* trailing garbage */
        { "\"abc\" x", 0, NULL },
        { "\"abc\";p=1", 0, NULL },              /* parameters refused */
        { "\"abc\"\"", 0, NULL },
        { "\"a b\"", 0, NULL },                  /* space in sf-string */
        { "a b", 0, NULL },
        { "a\tb", 0, NULL },
        { "\"a\tb\"", 0, NULL },
        { "a\x7f" "b", 0, NULL },                /* DEL */
        { "a\x01" "b", 0, NULL },
        { "caf\xc3\xa9", 0, NULL },              /* UTF-8 */
        { "\"caf\xc3\xa9\"", 0, NULL },
        { "a\rb", 0, NULL },
        { "a\nb", 0, NULL },
        { "a\0b", 3, NULL },                     /* NUL inside */
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const key_case_t  *c = &cases[i];
        size_t             len = c->len ? c->len : strlen(c->in);
        int                rc;

        memset(buf, 0, sizeof(buf));
        rc = apigw_idem_key_parse((const unsigned char *) c->in, len, buf,
                                  &key);

        if (c->out == NULL) {
            if (rc != -1) {
                fail_msg("case %zu \"%s\" accepted", i, c->in);
            }
            continue;
        }

        if (rc != 0) {
            fail_msg("case %zu \"%s\" refused", i, c->in);
        }

        assert_int_equal(key.len, strlen(c->out));
        assert_memory_equal(key.data, c->out, key.len);
        assert_ptr_equal(key.data, buf);
    }
}


static void
test_key_parse_lengths(void **state)
{
    apigw_str_t    key;
    unsigned char  buf[APIGW_IDEM_KEY_MAX];
    unsigned char  in[2 + 2 * 300];
    size_t         i;

    memset(in, 'k', sizeof(in));

    assert_int_equal(apigw_idem_key_parse(in, 255, buf, &key), 0);
    assert_int_equal(key.len, 255);
    assert_int_equal(apigw_idem_key_parse(in, 256, buf, &key), -1);
    assert_int_equal(apigw_idem_key_parse(in, 300, buf, &key), -1);
    assert_int_equal(apigw_idem_key_parse(NULL, 0, buf, &key), -1);

    /* quoted: the limit applies to the decoded key */
    in[0] = '"';
    in[256] = '"';
    assert_int_equal(apigw_idem_key_parse(in, 257, buf, &key), 0);
    assert_int_equal(key.len, 255);

    memset(in, 'k', sizeof(in));
    in[0] = '"';
    in[257] = '"';
    assert_int_equal(apigw_idem_key_parse(in, 258, buf, &key), -1);

    /* 255 escaped characters: 512 bytes on the wire, 255 decoded */
    in[0] = '"';
    for (i = 0; i < 255; i++) {
        in[1 + 2 * i] = '\\';
        in[2 + 2 * i] = '\\';
    }
    in[511] = '"';
    assert_int_equal(apigw_idem_key_parse(in, 512, buf, &key), 0);
    assert_int_equal(key.len, 255);
    assert_int_equal(buf[0], '\\');
    assert_int_equal(buf[254], '\\');

    /* 256 escaped: refused without writing past buf */
    in[0] = '"';
    for (i = 0; i < 256; i++) {
        in[1 + 2 * i] = '\\';
        in[2 + 2 * i] = '"';
    }
    in[513] = '"';
    assert_int_equal(apigw_idem_key_parse(in, 514, buf, &key), -1);
}


/* fingerprint */

static void
fp_oneshot(const char *method, const char *uri, const unsigned char *body,
    size_t blen, char out[APIGW_IDEM_FP_HEX + 1])
{
    apigw_idem_fp_t  fp = { NULL };

    assert_int_equal(apigw_idem_fp_init(&fp, (const unsigned char *) method,
                                        strlen(method),
                                        (const unsigned char *) uri,
                                        strlen(uri)), 0);
    assert_int_equal(apigw_idem_fp_update(&fp, body, blen), 0);
    assert_int_equal(apigw_idem_fp_final(&fp, out), 0);
    assert_null(fp.md);
}


static void
test_fp_framing(void **state)
{
    size_t  i, j;
    char    fps[8][APIGW_IDEM_FP_HEX + 1];

    /* the same concatenated bytes "POST/abc", split differently */
    fp_oneshot("POST", "/abc", S(""), fps[0]);
    fp_oneshot("POST", "/ab", S("c"), fps[1]);
    fp_oneshot("POST", "/a", S("bc"), fps[2]);
    fp_oneshot("POS", "T/abc", S(""), fps[3]);
    fp_oneshot("POST/", "abc", S(""), fps[4]);
    fp_oneshot("", "POST/abc", S(""), fps[5]);
    fp_oneshot("", "", S("POST/abc"), fps[6]);
    fp_oneshot("PATCH", "/abc", S(""), fps[7]);

    for (i = 0; i < 8; i++) {
        assert_int_equal(strlen(fps[i]), APIGW_IDEM_FP_HEX);
        assert_int_equal(strspn(fps[i], "0123456789abcdef"),
                         APIGW_IDEM_FP_HEX);

        for (j = i + 1; j < 8; j++) {
            if (strcmp(fps[i], fps[j]) == 0) {
                fail_msg("fingerprints %zu and %zu collide", i, j);
            }
        }
    }

    /* deterministic */
    fp_oneshot("POST", "/a", S("bc"), fps[0]);
    assert_string_equal(fps[0], fps[2]);

    /* arguments are part of the URI */
    fp_oneshot("POST", "/a?x=1", S(""), fps[0]);
    fp_oneshot("POST", "/a?x=2", S(""), fps[1]);
    assert_string_not_equal(fps[0], fps[1]);
}


/* Pins the framing: nodes of different builds must agree. */
static void
test_fp_format_pinned(void **state)
{
    static const unsigned char  framed[] =
        "apigw-idempotency-fingerprint-v1\0"
        "\0\0\0\0\0\0\0\4" "POST"
        "\0\0\0\0\0\0\0\6" "/a?b=c"
        "{\"x\":1}";
    unsigned char  d[EVP_MAX_MD_SIZE];
    unsigned int   n, i;
    char           want[APIGW_IDEM_FP_HEX + 1], got[APIGW_IDEM_FP_HEX + 1];

    assert_int_equal(EVP_Digest(framed, sizeof(framed) - 1, d, &n,
                                EVP_sha256(), NULL), 1);
    for (i = 0; i < n; i++) {
        snprintf(want + 2 * i, 3, "%02x", d[i]);
    }

    fp_oneshot("POST", "/a?b=c", S("{\"x\":1}"), got);
    assert_string_equal(got, want);
}


static void
test_fp_chunked(void **state)
{
    size_t           i, off, step, len;
    unsigned char    body[5000];
    char             whole[APIGW_IDEM_FP_HEX + 1], part[APIGW_IDEM_FP_HEX + 1];
    apigw_idem_fp_t  fp = { NULL };

    for (i = 0; i < sizeof(body); i++) {
        body[i] = (unsigned char) (i * 31 + 7);
    }

    fp_oneshot("POST", "/pay?x=1", body, sizeof(body), whole);

    for (step = 1; step <= 4097; step = step * 3 + 1) {
        assert_int_equal(apigw_idem_fp_init(&fp, S("POST"), S("/pay?x=1")),
                         0);

        for (off = 0; off < sizeof(body); off += len) {
            len = sizeof(body) - off < step ? sizeof(body) - off : step;
            assert_int_equal(apigw_idem_fp_update(&fp, body + off, len), 0);
            /* empty chunks (e.g. last_buf) change nothing */
            assert_int_equal(apigw_idem_fp_update(&fp, NULL, 0), 0);
        }

        assert_int_equal(apigw_idem_fp_final(&fp, part), 0);
        assert_string_equal(part, whole);
    }

    /* one byte of body more or less differs */
    fp_oneshot("POST", "/pay?x=1", body, sizeof(body) - 1, part);
    assert_string_not_equal(part, whole);
}


static void
test_fp_lifecycle(void **state)
{
    apigw_idem_fp_t  fp = { NULL };
    char             out[APIGW_IDEM_FP_HEX + 1];

    /* abort on a zeroed, an active and an aborted fingerprint */
    apigw_idem_fp_abort(&fp);
    assert_int_equal(apigw_idem_fp_init(&fp, S("POST"), S("/")), 0);
    assert_non_null(fp.md);
    assert_int_equal(apigw_idem_fp_update(&fp, S("x")), 0);
    apigw_idem_fp_abort(&fp);
    assert_null(fp.md);
    apigw_idem_fp_abort(&fp);

    /* use after final or abort is refused, not a crash */
    assert_int_equal(apigw_idem_fp_update(&fp, S("x")), -1);
    assert_int_equal(apigw_idem_fp_final(&fp, out), -1);

    assert_int_equal(apigw_idem_fp_init(&fp, S("POST"), S("/")), 0);
    assert_int_equal(apigw_idem_fp_final(&fp, out), 0);
    assert_int_equal(apigw_idem_fp_final(&fp, out), -1);
    apigw_idem_fp_abort(&fp);
}


/* response record */

#define H(n, v)  { { sizeof(n) - 1, (unsigned char *) (n) },                  \
                   { sizeof(v) - 1, (unsigned char *) (v) } }

static apigw_idem_header_t  sample_headers[] = {
    H("Content-Type", "application/json; charset=utf-8"),
    H("Set-Cookie", "session=secret"),
    H("Location", "/v1/charges/ch_1"),
    H("Content-Length", "13"),
    H("X-Request-Id", "req_abc"),
    H("X-Trace", ""),
    H("Link", "</a>; rel=\"next\""),
    H("Link", "</b>; rel=\"prev\""),
    H("x-apigw-tenant", "t1"),
    H("ETag", "\"v1\""),
};

static const unsigned char  sample_body[] =
    "{\"id\":1}\0\x01\xff\x00\r\n\"z";


static void
sample_record(apigw_idem_record_t *rec)
{
    rec->status = 201;
    rec->headers = sample_headers;
    rec->nheaders = sizeof(sample_headers) / sizeof(sample_headers[0]);
    rec->body.data = (unsigned char *) sample_body;
    rec->body.len = sizeof(sample_body);       /* with the final NUL */
}


static unsigned char *
encode_sample(size_t *len)
{
    apigw_idem_record_t   rec;
    unsigned char        *buf;
    size_t                n;

    sample_record(&rec);
    n = apigw_idem_record_size(&rec);
    assert_true(n > 0);

    buf = malloc(n);
    assert_non_null(buf);
    assert_int_equal(apigw_idem_record_encode(&rec, buf, n), n);
    *len = n;

    return buf;
}


static void
test_record_roundtrip(void **state)
{
    size_t               n, i;
    unsigned char       *buf, *buf2;
    apigw_idem_record_t  rec, out;
    apigw_idem_header_t  hs[APIGW_IDEM_MAX_HEADERS];

    static const char  *want[][2] = {
        { "Content-Type", "application/json; charset=utf-8" },
        { "Location", "/v1/charges/ch_1" },
        { "X-Trace", "" },
        { "Link", "</a>; rel=\"next\"" },
        { "Link", "</b>; rel=\"prev\"" },
        { "ETag", "\"v1\"" },
    };

    buf = encode_sample(&n);
    assert_int_equal(buf[0], APIGW_IDEM_RECORD_VERSION);

    assert_int_equal(apigw_idem_record_decode(buf, n, hs,
                                              APIGW_IDEM_MAX_HEADERS, &out),
                     0);
    assert_int_equal(out.status, 201);
    assert_int_equal(out.nheaders, 6);

    for (i = 0; i < 6; i++) {
        assert_int_equal(out.headers[i].name.len, strlen(want[i][0]));
        assert_memory_equal(out.headers[i].name.data, want[i][0],
                            out.headers[i].name.len);
        assert_int_equal(out.headers[i].value.len, strlen(want[i][1]));
        if (out.headers[i].value.len) {
            assert_memory_equal(out.headers[i].value.data, want[i][1],
                                out.headers[i].value.len);
        }
    }

    assert_int_equal(out.body.len, sizeof(sample_body));
    assert_memory_equal(out.body.data, sample_body, sizeof(sample_body));
    assert_true(out.body.data >= buf && out.body.data + out.body.len
                                        == buf + n);

    /* re-encoding the decoded record gives the same bytes */
    assert_int_equal(apigw_idem_record_size(&out), n);
    buf2 = malloc(n);
    assert_non_null(buf2);
    assert_int_equal(apigw_idem_record_encode(&out, buf2, n), n);
    assert_memory_equal(buf, buf2, n);

    /* head + caller-placed body == encode */
    sample_record(&rec);
    memset(buf2, 0xee, n);
    i = apigw_idem_record_encode_head(&rec, buf2, n);
    assert_int_equal(i + sizeof(sample_body), n);
    memcpy(buf2 + i, sample_body, sizeof(sample_body));
    assert_memory_equal(buf, buf2, n);

    /* a buffer one byte short is refused */
    assert_int_equal(apigw_idem_record_encode(&rec, buf2, n - 1), 0);
    assert_int_equal(apigw_idem_record_encode_head(&rec, buf2, i - 1), 0);

    free(buf);
    free(buf2);
}


static void
test_record_empty(void **state)
{
    unsigned char        buf[16];
    apigw_idem_record_t  rec, out;
    apigw_idem_header_t  hs[1];

    memset(&rec, 0, sizeof(rec));
    rec.status = 204;

    assert_int_equal(apigw_idem_record_size(&rec), 9);
    assert_int_equal(apigw_idem_record_encode(&rec, buf, sizeof(buf)), 9);
    assert_memory_equal(buf, "\x01\x00\xcc\x00\x00\x00\x00\x00\x00", 9);

    assert_int_equal(apigw_idem_record_decode(buf, 9, hs, 0, &out), 0);
    assert_int_equal(out.status, 204);
    assert_int_equal(out.nheaders, 0);
    assert_int_equal(out.body.len, 0);
}


static void
test_record_truncated(void **state)
{
    size_t               n, cut;
    unsigned char       *buf, *copy;
    apigw_idem_record_t  out;
    apigw_idem_header_t  hs[APIGW_IDEM_MAX_HEADERS];

    buf = encode_sample(&n);

    for (cut = 0; cut < n; cut++) {
        /* an exact-size heap copy so an over-read is caught by ASan */
        copy = malloc(cut ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, buf, cut);

        if (apigw_idem_record_decode(copy, cut, hs, APIGW_IDEM_MAX_HEADERS,
                                     &out) != -1)
        {
            fail_msg("truncated to %zu of %zu bytes accepted", cut, n);
        }

        free(copy);
    }

    /* one trailing byte too many */
    copy = malloc(n + 1);
    assert_non_null(copy);
    memcpy(copy, buf, n);
    copy[n] = 0;
    assert_int_equal(apigw_idem_record_decode(copy, n + 1, hs,
                                              APIGW_IDEM_MAX_HEADERS, &out),
                     -1);
    free(copy);

    assert_int_equal(apigw_idem_record_decode(NULL, 0, hs, 1, &out), -1);

    free(buf);
}


/* Every single-bit corruption: refused or decoded within bounds. */
static void
test_record_bitflips(void **state)
{
    size_t               n, i, bit, h;
    unsigned char       *buf, *copy;
    apigw_idem_record_t  out;
    apigw_idem_header_t  hs[APIGW_IDEM_MAX_HEADERS];

    buf = encode_sample(&n);
    copy = malloc(n);
    assert_non_null(copy);

    for (i = 0; i < n; i++) {
        for (bit = 0; bit < 8; bit++) {
            memcpy(copy, buf, n);
            copy[i] ^= (unsigned char) (1u << bit);

            if (apigw_idem_record_decode(copy, n, hs, APIGW_IDEM_MAX_HEADERS,
                                         &out) != 0)
            {
                continue;
            }

            assert_true(out.body.data + out.body.len == copy + n);
            assert_true(out.nheaders <= APIGW_IDEM_MAX_HEADERS);

            for (h = 0; h < out.nheaders; h++) {
                assert_true(out.headers[h].name.data >= copy);
                assert_true(out.headers[h].value.data + out.headers[h].value.len
                            <= copy + n);
                assert_true(apigw_idem_header_replayable(
                                out.headers[h].name.data,
                                out.headers[h].name.len));
                assert_null(memchr(out.headers[h].value.data, '\n',
                                   out.headers[h].value.len));
            }
        }
    }

    free(copy);
    free(buf);
}


static void
test_record_corrupt(void **state)
{
    apigw_idem_record_t  out;
    apigw_idem_header_t  hs[4];

    /* version 2 */
    assert_int_equal(apigw_idem_record_decode(
        S("\x02\x00\xc8\x00\x00\x00\x00\x00\x00"), hs, 4, &out), -1);
    /* status 99 and 1000 */
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x00\x63\x00\x00\x00\x00\x00\x00"), hs, 4, &out), -1);
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x03\xe8\x00\x00\x00\x00\x00\x00"), hs, 4, &out), -1);
    /* a header count beyond the format's limit */
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x00\xc8\xff\xff\x00\x00\x00\x00"), hs, 4, &out), -1);
    /* body length larger than what is there */
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x00\xc8\x00\x00\xff\xff\xff\xff" "ab"), hs, 4, &out), -1);
    /* a header value carrying CRLF (response splitting) */
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x00\xc8\x00\x01" "\x00\x03" "X-A" "\x00\x00\x00\x04"
          "a\r\nb" "\x00\x00\x00\x00"), hs, 4, &out), -1);
    /* a header name that is not a token */
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x00\xc8\x00\x01" "\x00\x03" "X:A" "\x00\x00\x00\x01"
          "a" "\x00\x00\x00\x00"), hs, 4, &out), -1);
    /* an empty header name */
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x00\xc8\x00\x01" "\x00\x00" "\x00\x00\x00\x01"
          "a" "\x00\x00\x00\x00"), hs, 4, &out), -1);
    /* a header value length reaching past the end */
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x00\xc8\x00\x01" "\x00\x03" "X-A" "\xff\xff\xff\xff"
          "a" "\x00\x00\x00\x00"), hs, 4, &out), -1);

    /* a stored Set-Cookie (older rules, tampering) is never replayed */
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x00\xc8\x00\x02"
          "\x00\x0a" "Set-Cookie" "\x00\x00\x00\x03" "a=b"
          "\x00\x03" "X-A" "\x00\x00\x00\x01" "1"
          "\x00\x00\x00\x02" "ok"), hs, 4, &out), 0);
    assert_int_equal(out.nheaders, 1);
    assert_memory_equal(out.headers[0].name.data, "X-A", 3);
    assert_int_equal(out.body.len, 2);

    /* more kept headers than the caller's array */
    assert_int_equal(apigw_idem_record_decode(
        S("\x01\x00\xc8\x00\x02"
          "\x00\x03" "X-A" "\x00\x00\x00\x01" "1"
          "\x00\x03" "X-B" "\x00\x00\x00\x01" "2"
          "\x00\x00\x00\x00"), hs, 1, &out), -1);
}


static void
test_record_encode_refused(void **state)
{
    size_t               i;
    unsigned char        buf[4096];
    apigw_idem_record_t  rec;
    apigw_idem_header_t  many[APIGW_IDEM_MAX_HEADERS + 10];
    apigw_idem_header_t  bad[] = { H("X-A", "a\r\nSet-Cookie: x=y") };
    apigw_idem_header_t  skip[] = { H("Set-Cookie", "a\r\nb"),
                                    H("X A", "1") };

    memset(&rec, 0, sizeof(rec));

    rec.status = 99;
    assert_int_equal(apigw_idem_record_size(&rec), 0);
    assert_int_equal(apigw_idem_record_encode(&rec, buf, sizeof(buf)), 0);
    rec.status = 1000;
    assert_int_equal(apigw_idem_record_size(&rec), 0);

    rec.status = 200;
    rec.headers = bad;
    rec.nheaders = 1;
    assert_int_equal(apigw_idem_record_size(&rec), 0);
    assert_int_equal(apigw_idem_record_encode(&rec, buf, sizeof(buf)), 0);

    /* non-replayable headers are dropped whatever their bytes */
    rec.headers = skip;
    rec.nheaders = 2;
    assert_int_equal(apigw_idem_record_size(&rec), 9);

    for (i = 0; i < APIGW_IDEM_MAX_HEADERS + 10; i++) {
        many[i].name.data = (unsigned char *) "X-Many";
        many[i].name.len = 6;
        many[i].value.data = (unsigned char *) "v";
        many[i].value.len = 1;
    }

    rec.headers = many;
    rec.nheaders = APIGW_IDEM_MAX_HEADERS;
    assert_true(apigw_idem_record_size(&rec) > 0);
    rec.nheaders = APIGW_IDEM_MAX_HEADERS + 1;
    assert_int_equal(apigw_idem_record_size(&rec), 0);

    /* the limit counts replayable headers only */
    for (i = 0; i < 10; i++) {
        many[i].name.data = (unsigned char *) "Date";
        many[i].name.len = 4;
    }
    rec.nheaders = APIGW_IDEM_MAX_HEADERS + 10;
    assert_true(apigw_idem_record_size(&rec) > 0);
}


/* header allow-list */

static void
test_header_replayable(void **state)
{
    size_t  i;

    static const char  *yes[] = {
        "Content-Type", "content-type", "CONTENT-TYPE", "Content-Language",
        "Content-Location", "Content-Encoding", "Content-Disposition",
        "Content-Range", "Location", "Cache-Control", "ETag", "etag",
        "Last-Modified", "Expires", "Vary", "Link", "Allow",
        "WWW-Authenticate", "X-Foo", "x-custom-thing", "X-Request-Ids",
        "X-Apigw", "X-Requestid", "X-Powered-By", "X-RateLimit",
    };
    static const char  *no[] = {
        "Set-Cookie", "set-cookie", "SET-COOKIE", "Set-Cookie2",
        "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding",
        "TE", "Trailer", "Upgrade", "Proxy-Authenticate", "Content-Length",
        "Date", "Server", "X-Request-Id", "x-request-id", "X-Apigw-Key-Id",
        "x-apigw-tenant", "X-Apigw-", "X-RateLimit-Limit",
        "x-ratelimit-remaining", "X-Accel-Redirect", "Retry-After",
        "Idempotent-Replayed", "RateLimit", "Age", "X-", "x-", "X",
        "", "Content-Typ", "Content-Types", "X-Foo Bar", "X-Foo:",
        "Location ", "ETag\n",
    };

    for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (!apigw_idem_header_replayable((const unsigned char *) yes[i],
                                          strlen(yes[i])))
        {
            fail_msg("\"%s\" should be replayed", yes[i]);
        }
    }

    for (i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        if (apigw_idem_header_replayable((const unsigned char *) no[i],
                                         strlen(no[i])))
        {
            fail_msg("\"%s\" must not be replayed", no[i]);
        }
    }

    assert_int_equal(apigw_idem_header_replayable(NULL, 0), 0);
}


static void
test_storable(void **state)
{
    unsigned  s;

    static const unsigned  yes[] = {
        200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401,
        402, 403, 404, 405, 406, 410, 412, 413, 415, 422, 426, 451, 499,
    };
    static const unsigned  no[] = {
        0, 99, 100, 101, 199, 408, 409, 425, 429, 500, 501, 502, 503, 504,
        505, 599, 600, 999,
    };

    for (s = 0; s < sizeof(yes) / sizeof(yes[0]); s++) {
        if (!apigw_idem_storable(yes[s])) {
            fail_msg("%u should be stored", yes[s]);
        }
    }

    for (s = 0; s < sizeof(no) / sizeof(no[0]); s++) {
        if (apigw_idem_storable(no[s])) {
            fail_msg("%u must not be stored", no[s]);
        }
    }

    /* every 5xx */
    for (s = 500; s < 600; s++) {
        assert_int_equal(apigw_idem_storable(s), 0);
    }
}


/* Redis key names and owner tokens */

static void
test_redis_key_namespace(void **state)
{
    size_t          i, j, n;
    unsigned char   out[4][256];
    apigw_str_t     prefix = apigw_string("apigw:");
    apigw_str_t     tenant = apigw_string("acme");
    apigw_str_t     key = apigw_string("abc");
    apigw_str_t     none = apigw_null_string;
    apigw_str_t     ns[4] = { apigw_string("srv:a"), apigw_string("srv:b"),
                              apigw_string("srv:ab"), apigw_string("srv:") };
    apigw_str_t     k2 = apigw_string("c");

    /* an empty namespace is the name of old: records stay readable */
    n = apigw_idem_redis_key_ns(&prefix, &tenant, &none, &key, out[0],
                                sizeof(out[0]));
    assert_int_equal(n, apigw_idem_redis_key_len(prefix.len, tenant.len));
    assert_memory_equal(out[0] + 18, "ba7816bf8f01cfea", 16);

    /* distinct namespaces never share a record, tenant tag kept */
    for (i = 0; i < 4; i++) {
        assert_int_equal(apigw_idem_redis_key_ns(&prefix, &tenant, &ns[i],
                                                 &key, out[i],
                                                 sizeof(out[i])), n);
        assert_memory_equal(out[i], "apigw:idem:{acme}:", 18);
        assert_memory_not_equal(out[i] + 18, "ba7816bf8f01cfea", 16);

        for (j = 0; j < i; j++) {
            assert_memory_not_equal(out[i], out[j], n);
        }
    }

    /* the length prefix: ("srv:ab", "c") is not ("srv:a", "bc") */
    apigw_str_t  bc = apigw_string("bc");

    apigw_idem_redis_key_ns(&prefix, &tenant, &ns[2], &k2, out[0],
                            sizeof(out[0]));
    apigw_idem_redis_key_ns(&prefix, &tenant, &ns[0], &bc, out[1],
                            sizeof(out[1]));
    assert_memory_not_equal(out[0], out[1], n);
}


static void
test_redis_key(void **state)
{
    size_t          n;
    unsigned char   out[256];
    apigw_str_t     prefix = apigw_string("apigw:");
    apigw_str_t     none = apigw_null_string;
    apigw_str_t     tenant = apigw_string("acme");
    apigw_str_t     odd = apigw_string("a}b{c");
    apigw_str_t     key = apigw_string("abc");
    apigw_str_t     empty = apigw_null_string;

    /* sha256("abc") */
    static const char  want[] =
        "apigw:idem:{acme}:"
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    n = apigw_idem_redis_key_len(prefix.len, tenant.len);
    assert_int_equal(n, sizeof(want) - 1);
    assert_int_equal(apigw_idem_redis_key(&prefix, &tenant, &key, out,
                                          sizeof(out)), n);
    assert_memory_equal(out, want, n);

    /* exactly enough room, and one byte short */
    assert_int_equal(apigw_idem_redis_key(&prefix, &tenant, &key, out, n), n);
    assert_int_equal(apigw_idem_redis_key(&prefix, &tenant, &key, out, n - 1),
                     0);

    n = apigw_idem_redis_key(&none, &odd, &key, out, sizeof(out));
    assert_int_equal(n, apigw_idem_redis_key_len(0, odd.len));
    assert_memory_equal(out, "idem:{a}b{c}:ba7816bf", 21);

    /* no tenant (auth off): still one well-formed name */
    n = apigw_idem_redis_key(&prefix, &none, &key, out, sizeof(out));
    assert_int_equal(n, 6 + 6 + 2 + 64);
    assert_memory_equal(out, "apigw:idem:{}:ba78", 18);

    assert_int_equal(apigw_idem_redis_key(&prefix, &tenant, &empty, out,
                                          sizeof(out)), 0);
}


static void
test_owner_token(void **state)
{
    char  a[APIGW_IDEM_OWNER_LEN + 1], b[APIGW_IDEM_OWNER_LEN + 1];

    assert_int_equal(apigw_idem_owner_token(a), 0);
    assert_int_equal(apigw_idem_owner_token(b), 0);
    assert_int_equal(strlen(a), APIGW_IDEM_OWNER_LEN);
    assert_int_equal(strspn(a, "0123456789abcdef"), APIGW_IDEM_OWNER_LEN);
    assert_string_not_equal(a, b);
}


static void
test_scripts_present(void **state)
{
    assert_non_null(strstr(apigw_idem_script_claim, "'claimed'"));
    assert_non_null(strstr(apigw_idem_script_claim, "'completed_nobody'"));
    assert_non_null(strstr(apigw_idem_script_complete, "PEXPIRE"));
    assert_non_null(strstr(apigw_idem_script_release, "DEL"));
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_key_parse_table),
        cmocka_unit_test(test_key_parse_lengths),
        cmocka_unit_test(test_fp_framing),
        cmocka_unit_test(test_fp_format_pinned),
        cmocka_unit_test(test_fp_chunked),
        cmocka_unit_test(test_fp_lifecycle),
        cmocka_unit_test(test_record_roundtrip),
        cmocka_unit_test(test_record_empty),
        cmocka_unit_test(test_record_truncated),
        cmocka_unit_test(test_record_bitflips),
        cmocka_unit_test(test_record_corrupt),
        cmocka_unit_test(test_record_encode_refused),
        cmocka_unit_test(test_header_replayable),
        cmocka_unit_test(test_storable),
        cmocka_unit_test(test_redis_key),
        cmocka_unit_test(test_redis_key_namespace),
        cmocka_unit_test(test_owner_token),
        cmocka_unit_test(test_scripts_present),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
