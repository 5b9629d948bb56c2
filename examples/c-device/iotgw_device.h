/*
 * iotgw_device.h: sign uplinks and verify downlinks of the iotgw device
 * protocol (docs/PROTOCOL.md) in portable C99 over mbedTLS, in timestamp
 * mode and in counter mode (section 2a, iotgw_counter), and ask the
 * gateway for the time (section 4c, iotgw_check_time_reply).
 *
 * No dynamic allocation, no global state, no I/O: every output goes to a
 * buffer the caller supplies. The only mbedTLS module used is SHA-256
 * (mbedtls/sha256.h; HMAC is built on it here so that no mbedtls_md
 * context, which mbedTLS allocates on the heap, is needed).
 *
 * The golden vectors in testdata/vectors.json are the test suite:
 * `make -C examples/c-device test` checks this code against every one.
 */
#ifndef IOTGW_DEVICE_H
#define IOTGW_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes, each including the terminating NUL. */
#define IOTGW_HEX_SIZE 65  /* a signature or K_down: 64 lowercase hex + NUL */
#define IOTGW_UUID_SIZE 37 /* a message_id: 36 characters + NUL */
#define IOTGW_NONCE_SIZE 33 /* a time request's nonce: 32 lowercase hex + NUL */

/* The protocol's limits (the gateway's defaults, docs/PROTOCOL.md §1). */
#define IOTGW_MAX_MESSAGE_BYTES 65536u
#define IOTGW_MAX_DEPTH 32
#define IOTGW_MAX_DEVICE_ID 64
#define IOTGW_MAX_TIMESTAMP 999999999999ull /* at most 12 digits */
#define IOTGW_MAX_COUNTER 9223372036854775807ull /* 2^63-1 (section 2a) */
#define IOTGW_MAX_TIME_REQUEST 256u             /* bytes (section 4c) */

/* Results. Every function returns IOTGW_OK or one of these. */
#define IOTGW_OK 0
#define IOTGW_ERR_BUFFER_TOO_SMALL -1 /* *len says how many bytes are needed */
#define IOTGW_ERR_INVALID_ARGUMENT -2 /* a device id, message id, timestamp or payload the protocol refuses */
#define IOTGW_ERR_MALFORMED -3        /* the envelope is not exactly the shape of §1 */
#define IOTGW_ERR_BAD_SIGNATURE -4    /* the signature does not verify */
#define IOTGW_ERR_IDENTITY -5         /* a downlink for another device */
#define IOTGW_ERR_NOT_FOUND -6        /* iotgw_object_member: no such member */
#define IOTGW_ERR_CRYPTO -7           /* mbedTLS reported an error */
#define IOTGW_ERR_PERSIST -8          /* iotgw_counter: the persistence callback failed; no counter handed out */
#define IOTGW_ERR_EXHAUSTED -9        /* iotgw_counter: past 2^63-1; the operator must reset the counter */
#define IOTGW_ERR_OTHER_NONCE -10     /* a genuine time reply, but for another nonce */
#define IOTGW_ERR_NOT_TIME_REPLY -11  /* a genuine downlink that is not a time reply */

/* iotgw_strerror returns a one-line description of an IOTGW_* result. */
const char *iotgw_strerror(int result);

/* iotgw_span is a run of bytes inside a message; it does not own them. */
typedef struct {
    const char *ptr;
    size_t len;
} iotgw_span;

/*
 * iotgw_envelope holds where each of the five members of a parsed
 * envelope is, inside the caller's message buffer (which must outlive it).
 * device_id, message_id and signature are the string contents without the
 * quotes; timestamp is the digits as sent; payload is the exact bytes of
 * the payload value, from its first byte to its last: these are the bytes
 * that are signed, and the bytes to hand to the application.
 * A counter-mode message (section 2a) has counter (its digits as sent) in
 * place of timestamp, whose len is then 0; in a timestamp-mode message
 * counter.len is 0. Zero every member you do not set (= {0}).
 */
typedef struct {
    iotgw_span device_id;
    iotgw_span timestamp;
    iotgw_span message_id;
    iotgw_span payload;
    iotgw_span signature;
    iotgw_span counter;
} iotgw_envelope;

/*
 * iotgw_sign computes the envelope signature of §2:
 * lowercase_hex(HMAC-SHA256(key, device_id "\n" timestamp "\n" message_id
 * "\n" payload)) into sig (NUL-terminated). For an uplink the key is the
 * secret's bytes; for a downlink it is the 64 hex characters of K_down.
 * When env->counter.len > 0 it signs the counter-mode bytes of section 2a
 * instead: "iotgw/v1/counter" "\n" device_id "\n" counter "\n" message_id
 * "\n" payload.
 */
int iotgw_sign(const uint8_t *key, size_t key_len, const iotgw_envelope *env,
               char sig[IOTGW_HEX_SIZE]);

/*
 * iotgw_downlink_key derives K_down = lowercase_hex(HMAC-SHA256(key = the
 * secret's bytes, message = "iotgw/v1/downlink")) into k_down
 * (NUL-terminated). Derive it once per secret and keep it as you keep the
 * secret.
 */
