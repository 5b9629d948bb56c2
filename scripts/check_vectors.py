#!/usr/bin/env python3
"""Check testdata/vectors.json independently of Go.

For every vector that carries a "signature", recompute the HMAC-SHA256 from
the raw message bytes (the payload found by a minimal scan, never by
re-serializing) and assert it equals the expected signature. The scan and
signing code are examples/python/sign.py, the module firmware authors copy,
so this also tests the example. Standard library only.

Every downlink vector in "replies" is checked too: K_down, its signature,
verify_reply, and that it does not verify as an uplink.

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
