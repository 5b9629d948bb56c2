#!/usr/bin/env python3
"""A complete iotgw device: mutual TLS to Mosquitto, one signed message, the verified reply.

    python3 device.py --host 127.0.0.1 --port 8883 --ca ca.crt --cert sensor_001.crt \\
        --key sensor_001.key --device sensor_001 --secret-file sensor_001.secret --payload '{"t":22.5}'

It subscribes to device/<id>/response, publishes the signed message at QoS 1
on device/<id>/data, waits for the reply whose in_reply_to is its message_id,
verifies it with K_down (docs/PROTOCOL.md §4) and prints its payload. Exit 1
with one line on a timeout or a rejection notice; 3 when the answer to the
message does not verify (the secret is most likely wrong, or not yet
registered); 2 on bad usage. Other downlinks that do not verify are ignored. The MQTT client id is the device id, the CN of its certificate.
Needs paho-mqtt (Debian: python3-paho-mqtt); the rest is the standard library.
"""
import argparse, hashlib, hmac, json, os, re, ssl, sys, threading, time, uuid

MEMBERS = ("device_id", "timestamp", "message_id", "payload", "signature")
FORMS = {"device_id": r'"(?!\.)[A-Za-z0-9_.-]{1,64}"', "timestamp": r"(0|[1-9][0-9]{0,11})",
         "message_id": r'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"', "signature": r'"[0-9a-f]{64}"'}


def _no_constant(c):
    raise ValueError("%s is not JSON" % c)


_dec = json.JSONDecoder(parse_constant=_no_constant)


def _strict(v, depth: int) -> None:
    """Refuse what Python's json accepts but §1 does not: lone surrogates, depth above 32."""
    if isinstance(v, str) and re.search("[\ud800-\udfff]", v):
        raise ValueError("lone surrogate escape")
    if isinstance(v, (dict, list)):
        if depth > 32:
            raise ValueError("nested deeper than 32 levels")
        for x in (v if isinstance(v, list) else [y for kv in v.items() for y in kv]):
            _strict(x, depth + 1)


def sign(key: bytes, device_id: str, ts: bytes, mid: str, payload: bytes) -> str:
    """Return the signature of PROTOCOL.md §2: hex HMAC-SHA256 of id \\n ts \\n mid \\n payload."""
    return hmac.new(key, b"\n".join([device_id.encode(), ts, mid.encode(), payload]), hashlib.sha256).hexdigest()


def downlink_key(secret: bytes) -> bytes:
    """Return K_down, the 64 hex bytes that key every reply and notice."""
    return hmac.new(secret, b"iotgw/v1/downlink", hashlib.sha256).hexdigest().encode()


def build(secret: bytes, device_id: str, payload: bytes, ts: int, mid: str) -> bytes:
    """Return a signed uplink; payload's exact bytes are both signed and sent."""
    t = str(ts).encode()
    return b'{"device_id":"%s","timestamp":%s,"message_id":"%s","payload":%s,"signature":"%s"}' % (
        device_id.encode(), t, mid.encode(), payload, sign(secret, device_id, t, mid, payload).encode())


def split(raw: bytes) -> dict:
    """Return the exact text of each member; ValueError unless raw has exactly the shape of §1."""
    s, out, i = raw.decode("utf-8"), {}, 0  # strict UTF-8
    ws = lambda j: len(s) - len(s[j:].lstrip(" \t\r\n"))
    if s[ws(0):ws(0) + 1] != "{":
        raise ValueError("not an object")
    i = ws(ws(0) + 1)
    while True:
        name, end = _dec.raw_decode(s, i)
        if "\\" in s[i:end] or name not in MEMBERS or name in out:
            raise ValueError("unknown, repeated or escaped member %s" % s[i:end])
        i = ws(end)
        if s[i:i + 1] != ":":
            raise ValueError("expected ':'")
        value, end = _dec.raw_decode(s, ws(i + 1))
        _strict(value, 2)
        out[name], i = s[ws(i + 1):end], ws(end)
        if s[i:i + 1] == "}" and ws(i + 1) == len(s) and len(out) == 5:
            break
        if s[i:i + 1] != ",":
            raise ValueError("missing member or trailing data")
        i = ws(i + 1)
    for name, form in FORMS.items():
        if not re.fullmatch(form, out[name]):
            raise ValueError("bad %s" % name)
    return out