int iotgw_downlink_key(const uint8_t *secret, size_t secret_len,
                       char k_down[IOTGW_HEX_SIZE]);

/*
 * iotgw_build_uplink writes a signed uplink into buf:
 * {"device_id":"…","timestamp":…,"message_id":"…","payload":…,"signature":"…"}
 * signing payload's exact bytes and putting those same bytes in the
 * message. device_id and message_id are NUL-terminated; message_id must be
 * a fresh lowercase UUID (iotgw_format_uuid). payload must be exactly one
 * JSON value with no whitespace around it.
 *
 * On IOTGW_OK, *len is the message length (the bytes to publish) and a NUL
 * follows them if cap leaves room. On IOTGW_ERR_BUFFER_TOO_SMALL, *len is
 * the capacity needed (without the NUL) and nothing past cap was written.
 * IOTGW_ERR_INVALID_ARGUMENT means an id, the timestamp or the payload is
 * one the gateway would reject as malformed.
 */
int iotgw_build_uplink(char *buf, size_t cap, size_t *len,
                       const uint8_t *secret, size_t secret_len,
                       const char *device_id, uint64_t timestamp,
                       const char *message_id,
                       const char *payload, size_t payload_len);

/*
 * iotgw_build_counter_uplink is iotgw_build_uplink for a device registered
 * with counter freshness (section 2a): the message carries
 * "counter":<counter> in place of the timestamp and is signed with the
 * counter-mode signing bytes. counter must be from 1 to IOTGW_MAX_COUNTER
 * (else IOTGW_ERR_INVALID_ARGUMENT) and above every counter the device
 * sent before: take it from iotgw_counter_next.
 */
int iotgw_build_counter_uplink(char *buf, size_t cap, size_t *len,
                               const uint8_t *secret, size_t secret_len,
                               const char *device_id, uint64_t counter,
                               const char *message_id,
                               const char *payload, size_t payload_len);

/*
 * iotgw_persist_fn must make value durable (flash, NVS, a file) before it
 * returns 0; any other return value is a failure. ctx is the pointer given
 * to iotgw_counter_init.
 */
typedef int (*iotgw_persist_fn)(void *ctx, uint64_t value);

/*
 * iotgw_counter is a counter-mode device's counter (section 2a,
 * "Persisting across reboots"): kept in RAM and persisted only every
 * `every` values, before the first value of each block is handed out.
 * On boot it continues from the stored value + every, so a reboot never
 * reuses a value and skips at most `every` of them. Its members are
 * private; it holds no pointer but ctx.
 */
typedef struct {
    uint64_t next;      /* the next value to hand out */
    uint64_t block_end; /* the first value the last persisted one does not cover */
    uint64_t every;
    iotgw_persist_fn persist;
    void *ctx;
} iotgw_counter;

/*
 * iotgw_counter_init sets c up at boot. stored points to the value the
 * persistence callback last wrote, or is NULL on the device's very first
 * boot (nothing was ever stored: the counter starts at 1). If the stored
 * value cannot be read, do not pass NULL: starting again from 1 reuses
 * counters the gateway already accepted (each would be a replay); the
 * operator must run `iotgw device reset-counter`. every is N (100 is a
 * good choice, at least 1). IOTGW_ERR_INVALID_ARGUMENT for every 0, a
 * NULL persist or a stored value above IOTGW_MAX_COUNTER.
 */
int iotgw_counter_init(iotgw_counter *c, const uint64_t *stored, uint32_t every,
                       iotgw_persist_fn persist, void *ctx);

/*
 * iotgw_counter_next sets *value to the next counter. When it is the
 * first of a block (the first after boot included) it calls persist with
 * it first; if that fails it returns IOTGW_ERR_PERSIST and hands out
 * nothing (the next call tries again). IOTGW_ERR_EXHAUSTED past
 * IOTGW_MAX_COUNTER.
 */
int iotgw_counter_next(iotgw_counter *c, uint64_t *value);

/*
 * iotgw_parse locates the five members of an envelope exactly as §1
 * defines them (or as section 2a does: "counter" in place of "timestamp",
 * plain digits up to IOTGW_MAX_COUNTER; a message with both, or neither,
 * is malformed), and refuses everything else with IOTGW_ERR_MALFORMED:
 * unknown, missing or repeated members, an escape in a member name or in
 * device_id, message_id or signature, invalid JSON or UTF-8 anywhere, lone
 * surrogate escapes, nesting deeper than IOTGW_MAX_DEPTH, anything after
 * the object, and more than max_bytes bytes (0: IOTGW_MAX_MESSAGE_BYTES).
 * It checks each member's form (id charset, lowercase UUID, plain-digit
 * timestamp, 64 lowercase hex) but not the signature.
 */
int iotgw_parse(const char *msg, size_t len, size_t max_bytes,
                iotgw_envelope *env);

/*
 * iotgw_verify reports whether env's signature is the one key gives
 * (IOTGW_OK or IOTGW_ERR_BAD_SIGNATURE), comparing in constant time.
 */
