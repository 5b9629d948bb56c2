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

A device without a clock (§0, "The clock") has two ways in:
  --sync-time           asks the gateway for the time first (§4c) and signs
                        with it; a device refused as `stale` does the same
                        by itself, once, and sends the reading again as a
                        new message;
  --counter-file PATH   counter mode (§2a), for a device registered with
                        --freshness counter: the counter is kept in RAM and
                        written to PATH every --persist-every values
                        (default 100) before the first of them is used; on
                        start it continues from the stored value + N.
Needs paho-mqtt (Debian: python3-paho-mqtt); the rest is the standard library.
"""
import argparse, hashlib, hmac, json, os, re, ssl, sys, threading, time, uuid

MEMBERS = ("device_id", "timestamp", "counter", "message_id", "payload", "signature")
FORMS = {"device_id": r'"(?!\.)[A-Za-z0-9_.-]{1,64}"', "timestamp": r"(0|[1-9][0-9]{0,11})",
         "counter": r"(0|[1-9][0-9]{0,18})",
         "message_id": r'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"', "signature": r'"[0-9a-f]{64}"'}
MAX_COUNTER = 2**63 - 1
COUNTER_LABEL = b"iotgw/v1/counter"


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


def sign(key: bytes, device_id: str, ts: bytes, mid: str, payload: bytes, counter: bool = False) -> str:
    """Return the signature of PROTOCOL.md §2: hex HMAC-SHA256 of id \\n ts \\n mid \\n payload.

    With counter=True ts is a counter's digits and the signing bytes open
    with "iotgw/v1/counter" \\n (§2a).
    """
    data = b"\n".join([device_id.encode(), ts, mid.encode(), payload])
    return hmac.new(key, COUNTER_LABEL + b"\n" + data if counter else data, hashlib.sha256).hexdigest()


def downlink_key(secret: bytes) -> bytes:
    """Return K_down, the 64 hex bytes that key every reply and notice."""
    return hmac.new(secret, b"iotgw/v1/downlink", hashlib.sha256).hexdigest().encode()


def build(secret: bytes, device_id: str, payload: bytes, ts: int, mid: str, counter: bool = False) -> bytes:
    """Return a signed uplink; payload's exact bytes are both signed and sent.

    With counter=True ts is the counter (1..2**63-1) and the message is a
    counter-mode one (§2a).
    """
    if counter and not 1 <= ts <= MAX_COUNTER:
        raise ValueError("counter %d is not in 1..2**63-1" % ts)
    t = str(ts).encode()
    return b'{"device_id":"%s","%s":%s,"message_id":"%s","payload":%s,"signature":"%s"}' % (
        device_id.encode(), b"counter" if counter else b"timestamp", t, mid.encode(), payload,
        sign(secret, device_id, t, mid, payload, counter).encode())


def split(raw: bytes) -> dict:
    """Return the exact text of each member; ValueError unless raw has exactly the shape of §1
    (or of §2a: "counter" in place of "timestamp")."""
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
    if ("timestamp" in out) == ("counter" in out):
        raise ValueError("a message carries a timestamp or a counter, exactly one")
    for name, form in FORMS.items():
        if name in out and not re.fullmatch(form, out[name]):
            raise ValueError("bad %s" % name)
    if "counter" in out and int(out["counter"]) > MAX_COUNTER:
        raise ValueError("bad counter")
    return out


def verify(key: bytes, raw: bytes) -> dict:
    """Return raw's members if its signature verifies under key, else raise ValueError."""
    f = split(raw)
    ctr = "counter" in f
    want = sign(key, f["device_id"][1:-1], f["counter" if ctr else "timestamp"].encode(), f["message_id"][1:-1],
                f["payload"].encode(), ctr)
    if not hmac.compare_digest(want, f["signature"][1:-1]):
        raise ValueError("bad signature")
    return f


# Counter mode (§2a, "Persisting across reboots").

class Counter:
    """The counter, kept in RAM and persisted every `every` values.

    load() returns the value last persisted, or None on the first boot;
    store(v) must make v durable before it returns, or raise. On start the
    counter continues from stored + every; take() calls store(v) before it
    hands out v when v starts a new block, so no value is used twice and
    at most `every` are skipped by a reboot.
    """

    def __init__(self, load, store, every: int = 100):
        if every < 1:
            raise ValueError("--persist-every must be at least 1")
        stored = load()
        self.next = 1 if stored is None else stored + every
        self._block_end, self._store, self._every = self.next, store, every

    def take(self) -> int:
        v = self.next
        if v > MAX_COUNTER:
            raise OverflowError("counter exhausted: the operator must run iotgw device reset-counter")
        if v >= self._block_end:
            self._store(v)  # durable before v is used
            self._block_end = v + self._every
        self.next = v + 1
        return v


