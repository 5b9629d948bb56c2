/*
 * device.c: a complete iotgw device on libmosquitto and iotgw_device.c.
 *
 *   iotgw-device send --host 127.0.0.1 --port 8883 --ca ca.crt --cert dev.crt
 *       --key dev.key --device sensor_001 --secret-file sensor_001.secret
 *       [--payload '{"t":22.5}'] [--timeout 10] [--tamper]
 *       [--sync-time] [--clock-offset S] [--counter-file F [--persist-every N]]
 *
 * connects over mutual TLS (client id = device id = the certificate's CN),
 * subscribes to device/<id>/response, publishes one signed message at QoS 1
 * on device/<id>/data, waits for the reply whose in_reply_to is its
 * message_id, verifies it with K_down (docs/PROTOCOL.md section 4) and
 * prints {"message_id":"...","reply":<the verified payload>}. Exit 1 with
 * one line on stderr on a timeout, a reply that does not verify ("reply
 * refused: bad signature") or a rejection notice ("rejected: <reason>");
 * 2 on bad usage. --tamper changes the timestamp (or counter) after
 * signing, as an attacker on the path would: the gateway then answers
 * bad_signature.
 *
 * A device without a clock (PROTOCOL.md section 0, "The clock"):
 *   --sync-time asks the gateway for the time first (section 4c) and signs
 *     with it; a message refused as stale makes the device do the same by
 *     itself, once, and send the reading again as a new message. Each time
 *     it is set, one line on stderr says by how much the local clock was
 *     off. --clock-offset S adds S seconds to the local clock (a device
 *     whose clock is wrong, for tests and demos).
 *   --counter-file F: counter mode (section 2a), for a device registered
 *     with --freshness counter. The counter is kept in RAM and written to F
 *     every --persist-every values (default 100), before the first of them
 *     is used (iotgw_counter); on start it continues from the stored value
 *     + N. The output then has "counter":<n>.
 *
 *   iotgw-device csr --device sensor_001 --key-out dev.key --csr-out dev.csr
 *
 * makes the device's key (ECDSA P-256) with mbedTLS and a certificate
 * signing request for CN=<device id>, for "iotgw device add --csr" or
 * "iotgw pki sign": the key never leaves the device. dev.key is created
 * 0600 and never overwritten.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_csr.h>

#include "iotgw_device.h"

#define MAX_SECRET 1024
#define MAX_TOPIC (IOTGW_MAX_DEVICE_ID + 16)
#define MAX_OUT 4096
#define MAX_NONCES 16 /* time requests in flight at once */
#define MAX_PATH 4096

/* device is everything one run needs; callbacks reach it through obj. */
typedef struct {
    const char *id;
    char data_topic[MAX_TOPIC], resp_topic[MAX_TOPIC], time_topic[MAX_TOPIC];
    uint8_t secret[MAX_SECRET];
    size_t secret_len;
    char k_down[IOTGW_HEX_SIZE];
    char mid[IOTGW_UUID_SIZE];
    const char *payload;
    int tamper;
    int subscribed; /* 1 after the SUBACK */
    int waiting;    /* a message is in flight: downlinks are read as its answer */
    int done;
    int status;        /* exit status once done */
    char reason[32];   /* the reason code of a rejection notice */
    char msg[MAX_OUT]; /* the line to print once done */
    char out[MAX_OUT]; /* the uplink */
    /* the clock (section 4c) */
    double clock_offset;
    char nonces[MAX_NONCES][IOTGW_NONCE_SIZE];
    int n_nonces;
    int synced;
    uint64_t gw_time; /* the gateway's time when it was received, */
    double gw_mono;   /* at this monotonic time */
    /* counter mode (section 2a) */
    const char *counter_file;
    iotgw_counter counter;
    uint64_t sent_counter;
} device;

static void finish(device *d, int status, const char *fmt, const char *arg, int arglen)
{
    if (d->done) return;
    d->done = 1;
    d->status = status;
    snprintf(d->msg, sizeof d->msg, fmt, arglen, arg);
}

