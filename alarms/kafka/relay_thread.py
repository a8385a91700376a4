"""The thread and counters both journal relays share (the alarm relay, ``alarms/kafka/relay.py``, and the
command audit relay, ``gateway/commands/audit.py``): start once, wake on new rows, stop and join, stats.

A subclass sets ``THREAD_NAME`` and implements ``_run`` (the relay thread's body, which returns once
``_stopping`` is set) and passes its counters' names to ``__init__``.

Threading: ``start``/``stop`` from the owner thread; ``wake``, ``alive`` and ``stats`` from any
thread; ``_count`` from the relay thread (and its delivery callbacks); ``_lock`` guards ``_stats``.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod


class RelayThread(ABC):
    """One relay thread with its wake-up event, stop flag and locked counters (see the module doc)."""

    THREAD_NAME = "relay"

    def __init__(self, stats: dict) -> None:
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()          # guards _stats for readers in other threads
        self._stats = stats

    def start(self):
        """Start the relay thread; returns self. Owner thread."""
        if self._thread is not None:
            raise RuntimeError(f"{self.THREAD_NAME}: already started")
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """New rows were journaled. Any thread."""
        self._wake.set()

    def stop(self, timeout_s: float) -> None:
        """Ask the relay thread to flush and end, and join it for up to ``timeout_s``. Owner thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        """The relay thread runs (False before start, after stop, or after an unexpected error). Any thread."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict:
        """Counts (messages) for status. Any thread."""
        with self._lock:
            return dict(self._stats)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n

    @abstractmethod
    def _run(self) -> None:
        """The relay thread's body: relay until ``_stopping`` is set, then flush and return."""
