#!/usr/bin/env python3
"""Checks device.py against every vector in testdata/vectors.json (standard library only).

    python3 examples/python-device/test_device.py

Uplinks: split() refuses exactly the vectors whose verdict is malformed (apart
from the size limit, which is the gateway's to enforce) and locates the
members of every other one; sign() gives each signed vector's signature;
build() reproduces accepted_basic byte for byte. Replies: downlink_key(),
the signature, verify() with K_down, and no verification with the secret
itself or with a tampered payload. test/python_device_test.go runs the
device against a live gateway.
"""
import base64
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import device  # noqa: E402

with open(os.path.join(HERE, "..", "..", "testdata", "vectors.json"), encoding="utf-8") as f:
    DATA = json.load(f)


def raw(v: dict) -> bytes:
    return v["message"].encode("utf-8") if "message" in v else base64.b64decode(v["message_base64"])


class Uplinks(unittest.TestCase):
    def test_every_vector(self):
        self.assertGreater(len(DATA["vectors"]), 0)
        for v in DATA["vectors"]:
            with self.subTest(v["name"]):
                if v["expected"] == "malformed" and "max_message_bytes" not in v:
                    with self.assertRaises(ValueError):
                        device.split(raw(v))
                    continue
                if v["expected"] == "malformed":  # too large: well formed otherwise
                    self.assertGreater(len(raw(v)), v["max_message_bytes"])
                f = device.split(raw(v))
                if "signature" not in v:
                    continue
                got = device.sign(v["secret"].encode(), f["device_id"][1:-1], f["timestamp"].encode(),
                                  f["message_id"][1:-1], f["payload"].encode())
                self.assertEqual(got, v["signature"])
                if v["expected"] in ("accepted", "replay"):
                    device.verify(v["secret"].encode(), raw(v))
                if v["expected"] == "bad_signature":
                    with self.assertRaisesRegex(ValueError, "bad signature"):
                        device.verify(v["secret"].encode(), raw(v))

    def test_build_reproduces_accepted_basic(self):
        v = next(v for v in DATA["vectors"] if v["name"] == "accepted_basic")
        f = device.split(raw(v))
        got = device.build(v["secret"].encode(), f["device_id"][1:-1], f["payload"].encode(),
                           int(f["timestamp"]), f["message_id"][1:-1])
        self.assertEqual(got, raw(v))


class Replies(unittest.TestCase):
    def test_every_reply(self):
        self.assertGreater(len(DATA["replies"]), 0)
        for r in DATA["replies"]:
            with self.subTest(r["name"]):
                secret, msg = r["secret"].encode(), r["message"].encode()
                k = device.downlink_key(secret)
                self.assertEqual(k.decode(), r["downlink_key"])
                f = device.verify(k, msg)
                self.assertEqual(f["signature"][1:-1], r["signature"])
                self.assertIn("in_reply_to", json.loads(f["payload"]))
                with self.assertRaisesRegex(ValueError, "bad signature"):
                    device.verify(secret, msg)  # a reply is never an uplink
                tampered = msg.replace(b'"in_reply_to":', b'"in_reply_to" :', 1)
                device.split(tampered)  # still well formed...
                with self.assertRaisesRegex(ValueError, "bad signature"):
                    device.verify(k, tampered)  # ...but the payload bytes are signed


if __name__ == "__main__":
    unittest.main(verbosity=1)
