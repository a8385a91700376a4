"""The trains' UDP endpoint: datagrams into a slab pool, checked, applied.

Each readiness event drains the socket (edge-triggered: until EAGAIN) by one
of two receive paths:

* ``recvmmsg``, the compiled ``gateway.net._udp_batch`` (Linux), used when it
  is built and ``RAILGATE_PURE`` is not ``1``: up to ``batch`` free slabs of
  the largest size class are taken from the pool at once, one system call
  fills as many as there are datagrams waiting, the batch is judged, then
  every slab goes back, filled or not. A batch that comes back short means
  the kernel queue was empty: drained.
* ``recv_into``, pure Python, the reference and the fallback: one slab, one
  system call, one datagram.

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

A datagram is received straight into a slab of the largest size class (its
size is unknown before reading); the slab goes back to the pool as soon as
the datagram (or its batch) is decoded, checked and applied. Both paths learn a datagram's
real length (``MSG_TRUNC``), so one longer than ``MAX_DATAGRAM`` is counted
oversize (bad_size) rather than decoded from its head. With no free slab the
datagram is still read, into one scratch buffer, so the edge-triggered socket
is drained, and dropped and counted: the pool never grows. No sender address
is received: the sender is named by the frame's ``src`` and checked against
the configuration, and not building an address tuple per datagram keeps the
hot path free of allocations that outlive it.

Threading: ``start``, ``stop`` and the receive paths run in one IO loop
thread, which is the slabs' one owner while a datagram (or a batch) is being
handled, and the one writer of the trains' sender state (no TCP link serves a
train); ``stats`` from any thread.
"""
from __future__ import annotations

import select
import socket
from railcodecs import UDP_TYPES, FrameError, Reason, decode_datagram, speedups

try:
    from gateway.net._udp_batch import BatchDrain, BatchReceiver
except ImportError:  # not built: the recv_into path runs
    BatchDrain = BatchReceiver = None

EV_READ = select.EPOLLIN | select.EPOLLET
MAX_DATAGRAM = 144  # 128-byte TRAIN_DIAG + 16-byte MAC: the largest ICD datagram
RECV_BATCH = 64     # datagrams per recvmmsg: 9 KiB of slabs held at most per call
_HEADER_FAULTS = frozenset((Reason.BAD_SYNC, Reason.BAD_VERSION, Reason.BAD_FLAGS, Reason.OVERSIZE))


def batch_available() -> bool:
    """True when the recvmmsg path is the default: built, and the compiled implementation is the one
    in use (``railcodecs.speedups``: not forced pure by ``RAILGATE_PURE=1``)."""
    return BatchReceiver is not None and speedups.implementation() == "compiled"