int iotgw_verify(const uint8_t *key, size_t key_len, const iotgw_envelope *env);

/*
 * iotgw_verify_reply parses a downlink received on device/<id>/response
 * (a reply or a rejection notice) into env and verifies its signature with
 * k_down (iotgw_downlink_key); a downlink always carries a timestamp (one
 * with a counter is IOTGW_ERR_MALFORMED). If device_id is not NULL, the reply's
 * device_id must equal it (else IOTGW_ERR_IDENTITY). Trust env->payload
 * only on IOTGW_OK. It does not check the timestamp or in_reply_to: look
 * in_reply_to up with iotgw_object_member and match it to your message_id.
 * On IOTGW_ERR_BAD_SIGNATURE env is still parsed: if its (unverified)
 * payload's in_reply_to is your message id, the gateway answered with the
 * secret it holds for you, so your secret is most likely wrong or not yet
 * registered (PROTOCOL.md section 4): report that and stop; do not act on
 * the payload, and do not wait for another answer.
 */
int iotgw_verify_reply(const char k_down[IOTGW_HEX_SIZE], const char *device_id,
                       const char *msg, size_t len, iotgw_envelope *env);

/*
 * iotgw_object_member finds the member called name (NUL-terminated, no
 * escapes) in the JSON object obj (for example a verified reply payload)
 * and sets *value to the exact bytes of its value (a string's with its
 * quotes). IOTGW_ERR_NOT_FOUND if it is absent, IOTGW_ERR_MALFORMED if obj
 * is not one valid object or has name twice.
 */
int iotgw_object_member(const char *obj, size_t len, const char *name,
                        iotgw_span *value);

/*
 * Asking the gateway for the time (section 4c). Make a nonce from 16 fresh
 * random bytes (iotgw_format_nonce), publish iotgw_build_time_request's
 * bytes at QoS 1 on device/<id>/time (subscribed to device/<id>/response
 * first), and pass each downlink that arrives to iotgw_check_time_reply
 * with that nonce until it returns IOTGW_OK; then forget the nonce. The
 * gateway answers at most one request per second per device: if no answer
 * came within about 1.5 s, ask again with a new nonce.
 */

/* iotgw_format_nonce writes 16 random bytes as 32 lowercase hex characters
 * into out (NUL-terminated). */
void iotgw_format_nonce(const uint8_t random16[16], char out[IOTGW_NONCE_SIZE]);

/*
 * iotgw_build_time_request writes {"nonce":"<nonce>"} into buf, as
 * iotgw_build_uplink writes (*len, IOTGW_ERR_BUFFER_TOO_SMALL, a NUL when
 * there is room). nonce must be 32 lowercase hex characters
 * (IOTGW_ERR_INVALID_ARGUMENT otherwise).
 */
int iotgw_build_time_request(char *buf, size_t cap, size_t *len, const char *nonce);

/*
 * iotgw_parse_time_request reads a time request as the gateway does: one
 * object whose one member is "nonce", 32 lowercase hex characters without
 * escapes, whitespace between tokens, at most IOTGW_MAX_TIME_REQUEST
 * bytes. On IOTGW_OK *nonce is the nonce's 32 characters inside msg;
 * anything else is IOTGW_ERR_MALFORMED.
 */
int iotgw_parse_time_request(const char *msg, size_t len, iotgw_span *nonce);

/*
 * iotgw_check_time_reply checks msg, a downlink received on
 * device/<device_id>/response, as the answer to the time request that
 * carried nonce, and on IOTGW_OK sets *unix_time to the gateway's time
 * (its timestamp). It is IOTGW_OK only when msg verifies with k_down, is
 * for device_id, and its payload is byte for byte {"time_for":"<nonce>"}.
 * Otherwise: IOTGW_ERR_MALFORMED, IOTGW_ERR_BAD_SIGNATURE or
 * IOTGW_ERR_IDENTITY (not from the gateway for this device: ignore it),
 * IOTGW_ERR_OTHER_NONCE (a genuine answer to another request: an old one
 * replayed, or one you no longer wait for), IOTGW_ERR_NOT_TIME_REPLY (a
 * genuine reply or notice: handle it as such), or
 * IOTGW_ERR_INVALID_ARGUMENT for a nonce that is not 32 lowercase hex
 * characters. env receives the parsed downlink, as iotgw_verify_reply's.
 */
int iotgw_check_time_reply(const char k_down[IOTGW_HEX_SIZE], const char *device_id,
                           const char *msg, size_t len, const char *nonce,
                           iotgw_envelope *env, uint64_t *unix_time);

/*
 * iotgw_format_uuid writes the random version 4 UUID made of 16 random
 * bytes (from your hardware RNG: esp_fill_random, sys_rand_get) in
 * canonical lowercase form into out (NUL-terminated).
 */
void iotgw_format_uuid(const uint8_t random16[16], char out[IOTGW_UUID_SIZE]);

#ifdef __cplusplus
}
#endif

#endif /* IOTGW_DEVICE_H */
