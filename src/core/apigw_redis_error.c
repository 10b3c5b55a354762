/*
 * Redis error reply classification: the error code is the reply's first
 * word (Redis's own convention, "-WRONGTYPE Operation against ...").
 */

#include <string.h>

#include "apigw_redis_error.h"


typedef struct {
    const char               *code;
    size_t                    len;
    apigw_redis_err_class_t   cls;
} apigw_redis_err_code_t;


#define APIGW_ERR(s, c)  { s, sizeof(s) - 1, c }

static const apigw_redis_err_code_t  apigw_redis_err_codes[] = {
    APIGW_ERR("LOADING", APIGW_REDIS_ERR_TRANSIENT),
    APIGW_ERR("BUSY", APIGW_REDIS_ERR_TRANSIENT),
    APIGW_ERR("TRYAGAIN", APIGW_REDIS_ERR_TRANSIENT),
    APIGW_ERR("CLUSTERDOWN", APIGW_REDIS_ERR_TRANSIENT),
    APIGW_ERR("MASTERDOWN", APIGW_REDIS_ERR_TRANSIENT),
    APIGW_ERR("READONLY", APIGW_REDIS_ERR_READONLY),
    APIGW_ERR("MOVED", APIGW_REDIS_ERR_REDIRECT),
    APIGW_ERR("ASK", APIGW_REDIS_ERR_REDIRECT),
    APIGW_ERR("NOSCRIPT", APIGW_REDIS_ERR_NOSCRIPT),
    APIGW_ERR("NOAUTH", APIGW_REDIS_ERR_AUTH),
    APIGW_ERR("WRONGPASS", APIGW_REDIS_ERR_AUTH),
    APIGW_ERR("NOPERM", APIGW_REDIS_ERR_AUTH)
};

static const char  *apigw_redis_err_names[APIGW_REDIS_ERR__COUNT] = {
    "transient", "readonly", "redirect", "noscript", "auth", "other"
};


apigw_redis_err_class_t
apigw_redis_error_class(const char *s, size_t len)
{
    size_t  i, word;

    if (s == NULL) {
        return APIGW_REDIS_ERR_OTHER;
    }

    for (word = 0; word < len && s[word] != ' '; word++) {
        /* void */
    }

    for (i = 0; i < sizeof(apigw_redis_err_codes)
                    / sizeof(apigw_redis_err_codes[0]); i++)
    {
        if (apigw_redis_err_codes[i].len == word
            && memcmp(apigw_redis_err_codes[i].code, s, word) == 0)
        {
            return apigw_redis_err_codes[i].cls;
        }
    }

    return APIGW_REDIS_ERR_OTHER;
}


const char *
apigw_redis_error_class_name(apigw_redis_err_class_t c)
{
    return (unsigned) c < APIGW_REDIS_ERR__COUNT ? apigw_redis_err_names[c]
                                                 : "other";
}
