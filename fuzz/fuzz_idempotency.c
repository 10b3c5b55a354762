/*
 * Idempotency: the Idempotency-Key header (apigw_idem_key_parse), the
 * stored-response record read back from Redis (apigw_idem_record_decode of
 * arbitrary bytes), the encoder, the fingerprint and the Redis key name.
 *
 * Input fields (fuzz_common.h): header value, max headers for decode,
 * status, body, header count, that many name/value field pairs, prefix,
 * tenant, then the rest of the input as an encoded record.
 *
 * Invariants: a parsed key is 1..255 bytes of 0x21..0x7E and reads back
 * the same as an sf-string; decode(encode(x)) == x (x's replayable
 * headers); a decoded record re-encodes to bytes that decode to it again,
 * and to the very input when every stored header was kept; measured sizes
 * are written sizes; fingerprints do not depend on chunking.
 */
#include "fuzz_common.h"
#include "apigw_idempotency.h"


#define FZ_MAX_BUILD  (APIGW_IDEM_MAX_HEADERS + 4)


static void
fz_check_key(const apigw_str_t *value)
{
    unsigned char  *v, *buf, *q, *buf2;
    apigw_str_t     key, key2;
    size_t          i, n;
    int             rc;

    v = fz_dup(value);
    buf = malloc(APIGW_IDEM_KEY_MAX);
    FZ_ASSERT(buf != NULL, "out of memory");

    rc = apigw_idem_key_parse(v, value->len, buf, &key);

    if (rc != 0) {
        FZ_ASSERT(rc == -1, "-1 on refusal");
        goto done;
    }

    FZ_ASSERT(key.data == buf && key.len >= 1
              && key.len <= APIGW_IDEM_KEY_MAX, "1..255 bytes in buf");

    for (i = 0; i < key.len; i++) {
        FZ_ASSERT(key.data[i] >= 0x21 && key.data[i] <= 0x7e,
                  "printable ASCII, no space");
    }

    /* the key as an sf-string, with spaces around, reads back the same */
    q = malloc(2 * key.len + 4);
    FZ_ASSERT(q != NULL, "out of memory");

    n = 0;
    q[n++] = ' ';
    q[n++] = '"';

    for (i = 0; i < key.len; i++) {
        if (key.data[i] == '"' || key.data[i] == '\\') {
            q[n++] = '\\';
        }
        q[n++] = key.data[i];
    }

    q[n++] = '"';
    q[n++] = '\t';

    buf2 = malloc(APIGW_IDEM_KEY_MAX);
    FZ_ASSERT(buf2 != NULL, "out of memory");

    FZ_ASSERT(apigw_idem_key_parse(q, n, buf2, &key2) == 0
              && key2.len == key.len
              && memcmp(key2.data, key.data, key.len) == 0,
              "an sf-string of the key is the key");

    free(buf2);
    free(q);

done:

    free(buf);
    free(v);
}


static void
fz_check_same(const apigw_idem_record_t *a, const apigw_idem_record_t *b)
{
    size_t  i;

    FZ_ASSERT(a->status == b->status, "same status");
    FZ_ASSERT(a->nheaders == b->nheaders, "same header count");
    FZ_ASSERT(a->body.len == b->body.len
              && (a->body.len == 0
                  || memcmp(a->body.data, b->body.data, a->body.len) == 0),
              "same body");

    for (i = 0; i < a->nheaders; i++) {
        FZ_ASSERT(a->headers[i].name.len == b->headers[i].name.len
                  && memcmp(a->headers[i].name.data, b->headers[i].name.data,
                            a->headers[i].name.len) == 0
                  && a->headers[i].value.len == b->headers[i].value.len
                  && (a->headers[i].value.len == 0
                      || memcmp(a->headers[i].value.data,
                                b->headers[i].value.data,
                                a->headers[i].value.len) == 0),
                  "same headers in the same order");
    }
}


