#ifndef APIGW_REQUEST_ID_H
#define APIGW_REQUEST_ID_H

#include <stddef.h>

#define APIGW_REQUEST_ID_MAX        128
#define APIGW_REQUEST_ID_RAND_BYTES 12
/* "req_" + 24 lowercase hex */
#define APIGW_REQUEST_ID_GEN_LEN    (4 + 2 * APIGW_REQUEST_ID_RAND_BYTES)

/* 1..128 characters from [A-Za-z0-9._:-] */
int apigw_request_id_valid(const unsigned char *p, size_t len);

/* Writes APIGW_REQUEST_ID_GEN_LEN bytes (no NUL) from 12 random bytes. */
void apigw_request_id_format(unsigned char *out,
    const unsigned char rnd[APIGW_REQUEST_ID_RAND_BYTES]);

#endif
