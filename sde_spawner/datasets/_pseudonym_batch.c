/* Keyed HMAC-SHA256 pseudonyms of a whole Arrow string column in one call.
 *
 * Loaded with ctypes by sde_spawner/datasets/pseudonym_batch.py; built by hatch_build.py
 * when the project is installed (a C compiler and OpenSSL's headers are needed; without
 * them the extract falls back to the same HMAC written in DuckDB SQL, which is slower).
 *
 * The HMAC is RFC 2104 with the inner and outer pad states computed once per call, so each
 * identifier costs two SHA-256 compressions instead of four. An identifier of up to 55 bytes
 * (an NHS number has 10) fits one padded block: where the CPU has the SHA extensions (SHA-NI)
 * two identifiers are hashed at once, their compressions interleaved (one SHA-256 round
 * waits on the one before it, so a single stream leaves the unit idle half the time);
 * otherwise, and for longer values, OpenSSL's SHA-256 is used. The GIL is released by ctypes
 * around the call. tests/unit/test_pseudonym_batch.py compares both paths with Python's hmac.
 *
 * sde_dict_encode (at the end) dictionary-encodes a low-cardinality string column for the
 * extract's Parquet writer; tests/unit/test_parquet_out.py compares it with pyarrow's.
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

static const char HEX[] = "0123456789abcdef";

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SDE_HAVE_SHANI_BUILD 1

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

/* One SHA-256 compression of one 64-byte block for each of two independent states
 * (h: eight words, FIPS 180-4 order), in the layout of Intel's SHA extensions guide. */
__attribute__((target("sha,sse4.1,ssse3"))) static void
compress2(uint32_t ha[8], const unsigned char *a, uint32_t hb[8], const unsigned char *b)
{
    const __m128i MASK = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i t, s0a, s1a, s0b, s1b, ma[4], mb[4];
    t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&ha[0]), 0xB1); /* CDAB */
    s1a = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&ha[4]), 0x1B); /* EFGH */
    s0a = _mm_alignr_epi8(t, s1a, 8);    /* ABEF */
    s1a = _mm_blend_epi16(s1a, t, 0xF0); /* CDGH */
    t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&hb[0]), 0xB1);
    s1b = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&hb[4]), 0x1B);
    s0b = _mm_alignr_epi8(t, s1b, 8);
    s1b = _mm_blend_epi16(s1b, t, 0xF0);
    const __m128i save0a = s0a, save1a = s1a, save0b = s0b, save1b = s1b;
#pragma GCC unroll 16
    for (int g = 0; g < 16; g++) {
        if (g < 4) {
            ma[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(a + 16 * g)), MASK);
            mb[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(b + 16 * g)), MASK);
        } else { /* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time */
            __m128i x = _mm_sha256msg1_epu32(ma[g % 4], ma[(g + 1) % 4]);
            __m128i y = _mm_sha256msg1_epu32(mb[g % 4], mb[(g + 1) % 4]);
            x = _mm_add_epi32(x, _mm_alignr_epi8(ma[(g + 3) % 4], ma[(g + 2) % 4], 4));
            y = _mm_add_epi32(y, _mm_alignr_epi8(mb[(g + 3) % 4], mb[(g + 2) % 4], 4));
            ma[g % 4] = _mm_sha256msg2_epu32(x, ma[(g + 3) % 4]);
            mb[g % 4] = _mm_sha256msg2_epu32(y, mb[(g + 3) % 4]);
        }
        const __m128i k = _mm_loadu_si128((const __m128i *)&K256[4 * g]);
        __m128i wa = _mm_add_epi32(ma[g % 4], k), wb = _mm_add_epi32(mb[g % 4], k);
        s1a = _mm_sha256rnds2_epu32(s1a, s0a, wa);
        s1b = _mm_sha256rnds2_epu32(s1b, s0b, wb);
        wa = _mm_shuffle_epi32(wa, 0x0E);
        wb = _mm_shuffle_epi32(wb, 0x0E);
        s0a = _mm_sha256rnds2_epu32(s0a, s1a, wa);
        s0b = _mm_sha256rnds2_epu32(s0b, s1b, wb);
    }
    s0a = _mm_add_epi32(s0a, save0a);
    s1a = _mm_add_epi32(s1a, save1a);
    s0b = _mm_add_epi32(s0b, save0b);
    s1b = _mm_add_epi32(s1b, save1b);
    t = _mm_shuffle_epi32(s0a, 0x1B);   /* FEBA */
    s1a = _mm_shuffle_epi32(s1a, 0xB1); /* DCHG */
    _mm_storeu_si128((__m128i *)&ha[0], _mm_blend_epi16(t, s1a, 0xF0)); /* DCBA */
    _mm_storeu_si128((__m128i *)&ha[4], _mm_alignr_epi8(s1a, t, 8));    /* HGFE */
    t = _mm_shuffle_epi32(s0b, 0x1B);
    s1b = _mm_shuffle_epi32(s1b, 0xB1);
    _mm_storeu_si128((__m128i *)&hb[0], _mm_blend_epi16(t, s1b, 0xF0));
    _mm_storeu_si128((__m128i *)&hb[4], _mm_alignr_epi8(s1b, t, 8));
}

