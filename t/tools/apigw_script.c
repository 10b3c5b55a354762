/*
 * Prints a Redis Lua script of the core, byte for byte what the module
 * loads, so integration tests run the real script against a real Redis:
 *
 *     apigw_script NAME                   the script NAME
 *     apigw_script                        the names, one a line
 *     apigw_script --tb-key PREFIX POLICY KEY
 *                                         apigw_tb_key() of the arguments
 */

#include <stdio.h>
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


int
main(int argc, char **argv)
{
    size_t  i, len;

    if (argc == 5 && strcmp(argv[1], "--tb-key") == 0) {
        return tb_key(argv[2], argv[3], argv[4]);
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

    fprintf(stderr, "usage: apigw_script [NAME | --tb-key PREFIX POLICY KEY]"
            "\n");
    return 2;
}
