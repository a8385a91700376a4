"""The reactor: one epoll loop per thread, muduo style.

Who calls it, and from which thread: each IO thread (and the base thread)
constructs one :class:`EventLoop` and calls :meth:`EventLoop.run`; the loop is
owned by the thread that built it. Links, acceptors and the UDP endpoint
register their fds and timers from that thread. Other threads talk to a
loop only through :meth:`EventLoop.run_in_loop`, :meth:`EventLoop.queue_in_loop`,
the ``call_*`` timer methods, :meth:`EventLoop.stop` and :meth:`EventLoop.stats`.

One iteration::

    [coalesce: woken with events less than coalesce_s ago? wait out the rest, never past a timer]
    poll(timeout = earliest timer, capped at 1 s; 0 if functors wait)
      -> dispatch IO events to their handlers
      -> run timers due at the time of this pass
      -> run pending functors (the list swapped out under the lock)

Coalescing (``coalesce_s``, the IO loops' ``gateway.loop_coalesce_ms``; 0 for
other loops): interrupt moderation, as a network driver's NAPI. A loop whose
last poll returned events less than ``coalesce_s`` ago sleeps the rest of that
interval before it polls again (never past its next timer; ``_polling`` is set
meanwhile, so a cross-thread call still writes the eventfd and the poll returns
at once). Under load one wake-up then collects several links' frames instead of
one wake-up per frame: at line load (2,000 links x 10 frames/s) 1 ms took the
gateway from 25.0 to 22.2 % of a core, and a frame waits at most 1 ms more. A
loop woken by its timers or after a quiet spell polls at once.

fd lifetime. The loop never owns a descriptor: ``register(fd, ...)`` records a
handler, and the caller keeps the socket. The owner must ``unregister(fd)``
before it closes the socket, because the kernel reuses the lowest free fd
number at once: a new connection accepted a microsecond later gets the same
number, and an epoll entry (or a handler in our table) left behind would
deliver the old socket's story to the new one. Closing first is also
wrong with dup'd descriptors, where epoll keeps reporting the dead number.
Within one batch of events a handler may close and unregister another fd,
or even register a new socket that got the same number; the loop drops
events for fds no longer registered and for registrations newer than the
batch.

Edge-triggered rules. Everything is registered with EPOLLET: epoll reports a
transition once, not a state on every poll, which saves a syscall per busy
socket per iteration, and in exchange the handler must:

* read until EAGAIN, since a readiness left unread is not reported again; but a
  short read on a stream socket (fewer bytes than asked) means the kernel
  buffer is drained, so skip the extra read that would only say EAGAIN;
* write directly when nothing is queued (most sends then cost one syscall
  and no copy), and queue only the unsent rest;
* enable EPOLLOUT only while output is pending, then turn it off: a
  writable socket is the normal state and would only wake the loop;
* stop reading when its input buffer is full (backpressure): the kernel's
  receive window then pushes back on the peer. Under ET it must re-read once
  room is made, as no new edge will come for bytes already waiting.

Cross-thread calls (muduo ``doPendingFunctors``): ``queue_in_loop`` appends
under a lock, and the loop swaps the whole list out under the lock and runs
it unlocked, so a functor may queue more without deadlock and producers wait
only for an append. The eventfd is written only when the loop might otherwise
sleep in poll: from another thread, while the loop runs functors (the swapped
list is already taken), or from a signal handler while it polls; and at most
once until the loop takes the list.

Exceptions in handlers, timers and functors are logged and counted; they do
not stop the loop.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time

from gateway.net import compiled
from gateway.net.timer_queue import TimerHandle

log = logging.getLogger(__name__)

#: the longest poll: a cap, so a loop with no timers still notices a lost wake-up
MAX_POLL_S = 1.0

_tls = threading.local()


class Channel:
    """One registration: fd, event mask, handler. It does not own the fd."""

    __slots__ = ("fd", "events", "handler", "epoch")

    def __init__(self, fd: int, events: int, handler, epoch: int) -> None:
        self.fd = fd
        self.events = events
        self.handler = handler
        self.epoch = epoch  # the poll count when registered: older events are not ours

    def __repr__(self) -> str:
        return f"<Channel fd={self.fd} events={self.events:#x} {getattr(self.handler, '__qualname__', '')}>"


class EventLoop:
    """An epoll reactor bound to the thread that constructs it."""

    def __init__(self, name: str | None = None, *, clock=time.monotonic) -> None:
        """Construct in the thread that will run it. A second live loop in one thread raises."""
        current = getattr(_tls, "loop", None)
        if current is not None and not current._closed:
            raise RuntimeError(f"thread {threading.current_thread().name} already has an event loop "
                               f"({current.name})")
        self.name = name or threading.current_thread().name
        self.clock = clock
        self.thread_id = threading.get_ident()
        self._epoll = select.epoll()  # CPython opens it with EPOLL_CLOEXEC
        core = compiled.reactor()
        #: epoll_wait + dispatch in C when built (same semantics as _dispatch); registration stays here
        self._poller = core.Poller(self._epoll.fileno()) if core is not None else None
        self._wakeup_fd = -1
        try:
            self._wakeup_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._epoll.register(self._wakeup_fd, select.EPOLLIN | select.EPOLLET)
        except BaseException:
            self._epoll.close()
            if self._wakeup_fd >= 0:
                os.close(self._wakeup_fd)
            raise
        self._channels: dict[int, Channel] = {}
        self._timers = compiled.new_timer_queue()  # (the heap in C when built: gateway/net/_timers.pyx)
        # Re-entrant: a signal handler runs in the loop thread between any two
        # bytecodes, possibly while this thread holds the lock, and may queue.
        self._lock = threading.RLock()
        self._pending: list = []
        self._wake_pending = False  # an eventfd write the loop has not consumed yet
        self._calling_pending = False
        self._polling = False
        self._running = False
        self._quit = False
        self._closed = False
        self._polls = 0
        #: the coalescing interval (module doc), seconds; set before run() by the loop's owner
        self.coalesce_s = 0.0
        self._woke = 0.0             # time.monotonic() when the last poll returned
        self._busy = False           # the last poll returned events
        # counters, each written by the loop thread only
        self.iterations = 0
        self.events = 0
        self.coalesced = 0           # polls put off by coalescing
        self.functors_run = 0
        self.wakeups = 0
        self.callback_errors = 0
        self.dropped_functors = 0
        _tls.loop = self

    # -- threads -----------------------------------------------------------------------------
    def is_in_loop_thread(self) -> bool:
        """Safe to call from any thread."""
        return threading.get_ident() == self.thread_id

    def assert_in_loop_thread(self) -> None:
        """Raise RuntimeError unless called in the loop's thread. Safe to call from any thread."""
        if threading.get_ident() != self.thread_id:
            raise RuntimeError(f"loop {self.name} used from thread {threading.current_thread().name}, "
                               f"not its own")

    @staticmethod
    def current() -> EventLoop | None:
        """The live loop of the calling thread, if any. Safe to call from any thread."""
        loop = getattr(_tls, "loop", None)
        return loop if loop is not None and not loop._closed else None

    # -- fd registration ---------------------------------------------------------------------
    def register(self, fd: int, events: int, handler) -> Channel:
        """Watch ``fd`` (EPOLLET is added); ``handler(mask)`` gets the epoll event mask. Loop thread only."""
        self.assert_in_loop_thread()
        if fd in self._channels:
            raise ValueError(f"fd {fd} is already registered on loop {self.name}")
        events |= select.EPOLLET
        self._epoll.register(fd, events)
        ch = self._channels[fd] = Channel(fd, events, handler, self._polls)
        if self._poller is not None:
            self._poller.add(fd, handler, self._polls)
        return ch

    def modify(self, fd: int, events: int) -> None:
        """Change the event mask of a registered fd (EPOLLET is added). Loop thread only."""
        self.assert_in_loop_thread()
        ch = self._channels[fd]
        events |= select.EPOLLET
        if events != ch.events:  # links flip EPOLLOUT a lot; skip the no-op syscall
            self._epoll.modify(fd, events)
            ch.events = events

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``; call BEFORE closing it. KeyError if not registered. Loop thread only."""
        self.assert_in_loop_thread()
        del self._channels[fd]
        if self._poller is not None:
            self._poller.remove(fd)
        try:
            self._epoll.unregister(fd)
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.ENOENT):
                raise
            # closed first: the kernel already dropped it; say so, it is a latent reuse bug
            log.warning("loop %s: fd %d was closed before unregister", self.name, fd)

    # -- cross-thread calls --------------------------------------------------------------------
    def run_in_loop(self, fn, *args) -> None:
        """Run ``fn(*args)`` now if in the loop thread, else queue it. Safe to call from any thread.

        Run now, an exception goes to the caller (a handler's own error path).
        """
        if threading.get_ident() == self.thread_id:
            fn(*args)
        else:
            self.queue_in_loop(fn, *args)

    def queue_in_loop(self, fn, *args) -> None:
        """Run ``fn(*args)`` in the loop thread after the current IO and timers. Safe to call from any thread.

        Functors run in the order queued. A closed loop drops them (counted, logged).
        """
        with self._lock:
            if self._closed:
                self.dropped_functors += 1
                log.warning("loop %s is closed: dropped %r", self.name, fn)
                return
            self._pending.append((fn, args))
            if not self._wake_pending and (threading.get_ident() != self.thread_id or self._calling_pending
                                           or self._polling):
                self._wakeup_locked()

    def _wakeup_locked(self) -> None:
        # Called holding the lock, so close() cannot close the eventfd (and
        # let its number be reused by another socket) between check and write.
        if not self._closed:
            self._wake_pending = True
            os.eventfd_write(self._wakeup_fd, 1)

    def _on_wakeup(self) -> None:
        try:
            os.eventfd_read(self._wakeup_fd)
        except BlockingIOError:
            pass
        self.wakeups += 1

    def _do_pending_functors(self) -> None:
        with self._lock:
            functors, self._pending = self._pending, []
            self._wake_pending = False
        if not functors:
            return
        self._calling_pending = True
        try:
            for fn, args in functors:
                try:
                    fn(*args)
                except Exception:
                    self.callback_errors += 1
                    log.exception("loop %s: functor %r raised", self.name, fn)
        finally:
            self._calling_pending = False
            self.functors_run += len(functors)

    # -- timers ----------------------------------------------------------------------------
    def call_at(self, when: float, fn, *args) -> TimerHandle:
        """Run ``fn(*args)`` at ``when`` (on ``self.clock``). Safe to call from any thread."""
        return self._schedule(TimerHandle(when, fn, args))

    def call_later(self, delay: float, fn, *args) -> TimerHandle:
        """Run ``fn(*args)`` after ``delay`` seconds. Safe to call from any thread."""
        return self._schedule(TimerHandle(self.clock() + delay, fn, args))

    def call_every(self, interval: float, fn, *args) -> TimerHandle:
        """Run ``fn(*args)`` every ``interval`` s, first after one interval. Safe to call from any thread."""
        return self._schedule(TimerHandle(self.clock() + interval, fn, args, interval))

    def _schedule(self, handle: TimerHandle) -> TimerHandle:
        self.run_in_loop(self._timers.add_handle, handle)
        return handle

    # -- running -----------------------------------------------------------------------------
    def run(self) -> None:
        """Loop until :meth:`stop`. Loop thread only.

        Functors queued before ``stop()`` was called still run before this
        returns (one last pass), so "do X, then stop" sequences hold.
        """
        self.assert_in_loop_thread()
        if self._closed:
            raise RuntimeError(f"loop {self.name} is closed")
        if self._running:
            raise RuntimeError(f"loop {self.name} is already running")
        self._running = True
        try:
            while not self._quit:
                self._iterate()
            self._do_pending_functors()
        finally:
            self._running = False
            self._quit = False

    def run_once(self, timeout: float | None = None) -> None:
        """One iteration (poll at most ``timeout`` s, default as run()). Loop thread only; for tests."""
        self.assert_in_loop_thread()
        self._iterate(timeout)

    def _iterate(self, max_timeout: float | None = None) -> None:
        timeout = MAX_POLL_S if max_timeout is None else max_timeout
        if self._pending:  # queued from this thread outside a pass (start-up code)
            timeout = 0.0
        else:
            nxt = self._timers.next_timeout(self.clock())
            if nxt is not None and nxt < timeout:
                timeout = nxt
        self._polling = True
        poller = self._poller
        try:
            if self._busy and self.coalesce_s > 0 and timeout > 0:
                timeout = self._coalesce(timeout)
            ready = self._epoll.poll(timeout) if poller is None else poller.poll(timeout)
        finally:
            self._polling = False
        if self.coalesce_s > 0:
            self._woke, self._busy = time.monotonic(), bool(ready)
        self._polls += 1
        self.iterations += 1
        if poller is None:
            self.events += len(ready)
            self._dispatch(ready)
        else:  # the compiled poller (gateway/net/_reactor.pyx): the same dispatch, no list of tuples
            self.events += ready
            poller.dispatch(self)
        self._timers.run_due(self.clock())
        self._do_pending_functors()

    def _coalesce(self, timeout: float) -> float:
        """Sleep out the rest of the coalescing interval since the last wake-up (at most ``timeout``);
        the poll's timeout left (module doc, "Coalescing")."""
        gap = self._woke + self.coalesce_s - time.monotonic()
        if gap <= 0:
            return timeout
        time.sleep(min(gap, timeout))
        self.coalesced += 1
        return max(0.0, timeout - gap)

    def _dispatch(self, ready) -> None:
        channels, epoch = self._channels, self._polls
        wakeup_fd = self._wakeup_fd
        for fd, mask in ready:
            if fd == wakeup_fd:
                self._on_wakeup()
                continue
            ch = channels.get(fd)
            # gone (unregistered by an earlier handler of this batch), or a new
            # registration of a reused number after the batch was collected
            if ch is None or ch.epoch == epoch:
                continue
            try:
                ch.handler(mask)
            except Exception:
                self.callback_errors += 1
                log.exception("loop %s: handler for fd %d raised", self.name, fd)

    def stop(self) -> None:
        """Make run() return after the current iteration. Safe to call from any thread.

        A stop() before run() makes the next run() return at once.
        """
        self._quit = True  # read by the loop after every iteration
        if threading.get_ident() != self.thread_id or self._polling:
            with self._lock:
                if not self._wake_pending:  # else a write is already on its way to the poll
                    self._wakeup_locked()

    def close(self) -> None:
        """Close the epoll and eventfd descriptors (registered fds are the owners' to close).

        Call after run() has returned; idempotent. Safe to call from any thread
        (normally the loop's own, when its run() returns). Functors still queued
        are dropped.
        """
        if self._running:
            raise RuntimeError(f"loop {self.name} is still running: stop() it and let run() return first")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pending.clear()
            self._epoll.close()
            os.close(self._wakeup_fd)
            self._wakeup_fd = -1
        self._channels.clear()
        if self._poller is not None:
            self._poller.clear()
        if getattr(_tls, "loop", None) is self:
            _tls.loop = None

    @property
    def closed(self) -> bool:
        """Safe to call from any thread."""
        return self._closed

    # -- status ------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters of this loop. Safe to call from any thread (plain ints, read without locks)."""
        t = self._timers
        return {"name": self.name, "running": self._running, "iterations": self.iterations, "events": self.events,
                "functors_run": self.functors_run, "timers_run": t.fired, "timers_missed": t.missed,
                "timers_pending": len(t), "fds": len(self._channels), "pending_functors": len(self._pending),
                "wakeups": self.wakeups, "callback_errors": self.callback_errors + t.errors,
                "dropped_functors": self.dropped_functors, "coalesced": self.coalesced}

    def __repr__(self) -> str:
        return f"<EventLoop {self.name} fds={len(self._channels)}{' closed' if self._closed else ''}>"
