/*
 * vectors_test.c: checks iotgw_device.c against every vector in
 * testdata/vectors.json (build/vectors.h is generated from it by
 * test/gen_vectors.py on every build), uplinks and replies.
 *
 * For each uplink vector: iotgw_parse must refuse exactly the `malformed`
 * ones; for each other one the signature computed from the located
 * members must equal the vector's, the message's own signature must
 * verify when the verdict is accepted or replay and must not when it is
 * bad_signature, and iotgw_build_uplink, given the same members, must
 * produce a message with that signature (byte for byte the vector's when
 * the vector is in the builder's compact layout), and report the size it
 * needs for every buffer that is too small, writing nothing past it.
 *
 * For each reply vector: K_down, the signature, iotgw_verify_reply, the
 * reply not verifying as an uplink, nor with a tampered byte, nor for
 * another device; and iotgw_object_member finds in_reply_to.
 *
 * Counter mode (section 2a): each counter vector's verdict as far as the
 * library goes (parse, the device's registered mode, the signature, the
 * counter against counter_bound), its signature, and
 * iotgw_build_counter_uplink byte for byte; iotgw_counter's persistence
 * every N values across reboots. Signed time (section 4c): each time
 * request through iotgw_parse_time_request and iotgw_build_time_request,
 * each time reply through iotgw_check_time_reply (ok with its time,
 * bad_signature, other_nonce, not_a_time_reply).
 *
 * And every prefix and seeded random mutations of every vector, each in a
 * heap buffer of its exact size, so the sanitizer run catches any read
 * past the end.
 *
 * Prints "N vectors checked" and exits 0, or prints every failure and
 * exits 1.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/md.h>

#include "iotgw_device.h"

struct vector {
    const char *name, *secret, *topic_device, *msg;
    size_t len;
    const char *expected, *signature;
    size_t max_bytes;
};

struct reply_vector {
    const char *name, *secret, *downlink_key, *msg;
    size_t len;
    const char *signature;
};

struct counter_vector {
    const char *name, *secret, *topic_device, *freshness;
    unsigned long long counter_bound;
    const char *msg;
    size_t len;
    const char *expected, *signature;
};

struct time_request_vector {
    const char *name, *msg;
    size_t len;
    const char *expected, *nonce;
};

struct time_reply_vector {
    const char *name, *secret, *downlink_key, *device_id, *nonce, *msg;
    size_t len;
    const char *expected;
    unsigned long long time;
};

#include "vectors.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int failures;
static int exact, exact_basic; /* built uplinks equal to their vector */

static void fail(const char *name, const char *what, int rc)
{
    printf("FAIL %s: %s (%s)\n", name, what, iotgw_strerror(rc));
    failures++;
}

static const uint8_t *u8(const char *s)
{
    return (const uint8_t *)s;
}

/* copy_span copies a span into a NUL-terminated buffer of size cap. */
static int copy_span(char *dst, size_t cap, iotgw_span s)
{
    if (s.len >= cap) return 0;
    memcpy(dst, s.ptr, s.len);
    dst[s.len] = '\0';
    return 1;
}

