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

prints one signed message, ready to publish (QoS 1) on device/sensor_001/data.
scripts/check_vectors.py checks this module against testdata/vectors.json.
"""

import argparse
import hashlib
import hmac
import json
import sys
import time
import uuid

_WS = b" \t\r\n"


def signing_bytes(device_id: str, timestamp: bytes, message_id: str, payload: bytes) -> bytes:
    """Return device_id "\\n" timestamp "\\n" message_id "\\n" payload.

    timestamp is the digits exactly as sent; payload the raw payload bytes.
    """
    return b"\n".join([device_id.encode("utf-8"), timestamp, message_id.encode("utf-8"), payload])


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
    return signing_bytes(json.loads(fields["device_id"]), fields["timestamp"],
                         json.loads(fields["message_id"]), fields["payload"])


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
    ap.add_argument("--message-id", help="lowercase UUID (default a random one)")
    args = ap.parse_args()
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        ap.error("no secret on stdin")
    payload = args.payload.strip(" \t\r\n").encode("utf-8")
    json.loads(payload)  # refuse to sign something that is not JSON
    sys.stdout.buffer.write(build_message(secret, args.device, payload, args.timestamp, args.message_id) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
