"""The device-link protocol without IO (ICD v1 revision 1.1, sections 2-7): bytes and times in, actions out.

A link is two objects. The connection (``gateway/net/connection.py``) owns the
socket, the epoll registration, the output queue and the loop's timers; this
protocol owns everything the ICD says: the state machine (the one table in
``link_state.py``), the stream decoder over the link's receive buffer, HELLO,
HELLO_ACK and SESSION_CONFIRM, the session key, frame dispatch to the
receiver's EN 50159 checks, error counting and the error-rate policy,
heartbeats, the dead-after deadline and the partial-frame watchdog. It never
reads a clock: every call is handed the loop's monotonic seconds (deadlines)
and the gateway's wall ms (frames). Its one source of randomness, the session
nonce, is injected (``nonce``; default: :mod:`secrets`).

The session (ICD 1.1): a good HELLO is answered with HELLO_ACK carrying a
fresh ``session_nonce`` (signed with the link key); from then on the link's
decoder and our own frames use ``K_s`` (when the device has a key) and the
link waits in AWAIT_CONFIRM, not alive and not registered, applying nothing
(``no_session``). A SESSION_CONFIRM with both nonces makes it UP: only then is
it registered (``ctx.link_up``, which replaces an older link of the device on
that net) and does the HELLO's clock offset take effect.

Buffers (issue 12): until its confirmation a link decodes from the small
pre-session buffer its connection reads into, and a frame over
``PRE_SESSION_MAX_FRAME`` bytes is a protocol error. At a valid
SESSION_CONFIRM the protocol calls ``session_source()`` (set by the
connection): the connection takes the device link's buffers from the pool and
moves the bytes not yet decoded into their buffer, and decoding goes on there in
the same call (a status frame in the confirm's TCP segment is applied); None
(no buffers free) refuses the link with CLOSE reason 2.

Liveness (ICD 7.3): "nothing has arrived" counts accepted frames
(``last_frame``), not bytes (``last_rx``): bytes that yield no accepted frame
for the dead-after time close the link as stalled. An exception out of any
entry point is the connection's to catch: it calls :meth:`internal_error`,
which closes the link with CLOSE reason 2 (docs/icd-decisions.md 31-35).

::

    TcpConnection (gateway/net: IO)               LinkProtocol (gateway/line: no IO)
    recv_into ─▶ the link's buffer ─────────────▶ StreamDecoder parses frames in place
    data_received(now, now_ms), eof_received ───▶ receiver.hello / check + apply, ctx callbacks
    timers: heartbeat_tick, dead_deadline ... ──▶ the state table, error rate, deadlines
    performs the bits ◀──────────────────────── return value: an int of action bits
    sock.send or queue (EPOLLOUT) ◀──────────── outbox: HELLO_ACK, HEARTBEAT, CLOSE bytes
    send() from any thread checks ◀──────────── alive: the liveness flag

The action interface is cheap on the per-frame path: a frame that is simply
applied produces no output and allocates nothing for actions. Output frames
are appended to ``outbox``; the connection writes and clears it after each call (before it
acts on the returned bits, so a HELLO_ACK still precedes a CLOSE, and a
frame is never lost to a close in the same call). Every entry point returns
an ``int`` of the bits below (0: nothing to do); bits from several moves in
one call are OR-ed, and the connection performs them in the order listed
(the bits live in ``gateway/base/link_actions.py``: neither layer imports the other).

* ``ARM_HELLO``: arm a one-shot timer after ``hello_timeout_s`` → :meth:`hello_timeout`.
* ``ARM_HEARTBEAT``: cancel the link's timers, arm a periodic one every
  ``heartbeat_s`` → :meth:`heartbeat_tick`.
* ``ARM_CONFIRM``: arm a one-shot timer after ``confirm_timeout_s`` → :meth:`confirm_timeout`.
* ``ARM_DEAD``: (re)arm the one-shot timer at ``dead_at`` → :meth:`dead_deadline`.
* ``BEGIN_CLOSE``: the link entered CLOSING: queue :meth:`send_close` behind
  the sends already queued in the loop, and arm ``linger_s`` → :meth:`linger_timeout`.
* ``SHUTDOWN_WRITE``: shut the write side once the output is flushed.
* ``DESTROY``: close the socket (unregister first), then call :meth:`connection_lost`.
* ``READ_FIRST`` (from the liveness timers only): read what the kernel already
  holds, then call the same method again with ``fresh=True``: a loop too busy
  to have read must neither call the peer silent nor give up on its partial frame.

The liveness flag ``alive`` is True only while UP (never while AWAIT_CONFIRM).
It is stored here, at the moment of the move (one attribute store), so another
thread's next ``send()`` is refused at once, not after the rest of this call's
frames. SESSION_CONFIRM is not answered: a device that confirms and then asks
/status may find its link still in AWAIT_CONFIRM until the gateway has read it.

Threading: every method runs in the loop thread of the link's connection.
``alive`` and the figures read by status (``state``, ``checks``, ``last_rx``,
``tx_frames``, ``device_id``) are read from any thread without locks: a
snapshot, not a transaction.
"""
from __future__ import annotations