static int usage(const char *why)
{
    fprintf(stderr, "usage: %s\n", why);
    fprintf(stderr, "  iotgw-device send --host H --port P --ca CA --cert CRT --key KEY --device ID --secret-file F [--payload JSON] [--timeout S] [--tamper]\n"
                    "      [--sync-time] [--clock-offset S] [--counter-file F [--persist-every N]]\n"
                    "  iotgw-device csr --device ID --key-out KEY --csr-out CSR\n");
    return 2;
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* local_now is the time the device signs with: the gateway's once it was
 * asked (advanced by the monotonic clock), else its own clock. */
static uint64_t local_now(const device *d)
{
    double t = d->synced ? (double)d->gw_time + monotonic() - d->gw_mono : (double)time(NULL) + d->clock_offset;
    return t < 0 ? 0 : (uint64_t)t;
}

/* random16 fills b from the OS RNG (esp_fill_random on an ESP32). */
static int random16(uint8_t b[16])
{
    FILE *f = fopen("/dev/urandom", "rb");
    if (f == NULL) return -1;
    size_t n = fread(b, 1, 16, f);
    fclose(f);
    return n == 16 ? 0 : -1;
}

/* read_secret reads the first line of path, which must not be readable by
 * group or others. */
static int read_secret(const char *path, device *d)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "usage: secret file %s: %s\n", path, strerror(errno));
        return 2;
    }
    if (st.st_mode & 077) {
        fprintf(stderr, "usage: %s is readable by group or others: chmod 600 it\n", path);
        return 2;
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "usage: secret file %s: %s\n", path, strerror(errno));
        return 2;
    }
    char line[MAX_SECRET + 3];
    if (fgets(line, sizeof line, f) == NULL) line[0] = '\0';
    fclose(f);
    size_t n = strcspn(line, "\r\n");
    if (n == 0 || n > MAX_SECRET) {
        fprintf(stderr, "usage: %s: the first line must be the secret (1-%d bytes)\n", path, MAX_SECRET);
        return 2;
    }
    memcpy(d->secret, line, n);
    d->secret_len = n;
    return 0;
}

/* ---- the counter file: iotgw_counter's persistence callback ---------- */

/* persist_file writes value to the file ctx names, atomically: a new
 * file, fsync, rename over the old one, fsync of the directory. On an
 * ESP32 this is nvs_set_u64 + nvs_commit. */
static int persist_file(void *ctx, uint64_t value)
{
    const char *path = ctx;
    char tmp[MAX_PATH + 8], dir[MAX_PATH], line[24];
    int n = snprintf(line, sizeof line, "%llu\n", (unsigned long long)value);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    int ok = write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    if (close(fd) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    snprintf(dir, sizeof dir, "%s", path);
    fd = open(dirname(dir), O_RDONLY);
    if (fd < 0) return -1;
    ok = fsync(fd) == 0;
    close(fd);
    return ok ? 0 : -1;
}

/* load_counter reads the counter file: 0 with *have = 0 when it does not
 * exist (the first boot), 0 with the value, or -1 when it cannot be read
 * as a counter (never start again from 1: that reuses counters). */
static int load_counter(const char *path, uint64_t *value, int *have)
{
    char line[32];
    FILE *f = fopen(path, "rb");
    *have = 0;
    if (f == NULL) return errno == ENOENT ? 0 : -1;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    n = strcspn(line, "\r\n");
    if (n == 0 || n > 19 || (n > 1 && line[0] == '0') || strspn(line, "0123456789") != n) return -1;
    line[n] = '\0';
    errno = 0;
    unsigned long long v = strtoull(line, NULL, 10);
    if (errno != 0 || v > IOTGW_MAX_COUNTER) return -1;
    *value = v;
    *have = 1;
    return 0;
}

/* ---- MQTT callbacks --------------------------------------------------- */

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
    device *d = obj;
    if (rc != 0) {
        finish(d, 1, "connect refused: %.*s", mosquitto_connack_string(rc), -1);
        return;
    }
    /* Subscribe before publishing, or the reply may come first. */
    if (mosquitto_subscribe(m, NULL, d->resp_topic, 1) != MOSQ_ERR_SUCCESS)
        finish(d, 1, "subscribe %.*s failed", d->resp_topic, -1);
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted)
{
    device *d = obj;
    (void)m;
    (void)mid;
    if (n < 1 || granted[0] > 1) {
        finish(d, 1, "subscribe %.*s refused", d->resp_topic, -1);
        return;
    }
    d->subscribed = 1; /* a resubscription after a reconnect sends nothing again */
}