static int have_shani(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") &&
                __builtin_cpu_supports("ssse3");
    }
    return known;
}
#endif

/* The padded last block of a message of len <= 55 bytes that follows one 64-byte block. */
static void pad_block(unsigned char block[64], const unsigned char *msg, size_t len)
{
    uint64_t bits = (uint64_t)(64 + len) * 8;
    memset(block, 0, 64);
    memcpy(block, msg, len);
    block[len] = 0x80;
    for (int k = 0; k < 8; k++) block[63 - k] = (unsigned char)(bits >> (8 * k));
}

static void words_be(unsigned char *out, const uint32_t *h, int words)
{
    for (int k = 0; k < words; k++) {
        out[4 * k] = (unsigned char)(h[k] >> 24);
        out[4 * k + 1] = (unsigned char)(h[k] >> 16);
        out[4 * k + 2] = (unsigned char)(h[k] >> 8);
        out[4 * k + 3] = (unsigned char)h[k];
    }
}

static void hex_out(char *o, const unsigned char *digest, int hexchars)
{
    for (int j = 0; j < hexchars / 2; j++) {
        o[2 * j] = HEX[digest[j] >> 4];
        o[2 * j + 1] = HEX[digest[j] & 15];
    }
}

/* One value through OpenSSL: any length. */
static void hmac_one(const SHA256_CTX *inner, const SHA256_CTX *outer, const unsigned char *v,
                     size_t len, unsigned char digest[SHA256_DIGEST_LENGTH])
{
    SHA256_CTX ctx = *inner;
    SHA256_Update(&ctx, v, len);
    SHA256_Final(digest, &ctx);
    ctx = *outer;
    SHA256_Update(&ctx, digest, SHA256_DIGEST_LENGTH);
    SHA256_Final(digest, &ctx);
}

/* ipad, opad: the 64-byte key pads. data/offsets: an Arrow utf8 array's buffers (n values,
 * n + 1 int32 offsets). out: n * hexchars bytes, the first hexchars hex digits of each HMAC;
 * out_offsets: n + 1 int32, the offsets of the Arrow array made of out.
 * use_shani: 0 never uses the SHA extensions (the tests compare both paths).
 * Returns 0, or -1 when an argument is out of range (nothing is then promised of out). */
int sde_hmac_sha256_hex2(const unsigned char *ipad, const unsigned char *opad,
                         const unsigned char *data, const int32_t *offsets, int64_t n,
                         char *out, int32_t *out_offsets, int hexchars, int use_shani)
{
    SHA256_CTX inner, outer;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    if (n < 0 || hexchars < 2 || hexchars > 2 * SHA256_DIGEST_LENGTH || hexchars % 2)
        return -1;
    if (n > INT32_MAX / hexchars) return -1;
    for (int64_t i = 0; i < n; i++)
        if (offsets[i + 1] < offsets[i]) return -1;
    if (!SHA256_Init(&inner) || !SHA256_Update(&inner, ipad, 64)) return -1;
    if (!SHA256_Init(&outer) || !SHA256_Update(&outer, opad, 64)) return -1;
    for (int64_t i = 0; i <= n; i++) out_offsets[i] = (int32_t)(i * hexchars);
    int64_t i = 0;
#ifdef SDE_HAVE_SHANI_BUILD
    if (use_shani && have_shani()) {
        unsigned char ba[64], bb[64], oa[64], ob[64];
        uint32_t ha[8], hb[8];
        /* the outer block: a 32-byte digest after the 64-byte pad, then its padding */
        memset(oa, 0, 64);
        oa[32] = 0x80;
        oa[62] = (768 >> 8) & 0xff;
        oa[63] = 768 & 0xff;
        memcpy(ob, oa, 64);
        int64_t pending = -1; /* a short value waiting for a partner */
        for (; i < n; i++) {
            size_t len = (size_t)(offsets[i + 1] - offsets[i]);
            if (len > 55) { /* two blocks: OpenSSL */
                hmac_one(&inner, &outer, data + offsets[i], len, digest);
                hex_out(out + i * hexchars, digest, hexchars);
                continue;
            }
            if (pending < 0) {
                pending = i;
                continue;
            }
            size_t plen = (size_t)(offsets[pending + 1] - offsets[pending]);
            pad_block(ba, data + offsets[pending], plen);
            pad_block(bb, data + offsets[i], len);
            memcpy(ha, inner.h, sizeof ha);
            memcpy(hb, inner.h, sizeof hb);
            compress2(ha, ba, hb, bb);
            words_be(oa, ha, 8);
            words_be(ob, hb, 8);
            memcpy(ha, outer.h, sizeof ha);
            memcpy(hb, outer.h, sizeof hb);
            compress2(ha, oa, hb, ob);
            words_be(digest, ha, 8);
            hex_out(out + pending * hexchars, digest, hexchars);
            words_be(digest, hb, 8);
            hex_out(out + i * hexchars, digest, hexchars);
            pending = -1;
        }
        if (pending >= 0) {
            size_t plen = (size_t)(offsets[pending + 1] - offsets[pending]);
            hmac_one(&inner, &outer, data + offsets[pending], plen, digest);
            hex_out(out + pending * hexchars, digest, hexchars);
        }
        return 0;
    }
#endif
    for (; i < n; i++) {
        hmac_one(&inner, &outer, data + offsets[i], (size_t)(offsets[i + 1] - offsets[i]),
                 digest);
        hex_out(out + i * hexchars, digest, hexchars);
    }
    return 0;
}