static void check_build(const struct vector *v, const iotgw_envelope *env)
{
    static char buf[IOTGW_MAX_MESSAGE_BYTES + 64];
    char id[IOTGW_MAX_DEVICE_ID + 1], mid[IOTGW_UUID_SIZE];
    iotgw_envelope got;
    uint64_t ts = 0;
    size_t len = 0, need, cap, k;
    int rc;

    if (!copy_span(id, sizeof id, env->device_id) || !copy_span(mid, sizeof mid, env->message_id)) {
        fail(v->name, "device_id or message_id too long to copy", 0);
        return;
    }
    for (k = 0; k < env->timestamp.len; k++) ts = ts * 10 + (uint64_t)(env->timestamp.ptr[k] - '0');
    rc = iotgw_build_uplink(buf, sizeof buf, &len, u8(v->secret), strlen(v->secret), id, ts, mid,
                            env->payload.ptr, env->payload.len);
    if (rc != IOTGW_OK) {
        fail(v->name, "iotgw_build_uplink refuses the vector's members", rc);
        return;
    }
    if ((rc = iotgw_parse(buf, len, 0, &got)) != IOTGW_OK) {
        fail(v->name, "the built uplink does not parse", rc);
        return;
    }
    if (got.signature.len != 64 || memcmp(got.signature.ptr, v->signature, 64) != 0) {
        fail(v->name, "the built uplink's signature differs from the vector's", 0);
    }
    if (got.payload.len != env->payload.len || memcmp(got.payload.ptr, env->payload.ptr, env->payload.len) != 0) {
        fail(v->name, "the built uplink's payload bytes differ", 0);
    }
    /* A vector in the builder's layout (compact, this member order) comes
     * out byte for byte; main checks that accepted_basic is one. */
    if (len == v->len && memcmp(buf, v->msg, len) == 0) {
        exact++;
        if (strcmp(v->name, "accepted_basic") == 0) exact_basic = 1;
    }
    need = len;
    for (cap = 0; cap < need; cap++) { /* every too-small buffer */
        memset(buf, 'X', need + 1);
        rc = iotgw_build_uplink(cap ? buf : NULL, cap, &len, u8(v->secret), strlen(v->secret), id, ts, mid,
                                env->payload.ptr, env->payload.len);
        if (rc != IOTGW_ERR_BUFFER_TOO_SMALL || len != need) {
            fail(v->name, "a too-small buffer is not reported with the size needed", rc);
            return;
        }
        if (buf[cap] != 'X') {
            fail(v->name, "iotgw_build_uplink wrote past the buffer's capacity", rc);
            return;
        }
    }
}

static void check_uplink(const struct vector *v)
{
    iotgw_envelope env;
    char sig[IOTGW_HEX_SIZE];
    int rc = iotgw_parse(v->msg, v->len, v->max_bytes, &env);
    int want_malformed = strcmp(v->expected, "malformed") == 0;

    if (want_malformed) {
        if (rc != IOTGW_ERR_MALFORMED) fail(v->name, "iotgw_parse accepts a malformed message", rc);
        return;
    }
    if (rc != IOTGW_OK) {
        fail(v->name, "iotgw_parse refuses a well-formed message", rc);
        return;
    }
    if (v->signature == NULL) return;
    if ((rc = iotgw_sign(u8(v->secret), strlen(v->secret), &env, sig)) != IOTGW_OK) {
        fail(v->name, "iotgw_sign", rc);
        return;
    }
    if (strcmp(sig, v->signature) != 0) {
        printf("  got  %s\n  want %s\n", sig, v->signature);
        fail(v->name, "signature differs", 0);
    }
    rc = iotgw_verify(u8(v->secret), strlen(v->secret), &env);
    if ((strcmp(v->expected, "accepted") == 0 || strcmp(v->expected, "replay") == 0) && rc != IOTGW_OK) {
        fail(v->name, "the message's own signature does not verify", rc);
    }
    if (strcmp(v->expected, "bad_signature") == 0 && rc != IOTGW_ERR_BAD_SIGNATURE) {
        fail(v->name, "a bad signature verifies", rc);
    }
    if (strcmp(v->expected, "accepted") == 0) check_build(v, &env);
}

