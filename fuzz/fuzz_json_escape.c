/*
 * The JSON writer's escaping of arbitrary bytes (apigw_w_escaped,
 * apigw_w_string): every header, upstream text and id reaches the client
 * through it.
 *
 * Invariants: measured length == written length, at most 6 bytes out per
 * byte in; "..." of the output is a JSON string (valid UTF-8, jansson
 * parses it, no raw U+2028/U+2029); valid UTF-8 comes back unchanged;
 * escaping is idempotent on what it produced; escaping pieces cut at ASCII
 * bytes gives the bytes of escaping the whole (the renderer relies on it).
 */
#include "fuzz_common.h"


static unsigned char *
fz_escape(const unsigned char *p, size_t len, int quoted, size_t *olen)
{
    size_t           need;
    unsigned char   *out;
    apigw_writer_t   w;

    w.buf = NULL;
    w.len = 0;

    if (quoted) {
        apigw_w_string(&w, p, len);
    } else {
        apigw_w_escaped(&w, p, len);
    }

    need = w.len;
    FZ_ASSERT(need <= 6 * len + (quoted ? 2 : 0), "at most 6 bytes a byte");

    out = malloc(need ? need : 1);
    FZ_ASSERT(out != NULL, "out of memory");

    w.buf = out;
    w.len = 0;

    if (quoted) {
        apigw_w_string(&w, p, len);
    } else {
        apigw_w_escaped(&w, p, len);
    }

    FZ_ASSERT(w.len == need, "measured length == written length");

    *olen = need;

    return out;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t           olen, olen2, plen, i, start;
    unsigned char   *in, *out, *out2, *pieces, *piece;
    json_t          *v;
    apigw_str_t      s;
    const char      *dec;

    s.data = (unsigned char *) data;
    s.len = size;
    in = fz_dup(&s);

    out = fz_escape(in, size, 1, &olen);

    v = fz_json_check(out, olen, JSON_DECODE_ANY);
    FZ_ASSERT(json_is_string(v), "a JSON string");

    dec = json_string_value(v);

    if (fz_utf8_valid(in, size)) {
        FZ_ASSERT(json_string_length(v) == size
                  && memcmp(dec, in, size) == 0,
                  "valid UTF-8 round-trips unchanged");
    }

    /* the decoded text is valid UTF-8: escaping it changes nothing more */
    out2 = fz_escape((const unsigned char *) dec, json_string_length(v), 1,
                     &olen2);
    FZ_ASSERT(olen2 == olen && memcmp(out, out2, olen) == 0,
              "escaping is idempotent");
    free(out2);
    json_decref(v);

    /* pieces cut before some ASCII bytes, concatenated */
    pieces = malloc(olen);
    FZ_ASSERT(pieces != NULL, "out of memory");

    plen = 0;
    start = 0;
    pieces[plen++] = '"';

    for (i = 1; i <= size; i++) {
        if (i < size && !(in[i] < 0x80 && in[i] % 3 == 0)) {
            continue;
        }

        piece = fz_escape(in + start, i - start, 0, &olen2);
        FZ_ASSERT(plen + olen2 <= olen - 1, "pieces are no longer");
        memcpy(pieces + plen, piece, olen2);
        plen += olen2;
        free(piece);
        start = i;
    }

    pieces[plen++] = '"';

    FZ_ASSERT(plen == olen && memcmp(pieces, out, olen) == 0,
              "escaping pieces cut at ASCII == escaping the whole");

    free(pieces);
    free(out);
    free(in);

    return 0;
}
