/*
 * Idempotency-Key handling that needs no nginx: parsing the header, the
 * request fingerprint, the stored response record, Redis key names and the
 * three Redis scripts that own the record's life cycle.
 *
 * Redis record: one hash per (tenant, key), named by apigw_idem_redis_key():
 *
 *   state    "in_flight" | "completed"
 *   fp       fingerprint, 64 lowercase hex (apigw_idem_fp_*)
 *   owner    random token of the request holding the lock (in_flight only)
 *   status   decimal HTTP status (completed only)
 *   resp     the encoded record (apigw_idem_record_encode), completed with
 *            a body only
 *   nobody   "1" when completed without a stored response (too large, or
 *            not encodable): replays answer idempotency_replay_unavailable
 *
 * A hash, so the claim script compares fingerprints without reading the
 * stored body.  Life cycle: claim (absent -> in_flight, lock ttl), then
 * either complete (-> completed, retention ttl) or release (-> deleted, so
 * the client may retry).  All three run as one atomic script each.
 *
 * claim      KEYS[1] record key
 *            ARGV[1] fingerprint, ARGV[2] lock ttl ms (> 0), ARGV[3] owner
 *   reply, always an array whose first element is a status string:
 *            {"claimed"}                     this request now holds the key
 *            {"mismatch"}                    the key was used with another
 *                                            fingerprint (whatever its state)
 *            {"in_flight", pttl_ms}          integer >= 0
 *            {"completed", status, record}   integer, bulk (encoded record)
 *            {"completed_nobody", status}    integer
 *   A key holding something that is not such a record is an error reply
 *   (never overwritten): the glue answers idempotency_unavailable.
 *
 * complete   KEYS[1]
 *            ARGV[1] owner, ARGV[2] fingerprint, ARGV[3] retention ttl ms
 *            (> 0), ARGV[4] status, ARGV[5] "full" | "nobody",
 *            ARGV[6] encoded record ("full" only)
 *   reply, integer:
 *            1  stored: the record was in_flight and held by owner
 *            2  stored: the lock had lapsed and nobody took the key since;
 *               the upstream did run, so keeping its result is what stops
 *               a retry from running it a second time
 *            0  refused: another request holds or completed the key
 *
 * release    KEYS[1]; ARGV[1] owner
 *   reply, integer: 1 deleted (in_flight and held by owner), else 0.
 *
 * Bad arguments are an error reply, raised before any write.
 */
#ifndef APIGW_IDEMPOTENCY_H
#define APIGW_IDEMPOTENCY_H

#include "apigw_str.h"

#define APIGW_IDEM_KEY_MAX          255
#define APIGW_IDEM_FP_HEX           64      /* SHA-256, lowercase hex */
#define APIGW_IDEM_OWNER_LEN        32      /* 16 random bytes, hex */
#define APIGW_IDEM_RECORD_VERSION   1
#define APIGW_IDEM_MAX_HEADERS      64      /* replayable headers stored */

/* The Lua sources, NUL-terminated; see above for arguments and replies. */
extern const char  apigw_idem_script_claim[];
extern const char  apigw_idem_script_complete[];
extern const char  apigw_idem_script_release[];


/*
 * The Idempotency-Key field value -> key, bare (abc) or as an RFC 8941
 * sf-string ("abc", with \" and \\ escapes).  Surrounding SP/HTAB is not
 * part of a field value and is ignored.  The decoded key must be 1..255
 * bytes of 0x21..0x7E.  buf holds at least APIGW_IDEM_KEY_MAX bytes; key
 * points into it.  Returns 0, or -1 when the value is not a valid key.
 */
int apigw_idem_key_parse(const unsigned char *value, size_t len,
    unsigned char *buf, apigw_str_t *key);


/*
 * Request fingerprint: SHA-256 over a version tag, the length-prefixed
 * method, the length-prefixed request target (URI with arguments, as
 * received) and then every body byte, fed in any chunking.
 *
 * init allocates an EVP context that final or abort frees; abort is safe on
 * a zeroed, finished or aborted fingerprint, so a pool cleanup can always
 * call it.  All return 0, or -1 on an OpenSSL failure (call abort then).
 */
typedef struct {
    void        *md;            /* EVP_MD_CTX *, NULL when not in use */
} apigw_idem_fp_t;

int apigw_idem_fp_init(apigw_idem_fp_t *fp, const unsigned char *method,
    size_t method_len, const unsigned char *uri, size_t uri_len);
int apigw_idem_fp_update(apigw_idem_fp_t *fp, const unsigned char *p,
    size_t len);