static void check_reply(const struct reply_vector *r)
{
    static char tampered[IOTGW_MAX_MESSAGE_BYTES];
    char k_down[IOTGW_HEX_SIZE], sig[IOTGW_HEX_SIZE], wrong[IOTGW_HEX_SIZE];
    char id[IOTGW_MAX_DEVICE_ID + 1];
    iotgw_envelope env;
    iotgw_span irt;
    size_t k;
    int rc;

    if ((rc = iotgw_downlink_key(u8(r->secret), strlen(r->secret), k_down)) != IOTGW_OK ||
        strcmp(k_down, r->downlink_key) != 0) {
        fail(r->name, "K_down differs", rc);
        return;
    }
    if ((rc = iotgw_parse(r->msg, r->len, 0, &env)) != IOTGW_OK) {
        fail(r->name, "iotgw_parse refuses the reply", rc);
        return;
    }
    if ((rc = iotgw_sign(u8(k_down), 64, &env, sig)) != IOTGW_OK || strcmp(sig, r->signature) != 0) {
        fail(r->name, "reply signature differs", rc);
    }
    if (!copy_span(id, sizeof id, env.device_id)) {
        fail(r->name, "device_id too long", 0);
        return;
    }
    if ((rc = iotgw_verify_reply(k_down, id, r->msg, r->len, &env)) != IOTGW_OK) {
        fail(r->name, "iotgw_verify_reply refuses the reply", rc);
    }
    if ((rc = iotgw_verify_reply(k_down, "another_device", r->msg, r->len, &env)) != IOTGW_ERR_IDENTITY) {
        fail(r->name, "iotgw_verify_reply accepts a reply for another device", rc);
    }
    if ((rc = iotgw_verify(u8(r->secret), strlen(r->secret), &env)) != IOTGW_ERR_BAD_SIGNATURE) {
        fail(r->name, "the reply verifies as an uplink (with the secret itself)", rc);
    }
    if ((rc = iotgw_downlink_key(u8("another secret"), 14, wrong)) != IOTGW_OK ||
        (rc = iotgw_verify_reply(wrong, NULL, r->msg, r->len, &env)) != IOTGW_ERR_BAD_SIGNATURE) {
        fail(r->name, "the reply verifies with another device's K_down", rc);
    }
    /* A device holding a wrong secret: the answer does not verify, but env
     * is still parsed, so the device can see that it names its message
     * (the secret is most likely wrong: PROTOCOL.md section 4). */
    if (iotgw_verify_reply(wrong, NULL, r->msg, r->len, &env) != IOTGW_ERR_BAD_SIGNATURE ||
        (rc = iotgw_object_member(env.payload.ptr, env.payload.len, "in_reply_to", &irt)) != IOTGW_OK) {
        fail(r->name, "after IOTGW_ERR_BAD_SIGNATURE env.payload does not hold in_reply_to", rc);
    }
    /* Flip each byte of the payload in turn (to another byte that keeps the
     * message well formed, or not): never IOTGW_OK. */
    if (iotgw_parse(r->msg, r->len, 0, &env) == IOTGW_OK) {
        size_t off = (size_t)(env.payload.ptr - r->msg);
        for (k = 0; k < env.payload.len; k++) {
            memcpy(tampered, r->msg, r->len);
            tampered[off + k] = tampered[off + k] == 'a' ? 'b' : tampered[off + k] == '0' ? '1' : 'a';
            rc = iotgw_verify_reply(k_down, NULL, tampered, r->len, &env);
            if (rc == IOTGW_OK) {
                fail(r->name, "a reply with a tampered payload byte verifies", rc);
                break;
            }
        }
    }
    if ((rc = iotgw_verify_reply(k_down, NULL, r->msg, r->len, &env)) != IOTGW_OK ||
        (rc = iotgw_object_member(env.payload.ptr, env.payload.len, "in_reply_to", &irt)) != IOTGW_OK) {
        fail(r->name, "in_reply_to not found in the payload", rc);
    } else if (!((irt.len == 38 && irt.ptr[0] == '"') || (irt.len == 4 && memcmp(irt.ptr, "null", 4) == 0))) {
        fail(r->name, "in_reply_to is neither a UUID string nor null", 0);
    }
}

/* ---- counter mode and signed time ------------------------------------ */

static uint64_t digits_value(iotgw_span d)
{
    uint64_t v = 0;
    size_t k;
    for (k = 0; k < d.len; k++) v = v * 10 + (uint64_t)(d.ptr[k] - '0');
    return v;
}

/* counter_verdict is the gateway's verdict on a counter vector as far as
 * the library can tell it. */
static const char *counter_verdict(const struct counter_vector *v, iotgw_envelope *env)
{
    if (iotgw_parse(v->msg, v->len, 0, env) != IOTGW_OK) return "malformed";
    if ((env->counter.len > 0) != (strcmp(v->freshness, "counter") == 0)) return "malformed"; /* one mode at a time */
    if (iotgw_verify(u8(v->secret), strlen(v->secret), env) != IOTGW_OK) return "bad_signature";
    return digits_value(env->counter) <= v->counter_bound ? "replay" : "accepted";
}

