#include "apigw_request_id.h"


int
apigw_request_id_valid(const unsigned char *p, size_t len)
{
    size_t         i;
    unsigned char  c;

    if (p == NULL || len == 0 || len > APIGW_REQUEST_ID_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = p[i];

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9')
            || c == '.' || c == '_' || c == ':' || c == '-')
        {
            continue;
        }

        return 0;
    }

    return 1;
}


void
apigw_request_id_format(unsigned char *out,
    const unsigned char rnd[APIGW_REQUEST_ID_RAND_BYTES])
{
    static const unsigned char  hex[] = "0123456789abcdef";
    size_t                      i;

    out[0] = 'r';
    out[1] = 'e';
    out[2] = 'q';
    out[3] = '_';

    for (i = 0; i < APIGW_REQUEST_ID_RAND_BYTES; i++) {
        out[4 + 2 * i] = hex[rnd[i] >> 4];
        out[5 + 2 * i] = hex[rnd[i] & 0x0f];
    }
}