def verify(key: bytes, raw: bytes) -> dict:
    """Return raw's members if its signature verifies under key, else raise ValueError."""
    f = split(raw)
    want = sign(key, f["device_id"][1:-1], f["timestamp"].encode(), f["message_id"][1:-1], f["payload"].encode())
    if not hmac.compare_digest(want, f["signature"][1:-1]):
        raise ValueError("bad signature")
    return f


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for a in ("host", "ca", "cert", "key", "device", "secret-file"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--port", type=int, default=8883)
    ap.add_argument("--payload", default="{}", help="JSON, signed and sent byte for byte")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    a = ap.parse_args()
    try:
        if os.stat(a.secret_file).st_mode & 0o077:
            ap.error("%s is readable by group or others: chmod 600 it" % a.secret_file)
        with open(a.secret_file, "rb") as fh:
            secret = fh.readline().rstrip(b"\r\n")
    except OSError as e:
        ap.error("secret file: %s" % e)
    if not secret:
        ap.error("%s: the first line (the secret) is empty" % a.secret_file)
    payload = a.payload.strip(" \t\r\n")
    try:
        _strict(_dec.decode(payload), 2)
    except ValueError as e:
        ap.error("--payload is not JSON the gateway accepts: %s" % e)
    import paho.mqtt.client as mqtt
    kw = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION1} if hasattr(mqtt, "CallbackAPIVersion") else {}
    c = mqtt.Client(client_id=a.device, clean_session=True, protocol=mqtt.MQTTv311, **kw)
    mid, done, result, sent = str(uuid.uuid4()), threading.Event(), [], []
    k_down, topic = downlink_key(secret), "device/%s/response" % a.device

    def on_connect(cl, _u, _f, rc):
        if rc != 0:
            result.append((1, "connect refused: " + mqtt.connack_string(rc))); done.set()
        else:
            cl.subscribe(topic, qos=1)  # before publishing, or the reply may come first

    def on_subscribe(cl, _u, _m, granted):
        if granted[0] > 1:
            result.append((1, "subscribe %s refused" % topic)); done.set()
        elif not sent:  # once: a resubscription after a reconnect must not resend (that is a replay)
            sent.append(cl.publish("device/%s/data" % a.device, build(secret, a.device, payload.encode(), int(time.time()), mid), qos=1))

    def answers_us(raw: bytes) -> bool:
        """Whether an unverified downlink names our message (read, never trusted)."""
        try:
            p = json.loads(split(raw)["payload"])
            return isinstance(p, dict) and p.get("in_reply_to") == mid
        except ValueError:
            return False

    def on_message(_cl, _u, msg):
        try:
            f = verify(k_down, msg.payload)
            if f["device_id"][1:-1] != a.device:
                raise ValueError("reply for device %s" % f["device_id"])
            p = json.loads(f["payload"])
            p = p if isinstance(p, dict) else {}
        except ValueError as e:
            if answers_us(msg.payload):  # the gateway signs with the secret it holds: ours differs
                result.append((3, "answer not verified: the answer to %s does not verify (%s): this device's secret "
                                  "is most likely wrong, or not yet registered at the gateway" % (mid, e))); done.set()
            return  # not from the gateway, or not about this message: ignore it
        if p.get("in_reply_to") not in (mid, None):
            return  # a reply to an earlier message
        result.append((1, "rejected: %s" % p["error"]) if "error" in p else (0, f["payload"])); done.set()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    try:
        c.tls_set(ca_certs=a.ca, certfile=a.cert, keyfile=a.key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    except (OSError, ssl.SSLError) as e:
        print("tls files %s, %s, %s: %s" % (a.ca, a.cert, a.key, e), file=sys.stderr); return 1
    try:
        c.connect(a.host, a.port)
    except (OSError, ssl.SSLError) as e:
        print("connect %s:%d: %s" % (a.host, a.port, e), file=sys.stderr); return 1
    c.loop_start()
    ok = done.wait(a.timeout)
    c.disconnect(); c.loop_stop()
    if not ok:
        print("timeout: no reply to %s within %gs" % (mid, a.timeout), file=sys.stderr); return 1
    if result[0][0]:
        print(result[0][1], file=sys.stderr); return result[0][0]
    print('{"message_id":"%s","reply":%s}' % (mid, result[0][1]))  # the verified payload, as sent
    return 0


if __name__ == "__main__":
    sys.exit(main())
