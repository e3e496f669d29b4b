/* Keyed HMAC-SHA256 pseudonyms of a whole Arrow string column in one call.
 *
 * Loaded with ctypes by sde_spawner/datasets/pseudonym_batch.py; built by hatch_build.py
 * when the project is installed (a C compiler and OpenSSL's headers are needed; without
 * them the extract falls back to the same HMAC written in DuckDB SQL, which is slower).
 *
 * The hash is OpenSSL's SHA-256 (SHA-NI where the CPU has it). The HMAC is RFC 2104 with
 * the inner and outer pad states computed once per call, so each identifier costs two
 * SHA-256 compressions instead of four. The GIL is released by ctypes around the call.
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <stdint.h>

static const char HEX[] = "0123456789abcdef";

/* ipad, opad: the 64-byte key pads. data/offsets: an Arrow utf8 array's buffers (n values,
 * n + 1 int32 offsets). out: n * hexchars bytes, the first hexchars hex digits of each HMAC;
 * out_offsets: n + 1 int32, the offsets of the Arrow array made of out.
 * Returns 0, or -1 when an argument is out of range (nothing is then promised of out). */
int sde_hmac_sha256_hex(const unsigned char *ipad, const unsigned char *opad,
                        const unsigned char *data, const int32_t *offsets, int64_t n,
                        char *out, int32_t *out_offsets, int hexchars)
{
    SHA256_CTX inner, outer, ctx;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    if (n < 0 || hexchars < 2 || hexchars > 2 * SHA256_DIGEST_LENGTH || hexchars % 2)
        return -1;
    if (n > INT32_MAX / hexchars) return -1;
    if (!SHA256_Init(&inner) || !SHA256_Update(&inner, ipad, 64)) return -1;
    if (!SHA256_Init(&outer) || !SHA256_Update(&outer, opad, 64)) return -1;
    for (int64_t i = 0; i < n; i++) {
        int32_t start = offsets[i], end = offsets[i + 1];
        if (end < start) return -1;
        ctx = inner;
        SHA256_Update(&ctx, data + start, (size_t)(end - start));
        SHA256_Final(digest, &ctx);
        ctx = outer;
        SHA256_Update(&ctx, digest, sizeof digest);
        SHA256_Final(digest, &ctx);
        out_offsets[i] = (int32_t)(i * hexchars);
        char *o = out + i * hexchars;
        for (int j = 0; j < hexchars / 2; j++) {
            o[2 * j] = HEX[digest[j] >> 4];
            o[2 * j + 1] = HEX[digest[j] & 15];
        }
    }
    out_offsets[n] = (int32_t)(n * hexchars);
    return 0;
}

/* The NHS number check of sde_spawner/datasets/nhs_number.py (is_valid) over an Arrow utf8
 * array: exactly ten ASCII digits, the tenth the Modulus 11 check digit of the first nine.
 * out: n bytes, 1 where valid. Returns the number of valid values, or -1. */
int64_t sde_nhs_valid(const unsigned char *data, const int32_t *offsets, int64_t n,
                      unsigned char *out)
{
    int64_t valid = 0;
    if (n < 0) return -1;
    for (int64_t i = 0; i < n; i++) {
        int32_t start = offsets[i], end = offsets[i + 1];
        int ok = (end - start) == 10;
        int total = 0;
        for (int j = 0; ok && j < 10; j++) {
            unsigned char c = data[start + j];
            if (c < '0' || c > '9') ok = 0;
            else if (j < 9) total += (c - '0') * (10 - j);
            else {
                int check = 11 - total % 11;
                if (check == 11) check = 0;
                ok = check == c - '0'; /* a check of 10 matches no digit: invalid */
            }
        }
        out[i] = (unsigned char)ok;
        valid += ok;
    }
    return valid;
}
