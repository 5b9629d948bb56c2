#!/usr/bin/env python3
"""Sign and verify iotgw envelopes with nothing but the Python standard library.

This is the reference for firmware authors; docs/PROTOCOL.md is the contract.
The one rule that matters: the payload is signed as the exact bytes that are
sent. Serialize the payload once, sign those bytes, and put those same bytes
in the message. Never let a JSON library re-serialize the payload after
signing (key order, spaces and escapes would change and the signature breaks).

Usage, the secret on the first line of stdin (never on the command line):

    python3 examples/python/sign.py --device sensor_001 \
        --payload '{"temperature":22.5}' < sensor_001.secret

prints one signed message, ready to publish (QoS 1) on device/sensor_001/data;
with --counter N it is a counter-mode message (docs/PROTOCOL.md, section 2a).

Also here: counter mode (counter_signing_bytes, build_counter_message, and
Counter with FileCounterStore, which persist the counter every N values as
section 2a says), and asking the gateway for the time (section 4c:
new_nonce, time_request, parse_time_request, check_time_reply).
scripts/check_vectors.py checks this module against testdata/vectors.json.
"""

import argparse
import hashlib
import hmac
import json
import os
import re
import sys
import time
import uuid

_WS = b" \t\r\n"


def signing_bytes(device_id: str, timestamp: bytes, message_id: str, payload: bytes) -> bytes:
    """Return device_id "\\n" timestamp "\\n" message_id "\\n" payload.

    timestamp is the digits exactly as sent; payload the raw payload bytes.
    """
    return b"\n".join([device_id.encode("utf-8"), timestamp, message_id.encode("utf-8"), payload])


COUNTER_LABEL = b"iotgw/v1/counter"
MAX_COUNTER = 2**63 - 1


def counter_signing_bytes(device_id: str, counter: bytes, message_id: str, payload: bytes) -> bytes:
    """Return the signing bytes of a counter-mode message (section 2a):
    "iotgw/v1/counter" "\n" device_id "\n" counter "\n" message_id "\n" payload.

    counter is the digits exactly as sent. The label makes these bytes
    differ from every timestamp-mode message's (a device id has no '/').
    """
    return COUNTER_LABEL + b"\n" + signing_bytes(device_id, counter, message_id, payload)


def sign(secret: str, data: bytes) -> str:
    """Return the lowercase hex HMAC-SHA256 of data, keyed with the UTF-8 bytes of secret."""
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()


DOWNLINK_LABEL = b"iotgw/v1/downlink"


def downlink_key(secret: str) -> str:
    """Return K_down, the key that signs every downlink (replies and notices).

    K_down = HMAC-SHA256(key = the UTF-8 bytes of secret, message = "iotgw/v1/downlink"),
    as 64 lowercase hex characters. A downlink is signed exactly like an
    uplink with this hex string in place of the secret, so a reply can never
    be replayed as an uplink.
    """
    return hmac.new(secret.encode("utf-8"), DOWNLINK_LABEL, hashlib.sha256).hexdigest()


def build_message(secret: str, device_id: str, payload: bytes, timestamp: int = None, message_id: str = None) -> bytes:
    """Return a signed uplink message.

    payload is the payload's JSON bytes, for example
    json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode().
    The same bytes are signed and sent.
    """
    ts = str(int(time.time()) if timestamp is None else timestamp).encode("ascii")
    mid = str(uuid.uuid4()) if message_id is None else message_id
    sig = sign(secret, signing_bytes(device_id, ts, mid, payload))
    return b"".join([
        b'{"device_id":"', device_id.encode("utf-8"),
        b'","timestamp":', ts,
        b',"message_id":"', mid.encode("utf-8"),
        b'","payload":', payload,
        b',"signature":"', sig.encode("ascii"), b'"}',
    ])


