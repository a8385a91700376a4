"""One device TCP connection: the socket and its reads, writes, timers and close; IO only.

The muduo ``TcpConnection`` of this gateway: it moves bytes and does not speak
the ICD. Bytes go ``recv_into`` straight into the link's receive buffer
(``gateway/net/link_buffers.py``); after each read the connection calls its protocol
(``gateway/line/link_protocol.py``, handed in by the wiring code), which
parses frames in place from that buffer, on the same thread, and returns action bits
(``gateway/base/link_actions.py``) and output frames in its ``outbox``. The
connection writes the outbox, then performs the bits: timers, the queued
close, the write-side shutdown, the socket close. With the compiled reactor
(``gateway/net/_reactor.pyx``, when built) its ``FastReader`` takes an UP
link's plain reads, and its ``heartbeat`` is the heartbeat timer's callback:
it encodes and sends a steady tick's HEARTBEAT itself and hands every other
tick to ``_on_heartbeat_tick``, the reference.

Edge-triggered rules as used here: read until the kernel says EAGAIN or a read
comes back short (on a stream socket a short read means the buffer is
drained), or until ``READ_BUDGET`` bytes, after which the rest is read in the
loop's next pass (queued, as no new edge will come) so that one flooding peer
cannot starve the other links of its loop; write directly while nothing is
queued; EPOLLOUT is enabled only while output is pending; output over the
high-water mark closes the link as a slow peer instead of growing. Every byte
written (``send()``'s frames and the protocol's own: HELLO_ACK, HEARTBEAT,
CLOSE) is counted in ``_queued`` when it is queued and uncounted when the
kernel takes it, so the bound holds for all of them.

Until its session is confirmed the connection receives into a small
pre-session buffer and holds a place in the acceptor's pre-session budget; at
the confirmation (the protocol's ``session_source`` call) it takes the device
link's ``LinkBuffers`` from the pool, moves the undecoded bytes into their
receive buffer and leaves the budget; the buffers go back when the socket is closed.
Every call into the protocol is guarded: an unexpected exception is logged
once per link with its traceback and handed to ``protocol.internal_error``,
which closes the link (CLOSE reason 2) instead of leaving it half alive.

This object is what the rest of the gateway knows as "a link" (registry,
status, ``close``, ``send``); protocol figures (``alive``, ``state``,
``checks``, ``device_id``) are read through to its protocol.

Moving to the device's loop (``home``, from ``EventLoopThreadPool.home_loop``:
why in ``gateway/net/loop_pool.py``). The acceptor cannot know a link's device
before its HELLO, so it puts the link on the next loop; when the protocol has
answered a good HELLO (``ARM_CONFIRM``) and the device's home loop is another,
the connection moves there, in the window where nothing outside its loop acts
on it (the protocol's ``awaiting_confirm``: not alive, so ``send`` refuses, and
not registered). The move is queued behind the current read (``_move``, old
loop): the link stays if it is no longer awaiting the confirmation (closing,
or confirmed in the same pass); else its timers are cancelled, its fd is
unregistered, ``_adopt`` is queued on the home loop and ``loop`` is switched.
``_adopt`` (home loop) registers the fd with the same handler and re-arms the
heartbeat and the confirmation's deadline (unchanged); what came meanwhile
(the SESSION_CONFIRM, perhaps) is not lost: registering a readable fd queues
its event, edge-triggered or not. A ``close`` or ``evict`` queued on the old loop before the switch runs
there after it and is forwarded to ``loop`` (``_forwarded``), behind
``_adopt``; one queued after the switch goes to the home loop, behind
``_adopt`` too. Without ``home`` (one IO loop, or ``gateway.link_placement:
round_robin``) a connection never moves.

Threading: a connection belongs to one IO loop at a time (``loop``): from its
start to its HELLO the acceptor's pick, then its device's home loop. ``send``, ``close``, ``evict``,
``alive`` and ``stats`` are safe from any thread; everything else runs in the loop
thread. Connections are never reused (a thread holding an old link must never
send to a new connection); only their buffers come from a bounded pool.
"""
from __future__ import annotations