/* time_reply takes a downlink that answers one of the time requests in
 * flight (iotgw_check_time_reply); every other is left to the caller. */
static int time_reply(device *d, const char *payload, size_t len)
{
    iotgw_envelope env;
    uint64_t t;
    int k;
    for (k = 0; k < d->n_nonces && k < MAX_NONCES; k++) {
        if (iotgw_check_time_reply(d->k_down, d->id, payload, len, d->nonces[k], &env, &t) == IOTGW_OK) {
            d->gw_time = t;
            d->gw_mono = monotonic();
            d->synced = 1;
            d->n_nonces = 0; /* every nonce is spent */
            return 1;
        }
    }
    return 0;
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
    device *d = obj;
    (void)m;
    if (strcmp(msg->topic, d->resp_topic) != 0 || msg->payloadlen < 0) return;
    if (time_reply(d, msg->payload, (size_t)msg->payloadlen) || !d->waiting) return;
    iotgw_envelope env;
    int rc = iotgw_verify_reply(d->k_down, d->id, msg->payload, (size_t)msg->payloadlen, &env);
    if (rc != IOTGW_OK) {
        finish(d, 1, "reply refused: %.*s", iotgw_strerror(rc), -1);
        return;
    }
    iotgw_span irt, err;
    rc = iotgw_object_member(env.payload.ptr, env.payload.len, "in_reply_to", &irt);
    if (rc != IOTGW_OK) return; /* not an answer to a message (a time reply for a nonce no longer awaited) */
    if (!(irt.len == 4 && memcmp(irt.ptr, "null", 4) == 0) && !(irt.len == 38 && memcmp(irt.ptr + 1, d->mid, 36) == 0))
        return; /* a reply to an earlier message */
    d->waiting = 0;
    if (iotgw_object_member(env.payload.ptr, env.payload.len, "error", &err) == IOTGW_OK) {
        /* err is a JSON string: print it without its quotes. */
        if (err.len >= 2) err.ptr++, err.len -= 2;
        snprintf(d->reason, sizeof d->reason, "%.*s", (int)err.len, err.ptr);
        finish(d, 1, "rejected: %.*s", err.ptr, (int)err.len);
        return;
    }
    d->done = 1;
    d->status = 0;
    if (d->counter_file != NULL)
        snprintf(d->msg, sizeof d->msg, "{\"message_id\":\"%s\",\"counter\":%llu,\"reply\":%.*s}", d->mid,
                 (unsigned long long)d->sent_counter, (int)env.payload.len, env.payload.ptr);
    else
        snprintf(d->msg, sizeof d->msg, "{\"message_id\":\"%s\",\"reply\":%.*s}", d->mid, (int)env.payload.len, env.payload.ptr);
}

/* ---- the run ---------------------------------------------------------- */

/* pump runs the MQTT loop until *flag is set, d->done is, or timeout
 * seconds passed; it returns whether *flag is set. */
static int pump(struct mosquitto *m, device *d, const int *flag, double timeout)
{
    double end = monotonic() + timeout;
    while (!*flag && !d->done && monotonic() < end) {
        int rc = mosquitto_loop(m, 100, 1);
        if (rc != MOSQ_ERR_SUCCESS && !d->done)
            finish(d, 1, "connection lost: %.*s", rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc), -1);
    }
    return *flag;
}

/* sync_time asks the gateway for the time (section 4c) until it answers or
 * timeout passes; the gateway answers one request per second per device,
 * so an unanswered request is followed after 1.5 s by one with a new
 * nonce. Returns 0, or 1 with d->done set. */
