"""The trains' UDP endpoint: datagrams into a fixed receive arena, checked, applied.

Each readiness event drains the socket (edge-triggered: until EAGAIN) by one
of two receive paths:

* ``recvmmsg``, the compiled ``gateway.net._udp_batch`` (Linux), used when it
  is built and ``RAILGATE_PURE`` is not ``1``: one system call fills up to
  ``batch`` slots of the arena, datagram j into slot j, and the batch is
  judged before the next call overwrites them. A batch that comes back short
  means the kernel queue was empty: drained.
* ``recv_into``, pure Python, the reference and the fallback: one datagram
  per system call, always into slot 0.

and judges the datagrams by one of two steps (``datagram_step``):

* ``"compiled"`` (with recvmmsg, when the line's parts are the compiled
  core's: ``railcodecs.speedups.train_batch``): the drain itself runs in C
  (``gateway.net._udp_batch.BatchDrain``, the epoll handler: the same loop
  as :meth:`UdpEndpoint._drain_batches`), with one call per batch into
  ``railcodecs._core.TrainBatch``, which does in C, for each datagram and
  without making a Python object, what the Python step does (the decode
  checks, MAC, destination, source, age, session reset, sequence window,
  the sender's counters, the train table) at one gateway time per batch, and
  hands Python what it must see once per batch: the endpoint's counters and
  errors, the trains seen (``Registry.trains_seen``) and the accepted
  TRAIN_STATUS reports (``CouplingWorkers.submit_batch``). A datagram whose
  source is not a train but has a key or a rule of its own in the MAC policy
  is handed back to the Python step (rare: the policy's rules stay in one place).
* ``"python"``, the reference: per datagram (:meth:`UdpEndpoint._datagram`),
  ``decode_datagram``, ``Receiver.check_datagram`` and
  ``Context.train_applied``, at the gateway time of each datagram.
  ``tests/test_udp_differential.py`` holds the two to the same results.

The arena, made once with the endpoint and never resized::

    arena: | slot 0 | slot 1 | slot 2 | ... | slot batch-1 |    SLOT = MAX_DATAGRAM = 144 bytes each
             ^ views[j] = memoryview(arena)[j*SLOT:(j+1)*SLOT], made once
    recvmmsg: datagram j of a call -> slot j, its length -> lengths[j]
    recv_into: every datagram -> slot 0

One thread (the loop's) writes and reads every slot, and no datagram outlives
the call that received it (the codecs copy what they keep), so the arena needs
no free list, no ownership marks and no exhaustion path: a burst larger than
the arena is simply received in more batches. A datagram's size is unknown
before it is read, so every slot is as long as the longest ICD datagram. Both
paths learn a datagram's real length (``MSG_TRUNC``), so one longer than
``MAX_DATAGRAM`` is counted oversize (bad_size) rather than decoded from its
head. No sender address is received: the sender is named by the frame's
``src`` and checked against the configuration, and not building an address
tuple per datagram keeps the hot path free of allocations that outlive it.

Wake-ups (``coalesce_ms``, the config's ``gateway.udp_coalesce_ms``). Each
readiness event costs a pass of the loop (``epoll_wait``, the dispatch, the
timers) for what is often one or two datagrams: under a flood the receiver
is faster than any one sender, catches up after every datagram and wakes
again at once (1.9 datagrams per ``recvmmsg`` measured at 260,000
datagrams/s). So the endpoint does what a network driver does under load
(Linux NAPI: interrupts off, poll until the queue is empty)::

    EVENTS --(a wake-up with datagrams < coalesce_ms after the last one)--> POLLING
        EPOLLIN off (one epoll_ctl); a timer drains the socket every coalesce_ms
    POLLING --(a timer's drain finds the socket empty)--> EVENTS
        EPOLLIN on (one epoll_ctl; the kernel re-checks the socket, so a datagram
        that came after that last drain wakes the loop at once)

A datagram then waits at most one interval (plus the loop's 1 ms poll
resolution) in the socket's 4 MiB buffer, and the loop pays one pass per
interval instead of one per arrival. ``coalesce_ms = 0`` keeps one wake-up
per arrival. ``polling`` and ``poll_entries`` are in :meth:`UdpEndpoint.stats`.

Threading: ``start``, ``stop`` and the receive paths run in one IO loop
thread, the arena's one user and the one writer of the trains' sender state
(no TCP link serves a train); ``stats`` from any thread.
"""
from __future__ import annotations

import select
import socket
import time
from railcodecs import UDP_TYPES, FrameError, Reason, decode_datagram, speedups

try:
    from gateway.net._udp_batch import BatchDrain, BatchReceiver
except ImportError:  # not built: the recv_into path runs
    BatchDrain = BatchReceiver = None