def build_counter_message(secret: str, device_id: str, payload: bytes, counter: int, message_id: str = None) -> bytes:
    """Return a signed counter-mode uplink (section 2a): "counter" in place
    of "timestamp", signed with counter_signing_bytes. counter must be from
    1 to 2**63-1 and greater than every counter the device sent before
    (take it from a Counter).
    """
    if not 1 <= counter <= MAX_COUNTER:
        raise ValueError("counter %d is not in 1..2**63-1" % counter)
    ctr = str(counter).encode("ascii")
    mid = str(uuid.uuid4()) if message_id is None else message_id
    sig = sign(secret, counter_signing_bytes(device_id, ctr, mid, payload))
    return b"".join([
        b'{"device_id":"', device_id.encode("utf-8"),
        b'","counter":', ctr,
        b',"message_id":"', mid.encode("utf-8"),
        b'","payload":', payload,
        b',"signature":"', sig.encode("ascii"), b'"}',
    ])


def split_message(raw: bytes) -> dict:
    """Return the raw bytes of each top-level value of a message, by key.

    A minimal scan, not a validator: it finds where each value starts and
    ends without re-serializing anything, so the payload comes back exactly
    as sent. It raises ValueError on a duplicate key or a structure it
    cannot follow.
    """
    fields = {}
    i = _skip_ws(raw, 0)
    _expect(raw, i, b"{")
    i = _skip_ws(raw, i + 1)
    while True:
        end = _end_of_string(raw, i)
        if b"\\" in raw[i:end]:
            raise ValueError("escape in a member name at byte %d" % i)
        key = json.loads(raw[i:end])
        if key in fields:
            raise ValueError("duplicate key %r" % key)
        i = _skip_ws(raw, end)
        _expect(raw, i, b":")
        i = _skip_ws(raw, i + 1)
        end = _end_of_value(raw, i)
        fields[key] = raw[i:end]
        i = _skip_ws(raw, end)
        if raw[i:i + 1] == b"}":
            return fields
        _expect(raw, i, b",")
        i = _skip_ws(raw, i + 1)


def message_signing_bytes(fields: dict) -> bytes:
    """Return the signing bytes of a message split by split_message.

    device_id and message_id have one spelling only: an escape in either
    raises ValueError (the gateway calls such a message malformed).
    """
    for name in ("device_id", "message_id"):
        if b"\\" in fields[name]:
            raise ValueError("escape in %s" % name)
    if ("timestamp" in fields) == ("counter" in fields):
        raise ValueError("a message carries a timestamp or a counter, exactly one")
    device_id, message_id = json.loads(fields["device_id"]), json.loads(fields["message_id"])
    if "counter" in fields:
        counter_value(fields)  # one spelling only, as for the ids
        return counter_signing_bytes(device_id, fields["counter"], message_id, fields["payload"])
    return signing_bytes(device_id, fields["timestamp"], message_id, fields["payload"])


_COUNTER = re.compile(rb"0|[1-9][0-9]{0,18}")


def counter_value(fields: dict) -> int:
    """Return the counter of a counter-mode message split by split_message.

    It must be plain digits without a leading zero, at most 2**63-1: a
    sign, fraction, exponent or string raises ValueError (the gateway calls
    such a message malformed).
    """
    raw = fields["counter"]
    if not _COUNTER.fullmatch(raw) or int(raw) > MAX_COUNTER:
        raise ValueError("counter %r is not plain digits up to 2**63-1" % raw[:24])
    return int(raw)


def verify_message(secret: str, raw: bytes) -> bool:
    """Report whether the uplink raw carries a valid signature under secret.

    This is the gateway's check. For a downlink use verify_reply.
    """
    fields = split_message(raw)
    want = sign(secret, message_signing_bytes(fields))
    if b"\\" in fields["signature"]:
        raise ValueError("escape in signature")
    return hmac.compare_digest(want, json.loads(fields["signature"]))