import errno
import logging
import select
import socket
import threading

from gateway.base.link_actions import (ARM_CONFIRM, ARM_DEAD, ARM_HEARTBEAT, ARM_HELLO, BEGIN_CLOSE, DESTROY,
                                       READ_FIRST, SHUTDOWN_WRITE)
from gateway.net import compiled

log = logging.getLogger("railgate.link")
EV_READ = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
EV_WRITE = EV_READ | select.EPOLLOUT
#: bytes read per turn before the link yields the loop to the others (see _read): about a
#: thousand small frames, so a loop of many flooding links still comes round each link quickly
READ_BUDGET = 64 << 10


def peer_address(sock: socket.socket) -> str | None:
    """``host:port`` of the connected peer, None once it is gone."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return None
    return f"{host}:{port}"


class TcpConnection(compiled.conn_fields_base()):
    """A device link's socket on one loop. Create in any thread, then ``loop.run_in_loop(conn.start)``."""

    def __init__(self, loop, sock: socket.socket, protocol, rx, *, clock_ms, peer: str | None = None,
                 link_pool=None, admission=None, home=None) -> None:
        """``protocol``: this link's protocol (it decodes from ``rx``, the small pre-session buffer the
        connection receives into until the session is confirmed); ``clock_ms``: the gateway's wall clock
        in epoch ms (frames carry it); monotonic time is the loop's clock. ``link_pool``: the bounded
        pool of device links' buffers (``LinkBuffers``), taken at the session's confirmation and given
        back at the close; ``admission``: this connection's pre-session slot (``leave()`` at the
        confirmation or the close), None without a budget. ``home(device_id)``: the device's home loop, for
        the move after its HELLO (module doc); None: the link stays on ``loop``."""
        self.loop, self.sock, self.protocol = loop, sock, protocol
        self._rx = rx                 # what recv_into fills: the pre-session buffer, then the link's
        self.buffers = None           # the LinkBuffers, from the confirmation on
        self._link_pool, self._admission = link_pool, admission
        self._fault_logged = False
        self._home = home
        self._handler = None          # what the fd is registered with (start); _adopt registers it again
        self._confirm_at = 0.0        # the confirmation's deadline (loop clock): a move keeps it
        self.moves = 0                # moves to the device's home loop (0 or 1)
        protocol.link = self
        if link_pool is not None:
            protocol.session_source = self._session_source
        self.net = protocol.net
        self.peer = peer if peer is not None else peer_address(sock)
        self.fd = sock.fileno()
        self._clock_ms = clock_ms
        self._mono = loop.clock
        self._out = bytearray()
        self._out_pos = 0
        # bytes accepted for output and not yet taken by the kernel (queued functors + _out);
        # written by senders and the loop, so under a tiny lock: += is not atomic across threads
        self._queue_lock = threading.Lock()
        self._queued = 0
        self.queued_high_water = 0
        self._closed = False          # the socket is closed (the protocol said DESTROY)
        self._write_shut = False
        self._shut_when_flushed = False  # set by SHUTDOWN_WRITE: after our CLOSE, never before it
        self._read_queued = False
        #: the heartbeat timer's callback: the compiled reader's steady tick when start() installs it
        self._heartbeat_tick = self._on_heartbeat_tick
        self._read_on = self._read  # what a queued read-more runs: the reader's read (the compiled one's)
        self._timers: list = []
        self._dead_timer = None       # the one-shot timer at the protocol's dead deadline
        self.tx_frames = self.rx_bytes = self.tx_bytes = 0
        self.refused_sends = self.late_sends = 0

    # -- the protocol's figures, read through ---------------------------------------------
    @property
    def alive(self) -> bool:
        """The liveness flag (the protocol sets it). Any thread."""
        return self.protocol.alive

    @property
    def state(self):
        return self.protocol.state

    @property
    def checks(self):
        return self.protocol.checks

    @property
    def device_id(self) -> int | None:
        return self.protocol.device_id

    # -- any thread ------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Queue one encoded frame. Safe from any thread.

        Returns False (and counts it) once the link is not alive: after a
        timeout or a close began, new sends are refused; sends that passed this
        check before the flag dropped still go out ahead of the CLOSE.
        """
        n = len(data)
        p = self.protocol
        with self._queue_lock:
            if not p.alive:
                self.refused_sends += 1
                return False
            if self._queued + n > p.output_high_water:
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

    def close(self, event=None, why: str = "closed by the gateway") -> None:
        """Begin a close for ``event`` (a link event; default: a graceful local close). Safe from any thread."""
        self.loop.run_in_loop(self._close_in_loop, event, why)

    # -- loop thread: performing the protocol's actions ----------------------------------------
    def start(self) -> None:
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # the compiled reader (gateway/net/_reactor.pyx) when built: it takes an UP link's plain reads
        # and hands everything else to _on_events; its heartbeat() is the steady heartbeat tick, which
        # hands everything else to _on_heartbeat_tick
        core = compiled.reactor()
        if core is not None:
            reader = core.FastReader(self, READ_BUDGET)
            self._heartbeat_tick = reader.heartbeat
            self._read_on = reader.read_more
            self._handler = reader
        else:
            self._handler = self._on_events
        self.loop.register(self.fd, EV_READ, self._handler)
        self._perform(self._guarded(self.protocol.connection_made, self._mono()))

    def _perform(self, acts: int) -> None:
        """Write the protocol's output, then do what the bits ask, in the order of link_actions.py."""
        p = self.protocol
        if p.outbox:
            data = bytes(p.outbox)
            p.outbox.clear()  # before writing: a failed write calls the protocol again
            self._write(data)
            if self._closed:
                return
        if not acts:
            return
        loop = self.loop
        if acts & ARM_HELLO:
            self._timers.append(loop.call_later(p.hello_timeout_s, self._on_hello_timeout))
        if acts & ARM_HEARTBEAT:
            for t in self._timers:
                t.cancel()
            self._timers = [loop.call_every(p.heartbeat_s, self._heartbeat_tick)]
        if acts & ARM_CONFIRM:
            self._confirm_at = loop.clock() + p.confirm_timeout_s
            self._timers.append(loop.call_at(self._confirm_at, self._on_confirm_timeout))
        if acts & ARM_DEAD:
            if self._dead_timer is not None:
                self._dead_timer.cancel()
            self._dead_timer = loop.call_at(p.dead_at, self._on_dead_deadline)
        if acts & BEGIN_CLOSE:
            # queued, not run: sends already in the loop's queue go out before the CLOSE
            loop.queue_in_loop(self._send_close)
            self._timers.append(loop.call_later(p.linger_s, self._on_linger))
        if acts & SHUTDOWN_WRITE:
            self._shut_when_flushed = True
            self._shutdown_write_when_flushed()
        if acts & DESTROY:
            self._destroy()
        elif acts & ARM_CONFIRM and self._home is not None and not self._closed:
            home = self._home(p.device_id)  # the HELLO was answered: the device is known
            if home is not loop:
                loop.queue_in_loop(self._move, home)

    # -- moving to the device's loop (module doc) ---------------------------------------------
    def _move(self, home) -> None:
        """Leave this loop for ``home``. The old loop's thread."""
        if self._closed or not self.protocol.awaiting_confirm:
            return  # closing, or confirmed in the same pass (then registered, maybe sending): it stays
        for t in self._timers:
            t.cancel()
        self._timers = []
        dead, self._dead_timer = self._dead_timer, None
        if dead is not None:
            dead.cancel()
        self._read_queued = False  # a queued read-more stays behind (_read_more checks the loop); the home
        # loop's registration reports what is waiting
        self.loop.unregister(self.fd)
        home.queue_in_loop(self._adopt, home, dead is not None)
        self.loop = home
        self.moves += 1

    def _adopt(self, home, rearm_dead: bool) -> None:
        """Take the link on ``home``, its device's loop. That loop's thread, queued by ``_move``."""
        self.loop, self._mono = home, home.clock
        if self._closed:
            return
        p = self.protocol
        home.register(self.fd, EV_WRITE if self._out_pos < len(self._out) else EV_READ, self._handler)
        self._timers = [home.call_every(p.heartbeat_s, self._heartbeat_tick),
                        home.call_at(self._confirm_at, self._on_confirm_timeout)]
        if rearm_dead:
            self._dead_timer = home.call_at(p.dead_at, self._on_dead_deadline)
        # what arrived during the move needs no read here: registering an fd that is already readable
        # queues its event (EPOLL_CTL_ADD polls it, EPOLLET included), and the next poll reads it

    def _forwarded(self, fn, *args) -> bool:
        """True, and ``fn(*args)`` queued on ``loop``, when this runs on a loop the link has left (a functor
        queued there before the move)."""
        loop = self.loop
        if loop.is_in_loop_thread():
            return False
        loop.queue_in_loop(fn, *args)
        return True

    def _close_in_loop(self, event, why: str) -> None:
        if not self._closed and not self._forwarded(self._close_in_loop, event, why):
            self._perform(self._guarded(self.protocol.close, event, why))

    def _send_close(self) -> None:
        if not self._closed:
            self._perform(self._guarded(self.protocol.send_close, self._clock_ms()))

    def _shutdown_write_when_flushed(self) -> None:
        if self._out_pos < len(self._out) or self._write_shut or self._closed:
            return
        self._write_shut = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._perform(self._guarded(self.protocol.io_error, "shutdown failed"))

    def _destroy(self) -> None:
        self._closed = True
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
        try:
            self.protocol.connection_lost()
        except Exception as exc:
            self._log_fault(exc)
        finally:
            self._leave_pre_session()
            buffers, self.buffers = self.buffers, None
            if buffers is not None:
                self._link_pool.release(buffers)

    # -- loop thread: timers ------------------------------------------------------------------
    def _on_hello_timeout(self) -> None:
        if not self._closed:
            self._perform(self._guarded(self.protocol.hello_timeout))

    def _on_confirm_timeout(self) -> None:
        if not self._closed:
            self._perform(self._guarded(self.protocol.confirm_timeout))

    def _on_linger(self) -> None:
        if not self._closed:
            self._perform(self._guarded(self.protocol.linger_timeout))

    def _on_heartbeat_tick(self, now: float | None = None, now_ms: int | None = None) -> None:
        """The heartbeat timer's callback on the pure path, and the reference the compiled tick
        (``_reactor.FastReader.heartbeat``) calls for every tick but the steady one, handing over the
        times it read (``now``: monotonic s, ``now_ms``: wall ms; None: read them here)."""
        if not self._closed:
            self._judge(self.protocol.heartbeat_tick, now, now_ms)

    def _on_dead_deadline(self) -> None:
        self._dead_timer = None
        if not self._closed:
            self._judge(self.protocol.dead_deadline)

    def _judge(self, timer_method, now: float | None = None, now_ms: int | None = None) -> None:
        """Run a liveness timer of the protocol at ``now``/``now_ms`` (None: the clocks now); if it asks,
        read what the kernel holds and ask again."""
        if now is None:
            now, now_ms = self._mono(), self._clock_ms()
        acts = self._guarded(timer_method, now, now_ms, False)
        if acts & READ_FIRST:
            self._read()
            if self._closed:
                return
            acts = self._guarded(timer_method, self._mono(), self._clock_ms(), True)
        self._perform(acts)

    # -- loop thread: the session's buffers, and faults ------------------------------------------
    def evict(self, why: str = "made room for a source holding fewer unconfirmed connections") -> None:
        """Abort this link if it is still unconfirmed (the pre-session budget's fair share). Any thread."""
        self.loop.run_in_loop(self._evict_in_loop, why)

    def _evict_in_loop(self, why: str) -> None:
        if not self._closed and not self._forwarded(self._evict_in_loop, why):
            self._perform(self._guarded(self.protocol.evict, why))

    def _session_source(self):
        """The protocol's call at a valid SESSION_CONFIRM: take the device link's buffers from the pool,
        move the bytes received and not yet decoded (those after the SESSION_CONFIRM) into its receive
        buffer, receive there from now on, and give the pre-session slot back. None: the pool is empty."""
        buffers = self._link_pool.acquire()
        if buffers is None:
            return None
        rx, small = buffers.rx, self._rx
        with small.first_segment() as seg:
            rx.write(seg)  # at most 256 bytes into an empty buffer of >= 8 KiB: always fits
        small.consume(small.readable())
        self.buffers, self._rx = buffers, rx
        self._leave_pre_session()
        return rx

    def _leave_pre_session(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission.leave()

    def _guarded(self, method, *args) -> int:
        """Call into the protocol; an unexpected exception closes the link (CLOSE reason 2) instead of
        leaving it half alive, counted and reported by the protocol's ``internal_error``."""
        try:
            return method(*args)
        except Exception as exc:
            return self._fault_acts(exc)

    def _fault_acts(self, exc: Exception) -> int:
        self._log_fault(exc)
        try:
            return self.protocol.internal_error(f"{type(exc).__name__}: {exc}")
        except Exception as again:  # the protocol cannot even close: drop the socket ourselves
            self._log_fault(again)
            if not self._closed:
                self._destroy()
            return 0

    def _fault(self, exc: Exception) -> None:
        """An exception out of the protocol's compiled path (the reader's): as from ``_guarded``."""
        self._perform(self._fault_acts(exc))

    def _log_fault(self, exc: BaseException) -> None:
        """Log a link's unexpected exception with its traceback, once per link (then counted only)."""
        if not self._fault_logged:
            self._fault_logged = True
            log.error("link %s net %s (device %s): unexpected %s in the link handler; closing the link",
                      self.peer, self.net, self.protocol.device_id, type(exc).__name__, exc_info=exc)

    # -- loop thread: input -------------------------------------------------------------------
    def _on_events(self, mask: int) -> None:
        if mask & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
            self._read()
        if mask & select.EPOLLOUT and not self._closed:
            self._flush()

    def _read(self) -> None:
        recv_into, p, guarded = self.sock.recv_into, self.protocol, self._guarded
        self._read_queued = False
        budget = READ_BUDGET
        while not self._closed:
            if budget <= 0:
                # Fairness: a peer that keeps the socket full would otherwise hold the loop in this
                # while (ET: read until EAGAIN) and starve every other link and timer of the loop.
                # No new edge comes for bytes already waiting, so continue in the next pass.
                self._queue_read_more()
                return
            rx = self._rx  # changes at the session's confirmation (inside data_received)
            view = rx.writable_view()
            want = len(view)
            if not want:
                # buffer full: decode to make room (backpressure is the kernel's buffer meanwhile)
                self._perform(guarded(p.decode_buffered, self._mono(), self._clock_ms()))
                if not self._rx.free_space():
                    return  # nothing decodable (a closing pre-session link's oversized frame): stop reading
                continue
            try:
                n = recv_into(view, want)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                self._recv_failed(exc)
                return
            finally:
                view.release()
            if n == 0:
                self._perform(guarded(p.eof_received, self._mono(), self._clock_ms()))
                return
            rx.commit(n)
            budget -= n
            self.rx_bytes += n
            self._decode_rest(self._mono(), self._clock_ms())
            if n < want:
                break  # short read: the kernel buffer is drained (no extra EAGAIN read)

    def _decode_rest(self, now: float, now_ms: int) -> None:
        """The protocol decodes what the receive buffer holds (the compiled reader calls this for what its
        FastLink left); its output and actions are performed."""
        p = self.protocol
        acts = self._guarded(p.data_received, now, now_ms)
        if acts or p.outbox:
            self._perform(acts)

    def _recv_failed(self, exc: OSError) -> None:
        self._perform(self._guarded(self.protocol.io_error, f"recv: {exc.strerror or exc}"))

    def _queue_read_more(self) -> None:
        self._read_queued = True
        self.loop.queue_in_loop(self._read_more)

    def _read_more(self) -> None:
        if self._read_queued and not self._closed and self.loop.is_in_loop_thread():
            self._read_on()

    # -- loop thread: output ------------------------------------------------------------------
    def _send_in_loop(self, data: bytes) -> None:
        if self._closed or self._write_shut:
            self.late_sends += 1  # passed the flag just before it dropped; the link is gone now
            self._sent(len(data))
            return
        self.tx_frames += 1
        self._write(data, counted=True)

    def _sent(self, n: int) -> None:
        with self._queue_lock:
            self._queued -= n

    def _over_high_water(self) -> None:
        if not self._closed and not self._forwarded(self._over_high_water):
            self._perform(self._guarded(self.protocol.slow_peer))

    def _write(self, data: bytes, counted: bool = False) -> None:
        """Write or queue output. ``counted``: send() already added it to ``_queued``; the
        protocol's own frames are added here, so that every byte is uncounted once when sent."""
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
                    self._send_failed(exc)
                    return
                n = 0
            self._sent_directly(data, n)
            return
        self._out += data
        if self._queued > self.protocol.output_high_water:
            self._over_high_water()

    def _sent_directly(self, data: bytes, n: int) -> None:
        """A send of ``data`` (counted in ``_queued``) with nothing queued before it took ``n`` bytes: count
        them; queue the rest, if any, behind EPOLLOUT."""
        self.tx_bytes += n
        self._sent(n)
        if n == len(data):
            return
        self._out = bytearray(data[n:])
        self._out_pos = 0
        self.loop.modify(self.fd, EV_WRITE)

    def _send_failed(self, exc: OSError) -> None:
        self._perform(self._guarded(self.protocol.io_error, f"send: {exc.strerror or exc}"))

    def _tick_send_incomplete(self, data: bytes, n: int, exc: OSError | None) -> None:
        """The compiled heartbeat tick (``_reactor.FastReader.heartbeat``) sent the protocol's ``data`` itself,
        nothing being queued, and the send took only ``n`` < ``len(data)`` bytes (0: EAGAIN) or failed
        with ``exc``: from here on, what ``_write`` does (the frame counted in ``_queued``, then the same
        code). (A send that took it all is counted by the tick: ``tx_bytes``, and ``_queued`` + n - n.)"""
        with self._queue_lock:
            self._queued += len(data)
        if exc is not None:
            self._send_failed(exc)
        else:
            self._sent_directly(data, n)

    def _flush(self) -> None:
        view = memoryview(self._out)[self._out_pos:]
        try:
            n = self.sock.send(view)
        except BlockingIOError:
            return
        except OSError as exc:
            self._perform(self._guarded(self.protocol.io_error, f"send: {exc.strerror or exc}"))
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
            if self._shut_when_flushed:
                self._shutdown_write_when_flushed()

    # -- any thread: status -------------------------------------------------------------------
    def stats(self) -> dict:
        """JSON-ready link status (values read without locks: a snapshot, not a transaction)."""
        p = self.protocol
        return {"net": self.net, "alive": p.alive, "state": p.state.value, "peer": self.peer,
                "loop": getattr(self.loop, "name", None), "rx_frames": p.checks.rx_frames,
                "tx_frames": self.tx_frames + p.tx_frames, "rx_bytes": self.rx_bytes, "tx_bytes": self.tx_bytes,
                "last_rx_age_ms": round((self._mono() - p.last_rx) * 1000),
                "last_frame_age_ms": round((self._mono() - p.last_frame) * 1000),
                "errors": dict(p.checks.errors), "dual_net_copies": p.checks.copies,
                "refused_sends": self.refused_sends,
                "output_queued_bytes": self._queued, "output_high_water_bytes": self.queued_high_water}