static void check_counter_vector(const struct counter_vector *v)
{
    static char buf[1024];
    char sig[IOTGW_HEX_SIZE], id[IOTGW_MAX_DEVICE_ID + 1], mid[IOTGW_UUID_SIZE];
    iotgw_envelope env;
    size_t len = 0, need, cap;
    int rc;
    const char *got = counter_verdict(v, &env);

    if (strcmp(got, v->expected) != 0) {
        printf("  verdict %s, want %s\n", got, v->expected);
        fail(v->name, "counter verdict differs", 0);
        return;
    }
    if (strcmp(v->expected, "malformed") == 0) return;
    if ((rc = iotgw_sign(u8(v->secret), strlen(v->secret), &env, sig)) != IOTGW_OK || v->signature == NULL ||
        strcmp(sig, v->signature) != 0) {
        fail(v->name, "counter-mode signature differs", rc);
        return;
    }
    if (strcmp(v->expected, "accepted") != 0) return;
    if (!copy_span(id, sizeof id, env.device_id) || !copy_span(mid, sizeof mid, env.message_id)) {
        fail(v->name, "device_id or message_id too long to copy", 0);
        return;
    }
    rc = iotgw_build_counter_uplink(buf, sizeof buf, &len, u8(v->secret), strlen(v->secret), id,
                                    digits_value(env.counter), mid, env.payload.ptr, env.payload.len);
    if (rc != IOTGW_OK) {
        fail(v->name, "iotgw_build_counter_uplink refuses the vector's members", rc);
        return;
    }
    if (strstr(v->name, "any_order") == NULL && (len != v->len || memcmp(buf, v->msg, len) != 0)) {
        fail(v->name, "iotgw_build_counter_uplink does not rebuild the vector byte for byte", 0);
    }
    if (strstr(v->name, "any_order") != NULL) {
        iotgw_envelope b;
        if (iotgw_parse(buf, len, 0, &b) != IOTGW_OK || b.signature.len != 64 || memcmp(b.signature.ptr, v->signature, 64) != 0) {
            fail(v->name, "the rebuilt uplink's signature differs", 0);
        }
    }
    need = len;
    for (cap = 0; cap < need; cap++) {
        memset(buf, 'X', need + 1);
        rc = iotgw_build_counter_uplink(cap ? buf : NULL, cap, &len, u8(v->secret), strlen(v->secret), id,
                                        digits_value(env.counter), mid, env.payload.ptr, env.payload.len);
        if (rc != IOTGW_ERR_BUFFER_TOO_SMALL || len != need || buf[cap] != 'X') {
            fail(v->name, "a too-small buffer: not reported, or written past", rc);
            return;
        }
    }
}

static void check_time_request(const struct time_request_vector *v)
{
    char buf[64];
    iotgw_span nonce = {0, 0};
    size_t len;
    int rc = iotgw_parse_time_request(v->msg, v->len, &nonce);

    if (strcmp(v->expected, "malformed") == 0) {
        if (rc != IOTGW_ERR_MALFORMED) fail(v->name, "iotgw_parse_time_request accepts a malformed request", rc);
        return;
    }
    if (rc != IOTGW_OK || v->nonce == NULL || nonce.len != strlen(v->nonce) || memcmp(nonce.ptr, v->nonce, nonce.len) != 0) {
        fail(v->name, "iotgw_parse_time_request does not read the nonce", rc);
        return;
    }
    rc = iotgw_build_time_request(buf, sizeof buf, &len, v->nonce);
    if (rc != IOTGW_OK || iotgw_parse_time_request(buf, len, &nonce) != IOTGW_OK ||
        (strcmp(v->name, "time_request_basic") == 0 && (len != v->len || memcmp(buf, v->msg, len) != 0))) {
        fail(v->name, "iotgw_build_time_request does not build the request", rc);
    }
}

