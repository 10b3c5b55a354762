/*
 * The two-pass JSON writer.  Measuring and writing share every line of
 * code, so the length measured is by construction the length written.
 */
#include <stdio.h>

#include "apigw_json.h"


void
apigw_w_raw(apigw_writer_t *w, const void *data, size_t len)
{
    if (w->buf != NULL && len != 0) {
        memcpy(w->buf + w->len, data, len);
    }

    w->len += len;
}


void
apigw_w_lit(apigw_writer_t *w, const char *s)
{
    apigw_w_raw(w, s, strlen(s));
}


void
apigw_w_int(apigw_writer_t *w, long long v)
{
    char  tmp[32];
    int   n;

    n = snprintf(tmp, sizeof(tmp), "%lld", v);
    apigw_w_raw(w, tmp, (size_t) n);
}


/*
 * Length of the well-formed UTF-8 sequence at p (2..4), or 0 with *bad set
 * to the length of its maximal ill-formed subpart (Unicode 15, 3.9 "U+FFFD
 * substitution of maximal subparts"), which becomes one U+FFFD.  The
 * second-byte ranges exclude overlongs, surrogates and > U+10FFFF.
 */
static size_t
apigw_utf8_seq(const unsigned char *p, size_t n, size_t *bad)
{
    unsigned int  c, lo, hi;
    size_t        need, i;

    c = p[0];
    lo = 0x80;
    hi = 0xBF;

    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;

    } else if (c == 0xE0) {
        need = 2;
        lo = 0xA0;

    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
        need = 2;

    } else if (c == 0xED) {
        need = 2;
        hi = 0x9F;

    } else if (c == 0xF0) {
        need = 3;
        lo = 0x90;

    } else if (c >= 0xF1 && c <= 0xF3) {
        need = 3;

    } else if (c == 0xF4) {
        need = 3;
        hi = 0x8F;

    } else {
        *bad = 1;
        return 0;
    }

    for (i = 1; i <= need; i++) {
        if (i >= n || p[i] < lo || p[i] > hi) {
            *bad = i;
            return 0;
        }

        lo = 0x80;
        hi = 0xBF;
    }

    return need + 1;
}


void
apigw_w_escaped(apigw_writer_t *w, const unsigned char *p, size_t len)
{
    static const unsigned char   hex[] = "0123456789abcdef";
    const unsigned char         *end, *run;
    unsigned char                c, esc[6];
    size_t                       n, bad;

    if (len == 0) {
        return;
    }

    end = p + len;
    run = p;

    while (p < end) {
        c = *p;

        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            p++;
            continue;
        }

        if (c >= 0x80) {
            n = apigw_utf8_seq(p, (size_t) (end - p), &bad);

            /* U+2028 and U+2029 end a line in JavaScript */
            if (n == 3 && c == 0xE2 && p[1] == 0x80
                && (p[2] == 0xA8 || p[2] == 0xA9))
            {
                apigw_w_raw(w, run, (size_t) (p - run));
                apigw_w_lit(w, p[2] == 0xA8 ? "\\u2028" : "\\u2029");
                p += 3;
                run = p;
                continue;
            }

            if (n != 0) {
                p += n;
                continue;
            }

            apigw_w_raw(w, run, (size_t) (p - run));
            apigw_w_raw(w, "\xEF\xBF\xBD", 3);
            p += bad;
            run = p;
            continue;
        }

        apigw_w_raw(w, run, (size_t) (p - run));

        switch (c) {
        case '"':
            apigw_w_raw(w, "\\\"", 2);
            break;
        case '\\':
            apigw_w_raw(w, "\\\\", 2);
            break;
        case '\n':
            apigw_w_raw(w, "\\n", 2);
            break;
        case '\r':
            apigw_w_raw(w, "\\r", 2);
            break;
        case '\t':
            apigw_w_raw(w, "\\t", 2);
            break;
        case '\b':
            apigw_w_raw(w, "\\b", 2);
            break;
        case '\f':
            apigw_w_raw(w, "\\f", 2);
            break;
        default:
            esc[0] = '\\';
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0x0f];
            apigw_w_raw(w, esc, 6);
            break;
        }

        p++;
        run = p;
    }

    apigw_w_raw(w, run, (size_t) (p - run));
}


void
apigw_w_string(apigw_writer_t *w, const unsigned char *p, size_t len)
{
    apigw_w_raw(w, "\"", 1);
    apigw_w_escaped(w, p, len);
    apigw_w_raw(w, "\"", 1);
}
