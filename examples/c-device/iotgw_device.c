/*
 * iotgw_device.c: see iotgw_device.h. Portable C99, no allocation.
 */
#include "iotgw_device.h"

#include <string.h>

#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>
#include <mbedtls/version.h>

/* mbedTLS 2.7-2.28 name the int-returning SHA-256 calls *_ret; 3.x drops the suffix. */
#if MBEDTLS_VERSION_MAJOR >= 3
#define SHA256_STARTS(c) mbedtls_sha256_starts((c), 0)
#define SHA256_UPDATE(c, p, n) mbedtls_sha256_update((c), (p), (n))
#define SHA256_FINISH(c, o) mbedtls_sha256_finish((c), (o))
#else
#define SHA256_STARTS(c) mbedtls_sha256_starts_ret((c), 0)
#define SHA256_UPDATE(c, p, n) mbedtls_sha256_update_ret((c), (p), (n))
#define SHA256_FINISH(c, o) mbedtls_sha256_finish_ret((c), (o))
#endif

#define BLOCK 64
#define DIGEST 32

static const char downlink_label[] = "iotgw/v1/downlink";
static const char counter_label[] = "iotgw/v1/counter";
static const char time_for_open[] = "{\"time_for\":\"";

const char *iotgw_strerror(int result)
{
    switch (result) {
    case IOTGW_OK: return "ok";
    case IOTGW_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case IOTGW_ERR_INVALID_ARGUMENT: return "invalid argument (device id, message id, timestamp or payload)";
    case IOTGW_ERR_MALFORMED: return "malformed envelope";
    case IOTGW_ERR_BAD_SIGNATURE: return "bad signature";
    case IOTGW_ERR_IDENTITY: return "downlink for another device";
    case IOTGW_ERR_NOT_FOUND: return "member not found";
    case IOTGW_ERR_CRYPTO: return "mbedtls error";
    case IOTGW_ERR_PERSIST: return "counter not persisted";
    case IOTGW_ERR_EXHAUSTED: return "counter exhausted";
    case IOTGW_ERR_OTHER_NONCE: return "time reply for another nonce";
    case IOTGW_ERR_NOT_TIME_REPLY: return "not a time reply";
    default: return "unknown error";
    }
}

/* ---- HMAC-SHA256 over mbedtls_sha256, on the stack ------------------- */

typedef struct {
    mbedtls_sha256_context inner;
    uint8_t opad[BLOCK];
    int err;
} hmac_ctx;

static void hmac_start(hmac_ctx *h, const uint8_t *key, size_t key_len)
{
    uint8_t k[BLOCK];
    uint8_t ipad[BLOCK];
    size_t i;

    memset(k, 0, sizeof k);
    h->err = 0;
    mbedtls_sha256_init(&h->inner);
    if (key_len > BLOCK) {
        if (SHA256_STARTS(&h->inner) != 0 || SHA256_UPDATE(&h->inner, key, key_len) != 0 ||
            SHA256_FINISH(&h->inner, k) != 0) {
            h->err = 1;
        }
        mbedtls_sha256_free(&h->inner);
        mbedtls_sha256_init(&h->inner);
    } else if (key_len > 0) {
        memcpy(k, key, key_len);
    }
    for (i = 0; i < BLOCK; i++) {
        ipad[i] = (uint8_t)(k[i] ^ 0x36);
        h->opad[i] = (uint8_t)(k[i] ^ 0x5c);
    }
    if (SHA256_STARTS(&h->inner) != 0 || SHA256_UPDATE(&h->inner, ipad, BLOCK) != 0) {
        h->err = 1;
    }
    mbedtls_platform_zeroize(k, sizeof k);
    mbedtls_platform_zeroize(ipad, sizeof ipad);
}

static void hmac_update(hmac_ctx *h, const void *p, size_t n)
{
    if (n > 0 && SHA256_UPDATE(&h->inner, (const unsigned char *)p, n) != 0) {
        h->err = 1;
    }
}

