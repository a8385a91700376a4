"""Snapshot messages: the whole active-alarm table, in chunks, for consumers that join late.

A snapshot is derived state (the engine's table at ``event_seq``), so it is
NOT journaled: the relay asks a provider for ``(event_seq, alarms)`` every
``snapshot_interval_s`` and publishes the chunks straight away; a lost
snapshot is replaced by the next one. Consumers rebuild from the newest
*complete* snapshot (every chunk of one ``snapshot_id`` seen) and apply only
events with a greater ``event_seq`` (docs/alarm-pipeline.md).

A day's topic starts empty, and alarms raised yesterday and still active are
only in the snapshots, so the relay also publishes one at once when it moves to
a new day's topic and when the broker has lost its data.

:func:`build_chunks` runs in the relay's :class:`SnapshotWorker` thread;
:class:`SnapshotAssembler` in a consumer's thread (a plain object without locks).
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import tzinfo

import orjson

from alarms.model import SCHEMA_VERSION, iso_time

#: ``() -> (event_seq, alarms)``: the engine's ``snapshot()``, made safe to call from the relay thread
SnapshotProvider = Callable[[], tuple[int, list[dict]]]

MAX_ALARMS_PER_CHUNK = 500
MAX_CHUNK_BYTES = 900_000          # under the 1 MB default message.max.bytes / max.message.bytes


def _encode(obj: dict) -> bytes:
    """Compact UTF-8 JSON; orjson writes the bytes of ``json.dumps(obj, ensure_ascii=False,
    separators=(",", ":"))`` (tests/test_alarm_schema.py) in a tenth of the time (2,500 entries: 25 ms -> 3 ms)."""
    return orjson.dumps(obj)


def build_chunks(event_seq: int, alarms: Sequence[dict], *, gateway_id: int, line: str, time_ms: int,
                 tz: tzinfo, max_alarms: int = MAX_ALARMS_PER_CHUNK,
                 max_bytes: int = MAX_CHUNK_BYTES) -> list[bytes]:
    """The encoded chunk messages of one snapshot (at least one, even for an empty table)."""
    encoded = [_encode(a) for a in alarms]
    groups: list[list[bytes]] = [[]]
    size = 0
    for e in encoded:
        if len(e) > max_bytes:
            raise ValueError(f"snapshot: one alarm entry is {len(e)} bytes, over the chunk limit {max_bytes}")
        if groups[-1] and (len(groups[-1]) >= max_alarms or size + len(e) + 1 > max_bytes):
            groups.append([])
            size = 0
        groups[-1].append(e)
        size += len(e) + 1
    snapshot_id = uuid.uuid4().hex
    head = {"schema_version": SCHEMA_VERSION, "kind": "snapshot", "snapshot_id": snapshot_id,
            "gateway_id": gateway_id, "line": line, "event_seq": event_seq, "chunk": 0, "chunks": len(groups),
            "time_ms": time_ms, "time": iso_time(time_ms, tz)}
    out = []
    for i, group in enumerate(groups):
        head["chunk"] = i
        # splice the pre-encoded entries in: each alarm is encoded once, not once per size check
        prefix = _encode({**head, "alarms": []})[:-3]            # drop the closing `[]}`
        out.append(prefix + b"[" + b",".join(group) + b"]}")
    return out


class SnapshotAssembler:
    """Collects chunks by ``snapshot_id``; :meth:`add` returns the whole snapshot when its last chunk arrives.

    Keeps at most ``keep`` incomplete snapshots (a chunk lost for good must not grow memory forever).
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._parts: dict[str, dict[int, dict]] = {}

    def add(self, msg: dict) -> dict | None:
        """Add one decoded chunk; returns ``{"event_seq", "snapshot_id", "time_ms", "alarms", ...}`` when complete."""
        sid, chunks = msg["snapshot_id"], msg["chunks"]
        parts = self._parts.setdefault(sid, {})
        parts[msg["chunk"]] = msg
        if len(parts) < chunks:
            while len(self._parts) > self.keep:
                self._parts.pop(next(iter(self._parts)))
            return None
        del self._parts[sid]
        alarms = [a for i in range(chunks) for a in parts[i]["alarms"]]
        return {**{k: v for k, v in msg.items() if k not in ("chunk", "alarms")}, "alarms": alarms}


class SnapshotWorker:
    """Builds snapshots on a thread of its own, so that the relay thread goes on producing alarms meanwhile.

    Reading a table of 2,543 alarms and encoding its chunks takes about 20 ms (a full table of the shipped
    ``max_active`` 10,000, about four times that); built in the relay thread, an alarm journaled then waited
    for it (``bench/results/alarm-latency-trace-2026-11-30.txt``). The relay thread :meth:`request`\\ s a
    snapshot; the worker calls the provider, then ``build(event_seq, alarms, now_ms)`` for the chunks, keeps
    the result (or the exception) for :meth:`take`, and calls ``on_ready`` (the relay's wake). One request
    at a time: a request while one is pending or building is ignored.

    Threading: ``start``, ``request``, ``take``, ``stop`` and ``busy`` from the relay thread; the provider and
    ``build`` run only in the worker's thread (a provider that opens a journal opens it there).
    """

    def __init__(self, provider: SnapshotProvider, build: Callable[[int, list, int], list[bytes]],
                 on_ready: Callable[[], None]) -> None:
        self._provider, self._build, self._on_ready = provider, build, on_ready
        self._cond = threading.Condition()
        self._want: int | None = None           # now_ms of the requested snapshot, until the worker takes it
        self._building = False
        self._ready: tuple[int, list[bytes]] | Exception | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kafka-snapshots", daemon=True)

    def start(self) -> SnapshotWorker:
        self._thread.start()
        return self

    @property
    def busy(self) -> bool:
        """A snapshot is requested, being built, or built and not yet taken."""
        with self._cond:
            return self._busy_locked()

    def _busy_locked(self) -> bool:
        return self._want is not None or self._building or self._ready is not None

    def request(self, now_ms: int) -> bool:
        """Ask for a snapshot at ``now_ms`` (its time and day topic); False if one is under way already."""
        with self._cond:
            if self._busy_locked():
                return False
            self._want = now_ms
            self._cond.notify()
            return True

    def take(self) -> tuple[int, list[bytes]] | Exception | None:
        """``(now_ms, chunks)`` of the snapshot built, the exception that stopped it, or None (not ready)."""
        with self._cond:
            ready, self._ready = self._ready, None
            return ready

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._want is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                now_ms, self._want, self._building = self._want, None, True
            try:
                event_seq, alarms = self._provider()
                result: tuple[int, list[bytes]] | Exception = (now_ms, self._build(event_seq, alarms, now_ms))
            except Exception as exc:   # the relay counts it and asks again later; the worker goes on
                result = exc
            with self._cond:
                self._ready, self._building = result, False
            self._on_ready()
