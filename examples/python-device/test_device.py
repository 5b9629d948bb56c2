#!/usr/bin/env python3
"""Checks device.py against every vector in testdata/vectors.json (standard library only).

    python3 examples/python-device/test_device.py

Uplinks: split() refuses exactly the vectors whose verdict is malformed (apart
from the size limit, which is the gateway's to enforce) and locates the
members of every other one; sign() gives each signed vector's signature;
build() reproduces accepted_basic byte for byte. Replies: downlink_key(),
the signature, verify() with K_down, and no verification with the secret
itself or with a tampered payload. Counter mode (§2a): every counter
vector's verdict as far as parsing and signing go, its signature, and
build() in counter mode; the Counter persisted every N values across
"reboots". Time (§4c): check_time_reply() on every time reply vector, and
time_request() against the requests. test/python_device_test.go runs the
device against a live gateway.
"""
import base64
import json
import os
import sys
import tempfile
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


def counter_verdict(v: dict) -> str:
    """The gateway's verdict on a counter vector, as far as device.py can tell it."""
    try:
        f = device.split(raw(v))
        if ("counter" in f) != (v["freshness"] == "counter"):
            return "malformed"  # a device has one mode at a time
        device.verify(v["secret"].encode(), raw(v))
    except ValueError as e:
        return "bad_signature" if str(e) == "bad signature" else "malformed"
    return "replay" if int(f["counter"]) <= v["counter_bound"] else "accepted"


class CounterMode(unittest.TestCase):
    def test_every_counter_vector(self):
        self.assertGreater(len(DATA["counter_vectors"]), 0)
        for v in DATA["counter_vectors"]:
            with self.subTest(v["name"]):
                self.assertEqual(counter_verdict(v), v["expected"])
                if v["expected"] == "malformed":
                    continue
                f = device.split(raw(v))
                got = device.sign(v["secret"].encode(), f["device_id"][1:-1], f["counter"].encode(),
                                  f["message_id"][1:-1], f["payload"].encode(), counter=True)
                self.assertEqual(got, v["signature"])

    def test_build_reproduces_accepted_counter_next(self):
        v = next(v for v in DATA["counter_vectors"] if v["name"] == "accepted_counter_next")
        f = device.split(raw(v))
        got = device.build(v["secret"].encode(), f["device_id"][1:-1], f["payload"].encode(),
                           int(f["counter"]), f["message_id"][1:-1], counter=True)
        self.assertEqual(got, raw(v))
        for bad in (0, device.MAX_COUNTER + 1):
            with self.assertRaises(ValueError):
                device.build(b"s", "d", b"{}", bad, f["message_id"][1:-1], counter=True)

    def test_counter_persisted_every_n(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "counter")
            stored = []

            def stored_now():
                with open(path) as fh:
                    stored.append(int(fh.read()))

            c = device.file_counter(path, 100)  # first boot: no file
            got = [c.take() for _ in range(250)]
            self.assertEqual(got, list(range(1, 251)))
            stored_now()
            self.assertEqual(stored, [201], "the file holds the first value of the current block")
            c = device.file_counter(path, 100)  # reboot: continue from stored + N
            self.assertEqual(c.take(), 301)
            stored_now()
            self.assertEqual(stored[-1], 301, "the new block is persisted before its first value is used")
            self.assertGreater(301, max(got), "a reboot never reuses a counter")
            self.assertLessEqual(301 - max(got), 100 + 1, "a reboot skips at most N values")
            self.assertEqual(oct(os.stat(path).st_mode & 0o777), "0o600")

    def test_counter_store_called_before_use(self):
        calls, fail = [], [False]

        def store(v):
            if fail[0]:
                raise OSError("flash full")
            calls.append(v)

        c = device.Counter(lambda: None, store, 3)
        self.assertEqual([c.take() for _ in range(4)], [1, 2, 3, 4])
        self.assertEqual(calls, [1, 4])  # every 3, each time before its first value
        c.take(), c.take()
        fail[0] = True
        with self.assertRaises(OSError):
            c.take()  # 7 starts a block that cannot be persisted: not handed out
        fail[0] = False
        self.assertEqual(c.take(), 7)
        self.assertEqual(calls, [1, 4, 7])
        c = device.Counter(lambda: 7, store, 3)  # reboot after 7 was persisted
        self.assertEqual(c.take(), 10)

    def test_counter_file_unreadable(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "counter")
            for bad in (b"", b"x\n", b"-1\n", b"042\n", b"9223372036854775808\n"):
                with open(path, "wb") as fh:
                    fh.write(bad)
                with self.subTest(bad), self.assertRaises(ValueError):
                    device.file_counter(path, 100)  # never silently from 1 again


class Time(unittest.TestCase):
    def test_every_time_reply(self):
        self.assertGreater(len(DATA["time_replies"]), 0)
        why = {"bad_signature": "bad signature", "other_nonce": "other nonce", "not_a_time_reply": "not a time reply"}
        for r in DATA["time_replies"]:
            with self.subTest(r["name"]):
                k = device.downlink_key(r["secret"].encode())
                self.assertEqual(k.decode(), r["downlink_key"])
                msg = r["message"].encode()
                if r["expected"] == "ok":
                    self.assertEqual(device.check_time_reply(k, r["device_id"], msg, r["nonce"]), r["time"])
                    with self.assertRaisesRegex(ValueError, "bad signature"):
                        device.check_time_reply(k, "another_device", msg, r["nonce"])
                    with self.assertRaisesRegex(ValueError, "other nonce"):
                        device.check_time_reply(k, r["device_id"], msg, "f" * 32)
                    continue
                with self.assertRaisesRegex(ValueError, why[r["expected"]]):
                    device.check_time_reply(k, r["device_id"], msg, r["nonce"])

    def test_time_request(self):
        v = next(v for v in DATA["time_requests"] if v["name"] == "time_request_basic")
        self.assertEqual(device.time_request(v["nonce"]), v["message"].encode())


if __name__ == "__main__":
    unittest.main(verbosity=1)