static void check_time_reply(const struct time_reply_vector *r)
{
    char k_down[IOTGW_HEX_SIZE];
    iotgw_envelope env;
    uint64_t t = 0;
    int rc, want;

    if ((rc = iotgw_downlink_key(u8(r->secret), strlen(r->secret), k_down)) != IOTGW_OK || strcmp(k_down, r->downlink_key) != 0) {
        fail(r->name, "K_down differs", rc);
        return;
    }
    want = strcmp(r->expected, "ok") == 0              ? IOTGW_OK
           : strcmp(r->expected, "bad_signature") == 0 ? IOTGW_ERR_BAD_SIGNATURE
           : strcmp(r->expected, "other_nonce") == 0   ? IOTGW_ERR_OTHER_NONCE
           : strcmp(r->expected, "not_a_time_reply") == 0 ? IOTGW_ERR_NOT_TIME_REPLY
                                                          : 1;
    rc = iotgw_check_time_reply(k_down, r->device_id, r->msg, r->len, r->nonce, &env, &t);
    if (rc != want || (want == IOTGW_OK && t != r->time)) {
        printf("  got %s, time %llu; want %s, time %llu\n", iotgw_strerror(rc), (unsigned long long)t, r->expected, r->time);
        fail(r->name, "iotgw_check_time_reply verdict differs", rc);
        return;
    }
    if (want != IOTGW_OK) return;
    if ((rc = iotgw_check_time_reply(k_down, "another_device", r->msg, r->len, r->nonce, &env, &t)) != IOTGW_ERR_IDENTITY) {
        fail(r->name, "a time reply for another device is accepted", rc);
    }
    if ((rc = iotgw_check_time_reply(k_down, r->device_id, r->msg, r->len, "ffeeddccbbaa99887766554433221100", &env, &t)) !=
        IOTGW_ERR_OTHER_NONCE) {
        fail(r->name, "a time reply is accepted for another nonce", rc);
    }
    if ((rc = iotgw_check_time_reply(k_down, r->device_id, r->msg, r->len, "00112233445566778899AABBCCDDEEFF", &env, &t)) !=
        IOTGW_ERR_INVALID_ARGUMENT) {
        fail(r->name, "an uppercase nonce is taken", rc);
    }
    if (iotgw_parse(r->msg, r->len, 0, &env) != IOTGW_OK ||
        (rc = iotgw_verify(u8(r->secret), strlen(r->secret), &env)) != IOTGW_ERR_BAD_SIGNATURE) {
        fail(r->name, "the time reply verifies as an uplink", rc);
    }
}

/* persisted records every value the counter's callback was asked to store. */
static uint64_t persisted[16];
static size_t n_persisted;
static int persist_fails;

static int record(void *ctx, uint64_t value)
{
    (void)ctx;
    if (persist_fails || n_persisted == COUNT(persisted)) return -1;
    persisted[n_persisted++] = value;
    return 0;
}

