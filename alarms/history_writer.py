"""The history thread: copies journaled alarm events into a sink, catching up after outages.

A :class:`HistoryWriter` follows the journal from its own watermark::

    watermark = sink.resume_seq()                 # store.max_event_seq(gateway_id) for history
    loop: rows = journal.read_after(watermark, batch)
          sink.write(rows)                        # one transaction: insert_batch / Lua apply
          watermark = rows[-1].event_seq
          nothing left: sleep until wake() or poll_s

When the sink fails (MySQL or Redis down, at start too: a writer starts whether or not its
store answers; a connection cut mid-batch) the writer backs off
(bounded exponential: backoff_min_s doubling up to backoff_max_s), then asks the sink for its
watermark again and goes on from there. The journal keeps every event, so the gap is filled
afterwards; asking again (instead of trusting its own copy) also covers a batch that committed
but whose answer was lost, and lets the live table resync.

Two sinks: :class:`HistorySink` (a HistoryStore) and ``alarms.live.live_table.LiveTable``; the
service runs one writer per sink so an outage of one does not hold up the other.

Threading: the writer opens its own Journal on the file inside its thread (the journal's
one-object-per-thread rule). ``start``, ``wake``, ``stop`` and ``stats`` may be called from any
thread; ``wake`` is cheap (sets an Event) and is what the alarm thread calls after each append.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Protocol, Sequence

log = logging.getLogger(__name__)


class Sink(Protocol):
    where: str

    def resume_seq(self) -> int:
        """The event_seq to read after; called at start and after every failure."""

    def write(self, rows: Sequence[Any]) -> None:
        """Store the rows (seq order, consecutive from resume_seq) atomically, or raise."""


class HistorySink:
    """A HistoryStore as a writer sink; the watermark is the store's max_event_seq for the gateway.

    The store may be one built with ``migrate=False`` (nothing contacted yet): its schema is
    brought up here, in the writer thread, so a server that is down at start is one more failure
    to back off from, not a gateway that cannot start."""

    def __init__(self, store: Any, gateway_id: int) -> None:
        self.store, self.gateway_id, self.where = store, gateway_id, store.where

    def resume_seq(self) -> int:
        self.store.ensure_schema()
        return self.store.max_event_seq(self.gateway_id)

    def write(self, rows: Sequence[Any]) -> None:
        self.store.insert_batch(rows)


def _open_journal(path: str) -> Any:
    from alarms.journal import Journal
    return Journal(path)


class HistoryWriter:
    """One thread copying the journal into one sink (see the module doc)."""

    def __init__(self, journal_path: str, sink: Sink, *, name: str = "history", batch: int = 500,
                 poll_s: float = 0.5, backoff_min_s: float = 0.1, backoff_max_s: float = 5.0,
                 open_journal: Callable[[str], Any] = _open_journal) -> None:
        if batch < 1 or poll_s <= 0 or not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(f"history writer {name}: need batch >= 1, poll_s > 0, "
                             f"0 < backoff_min_s <= backoff_max_s")
        self.journal_path, self.sink, self.name = journal_path, sink, name
        self.batch, self.poll_s = batch, poll_s
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self._open_journal = open_journal
        self._wake = threading.Event()
        self._stop_at: float | None = None       # monotonic deadline once stop() was called
        self._lock = threading.Lock()
        self._stats = {"written": 0, "batches": 0, "failures": 0, "lag_events": 0, "watermark": None,
                       "last_error": None, "state": "new"}
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)

    # -- any thread -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """New events were journaled: look now rather than at the next poll. Any thread."""
        self._wake.set()

    def stats(self) -> dict:
        """``written`` rows, ``batches``, ``failures``, ``lag_events`` (journaled, not yet written),
        ``watermark``, ``last_error`` (text or None), ``state`` (running/backoff/stopped). Any thread."""
        with self._lock:
            return dict(self._stats)

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Write what is still journaled (within ``timeout_s``), then end the thread.

        Returns True when the thread ended with nothing left to write. Any thread but the writer's.
        """
        self._stop_at = time.monotonic() + timeout_s
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s + 1.0)
        return not self._thread.is_alive() and self.stats()["lag_events"] == 0

    # -- the writer thread --------------------------------------------------------------------
    def _set(self, **kw: Any) -> None:
        with self._lock:
            self._stats.update(kw)

    def _stopping(self) -> bool:
        return self._stop_at is not None

    def _run(self) -> None:
        journal = None
        watermark: int | None = None
        backoff = self.backoff_min_s
        outage = 0                 # failures in a row: the first is a warning, the rest debug, the end info
        try:
            while True:
                try:
                    if journal is None:
                        journal = self._open_journal(self.journal_path)
                    if watermark is None:
                        watermark = self.sink.resume_seq()
                        self._set(watermark=watermark, state="running")
                        if outage:
                            log.info("history writer %s (%s): back after %d failed attempts; catching up "
                                     "from event_seq %d", self.name, self.sink.where, outage, watermark)
                            outage = 0
                    # seen before the read: events journaled just before stop() are read once more
                    stop_seen = self._stopping()
                    rows = journal.read_after(watermark, self.batch)
                    if rows:
                        self.sink.write(rows)
                        watermark = rows[-1].event_seq
                        backoff = self.backoff_min_s
                        with self._lock:
                            self._stats["written"] += len(rows)
                            self._stats["batches"] += 1
                            self._stats["watermark"] = watermark
                    self._set(lag_events=max(0, journal.last_seq() - watermark))
                except Exception as exc:   # noqa: BLE001 - any sink or journal failure: back off, retry
                    watermark = None       # re-derived from the sink once it answers again
                    lag = self._lag(journal)
                    with self._lock:
                        if lag is not None:
                            self._stats["lag_events"] = lag
                        self._stats["failures"] += 1
                        self._stats["last_error"] = f"{type(exc).__name__}: {exc}"
                        self._stats["state"] = "backoff"
                    outage += 1
                    log.log(logging.WARNING if outage == 1 else logging.DEBUG,
                            "history writer %s (%s): %s; retry in %.1f s (failure %d in a row)", self.name,
                            self.sink.where, exc, backoff, outage)
                    if self._sleep(backoff):
                        return
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                if rows and len(rows) == self.batch:
                    if self._stop_at is not None and time.monotonic() >= self._stop_at:
                        return
                    continue           # more is waiting: no sleep
                if stop_seen:
                    return             # drained: the read began after stop() was called
                self._sleep(self.poll_s)
        finally:
            self._set(state="stopped")
            if journal is not None:
                journal.close()

    def _lag(self, journal: Any) -> int | None:
        """Journaled but not yet written, from the last good watermark (None: journal unreadable)."""
        try:
            return max(0, journal.last_seq() - (self.stats()["watermark"] or 0)) if journal else None
        except Exception:          # noqa: BLE001 - the journal's own error is reported by the loop
            return None

    def _sleep(self, seconds: float) -> bool:
        """Wait for wake() or ``seconds``; True when stopping and the stop deadline has passed."""
        if self._stop_at is not None:
            seconds = min(seconds, max(0.0, self._stop_at - time.monotonic()))
        self._wake.wait(seconds)
        self._wake.clear()
        return self._stop_at is not None and time.monotonic() >= self._stop_at