/* Encodes rec; returns the encoding (free it) or NULL when refused. */
static unsigned char *
fz_encode(const apigw_idem_record_t *rec, size_t *len)
{
    size_t          size, n, head;
    unsigned char  *out, *h;

    size = apigw_idem_record_size(rec);

    if (size == 0) {
        FZ_ASSERT(apigw_idem_record_encode(rec, NULL, 0) == 0, "refused");
        return NULL;
    }

    out = malloc(size);
    FZ_ASSERT(out != NULL, "out of memory");

    FZ_ASSERT(apigw_idem_record_encode(rec, out, size - 1) == 0,
              "a short buffer is refused");

    n = apigw_idem_record_encode(rec, out, size);
    FZ_ASSERT(n == size, "measured size == written size");

    /* the head alone, as the glue writes it before the body */
    head = size - rec->body.len;
    h = malloc(head);
    FZ_ASSERT(h != NULL, "out of memory");
    FZ_ASSERT(apigw_idem_record_encode_head(rec, h, head) == head,
              "head size");
    FZ_ASSERT(memcmp(h, out, head) == 0, "the head is the encoding's head");
    FZ_ASSERT(apigw_idem_record_encode_head(rec, h, head - 1) == 0,
              "a short head buffer is refused");
    free(h);

    *len = n;

    return out;
}


static void
fz_decode_encoded(const unsigned char *enc, size_t len,
    const apigw_idem_record_t *expect)
{
    apigw_idem_header_t  *hs;
    apigw_idem_record_t   back;

    hs = malloc(APIGW_IDEM_MAX_HEADERS * sizeof(apigw_idem_header_t));
    FZ_ASSERT(hs != NULL, "out of memory");

    FZ_ASSERT(apigw_idem_record_decode(enc, len, hs, APIGW_IDEM_MAX_HEADERS,
                                       &back) == 0,
              "what encode wrote decodes");

    fz_check_same(&back, expect);

    if (len > 0) {
        FZ_ASSERT(apigw_idem_record_decode(enc, len - 1, hs,
                                           APIGW_IDEM_MAX_HEADERS, &back)
                  == -1, "a truncated record is refused");
    }

    free(hs);
}


/* decode(encode(x)) == x, x's non-replayable headers left out */
static void
fz_check_build(const apigw_idem_record_t *rec)
{
    size_t                i, n, len;
    unsigned char        *enc;
    apigw_idem_header_t   kept[FZ_MAX_BUILD];
    apigw_idem_record_t   expect;

    enc = fz_encode(rec, &len);
    if (enc == NULL) {
        return;
    }

    n = 0;

    for (i = 0; i < rec->nheaders; i++) {
        if (apigw_idem_header_replayable(rec->headers[i].name.data,
                                         rec->headers[i].name.len))
        {
            kept[n++] = rec->headers[i];
        }
    }

    FZ_ASSERT(n <= APIGW_IDEM_MAX_HEADERS, "header cap");

    expect = *rec;
    expect.headers = kept;
    expect.nheaders = n;

    fz_decode_encoded(enc, len, &expect);
    free(enc);
}


/* arbitrary bytes from Redis */
static void
fz_check_decode(const apigw_str_t *raw, size_t max)
{
    unsigned char        *p, *enc;
    size_t                len, i;
    apigw_idem_header_t  *hs;
    apigw_idem_record_t   rec;
    int                   all_kept;

    p = fz_dup(raw);
    hs = malloc((max ? max : 1) * sizeof(apigw_idem_header_t));
    FZ_ASSERT(hs != NULL, "out of memory");

    if (apigw_idem_record_decode(p, raw->len, hs, max, &rec) != 0) {
        goto done;
    }

    FZ_ASSERT(rec.status >= 100 && rec.status <= 999, "status range");
    FZ_ASSERT(rec.nheaders <= max, "at most max headers");
    FZ_ASSERT(rec.body.data + rec.body.len == p + raw->len,
              "the body ends the record");

    for (i = 0; i < rec.nheaders; i++) {
        FZ_ASSERT(apigw_idem_header_replayable(rec.headers[i].name.data,
                                               rec.headers[i].name.len),
                  "only replayable headers come back");
        FZ_ASSERT(rec.headers[i].name.data >= p
                  && rec.headers[i].value.data + rec.headers[i].value.len
                     <= p + raw->len, "headers point into the input");
    }

    enc = fz_encode(&rec, &len);
    FZ_ASSERT(enc != NULL, "a decoded record can be encoded again");

    fz_decode_encoded(enc, len, &rec);

    /* every stored header came back: the very same bytes */
    all_kept = ((((size_t) p[3] << 8) | p[4]) == rec.nheaders);

    if (all_kept) {
        FZ_ASSERT(len == raw->len && memcmp(enc, p, len) == 0,
                  "a record of replayable headers re-encodes to itself");
    }

    free(enc);

done:

    free(hs);
    free(p);
}


