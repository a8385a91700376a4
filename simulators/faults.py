"""Fault injection: what the simulators do wrong on purpose, and what the gateway must count.

Each sender (device or train) has its own ``random.Random`` seeded from
``(seed, sender id)``, so a seed gives the same faults whatever order the
senders run in. Per sequenced frame one uniform draw picks at most one fault
(``--fault NAME=RATE``, rates summed must be <= 1); ``--at T:KIND:TARGET[:NET]``
schedules one fault at logical second T on one sender (the frame fault goes to
that sender's next eligible frame). Never faulted: a sender's first three
sequenced frames (the first frame of a session sets the receiver's window, so
a gap before it would not be counted) and the final frame sent at stop (it
makes every earlier drop visible as a gap).

The mapping, each designed so the gateway's counters are exact (``c`` = valid
copies of the frame actually written: one per link that is up, one for a UDP
datagram; every copy after the first is a ``duplicate``)::

    fault       what is sent                                     counters it must produce
    ---------   ----------------------------------------------   ------------------------------------
    drop        nothing (the seq is consumed)                    gap +1 (seen at the next frame)
    duplicate   one more valid copy on one link                  duplicate +1
    reorder     frame held, sent right after the next frame      gap +1, stale +1, duplicate +c-1
    corrupt     one copy with a time_ms byte flipped (CRC        bad_crc +1 on that link (UDP: the
                covers it, header stays valid)                   endpoint); if no valid copy left: gap +1
    delay       every copy stamped max_age_ms + max(1 s,          stale +1 per copy (on its link),
                max_age_ms) in the past                           gap +1
    replay      device: an earlier session of the device (its    none: the gateway answers HELLO_ACK
                recorded HELLO, SESSION_CONFIRM and frames)      with a new session nonce, the recorded
                written again on a new connection (no fault      SESSION_CONFIRM cannot confirm it, so
                until one is recorded). Train (no sessions):     nothing is applied and the device's
                the last valid datagram again (sent less than    links are untouched; the gateway
                max_age_ms / 2 ago, else no fault)               closes it with CLOSE 2 (booked as
                                                                 ``replay-A``/``-B`` link events).
                                                                 Train: duplicate +1
    masquerade  an extra copy from an unconfigured src,          unknown_source +1 on that link
                unsigned                                          (UDP: the endpoint)
    wrong_key   an extra copy signed with a wrong key            bad_mac +1 on that link (UDP: endpoint)
    garbage     64-200 random bytes without 0xA5 (TCP: before    bad_sync +1 on that link (UDP:
                a valid frame, never right after a corrupted     the endpoint)
                one, whose resync would swallow them; UDP: one
                datagram of them)
    hb_stop     (``--at`` only) the link goes silent: no frames, none; the gateway closes it (CLOSE 1),
                no heartbeats                                     the device answers and reconnects
    kill_link   (``--at`` only) the link is closed without       none; the device reconnects after 1 s
                CLOSE after what was written is flushed

``duplicate``, ``stale``, ``gap`` and ``applied`` are per sender (the gateway
keeps them per device and per train; which of net A / net B counts a
duplicate is a race), decoder and source errors per link (``A``/``B``) for
devices and per UDP endpoint for trains. The counts assume each device keeps
at least one link up (a session confirmed while no other link is open
starts a new sequence session and resets the window) and the sender's clock agrees with the
receiver's to well under a second.

Used from the simulator's one asyncio thread.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

RATE_FAULTS = ("drop", "duplicate", "reorder", "corrupt", "delay", "replay", "masquerade", "wrong_key", "garbage")
LINK_FAULTS = ("hb_stop", "kill_link")
CLEAN_FRAMES = 3            # a sender's first frames are never faulted (see the module docstring)
WRONG_KEY = bytes(range(0xF0, 0xF0 - 32, -1))
TIME_MS_OFFSET = 21         # the low byte of the header's time_ms: covered by the CRC, not a header check


class FaultSpecError(ValueError):
    """A --fault / --at value that does not parse; the message names the bad part."""


@dataclass(frozen=True, slots=True)
class Scheduled:
    """One ``--at`` fault: at logical second ``at_s`` on ``target`` (device name/id or train id)."""

    at_s: float
    kind: str
    target: str
    net: str | None = None


def parse_rate(text: str) -> tuple[str, float]:
    """``NAME=RATE`` -> (name, probability per frame)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise FaultSpecError(f"--fault {text!r}: expected NAME=RATE, e.g. drop=0.01")
    if name not in RATE_FAULTS:
        raise FaultSpecError(f"--fault {text!r}: unknown fault {name!r}; one of {', '.join(RATE_FAULTS)}")
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise FaultSpecError(f"--fault {text!r}: rate must be a probability 0..1, got {value!r}")
    return name, rate