static void check_counter_units(void)
{
    iotgw_counter c;
    uint64_t v = 0, stored, k, last = 0;
    char buf[512];
    size_t len;
    const char *mid = "550e8400-e29b-41d4-a716-446655440000";
    int rc;

    /* First boot (nothing stored): 1, 2, ...; each block persisted before its first value. */
    if (iotgw_counter_init(&c, NULL, 100, record, NULL) != IOTGW_OK) fail("counter", "init", 0);
    for (k = 1; k <= 250; k++) {
        if ((rc = iotgw_counter_next(&c, &v)) != IOTGW_OK || v != k) {
            fail("counter", "first boot does not count 1, 2, ...", rc);
            return;
        }
    }
    if (n_persisted != 3 || persisted[0] != 1 || persisted[1] != 101 || persisted[2] != 201) {
        fail("counter", "not persisted once per 100 values, before the first of each block", 0);
    }
    /* Reboot: continue from the stored value + N, persisting that first. */
    stored = persisted[n_persisted - 1];
    last = v;
    if (iotgw_counter_init(&c, &stored, 100, record, NULL) != IOTGW_OK || iotgw_counter_next(&c, &v) != IOTGW_OK ||
        v != 301 || persisted[n_persisted - 1] != 301) {
        fail("counter", "a reboot does not continue from stored + N, persisted first", 0);
    }
    if (v <= last || v - last - 1 > 100) fail("counter", "a reboot reuses a value or skips more than N", 0);
    /* A failing persist hands out nothing, and the next call tries again. */
    n_persisted = 0;
    stored = 7;
    iotgw_counter_init(&c, &stored, 3, record, NULL);
    persist_fails = 1;
    if ((rc = iotgw_counter_next(&c, &v)) != IOTGW_ERR_PERSIST) fail("counter", "a failed persist hands out a value", rc);
    persist_fails = 0;
    if (iotgw_counter_next(&c, &v) != IOTGW_OK || v != 10 || n_persisted != 1 || persisted[0] != 10) {
        fail("counter", "after a failed persist the next call does not retry the same value", 0);
    }
    /* The end of the range. */
    stored = IOTGW_MAX_COUNTER - 1;
    iotgw_counter_init(&c, &stored, 1, record, NULL);
    if (iotgw_counter_next(&c, &v) != IOTGW_OK || v != IOTGW_MAX_COUNTER ||
        (rc = iotgw_counter_next(&c, &v)) != IOTGW_ERR_EXHAUSTED) {
        fail("counter", "not exhausted after 2^63-1", rc);
    }
    stored = IOTGW_MAX_COUNTER + 1;
    if (iotgw_counter_init(&c, NULL, 0, record, NULL) != IOTGW_ERR_INVALID_ARGUMENT ||
        iotgw_counter_init(&c, NULL, 1, NULL, NULL) != IOTGW_ERR_INVALID_ARGUMENT ||
        iotgw_counter_init(&c, &stored, 1, record, NULL) != IOTGW_ERR_INVALID_ARGUMENT) {
        fail("counter", "init takes every 0, no callback or a stored value past 2^63-1", 0);
    }
    if (iotgw_build_counter_uplink(buf, sizeof buf, &len, u8("s"), 1, "d", 0, mid, "{}", 2) != IOTGW_ERR_INVALID_ARGUMENT ||
        iotgw_build_counter_uplink(buf, sizeof buf, &len, u8("s"), 1, "d", IOTGW_MAX_COUNTER + 1, mid, "{}", 2) !=
            IOTGW_ERR_INVALID_ARGUMENT) {
        fail("counter", "iotgw_build_counter_uplink takes 0 or 2^63", 0);
    }
    {
        char k_down[IOTGW_HEX_SIZE];
        iotgw_envelope env;
        /* A downlink always carries a timestamp: one signed with a counter is refused. */
        iotgw_downlink_key(u8("s"), 1, k_down);
        if (iotgw_build_counter_uplink(buf, sizeof buf, &len, u8(k_down), 64, "d", 5, mid, "{}", 2) != IOTGW_OK ||
            (rc = iotgw_verify_reply(k_down, "d", buf, len, &env)) != IOTGW_ERR_MALFORMED) {
            fail("counter", "a counter-mode downlink is accepted as a reply", rc);
        }
    }
    {
        const uint8_t rnd[16] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
        char nonce[IOTGW_NONCE_SIZE];
        iotgw_format_nonce(rnd, nonce);
        if (strcmp(nonce, "00112233445566778899aabbccddeeff") != 0) fail("time", "iotgw_format_nonce", 0);
        if (iotgw_build_time_request(buf, sizeof buf, &len, "0011") != IOTGW_ERR_INVALID_ARGUMENT) {
            fail("time", "iotgw_build_time_request takes a short nonce", 0);
        }
    }
}

