"""Retention: the thread that prunes the alarm journal and the alarm history.

Nothing else deletes alarm events. The alarm stage (``gateway/app/alarm_stage.py``) builds one
:class:`RetentionPruner` beside the history writers, starts it after them and stops it before
them. Once ``first_run_s`` after start, then every ``interval_s`` (default 3600 s), one round::

    floor = floor()                    # the writers' lowest watermark (writers_floor); None: unknown
    floor is None   -> journal not pruned this round (``skipped``)
    else            -> Journal.prune(now - journal_retention_days, keep_after_seq=floor)
    history given   -> HistoryStore.prune(now - history_retention_days, gateway_id)
    journal_bytes, history_bytes measured

The journal keeps every row something still needs (see ``Journal.prune``): the alarm table's last
events, what the Kafka relay has not delivered, what a history writer has not copied (rows above
``floor``) and the newest row. A writer that does not know its watermark yet (not started, its
store never answered) makes ``floor`` None: nothing is pruned until it does, so an outage at start
cannot lose a row the history still needs. The relay republishes the current day when the
embedded broker restarts (``alarms/kafka/relay.py``): a journal retention under a day thins that
replay to the rows still needed.

Batches are short write transactions (``batch`` rows) with ``pause_s`` between them, so the alarm
thread, whose append waits on SQLite's busy lock, is held up for one batch at most; ``stop`` ends
a round between two batches. The journal is opened for each round with ``fsync_commits=False`` (a
prune lost in a power cut only runs again), which also moves the WAL checkpoints of the deletes
into this thread.

Threading: the rounds run in the pruner's own thread, which opens its own Journal (the journal's
one-object-per-thread rule). The history store may be the one the history writer uses (stores are
thread-safe). ``start``, ``stop`` and ``stats`` may be called from any thread; ``run_once`` from
the pruner thread, or from the caller while the thread is not started (tests, tools).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from alarms.journal import Journal, disk_bytes

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
#: ``floor()`` answer when no writer holds rows back (every old row may go)
NO_FLOOR = 2 ** 63 - 1


def writers_floor(writers: Iterable[Any], resyncing: Iterable[str] = ()) -> int | None:
    """The lowest watermark of the HistoryWriters that still need journal rows, for
    ``RetentionPruner(floor=...)``; None when one of them does not know its watermark yet.

    A writer named in ``resyncing`` (the live table) rebuilds its sink from the journal's ``latest``
    after every failure, so it holds rows back only while it runs. Any thread (reads ``stats()``).
    """
    resync = set(resyncing)
    floor = NO_FLOOR
    for w in writers:
        st = w.stats()
        if w.name in resync and st["state"] != "running":
            continue
        if st["watermark"] is None:
            return None
        floor = min(floor, st["watermark"])
    return floor


def _wall_ms() -> int:
    return int(time.time() * 1000)


class RetentionPruner:
    """One thread pruning the journal (and the history store, when given); see the module doc."""

    def __init__(self, journal_path: str, floor: Callable[[], int | None], *, history: Any = None,
                 gateway_id: int | None = None, journal_retention_days: float = 7.0,
                 history_retention_days: float = 90.0, interval_s: float = 3600.0, first_run_s: float = 10.0,
                 batch: int = 5000, pause_s: float = 0.005, clock_ms: Callable[[], int] = _wall_ms,
                 open_journal: Callable[[str], Journal] | None = None) -> None:
        """``floor``: see :func:`writers_floor`; ``history``: a HistoryStore or None; ``gateway_id``:
        the history rows to prune (None: every gateway's); ``clock_ms``: the clock of the events'
        ``time_ms`` (the line's)."""
        if not (journal_retention_days > 0 and history_retention_days > 0 and interval_s > 0
                and first_run_s >= 0 and batch >= 1 and pause_s >= 0):
            raise ValueError("retention: need retention days > 0, interval_s > 0, first_run_s >= 0, "
                             "batch >= 1, pause_s >= 0")
        self.journal_path, self.floor, self.history, self.gateway_id = journal_path, floor, history, gateway_id
        self.journal_retention_days, self.history_retention_days = journal_retention_days, history_retention_days
        self.interval_s, self.first_run_s, self.batch, self.pause_s = interval_s, first_run_s, batch, pause_s
        self.clock_ms = clock_ms
        self._open_journal = open_journal or (lambda path: Journal(path, fsync_commits=False))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {
            "runs": 0, "deleted": 0, "history_deleted": 0, "skipped": 0, "failures": 0, "last_error": None,
            "last_run_ms": None, "history_bytes": None, "retention_days": journal_retention_days,
            "history_retention_days": history_retention_days if history is not None else None,
            "interval_s": interval_s}
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    # -- any thread -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """End the thread (a round in progress stops after its current batch); True when it ended.
        Any thread but the pruner's."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stats(self) -> dict:
        """``runs``, ``deleted`` (journal rows, total), ``history_deleted``, ``skipped`` (rounds
        without a journal prune: a writer's watermark unknown), ``failures``, ``last_error``,
        ``last_run_ms`` (epoch ms of the last round's end), ``journal_bytes`` (now),
        ``history_bytes`` (at the last round; None before it or when the store did not answer),
        ``retention_days``, ``history_retention_days``, ``interval_s``. Any thread; never blocks
        on the database."""
        with self._lock:
            out = dict(self._stats)
        out["journal_bytes"] = disk_bytes(self.journal_path)
        return out

    # -- the pruner thread ------------------------------------------------------------------
    def run_once(self) -> dict:
        """One round (see the module doc); returns ``{"deleted", "history_deleted", "skipped"}`` of
        it. Never raises: a failure is counted and logged, and the next round tries again."""
        now = self.clock_ms()
        done = {"deleted": 0, "history_deleted": 0, "skipped": False}
        errors: list[str] = []
        pause = self._pause
        try:
            floor = self.floor()
            if floor is None:
                done["skipped"] = True
                log.info("retention: a history writer does not know its watermark yet; journal not pruned")
            else:
                journal = self._open_journal(self.journal_path)
                try:
                    done["deleted"] = journal.prune(now - int(self.journal_retention_days * DAY_MS),
                                                    keep_after_seq=floor, batch=self.batch, between_batches=pause)
                finally:
                    journal.close()
        except Exception as exc:   # noqa: BLE001 - reported in stats; the next round retries
            errors.append(f"journal: {type(exc).__name__}: {exc}")
        history_bytes = None
        if self.history is not None and not self._stop.is_set():
            try:
                self.history.ensure_schema()
                done["history_deleted"] = self.history.prune(
                    now - int(self.history_retention_days * DAY_MS), gateway_id=self.gateway_id,
                    batch=self.batch, between_batches=pause)
                history_bytes = self.history.disk_bytes()
            except Exception as exc:   # noqa: BLE001 - e.g. MySQL down: the history is pruned next round
                errors.append(f"history {getattr(self.history, 'where', '?')}: {type(exc).__name__}: {exc}")
        with self._lock:
            s = self._stats
            s["runs"] += 1
            s["deleted"] += done["deleted"]
            s["history_deleted"] += done["history_deleted"]
            s["skipped"] += done["skipped"]
            s["failures"] += bool(errors)
            s["last_error"] = "; ".join(errors) or None
            s["last_run_ms"] = self.clock_ms()
            s["history_bytes"] = history_bytes
        for err in errors:
            log.warning("retention: %s; next try in %.0f s", err, self.interval_s)
        if done["deleted"] or done["history_deleted"]:
            log.info("retention: deleted %d journal and %d history rows", done["deleted"], done["history_deleted"])
        return done

    def _pause(self) -> bool:
        """Between two batches: let the other writers in; True (stop the round) once stopping."""
        return self._stop.wait(self.pause_s)

    def _run(self) -> None:
        delay = self.first_run_s
        while not self._stop.wait(delay):
            self.run_once()
            delay = self.interval_s