static int sync_time(struct mosquitto *m, device *d, double timeout)
{
    double end = monotonic() + timeout;
    char req[64];
    size_t len;
    d->synced = 0;
    d->n_nonces = 0;
    while (!d->done && monotonic() < end) {
        uint8_t rnd[16];
        char *nonce = d->nonces[d->n_nonces % MAX_NONCES];
        if (random16(rnd) != 0) {
            finish(d, 1, "%.*s", "no random bytes", -1);
            return 1;
        }
        iotgw_format_nonce(rnd, nonce);
        d->n_nonces++;
        if (iotgw_build_time_request(req, sizeof req, &len, nonce) != IOTGW_OK ||
            mosquitto_publish(m, NULL, d->time_topic, (int)len, req, 1, false) != MOSQ_ERR_SUCCESS) {
            finish(d, 1, "%.*s", "publish the time request failed", -1);
            return 1;
        }
        double left = end - monotonic();
        if (pump(m, d, &d->synced, left < 1.5 ? left : 1.5)) {
            fprintf(stderr, "clock: set from the gateway (%+.0f s from the local clock)\n",
                    (double)d->gw_time - ((double)time(NULL) + d->clock_offset));
            return 0;
        }
    }
    d->n_nonces = 0;
    if (!d->done) {
        char t[64];
        snprintf(t, sizeof t, "timeout: no time reply within %gs", timeout);
        finish(d, 1, "%.*s", t, -1);
    }
    return 1;
}

/* send_message signs and publishes one new message (a fresh message_id;
 * the next counter, or the current time). Returns 0, or 1 with d->done set. */
static int send_message(struct mosquitto *m, device *d)
{
    uint8_t rnd[16];
    size_t len;
    int rc;
    if (random16(rnd) != 0) {
        finish(d, 1, "%.*s", "no random bytes", -1);
        return 1;
    }
    iotgw_format_uuid(rnd, d->mid);
    if (d->counter_file != NULL) {
        rc = iotgw_counter_next(&d->counter, &d->sent_counter);
        if (rc != IOTGW_OK) {
            finish(d, 1, "counter: %.*s", iotgw_strerror(rc), -1);
            return 1;
        }
        rc = iotgw_build_counter_uplink(d->out, sizeof d->out, &len, d->secret, d->secret_len, d->id,
                                        d->sent_counter, d->mid, d->payload, strlen(d->payload));
    } else {
        rc = iotgw_build_uplink(d->out, sizeof d->out, &len, d->secret, d->secret_len, d->id,
                                local_now(d), d->mid, d->payload, strlen(d->payload));
    }
    if (rc != IOTGW_OK) {
        finish(d, 1, "build message: %.*s", iotgw_strerror(rc), -1);
        return 1;
    }
    if (d->tamper) {
        /* Change the timestamp's (or counter's) last digit after signing. */
        iotgw_envelope env;
        if (iotgw_parse(d->out, len, 0, &env) == IOTGW_OK) {
            iotgw_span f = env.counter.len > 0 ? env.counter : env.timestamp;
            char *c = (char *)f.ptr + f.len - 1;
            *c = *c == '9' ? '8' : (char)(*c + 1);
        }
    }
    d->waiting = 1;
    d->reason[0] = '\0';
    rc = mosquitto_publish(m, NULL, d->data_topic, (int)len, d->out, 1 /* QoS 1 */, false);
    if (rc != MOSQ_ERR_SUCCESS) {
        finish(d, 1, "publish: %.*s", mosquitto_strerror(rc), -1);
        return 1;
    }
    return 0;
}

/* run: subscribe, set the clock if asked, send; on a stale notice set the
 * clock from the gateway and send the reading again, once. */