def file_counter(path: str, every: int) -> Counter:
    """Return a Counter persisted in path: one line of digits, replaced atomically.

    A missing file is a first boot. An unreadable one raises ValueError:
    starting again from 1 would reuse counters the gateway already took.
    """
    def load():
        try:
            with open(path, "rb") as fh:
                raw = fh.read().strip()
        except FileNotFoundError:
            return None
        if not re.fullmatch(rb"0|[1-9][0-9]{0,18}", raw) or int(raw) > MAX_COUNTER:
            raise ValueError("%s does not hold a counter" % path)
        return int(raw)

    def store(v: int) -> None:
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"%d\n" % v)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        d = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(d)
        finally:
            os.close(d)

    return Counter(load, store, every)


# Asking the gateway for the time (§4c).

def time_request(nonce: str) -> bytes:
    """Return the request to publish on device/<id>/time for nonce (32 lowercase hex)."""
    return b'{"nonce":"%s"}' % nonce.encode()


def check_time_reply(k_down: bytes, device_id: str, raw: bytes, nonce: str):
    """Return the gateway's time if raw is the answer to the request that
    carried nonce (signed with K_down, for device_id, payload byte for byte
    {"time_for":"<nonce>"}); else raise ValueError saying why:
    "bad signature", "other nonce" or "not a time reply"."""
    f = verify(k_down, raw)
    if "timestamp" not in f:
        raise ValueError("not a time reply: a downlink carries a timestamp")
    if f["device_id"][1:-1] != device_id:
        raise ValueError("bad signature: a downlink for device %s" % f["device_id"])
    want, got = b'{"time_for":"%s"}' % nonce.encode(), f["payload"].encode()
    if hmac.compare_digest(got, want):
        return int(f["timestamp"])
    if len(got) == len(want) and got.startswith(b'{"time_for":"'):
        raise ValueError("other nonce")
    raise ValueError("not a time reply")


