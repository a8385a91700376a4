"""One device TCP link: socket, ring buffer, decoder, liveness, graceful close.

The muduo ``TcpConnection`` of this gateway. Bytes go ``recv_into`` straight
into the link's SPSC ring (producer side); the stream decoder parses frames in
place from the ring (consumer side); each frame goes through the receiver's
EN 50159 checks and, if accepted, into the object state.

Liveness (ICD section 7): a link is dead when nothing has arrived for
``dead_after x heartbeat_ms`` (3 x by default). The heartbeat timer then flips
the liveness flag at once (``self.alive = False``, one attribute store, so every
thread sees it on its next ``send``), and queues the close behind the sends
already under way: those finish, then CLOSE reason 1 goes out, the write side
is shut down, and the socket closes when the peer answers or the linger timer
fires.

Edge-triggered rules as used here: read until the kernel says EAGAIN or a read
comes back short (on a stream socket a short read means the buffer is
drained), or until ``READ_BUDGET`` reads, after which the rest is read in the
loop's next pass (queued, as no new edge will come) so that one flooding peer
cannot starve the other links of its loop; write directly while nothing is queued; EPOLLOUT is enabled only
while output is pending; output over the high-water mark closes the link as a
slow peer instead of growing.

Threading: a link belongs to one IO loop. ``send``, ``close``, ``alive`` and
``stats`` are safe from any thread; everything else runs in the loop thread.
Link objects are never reused (a thread holding an old link must never send
to a new connection); only their buffers come from a bounded pool.
"""
from __future__ import annotations

import errno
import select
import socket
import threading
import time

from railcodecs import (GATEWAY_RX_TYPES, Close, CommandResult, DeviceAlarm, FrameError, Heartbeat, Hello,
                        HelloAck, Reason, StreamDecoder, encode)

from gateway.line.link_state import LinkEvent, LinkState, next_state

EV_READ = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
EV_WRITE = EV_READ | select.EPOLLOUT
NET_NAMES = ("A", "B")
LINGER_S = 2.0
#: bytes read per turn before the link yields the loop to the others (see _read): about a
#: thousand small frames, so a loop of many flooding links still comes round each link quickly
READ_BUDGET = 64 << 10
# duplicates are normal on dual nets and gaps are counted already: neither is a "hostile peer" signal
_NOT_HOSTILE = {"duplicate", "gap"}