static void
fz_check_fp(const apigw_str_t *method, const apigw_str_t *uri,
    const apigw_str_t *body)
{
    char             a[APIGW_IDEM_FP_HEX + 1], b[APIGW_IDEM_FP_HEX + 1];
    size_t           i, step;
    apigw_idem_fp_t  fp;

    FZ_ASSERT(apigw_idem_fp_init(&fp, method->data, method->len, uri->data,
                                 uri->len) == 0, "fp init");
    FZ_ASSERT(apigw_idem_fp_update(&fp, body->data, body->len) == 0, "fp");
    FZ_ASSERT(apigw_idem_fp_final(&fp, a) == 0, "fp final");
    FZ_ASSERT(fp.md == NULL, "final frees");
    apigw_idem_fp_abort(&fp);

    step = 1 + (body->len % 7);

    FZ_ASSERT(apigw_idem_fp_init(&fp, method->data, method->len, uri->data,
                                 uri->len) == 0, "fp init");

    for (i = 0; i < body->len; i += step) {
        FZ_ASSERT(apigw_idem_fp_update(&fp, body->data + i,
                                       body->len - i < step
                                       ? body->len - i : step) == 0, "fp");
        FZ_ASSERT(apigw_idem_fp_update(&fp, body->data, 0) == 0, "empty");
    }

    FZ_ASSERT(apigw_idem_fp_final(&fp, b) == 0, "fp final");
    FZ_ASSERT(strcmp(a, b) == 0 && strlen(a) == APIGW_IDEM_FP_HEX,
              "any chunking gives the same fingerprint");

    FZ_ASSERT(apigw_idem_fp_update(&fp, body->data, body->len) == -1,
              "no update after final");
    apigw_idem_fp_abort(&fp);
}


static void
fz_check_redis_key(const apigw_str_t *prefix, const apigw_str_t *tenant,
    const apigw_str_t *key)
{
    size_t          n, got;
    unsigned char  *out;

    n = apigw_idem_redis_key_len(prefix->len, tenant->len);
    out = malloc(n);
    FZ_ASSERT(out != NULL, "out of memory");

    got = apigw_idem_redis_key(prefix, tenant, key, out, n);

    if (key->len == 0) {
        FZ_ASSERT(got == 0, "an empty key has no record");

    } else {
        FZ_ASSERT(got == n, "measured length == written length");
        FZ_ASSERT(apigw_idem_redis_key(prefix, tenant, key, out, n - 1)
                  == 0, "a short buffer is refused");
    }

    free(out);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    long long             max, status, nh;
    size_t                i;
    apigw_str_t           value, body, prefix, tenant, raw;
    apigw_idem_header_t   hs[FZ_MAX_BUILD];
    apigw_idem_record_t   rec;
    fz_t                  f;

    fz_init(&f, data, size);

    value = fz_field(&f);
    max = fz_int(&f);
    status = fz_int(&f);
    body = fz_field(&f);
    nh = fz_int(&f);

    if (nh < 0) {
        nh = -nh;
    }

    nh %= FZ_MAX_BUILD + 1;

    for (i = 0; i < (size_t) nh; i++) {
        hs[i].name = fz_field(&f);
        hs[i].value = fz_field(&f);
    }

    prefix = fz_field(&f);
    tenant = fz_field(&f);
    raw = fz_rest(&f);

    fz_check_key(&value);

    memset(&rec, 0, sizeof(rec));
    rec.status = (unsigned) status;
    rec.headers = nh ? hs : NULL;
    rec.nheaders = (size_t) nh;
    rec.body = body;
    fz_check_build(&rec);

    if (max < 0) {
        max = -max;
    }

    fz_check_decode(&raw, (size_t) (max % (APIGW_IDEM_MAX_HEADERS + 1)));

    fz_check_fp(&prefix, &tenant, &body);
    fz_check_redis_key(&prefix, &tenant, &value);

    (void) apigw_idem_storable((unsigned) status);

    return 0;
}