import secrets

from railcodecs import (GATEWAY_RX_TYPES, NEED_DATA, Close, CommandResult, DeviceAlarm, FrameError, Heartbeat,
                        Hello, HelloAck, Reason, SessionConfirm, StreamDecoder, encode, session_key, speedups)

from gateway.base.link_actions import (ARM_CONFIRM, ARM_DEAD, ARM_HEARTBEAT, ARM_HELLO, BEGIN_CLOSE, DESTROY,
                                       READ_FIRST, SHUTDOWN_WRITE)
from gateway.line.link_state import LinkEvent, LinkState, next_state

NET_NAMES = ("A", "B")
#: how long CLOSING waits for the peer to answer our CLOSE before the socket is closed anyway
LINGER_S = 2.0
# duplicates are normal on dual nets and gaps are counted already: neither is a "hostile peer" signal
_NOT_HOSTILE = {"duplicate", "gap"}
_UP, _CLOSING, _CLOSED, _AWAIT_HELLO = LinkState.UP, LinkState.CLOSING, LinkState.CLOSED, LinkState.AWAIT_HELLO
_AWAIT_CONFIRM = LinkState.AWAIT_CONFIRM
#: states in which heartbeats run, from the HELLO_ACK on (silence is judged in UP only)
_BEATING = (LinkState.AWAIT_CONFIRM, LinkState.UP)
_PRE_SESSION = (LinkState.AWAIT_HELLO, LinkState.AWAIT_CONFIRM)
#: the longest frame a link may send before its session is confirmed (HELLO is 72 bytes, SESSION_CONFIRM
#: 60, HEARTBEAT 48 with their MACs): more undecoded bytes than this before the confirmation is a
#: protocol error (CLOSE reason 2), so an unconfirmed link is read into a small buffer (docs/icd-decisions.md)
PRE_SESSION_MAX_FRAME = 128


def random_nonce() -> int:
    """A session nonce: 64 random bits from the OS, never 0 (0 marks a refused HELLO)."""
    while True:
        nonce = secrets.randbits(64)
        if nonce:
            return nonce