class TcpLink:
    """A device link on one loop. Create in any thread, then ``loop.run_in_loop(link.start)``."""

    def __init__(self, ctx, loop, sock: socket.socket, net: str, buffers) -> None:
        self.ctx, self.loop, self.sock, self.net = ctx, loop, sock, net
        self.buffers = buffers
        self.fd = sock.fileno()
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = None
        self.state = LinkState.AWAIT_HELLO
        self.alive = False           # the liveness flag: True only while UP
        self.checks = ctx.receiver.new_link(f"{net}:{self.peer}", NET_NAMES.index(net))
        self.decoder: StreamDecoder | None = None
        self.device_id: int | None = None
        self._mac_key: bytes | None = None  # the device's key for what we send (set at HELLO)
        self.heartbeat_ms = ctx.settings.heartbeat_ms
        self._out = bytearray()
        self._out_pos = 0
        # bytes accepted by send() and not yet taken by the kernel (queued functors + _out);
        # written by senders and the loop, so under a tiny lock: += is not atomic across threads
        self._queue_lock = threading.Lock()
        self._queued = 0
        self.queued_high_water = 0
        self._write_shut = False
        self._read_queued = False
        self._timers: list = []
        self._dead_timer = None      # the one-shot timer at the exact dead deadline (see the tick)
        self._hb_counter = 0
        self._last_rx = time.monotonic()
        self._partial_since: float | None = None
        self._err_window_start = self._last_rx
        self._err_in_window = 0
        self.close_reason: int | None = None
        self.why = ""
        self.tx_frames = self.rx_bytes = self.tx_bytes = 0
        self.refused_sends = self.late_sends = 0

    # -- any thread ------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Queue one encoded frame. Safe from any thread.

        Returns False (and counts it) once the link is not alive: after a
        timeout or a close began, new sends are refused; sends that passed this
        check before the flag dropped still go out ahead of the CLOSE.
        """
        n = len(data)
        with self._queue_lock:
            if not self.alive:
                self.refused_sends += 1
                return False
            if self._queued + n > self.ctx.settings.output_high_water:
                # the bound covers what other threads queued too, not only the loop's buffer
                self.refused_sends += 1
                slow = True
            else:
                self._queued += n
                if self._queued > self.queued_high_water:
                    self.queued_high_water = self._queued
                slow = False
        if slow:
            self.loop.run_in_loop(self._over_high_water)
            return False
        self.loop.run_in_loop(self._send_in_loop, data)
        return True

    def close(self, event: LinkEvent = LinkEvent.LOCAL_CLOSE, why: str = "closed by the gateway") -> None:
        """Begin a close (graceful unless the event says otherwise). Safe from any thread."""
        self.loop.run_in_loop(self._handle, event, why)

    # -- loop thread: life -----------------------------------------------------------
    def start(self) -> None:
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.register(self.fd, EV_READ, self._on_events)
        s = self.ctx.settings
        self._timers.append(self.loop.call_later(s.hello_timeout_ms / 1000, self._on_hello_timeout))
        self.ctx.link_started(self)

    def _handle(self, event: LinkEvent, why: str = "") -> None:
        """Make one state-machine move and do what the new state asks."""
        if self.state is LinkState.CLOSED:
            return
        old = self.state
        new, reason = next_state(old, event)
        self.state = new
        if new is not LinkState.UP:
            self.alive = False  # at once: other threads' next send() is refused
        if why and not self.why:
            self.why = why
        if old is LinkState.UP and new is not LinkState.UP:
            self.ctx.link_left_up(self, why or event.value)
        if new is LinkState.CLOSED:
            self._destroy()
        elif new is LinkState.CLOSING and old is not LinkState.CLOSING:
            self.close_reason = reason
            # queued, not run: sends already in the loop's queue go out first
            self.loop.queue_in_loop(self._send_close_and_shutdown, reason)
            self._timers.append(self.loop.call_later(LINGER_S, self._handle, LinkEvent.LINGER_TIMEOUT))

    def _send_close_and_shutdown(self, reason: int | None) -> None:
        if self.state is not LinkState.CLOSING:
            return
        if reason is not None:
            self._write(self._frame(Close(reason)))
        self._shutdown_write_when_flushed()

    def _shutdown_write_when_flushed(self) -> None:
        if self._out_pos < len(self._out) or self._write_shut or self.state is LinkState.CLOSED:
            return
        self._write_shut = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._handle(LinkEvent.IO_ERROR, "shutdown failed")

    def _destroy(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        if self._dead_timer is not None:
            self._dead_timer.cancel()
            self._dead_timer = None
        try:
            self.loop.unregister(self.fd)  # before close: the fd number may be reused at once
        except (KeyError, OSError, ValueError):
            pass
        self.sock.close()
        self.ctx.receiver.link_closed(self.checks)
        self.ctx.link_closed(self)

    # -- loop thread: input ----------------------------------------------------------
    def _on_events(self, mask: int) -> None:
        if mask & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
            self._read()
        if mask & select.EPOLLOUT and self.state is not LinkState.CLOSED:
            self._flush()

    def _read(self) -> None:
        ring, recv_into = self.buffers.ring, self.sock.recv_into
        self._read_queued = False
        budget = READ_BUDGET
        while self.state is not LinkState.CLOSED:
            if budget <= 0:
                # Fairness: a peer that keeps the socket full would otherwise hold the loop in this
                # while (ET: read until EAGAIN) and starve every other link and timer of the loop.
                # No new edge comes for bytes already waiting, so continue in the next pass.
                self._read_queued = True
                self.loop.queue_in_loop(self._read_more)
                return
            view = ring.writable_view()
            want = len(view)
            if not want:
                # ring full: decode to make room (backpressure is the kernel's buffer meanwhile)
                self._decode()
                continue
            try:
                n = recv_into(view, want)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                self._handle(LinkEvent.IO_ERROR, f"recv: {exc.strerror or exc}")
                return
            finally:
                view.release()
            if n == 0:
                self._decode()
                self._handle(LinkEvent.EOF, "peer closed the connection")
                return
            ring.commit(n)
            budget -= n
            self.rx_bytes += n
            self._last_rx = time.monotonic()
            self._decode()
            if n < want:
                break  # short read: the kernel buffer is drained (no extra EAGAIN read)

    def _read_more(self) -> None:
        if self._read_queued and self.state is not LinkState.CLOSED:
            self._read()

    def _decode(self) -> None:
        dec = self.decoder
        if dec is None:
            dec = self.decoder = StreamDecoder(types=GATEWAY_RX_TYPES, mac=self.ctx.mac_policy,
                                               source=self.buffers.ring)
        now_ms = self.ctx.now_ms()
        progressed = False
        for ev in dec.events():
            progressed = True
            if self.state is LinkState.CLOSED:
                return
            if isinstance(ev, FrameError):
                self._count_error(ev.reason)
                if ev.reason is Reason.MISSING_MAC and self.state is LinkState.AWAIT_HELLO:
                    # an unsigned HELLO from a device that must sign: say so (ICD result 3). Its src
                    # cannot be trusted, so the answer goes to node 0.
                    self._write(self._frame(HelloAck(HelloAck.MAC_REQUIRED, self.heartbeat_ms, now_ms), dst=0))
                    self._handle(LinkEvent.HELLO_REFUSED, "HELLO without the MAC the device requires")
            else:
                self._on_frame(ev, now_ms)
        # A partial frame is overdue when the decoder has made no progress for a while (a corrupted
        # length holding it up), not merely when every read of a busy stream ends mid-frame.
        if not dec.buffered:
            self._partial_since = None
        elif progressed or self._partial_since is None:
            self._partial_since = self._last_rx

    def _count_error(self, reason: Reason) -> None:
        self.checks.count(reason)
        if reason.value in _NOT_HOSTILE:
            return
        now = time.monotonic()
        if now - self._err_window_start >= 1.0:
            self._err_window_start, self._err_in_window = now, 0
        self._err_in_window += 1
        if self._err_in_window > self.ctx.settings.error_rate_limit and self.state is not LinkState.CLOSING:
            self.ctx.counters["closed_error_rate"] += 1
            self._handle(LinkEvent.ERROR_RATE, f"more than {self.ctx.settings.error_rate_limit} errors/s")

    def _on_frame(self, frame, now_ms: int) -> None:
        msg = frame.message
        if self.state is LinkState.AWAIT_HELLO:
            if not isinstance(msg, Hello):
                self.checks.count(Reason.UNKNOWN_SOURCE)
                self._handle(LinkEvent.PROTOCOL_ERROR, f"{msg.NAME} before HELLO")
                return
            self._on_hello(frame, now_ms)
            return
        if self.state is not LinkState.UP:
            return  # CLOSING: the peer's last frames are not applied
        if isinstance(msg, Close):
            self.checks.rx_frames += 1
            self._handle(LinkEvent.PEER_CLOSE, f"peer sent CLOSE reason {msg.reason}")
            return
        if isinstance(msg, Hello):
            self.checks.count(Reason.UNKNOWN_SOURCE)
            self._handle(LinkEvent.PROTOCOL_ERROR, "second HELLO on a link")
            return
        if self.ctx.receiver.check(self.checks, frame, now_ms, apply=self.ctx.apply) is None:
            if isinstance(msg, (DeviceAlarm, CommandResult)):
                self.ctx.device_message(self, frame, now_ms)

    def _on_hello(self, frame, now_ms: int) -> None:
        dev = self.ctx.cfg.device(frame.src)
        result = self.ctx.receiver.hello(self.checks, frame, now_ms)
        if result == HelloAck.OK and dev is not None and self.net not in dev.nets:
            result = HelloAck.UNKNOWN_DEVICE
        if result != HelloAck.OK:
            self._refuse(frame, result, f"HELLO refused (result {result})")
            return
        hb = frame.message.heartbeat_ms
        self.heartbeat_ms = hb if 50 <= hb <= 60_000 else self.ctx.settings.heartbeat_ms
        self.device_id = frame.src
        self._mac_key = dev.mac_key if dev is not None and dev.mac != "off" else None
        self._handle(LinkEvent.HELLO_OK)
        self.alive = True
        for t in self._timers:
            t.cancel()
        self._timers = [self.loop.call_every(self.heartbeat_ms / 1000, self._on_heartbeat_tick)]
        self.ctx.link_up(self, now_ms)
        # acknowledged only once the device is registered reachable: a peer that reads HELLO_ACK and
        # then asks /status must find its link up
        self._write(self._frame(HelloAck(HelloAck.OK, self.heartbeat_ms, now_ms)))

    def _refuse(self, frame, result: int, why: str) -> None:
        self.device_id = None
        self._mac_key = None
        self._write(self._frame(HelloAck(result, self.ctx.settings.heartbeat_ms, self.ctx.now_ms()),
                                dst=frame.src))
        self._handle(LinkEvent.HELLO_REFUSED, why)

    # -- loop thread: timers ---------------------------------------------------------
    def _on_hello_timeout(self) -> None:
        if self.state is LinkState.AWAIT_HELLO:
            self._handle(LinkEvent.HELLO_TIMEOUT, "no HELLO in time")

    def _on_heartbeat_tick(self) -> None:
        if self.state is not LinkState.UP or self._judge_silence():
            return
        now = time.monotonic()
        if self._partial_since is not None and now - self._partial_since > self.heartbeat_ms / 1000:
            self.decoder.abandon_partial()
            self._decode()
        # The tick runs every heartbeat, so on its own it would notice a death up to one heartbeat
        # late (dead after 3 x heartbeat, seen at the 4th tick). When the deadline falls before the
        # next tick, one timer at the deadline itself makes detection exact; only near-silent
        # links pay for it, and one handle per link is kept.
        deadline = self._last_rx + self.ctx.settings.dead_after * self.heartbeat_ms / 1000
        if deadline < now + self.heartbeat_ms / 1000:
            if self._dead_timer is not None:
                self._dead_timer.cancel()
            self._dead_timer = self.loop.call_at(deadline + 0.0005, self._on_dead_deadline)
        self._hb_counter = (self._hb_counter + 1) & 0xFFFF_FFFF
        self._send_in_loop(self._frame(Heartbeat(self._hb_counter)))

    def _on_dead_deadline(self) -> None:
        self._dead_timer = None
        if self.state is LinkState.UP:
            self._judge_silence()

    def _judge_silence(self) -> bool:
        """Close the link if nothing has arrived for dead_after x heartbeat; True if it did."""
        now = time.monotonic()
        silent_ms = (now - self._last_rx) * 1000
        dead_ms = self.ctx.settings.dead_after * self.heartbeat_ms
        overdue = self._partial_since is not None and now - self._partial_since > self.heartbeat_ms / 1000
        if silent_ms > dead_ms or overdue:
            # Bytes waiting in the kernel have arrived: a loop too busy to have read them must neither
            # call the peer silent nor give up on its partial frame. One recv (EAGAIN when the peer
            # is truly silent), only for links about to be judged.
            self._read()
            if self.state is not LinkState.UP:
                return True
            silent_ms = (time.monotonic() - self._last_rx) * 1000
        if silent_ms > dead_ms:
            self.alive = False  # flagged dead at once; the close follows through the table
            self.ctx.counters["heartbeat_timeouts"] += 1
            self._handle(LinkEvent.HEARTBEAT_TIMEOUT, f"nothing received for {silent_ms:.0f} ms")
            return True
        return False

    # -- loop thread: output ---------------------------------------------------------
    def _frame(self, message, dst: int | None = None) -> bytes:
        # the key is looked up once, at HELLO: cfg.device() scans the device list, and this runs
        # for every heartbeat of every link
        return encode(message, src=self.ctx.settings.id, dst=dst if dst is not None else (self.device_id or 0),
                      seq=0, time_ms=self.ctx.now_ms(), mac_key=self._mac_key)

    def _send_in_loop(self, data: bytes) -> None:
        if self.state is LinkState.CLOSED or self._write_shut:
            self.late_sends += 1  # passed the flag just before it dropped; the link is gone now
            self._sent(len(data))
            return
        self._write(data, counted=True)

    def _sent(self, n: int) -> None:
        with self._queue_lock:
            self._queued -= n

    def _over_high_water(self) -> None:
        if self.state is not LinkState.CLOSED:
            self.ctx.counters["closed_slow"] += 1
            self._handle(LinkEvent.SLOW_PEER, "output over the high-water mark: peer not reading")

    def _write(self, data: bytes, counted: bool = False) -> None:
        """Write or queue one frame. ``counted``: send() already added it to ``_queued``."""
        self.tx_frames += 1
        if not counted:
            with self._queue_lock:
                self._queued += len(data)
        if self._out_pos == len(self._out):
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EINTR):
                    self._handle(LinkEvent.IO_ERROR, f"send: {exc.strerror or exc}")
                    return
                n = 0
            self.tx_bytes += n
            self._sent(n)
            if n == len(data):
                return
            self._out = bytearray(data[n:])
            self._out_pos = 0
            self.loop.modify(self.fd, EV_WRITE)
            return
        self._out += data
        if self._queued > self.ctx.settings.output_high_water:
            self._over_high_water()

    def _flush(self) -> None:
        view = memoryview(self._out)[self._out_pos:]
        try:
            n = self.sock.send(view)
        except BlockingIOError:
            return
        except OSError as exc:
            self._handle(LinkEvent.IO_ERROR, f"send: {exc.strerror or exc}")
            return
        finally:
            view.release()
        self.tx_bytes += n
        self._sent(n)
        self._out_pos += n
        if self._out_pos == len(self._out):
            self._out = bytearray()
            self._out_pos = 0
            self.loop.modify(self.fd, EV_READ)
            if self.state is LinkState.CLOSING:
                self._shutdown_write_when_flushed()

    # -- any thread: status ----------------------------------------------------------
    def stats(self) -> dict:
        """JSON-ready link status (values read without locks: a snapshot, not a transaction)."""
        return {"net": self.net, "alive": self.alive, "state": self.state.value, "peer": self.peer,
                "loop": getattr(self.loop, "name", None), "rx_frames": self.checks.rx_frames,
                "tx_frames": self.tx_frames, "rx_bytes": self.rx_bytes, "tx_bytes": self.tx_bytes,
                "last_rx_age_ms": round((time.monotonic() - self._last_rx) * 1000),
                "errors": dict(self.checks.errors), "refused_sends": self.refused_sends,
                "output_queued_bytes": self._queued, "output_high_water_bytes": self.queued_high_water}
