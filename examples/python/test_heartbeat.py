"""The reference worker's rule after a renewal answered 409 (PROTOCOL.md section 4):
continue only when the stored Lease is our own write whose answer we lost.

    python -m unittest discover -s examples/python
"""

import json
import types
import unittest

from issuelock_worker import Heartbeat

OURS = {
    "metadata": {"name": "w-1", "labels": {"issuelock.dev/heartbeat": "true"},
                 "annotations": {"issuelock.dev/holder-user": "u"}, "resourceVersion": "5"},
    "spec": {"holderIdentity": "w", "leaseDurationSeconds": 6,
             "renewTime": "2026-11-28T14:00:00.000000Z"},
}


def heartbeat_reading(stored: dict) -> Heartbeat:
    """A Heartbeat whose last write is OURS and whose next read returns `stored`."""
    hb = Heartbeat.__new__(Heartbeat)
    hb.name, hb.ns, hb.lease, hb.lost_why = "w-1", "ns", OURS, None
    hb.unanswered = {"2026-11-28T14:00:01.000000Z"}
    read = lambda *_a, **_k: types.SimpleNamespace(data=json.dumps(stored).encode())  # noqa: E731
    hb.coord = types.SimpleNamespace(read_namespaced_lease=read)
    return hb


def stored_with(**spec) -> dict:
    s = json.loads(json.dumps(OURS))
    s["metadata"]["resourceVersion"] = "6"
    s["spec"].update(spec)
    return s


class AfterConflict(unittest.TestCase):
    def test_our_unanswered_renewal_is_adopted(self):
        stored = stored_with(renewTime="2026-11-28T14:00:01.000000Z")
        hb = heartbeat_reading(stored)
        hb._after_conflict()
        self.assertIsNone(hb.lost_why)
        self.assertEqual(hb.lease["metadata"]["resourceVersion"], "6")

    def test_a_write_we_did_not_make_loses_the_heartbeat(self):
        for stored in (stored_with(renewTime="2026-11-28T14:00:02.000000Z"),
                       stored_with(renewTime="2026-11-28T14:00:01.000000Z", holderIdentity="x"),
                       stored_with(renewTime="2026-11-28T14:00:01.000000Z",
                                   leaseDurationSeconds=1)):
            with self.subTest(spec=stored["spec"]):
                hb = heartbeat_reading(stored)
                hb._after_conflict()
                self.assertIsNotNone(hb.lost_why)

    def test_a_changed_annotation_loses_the_heartbeat(self):
        stored = stored_with(renewTime="2026-11-28T14:00:01.000000Z")
        stored["metadata"]["annotations"]["issuelock.dev/holder-user"] = "mallory"
        hb = heartbeat_reading(stored)
        hb._after_conflict()
        self.assertIsNotNone(hb.lost_why)


if __name__ == "__main__":
    unittest.main()