/* check_units covers what no vector does: argument checks and helpers. */
static void check_units(void)
{
    char buf[512], uuid[IOTGW_UUID_SIZE];
    const char *mid = "550e8400-e29b-41d4-a716-446655440000";
    const uint8_t rnd[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                             0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    iotgw_span v;
    size_t len;
    int rc;

    static const struct {
        const char *id, *mid, *payload;
        uint64_t ts;
    } bad[] = {
        {"", "550e8400-e29b-41d4-a716-446655440000", "{}", 1},
        {".hidden", "550e8400-e29b-41d4-a716-446655440000", "{}", 1},
        {"a/b", "550e8400-e29b-41d4-a716-446655440000", "{}", 1},
        {"sensor_001", "550E8400-E29B-41D4-A716-446655440000", "{}", 1},
        {"sensor_001", "550e8400e29b41d4a716446655440000", "{}", 1},
        {"sensor_001", "550e8400-e29b-41d4-a716-446655440000", "{}", 1000000000000ull},
        {"sensor_001", "550e8400-e29b-41d4-a716-446655440000", " {}", 1},
        {"sensor_001", "550e8400-e29b-41d4-a716-446655440000", "{},", 1},
        {"sensor_001", "550e8400-e29b-41d4-a716-446655440000", "{\"a\":NaN}", 1},
        {"sensor_001", "550e8400-e29b-41d4-a716-446655440000", "\"\\ud800\"", 1},
        {"sensor_001", "550e8400-e29b-41d4-a716-446655440000", "", 1},
    };
    size_t k;
    for (k = 0; k < COUNT(bad); k++) {
        rc = iotgw_build_uplink(buf, sizeof buf, &len, u8("s"), 1, bad[k].id, bad[k].ts, bad[k].mid, bad[k].payload,
                                strlen(bad[k].payload));
        if (rc != IOTGW_ERR_INVALID_ARGUMENT) {
            printf("  case %u\n", (unsigned)k);
            fail("units", "iotgw_build_uplink accepts an argument the gateway rejects", rc);
        }
    }
    rc = iotgw_build_uplink(buf, sizeof buf, &len, u8("s"), 1, "d", 0, mid, "7", 1);
    if (rc != IOTGW_OK || iotgw_parse(buf, len, 0, &(iotgw_envelope){{0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}}) != IOTGW_OK) {
        fail("units", "timestamp 0 and a number payload", rc);
    }
    iotgw_format_uuid(rnd, uuid);
    if (strcmp(uuid, "ffffffff-ffff-4fff-bfff-ffffffffffff") != 0) fail("units", "iotgw_format_uuid", 0);
    rc = iotgw_build_uplink(buf, sizeof buf, &len, u8("s"), 1, "d", 1, uuid, "{}", 2);
    if (rc != IOTGW_OK) fail("units", "a formatted UUID is refused", rc);
    if (iotgw_object_member("{\"a\":1,\"a\":2}", 13, "a", &v) != IOTGW_ERR_MALFORMED) {
        fail("units", "iotgw_object_member accepts a repeated member", 0);
    }
    if (iotgw_object_member("{\"ab\":1}", 8, "a", &v) != IOTGW_ERR_NOT_FOUND) {
        fail("units", "iotgw_object_member matches a prefix", 0);
    }
    if (iotgw_object_member("{\"b\":[1,{\"a\":2}],\"a\" : \"x\"}", 27, "a", &v) != IOTGW_OK || v.len != 3 ||
        memcmp(v.ptr, "\"x\"", 3) != 0) {
        fail("units", "iotgw_object_member does not find a top-level member after a nested one", 0);
    }
    /* The HMAC built on SHA-256 equals mbedTLS's own (which allocates, so
     * the library does not use it) for keys of every length around the
     * 64-byte block, where RFC 2104 hashes a long key first. */
    {
        static const char *m = "{\"device_id\":\"d\",\"timestamp\":1,\"message_id\":\"550e8400-e29b-41d4-a716-446655440000\","
                               "\"payload\":{},\"signature\":\"0000000000000000000000000000000000000000000000000000000000000000\"}";
        uint8_t key[200], mac[32];
        char sig[IOTGW_HEX_SIZE], want[IOTGW_HEX_SIZE];
        iotgw_envelope env;
        size_t klen, j;
        for (k = 0; k < sizeof key; k++) key[k] = (uint8_t)(k * 7 + 1);
        if (iotgw_parse(m, strlen(m), 0, &env) != IOTGW_OK) fail("units", "parse", 0);
        for (klen = 0; klen <= sizeof key; klen++) {
            static const char sb[] = "d\n1\n550e8400-e29b-41d4-a716-446655440000\n{}"; /* m's signing bytes */
            if (mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key, klen, (const uint8_t *)sb,
                                sizeof sb - 1, mac) != 0) {
                fail("units", "mbedtls_md_hmac", 0);
                break;
            }
            for (j = 0; j < 32; j++) sprintf(want + 2 * j, "%02x", mac[j]);
            if (iotgw_sign(key, klen, &env, sig) != IOTGW_OK || strcmp(sig, want) != 0) {
                printf("  key length %u\n", (unsigned)klen);
                fail("units", "HMAC differs from mbedtls_md_hmac", 0);
                break;
            }
        }
    }
}

/* check_bounds feeds every prefix of every vector, and seeded random byte
 * mutations of each, in a heap buffer of exactly that size (so that
 * AddressSanitizer catches a read past the end) to the parser, the reply
 * verifier and the member lookup. A proper prefix of accepted_basic (which
 * ends at its closing brace) is always malformed. */
