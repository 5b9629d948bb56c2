#!/usr/bin/env python3
"""Check testdata/vectors.json independently of Go.

For every vector that carries a "signature", recompute the HMAC-SHA256 from
the raw message bytes (the payload found by a minimal scan, never by
re-serializing) and assert it equals the expected signature. The scan and
signing code are examples/python/sign.py, the module firmware authors copy,
so this also tests the example. Standard library only.

Every downlink vector in "replies" is checked too: K_down, its signature,
verify_reply, and that it does not verify as an uplink.

Counter mode and signed time (docs/PROTOCOL.md, sections 2a and 4c): every
"counter_vectors" entry gets its verdict as far as parsing, signing and
verification go (accepted, replay against counter_bound, malformed,
bad_signature) and its signature; every "time_requests" entry is parsed
(ok with its nonce, or malformed); every "time_replies" entry is checked
with check_time_reply (ok with its time, bad_signature, other_nonce,
not_a_time_reply).

Prints "N vectors checked" and exits 0, or lists every mismatch and exits 1.
"""

import base64
import hmac
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples", "python"))

import sign as iotgw  # noqa: E402  (examples/python/sign.py)


def message_bytes(v: dict) -> bytes:
    if "message" in v:
        return v["message"].encode("utf-8")
    return base64.b64decode(v["message_base64"], validate=True)


def check(v: dict) -> list:
    """Return the problems found with one signed vector."""
    raw = message_bytes(v)
    fields = iotgw.split_message(raw)
    json.loads(fields["payload"].decode("utf-8"))  # the span is exactly one JSON value
    got = iotgw.sign(v["secret"], iotgw.message_signing_bytes(fields))
    problems = []
    if not hmac.compare_digest(got, v["signature"]):
        problems.append("signature %s, want %s" % (got, v["signature"]))
    sent_ok = iotgw.verify_message(v["secret"], raw)
    if v["expected"] in ("accepted", "replay") and not sent_ok:
        problems.append("verdict %s but the message's own signature does not verify" % v["expected"])
    if v["expected"] == "bad_signature" and sent_ok:
        problems.append("verdict bad_signature but the message's own signature verifies")
    return problems


def check_reply(r: dict) -> list:
    """Return the problems found with one downlink vector."""
    raw = r["message"].encode("utf-8")
    problems = []
    key = iotgw.downlink_key(r["secret"])
    if key != r["downlink_key"]:
        problems.append("downlink_key %s, want %s" % (key, r["downlink_key"]))
    got = iotgw.sign(key, iotgw.message_signing_bytes(iotgw.split_message(raw)))
    if not hmac.compare_digest(got, r["signature"]):
        problems.append("signature %s, want %s" % (got, r["signature"]))
    if not iotgw.verify_reply(r["secret"], raw):
        problems.append("verify_reply refuses the reply")
    if iotgw.verify_message(r["secret"], raw):
        problems.append("the reply verifies as an uplink")
    return problems


def counter_verdict(v: dict) -> str:
    """Return the gateway's verdict on one counter vector, as far as the
    example's scan, signing and verification can tell it."""
    raw = message_bytes(v)
    try:
        fields = iotgw.split_message(raw)
        iotgw.message_signing_bytes(fields)  # exactly one of timestamp and counter, each in its one form
        if ("counter" in fields) != (v["freshness"] == "counter"):
            return "malformed"  # a device has one mode at a time
        if not iotgw.verify_message(v["secret"], raw):
            return "bad_signature"
    except ValueError:
        return "malformed"
    return "replay" if iotgw.counter_value(fields) <= v["counter_bound"] else "accepted"


