"""Shared by the coupling tests: a recording sink and report builders."""
from __future__ import annotations

import threading

from railcodecs import TrainStatus

DEC, CPL, CPD, DCP = TrainStatus.DECOUPLED, TrainStatus.COUPLING, TrainStatus.COUPLED, TrainStatus.DECOUPLING
NONE, MASTER, SLAVE = TrainStatus.ROLE_NONE, TrainStatus.MASTER, TrainStatus.SLAVE


def report(coupling=CPD, role=MASTER, peer=0, consist=9) -> TrainStatus:
    return TrainStatus(104, 1000, 0, 0, 0, consist, coupling, role, peer, 0, 0)


def pair(a, b, cid, coupling_a, role_a, coupling_b, role_b, peers=True):
    """Reports of both members naming each other (peers=True) or nobody."""
    return (report(coupling_a, role_a, b if peers else 0, cid), report(coupling_b, role_b, a if peers else 0, cid))


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