static void run(struct mosquitto *m, device *d, int want_sync, double timeout)
{
    if (!pump(m, d, &d->subscribed, timeout)) {
        if (!d->done) finish(d, 1, "timeout: not subscribed to %.*s", d->resp_topic, -1);
        return;
    }
    if (want_sync && sync_time(m, d, timeout) != 0) return;
    if (send_message(m, d) != 0) return;
    pump(m, d, &d->done, timeout);
    if (d->done && d->status == 1 && strcmp(d->reason, "stale") == 0 && d->counter_file == NULL && !d->synced) {
        /* PROTOCOL.md section 3: resync the clock, then send the reading again as a new message. */
        fprintf(stderr, "stale: asking the gateway for the time, then sending the reading again\n");
        d->done = 0;
        d->waiting = 0;
        if (sync_time(m, d, timeout) != 0 || send_message(m, d) != 0) return;
        pump(m, d, &d->done, timeout);
    }
    if (!d->done) {
        char t[128];
        snprintf(t, sizeof t, "timeout: no reply to %s within %gs", d->mid[0] ? d->mid : "(not sent)", timeout);
        finish(d, 1, "%.*s", t, -1);
    }
}

static int send_main(int argc, char **argv)
{
    const char *host = NULL, *ca = NULL, *cert = NULL, *key = NULL, *secret_file = NULL;
    int port = 8883, want_sync = 0;
    long every = 100;
    double timeout = 10;
    static device d;
    d.payload = "{}";
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--tamper") == 0) { d.tamper = 1; continue; }
        if (strcmp(a, "--sync-time") == 0) { want_sync = 1; continue; }
        if (v == NULL) return usage("a flag without its value");
        if (strcmp(a, "--host") == 0) host = v;
        else if (strcmp(a, "--port") == 0) port = atoi(v);
        else if (strcmp(a, "--ca") == 0) ca = v;
        else if (strcmp(a, "--cert") == 0) cert = v;
        else if (strcmp(a, "--key") == 0) key = v;
        else if (strcmp(a, "--device") == 0) d.id = v;
        else if (strcmp(a, "--secret-file") == 0) secret_file = v;
        else if (strcmp(a, "--payload") == 0) d.payload = v;
        else if (strcmp(a, "--timeout") == 0) timeout = atof(v);
        else if (strcmp(a, "--clock-offset") == 0) d.clock_offset = atof(v);
        else if (strcmp(a, "--counter-file") == 0) d.counter_file = v;
        else if (strcmp(a, "--persist-every") == 0) every = atol(v);
        else return usage("unknown flag");
        i++;
    }
    if (!host || !ca || !cert || !key || !d.id || !secret_file || port <= 0 || port > 65535 || timeout <= 0)
        return usage("send needs --host, --port, --ca, --cert, --key, --device and --secret-file");
    if (strlen(d.id) > IOTGW_MAX_DEVICE_ID) return usage("device id too long");
    if (every < 1 || every > 1000000) return usage("--persist-every must be from 1 to 1000000");
    if (d.counter_file != NULL && strlen(d.counter_file) >= MAX_PATH) return usage("--counter-file path too long");
    int rc = read_secret(secret_file, &d);
    if (rc != 0) return rc;
    if (d.counter_file != NULL) {
        uint64_t stored = 0;
        int have;
        if (load_counter(d.counter_file, &stored, &have) != 0) {
            fprintf(stderr, "counter file: %s does not hold a counter; the operator must run iotgw device reset-counter\n", d.counter_file);
            return 1;
        }
        if (iotgw_counter_init(&d.counter, have ? &stored : NULL, (uint32_t)every, persist_file, (void *)d.counter_file) != IOTGW_OK) {
            fprintf(stderr, "counter file: %s: bad counter\n", d.counter_file);
            return 1;
        }
    }
    snprintf(d.data_topic, sizeof d.data_topic, "device/%s/data", d.id);
    snprintf(d.resp_topic, sizeof d.resp_topic, "device/%s/response", d.id);
    snprintf(d.time_topic, sizeof d.time_topic, "device/%s/time", d.id);
    if (iotgw_downlink_key(d.secret, d.secret_len, d.k_down) != IOTGW_OK) {
        fprintf(stderr, "derive K_down failed\n");
        return 1;
    }

    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new(d.id, true /* clean session */, &d);
    if (m == NULL) {
        fprintf(stderr, "mosquitto_new: %s\n", strerror(errno));
        return 1;
    }
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    rc = mosquitto_tls_set(m, ca, NULL, cert, key, NULL);
    if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_tls_opts_set(m, 1 /* verify the broker */, "tlsv1.2", NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "tls files %s, %s, %s: %s\n", ca, cert, key, mosquitto_strerror(rc));
        return 1;
    }
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_message_callback_set(m, on_message);
    rc = mosquitto_connect(m, host, port, 30);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "connect %s:%d: %s\n", host, port, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        return 1;
    }
    run(m, &d, want_sync, timeout);
    mosquitto_disconnect(m);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    fprintf(d.status ? stderr : stdout, "%s\n", d.msg);
    return d.status;
}