def check_counter(v: dict) -> list:
    """Return the problems found with one counter vector."""
    problems = []
    got = counter_verdict(v)
    if got != v["expected"]:
        problems.append("verdict %s, want %s" % (got, v["expected"]))
    if "signature" in v:
        fields = iotgw.split_message(message_bytes(v))
        sig = iotgw.sign(v["secret"], iotgw.message_signing_bytes(fields))
        if not hmac.compare_digest(sig, v["signature"]):
            problems.append("signature %s, want %s" % (sig, v["signature"]))
        if v["expected"] == "accepted" and list(fields) == ["device_id", "counter", "message_id", "payload", "signature"]:
            built = iotgw.build_counter_message(v["secret"], json.loads(fields["device_id"]), fields["payload"],
                                                iotgw.counter_value(fields), json.loads(fields["message_id"]))
            if built != message_bytes(v):
                problems.append("build_counter_message does not rebuild the message byte for byte")
    elif v["expected"] != "malformed":
        problems.append("no signature")
    return problems


def check_time_request(v: dict) -> list:
    """Return the problems found with one time request vector."""
    raw = v["message"].encode("utf-8")
    try:
        nonce = iotgw.parse_time_request(raw)
    except ValueError:
        return [] if v["expected"] == "malformed" else ["parse_time_request refuses it"]
    if v["expected"] != "ok":
        return ["parse_time_request accepts it (nonce %s)" % nonce]
    if nonce != v["nonce"]:
        return ["nonce %s, want %s" % (nonce, v["nonce"])]
    if iotgw.parse_time_request(iotgw.time_request(nonce)) != nonce:
        return ["time_request(nonce) does not parse back"]
    return []


def check_time_reply(r: dict) -> list:
    """Return the problems found with one time reply vector."""
    raw = r["message"].encode("utf-8")
    problems = []
    if iotgw.downlink_key(r["secret"]) != r["downlink_key"]:
        problems.append("downlink_key differs")
    verdict, t = iotgw.check_time_reply(r["secret"], r["device_id"], raw, r["nonce"])
    if verdict != r["expected"] or t != r.get("time"):
        problems.append("check_time_reply = %s, %s; want %s, %s" % (verdict, t, r["expected"], r.get("time")))
    if r["expected"] == "ok":
        if iotgw.check_time_reply(r["secret"], "another_device", raw, r["nonce"])[0] != "bad_signature":
            problems.append("accepted for another device")
        if iotgw.check_time_reply(r["secret"], r["device_id"], raw, iotgw.new_nonce())[0] != "other_nonce":
            problems.append("accepted for another nonce")
        if iotgw.verify_message(r["secret"], raw):
            problems.append("the time reply verifies as an uplink")
    return problems


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "testdata", "vectors.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    vectors = data["vectors"]
    checked, failed = 0, 0
    for r in data.get("replies", []):
        checked += 1
        try:
            problems = check_reply(r)
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            problems = ["cannot scan the reply: %s" % e]
        for p in problems:
            print("%s: %s" % (r["name"], p), file=sys.stderr)
        failed += bool(problems)
    for v in vectors:
        if v["name"].startswith("malformed_escaped_"):
            # One spelling only: the scan must refuse what the gateway refuses.
            checked += 1
            try:
                iotgw.verify_message(v["secret"], message_bytes(v))
                print("%s: verify_message accepts an escaped name or id" % v["name"], file=sys.stderr)
                failed += 1
            except ValueError:
                pass
            continue
        if "signature" not in v:
            continue
        checked += 1
        try:
            problems = check(v)
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            problems = ["cannot scan the message: %s" % e]
        for p in problems:
            print("%s: %s" % (v["name"], p), file=sys.stderr)
        failed += bool(problems)
    for kind, check_one in (("counter_vectors", check_counter), ("time_requests", check_time_request),
                            ("time_replies", check_time_reply)):
        if not data.get(kind):
            print("no %s in %s" % (kind, path), file=sys.stderr)
            failed += 1
        for v in data.get(kind, []):
            checked += 1
            try:
                problems = check_one(v)
            except (ValueError, KeyError, UnicodeDecodeError) as e:
                problems = ["cannot check it: %s" % e]
            for p in problems:
                print("%s: %s" % (v["name"], p), file=sys.stderr)
            failed += bool(problems)
    if checked == 0:
        print("no signed vectors in %s" % path, file=sys.stderr)
        return 1
    if failed:
        print("%d of %d vectors failed" % (failed, checked), file=sys.stderr)
        return 1
    print("%d vectors checked" % checked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