EV_READ = select.EPOLLIN | select.EPOLLET
EV_QUIET = 0  # while POLLING: no readiness events (the loop adds EPOLLET; errors are always reported)
MAX_DATAGRAM = 144  # 128-byte TRAIN_DIAG + 16-byte MAC: the largest ICD datagram
SLOT = MAX_DATAGRAM  # bytes per arena slot: any valid datagram fits whole
RECV_BATCH = 64     # datagrams per recvmmsg: the arena's slots (64 x 144 B = 9 KiB)
_HEADER_FAULTS = frozenset((Reason.BAD_SYNC, Reason.BAD_VERSION, Reason.BAD_FLAGS, Reason.OVERSIZE))


def batch_available() -> bool:
    """True when the recvmmsg path is the default: built, and the compiled implementation is the one
    in use (``railcodecs.speedups``: not forced pure by ``RAILGATE_PURE=1``)."""
    return BatchReceiver is not None and speedups.implementation() == "compiled"


class UdpEndpoint:
    """One UDP socket for every train, served by one loop, received into the endpoint's own arena."""

    def __init__(self, ctx, loop, sock: socket.socket, checks, *, batch: bool | None = None,
                 batch_size: int = RECV_BATCH, coalesce_ms: float = 0) -> None:
        """``checks``: the receiver's counters for this endpoint (``receiver.new_link("udp")``).

        ``batch``: True for the recvmmsg path (ImportError when not built),
        False for recv_into, None (default) for :func:`batch_available`.
        ``batch_size``: the arena's slots, the most datagrams per recvmmsg.
        ``coalesce_ms``: the polling interval under load (module doc, "Wake-ups"); 0: never poll.
        Create in any thread; then use from the loop thread only.
        """
        self.ctx, self.loop, self.sock = ctx, loop, sock
        self.fd = sock.fileno()
        self.checks = checks
        #: the receive arena (see the module docstring): slot j is ``_views[j]``
        self.arena = bytearray(batch_size * SLOT)
        mv = memoryview(self.arena)
        self._views = [mv[j * SLOT:(j + 1) * SLOT] for j in range(batch_size)]
        self.rx_datagrams = 0
        self.rx_batches = 0
        self.oversize = 0
        if batch is None:
            batch = batch_available()
        self._batch = None
        self._step = None
        self._drain = None
        if batch:
            if BatchReceiver is None:
                raise ImportError("gateway.net._udp_batch is not built: no recvmmsg path")
            self._batch = BatchReceiver(self.arena, SLOT, batch_size)
            self._lengths = self._batch.lengths        # written in place by each recv
            if ctx is not None:
                self._step = speedups.train_batch(self.arena, SLOT, MAX_DATAGRAM, ctx.receiver, checks,
                                                  ctx.mac_policy, ctx.objects.trains, ctx.registry.trains_seen,
                                                  ctx.coupling, self._python_step)
            if self._step is not None:  # the whole drain in C: no Python frame per batch
                self._drain = BatchDrain(self._batch, self.fd, self, self._step.run, ctx.now_ms)
        self.coalesce_s = coalesce_ms / 1000
        self.polling = False      # POLLING (module doc, "Wake-ups"): EPOLLIN off, drained by _poll_timer
        self.poll_entries = 0     # EVENTS -> POLLING moves
        self._poll_timer = None
        self._last_wakeup = -1e300  # time.monotonic() of the last wake-up that found datagrams
        if self._drain is not None and self.coalesce_s > 0:
            self._drain.coalesce(self.coalesce_s, self._start_polling)
        self.recv_path = "recvmmsg" if self._batch is not None else "recv_into"
        #: "compiled": each recvmmsg batch is judged by railcodecs' TrainBatch; "python": datagram by datagram
        self.datagram_step = "compiled" if self._step is not None else "python"

    def start(self) -> None:
        """Loop thread: register for reads."""
        self.sock.setblocking(False)
        self.loop.register(self.fd, EV_READ, self._on_events if self._drain is None else self._drain)

    def stop(self) -> None:
        """Loop thread: unregister and close."""
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None
        try:
            self.loop.unregister(self.fd)
        except (KeyError, OSError, ValueError):
            pass
        self.sock.close()

    def _on_events(self, mask: int) -> None:
        """Loop thread: a wake-up (the compiled ``BatchDrain`` replaces this, the same test in C)."""
        if self._drain_all() and self.coalesce_s > 0:
            now = time.monotonic()
            if now - self._last_wakeup < self.coalesce_s:
                self._start_polling()
            self._last_wakeup = now

    def _drain_all(self) -> int:
        """Loop thread: drain the socket to EAGAIN by the path chosen at construction; the datagrams received."""
        if self._drain is not None:
            return self._drain.drain()
        if self._batch is not None:
            return self._drain_batches()
        return self._drain_each()

    def _start_polling(self) -> None:
        """Loop thread: EVENTS -> POLLING (module doc, "Wake-ups"): datagrams come faster than one per
        interval, so stop the per-arrival wake-ups and drain on a timer."""
        if self.polling or self._closed_or_unregistered():
            return
        self.polling = True
        self.poll_entries += 1
        self.loop.modify(self.fd, EV_QUIET)
        self._poll_timer = self.loop.call_every(self.coalesce_s, self._poll)

    def _poll(self) -> None:
        """Loop thread, the polling timer: drain; an empty socket moves POLLING -> EVENTS."""
        if self._drain_all():
            return  # still busy
        self.polling = False
        self._poll_timer.cancel()
        self._poll_timer = None
        if not self._closed_or_unregistered():
            self.loop.modify(self.fd, EV_READ)  # a datagram queued since the drain is reported at once

    def _closed_or_unregistered(self) -> bool:
        return self.sock.fileno() < 0

    def _drain_batches(self) -> int:
        fd, rx, step, full = self.fd, self._batch, self._step, self._batch.batch
        lengths, views, datagram = self._lengths, self._views, self._datagram
        total = 0
        while True:
            try:
                got = rx.recv(fd)  # 0 at EAGAIN
            except OSError:  # as recv_into: the socket failed
                return total
            if got:
                total += got
                self.rx_batches += 1
                if step is not None:  # the whole batch in C, judged at one gateway time
                    self.rx_datagrams += got
                    self.oversize += step.run(lengths, got, self.ctx.now_ms())
                else:
                    # a handler that raises (a bug: the codecs never do) loses the rest of its batch
                    for j in range(got):
                        datagram(views[j], lengths[j])
            if got < full:
                return total  # recvmmsg stopped short: the kernel queue was empty (EAGAIN)

    def _drain_each(self) -> int:
        sock, view, datagram = self.sock, self._views[0], self._datagram
        total = 0
        while True:
            try:
                # MSG_TRUNC: n is the datagram's real length, so one longer than any ICD type (cut
                # short by the slot) is counted bad_size instead of being decoded from its head
                n = sock.recv_into(view, 0, socket.MSG_TRUNC)
            except OSError:  # BlockingIOError (drained) included
                return total
            total += 1
            datagram(view, n)

    def _datagram(self, view: memoryview, n: int) -> None:
        """Loop thread: one datagram, ``n`` bytes long (its real length), at the head of slot ``view``."""
        ctx, checks = self.ctx, self.checks
        self.rx_datagrams += 1
        if n > MAX_DATAGRAM:
            # judged like any datagram of a wrong size: its header's faults first, else bad_size
            self.oversize += 1
            ev = decode_datagram(view, types=UDP_TYPES, mac=ctx.mac_policy)
            checks.count(ev.reason if isinstance(ev, FrameError) and ev.reason in _HEADER_FAULTS
                         else Reason.BAD_SIZE)
            return
        self._judge(view, n, ctx.now_ms())

    def _judge(self, view: memoryview, n: int, now_ms: int) -> None:
        """Loop thread: decode, check and apply one datagram of at most MAX_DATAGRAM bytes, at ``now_ms``."""
        ctx = self.ctx
        ev = decode_datagram(view[:n], types=UDP_TYPES, mac=ctx.mac_policy)
        if isinstance(ev, FrameError):
            self.checks.count(ev.reason)
        elif ctx.receiver.check_datagram(self.checks, ev, now_ms, apply=ctx.apply) is None:
            ctx.train_applied(ev, now_ms)

    def _python_step(self, j: int, now_ms: int) -> None:
        """Loop thread: the compiled step hands datagram ``j`` of the current batch back (a source the
        MAC policy has a key or a rule for that is not a train: rare)."""
        self._judge(self._views[j], self._lengths[j], now_ms)

    def stats(self) -> dict:
        """Counters and the receive path ("recvmmsg" or "recv_into"). Safe to call from any thread.

        ``rx_batches``: recvmmsg calls that brought at least one datagram (0 on recv_into).
        ``polling``: drained on a timer now (module doc, "Wake-ups"); ``poll_entries``: moves into it.
        """
        return {"recv": self.recv_path, "rx_datagrams": self.rx_datagrams, "rx_batches": self.rx_batches,
                "oversize": self.oversize, "errors": dict(self.checks.errors), "polling": self.polling,
                "poll_entries": self.poll_entries, "coalesce_ms": self.coalesce_s * 1000}


def udp_socket(host: str, port: int) -> socket.socket:
    """The trains' UDP socket, bound, with a 4 MiB receive buffer (bursts of a whole line)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind UDP {host}:{port}: {exc.strerror}") from None
    return sock
