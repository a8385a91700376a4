"""Receiver safety checks of ICD v1 section 6, sans-IO: the EN 50159 defences.

One :class:`Receiver` per gateway decides, for every decoded frame, whether it
is applied or dropped and why, and keeps the counters the status API shows.

=============  ===========================================  ==========================
EN 50159 threat what the receiver checks                     counter that moves
=============  ===========================================  ==========================
repetition     seq already seen (beyond a dual-net copy)      ``duplicate``
deletion       seq newer by more than one                    ``gap`` (+ skipped count)
insertion      src not configured / not the link's device    ``unknown_source``
resequencing   seq older than the last applied, not seen     ``stale``
corruption     CRC (decoder), payload parse (decoder)        ``bad_crc``, ``bad_payload``
delay          age by the learned clock offset > max_age_ms  ``stale``
masquerade     MAC (decoder), src/kind vs config and HELLO   ``bad_mac``, ``unknown_source``
=============  ===========================================  ==========================

Decisions where the ICD is silent (also in docs/icd-decisions.md):

* A device's sequence window is reset when a link's session is confirmed
  while none of its other links is (a new session: the device may have
  restarted and begun again at seq 1). A link confirmed on the second net
  joins the running session.
* Trains send no HELLO: their clocks are taken as synchronised with the
  gateway's (offset 0), and a train silent for longer than
  ``train_reset_ms`` starts a new session at its next datagram, provided the
  datagram passes the age check (so an old recording cannot restart it).
* A frame from the future by more than ``max_age_ms`` is ``stale`` too: a
  clock that jumped is not trusted.
* Dual nets: the first copy of a number from the other net is dropped as
  ``duplicate`` (ICD 6) but counted as a dual-net copy (``LinkChecks.copies``,
  ``SenderState.dual_net_copies``), not in the link's ``duplicate`` errors: it
  is the normal second copy. A second copy on the same net, or a third copy,
  is a repetition (see sequence.py).
* Per-link messages: a HEARTBEAT counter equal to the last is ``duplicate``,
  lower is ``stale``, higher by more than one adds the lost beats to ``gap``;
  their seq field is not checked (the ICD says 0; nothing depends on it).
* Sessions (ICD 1.1): :meth:`Receiver.hello` only names the link's device and
  remembers the clock offset; :meth:`Receiver.confirm` (a SESSION_CONFIRM
  whose nonces match) makes the offset take effect and joins the device's
  session (the window reset above happens there, not at HELLO). Before it,
  :meth:`Receiver.check` applies nothing: a HEARTBEAT is let through (its
  counter tracked, its age not judged: the offset is not in effect yet),
  anything else is ``no_session``.

Clock: every method takes ``now_ms`` (gateway wall clock, epoch ms); nothing
reads a clock here.

Threading: :meth:`Receiver.check` may be called from several IO loop threads
at once (net A and net B links of a device live on different loops); the
sender's window and counters are updated under that sender's lock (a
``threading.Lock``, or the compiled ``Sender``'s ``CLock``, which the compiled
link path also takes without the GIL). A
train's sender is different: no TCP link serves a train (:meth:`Receiver.hello`
refuses their kind), so the UDP loop thread is its one writer;
:meth:`check_datagram` still takes its lock, and the compiled UDP step
(``railcodecs._core.TrainBatch``) writes it with the GIL held and no lock. A
:class:`LinkChecks` belongs to the one thread that serves its link.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from .errors import Reason
from .frame import Frame
from .messages import Heartbeat, Hello, HelloAck, SessionConfirm
from . import speedups
from .sequence import APPLY, COPY, DUPLICATE, STALE, SequenceWindow

TRAIN_KIND = 4


@dataclass
class SenderState:
    """What the receiver knows of one configured sender (device or train)."""

    id: int
    kind: int
    window: SequenceWindow
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    applied: int = 0
    duplicates: int = 0          # every copy dropped as duplicate (ICD), dual-net copies included
    dual_net_copies: int = 0     # of which: the other net's expected copy
    stale: int = 0
    gap: int = 0
    sessions: int = 0
    open_links: int = 0
    last_applied_ms: int | None = None

    def counters(self) -> dict:
        return {"applied": self.applied, "duplicates": self.duplicates, "dual_net_copies": self.dual_net_copies,
                "stale": self.stale, "gap": self.gap, "sessions": self.sessions}


class LinkChecks(speedups.fields_base("ChecksFields")):
    """Per-link state: the device its HELLO named, session nonces, clock offset, heartbeat counter, errors.

    ``device_nonce`` comes from the HELLO; ``session_nonce`` is set by whoever
    answers the HELLO_ACK (the link protocol), before :meth:`Receiver.confirm`.
    Used only by the thread that serves the link.
    """

    # (offset_ms, hb_last, rx_frames, applied and copies are the base's: codecs/_fields.pxi)
    __slots__ = ("name", "net", "device_id", "kind", "pending_offset_ms", "device_nonce",
                 "session_nonce", "confirmed", "errors", "closed")

    def __init__(self, name: str, net: int | None = None) -> None:
        self.name = name
        self.net = net
        self.device_id: int | None = None
        self.kind: int | None = None
        self.offset_ms = 0
        self.pending_offset_ms = 0   # taught by the HELLO; in effect from the confirmation on
        self.device_nonce: int | None = None
        self.session_nonce: int | None = None
        self.confirmed = False
        self.hb_last: int | None = None
        self.errors: Counter = Counter()
        self.rx_frames = 0
        self.applied = 0
        self.copies = 0              # dual-net copies dropped here: expected, so not in ``errors``
        self.closed = False

    def count(self, reason: Reason, n: int = 1) -> None:
        self.errors[reason.value] += n


class Receiver:
    """EN 50159 receiver checks for one gateway.

    ``senders``: configured node id -> kind code (1 CI, 2 ZC, 3 PSD, 4 train).
    """

    def __init__(self, gateway_id: int, senders: dict[int, int], *, max_age_ms: int = 2000, window: int = 1024,
                 train_reset_ms: int = 3000) -> None:
        self.gateway_id = gateway_id
        self.max_age_ms = max_age_ms
        self.train_reset_ms = train_reset_ms
        self._window = window
        # a sender's state is the compiled Sender when the core is active (FastLink and the UDP batch
        # step write its C fields, under its CLock for a device); it has SenderState's attributes, so
        # every method here runs on either
        sender_type = speedups.sender_type() or SenderState
        self.senders: dict[int, SenderState] = {
            sid: sender_type(sid, kind, speedups.new_window(window)) for sid, kind in senders.items()}

    # -- links ----------------------------------------------------------------
    def new_link(self, name: str, net: int | None = None) -> LinkChecks:
        """A link object for a new TCP connection (or a UDP endpoint). Any thread."""
        return LinkChecks(name, net)

    def hello(self, link: LinkChecks, frame: Frame, now_ms: int) -> int:
        """Check a HELLO: name the link's device, learn (not yet use) the clock offset and the nonce.

        Returns the HELLO_ACK result code (0 ok, 1 unknown device). The link
        joins its device's session only at :meth:`confirm` (ICD 1.1 rule 7).
        Safe from the link's thread. Never raises on a decoded frame: one that
        is not a HELLO names no device (``unknown_type``).
        """
        msg = frame.message
        link.rx_frames += 1
        if not isinstance(msg, Hello):
            link.count(Reason.UNKNOWN_TYPE)
            return HelloAck.UNKNOWN_DEVICE
        if frame.dst != self.gateway_id:
            link.count(Reason.WRONG_DESTINATION)
            return HelloAck.UNKNOWN_DEVICE
        sender = self.senders.get(frame.src)
        if sender is None or sender.kind != msg.device_kind or sender.kind == TRAIN_KIND or \
                (link.device_id is not None and link.device_id != frame.src):
            link.count(Reason.UNKNOWN_SOURCE)
            return HelloAck.UNKNOWN_DEVICE
        if link.confirmed:  # a HELLO on a confirmed link starts nothing (the protocol closes it)
            link.count(Reason.UNKNOWN_SOURCE)
            return HelloAck.UNKNOWN_DEVICE
        link.device_id, link.kind, link.net = frame.src, msg.device_kind, msg.net
        link.pending_offset_ms = frame.time_ms - now_ms
        link.device_nonce, link.session_nonce = msg.device_nonce, None
        link.hb_last = None
        return HelloAck.OK

    def confirm(self, link: LinkChecks, frame: Frame, now_ms: int) -> Reason | None:
        """Check a SESSION_CONFIRM: None when it confirms the link's session, else the drop reason.

        The nonces must be this link's HELLO's ``device_nonce`` and the
        ``session_nonce`` its HELLO_ACK carried (``bad_session`` otherwise).
        On confirmation the HELLO's clock offset takes effect and the link
        joins its device's session: a new one (window reset) when no other
        link of the device is confirmed. A repeat on a confirmed link is
        ``duplicate`` (matching) or ``bad_session``. Takes the sender's lock.
        """
        msg = frame.message
        link.rx_frames += 1
        if not isinstance(msg, SessionConfirm):
            return self._drop(link, Reason.UNKNOWN_TYPE)
        if frame.dst != self.gateway_id:
            return self._drop(link, Reason.WRONG_DESTINATION)
        sender = self.senders.get(frame.src)
        if link.device_id is None or frame.src != link.device_id or sender is None:
            return self._drop(link, Reason.UNKNOWN_SOURCE)
        if link.session_nonce is None or msg.device_nonce != link.device_nonce or \
                msg.session_nonce != link.session_nonce:
            return self._drop(link, Reason.BAD_SESSION)
        if link.confirmed:
            return self._drop(link, Reason.DUPLICATE)
        with sender.lock:
            if sender.open_links == 0:
                sender.window.reset()
                sender.sessions += 1
            sender.open_links += 1
            link.confirmed = True
            link.offset_ms = link.pending_offset_ms
        return None

    def link_closed(self, link: LinkChecks) -> None:
        """The link is gone; the device's session lasts while another confirmed link is open."""
        if link.closed:
            return
        link.closed = True
        sender = self.senders.get(link.device_id) if link.confirmed and link.device_id is not None else None
        if sender is not None:
            with sender.lock:
                sender.open_links -= 1

    # -- frames -----------------------------------------------------------------
    def check(self, link: LinkChecks, frame: Frame, now_ms: int, apply=None) -> Reason | None:
        """Decide one decoded TCP frame (not HELLO, not SESSION_CONFIRM): None to apply, else the drop reason.

        The reason has been counted on the link (and on the sender for
        duplicate/stale); ``gap`` is counted when a newer frame is applied.
        ``apply(frame, now_ms)``, if given, runs for an accepted sequenced frame
        while the sender's lock is held, so frames of one sender are applied in
        sequence order even when net A and net B are served by two threads.
        """
        link.rx_frames += 1
        if frame.dst != self.gateway_id:
            return self._drop(link, Reason.WRONG_DESTINATION)
        sender = self.senders.get(frame.src)
        if link.device_id is None or frame.src != link.device_id or sender is None:
            return self._drop(link, Reason.UNKNOWN_SOURCE)
        msg = frame.message
        if not link.confirmed:
            # nothing is applied before the session is confirmed; the HELLO's offset is not in effect
            if isinstance(msg, Heartbeat):
                return self._heartbeat(link, msg.counter)
            return self._drop(link, Reason.NO_SESSION)
        age = now_ms - (frame.time_ms - link.offset_ms)
        if age > self.max_age_ms or -age > self.max_age_ms:
            return self._drop(link, Reason.STALE, sender)
        if msg.PER_LINK:
            if isinstance(msg, Heartbeat):
                return self._heartbeat(link, msg.counter)
            return None
        return self._sequence(link, sender, frame, now_ms, apply)

    def check_datagram(self, link: LinkChecks, frame: Frame, now_ms: int, apply=None) -> Reason | None:
        """Decide one decoded train datagram: None to apply, else the drop reason.

        ``link`` is the UDP endpoint's LinkChecks (errors are counted there);
        ``apply`` as for :meth:`check`.
        """
        link.rx_frames += 1
        if frame.dst != self.gateway_id:
            return self._drop(link, Reason.WRONG_DESTINATION)
        sender = self.senders.get(frame.src)
        if sender is None or sender.kind != TRAIN_KIND:
            return self._drop(link, Reason.UNKNOWN_SOURCE)
        age = now_ms - frame.time_ms
        if age > self.max_age_ms or -age > self.max_age_ms:
            return self._drop(link, Reason.STALE, sender)
        last = sender.last_applied_ms
        if last is None or now_ms - last > self.train_reset_ms:
            with sender.lock:
                if sender.last_applied_ms == last:  # nobody started the session meanwhile
                    sender.window.reset()
                    sender.sessions += 1
        return self._sequence(link, sender, frame, now_ms, apply)

    # -- internals ----------------------------------------------------------------
    def _sequence(self, link: LinkChecks, sender: SenderState, frame: Frame, now_ms: int,
                  apply) -> Reason | None:
        with sender.lock:
            verdict, skipped = sender.window.check(frame.seq, link.net)
            if verdict == APPLY:
                sender.applied += 1
                sender.gap += skipped
                sender.last_applied_ms = now_ms
                if apply is not None:
                    apply(frame, now_ms)
            elif verdict == STALE:
                sender.stale += 1
            else:
                sender.duplicates += 1
                if verdict == COPY:
                    sender.dual_net_copies += 1
        if verdict == APPLY:
            link.applied += 1
            if skipped:
                link.count(Reason.GAP, skipped)
            return None
        if verdict == COPY:
            # dropped as duplicate (ICD 6), but the expected second copy of a dual-net device: counted
            # apart, so that the link's `duplicate` errors and the REPETITION threat are repeats only
            link.copies += 1
            return Reason.DUPLICATE
        return self._drop(link, Reason.DUPLICATE if verdict == DUPLICATE else Reason.STALE)

    def _heartbeat(self, link: LinkChecks, counter: int) -> Reason | None:
        last = link.hb_last
        if last is not None:
            d = (counter - last) & 0xFFFF_FFFF
            if d == 0:
                return self._drop(link, Reason.DUPLICATE)
            if d >= 0x8000_0000:
                return self._drop(link, Reason.STALE)
            if d > 1:
                link.count(Reason.GAP, d - 1)
        link.hb_last = counter
        return None

    def _drop(self, link: LinkChecks, reason: Reason, sender: SenderState | None = None) -> Reason:
        link.count(reason)
        if sender is not None and reason is Reason.STALE:
            with sender.lock:
                sender.stale += 1
        return reason

    def set_max_age(self, max_age_ms: int) -> None:
        """Live reload (SIGHUP). Any thread: a single attribute store."""
        self.max_age_ms = max_age_ms