class LinkProtocol(speedups.fields_base("LinkFields")):
    """The ICD protocol of one device TCP link, driven by its connection (see the module doc).

    ``alive``, ``fast``, ``last_rx``, ``last_frame`` and ``_partial_since`` are the base's: C fields
    in the compiled implementation, which its reader writes per read (codecs/_fields.pxi); so are
    ``ctx``, ``device_id``, ``heartbeat_ms``, ``outbox``, ``_acts``, ``_tx_key``, ``_hb_counter`` and
    ``tx_frames``, which its heartbeat tick reads and counts."""

    linger_s = LINGER_S

    def __init__(self, ctx, net: str, source, peer: str | None = None, *, nonce=random_nonce) -> None:
        """``ctx``: the link context (settings, receiver, config, callbacks); ``net``: "A" or "B";
        ``source``: the byte source the connection receives into (the link's receive buffer); ``peer``: for names;
        ``nonce``: a callable giving each HELLO_ACK's session nonce (tests inject one).
        Any thread (the acceptor builds it; the connection's loop uses it)."""
        self.ctx, self.net, self.source = ctx, net, source
        self._new_nonce = nonce
        #: what the rest of the gateway knows as this link (its connection sets itself here); handed to
        #: the ctx callbacks and the registry
        self.link = self
        self.state = _AWAIT_HELLO
        self.alive = False           # the liveness flag: True only while UP
        self.checks = ctx.receiver.new_link(f"{net}:{peer}", NET_NAMES.index(net))
        self.decoder: StreamDecoder | None = None
        #: the compiled steady path (railcodecs.speedups), set at the session's confirmation; None: pure
        self.fast = None
        self.device_id: int | None = None
        self._mac_key: bytes | None = None  # the device's link key (set at HELLO): HELLO_ACK is signed with it
        self._tx_key: bytes | None = None   # what signs our frames: the session key from the HELLO_ACK on
        self.session_nonce: int | None = None
        self.heartbeat_ms = ctx.settings.heartbeat_ms
        self.outbox = bytearray()    # frames for the connection to write (it clears it)
        self._acts = 0               # action bits gathered during the current call
        self._hb_counter = 0
        self.last_rx = 0.0           # monotonic s of the last bytes received (set by connection_made)
        self._partial_since: float | None = None
        self._err_window_start = 0.0
        self._err_in_window = 0
        self.dead_at = 0.0           # with ARM_DEAD: when the dead-deadline timer fires (monotonic s)
        self.last_frame = 0.0        # monotonic s of the last frame accepted (liveness, ICD 7.3)
        #: set by the connection: called at a valid SESSION_CONFIRM, returns the byte source the link
        #: decodes from from then on (its receive buffer, holding the bytes not yet decoded), or None when no
        #: link buffers are free (the link is refused). None here: the source never changes (tests).
        self.session_source = None
        self.close_reason: int | None = None
        self.why = ""
        self.tx_frames = 0           # frames this protocol produced (the connection counts send()'s)

    # -- figures the connection reads --------------------------------------------------
    @property
    def hello_timeout_s(self) -> float:
        return self.ctx.settings.hello_timeout_ms / 1000

    @property
    def confirm_timeout_s(self) -> float:
        """How long after HELLO_ACK a SESSION_CONFIRM may take (the ICD's 5 s: the HELLO wait's setting)."""
        return self.ctx.settings.hello_timeout_ms / 1000

    @property
    def awaiting_confirm(self) -> bool:
        """Between a good HELLO's HELLO_ACK and the SESSION_CONFIRM: the device is known, and the link is
        neither alive nor registered, so nothing outside its loop acts on it (the connection may move it
        to its device's loop then)."""
        return self.state is _AWAIT_CONFIRM

    @property
    def heartbeat_s(self) -> float:
        return self.heartbeat_ms / 1000

    @property
    def output_high_water(self) -> int:
        """The output queue's bound in bytes (a live setting). Any thread."""
        return self.ctx.settings.output_high_water

    def _take(self) -> int:
        acts, self._acts = self._acts, 0
        return acts

    # -- the connection's events ---------------------------------------------------------
    def connection_made(self, now: float) -> int:
        """The socket is registered on the loop; ``now``: monotonic s."""
        self.last_rx = self.last_frame = self._err_window_start = now
        self.ctx.link_started(self.link)
        return ARM_HELLO

    def data_received(self, now: float, now_ms: int) -> int:
        """New bytes are in the source: decode them. ``now``: monotonic s; ``now_ms``: wall ms."""
        self.last_rx = now
        self._decode(now, now_ms)
        return self._take()

    def decode_buffered(self, now: float, now_ms: int) -> int:
        """Decode what the source holds without new bytes (the buffer is full and must make room)."""
        self._decode(now, now_ms)
        return self._take()

    def _decode(self, now: float, now_ms: int) -> None:
        dec = self.decoder
        if dec is None:
            dec = self.decoder = StreamDecoder(types=GATEWAY_RX_TYPES, mac=self.ctx.mac_policy, source=self.source)
        progressed = False
        while True:
            fast = self.fast
            if fast is not None and self.state is _UP and fast.run(now_ms):
                # the compiled path took a run of good frames; the next one (if any) is the Python path's
                progressed = True
                if fast.accepted:
                    self.last_frame = now
                if fast.drained:
                    break
            ev = dec.next_event()
            if ev is NEED_DATA:
                break
            progressed = True
            if self.state is _CLOSED:
                break
            if isinstance(ev, FrameError):
                self._count_error(ev.reason, now)
                if ev.reason is Reason.MISSING_MAC and self.state is _AWAIT_HELLO:
                    # an unsigned HELLO from a device that must sign: say so (ICD result 3). Its src
                    # cannot be trusted, so the answer goes to node 0.
                    self._emit(HelloAck(HelloAck.MAC_REQUIRED, self.heartbeat_ms, now_ms, 0), now_ms, dst=0)
                    self._move(LinkEvent.HELLO_REFUSED, "HELLO without the MAC the device requires")
            else:
                self._on_frame(ev, now, now_ms)
                # the session may have been confirmed and moved to its buffer: go on decoding there
                dec = self.decoder
        if self.state in _PRE_SESSION and dec.buffered > PRE_SESSION_MAX_FRAME:
            self._oversize()  # (a frame that cannot complete in the connection's small pre-session buffer)
        # A partial frame is overdue when the decoder has made no progress for a while (a corrupted
        # length holding it up), not merely when every read of a busy stream ends mid-frame.
        if not dec.buffered:
            self._partial_since = None
        elif progressed or self._partial_since is None:
            self._partial_since = self.last_rx

    def eof_received(self, now: float, now_ms: int) -> int:
        """The peer shut its write side: decode what is left, then close."""
        self._decode(now, now_ms)
        self._move(LinkEvent.EOF, "peer closed the connection")
        return self._take()

    def io_error(self, why: str) -> int:
        """A read, write or shutdown failed (reset, broken pipe...)."""
        self._move(LinkEvent.IO_ERROR, why)
        return self._take()

    def slow_peer(self) -> int:
        """The output queue went over the high-water mark: the peer is not reading."""
        if self.state is not _CLOSED:
            self.ctx.counters["closed_slow"] += 1
            self._move(LinkEvent.SLOW_PEER, "output over the high-water mark: peer not reading")
        return self._take()

    def internal_error(self, why: str) -> int:
        """The connection caught an unexpected exception in one of this protocol's calls (our bug, or a
        ctx callback's such as ``apply``): counted (``internal_error`` on the link, ``internal_errors``
        in the gateway's counters), reported (``ctx.link_fault``: the LINK_FAULT alarm) and the link is
        closed with CLOSE reason 2 instead of being left half alive. Bits the failed call had gathered
        are kept (a close it had begun still needs its CLOSE)."""
        self.checks.errors["internal_error"] += 1
        self.ctx.counters["internal_errors"] += 1
        if self.state is not _CLOSED:
            self.ctx.link_fault(self.link, why)
        self._move(LinkEvent.INTERNAL_ERROR, why)
        return self._take()

    def evict(self, why: str) -> int:
        """The pre-session budget gave this unconfirmed link's place to a source holding fewer: abort it
        (no CLOSE). A link confirmed meanwhile is left alone."""
        if self.state in _PRE_SESSION or (self.state is _CLOSING and not self.checks.confirmed):
            self._move(LinkEvent.EVICTED, why)
        return self._take()

    def close(self, event: LinkEvent | None = None, why: str = "closed by the gateway") -> int:
        """Begin a close for ``event`` (default LOCAL_CLOSE: graceful)."""
        self._move(LinkEvent.LOCAL_CLOSE if event is None else event, why)
        return self._take()

    def send_close(self, now_ms: int) -> int:
        """The queued step of a close (after BEGIN_CLOSE): our CLOSE, then the write side shut."""
        if self.state is not _CLOSING:
            return 0
        if self.close_reason is not None:
            self._emit(Close(self.close_reason), now_ms)
        self._acts |= SHUTDOWN_WRITE
        return self._take()

    def connection_lost(self) -> None:
        """The socket is closed (after DESTROY): the link's checks and registration end."""
        self.ctx.receiver.link_closed(self.checks)
        self.ctx.link_closed(self.link)

    # -- timers ---------------------------------------------------------------------------
    def hello_timeout(self) -> int:
        if self.state is _AWAIT_HELLO:
            self._move(LinkEvent.HELLO_TIMEOUT, "no HELLO in time")
        return self._take()

    def confirm_timeout(self) -> int:
        if self.state is _AWAIT_CONFIRM:
            self.ctx.counters["confirm_timeouts"] += 1
            self._move(LinkEvent.CONFIRM_TIMEOUT, "no valid SESSION_CONFIRM in time")
        return self._take()

    def linger_timeout(self) -> int:
        self._move(LinkEvent.LINGER_TIMEOUT)
        return self._take()

    def heartbeat_tick(self, now: float, now_ms: int, fresh: bool = False) -> int:
        """Every heartbeat from the HELLO_ACK on (AWAIT_CONFIRM and UP): judge silence (UP only),
        watch the partial frame, send our HEARTBEAT.

        Before the confirmation silence is not judged: the confirm deadline bounds that wait, so a link
        that never confirms is closed with the ICD's CLOSE reason 2, whatever its heartbeat.
        ``fresh``: the connection has just read what the kernel held (after READ_FIRST).

        The compiled reactor does the steady case of this method itself (``FastReader.heartbeat`` in
        ``gateway/net/_reactor.pyx``: UP with the FastLink, not silent, no ARM_DEAD, no partial frame;
        the same formulas) and calls the connection's ``_on_heartbeat_tick`` for every other: a change
        here is a change there too (tests/test_heartbeat_tick.py compares the two)."""
        if self.state not in _BEATING or (self.state is _UP and self._judge_silence(now, fresh)):
            return self._take()
        hb_s = self.heartbeat_ms / 1000
        if self._partial_since is not None and now - self._partial_since > hb_s:
            self.decoder.abandon_partial()
            self._decode(now, now_ms)
        # The tick runs every heartbeat, so on its own it would notice a death up to one heartbeat
        # late (dead after 3 x heartbeat, seen at the 4th tick). When the deadline falls before the
        # next tick, one timer at the deadline itself makes detection exact; only near-silent
        # links pay for it, and one handle per link is kept.
        deadline = self.last_frame + self.ctx.settings.dead_after * hb_s
        if deadline < now + hb_s and self.state is _UP:
            self.dead_at = deadline + 0.0005
            self._acts |= ARM_DEAD
        self._hb_counter = (self._hb_counter + 1) & 0xFFFF_FFFF
        self._emit(Heartbeat(self._hb_counter), now_ms)
        return self._take()

    def dead_deadline(self, now: float, now_ms: int, fresh: bool = False) -> int:
        """The one-shot timer at ``dead_at`` fired."""
        if self.state is _UP:
            self._judge_silence(now, fresh)
        return self._take()

    def _judge_silence(self, now: float, fresh: bool) -> bool:
        """Close the link if no frame was accepted for dead_after x heartbeat; True if it did (or if
        the connection must read first: READ_FIRST is then gathered).

        "Nothing has arrived" (ICD 7.3) counts accepted frames, not bytes: a link whose bytes keep
        coming but yield no accepted frame (garbage, frames failing their checks) is dead too, closed
        as stalled (``closed_stalled``, event LINK_STALLED) with the same CLOSE reason 1."""
        silent_ms = (now - self.last_frame) * 1000
        dead_ms = self.ctx.settings.dead_after * self.heartbeat_ms
        if not fresh:
            overdue = self._partial_since is not None and now - self._partial_since > self.heartbeat_ms / 1000
            if silent_ms > dead_ms or overdue:
                # Bytes waiting in the kernel have arrived: one recv (EAGAIN when the peer is truly
                # silent), only for links about to be judged.
                self._acts |= READ_FIRST
                return True
        if silent_ms > dead_ms:
            self.alive = False  # flagged dead at once; the close follows through the table
            if (now - self.last_rx) * 1000 <= dead_ms:
                why = f"bytes received but no frame accepted for {silent_ms:.0f} ms"
                self.ctx.counters["closed_stalled"] += 1
                self.ctx.link_stalled(self.link, why)
                self._move(LinkEvent.STALLED, why)
            else:
                self.ctx.counters["heartbeat_timeouts"] += 1
                self._move(LinkEvent.HEARTBEAT_TIMEOUT, f"nothing received for {silent_ms:.0f} ms")
            return True
        return False

    # -- the state machine ----------------------------------------------------------------
    def _move(self, event: LinkEvent, why: str = "") -> None:
        """Make one move of the table and gather what the new state asks of the connection."""
        if self.state is _CLOSED:
            return
        old = self.state
        new, reason = next_state(old, event)
        self.state = new
        if new is not _UP:
            self.alive = False  # at once: other threads' next send() is refused
        if why and not self.why:
            self.why = why
        if new is _CLOSED:
            self._acts |= DESTROY
        elif new is _CLOSING and old is not _CLOSING:
            self.close_reason = reason
            self._acts |= BEGIN_CLOSE
        # last: should the callback raise, the close is already decided and its bits gathered
        if old is _UP and new is not _UP:
            self.ctx.link_left_up(self.link, why or event.value)

    # -- frames ---------------------------------------------------------------------------
    def _count_error(self, reason: Reason, now: float) -> None:
        self.checks.count(reason)
        if reason.value in _NOT_HOSTILE:
            return
        if now - self._err_window_start >= 1.0:
            self._err_window_start, self._err_in_window = now, 0
        self._err_in_window += 1
        limit = self.ctx.settings.error_rate_limit
        if self._err_in_window > limit and self.state is not _CLOSING:
            self.ctx.counters["closed_error_rate"] += 1
            self._move(LinkEvent.ERROR_RATE, f"more than {limit} errors/s")

    def _oversize(self) -> None:
        self.ctx.counters["pre_session_oversize"] += 1
        self._move(LinkEvent.PROTOCOL_ERROR,
                   f"a frame of more than {PRE_SESSION_MAX_FRAME} bytes before the session is confirmed")

    def _on_frame(self, frame, now: float, now_ms: int) -> None:
        msg = frame.message
        if self.state in _PRE_SESSION and 28 + len(msg.pack()) + 16 * frame.mac > PRE_SESSION_MAX_FRAME:
            self._oversize()  # the same verdict whether or not the frame came in one read
            return
        if self.state is _AWAIT_HELLO:
            if not isinstance(msg, Hello):
                self.checks.count(Reason.UNKNOWN_SOURCE)
                self._move(LinkEvent.PROTOCOL_ERROR, f"{msg.NAME} before HELLO")
                return
            self._on_hello(frame, now_ms)
            return
        if self.state not in _BEATING:
            return  # CLOSING: the peer's last frames are not applied
        if isinstance(msg, Close):
            self.checks.rx_frames += 1
            self._move(LinkEvent.PEER_CLOSE, f"peer sent CLOSE reason {msg.reason}")
            return
        if isinstance(msg, Hello):
            self.checks.count(Reason.UNKNOWN_SOURCE)
            self._move(LinkEvent.PROTOCOL_ERROR, "second HELLO on a link")
            return
        if isinstance(msg, SessionConfirm):
            self._on_confirm(frame, now, now_ms)
            return
        # before the confirmation the receiver applies nothing: HEARTBEAT passes, the rest is no_session
        copies = self.checks.copies
        apply = self._hand_over if isinstance(msg, (DeviceAlarm, CommandResult)) else self.ctx.apply
        if self.ctx.receiver.check(self.checks, frame, now_ms, apply=apply) is None:
            self.last_frame = now
        elif self.checks.copies != copies:
            self.last_frame = now  # the expected dual-net copy: the link carries its device's frames

    def _hand_over(self, frame, now_ms: int) -> None:
        """An accepted DEVICE_ALARM / COMMAND_RESULT to the ctx, under the sender's lock (the receiver's
        ``apply``): with net A and net B on two loops, a device's raise and its clear reach the alarm stage in
        sequence order (handed over after the lock, the clear could overtake its raise and be ignored)."""
        if self.state is _UP:
            self.ctx.device_message(self.link, frame, now_ms)

    def _on_hello(self, frame, now_ms: int) -> None:
        dev = self.ctx.cfg.device(frame.src)
        result = self.ctx.receiver.hello(self.checks, frame, now_ms)
        if result == HelloAck.OK and dev is not None and self.net not in dev.nets:
            result = HelloAck.UNKNOWN_DEVICE
        if result != HelloAck.OK:
            self.device_id = None
            self._mac_key = self._tx_key = None
            self._emit(HelloAck(result, self.ctx.settings.heartbeat_ms, now_ms, 0), now_ms, dst=frame.src)
            self._move(LinkEvent.HELLO_REFUSED, f"HELLO refused (result {result})")
            return
        hb = frame.message.heartbeat_ms
        self.heartbeat_ms = hb if 50 <= hb <= 60_000 else self.ctx.settings.heartbeat_ms
        self.device_id = frame.src
        self._mac_key = self._tx_key = dev.mac_key if dev is not None and dev.mac != "off" else None
        nonce = self.session_nonce = self.checks.session_nonce = self._new_nonce()
        self._move(LinkEvent.HELLO_OK)
        # not alive and not registered yet: that waits for the SESSION_CONFIRM (rule 7)
        self._acts |= ARM_HEARTBEAT | ARM_CONFIRM
        self._emit(HelloAck(HelloAck.OK, self.heartbeat_ms, now_ms, nonce), now_ms)  # signed with the link key
        if self._mac_key is not None:
            # every later frame of this link, both ways, is signed with the session key
            self._tx_key = session_key(self._mac_key, frame.message.device_nonce, nonce)
            self.decoder.set_session_key(self._tx_key)

    def _on_confirm(self, frame, now: float, now_ms: int) -> None:
        verdict = self.ctx.receiver.confirm(self.checks, frame, now_ms)
        if self.state is not _AWAIT_CONFIRM:
            return  # a repeat on a confirmed link: counted (duplicate or bad_session), nothing else
        if verdict is None:
            if self.session_source is not None:
                # a device link's buffers are taken now, not at accept: the bytes after this frame move
                # with the link into its buffer and decoding goes on there (in _decode)
                source = self.session_source()
                if source is None:
                    self.ctx.counters["links_refused"] += 1
                    self._move(LinkEvent.LINKS_FULL, "session confirmed, but every device link is taken (max_links)")
                    return
                old = self.decoder
                self.source = source
                self.decoder = StreamDecoder(types=old.types, mac=old.mac, source=source)
            objects = getattr(self.ctx, "objects", None)
            if objects is not None and self.ctx.apply == objects.apply:  # (tests may apply elsewhere)
                self.fast = speedups.fast_link(self.decoder, self.checks, self.ctx.receiver.senders[frame.src],
                                               self.ctx.receiver, self.ctx.objects, self.decoder.mac.session_key,
                                               self)
            self.last_frame = now
            self._move(LinkEvent.CONFIRMED)
            self.alive = True
            # registered only now: this is where an older link of the device on this net is replaced
            self.ctx.link_up(self.link, now_ms)
        elif verdict is Reason.BAD_SESSION:
            self._move(LinkEvent.PROTOCOL_ERROR, "SESSION_CONFIRM with nonces that are not this link's")

    def encode_to_device(self, message, seq: int, now_ms: int) -> bytes:
        """One frame for this link's device, signed with this session's key: what a caller outside the
        loop hands to the connection's ``send`` (a COMMAND goes out on both nets with one ``seq``, so the
        device's sequence window takes the first copy and drops the other). Any thread: the session's
        keys are set at the handshake and only read afterwards."""
        self.tx_frames += 1     # a figure: an increment lost to a race costs one count
        return encode(message, src=self.ctx.settings.id, dst=self.device_id or 0, seq=seq, time_ms=now_ms,
                      mac_key=self._tx_key)

    def _emit(self, message, now_ms: int, dst: int | None = None) -> None:
        # the keys are looked up once, at HELLO: cfg.device() scans the device list, and this runs
        # for every heartbeat of every link
        self.outbox += encode(message, src=self.ctx.settings.id, dst=dst if dst is not None else (self.device_id or 0),
                              seq=0, time_ms=now_ms, mac_key=self._tx_key)
        self.tx_frames += 1
