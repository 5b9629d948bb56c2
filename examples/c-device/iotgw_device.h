/*
 * iotgw_device.h: sign uplinks and verify downlinks of the iotgw device
 * protocol (docs/PROTOCOL.md) in portable C99 over mbedTLS.
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

/* The protocol's limits (the gateway's defaults, docs/PROTOCOL.md §1). */
#define IOTGW_MAX_MESSAGE_BYTES 65536u
#define IOTGW_MAX_DEPTH 32
#define IOTGW_MAX_DEVICE_ID 64
#define IOTGW_MAX_TIMESTAMP 999999999999ull /* at most 12 digits */

/* Results. Every function returns IOTGW_OK or one of these. */
#define IOTGW_OK 0
#define IOTGW_ERR_BUFFER_TOO_SMALL -1 /* *len says how many bytes are needed */
#define IOTGW_ERR_INVALID_ARGUMENT -2 /* a device id, message id, timestamp or payload the protocol refuses */
#define IOTGW_ERR_MALFORMED -3        /* the envelope is not exactly the shape of §1 */
#define IOTGW_ERR_BAD_SIGNATURE -4    /* the signature does not verify */
#define IOTGW_ERR_IDENTITY -5         /* a downlink for another device */
#define IOTGW_ERR_NOT_FOUND -6        /* iotgw_object_member: no such member */
#define IOTGW_ERR_CRYPTO -7           /* mbedTLS reported an error */

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
 */
typedef struct {
    iotgw_span device_id;
    iotgw_span timestamp;
    iotgw_span message_id;
    iotgw_span payload;
    iotgw_span signature;
} iotgw_envelope;

/*
 * iotgw_sign computes the envelope signature of §2:
 * lowercase_hex(HMAC-SHA256(key, device_id "\n" timestamp "\n" message_id
 * "\n" payload)) into sig (NUL-terminated). For an uplink the key is the
 * secret's bytes; for a downlink it is the 64 hex characters of K_down.
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
 * iotgw_parse locates the five members of an envelope exactly as §1
 * defines them, and refuses everything else with IOTGW_ERR_MALFORMED:
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
 * k_down (iotgw_downlink_key). If device_id is not NULL, the reply's
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
 * iotgw_format_uuid writes the random version 4 UUID made of 16 random
 * bytes (from your hardware RNG: esp_fill_random, sys_rand_get) in
 * canonical lowercase form into out (NUL-terminated).
 */
void iotgw_format_uuid(const uint8_t random16[16], char out[IOTGW_UUID_SIZE]);

#ifdef __cplusplus
}
#endif

#endif /* IOTGW_DEVICE_H */