static void check_bounds(void)
{
    uint32_t seed = 12345;
    char k_down[IOTGW_HEX_SIZE];
    size_t k, n, j;
    iotgw_envelope env;
    iotgw_span v;
    const size_t total = COUNT(vectors) + COUNT(replies) + COUNT(counter_vectors) + COUNT(time_requests) + COUNT(time_replies);
    iotgw_downlink_key(u8("s"), 1, k_down);
    for (k = 0; k < total; k++) {
        const char *msg;
        size_t len, i = k;
        int basic = k < COUNT(vectors) && strcmp(vectors[k].name, "accepted_basic") == 0;
        uint64_t t;
        if (i < COUNT(vectors)) msg = vectors[i].msg, len = vectors[i].len;
        else if ((i -= COUNT(vectors)) < COUNT(replies)) msg = replies[i].msg, len = replies[i].len;
        else if ((i -= COUNT(replies)) < COUNT(counter_vectors)) msg = counter_vectors[i].msg, len = counter_vectors[i].len;
        else if ((i -= COUNT(counter_vectors)) < COUNT(time_requests)) msg = time_requests[i].msg, len = time_requests[i].len;
        else i -= COUNT(time_requests), msg = time_replies[i].msg, len = time_replies[i].len;
        for (n = 0; n <= (len ? len + 200 : 0); n++) {
            size_t cut = n <= len ? n : len;
            char *b = malloc(cut ? cut : 1);
            if (b == NULL) return;
            memcpy(b, msg, cut);
            if (n > len) { /* a random mutation of the whole message */
                for (j = 0; j < 1 + n % 4; j++) {
                    seed = seed * 1103515245u + 12345u;
                    b[(seed >> 8) % len] = (char)(seed >> 24);
                }
            }
            if (iotgw_parse(b, cut, 0, &env) == IOTGW_OK) {
                (void)iotgw_object_member(env.payload.ptr, env.payload.len, "in_reply_to", &v);
            }
            if (basic && n < len && iotgw_parse(b, cut, 0, &env) != IOTGW_ERR_MALFORMED) {
                fail("accepted_basic", "a truncated message parses", 0);
            }
            (void)iotgw_verify_reply(k_down, NULL, b, cut, &env);
            (void)iotgw_object_member(b, cut, "payload", &v);
            (void)iotgw_parse_time_request(b, cut, &v);
            (void)iotgw_check_time_reply(k_down, NULL, b, cut, "00112233445566778899aabbccddeeff", &env, &t);
            free(b);
        }
    }
}

int main(void)
{
    size_t k;
    check_bounds();
    for (k = 0; k < COUNT(vectors); k++) check_uplink(&vectors[k]);
    for (k = 0; k < COUNT(replies); k++) check_reply(&replies[k]);
    for (k = 0; k < COUNT(counter_vectors); k++) check_counter_vector(&counter_vectors[k]);
    for (k = 0; k < COUNT(time_requests); k++) check_time_request(&time_requests[k]);
    for (k = 0; k < COUNT(time_replies); k++) check_time_reply(&time_replies[k]);
    check_units();
    check_counter_units();
    if (COUNT(vectors) == 0 || COUNT(replies) == 0 || COUNT(counter_vectors) == 0 || COUNT(time_requests) == 0 ||
        COUNT(time_replies) == 0) {
        printf("FAIL: no vectors\n");
        return 1;
    }
    if (!exact_basic) fail("accepted_basic", "iotgw_build_uplink does not reproduce the vector byte for byte", 0);
    if (failures) {
        printf("%d failure(s)\n", failures);
        return 1;
    }
    printf("%u vectors checked (%u uplinks, %u replies, %u counter-mode uplinks, %u time requests, %u time replies; "
           "%d uplinks rebuilt byte for byte)\n",
           (unsigned)(COUNT(vectors) + COUNT(replies) + COUNT(counter_vectors) + COUNT(time_requests) + COUNT(time_replies)),
           (unsigned)COUNT(vectors), (unsigned)COUNT(replies), (unsigned)COUNT(counter_vectors),
           (unsigned)COUNT(time_requests), (unsigned)COUNT(time_replies), exact);
    return EXIT_SUCCESS;
}
