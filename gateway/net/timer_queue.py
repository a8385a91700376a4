"""The reactor's timers: a min-heap read through the poll timeout.

Who calls it, and from which thread: one :class:`TimerQueue` belongs to one
``EventLoop`` and is used only from that loop's thread. The loop asks
:meth:`TimerQueue.next_timeout` before each ``epoll.poll`` and calls
:meth:`TimerQueue.run_due` after dispatching IO. Code in other threads goes
through ``loop.call_later`` & co., which hop into the loop thread; a
:class:`TimerHandle`'s ``cancel`` is the one thing safe from anywhere.

Why no timerfd (muduo uses one): with the heap's earliest deadline as the
``epoll.poll`` timeout, a timer costs no syscall of its own, where a timerfd
costs a ``timerfd_settime`` per re-arm and a ``read`` per expiry, on top of
the poll. ``epoll.poll`` rounds its timeout up to whole milliseconds (never
early, up to 1 ms late), plenty for heartbeats of 100 ms and more.

The clock is passed in (the loop passes ``time.monotonic()``), so the queue
is deterministic under test.

Ordering and fairness rules:

* heap entries are ``(when, seq, handle)``: equal deadlines run in the order
  they were added (``seq`` is an insertion counter, so handles are never
  compared);
* ``run_due(now)`` runs only the timers that were due when the pass began: a
  callback that adds a timer for ``now`` (or earlier) does not get it run in
  the same pass, so a timer re-adding itself cannot starve IO;
* a repeating timer is re-armed at ``when + interval``; if the loop was late
  by several intervals, the missed beats are skipped (counted), not run as a
  burst;
* ``cancel`` is lazy: the entry stays in the heap, marked, and is dropped
  when it reaches the top; when more than half the heap is cancelled entries
  it is rebuilt without them, so cancel-heavy use (a hello timeout per link,
  almost always cancelled) cannot grow it without bound.
"""
from __future__ import annotations

import heapq
import logging
import math

log = logging.getLogger(__name__)

#: heaps at most this big are never rebuilt (dead entries just pop off the top)
COMPACT_MIN = 16


class TimerHandle:
    """One scheduled callback; returned by ``add`` (and ``loop.call_*``)."""

    __slots__ = ("when", "interval", "callback", "args", "cancelled", "_queue", "_in_heap")

    def __init__(self, when: float, callback, args: tuple = (), interval: float | None = None) -> None:
        """Create in any thread; it runs once added to a queue."""
        if interval is not None and not interval > 0:
            raise ValueError(f"a repeating timer needs an interval > 0, got {interval}")
        self.when = when
        self.interval = interval
        self.callback = callback
        self.args = args
        self.cancelled = False
        self._queue: TimerQueue | None = None
        self._in_heap = False

    def cancel(self) -> None:
        """Stop the timer (and its repeats). Safe to call from any thread.

        From the loop thread it is exact: the callback does not run after
        this returns. From another thread a timer already popped for the
        current pass may still run once.
        """
        if self.cancelled:
            return
        self.cancelled = True  # one store: the loop sees it before the next run
        q = self._queue
        if q is not None and self._in_heap:
            # Only feeds the compaction heuristic; a lost increment from a
            # racing thread makes it compact a little later, nothing worse.
            q._cancelled += 1

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else ("every %gs" % self.interval if self.interval else "once")
        return f"<TimerHandle {getattr(self.callback, '__qualname__', self.callback)} at {self.when:.3f} {state}>"


