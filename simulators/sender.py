"""Sequenced sending with fault injection, shared by devices (TCP, two nets) and trains (UDP).

A sender allocates one seq per sequenced message and writes the same frame
(same seq, same time_ms) to each of its *outlets*: the device's links that
are up (net A, net B) or the train's UDP socket. Each copy is signed with its
outlet's key: since ICD 1.1 every TCP link has its own session key, so the
net A and net B copies differ in their MAC only. Faults (``faults.py``)
change what is written, and each write is booked in the ledger together
with the counters it must produce at the receiver.

An outlet is anything with ``where`` ("A", "B" or "udp"), ``write(data,
type_name)`` and ``after_corrupt`` (True while the last thing written on it
was a corrupted frame: garbage must not follow it, see ``faults.py``), and
optionally ``mac_key`` (the key its frames are signed with; default: the
sender's key).

Used from the simulator's one asyncio thread.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from railcodecs import encode, seq_next

from .faults import WRONG_KEY, corrupt, garbage


class SequencedSender(ABC):
    """Seq, faults, reorder hold and replay memory of one device or train."""

    def __init__(self, sim, name: str, node_id: int, key: bytes | None) -> None:
        self.sim, self.name, self.node_id, self.key = sim, name, node_id, key
        self.seq = 0
        self.faults = sim.plan.injector(node_id)
        self.held = None          # (seq, message) kept back by a reorder fault
        self.last_valid = None    # (bytes, type_name, tick) of the last frame the receiver applied or saw
        sim.ledger.register(name, self.KIND)

    KIND = "device"

    @abstractmethod
    def outlets(self) -> list:
        """Where frames go: the open links (DeviceSim) or the UDP socket (TrainSim)."""

    def _encode(self, message, seq: int, time_ms: int | None = None, src: int | None = None, key=...,
                outlet=None) -> bytes:
        """One frame; signed with ``key`` if given (None: unsigned), else with ``outlet``'s key, else ours."""
        if key is ...:
            key = getattr(outlet, "mac_key", self.key)
        return encode(message, src=self.node_id if src is None else src, dst=self.sim.gateway_id, seq=seq,
                      time_ms=self.sim.now_ms() if time_ms is None else time_ms, mac_key=key)

    def replay_session(self, target) -> bool:
        """The ``replay`` fault for a sender with sessions (devices override it); False: not possible now."""
        return False

    def send_seq(self, message, final: bool = False) -> bool:
        """Send one sequenced message (with at most one fault); False if no outlet is up."""
        outs = self.outlets()
        if not outs:
            return False  # no seq consumed: nothing can reach the receiver now
        self.seq = seq = seq_next(self.seq)
        fault = self.faults.next_fault()
        if final or self.held is not None or not self.sim.faults_active():
            fault = None  # the frame after a held one goes out clean, so the reorder is exact
        ledger, name = self.sim.ledger, self.name
        if fault == "reorder":
            ledger.inject(fault, name)
            self.held = (seq, message)
            return True
        if fault == "drop":
            ledger.inject(fault, name)
            ledger.frame_copies(name, 0)
            return True
        if fault == "delay":
            old = self.sim.now_ms() - self.sim.max_age_ms - max(1000, self.sim.max_age_ms)
            for out in outs:
                out.write(self._encode(message, seq, time_ms=old, outlet=out), message.NAME)
            ledger.inject(fault, name)
            ledger.expect(name, stale=len(outs), gap=1)
            return True
        now_ms = self.sim.now_ms()  # every copy carries the same seq and time_ms
        copy_for = {id(out): self._encode(message, seq, time_ms=now_ms, outlet=out) for out in outs}
        data = copy_for[id(outs[0])]
        if fault == "corrupt":
            victim = self.faults.pick(outs)
            for out in outs:
                out.write(corrupt(copy_for[id(out)]) if out is victim else copy_for[id(out)], message.NAME)
            victim.after_corrupt = True
            ledger.inject(fault, name)
            ledger.expect_link_error(name, victim.where, "bad_crc")
            self._booked(data, message.NAME, len(outs) - 1)
            return True
        if fault == "garbage":
            target = self.faults.pick(outs)
            if not target.after_corrupt:
                target.write(garbage(self.faults.rng), "garbage")
                ledger.inject(fault, name)
                ledger.expect_link_error(name, target.where, "bad_sync")
        for out in outs:
            out.write(copy_for[id(out)], message.NAME)
        copies = len(outs)
        if fault == "duplicate":
            again = self.faults.pick(outs)
            again.write(copy_for[id(again)], message.NAME)
            ledger.inject(fault, name)
            copies += 1
        previous = self.last_valid
        self._booked(data, message.NAME, copies)
        if fault in ("replay", "masquerade", "wrong_key"):
            self._extra(fault, message, seq, outs, previous)
        if self.held is not None:
            self._release_held()
        return True

    def _booked(self, data: bytes, type_name: str, copies: int) -> None:
        self.sim.ledger.frame_copies(self.name, copies)
        if copies:
            self.last_valid = (data, type_name, self.sim.tick)

    def _extra(self, fault: str, message, seq: int, outs, previous) -> None:
        """Faults that add one frame on one outlet after the valid copies."""
        ledger, name = self.sim.ledger, self.name
        target = self.faults.pick(outs)
        if fault == "replay":
            if self.replay_session(target):  # a device: an earlier session replayed on a new connection
                ledger.inject(fault, name)
                return
            last = self._recent(previous)
            if last is None or self.KIND == "device":
                return  # nothing to replay: no fault
            target.write(last[0], last[1])  # a train (no sessions): its last datagram again
            ledger.expect(name, duplicates=1)
        elif fault == "masquerade":
            target.write(self._encode(message, seq, src=self.sim.stranger_id, key=None), message.NAME)
            ledger.expect_link_error(name, target.where, "unknown_source")
        else:
            target.write(self._encode(message, seq, key=WRONG_KEY), message.NAME)
            ledger.expect_link_error(name, target.where, "bad_mac")
        ledger.inject(fault, name)

    def _recent(self, last):
        """``last`` if it is young enough (by logical time) to be a duplicate at the receiver, not stale."""
        if last is None or (self.sim.tick - last[2]) * self.sim.tick_ms >= self.sim.max_age_ms // 2:
            return None
        return last

    def _release_held(self) -> None:
        """Send the held frame after the one that overtook it: late (stale) once, then duplicates."""
        seq, message = self.held
        self.held = None
        outs = self.outlets()
        now_ms = self.sim.now_ms()
        data = None
        for out in outs:
            data = self._encode(message, seq, time_ms=now_ms, outlet=out)
            out.write(data, message.NAME)
        ledger = self.sim.ledger
        ledger.expect(self.name, gap=1, stale=1 if outs else 0, duplicates=max(0, len(outs) - 1))
        if outs:
            self.last_valid = (data, message.NAME, self.sim.tick)