/* write_new writes len bytes of buf to a new file path with mode. */
static int write_new(const char *path, const unsigned char *buf, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return 1;
    }
    ssize_t n = write(fd, buf, len);
    int ok = n == (ssize_t)len && fsync(fd) == 0;
    if (close(fd) != 0) ok = 0;
    if (!ok) {
        fprintf(stderr, "%s: write failed\n", path);
        unlink(path);
        return 1;
    }
    return 0;
}

static int csr_main(int argc, char **argv)
{
    const char *id = NULL, *key_out = NULL, *csr_out = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--device") == 0) id = argv[i + 1];
        else if (strcmp(argv[i], "--key-out") == 0) key_out = argv[i + 1];
        else if (strcmp(argv[i], "--csr-out") == 0) csr_out = argv[i + 1];
        else return usage("unknown flag");
    }
    if (!id || !key_out || !csr_out || strlen(id) > IOTGW_MAX_DEVICE_ID || (argc % 2) != 0)
        return usage("csr needs --device, --key-out and --csr-out");
    for (const char *c = id; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '.' || *c == '-') || id[0] == '.')
            return usage("device id must be 1-64 characters of [A-Za-z0-9_.-], not starting with a dot");

    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_pk_context pk;
    mbedtls_x509write_csr csr;
    static unsigned char keybuf[1024], csrbuf[2048];
    char subject[IOTGW_MAX_DEVICE_ID + 4];
    int status = 1, rc;
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    mbedtls_pk_init(&pk);
    mbedtls_x509write_csr_init(&csr);
    static const unsigned char pers[] = "iotgw-device csr";
    /* The device id goes into the subject unescaped: its charset has no
     * character that mbedTLS's subject syntax treats specially. */
    snprintf(subject, sizeof subject, "CN=%s", id);
    if ((rc = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, pers, sizeof pers - 1)) != 0 ||
        (rc = mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY))) != 0 ||
        (rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk), mbedtls_ctr_drbg_random, &drbg)) != 0 ||
        (rc = mbedtls_pk_write_key_pem(&pk, keybuf, sizeof keybuf)) != 0) {
        fprintf(stderr, "generate key: mbedtls error -0x%04x\n", (unsigned)-rc);
        goto out;
    }
    mbedtls_x509write_csr_set_md_alg(&csr, MBEDTLS_MD_SHA256);
    mbedtls_x509write_csr_set_key(&csr, &pk);
    if ((rc = mbedtls_x509write_csr_set_subject_name(&csr, subject)) != 0 ||
        (rc = mbedtls_x509write_csr_pem(&csr, csrbuf, sizeof csrbuf, mbedtls_ctr_drbg_random, &drbg)) != 0) {
        fprintf(stderr, "write CSR: mbedtls error -0x%04x\n", (unsigned)-rc);
        goto out;
    }
    if (write_new(key_out, keybuf, strlen((char *)keybuf), 0600) != 0) goto out;
    if (write_new(csr_out, csrbuf, strlen((char *)csrbuf), 0644) != 0) {
        unlink(key_out);
        goto out;
    }
    printf("wrote %s\nwrote %s\n", key_out, csr_out);
    status = 0;
out:
    mbedtls_x509write_csr_free(&csr);
    mbedtls_pk_free(&pk);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    memset(keybuf, 0, sizeof keybuf);
    return status;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "send") == 0) return send_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "csr") == 0) return csr_main(argc, argv);
    return usage("iotgw-device send|csr ...");
}