class TimerQueue:
    """Min-heap of timers, run by the owning loop with the clock passed in."""

    def __init__(self) -> None:
        """Create in the loop thread (or before the loop runs)."""
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = 0
        self._cancelled = 0   # cancelled entries still in the heap
        self.fired = 0        # callbacks run
        self.missed = 0       # repeat beats skipped because the loop was late
        self.errors = 0       # callbacks that raised
        self.compactions = 0

    # -- scheduling --------------------------------------------------------------------------
    def add(self, when: float, callback, interval: float | None = None, args: tuple = ()) -> TimerHandle:
        """Run ``callback(*args)`` at ``when`` (then every ``interval`` s if given). Loop thread only."""
        return self.add_handle(TimerHandle(when, callback, args, interval))

    def add_handle(self, handle: TimerHandle) -> TimerHandle:
        """Schedule a handle made elsewhere (``loop.call_at`` from another thread). Loop thread only.

        A handle cancelled before it got here is not scheduled.
        """
        if handle._queue is not None and handle._queue is not self:
            raise ValueError("a timer handle belongs to one queue")
        handle._queue = self
        if not handle.cancelled:
            self._push(handle)
        return handle

    def _push(self, handle: TimerHandle) -> None:
        seq = self._seq
        self._seq = seq + 1
        handle._in_heap = True
        heapq.heappush(self._heap, (handle.when, seq, handle))
        self._maybe_compact()

    # -- reading -------------------------------------------------------------------------------
    def next_timeout(self, now: float) -> float | None:
        """Seconds from ``now`` until the earliest live timer (0 if due), None if none. Loop thread only."""
        self._maybe_compact()
        heap = self._heap
        while heap and heap[0][2].cancelled:
            self._drop_top()
        if not heap:
            return None
        return max(0.0, heap[0][0] - now)

    def __len__(self) -> int:
        """Live (not cancelled) timers. Loop thread only."""
        return len(self._heap) - self._cancelled

    @property
    def heap_size(self) -> int:
        """Heap entries, cancelled ones included. Loop thread only."""
        return len(self._heap)

    # -- running -------------------------------------------------------------------------------
    def run_due(self, now: float) -> int:
        """Run the timers due at ``now``; return how many ran. Loop thread only.

        Exceptions from callbacks are logged and counted; the remaining
        timers still run, and a repeating timer stays armed.
        """
        heap = self._heap
        if not heap or heap[0][0] > now:
            return 0
        # Pop everything due first: what callbacks add from here on waits for
        # the next pass, whatever its deadline.
        due = []
        while heap and heap[0][0] <= now:
            _, _, handle = heapq.heappop(heap)
            handle._in_heap = False
            if handle.cancelled:
                self._uncount()
            else:
                due.append(handle)
        ran = 0
        for handle in due:
            if handle.cancelled:  # cancelled by an earlier callback of this pass
                continue
            ran += 1
            try:
                handle.callback(*handle.args)
            except Exception:
                self.errors += 1
                log.exception("timer callback %r raised", handle)
            if handle.interval is not None and not handle.cancelled:
                self._rearm(handle, now)
        self.fired += ran
        return ran

    def _rearm(self, handle: TimerHandle, now: float) -> None:
        when, interval = handle.when, handle.interval
        # The first beat strictly after now: a loop late by several intervals
        # skips the beats it missed instead of running them back to back.
        k = math.floor((now - when) / interval) + 1 if now >= when else 1
        nxt = when + k * interval
        while nxt <= now:  # float rounding at an exact multiple
            k += 1
            nxt = when + k * interval
        self.missed += k - 1
        handle.when = nxt
        self._push(handle)

    # -- lazy deletion -----------------------------------------------------------------------
    def _drop_top(self) -> None:
        _, _, handle = heapq.heappop(self._heap)
        handle._in_heap = False
        self._uncount()

    def _uncount(self) -> None:
        # A cancel from another thread racing the push may have gone
        # uncounted; never let the estimate go below zero.
        if self._cancelled > 0:
            self._cancelled -= 1

    def _maybe_compact(self) -> None:
        # The floor keeps tiny heaps from being rebuilt over and over; popping
        # a few dead entries off the top costs less than a rebuild.
        if self._cancelled * 2 > len(self._heap) > COMPACT_MIN:
            self.compact()

    def compact(self) -> None:
        """Rebuild the heap without cancelled entries. Loop thread only."""
        keep = []
        for entry in self._heap:
            if entry[2].cancelled:
                entry[2]._in_heap = False
            else:
                keep.append(entry)
        heapq.heapify(keep)
        self._heap = keep
        self._cancelled = 0
        self.compactions += 1

    def stats(self) -> dict:
        """Counters. Safe to call from any thread (a snapshot of plain ints)."""
        return {"timers": len(self._heap) - self._cancelled, "heap_size": len(self._heap), "fired": self.fired,
                "missed": self.missed, "errors": self.errors, "compactions": self.compactions}
