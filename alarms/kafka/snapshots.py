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

:func:`build_chunks` is used by the relay thread; :class:`SnapshotAssembler`
by a consumer's thread. Both are plain objects without locks.
"""
from __future__ import annotations

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
