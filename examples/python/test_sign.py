#!/usr/bin/env python3
"""Checks what of sign.py no vector covers: Counter and FileCounterStore
(docs/PROTOCOL.md, section 2a, "Persisting across reboots"), and the
time request round trip. scripts/check_vectors.py checks the rest against
testdata/vectors.json. Standard library only; `make examples` runs it.

    python3 examples/python/test_sign.py
"""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sign  # noqa: E402


class CounterTest(unittest.TestCase):
    def test_persisted_before_each_block(self):
        calls, fail = [], [False]

        def store(v):
            if fail[0]:
                raise OSError("flash full")
            calls.append(v)

        c = sign.Counter(lambda: None, store, every=3)
        self.assertEqual([c.take() for _ in range(4)], [1, 2, 3, 4])
        self.assertEqual(calls, [1, 4], "the first value of each block is stored before it is handed out")
        c.take(), c.take()
        fail[0] = True
        with self.assertRaises(OSError):
            c.take()  # 7 opens a block that could not be persisted: not handed out
        fail[0] = False
        self.assertEqual(c.take(), 7)
        self.assertEqual(calls, [1, 4, 7])

    def test_reboot_skips_at_most_n(self):
        with tempfile.TemporaryDirectory() as d:
            store = sign.FileCounterStore(os.path.join(d, "counter"))
            c = sign.Counter(store.load, store.store, every=100)
            used = [c.take() for _ in range(150)]
            self.assertEqual(used, list(range(1, 151)))
            self.assertEqual(store.load(), 101)
            c = sign.Counter(store.load, store.store, every=100)  # reboot
            first = c.take()
            self.assertEqual(first, 201)
            self.assertEqual(store.load(), 201)
            self.assertGreater(first, max(used))
            self.assertLessEqual(first - max(used) - 1, 100)

    def test_unreadable_file_is_an_error(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "counter")
            for bad in (b"", b"abc\n", b"007\n", b"9223372036854775808\n"):
                with open(path, "wb") as f:
                    f.write(bad)
                with self.subTest(bad), self.assertRaises(ValueError):
                    sign.FileCounterStore(path).load()

    def test_exhausted(self):
        c = sign.Counter(lambda: sign.MAX_COUNTER - 1, lambda v: None, every=1)
        self.assertEqual(c.take(), sign.MAX_COUNTER)
        with self.assertRaises(OverflowError):
            c.take()


class TimeTest(unittest.TestCase):
    def test_round_trip(self):
        n = sign.new_nonce()
        self.assertRegex(n, "^[0-9a-f]{32}$")
        self.assertNotEqual(n, sign.new_nonce())
        self.assertEqual(sign.parse_time_request(sign.time_request(n)), n)
        with self.assertRaises(ValueError):
            sign.time_request(n.upper())
        with self.assertRaises(ValueError):
            sign.parse_time_request(b" " * 300 + sign.time_request(n))  # over 256 bytes


if __name__ == "__main__":
    unittest.main(verbosity=1)