def verify_reply(secret: str, raw: bytes) -> bool:
    """Report whether the downlink raw (a reply or a notice from
    device/<id>/response) carries a valid signature for the device whose
    secret is secret: signed like an uplink, keyed with downlink_key(secret).
    It checks only the signature; check device_id, the timestamp and
    in_reply_to yourself if replies matter.
    """
    return verify_message(downlink_key(secret), raw)


class Counter:
    """The counter of a counter-mode device, kept in RAM and persisted every
    `every` values (docs/PROTOCOL.md, section 2a, "Persisting across reboots").

    load() returns the value last persisted, or None on the device's first
    boot; store(value) must make value durable before it returns (raise on
    failure). On boot the counter continues from stored + every, so no
    value is ever used twice and at most `every` are skipped. take() calls
    store(v) before it hands out v when v is the first value of a new
    block (the first after boot included): if store raises, take raises
    and hands out nothing.
    """

    def __init__(self, load, store, every: int = 100):
        if every < 1:
            raise ValueError("persist every %d values: must be at least 1" % every)
        stored = load()
        self._next = 1 if stored is None else stored + every
        self._block_end = self._next  # nothing of the new block is persisted yet
        self._store, self._every = store, every

    def take(self) -> int:
        """Return the next counter, persisting first when a block starts."""
        v = self._next
        if v > MAX_COUNTER:
            raise OverflowError("counter exhausted: ask the operator for iotgw device reset-counter")
        if v >= self._block_end:
            self._store(v)
            self._block_end = v + self._every
        self._next = v + 1
        return v


class FileCounterStore:
    """Persists a Counter in a file of one line of decimal digits, replaced
    atomically (a new file, fsync, rename, fsync of the directory).

    A missing file is a first boot; a file that cannot be read as a counter
    raises ValueError: starting again from 1 would reuse counters the
    gateway has already accepted (every message would be a replay).
    """

    def __init__(self, path: str):
        self.path = path

    def load(self):
        try:
            with open(self.path, "rb") as f:
                raw = f.read().strip()
        except FileNotFoundError:
            return None
        if not _COUNTER.fullmatch(raw) or int(raw) > MAX_COUNTER:
            raise ValueError("%s does not hold a counter" % self.path)
        return int(raw)

    def store(self, value: int) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"%d\n" % value)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        d = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(d)
        finally:
            os.close(d)


# Asking the gateway for the time (docs/PROTOCOL.md, section 4c).

_TIME_REQUEST = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"nonce"[ \t\r\n]*:[ \t\r\n]*"([0-9a-f]{32})"[ \t\r\n]*\}[ \t\r\n]*')
MAX_TIME_REQUEST_BYTES = 256


def new_nonce() -> str:
    """Return a fresh nonce: 16 random bytes as 32 lowercase hex characters."""
    return os.urandom(16).hex()


def time_request(nonce: str) -> bytes:
    """Return the request to publish (QoS 1) on device/<id>/time: {"nonce":"<nonce>"}."""
    if not re.fullmatch("[0-9a-f]{32}", nonce):
        raise ValueError("a nonce is 32 lowercase hex characters")
    return b'{"nonce":"%s"}' % nonce.encode("ascii")


def parse_time_request(raw: bytes) -> str:
    """Return the nonce of a time request, as the gateway reads it: one
    object with the one member "nonce", 32 lowercase hex characters, no
    escapes, whitespace between tokens, at most 256 bytes. ValueError
    otherwise.
    """
    m = _TIME_REQUEST.fullmatch(raw) if len(raw) <= MAX_TIME_REQUEST_BYTES else None
    if m is None:
        raise ValueError("not a time request")
    return m.group(1).decode("ascii")


def time_reply_payload(nonce: str) -> bytes:
    """Return the exact payload of the gateway's answer for nonce: {"time_for":"<nonce>"}."""
    return b'{"time_for":"%s"}' % nonce.encode("ascii")


