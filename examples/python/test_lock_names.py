"""The lock-name rule of the reference worker against the shared vectors
(protocol/lock-names.json, also read by the Rust unit tests).

    python -m unittest discover -s examples/python
"""

import json
import pathlib
import unittest

from issuelock_worker import check_key, lock_name

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "protocol" / "lock-names.json"


class LockNames(unittest.TestCase):
    def setUp(self):
        self.doc = json.loads(VECTORS.read_text(encoding="utf-8"))

    def test_valid_keys_map_to_their_names(self):
        self.assertGreaterEqual(len(self.doc["valid"]), 20)
        for v in self.doc["valid"]:
            with self.subTest(key=v["key"][:40], note=v["note"]):
                self.assertEqual(lock_name(v["key"]), v["name"])

    def test_invalid_keys_are_refused(self):
        for v in self.doc["invalid"]:
            with self.subTest(reason=v["reason"]):
                with self.assertRaises(ValueError):
                    check_key(v["key"])

    def test_unicode_lower_would_be_wrong(self):
        # The trap the rule avoids: str.lower() maps KELVIN SIGN to "k".
        key = "\u212aelvin/x#1"
        self.assertTrue(key.lower().startswith("kelvin"))
        self.assertTrue(lock_name(key).startswith("elvin-x-1-"))


if __name__ == "__main__":
    unittest.main()
