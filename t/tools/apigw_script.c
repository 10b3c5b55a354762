/*
 * Prints a Redis Lua script of the core, byte for byte what the module
 * loads, so integration tests run the real script against a real Redis:
 *
 *     apigw_script NAME                   the script NAME
 *     apigw_script                        the names, one a line
 *     apigw_script --tb-key PREFIX POLICY KEY
 *                                         apigw_tb_key() of the arguments
 *     apigw_script --tb-batch ITEM... [-- ITEM...]...
 *                                         the token-bucket script's call
 *                                         for these checks, as the module
 *                                         builds it (apigw_tb_batch_*)
 *
 * --tb-batch: ITEM is HEXKEY:CAPACITY:TOKENS:PERIOD_MS:COST (the bucket key
 * in hex, so it may hold any byte), "--" ends a check.  Prints the key
 * count, then every argument of apigw_tb_batch_argv() in hex, one a line;
 * exits 3 when apigw_tb_batch_add() refuses a check.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apigw_token_bucket.h"
#include "apigw_idempotency.h"


/* one script a line: { "name", source }, */
static const struct {
    const char  *name;
    const char  *source;
} scripts[] = {
    { "token_bucket", apigw_token_bucket_lua },
    { "idempotency_claim", apigw_idem_script_claim },
    { "idempotency_complete", apigw_idem_script_complete },
    { "idempotency_release", apigw_idem_script_release },
};


static int
tb_key(const char *prefix, const char *policy, const char *key)
{
    size_t         n;
    unsigned char  buf[4096];
    apigw_str_t    p, po, k;

    p.data = (unsigned char *) prefix;
    p.len = strlen(prefix);
    po.data = (unsigned char *) policy;
    po.len = strlen(policy);
    k.data = (unsigned char *) key;
    k.len = strlen(key);

    n = apigw_tb_key(buf, sizeof(buf), &p, &po, &k);

    if (n == 0 || n > sizeof(buf)) {
        fprintf(stderr, "apigw_script: no key for these arguments\n");
        return 1;
    }

    return fwrite(buf, 1, n, stdout) == n ? 0 : 1;
}


static int
hex_digit(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


/* HEXKEY:CAPACITY:TOKENS:PERIOD_MS:COST into it; the key into key */
static int
tb_item(const char *arg, apigw_tb_item_t *it, unsigned char *key,
    size_t room)
{
    int          hi, lo;
    size_t       n, i;
    char        *end;
    uint64_t     v[4];
    const char  *p;

    p = strchr(arg, ':');

    if (p == NULL || (p - arg) % 2 != 0 || (size_t) (p - arg) / 2 > room) {
        return -1;
    }

    n = (size_t) (p - arg) / 2;

    for (i = 0; i < n; i++) {
        hi = hex_digit(arg[2 * i]);
        lo = hex_digit(arg[2 * i + 1]);

        if (hi < 0 || lo < 0) {
            return -1;
        }

        key[i] = (unsigned char) (hi * 16 + lo);
    }

    for (i = 0; i < 4; i++) {
        if (*p++ != ':') {
            return -1;
        }

        v[i] = strtoull(p, &end, 10);

        if (end == p) {
            return -1;
        }

        p = end;
    }

    if (*p != '\0') {
        return -1;
    }

    it->bucket = key;
    it->bucket_len = n;
    it->capacity = v[0];
    it->rate.tokens = v[1];
    it->rate.period_ms = v[2];
    it->cost = v[3];

    return 0;
}


static int
tb_batch(int argc, char **argv)
{
    int                      i;
    size_t                   n, k, argn;
    static apigw_tb_batch_t  b;
    static apigw_tb_item_t   items[APIGW_TB_BATCH_ITEMS + 1];
    static unsigned char     keys[APIGW_TB_BATCH_ITEMS + 1][512];
    static const char       *args[APIGW_TB_BATCH_ARGC];
    static size_t            lens[APIGW_TB_BATCH_ARGC];
    static unsigned char     num[APIGW_TB_BATCH_NUM];

    apigw_tb_batch_init(&b);
    n = 0;

    for (i = 0; i <= argc; i++) {
        if (i == argc || strcmp(argv[i], "--") == 0) {
            if (apigw_tb_batch_add(&b, &items[b.nitems], n) != 0) {
                fprintf(stderr, "apigw_script: check refused\n");
                return 3;
            }

            n = 0;
            continue;
        }

        if (b.nitems + n > APIGW_TB_BATCH_ITEMS
            || tb_item(argv[i], &items[b.nitems + n], keys[b.nitems + n],
                       sizeof(keys[0]))
               != 0)
        {
            fprintf(stderr, "apigw_script: bad item \"%s\"\n", argv[i]);
            return 2;
        }

        n++;
    }

    argn = apigw_tb_batch_argv(&b, args, lens, num);

    printf("%zu\n", b.nkeys);

    for (k = 0; k < argn; k++) {
        for (n = 0; n < lens[k]; n++) {
            printf("%02x", (unsigned char) args[k][n]);
        }

        printf("\n");
    }

    return 0;
}


int
main(int argc, char **argv)
{
    size_t  i, len;

    if (argc == 5 && strcmp(argv[1], "--tb-key") == 0) {
        return tb_key(argv[2], argv[3], argv[4]);
    }

    if (argc > 2 && strcmp(argv[1], "--tb-batch") == 0) {
        return tb_batch(argc - 2, argv + 2);
    }

    if (argc == 1) {
        for (i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++) {
            printf("%s\n", scripts[i].name);
        }

        return 0;
    }

    if (argc == 2) {
        for (i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++) {
            if (strcmp(argv[1], scripts[i].name) == 0) {
                len = strlen(scripts[i].source);
                return fwrite(scripts[i].source, 1, len, stdout) == len
                       ? 0 : 1;
            }
        }

        fprintf(stderr, "apigw_script: no script \"%s\"\n", argv[1]);
        return 1;
    }

    fprintf(stderr, "usage: apigw_script [NAME | --tb-key PREFIX POLICY KEY"
            " | --tb-batch ITEM... [-- ITEM...]...]\n");
    return 2;
}