static int hmac_finish_hex(hmac_ctx *h, char out[IOTGW_HEX_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t d[DIGEST];
    mbedtls_sha256_context outer;
    int i;

    mbedtls_sha256_init(&outer);
    if (SHA256_FINISH(&h->inner, d) != 0 || SHA256_STARTS(&outer) != 0 ||
        SHA256_UPDATE(&outer, h->opad, BLOCK) != 0 || SHA256_UPDATE(&outer, d, DIGEST) != 0 ||
        SHA256_FINISH(&outer, d) != 0) {
        h->err = 1;
    }
    mbedtls_sha256_free(&outer);
    mbedtls_sha256_free(&h->inner);
    mbedtls_platform_zeroize(h->opad, sizeof h->opad);
    for (i = 0; i < DIGEST; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[2 * DIGEST] = '\0';
    mbedtls_platform_zeroize(d, sizeof d);
    return h->err ? IOTGW_ERR_CRYPTO : IOTGW_OK;
}

int iotgw_sign(const uint8_t *key, size_t key_len, const iotgw_envelope *env,
               char sig[IOTGW_HEX_SIZE])
{
    hmac_ctx h;
    int counter = env->counter.len > 0;
    hmac_start(&h, key, key_len);
    if (counter) { /* section 2a: the label keeps the two modes' signing bytes apart */
        hmac_update(&h, counter_label, sizeof counter_label - 1);
        hmac_update(&h, "\n", 1);
    }
    hmac_update(&h, env->device_id.ptr, env->device_id.len);
    hmac_update(&h, "\n", 1);
    if (counter) hmac_update(&h, env->counter.ptr, env->counter.len);
    else hmac_update(&h, env->timestamp.ptr, env->timestamp.len);
    hmac_update(&h, "\n", 1);
    hmac_update(&h, env->message_id.ptr, env->message_id.len);
    hmac_update(&h, "\n", 1);
    hmac_update(&h, env->payload.ptr, env->payload.len);
    return hmac_finish_hex(&h, sig);
}

int iotgw_downlink_key(const uint8_t *secret, size_t secret_len, char k_down[IOTGW_HEX_SIZE])
{
    hmac_ctx h;
    hmac_start(&h, secret, secret_len);
    hmac_update(&h, downlink_label, sizeof downlink_label - 1);
    return hmac_finish_hex(&h, k_down);
}

/* ---- the strict JSON scanner ----------------------------------------- */

typedef struct {
    const unsigned char *p;
    size_t n;
    size_t i;
} scanner;

static void skip_ws(scanner *s)
{
    while (s->i < s->n && (s->p[s->i] == ' ' || s->p[s->i] == '\t' || s->p[s->i] == '\n' || s->p[s->i] == '\r')) {
        s->i++;
    }
}

static int hex4(scanner *s, unsigned *v)
{
    unsigned x = 0;
    int k;
    if (s->n - s->i < 4) return 0;
    for (k = 0; k < 4; k++) {
        unsigned char c = s->p[s->i + (size_t)k];
        x <<= 4;
        if (c >= '0' && c <= '9') x |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') x |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') x |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    s->i += 4;
    *v = x;
    return 1;
}

/* utf8 checks one UTF-8 sequence starting at s->i (a byte >= 0x80):
 * shortest form, no surrogates, at most U+10FFFF. */
static int utf8(scanner *s)
{
    unsigned char c = s->p[s->i];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t more, k;
    if (c >= 0xC2 && c <= 0xDF) more = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        more = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        more = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (s->n - s->i <= more) return 0;
    for (k = 1; k <= more; k++) {
        unsigned char b = s->p[s->i + k];
        if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
    }
    s->i += more + 1;
    return 1;
}

/* scan_string scans a string at s->i (which must be '"'); *escaped says
 * whether it held a backslash. */
static int scan_string(scanner *s, int *escaped)
{
    *escaped = 0;
    if (s->i >= s->n || s->p[s->i] != '"') return 0;
    s->i++;
    while (s->i < s->n) {
        unsigned char c = s->p[s->i];
        if (c == '"') {
            s->i++;
            return 1;
        }
        if (c < 0x20) return 0;
        if (c >= 0x80) {
            if (!utf8(s)) return 0;
            continue;
        }
        if (c != '\\') {
            s->i++;
            continue;
        }
        *escaped = 1;
        if (++s->i >= s->n) return 0;
        c = s->p[s->i++];
        if (c == 'u') {
            unsigned u, l;
            if (!hex4(s, &u)) return 0;
            if (u >= 0xDC00 && u <= 0xDFFF) return 0; /* a low surrogate alone */
            if (u >= 0xD800 && u <= 0xDBFF) {         /* must be followed by a low one */
                if (s->n - s->i < 2 || s->p[s->i] != '\\' || s->p[s->i + 1] != 'u') return 0;
                s->i += 2;
                if (!hex4(s, &l) || l < 0xDC00 || l > 0xDFFF) return 0;
            }
        } else if (!strchr("\"\\/bfnrt", c) || c == '\0') {
            return 0;
        }
    }
    return 0;
}

static int digits(scanner *s)
{
    size_t start = s->i;
    while (s->i < s->n && s->p[s->i] >= '0' && s->p[s->i] <= '9') s->i++;
    return s->i > start;
}

static int scan_number(scanner *s)
{
    if (s->i < s->n && s->p[s->i] == '-') s->i++;
    if (s->i < s->n && s->p[s->i] == '0') s->i++;
    else if (!(s->i < s->n && s->p[s->i] >= '1' && s->p[s->i] <= '9') || !digits(s)) return 0;
    if (s->i < s->n && s->p[s->i] == '.') {
        s->i++;
        if (!digits(s)) return 0;
    }
    if (s->i < s->n && (s->p[s->i] == 'e' || s->p[s->i] == 'E')) {
        s->i++;
        if (s->i < s->n && (s->p[s->i] == '+' || s->p[s->i] == '-')) s->i++;
        if (!digits(s)) return 0;
    }
    return 1;
}

static int literal(scanner *s, const char *word)
{
    size_t k = strlen(word);
    if (s->n - s->i < k || memcmp(s->p + s->i, word, k) != 0) return 0;
    s->i += k;
    return 1;
}

/* scan_value scans one JSON value at s->i; a container found here is at
 * nesting level depth (the envelope object is level 1). */
static int scan_value(scanner *s, int depth)
{
    int esc;
    unsigned char c;
    if (s->i >= s->n) return 0;
    c = s->p[s->i];
    if (c == '"') return scan_string(s, &esc);
    if (c == '-' || (c >= '0' && c <= '9')) return scan_number(s);
    if (c == 't') return literal(s, "true");
    if (c == 'f') return literal(s, "false");
    if (c == 'n') return literal(s, "null");
    if (c != '{' && c != '[') return 0;
    if (depth > IOTGW_MAX_DEPTH) return 0;
    s->i++;
    skip_ws(s);
    if (s->i < s->n && s->p[s->i] == (c == '{' ? '}' : ']')) {
        s->i++;
        return 1;
    }
    for (;;) {
        if (c == '{') {
            if (!scan_string(s, &esc)) return 0;
            skip_ws(s);
            if (s->i >= s->n || s->p[s->i] != ':') return 0;
            s->i++;
            skip_ws(s);
        }
        if (!scan_value(s, depth + 1)) return 0;
        skip_ws(s);
        if (s->i >= s->n) return 0;
        if (s->p[s->i] == (c == '{' ? '}' : ']')) {
            s->i++;
            return 1;
        }
        if (s->p[s->i] != ',') return 0;
        s->i++;
        skip_ws(s);
    }
}

/* ---- member forms (§1) ----------------------------------------------- */

static int valid_device_id(const char *p, size_t n)
{
    size_t k;
    if (n < 1 || n > IOTGW_MAX_DEVICE_ID || p[0] == '.') return 0;
    for (k = 0; k < n; k++) {
        char c = p[k];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

static int is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int valid_uuid(const char *p, size_t n)
{
    size_t k;
    if (n != 36) return 0;
    for (k = 0; k < 36; k++) {
        if (k == 8 || k == 13 || k == 18 || k == 23) {
            if (p[k] != '-') return 0;
        } else if (!is_lower_hex(p[k])) {
            return 0;
        }
    }
    return 1;
}

static int valid_signature(const char *p, size_t n)
{
    size_t k;
    if (n != 64) return 0;
    for (k = 0; k < n; k++) {
        if (!is_lower_hex(p[k])) return 0;
    }
    return 1;
}

static int valid_timestamp(const char *p, size_t n)
{
    size_t k;
    if (n < 1 || n > 12 || (n > 1 && p[0] == '0')) return 0;
    for (k = 0; k < n; k++) {
        if (p[k] < '0' || p[k] > '9') return 0;
    }
    return 1;
}

/* valid_counter: plain digits, no leading zero, at most 2^63-1. */
static int valid_counter(const char *p, size_t n)
{
    static const char max[] = "9223372036854775807";
    size_t k;
    if (n < 1 || n > sizeof max - 1 || (n > 1 && p[0] == '0')) return 0;
    for (k = 0; k < n; k++) {
        if (p[k] < '0' || p[k] > '9') return 0;
    }
    return n < sizeof max - 1 || memcmp(p, max, n) <= 0;
}

/* ---- parse and verify ------------------------------------------------ */

enum { M_DEVICE_ID, M_TIMESTAMP, M_MESSAGE_ID, M_PAYLOAD, M_SIGNATURE, M_COUNTER, M_COUNT };
static const char *const member_names[M_COUNT] = {"device_id", "timestamp", "message_id", "payload", "signature",
                                                  "counter"};
#define M_REQUIRED ((1u << M_DEVICE_ID) | (1u << M_MESSAGE_ID) | (1u << M_PAYLOAD) | (1u << M_SIGNATURE))

int iotgw_parse(const char *msg, size_t len, size_t max_bytes, iotgw_envelope *env)
{
    scanner s;
    iotgw_span *slot[M_COUNT];
    unsigned seen = 0;
    int m;

    slot[M_DEVICE_ID] = &env->device_id;
    slot[M_TIMESTAMP] = &env->timestamp;
    slot[M_MESSAGE_ID] = &env->message_id;
    slot[M_PAYLOAD] = &env->payload;
    slot[M_SIGNATURE] = &env->signature;
    slot[M_COUNTER] = &env->counter;
    memset(env, 0, sizeof *env);
    if (max_bytes == 0) max_bytes = IOTGW_MAX_MESSAGE_BYTES;
    if (msg == NULL || len > max_bytes) return IOTGW_ERR_MALFORMED;

    s.p = (const unsigned char *)msg;
    s.n = len;
    s.i = 0;
    skip_ws(&s);
    if (s.i >= s.n || s.p[s.i] != '{') return IOTGW_ERR_MALFORMED;
    s.i++;
    skip_ws(&s);
    for (;;) {
        size_t name_start = s.i, start;
        int esc;
        if (!scan_string(&s, &esc) || esc) return IOTGW_ERR_MALFORMED;
        for (m = 0; m < M_COUNT; m++) {
            size_t k = strlen(member_names[m]);
            if (s.i - name_start - 2 == k && memcmp(msg + name_start + 1, member_names[m], k) == 0) break;
        }
        if (m == M_COUNT || (seen & (1u << m))) return IOTGW_ERR_MALFORMED; /* unknown or repeated */
        seen |= 1u << m;
        skip_ws(&s);
        if (s.i >= s.n || s.p[s.i] != ':') return IOTGW_ERR_MALFORMED;
        s.i++;
        skip_ws(&s);
        start = s.i;
        if (m == M_PAYLOAD || m == M_TIMESTAMP || m == M_COUNTER) {
            if (!scan_value(&s, 2)) return IOTGW_ERR_MALFORMED;
            slot[m]->ptr = msg + start;
            slot[m]->len = s.i - start;
        } else {
            if (!scan_string(&s, &esc) || esc) return IOTGW_ERR_MALFORMED;
            slot[m]->ptr = msg + start + 1;
            slot[m]->len = s.i - start - 2;
        }
        skip_ws(&s);
        if (s.i >= s.n) return IOTGW_ERR_MALFORMED;
        if (s.p[s.i] == '}') break;
        if (s.p[s.i] != ',') return IOTGW_ERR_MALFORMED;
        s.i++;
        skip_ws(&s);
    }
    s.i++;
    skip_ws(&s);
    /* the four members every message has, and exactly one of timestamp and counter */
    if (s.i != s.n || (seen != (M_REQUIRED | (1u << M_TIMESTAMP)) && seen != (M_REQUIRED | (1u << M_COUNTER)))) {
        return IOTGW_ERR_MALFORMED;
    }
    if (!valid_device_id(env->device_id.ptr, env->device_id.len) ||
        (env->counter.len > 0 ? !valid_counter(env->counter.ptr, env->counter.len)
                              : !valid_timestamp(env->timestamp.ptr, env->timestamp.len)) ||
        !valid_uuid(env->message_id.ptr, env->message_id.len) ||
        !valid_signature(env->signature.ptr, env->signature.len)) {
        return IOTGW_ERR_MALFORMED;
    }
    return IOTGW_OK;
}

/* equal_ct compares two 64-byte strings in time independent of their contents. */
static int equal_ct(const char *a, const char *b, size_t n)
{
    volatile unsigned char diff = 0;
    size_t k;
    for (k = 0; k < n; k++) diff |= (unsigned char)(a[k] ^ b[k]);
    return diff == 0;
}

int iotgw_verify(const uint8_t *key, size_t key_len, const iotgw_envelope *env)
{
    char want[IOTGW_HEX_SIZE];
    int rc = iotgw_sign(key, key_len, env, want);
    if (rc != IOTGW_OK) return rc;
    if (env->signature.len != 64 || !equal_ct(want, env->signature.ptr, 64)) rc = IOTGW_ERR_BAD_SIGNATURE;
    mbedtls_platform_zeroize(want, sizeof want);
    return rc;
}

int iotgw_verify_reply(const char k_down[IOTGW_HEX_SIZE], const char *device_id,
                       const char *msg, size_t len, iotgw_envelope *env)
{
    int rc = iotgw_parse(msg, len, 0, env);
    if (rc != IOTGW_OK) return rc;
    if (env->counter.len > 0) return IOTGW_ERR_MALFORMED; /* a downlink carries the gateway's time */
    rc = iotgw_verify((const uint8_t *)k_down, 64, env);
    if (rc != IOTGW_OK) return rc;
    if (device_id != NULL &&
        (strlen(device_id) != env->device_id.len || memcmp(device_id, env->device_id.ptr, env->device_id.len) != 0)) {
        return IOTGW_ERR_IDENTITY;
    }
    return IOTGW_OK;
}

int iotgw_object_member(const char *obj, size_t len, const char *name, iotgw_span *value)
{
    scanner s;
    size_t want = strlen(name);
    int found = 0;

    s.p = (const unsigned char *)obj;
    s.n = len;
    s.i = 0;
    {   /* validate the whole object first */
        scanner all = s;
        if (!scan_value(&all, 2) || all.i != all.n || len == 0 || obj[0] != '{') return IOTGW_ERR_MALFORMED;
    }
    s.i = 1;
    skip_ws(&s);
    if (s.p[s.i] == '}') return IOTGW_ERR_NOT_FOUND;
    for (;;) { /* the object is valid: no bounds or syntax checks needed */
        size_t name_start = s.i, name_len, start;
        int esc;
        scan_string(&s, &esc);
        name_len = s.i - name_start - 2;
        skip_ws(&s);
        s.i++; /* ':' */
        skip_ws(&s);
        start = s.i;
        scan_value(&s, 3);
        if (!esc && name_len == want && memcmp(obj + name_start + 1, name, want) == 0) {
            if (found) return IOTGW_ERR_MALFORMED;
            found = 1;
            value->ptr = obj + start;
            value->len = s.i - start;
        }
        skip_ws(&s);
        if (s.p[s.i] == '}') break;
        s.i++; /* ',' */
        skip_ws(&s);
    }
    return found ? IOTGW_OK : IOTGW_ERR_NOT_FOUND;
}

/* ---- building an uplink ---------------------------------------------- */

/* strnlen_ is POSIX strnlen, which C99 lacks. */
static size_t strnlen_(const char *p, size_t max)
{
    size_t n = 0;
    while (n < max && p[n] != '\0') n++;
    return n;
}

typedef struct {
    char *buf;
    size_t cap;
    size_t len;
} writer;

static void put(writer *w, const char *p, size_t n)
{
    if (w->len < w->cap) {
        size_t room = w->cap - w->len;
        memcpy(w->buf + w->len, p, n < room ? n : room);
    }
    w->len += n;
}

static void puts_(writer *w, const char *p)
{
    put(w, p, strlen(p));
}

/* build writes an uplink whose freshness member is "timestamp", or
 * "counter" when counter is set, with the value v. */
static int build(char *buf, size_t cap, size_t *len, const uint8_t *secret, size_t secret_len,
                 const char *device_id, int counter, uint64_t v, const char *message_id,
                 const char *payload, size_t payload_len)
{
    char ts[21];
    char sig[IOTGW_HEX_SIZE];
    iotgw_envelope env;
    writer w;
    scanner s;
    int n = 0, rc;
    uint64_t t = v;

    *len = 0;
    if (device_id == NULL || message_id == NULL || payload == NULL || (buf == NULL && cap > 0)) {
        return IOTGW_ERR_INVALID_ARGUMENT;
    }
    if (!valid_device_id(device_id, strlen(device_id)) || !valid_uuid(message_id, strlen(message_id)) ||
        (counter ? (v < 1 || v > IOTGW_MAX_COUNTER) : v > IOTGW_MAX_TIMESTAMP)) {
        return IOTGW_ERR_INVALID_ARGUMENT;
    }
    s.p = (const unsigned char *)payload;
    s.n = payload_len;
    s.i = 0;
    if (!scan_value(&s, 2) || s.i != s.n) return IOTGW_ERR_INVALID_ARGUMENT;

    do { /* digits, most significant last */
        ts[n++] = (char)('0' + (int)(t % 10));
        t /= 10;
    } while (t > 0);
    { /* reverse them */
        int a, b;
        for (a = 0, b = n - 1; a < b; a++, b--) {
            char c = ts[a];
            ts[a] = ts[b];
            ts[b] = c;
        }
    }
    ts[n] = '\0';

    memset(&env, 0, sizeof env);
    env.device_id.ptr = device_id;
    env.device_id.len = strlen(device_id);
    if (counter) {
        env.counter.ptr = ts;
        env.counter.len = (size_t)n;
    } else {
        env.timestamp.ptr = ts;
        env.timestamp.len = (size_t)n;
    }
    env.message_id.ptr = message_id;
    env.message_id.len = 36;
    env.payload.ptr = payload;
    env.payload.len = payload_len;
    rc = iotgw_sign(secret, secret_len, &env, sig);
    if (rc != IOTGW_OK) return rc;

    w.buf = buf;
    w.cap = cap;
    w.len = 0;
    puts_(&w, "{\"device_id\":\"");
    puts_(&w, device_id);
    puts_(&w, counter ? "\",\"counter\":" : "\",\"timestamp\":");
    puts_(&w, ts);
    puts_(&w, ",\"message_id\":\"");
    puts_(&w, message_id);
    puts_(&w, "\",\"payload\":");
    put(&w, payload, payload_len);
    puts_(&w, ",\"signature\":\"");
    puts_(&w, sig);
    puts_(&w, "\"}");
    *len = w.len;
    if (w.len > cap) return IOTGW_ERR_BUFFER_TOO_SMALL;
    if (w.len < cap) buf[w.len] = '\0';
    return IOTGW_OK;
}

int iotgw_build_uplink(char *buf, size_t cap, size_t *len,
                       const uint8_t *secret, size_t secret_len,
                       const char *device_id, uint64_t timestamp,
                       const char *message_id,
                       const char *payload, size_t payload_len)
{
    return build(buf, cap, len, secret, secret_len, device_id, 0, timestamp, message_id, payload, payload_len);
}

int iotgw_build_counter_uplink(char *buf, size_t cap, size_t *len,
                               const uint8_t *secret, size_t secret_len,
                               const char *device_id, uint64_t counter,
                               const char *message_id,
                               const char *payload, size_t payload_len)
{
    return build(buf, cap, len, secret, secret_len, device_id, 1, counter, message_id, payload, payload_len);
}

/* ---- counter mode: the counter and its persistence (section 2a) ------- */

int iotgw_counter_init(iotgw_counter *c, const uint64_t *stored, uint32_t every,
                       iotgw_persist_fn persist, void *ctx)
{
    if (c == NULL || every == 0 || persist == NULL || (stored != NULL && *stored > IOTGW_MAX_COUNTER)) {
        return IOTGW_ERR_INVALID_ARGUMENT;
    }
    c->every = every;
    c->next = stored == NULL ? 1 : *stored + every; /* below 2^64: *stored < 2^63, every < 2^32 */
    c->block_end = c->next; /* nothing of the new block is persisted yet */
    c->persist = persist;
    c->ctx = ctx;
    return IOTGW_OK;
}

int iotgw_counter_next(iotgw_counter *c, uint64_t *value)
{
    uint64_t v = c->next;
    if (v > IOTGW_MAX_COUNTER) return IOTGW_ERR_EXHAUSTED;
    if (v >= c->block_end) {
        if (c->persist(c->ctx, v) != 0) return IOTGW_ERR_PERSIST;
        c->block_end = v + c->every;
    }
    c->next = v + 1;
    *value = v;
    return IOTGW_OK;
}

/* ---- asking the gateway for the time (section 4c) --------------------- */

static int valid_nonce(const char *p, size_t n)
{
    size_t k;
    if (n != IOTGW_NONCE_SIZE - 1) return 0;
    for (k = 0; k < n; k++) {
        if (!is_lower_hex(p[k])) return 0;
    }
    return 1;
}

void iotgw_format_nonce(const uint8_t random16[16], char out[IOTGW_NONCE_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    int k;
    for (k = 0; k < 16; k++) {
        out[2 * k] = hex[random16[k] >> 4];
        out[2 * k + 1] = hex[random16[k] & 15];
    }
    out[32] = '\0';
}

int iotgw_build_time_request(char *buf, size_t cap, size_t *len, const char *nonce)
{
    writer w;
    *len = 0;
    if (nonce == NULL || (buf == NULL && cap > 0) || !valid_nonce(nonce, strnlen_(nonce, IOTGW_NONCE_SIZE))) {
        return IOTGW_ERR_INVALID_ARGUMENT;
    }
    w.buf = buf;
    w.cap = cap;
    w.len = 0;
    puts_(&w, "{\"nonce\":\"");
    put(&w, nonce, IOTGW_NONCE_SIZE - 1);
    puts_(&w, "\"}");
    *len = w.len;
    if (w.len > cap) return IOTGW_ERR_BUFFER_TOO_SMALL;
    if (w.len < cap) buf[w.len] = '\0';
    return IOTGW_OK;
}

/* eat consumes the literal word at s->i. */
static int eat(scanner *s, const char *word)
{
    size_t k = strlen(word);
    if (s->n - s->i < k || memcmp(s->p + s->i, word, k) != 0) return 0;
    s->i += k;
    return 1;
}

int iotgw_parse_time_request(const char *msg, size_t len, iotgw_span *nonce)
{
    scanner s;
    if (msg == NULL || len > IOTGW_MAX_TIME_REQUEST) return IOTGW_ERR_MALFORMED;
    s.p = (const unsigned char *)msg;
    s.n = len;
    s.i = 0;
    skip_ws(&s);
    if (!eat(&s, "{")) return IOTGW_ERR_MALFORMED;
    skip_ws(&s);
    if (!eat(&s, "\"nonce\"")) return IOTGW_ERR_MALFORMED; /* the one member, no escapes */
    skip_ws(&s);
    if (!eat(&s, ":")) return IOTGW_ERR_MALFORMED;
    skip_ws(&s);
    if (!eat(&s, "\"") || s.n - s.i < IOTGW_NONCE_SIZE || !valid_nonce(msg + s.i, IOTGW_NONCE_SIZE - 1)) {
        return IOTGW_ERR_MALFORMED;
    }
    nonce->ptr = msg + s.i;
    nonce->len = IOTGW_NONCE_SIZE - 1;
    s.i += IOTGW_NONCE_SIZE - 1;
    if (!eat(&s, "\"")) return IOTGW_ERR_MALFORMED;
    skip_ws(&s);
    if (!eat(&s, "}")) return IOTGW_ERR_MALFORMED;
    skip_ws(&s);
    if (s.i != s.n) {
        nonce->ptr = NULL;
        nonce->len = 0;
        return IOTGW_ERR_MALFORMED;
    }
    return IOTGW_OK;
}

int iotgw_check_time_reply(const char k_down[IOTGW_HEX_SIZE], const char *device_id,
                           const char *msg, size_t len, const char *nonce,
                           iotgw_envelope *env, uint64_t *unix_time)
{
    char want[sizeof time_for_open - 1 + IOTGW_NONCE_SIZE - 1 + 2];
    size_t k, open = sizeof time_for_open - 1;
    int rc;

    if (nonce == NULL || !valid_nonce(nonce, strnlen_(nonce, IOTGW_NONCE_SIZE))) return IOTGW_ERR_INVALID_ARGUMENT;
    rc = iotgw_verify_reply(k_down, device_id, msg, len, env);
    if (rc != IOTGW_OK) return rc;
    memcpy(want, time_for_open, open);
    memcpy(want + open, nonce, IOTGW_NONCE_SIZE - 1);
    memcpy(want + open + IOTGW_NONCE_SIZE - 1, "\"}", 2);
    if (env->payload.len != sizeof want) return IOTGW_ERR_NOT_TIME_REPLY;
    if (!equal_ct(want, env->payload.ptr, sizeof want)) {
        return memcmp(env->payload.ptr, time_for_open, open) == 0 ? IOTGW_ERR_OTHER_NONCE : IOTGW_ERR_NOT_TIME_REPLY;
    }
    *unix_time = 0;
    for (k = 0; k < env->timestamp.len; k++) *unix_time = *unix_time * 10 + (uint64_t)(env->timestamp.ptr[k] - '0');
    return IOTGW_OK;
}

void iotgw_format_uuid(const uint8_t random16[16], char out[IOTGW_UUID_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    int k, o = 0;
    for (k = 0; k < 16; k++) {
        uint8_t b = random16[k];
        if (k == 6) b = (uint8_t)((b & 0x0F) | 0x40); /* version 4 */
        if (k == 8) b = (uint8_t)((b & 0x3F) | 0x80); /* RFC 4122 variant */
        if (k == 4 || k == 6 || k == 8 || k == 10) out[o++] = '-';
        out[o++] = hex[b >> 4];
        out[o++] = hex[b & 15];
    }
    out[o] = '\0';
}
