"""Shared by the coupling tests: a recording sink, report builders with realistic
sender times, and the pairing rule restated as set arithmetic (the reference
model the engine is checked against)."""
from __future__ import annotations

import random
import threading

from railcodecs import TrainStatus

DEC, CPL, CPD, DCP = TrainStatus.DECOUPLED, TrainStatus.COUPLING, TrainStatus.COUPLED, TrainStatus.DECOUPLING
NONE, MASTER, SLAVE = TrainStatus.ROLE_NONE, TrainStatus.MASTER, TrainStatus.SLAVE


def report(coupling=CPD, role=MASTER, peer=0, consist=9) -> TrainStatus:
    return TrainStatus(104, 1000, 0, 0, 0, consist, coupling, role, peer, 0, 0)


def pair(a, b, cid, coupling_a, role_a, coupling_b, role_b, peers=True):
    """Reports of both members naming each other (peers=True) or nobody."""
    return (report(coupling_a, role_a, b if peers else 0, cid), report(coupling_b, role_b, a if peers else 0, cid))


WINDOW_MS = 200                 # coupling.pair_window_ms default: the 5 Hz report period
T0_MS = 1_700_000_000_000       # a realistic sender clock (epoch ms), on a window boundary


def at(bucket: int, offset_ms: int = 50) -> int:
    """Sender time ``offset_ms`` into window ``bucket`` (counted from T0_MS)."""
    assert 0 <= offset_ms < WINDOW_MS
    return T0_MS + bucket * WINDOW_MS + offset_ms


def bucket_of(time_ms: int) -> int:
    return (time_ms - T0_MS) // WINDOW_MS


def periodic_times(rng: random.Random, buckets: int, *, loss: float = 0.0, jitter_ms: int = 10):
    """One train at 5 Hz: per window, (bucket, sender time_ms) or nothing when the datagram is lost.

    A per-train phase (30..150 ms into the window) plus +-jitter_ms keeps each
    report inside its window, as a train whose clock is synchronised would.
    """
    phase = rng.randint(30, 150)
    out = []
    for b in range(buckets):
        if rng.random() >= loss:
            out.append((b, at(b, phase + rng.randint(-jitter_ms, jitter_ms))))
    return out


def accepted(seq) -> tuple[dict, int, int]:
    """One train's reports [(report, time_ms, now_ms)] -> ({bucket: (report, now_ms)}, late, duplicate).

    The first report of a bucket is kept; one whose bucket is below the
    train's last bucket is late; another in the same bucket is a duplicate.
    """
    kept, late, duplicate, last = {}, 0, 0, None
    for r, t, now in seq:
        b = t // WINDOW_MS
        if last is not None and b < last:
            late += 1
        elif b == last:
            duplicate += 1
        else:
            kept[b], last = (r, now), b
    return kept, late, duplicate


def model_pairs(seq_a, seq_b) -> tuple[list, dict]:
    """The pairing rule as sets: pairs [(bucket, ra, rb, max now_ms)] in bucket order, and counters.

    Evaluated = the intersection of the two trains' accepted buckets. Unpaired =
    the symmetric difference, less the buckets above the partner's last bucket
    (those still wait for it).
    """
    ka, late_a, dup_a = accepted(seq_a)
    kb, late_b, dup_b = accepted(seq_b)
    pairs = [(b, ka[b][0], kb[b][0], max(ka[b][1], kb[b][1])) for b in sorted(ka.keys() & kb.keys())]
    top_a, top_b = max(ka, default=-1), max(kb, default=-1)
    unpaired = (sum(1 for b in ka.keys() - kb.keys() if b < top_b)
                + sum(1 for b in kb.keys() - ka.keys() if b < top_a))
    return pairs, {"unpaired": unpaired, "late": late_a + late_b, "duplicate": dup_a + dup_b,
                   "reports": [len(ka), len(kb)]}


class Recorder:
    """EventLog's sink interface, recording every call in order. Any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str, str, int, str]] = []

    def _add(self, kind, name, source, time_ms, detail):
        with self._lock:
            self.calls.append((kind, name, source, time_ms, detail))
        return True

    def raise_condition(self, name, source, time_ms, detail=""):
        return self._add("raise", name, source, time_ms, detail)

    def clear_condition(self, name, source, time_ms, detail=""):
        return self._add("clear", name, source, time_ms, detail)

    def emit(self, name, source, time_ms, detail=""):
        return self._add("emit", name, source, time_ms, detail)

    def of(self, kind=None, name=None, source=None) -> list:
        return [c for c in self.calls if (kind is None or c[0] == kind) and (name is None or c[1] == name)
                and (source is None or c[2] == source)]