class UdpEndpoint:
    """One UDP socket for every train, served by one loop."""

    def __init__(self, ctx, loop, sock: socket.socket, slabs, checks, *, batch: bool | None = None,
                 batch_size: int = RECV_BATCH) -> None:
        """``checks``: the receiver's counters for this endpoint (``receiver.new_link("udp")``).

        ``batch``: True for the recvmmsg path (ImportError when not built),
        False for recv_into, None (default) for :func:`batch_available`.
        Create in any thread; then use from the loop thread only.
        """
        self.ctx, self.loop, self.sock, self.slabs = ctx, loop, sock, slabs
        self.fd = sock.fileno()
        self.checks = checks
        self._scratch = bytearray(65536)
        self.rx_datagrams = 0
        self.rx_batches = 0
        self.dropped_no_slab = 0
        self.oversize = 0
        if batch is None:
            batch = batch_available()
        self._batch = None
        self._step = None
        self._drain = None
        if batch:
            if BatchReceiver is None:
                raise ImportError("gateway.net._udp_batch is not built: no recvmmsg path")
            size, arena, self._views = slabs.recv_layout()
            self._batch = BatchReceiver(arena, size, batch_size)
            self._indices = [0] * self._batch.batch   # written in place by acquire_many_for_recv
            self._lengths = self._batch.lengths        # written in place by each recv
            self._size_class = size
            if ctx is not None:
                self._step = speedups.train_batch(arena, size, MAX_DATAGRAM, ctx.receiver, checks, ctx.mac_policy,
                                                  ctx.objects.trains, ctx.registry.trains_seen, ctx.coupling,
                                                  self._python_step)
            if self._step is not None:  # the whole drain in C: no Python frame per batch
                self._drain = BatchDrain(self._batch, self.fd, self, slabs.recv_class, self._indices,
                                         self._step.run, ctx.now_ms, self._drop_one)
        self.recv_path = "recvmmsg" if self._batch is not None else "recv_into"
        #: "compiled": each recvmmsg batch is judged by railcodecs' TrainBatch; "python": datagram by datagram
        self.datagram_step = "compiled" if self._step is not None else "python"

    def start(self) -> None:
        """Loop thread: register for reads."""
        self.sock.setblocking(False)
        self.loop.register(self.fd, EV_READ, self._on_events if self._drain is None else self._drain)

    def stop(self) -> None:
        """Loop thread: unregister and close."""
        try:
            self.loop.unregister(self.fd)
        except (KeyError, OSError, ValueError):
            pass
        self.sock.close()

    def _on_events(self, mask: int) -> None:
        """Loop thread: drain the socket to EAGAIN by the path chosen at construction."""
        if self._drain is not None:
            self._drain(mask)
        elif self._batch is not None:
            self._drain_batches()
        else:
            self._drain_each()

    def _drop_one(self) -> bool:
        """No free slab: read one datagram into the scratch buffer and count it; False at EAGAIN."""
        try:
            self.sock.recv_into(self._scratch)
        except BlockingIOError:
            return False
        self.dropped_no_slab += 1
        return True

    def _drain_batches(self) -> None:
        fd, slabs, rx, size_class, step = self.fd, self.slabs, self._batch, self._size_class, self._step
        indices, lengths, views, datagram = self._indices, self._lengths, self._views, self._datagram
        while True:
            k = slabs.acquire_many_for_recv(indices)
            if k == 0:
                if self._drop_one():
                    continue
                return
            try:
                got = rx.recv(fd, indices, k)  # 0 at EAGAIN
            except OSError:  # as recv_into: the socket failed
                slabs.release_many(size_class, indices, k)
                return
            try:
                if got:
                    self.rx_batches += 1
                    if step is not None:  # the whole batch in C, judged at one gateway time
                        self.rx_datagrams += got
                        self.oversize += step.run(indices, lengths, got, self.ctx.now_ms())
                    else:
                        # a handler that raises (a bug: the codecs never do) loses the rest of its batch
                        for j in range(got):
                            datagram(views[indices[j]], lengths[j])
            finally:
                slabs.release_many(size_class, indices, k)  # filled or not
            if got < k:
                return  # recvmmsg stopped short: the kernel queue was empty (EAGAIN)

    def _drain_each(self) -> None:
        sock, slabs = self.sock, self.slabs
        while True:
            slab = slabs.acquire_for_recv()
            if slab is None:
                if self._drop_one():
                    continue
                return
            size_class, index, view = slab
            try:
                # MSG_TRUNC: n is the datagram's real length, so one longer than any ICD type (cut
                # short by the slab) is counted bad_size instead of being decoded from its head
                n = sock.recv_into(view, 0, socket.MSG_TRUNC)
            except OSError:  # BlockingIOError (drained) included
                slabs.release(size_class, index)
                return
            try:
                self._datagram(view, n)
            finally:
                slabs.release(size_class, index)

    def _datagram(self, view: memoryview, n: int) -> None:
        """Loop thread: one datagram, ``n`` bytes long (its real length), at the head of slab ``view``."""
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
        self._judge(self._views[self._indices[j]], self._lengths[j], now_ms)

    def stats(self) -> dict:
        """Counters and the receive path ("recvmmsg" or "recv_into"). Safe to call from any thread.

        ``rx_batches``: recvmmsg calls that brought at least one datagram (0 on recv_into).
        """
        return {"recv": self.recv_path, "rx_datagrams": self.rx_datagrams, "rx_batches": self.rx_batches,
                "dropped_no_slab": self.dropped_no_slab, "oversize": self.oversize,
                "errors": dict(self.checks.errors)}


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