def parse_at(text: str) -> Scheduled:
    """``T:KIND:TARGET[:NET]``, e.g. ``5:kill_link:CI-1:A``, ``3:hb_stop:CI-2:B``, ``2:corrupt:1025``."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise FaultSpecError(f"--at {text!r}: expected SECONDS:KIND:TARGET[:NET], e.g. 5:kill_link:CI-1:A")
    try:
        at_s = float(parts[0])
    except ValueError:
        at_s = -1.0
    if at_s < 0:
        raise FaultSpecError(f"--at {text!r}: {parts[0]!r} is not a time in seconds >= 0")
    kind = parts[1]
    if kind not in RATE_FAULTS + LINK_FAULTS:
        raise FaultSpecError(f"--at {text!r}: unknown fault {kind!r}; one of {', '.join(RATE_FAULTS + LINK_FAULTS)}")
    net = parts[3] if len(parts) == 4 else None
    if kind in LINK_FAULTS and net not in ("A", "B"):
        raise FaultSpecError(f"--at {text!r}: {kind} needs the net, A or B, e.g. 5:{kind}:{parts[2]}:A")
    if kind not in LINK_FAULTS and net is not None:
        raise FaultSpecError(f"--at {text!r}: {kind} takes no net (it hits the sender's next frame)")
    return Scheduled(at_s, kind, parts[2], net)


class FaultPlan:
    """The run's fault settings: per-frame rates and the ``--at`` schedule."""

    def __init__(self, seed: int, rates: dict[str, float] | None = None,
                 schedule: list[Scheduled] | tuple = ()) -> None:
        self.seed = seed
        self.rates = {name: rate for name, rate in (rates or {}).items() if rate > 0}
        total = sum(self.rates.values())
        if total > 1.0:
            raise FaultSpecError(f"--fault rates add up to {total:g}; at most one fault per frame, so at most 1")
        self.schedule = sorted(schedule, key=lambda s: s.at_s)
        # one cumulative table for the single draw per frame (fixed order: reproducible)
        self._table, acc = [], 0.0
        for name in RATE_FAULTS:
            if name in self.rates:
                acc += self.rates[name]
                self._table.append((acc, name))

    def injector(self, sender_id: int) -> "FaultInjector":
        return FaultInjector(self, random.Random(f"{self.seed}:{sender_id}"))


class FaultInjector:
    """One sender's fault decisions (its own RNG, its pending one-shot faults)."""

    __slots__ = ("plan", "rng", "frames", "pending")

    def __init__(self, plan: FaultPlan, rng: random.Random) -> None:
        self.plan, self.rng = plan, rng
        self.frames = 0
        self.pending: list[str] = []

    def schedule(self, kind: str) -> None:
        """A ``--at`` frame fault: taken by the next eligible frame."""
        self.pending.append(kind)

    def next_fault(self) -> str | None:
        """The fault for the next sequenced frame, or None. Call once per frame (keeps the RNG in step)."""
        self.frames += 1
        draw = self.rng.random() if self.plan._table else 1.0
        if self.frames <= CLEAN_FRAMES:
            return None
        if self.pending:
            return self.pending.pop(0)
        for bound, name in self.plan._table:
            if draw < bound:
                return name
        return None

    def pick(self, options):
        """A seeded choice among ``options`` (which link gets the extra copy, and so on)."""
        return options[self.rng.randrange(len(options))]


def corrupt(frame: bytes) -> bytes:
    """The frame with one CRC-covered byte flipped; sync, version, flags and length stay valid."""
    out = bytearray(frame)
    out[TIME_MS_OFFSET] ^= 0x5A
    return bytes(out)


def garbage(rng: random.Random) -> bytes:
    """64-200 random bytes with no 0xA5 in them, so no sync word can start inside."""
    return bytes(b if b != 0xA5 else 0x00 for b in rng.randbytes(rng.randint(64, 200)))
