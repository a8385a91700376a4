"""The live alarm table in Redis: what is active now, for HMIs that must not query MySQL.

Keys (``prefix`` from ``redis.prefix`` in the config, one per gateway)::

    <prefix>:alarms:active    hash  alarm key ("CI-1/DEVICE_COMM_LOST/-") -> JSON snapshot entry
    <prefix>:alarms:seq       str   last applied event_seq (the table is current up to it)
    <prefix>:alarms:key_seq   hash  alarm key -> event_seq of the last event applied to that key
    <prefix>:alarms:base      str   event_seq of the snapshot of the last full resync

A snapshot entry is the doc's format (``{"alarm": {...}, "severity", "text", "state", "active",
"chattering", "operator", "shelved_until_ms", "raised_ms", "updated_ms", "event_seq"}``). An alarm
whose state becomes NORMAL (cleared and acknowledged) leaves the hash; info events never enter it.
Consumers read the whole table with one ``HGETALL`` (:func:`read_active`).

Updates go through one Lua script (atomic): an event is applied only if its event_seq is greater
than both the key's ``key_seq`` and ``base``, so replays and late, older events change nothing.
``key_seq`` remembers keys that left the table, so an old ``raise`` replayed after the clear does
not resurrect the alarm.

Resync: the table is rebuilt in one MULTI/EXEC from a snapshot callable returning
``(event_seq, entries)`` — at start and after every Redis failure (Redis may have restarted empty
or missed events). :func:`journal_snapshot` makes one from the journal's ``latest`` table.

Where it runs: in its own :class:`~alarms.history_writer.HistoryWriter` thread (it has the
writer's ``resume_seq``/``write`` sink methods), with its own watermark and back-off, so a MySQL
outage does not freeze the live table nor a Redis outage the history. Methods are called from that
one thread; :func:`read_active` from any thread or process.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Sequence

import orjson
import redis

ENTRY_FIELDS = ("alarm", "severity", "text", "state", "active", "chattering", "operator", "shelved_until_ms",
                "raised_ms")
CHUNK = 1000                   # events per script call: bounds the time Redis spends in one script

# KEYS: active, key_seq, seq, base.  ARGV: top seq of the batch, then (field, event_seq, entry JSON
# or "" to remove) per event.  Returns how many events changed the table.
_APPLY = """
local base = tonumber(redis.call('GET', KEYS[4]) or '0')
local applied = 0
for i = 2, #ARGV, 3 do
  local field, seq, doc = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local stored = tonumber(redis.call('HGET', KEYS[2], field) or '0')
  if seq > stored and seq > base then
    redis.call('HSET', KEYS[2], field, seq)
    if doc == '' then redis.call('HDEL', KEYS[1], field) else redis.call('HSET', KEYS[1], field, doc) end
    applied = applied + 1
  end
end
local top = tonumber(ARGV[1])
if top > tonumber(redis.call('GET', KEYS[3]) or '0') then redis.call('SET', KEYS[3], top) end
return applied
"""

Snapshot = Callable[[], tuple[int, list[dict]]]


class LiveTableError(Exception):
    """A live-table operation failed; the message names the Redis address and the key prefix."""


def entry_of(event: dict) -> dict:
    """The snapshot entry of an event message (docs/alarm-pipeline.md)."""
    entry = {f: event.get(f) for f in ENTRY_FIELDS}
    entry["updated_ms"] = event["time_ms"]
    entry["event_seq"] = event["event_seq"]
    return entry


def journal_snapshot(journal: Any) -> tuple[int, list[dict]]:
    """``(event_seq, entries)`` from a Journal: the last event of every key not NORMAL.

    The seq is read first: an event journaled between the two reads is then in the entries and
    replayed once more afterwards, which the per-key check makes harmless (read in the other order
    it could be missed).
    """
    seq = journal.last_seq()
    # the journal holds each event's message as AlarmEvent.encode wrote it (validated then): read as it is
    return seq, [entry_of(orjson.loads(v)) for v in journal.latest_values()]


def redis_client(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A client on its own ConnectionPool (redis-py: thread-safe, fork-safe by pid check)."""
    pool = redis.ConnectionPool.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                         health_check_interval=30)
    return redis.Redis(connection_pool=pool)


def _where(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis {kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}/{kw.get('db', 0)}"


def read_active(client: redis.Redis, prefix: str) -> dict[str, dict]:
    """The current alarms: alarm key -> snapshot entry (one HGETALL). Any thread."""
    raw = client.hgetall(f"{prefix}:alarms:active")
    return {k.decode(): json.loads(v) for k, v in raw.items()}


class LiveTable:
    """Applies journal rows to the Redis table; the sink of a HistoryWriter thread (see module doc)."""

    def __init__(self, client: redis.Redis, prefix: str, snapshot: Snapshot) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"live table: prefix must be non-empty without blanks, got {prefix!r}")
        self.client, self.prefix, self._snapshot = client, prefix, snapshot
        self.where = f"{_where(client)} prefix {prefix}"
        self.keys = [f"{prefix}:alarms:active", f"{prefix}:alarms:key_seq", f"{prefix}:alarms:seq",
                     f"{prefix}:alarms:base"]
        self._apply = client.register_script(_APPLY)
        self.resyncs = 0

    # -- the HistoryWriter sink -------------------------------------------------------------
    def resume_seq(self) -> int:
        """Resync from the snapshot and return its event_seq: the writer reads the journal after it."""
        return self.resync()

    def write(self, rows: Sequence[Any]) -> None:
        """Apply journal rows (JournalRow: event_seq, key, value JSON), in seq order."""
        self.apply_events(json.loads(r.value) for r in rows)

    # -- operations ---------------------------------------------------------------------------
    def apply_events(self, events: Iterable[dict]) -> int:
        """Apply event messages (dicts); returns how many changed the table. Older/replayed: no-op."""
        applied, args, top = 0, [], 0
        for ev in events:
            top = max(top, ev["event_seq"])
            if ev.get("transition") == "info":
                continue               # info events never enter the table; they only move seq
            doc = "" if ev["state"] == "NORMAL" else json.dumps(entry_of(ev), ensure_ascii=False,
                                                                separators=(",", ":"))
            args += [ev["alarm"]["key"], ev["event_seq"], doc]
            if len(args) >= 3 * CHUNK:
                applied += self._run(top, args)
                args = []
        if args or top:
            applied += self._run(top, args)
        return applied

    def _run(self, top: int, args: list) -> int:
        try:
            return int(self._apply(keys=self.keys, args=[top, *args]))
        except redis.RedisError as exc:
            raise LiveTableError(f"live table {self.where}: apply failed: {exc}") from exc

    def resync(self) -> int:
        """Replace the whole table by the snapshot in one transaction; returns the snapshot's seq."""
        seq, entries = self._snapshot()
        active, key_seq, seq_key, base = self.keys
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(active, key_seq)
                if entries:
                    pipe.hset(active, mapping={e["alarm"]["key"]: json.dumps(e, ensure_ascii=False,
                                                                              separators=(",", ":"))
                                               for e in entries})
                pipe.set(base, seq)
                pipe.set(seq_key, seq)
                pipe.execute()
        except redis.RedisError as exc:
            raise LiveTableError(f"live table {self.where}: resync failed: {exc}") from exc
        self.resyncs += 1
        return seq

    def applied_seq(self) -> int:
        """``<prefix>:alarms:seq``: the table is current up to this event."""
        return int(self.client.get(self.keys[2]) or 0)

    def clear(self) -> None:
        """Delete every key of this prefix's table (tests, decommissioning)."""
        self.client.delete(*self.keys)