int apigw_idem_fp_final(apigw_idem_fp_t *fp,
    char out[APIGW_IDEM_FP_HEX + 1]);
void apigw_idem_fp_abort(apigw_idem_fp_t *fp);


/*
 * The stored response.  Encoding, version 1, all integers big-endian:
 *
 *   u8  version (1)   u16 status   u16 header count
 *   per header: u16 name length, name, u32 value length, value
 *   u32 body length   body
 *
 * The whole input must be consumed exactly; any short, long or malformed
 * input is refused.
 */
typedef struct {
    apigw_str_t  name;
    apigw_str_t  value;
} apigw_idem_header_t;

typedef struct {
    unsigned              status;     /* 100..999 */
    apigw_idem_header_t  *headers;
    size_t                nheaders;
    apigw_str_t           body;
} apigw_idem_record_t;

/*
 * 1 when a response header of this name (case-insensitive) is replayed:
 * Content-Type, -Encoding, -Language, -Location, -Disposition, -Range,
 * Location, Cache-Control, ETag, Last-Modified, Expires, Vary, Link, Allow,
 * WWW-Authenticate, and X-* except X-Request-Id, X-Apigw-*, X-RateLimit-*
 * (the module sends fresh ones on every response) and X-Accel-* (nginx
 * internal).  Never Set-Cookie, hop-by-hop headers, Content-Length, Date,
 * Server or anything else.
 */
int apigw_idem_header_replayable(const unsigned char *name, size_t len);

/*
 * Encoded size of rec: only its replayable headers count, so callers pass
 * every response header.  0 when rec cannot be encoded: status out of
 * range, more than APIGW_IDEM_MAX_HEADERS replayable headers, a header name
 * that is not a token or a value holding NUL, CR or LF, a length beyond
 * the format.  Such a response must still be completed ("nobody"), never
 * released: the upstream did run.
 */
size_t apigw_idem_record_size(const apigw_idem_record_t *rec);

/*
 * Writes the encoding and returns its length (apigw_idem_record_size), or
 * 0 when rec cannot be encoded or size is too small.
 */
size_t apigw_idem_record_encode(const apigw_idem_record_t *rec,
    unsigned char *out, size_t size);

/*
 * As encode, without the body: writes everything up to and including the
 * body length (rec->body.len), so a caller can place the body bytes right
 * after the head without an extra copy.  Returns the head length or 0.
 */
size_t apigw_idem_record_encode_head(const apigw_idem_record_t *rec,
    unsigned char *out, size_t size);

/*
 * Parses p/len into rec; name, value and body point into p.  Up to max
 * headers go to headers[]; headers not replayable under the current rules
 * are skipped (a record written by another version never replays them).
 * Returns 0, or -1 on any malformed, truncated or oversized input.
 */
int apigw_idem_record_decode(const unsigned char *p, size_t len,
    apigw_idem_header_t *headers, size_t max, apigw_idem_record_t *rec);


/*
 * 0 for responses whose key is released instead of stored, so the client
 * can retry: 5xx, 408, 409, 425, 429, and anything below 200 (no final
 * response to replay).
 */
int apigw_idem_storable(unsigned status);


/*
 * Record key: <prefix>idem:{<tenant>}:<sha256 hex of the idempotency key>.
 * The hash tag keeps a tenant in one cluster slot; hashing the key keeps
 * client bytes out of key names.  apigw_idem_redis_key_len gives the
 * length; apigw_idem_redis_key writes it (no NUL) and returns the length,
 * or 0 when size is too small or hashing failed.
 */
size_t apigw_idem_redis_key_len(size_t prefix_len, size_t tenant_len);
size_t apigw_idem_redis_key(const apigw_str_t *prefix,
    const apigw_str_t *tenant, const apigw_str_t *key,
    unsigned char *out, size_t size);

/*
 * The same, in a namespace (a service: by default one nginx server block):
 * the digest becomes sha256(8-byte big-endian length of ns, ns, key), so
 * no two (namespace, key) pairs share a record, whatever bytes they hold.
 * An empty namespace gives apigw_idem_redis_key()'s name.
 */
size_t apigw_idem_redis_key_ns(const apigw_str_t *prefix,
    const apigw_str_t *tenant, const apigw_str_t *ns, const apigw_str_t *key,
    unsigned char *out, size_t size);

/*
 * A lock owner token: APIGW_IDEM_OWNER_LEN lowercase hex characters from a
 * CSPRNG, plus NUL.  Returns 0, or -1 when randomness failed.
 */
int apigw_idem_owner_token(char out[APIGW_IDEM_OWNER_LEN + 1]);

#endif