/* Whether this build and this CPU hash with the SHA extensions. */
int sde_hmac_uses_shani(void)
{
#ifdef SDE_HAVE_SHANI_BUILD
    return have_shani();
#else
    return 0;
#endif
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

/* Dictionary encoding of a low-cardinality Arrow utf8 array (the extract's writer then writes
 * its dictionary and indices as they are instead of hashing every value again).
 * data/offsets: the array's buffers (n values); validity: its bitmap, or NULL (no nulls).
 * indices: n int32 (a null slot gets 0). dict_offsets: limit + 1 int32; dict_data:
 * dict_cap bytes; the distinct values are stored there in order of first appearance.
 * limit: at most this many distinct values (at most 4096).
 * Returns the number of distinct values, or -1 when there are more than limit or they do not
 * fit in dict_cap bytes (nothing is then promised of the outputs), or -2 on a bad argument. */
int64_t sde_dict_encode(const unsigned char *data, const int32_t *offsets,
                        const unsigned char *validity, int64_t n, int32_t *indices,
                        int32_t *dict_offsets, unsigned char *dict_data, int64_t dict_cap,
                        int limit)
{
    enum { BITS = 13, SLOTS = 1 << BITS }; /* at least twice the largest limit */
    int32_t table[SLOTS];
    uint64_t keys[4096]; /* a value of up to 8 bytes itself (zero-padded), else its hash */
    int64_t count = 0, used = 0;
    if (n < 0 || limit < 1 || limit > 4096 || dict_cap < 0) return -2;
    for (int k = 0; k < SLOTS; k++) table[k] = -1;
    dict_offsets[0] = 0;
    const int32_t end = n ? offsets[n] : 0; /* the values' bytes end here */
    for (int64_t i = 0; i < n; i++) {
        if (validity && !(validity[i >> 3] & (1u << (i & 7)))) {
            indices[i] = 0;
            continue;
        }
        int32_t start = offsets[i], len = offsets[i + 1] - start;
        if (start < 0 || len < 0) return -2;
        const unsigned char *s = data + start;
        uint64_t key = 0;
        if (len <= 8 && start + 8 <= end) { /* one load (within the data), masked */
            memcpy(&key, s, 8);
            key &= len == 8 ? ~0ull : (1ull << (8 * len)) - 1;
        } else if (len <= 8) {
            for (int32_t j = 0; j < len; j++) key |= (uint64_t)s[j] << (8 * j);
        } else {
            key = 14695981039346656037ull; /* FNV-1a */
            for (int32_t j = 0; j < len; j++) key = (key ^ s[j]) * 1099511628211ull;
        }
        uint32_t slot = (uint32_t)(((key ^ (uint64_t)len) * 0x9E3779B97F4A7C15ull) >> (64 - BITS));
        for (;;) {
            int32_t e = table[slot];
            if (e < 0) { /* a new value */
                if (count == limit || used + len > dict_cap) return -1;
                memcpy(dict_data + used, s, (size_t)len);
                used += len;
                dict_offsets[count + 1] = (int32_t)used;
                keys[count] = key;
                table[slot] = (int32_t)count;
                indices[i] = (int32_t)count++;
                break;
            }
            if (keys[e] == key && dict_offsets[e + 1] - dict_offsets[e] == len &&
                (len <= 8 || memcmp(dict_data + dict_offsets[e], s, (size_t)len) == 0)) {
                indices[i] = e;
                break;
            }
            slot = (slot + 1) & (SLOTS - 1);
        }
    }
    return count;
}

/* ---- the NHS number check and the opt-out lists in one pass --------------------------------
 * An opt-out set is an open-addressing table of slots (a power of two, at least twice the
 * entries): keys[k] is a ten-digit number plus one (0: an empty slot), masks[k] the lists
 * (bit i: list i) it is on. Both arrays start zeroed. */
static uint64_t slot_of(uint64_t number, int64_t slots)
{
    return (number * 0x9E3779B97F4A7C15ull) >> 17 & (uint64_t)(slots - 1);
}

/* Ten ASCII digits as a number, or -1 (anything else: only exactly ten digits can equal a
 * valid, normalised NHS number). */
static int64_t ten_digits(const unsigned char *s, int32_t len)
{
    int64_t v = 0;
    if (len != 10) return -1;
    for (int j = 0; j < 10; j++) {
        if (s[j] < '0' || s[j] > '9') return -1;
        v = v * 10 + (s[j] - '0');
    }
    return v;
}

/* Add the values of an Arrow utf8 array (n values; validity: its bitmap or NULL) to list bit
 * (0..31). Values that are not ten digits are left out. Returns 0, or -1 (bad argument or
 * the table is full). */
int sde_optout_add(uint64_t *keys, uint32_t *masks, int64_t slots, const unsigned char *data,
                   const int32_t *offsets, const unsigned char *validity, int64_t n, int bit)
{
    if (slots < 2 || (slots & (slots - 1)) || bit < 0 || bit > 31 || n < 0) return -1;
    for (int64_t i = 0; i < n; i++) {
        if (validity && !(validity[i >> 3] & (1u << (i & 7)))) continue;
        if (offsets[i + 1] < offsets[i] || offsets[i] < 0) return -1;
        int64_t v = ten_digits(data + offsets[i], offsets[i + 1] - offsets[i]);
        if (v < 0) continue;
        uint64_t k = slot_of((uint64_t)v, slots);
        for (int64_t probes = 0;; probes++) {
            if (probes == slots) return -1;
            if (keys[k] == 0) keys[k] = (uint64_t)v + 1;
            if (keys[k] == (uint64_t)v + 1) {
                masks[k] |= 1u << bit;
                break;
            }
            k = (k + 1) & (uint64_t)(slots - 1);
        }
    }
    return 0;
}

/* For each value of an Arrow utf8 array (n values; null slots are the caller's to mask):
 * valid[i] = 1 when the value with its spaces removed (SQL replace(value, ' ', '')) is a valid
 * NHS number (ten digits, the tenth the Modulus 11 check digit of the first nine), and then
 * lists[i] = the opt-out lists it is on (0: none), else 0. Returns the number of valid values
 * that had spaces (their normalised form is what must be pseudonymised), or -1. */
int64_t sde_nhs_check(const unsigned char *data, const int32_t *offsets, int64_t n,
                      const uint64_t *keys, const uint32_t *masks, int64_t slots,
                      unsigned char *valid, uint32_t *lists)
{
    /* In blocks: check a block's values and prefetch their slots, then probe them (the table
     * is larger than the caches; its lookups would otherwise wait on memory one by one). */
    enum { BLOCK = 64 };
    uint64_t number[BLOCK], slot[BLOCK];
    int64_t spaced = 0;
    if (n < 0 || slots < 2 || (slots & (slots - 1))) return -1;
    for (int64_t base = 0; base < n; base += BLOCK) {
        int64_t m = n - base < BLOCK ? n - base : BLOCK;
        for (int64_t b = 0; b < m; b++) {
            int64_t i = base + b;
            int32_t start = offsets[i], end = offsets[i + 1];
            int digits = 0, total = 0, ok = end >= start && start >= 0;
            int64_t v = 0;
            for (int32_t j = start; ok && j < end; j++) {
                unsigned char c = data[j];
                if (c == ' ') continue;
                if (c < '0' || c > '9' || digits == 10) {
                    ok = 0;
                    break;
                }
                v = v * 10 + (c - '0');
                if (digits < 9) total += (c - '0') * (10 - digits);
                else {
                    int check = 11 - total % 11;
                    if (check == 11) check = 0;
                    ok = check == c - '0'; /* a check of 10 matches no digit: invalid */
                }
                digits++;
            }
            ok = ok && digits == 10;
            valid[i] = (unsigned char)ok;
            number[b] = (uint64_t)v;
            if (ok) {
                spaced += (end - start) != 10;
                slot[b] = slot_of((uint64_t)v, slots);
                __builtin_prefetch(&keys[slot[b]]);
            }
        }
        for (int64_t b = 0; b < m; b++) {
            int64_t i = base + b;
            uint32_t on = 0;
            if (valid[i]) {
                uint64_t k = slot[b];
                for (int64_t probes = 0; probes < slots && keys[k]; probes++) {
                    if (keys[k] == number[b] + 1) {
                        on = masks[k];
                        break;
                    }
                    k = (k + 1) & (uint64_t)(slots - 1);
                }
            }
            lists[i] = on;
        }
    }
    return spaced;
}