def check_time_reply(secret: str, device_id: str, raw: bytes, nonce: str):
    """Check raw, a downlink from device/<device_id>/response, as the answer
    to the time request that carried nonce. Return ("ok", time) where time
    is the gateway's Unix time, or (verdict, None) with verdict one of
    "bad_signature" (not signed with K_down for device_id: not from the
    gateway), "other_nonce" (a genuine answer to another request) or
    "not_a_time_reply" (a genuine reply or notice). Use the time only on
    "ok", and then forget the nonce: each nonce is answered once.
    ValueError when raw is not a downlink at all.
    """
    fields = split_message(raw)
    if "timestamp" not in fields or "counter" in fields:
        raise ValueError("a downlink carries a timestamp")
    if not re.fullmatch(rb"0|[1-9][0-9]{0,11}", fields["timestamp"]):
        raise ValueError("timestamp is not plain digits")
    if json.loads(fields["device_id"]) != device_id or not verify_reply(secret, raw):
        return "bad_signature", None
    want, got = time_reply_payload(nonce), fields["payload"]
    if hmac.compare_digest(got, want):
        return "ok", int(fields["timestamp"])
    if len(got) == len(want) and got.startswith(b'{"time_for":"'):
        return "other_nonce", None
    return "not_a_time_reply", None


def _skip_ws(b: bytes, i: int) -> int:
    while i < len(b) and b[i] in _WS:
        i += 1
    return i


def _expect(b: bytes, i: int, c: bytes) -> None:
    if b[i:i + 1] != c:
        raise ValueError("expected %r at byte %d" % (c.decode(), i))


def _end_of_string(b: bytes, i: int) -> int:
    _expect(b, i, b'"')
    i += 1
    while i < len(b):
        if b[i] == 0x5C:  # backslash: skip the escaped byte
            i += 2
        elif b[i] == 0x22:
            return i + 1
        else:
            i += 1
    raise ValueError("unterminated string")


def _end_of_value(b: bytes, i: int) -> int:
    if b[i:i + 1] == b'"':
        return _end_of_string(b, i)
    if b[i:i + 1] in (b"{", b"["):
        depth = 0
        while i < len(b):
            c = b[i:i + 1]
            if c == b'"':
                i = _end_of_string(b, i)
                continue
            if c in (b"{", b"["):
                depth += 1
            elif c in (b"}", b"]"):
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ValueError("unterminated value")
    start = i  # number or literal
    while i < len(b) and b[i] not in b",}]" + _WS:
        i += 1
    if i == start:
        raise ValueError("expected a value at byte %d" % i)
    return i


def main() -> int:
    ap = argparse.ArgumentParser(description="Print a signed iotgw message. The secret is the first line of stdin.")
    ap.add_argument("--device", required=True, help="device id, 1-64 chars of [A-Za-z0-9_.-], not starting with a dot")
    ap.add_argument("--payload", default="{}", help="payload JSON, signed and sent byte for byte (default {})")
    ap.add_argument("--timestamp", type=int, help="Unix seconds (default now)")
    ap.add_argument("--counter", type=int, help="sign a counter-mode message with this counter (1..2**63-1) "
                                                 "instead of a timestamp (PROTOCOL.md section 2a)")
    ap.add_argument("--message-id", help="lowercase UUID (default a random one)")
    args = ap.parse_args()
    if args.counter is not None and args.timestamp is not None:
        ap.error("--counter and --timestamp: a message carries one of them")
    if args.counter is not None and not 1 <= args.counter <= MAX_COUNTER:
        ap.error("--counter must be from 1 to 2**63-1")
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        ap.error("no secret on stdin")
    payload = args.payload.strip(" \t\r\n").encode("utf-8")
    json.loads(payload)  # refuse to sign something that is not JSON
    if args.counter is not None:
        msg = build_counter_message(secret, args.device, payload, args.counter, args.message_id)
    else:
        msg = build_message(secret, args.device, payload, args.timestamp, args.message_id)
    sys.stdout.buffer.write(msg + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
