"""IO threads, each running one EventLoop; new links spread over them.

Who calls it, and from which thread: the gateway builds an
:class:`EventLoopThreadPool` around its base loop, and calls ``start``,
``next_loop``, ``loop_for_hash`` and ``stop`` from the base loop's thread (the
acceptor picks the loop for each new connection there). The pool's threads
only run their loops; all work reaches them through ``run_in_loop``.
``home_loop`` is called from the IO loops (a link's HELLO names its device):
it takes the pool's lock.

A device's home loop: both links of a device (net A and net B) carry the same
frames, and the first copy is applied to the device's sender window and its
objects. On two loops, each of those frames moves the sender's state and the
objects' cache lines between two cores and the two loops take the sender's
lock against each other; on one loop neither happens. So a link is accepted
on the next loop round-robin (the device is not known before its HELLO) and,
once its HELLO names the device, the connection moves to the device's home
loop (``TcpConnection`` module doc, "Moving to the device's loop"). The home
is the loop with the fewest devices when the device first says HELLO, and
stays the device's for the pool's life.

muduo's ``EventLoopThread`` / ``EventLoopThreadPool``: the loop is built
*inside* its thread (a loop belongs to the thread that constructs it), and
``start_loop`` waits until it exists, so the caller gets a loop that can be
used at once.

With ``n == 0`` there are no IO threads: ``next_loop`` returns the base loop,
which then does everything (a single-threaded gateway, handy for debugging).
"""
from __future__ import annotations

import logging
import threading

from gateway.net.event_loop import EventLoop

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


class EventLoopThread:
    """A thread that builds an EventLoop, runs it, and closes it when run() returns."""

    def __init__(self, name: str | None = None, init=None) -> None:
        """``init(loop)`` runs in the new thread before the loop starts. Create in any thread."""
        self.name = name
        self._init = init
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: EventLoop | None = None
        self._error: BaseException | None = None

    @property
    def loop(self) -> EventLoop | None:
        """The loop once started (closed once its thread ended), else None. Safe to call from any thread."""
        return self._loop

    def start_loop(self, timeout: float = JOIN_TIMEOUT_S) -> EventLoop:
        """Start the thread; return its loop once it exists. Safe to call from any thread, once."""
        if self._thread is not None:
            raise RuntimeError(f"loop thread {self.name} already started")
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"loop thread {self.name} did not start in {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"loop thread {self.name} failed to start") from self._error
        return self._loop

    def _main(self) -> None:
        try:
            loop = EventLoop(name=self.name)
            if self._init is not None:
                self._init(loop)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run()
        except BaseException:
            log.exception("loop thread %s died", self.name)
            raise
        finally:
            loop.close()

    def stop(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop the loop and join the thread. Safe to call from any thread but the loop's own."""
        if self._thread is None:
            return
        if self._loop is not None:
            self._loop.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("loop thread %s did not stop within %.1f s", self.name, timeout)

    def is_alive(self) -> bool:
        """Safe to call from any thread."""
        return self._thread is not None and self._thread.is_alive()


class EventLoopThreadPool:
    """``n`` IO loop threads around a base loop, picked round-robin or by hash."""

    def __init__(self, base_loop: EventLoop, n: int, name: str = "io", coalesce_ms: float = 0) -> None:
        """Create in the base loop's thread. ``coalesce_ms``: the IO loops' coalescing interval (``EventLoop``
        module doc; the base loop's too when it is the IO loop, ``n == 0``)."""
        if n < 0:
            raise ValueError(f"thread count must be >= 0, got {n}")
        self.base_loop = base_loop
        self.n = n
        self.name = name
        self.coalesce_s = coalesce_ms / 1000
        self._threads: list[EventLoopThread] = []
        self._loops: list[EventLoop] = []
        self._next = 0
        self._started = False
        self._homes: dict[int, EventLoop] = {}     # device id -> its home loop (home_loop)
        self._home_counts: dict[str, int] = {}     # loop name -> devices at home there
        self._home_lock = threading.Lock()

    def start(self, init=None) -> None:
        """Start the ``n`` threads (``init(loop)`` runs in each first). Base loop thread only."""
        self.base_loop.assert_in_loop_thread()
        if self._started:
            raise RuntimeError("loop pool already started")
        self._started = True

        def setup(loop: EventLoop) -> None:
            loop.coalesce_s = self.coalesce_s
            if init is not None:
                init(loop)
        try:
            for i in range(self.n):
                t = EventLoopThread(f"{self.name}-{i}", setup)
                self._threads.append(t)
                self._loops.append(t.start_loop())
        except BaseException:
            self.stop()
            raise
        if self.n == 0:
            setup(self.base_loop)

    def next_loop(self) -> EventLoop:
        """The next IO loop, round-robin; the base loop if there are none. Base loop thread only."""
        self.base_loop.assert_in_loop_thread()
        loops = self._loops
        if not loops:
            return self.base_loop
        loop = loops[self._next]
        self._next = (self._next + 1) % len(loops)
        return loop

    def loop_for_hash(self, h: int) -> EventLoop:
        """The same loop for the same ``h`` (e.g. a device id). Safe to call from any thread once started."""
        loops = self._loops
        return loops[h % len(loops)] if loops else self.base_loop

    def home_loop(self, key: int) -> EventLoop:
        """The home loop of device ``key``: on its first call the IO loop with the fewest devices (the
        first such in loop order), from then on the same loop; the base loop if there are none. Any thread
        (the IO loops call it at a HELLO), once started. ``key`` must come from a bounded set (configured
        device ids): the pool keeps every home for its life."""
        loops = self._loops
        if not loops:
            return self.base_loop
        with self._home_lock:
            loop = self._homes.get(key)
            if loop is None:
                counts = self._home_counts
                loop = min(loops, key=lambda lp: counts.get(lp.name, 0))
                counts[loop.name] = counts.get(loop.name, 0) + 1
                self._homes[key] = loop
            return loop

    def homes(self) -> dict[str, int]:
        """Devices at home on each IO loop, by loop name (status). Any thread."""
        with self._home_lock:
            return {lp.name: self._home_counts.get(lp.name, 0) for lp in self._loops}

    def all_loops(self) -> list[EventLoop]:
        """The IO loops, or ``[base_loop]`` with none (as muduo's getAllLoops). Safe to call from any thread."""
        return list(self._loops) if self._loops else [self.base_loop]

    def stop(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop every IO loop, then join the threads. Safe to call from any thread but the pool's own."""
        for t in self._threads:
            if t.loop is not None:
                t.loop.stop()  # all at once: they wind down in parallel
        for t in self._threads:
            t.stop(timeout)
        self._loops = []
        self._threads = []
        with self._home_lock:
            self._homes.clear()
            self._home_counts.clear()