class Device:
    """One run: the connection's callbacks feed it, main() drives it."""

    def __init__(self, a, secret: bytes, counter, connack_string=str):
        self.a, self.secret, self.counter, self.connack_string = a, secret, counter, connack_string
        self.k_down, self.resp = downlink_key(secret), "device/%s/response" % a.device
        self.cv = threading.Condition()
        self.subscribed = None  # None until the SUBACK, then "" or an error
        self.nonces = []        # time requests in flight
        self.gw_time = None     # (gateway time, time.monotonic()) once synced
        self.mid = None         # the message waiting for its answer
        self.answer = None      # (exit code, text) for self.mid

    def local_now(self) -> int:
        """The time the device signs with: the gateway's once synced, else its own clock."""
        if self.gw_time is not None:
            return int(self.gw_time[0] + time.monotonic() - self.gw_time[1])
        return int(time.time() + self.a.clock_offset)

    def _set(self, **kw):
        with self.cv:
            for k, v in kw.items():
                setattr(self, k, v)
            self.cv.notify_all()

    def on_connect(self, cl, _u, _f, rc):
        if rc != 0:
            self._set(subscribed="connect refused: " + self.connack_string(rc))
        else:
            cl.subscribe(self.resp, qos=1)  # before publishing, or the reply may come first

    def on_subscribe(self, _cl, _u, _m, granted):
        if self.subscribed is None:  # once: a resubscription after a reconnect resends nothing
            self._set(subscribed="subscribe %s refused" % self.resp if granted[0] > 1 else "")

    def answers_us(self, raw: bytes, mid: str) -> bool:
        """Whether an unverified downlink names our message (read, never trusted)."""
        try:
            p = json.loads(split(raw)["payload"])
            return isinstance(p, dict) and p.get("in_reply_to") == mid
        except ValueError:
            return False

    def on_message(self, _cl, _u, msg):
        with self.cv:
            for n in self.nonces:
                try:
                    t = check_time_reply(self.k_down, self.a.device, msg.payload, n)
                except ValueError:
                    continue  # not the answer to this nonce
                self.nonces, self.gw_time = [], (t, time.monotonic())  # every nonce is spent
                self.cv.notify_all()
                return
            mid = self.mid
        if mid is None:
            return
        try:
            f = verify(self.k_down, msg.payload)
            if f["device_id"][1:-1] != self.a.device:
                raise ValueError("reply for device %s" % f["device_id"])
            p = json.loads(f["payload"])
            p = p if isinstance(p, dict) else {}
        except ValueError as e:
            if self.answers_us(msg.payload, mid):  # the gateway signs with the secret it holds: ours differs
                self._set(answer=(3, "answer not verified: the answer to %s does not verify (%s): this device's secret "
                                     "is most likely wrong, or not yet registered at the gateway" % (mid, e)))
            return  # not from the gateway, or not about this message: ignore it
        if "in_reply_to" not in p or p["in_reply_to"] not in (mid, None):
            return  # a reply to an earlier message, or a time reply
        self._set(answer=(1, p["error"]) if "error" in p else (0, f["payload"]))

    def wait(self, ready, timeout: float) -> bool:
        with self.cv:
            return self.cv.wait_for(ready, timeout)

    def sync_time(self, c) -> str:
        """Ask the gateway for the time (§4c); return "" or why not. A request
        the gateway did not answer within 1.5 s (it answers one per second per
        device) is followed by another with a fresh nonce."""
        deadline = time.monotonic() + self.a.timeout
        self._set(gw_time=None)
        while time.monotonic() < deadline:
            nonce = os.urandom(16).hex()
            with self.cv:
                self.nonces.append(nonce)
            c.publish("device/%s/time" % self.a.device, time_request(nonce), qos=1)
            if self.wait(lambda: self.gw_time is not None, min(1.5, max(0.0, deadline - time.monotonic()))):
                return ""
        self._set(nonces=[])
        return "timeout: no time reply within %gs" % self.a.timeout

    def send(self, c, payload: bytes):
        """Publish one new signed message and wait for its answer: (code, text)."""
        mid = str(uuid.uuid4())
        if self.counter is not None:
            try:
                n = self.counter.take()
            except (OSError, OverflowError) as e:
                return 1, "counter: %s" % e
            raw = build(self.secret, self.a.device, payload, n, mid, counter=True)
        else:
            n, raw = None, build(self.secret, self.a.device, payload, self.local_now(), mid)
        self._set(mid=mid, answer=None)
        c.publish("device/%s/data" % self.a.device, raw, qos=1)
        if not self.wait(lambda: self.answer is not None, self.a.timeout):
            return 1, "timeout: no reply to %s within %gs" % (mid, self.a.timeout)
        code, text = self.answer
        if code == 1:
            return 1, "rejected: %s" % text
        if code == 3:
            return 3, text
        return 0, '{"message_id":"%s",%s"reply":%s}' % (mid, '"counter":%d,' % n if n is not None else "", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for a in ("host", "ca", "cert", "key", "device", "secret-file"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--port", type=int, default=8883)
    ap.add_argument("--payload", default="{}", help="JSON, signed and sent byte for byte")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply (and for the time)")
    ap.add_argument("--sync-time", action="store_true", help="ask the gateway for the time before sending (§4c)")
    ap.add_argument("--counter-file", help="counter mode (§2a): the file that persists the counter")
    ap.add_argument("--persist-every", type=int, default=100, help="persist the counter every N values (default 100)")
    ap.add_argument("--clock-offset", type=float, default=0.0,
                    help="seconds to add to the local clock: a device whose clock is off (for tests and demos)")
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
    if a.persist_every < 1:
        ap.error("--persist-every must be at least 1")
    counter = None
    if a.counter_file:
        try:
            counter = file_counter(a.counter_file, a.persist_every)
        except (OSError, ValueError) as e:
            print("counter file: %s" % e, file=sys.stderr); return 1
    import paho.mqtt.client as mqtt
    kw = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION1} if hasattr(mqtt, "CallbackAPIVersion") else {}
    c = mqtt.Client(client_id=a.device, clean_session=True, protocol=mqtt.MQTTv311, **kw)
    d = Device(a, secret, counter, mqtt.connack_string)
    c.on_connect, c.on_subscribe, c.on_message = d.on_connect, d.on_subscribe, d.on_message
    try:
        c.tls_set(ca_certs=a.ca, certfile=a.cert, keyfile=a.key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    except (OSError, ssl.SSLError) as e:
        print("tls files %s, %s, %s: %s" % (a.ca, a.cert, a.key, e), file=sys.stderr); return 1
    try:
        c.connect(a.host, a.port)
    except (OSError, ssl.SSLError) as e:
        print("connect %s:%d: %s" % (a.host, a.port, e), file=sys.stderr); return 1
    c.loop_start()
    try:
        code, out = run(c, d, payload.encode())
    finally:
        c.disconnect(); c.loop_stop()
    print(out, file=sys.stderr if code else sys.stdout)  # on success: the verified payload, as sent
    return code


def run(c, d: Device, payload: bytes):
    """Subscribe, sync the clock if asked, send; resync and resend once on `stale`."""
    if not d.wait(lambda: d.subscribed is not None, d.a.timeout):
        return 1, "timeout: not subscribed to %s within %gs" % (d.resp, d.a.timeout)
    if d.subscribed:
        return 1, d.subscribed

    def sync():
        before = int(time.time() + d.a.clock_offset)
        err = d.sync_time(c)
        if not err:
            print("clock: set from the gateway (%+d s from the local clock)" % (d.local_now() - before), file=sys.stderr)
        return err

    if d.a.sync_time:
        err = sync()
        if err:
            return 1, err
    code, out = d.send(c, payload)
    if code == 1 and out == "rejected: stale" and d.counter is None and d.gw_time is None:
        # §3: resync the clock, then send the reading again as a new message.
        print("stale: asking the gateway for the time, then sending the reading again", file=sys.stderr)
        err = sync()
        if err:
            return 1, err
        code, out = d.send(c, payload)
    return code, out


if __name__ == "__main__":
    sys.exit(main())
