"""The link context: what TCP links and the UDP endpoint call back into.

Links (``gateway/net``) know nothing of the line, the alarms or coupling;
they report to a :class:`Context`: a link started, came up, left UP, closed;
a device message or a train datagram was accepted. The context turns that
into registry moves, alarm observations and coupling submissions. It is built
once by ``gateway.app.runtime.Gateway`` with every part it needs.

Threading: every method states its thread.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

from gateway.app.config import Config, diff
from gateway.line.line import Line
from gateway.line.link_protocol import LinkProtocol
from gateway.line.link_state import LinkEvent
from gateway.net.connection import TcpConnection, peer_address
from gateway.net.link_buffers import pre_session_buffer

log = logging.getLogger("railgate.gateway")


class Context:
    """What links and the UDP endpoint call back into. Built once by the wiring object with every
    part it needs; nothing is attached afterwards. Methods say their thread."""

    def __init__(self, cfg: Config, line: Line, *, link_pool, alarm_sink=None, coupling=None,
                 command_sink=None) -> None:
        """``line``: the line's no-IO state; ``link_pool``: the device links' buffer pool (each link takes
        its buffers at its session's confirmation and gives them back when closed);
        ``alarm_sink``: the alarm stage (``observe_device_alarm``), None without one; ``coupling``:
        the coupling workers (``submit``), None without them; ``command_sink``: the command stage
        (``observe_result``), None without one."""
        self.cfg = cfg
        self.settings = cfg.gateway
        self.line = line
        self.events, self.registry, self.receiver = line.events, line.registry, line.receiver
        self.objects, self.mac_policy = line.objects, line.mac_policy
        self.apply = line.objects.apply
        self.now_ms = line.now_ms  # gateway wall clock, epoch ms. Any thread.
        self.link_pool = link_pool
        self.alarm_sink = alarm_sink
        self.coupling = coupling
        self.command_sink = command_sink
        self.counters: Counter = Counter()
        self._tx_seq: dict[int, int] = {}      # device -> the seq of our last sequenced frame to it
        self._tx_lock = threading.Lock()
        self._links_lock = threading.Lock()
        self.links: set = set()

    def links_snapshot(self) -> list:
        """Every link not yet closed (any state). Any thread."""
        with self._links_lock:
            return list(self.links)

    def link_started(self, link) -> None:
        """Loop thread of the link."""
        with self._links_lock:
            self.links.add(link)

    def link_up(self, link, now_ms: int) -> None:
        """The link confirmed its session. Loop thread of the link."""
        old = self.registry.link_up(link.device_id, link.net, link, now_ms)
        if old is not None:
            old.close(LinkEvent.REPLACED, "replaced by a newer link")
        # a link handler served a whole handshake again: the device's LINK_FAULT (and one raised before
        # any device was known) clears
        self.events.clear_condition("LINK_FAULT", self._source(link), now_ms, f"net {link.net}: session confirmed")
        self.events.clear_condition("LINK_FAULT", self.settings.name, now_ms, f"net {link.net}: session confirmed")

    def _source(self, link) -> str:
        """The name events about this link carry: its device's, or the gateway's before a HELLO named one."""
        dev = self.cfg.device(link.device_id) if link.device_id is not None else None
        return dev.name if dev is not None else self.settings.name

    def link_fault(self, link, why: str) -> None:
        """An unexpected exception in the link's handler: raise the LINK_FAULT condition (an alarm via
        alarms/sources.py SEVERITY), cleared at the device's next confirmed session. Loop thread."""
        self.events.raise_condition("LINK_FAULT", self._source(link), self.now_ms(),
                                    f"net {link.net} {getattr(link, 'peer', None)}: {why}")

    def link_stalled(self, link, why: str) -> None:
        """The link received bytes but accepted no frame for the dead-after time (it is closed as dead;
        LINK_REDUNDANCY_LOST / DEVICE_COMM_LOST follow from link_left_up). Loop thread."""
        self.events.emit("LINK_STALLED", self._source(link), self.now_ms(), f"net {link.net}: {why}")

    def link_left_up(self, link, why: str) -> None:
        """The link left UP (timeout, close, error). Loop thread of the link."""
        self.registry.link_down(link.device_id, link.net, link, self.now_ms(), why)

    def link_closed(self, link) -> None:
        """The socket is closed (the connection gives its buffers back itself); a link that was registered
        leaves its final counters in the registry (before it leaves ``links``). Loop thread of the link."""
        try:
            self.registry.link_closed(link, self.now_ms())
        finally:
            with self._links_lock:
                self.links.discard(link)

    def device_message(self, link, frame, now_ms: int) -> None:
        """An accepted DEVICE_ALARM (an event, and to the alarm stage) or COMMAND_RESULT (an event). Loop thread,
        under the sender's lock (so a device's messages come in sequence order from both nets): queue, never wait."""
        msg = frame.message
        dev = self.cfg.device(frame.src)
        name = dev.name if dev else str(frame.src)
        if msg.NAME == "DEVICE_ALARM":
            verb = "raise" if msg.action == msg.RAISE else "clear"
            self.events.emit("DEVICE_ALARM", name, now_ms,
                             f"{verb} code {msg.code} severity {msg.severity} object {msg.object_id}: {msg.text}")
            if self.alarm_sink is not None:
                self.alarm_sink.observe_device_alarm(name, msg, now_ms)
        else:
            self.events.emit("COMMAND_RESULT", name, now_ms,
                             f"command {msg.command_id} result {msg.result} detail {msg.detail}")
            if self.command_sink is not None:
                self.command_sink.observe_result(frame.src, msg, now_ms)

    def send_to_device(self, device_id: int, message, now_ms: int) -> list[str]:
        """Send ``message`` to the device on every net it has a link up on, with one sequence number
        (the device's window acts on the first copy and drops the other: a COMMAND acts once). The nets
        it went out on (empty: the device is unreachable). Any thread."""
        with self._tx_lock:
            seq = self._tx_seq.get(device_id, 0) % 0xFFFF_FFFF + 1
            self._tx_seq[device_id] = seq
        sent = []
        for net, link in sorted(self.registry.links_of(device_id).items()):
            if link is not None and link.send(link.protocol.encode_to_device(message, seq, now_ms)):
                sent.append(net)
        return sent

    def train_applied(self, frame, now_ms: int) -> None:
        """An accepted train datagram. UDP loop thread."""
        self.registry.train_seen(frame.src, now_ms)
        if self.coupling is not None and frame.message.NAME == "TRAIN_STATUS":
            self.coupling.submit(frame.src, frame.message, frame.time_ms, now_ms)  # pairs by sender time

    def reload(self, new: Config) -> tuple[list[str], list[str]]:
        """Apply the live part of a new config (SIGHUP). Base loop thread."""
        live, restart = diff(self.cfg, new)
        if live:
            self.settings = new.gateway
            self.receiver.set_max_age(new.gateway.max_age_ms)
            logging.getLogger("railgate").setLevel(new.gateway.log_level)
        return live, restart


def new_link(ctx: Context, loop, sock, net: str, admission, home=None):
    """One device link, as the acceptors build it: the ICD protocol (``gateway/line/link_protocol.py``)
    decoding from a small pre-session buffer, and the connection doing its IO (``gateway/net/connection.py``),
    which is what the registry, status and ``close``/``send`` callers know as the link; at the session's
    confirmation the connection takes the link's ``LinkBuffers`` from ``ctx.link_pool``. ``admission``:
    the connection's slot in the pre-session budget; ``home``: the device's home loop by id, for the move
    after its HELLO (None: it stays). The wiring hands it to each acceptor with ``ctx`` bound. Base loop
    thread."""
    peer = peer_address(sock)
    rx = pre_session_buffer()
    protocol = LinkProtocol(ctx, net, rx, peer)
    return TcpConnection(loop, sock, protocol, rx, clock_ms=ctx.now_ms, peer=peer, link_pool=ctx.link_pool,
                         admission=admission, home=home)
