"""Latest applied state of every section, signal, switch (per device) and train.

Status messages carry full or partial state; the latest applied value of an
object wins (ICD section 4). Each value is stored with the gateway time it was
applied. The receiver calls :meth:`ObjectState.apply` under the sender's lock,
so two IO loops applying consecutive frames of one device (net A on one loop,
net B on the other) cannot write an older value over a newer one.

The compiled fast path (``railcodecs._core.FastLink``) applies status lists to
the same tables without this method, with the same rule: every item stored,
listeners called for a new or changed value that they watch, in the frame's order; its UDP
step (``railcodecs._core.TrainBatch``) stores accepted TRAIN_STATUS reports in
the compiled train table (``TrainTable``) the same way, without a TrainState
per datagram (one is made when the table is read).

Threading: ``apply`` from IO loop threads (serialised per sender by the
receiver); readers (status, alarm sources) from any thread: every stored value
is an immutable tuple replaced by a single dict store (or two C fields, which
the compiled link path may change without the GIL for an object already in the
table: see ``ObjectTable``), and ``snapshot`` copies under the GIL with ``copy()``.
"""
from __future__ import annotations

from dataclasses import dataclass

from railcodecs import Frame, Signals, Switches, TrackSections, TrainStatus, speedups

#: a listener's watch, per kind (in ``WATCH_KINDS`` order): every change, none, or a value >= 0 (only a
#: change into or out of it)
EVERY, NEVER = -1, -2
WATCH_KINDS = (TrackSections.NAME, Signals.NAME, Switches.NAME)
SECTION_STATES = ("free", "occupied", "fault", "locked")
ASPECTS = ("red", "yellow", "green", "double_yellow", "shunt_white", "dark")
POSITIONS = ("normal", "reverse", "moving", "lost")


@dataclass(frozen=True, slots=True)
class TrainState:
    section_id: int
    offset_cm: int
    speed_cm_s: int
    direction: int
    mode: int
    consist_id: int
    coupling: int
    role: int
    peer_train: int
    doors: int
    fault_flags: int
    applied_ms: int


def _empty_snapshot() -> dict:
    return {"sections": {}, "signals": {}, "switches": {}}


class ObjectState:
    """The line's live picture, as the gateway last applied it."""

    def __init__(self) -> None:
        # (device_id, object_id) -> (value, applied_ms): dicts (pure) or the compiled core's ObjectTable,
        # which stores an unchanged value without allocating (railcodecs.speedups)
        self.sections = speedups.new_table()
        self.signals = speedups.new_table()
        self.switches = speedups.new_table()
        # train id -> TrainState: a dict (pure) or the compiled core's TrainTable, which the UDP batch step
        # writes in C (railcodecs.speedups)
        self.trains = speedups.new_train_table(TrainState)
        self._tables = {TrackSections.TYPE: (0, self.sections), Signals.TYPE: (1, self.signals),
                        Switches.TYPE: (2, self.switches)}
        #: (listener, watch): watch is one int per kind of WATCH_KINDS (EVERY, NEVER or a value)
        self._listeners: list[tuple] = []

    def subscribe(self, listener, *, only: dict[str, int] | None = None) -> None:
        """``listener(kind, device_id, object_id, value, applied_ms)`` on every change: an object's
        first value or a changed one, in the frame's order, under the sender's lock.

        ``only`` (``{kind: value}``, kinds of ``WATCH_KINDS``): call it only for a change into or
        out of that value of that kind, and never for the other kinds. The apply does this filter
        itself (in C on the compiled path), so the alarm stage, which only cares about FAULT and
        LOST, costs no Python call for the thousands of ordinary changes a busy line makes per
        second. ValueError for an unknown kind or a value outside 0..255. Any thread."""
        if only is None:
            watch = (EVERY,) * len(WATCH_KINDS)
        else:
            unknown = sorted(set(only) - set(WATCH_KINDS))
            if unknown:
                raise ValueError(f"subscribe(only=...): unknown kind(s) {unknown}; kinds are {list(WATCH_KINDS)}")
            bad = {k: v for k, v in only.items() if type(v) is not int or not 0 <= v <= 255}
            if bad:
                raise ValueError(f"subscribe(only=...): values must be ints 0..255, got {bad}")
            watch = tuple(only.get(kind, NEVER) for kind in WATCH_KINDS)
        self._listeners = self._listeners + [(listener, watch)]

    def unsubscribe(self, listener) -> None:
        """Stop calling ``listener`` (a new list: a loop iterating the old one finishes with it). Any thread."""
        self._listeners = [entry for entry in self._listeners if entry[0] != listener]

    def apply(self, frame: Frame, now_ms: int) -> None:
        """Apply one accepted frame. Called under the sender's lock (see module doc)."""
        msg = frame.message
        kind = self._tables.get(msg.TYPE)
        if kind is not None:
            ti, table = kind
            dev = frame.src
            listeners = self._listeners
            for obj_id, value in msg.items:
                key = (dev, obj_id)
                old = table.get(key)
                table[key] = (value, now_ms)
                if listeners and (old is None or old[0] != value):
                    before = EVERY if old is None else old[0]
                    for fn, watch in listeners:
                        w = watch[ti]
                        if w == EVERY or (w >= 0 and (w == value or w == before)):
                            fn(msg.NAME, dev, obj_id, value, now_ms)
        elif isinstance(msg, TrainStatus):
            self.trains[frame.src] = TrainState(
                msg.section_id, msg.offset_cm, msg.speed_cm_s, msg.direction, msg.mode, msg.consist_id,
                msg.coupling, msg.role, msg.peer_train, msg.doors, msg.fault_flags, now_ms)

    def device_snapshot(self, device_id: int) -> dict:
        """JSON-ready state of one device's objects. Any thread."""
        return self.device_snapshots().get(device_id, _empty_snapshot())

    def device_snapshots(self) -> dict[int, dict]:
        """JSON-ready state of every device's objects, by device: each table copied and walked once (the
        status of a 1,000-device line asked device by device walked every table 1,000 times). Any thread."""
        out: dict[int, dict] = {}
        for part, table, names in (("sections", self.sections, SECTION_STATES), ("signals", self.signals, ASPECTS),
                                   ("switches", self.switches, POSITIONS)):
            for (dev, obj), (value, applied_ms) in table.copy().items():
                snap = out.get(dev)
                if snap is None:
                    snap = out[dev] = _empty_snapshot()
                snap[part][str(obj)] = {"value": names[value], "applied_ms": applied_ms}
        return out
