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

log = logging.getLogger("railgate.gateway")


class Context:
    """What links and the UDP endpoint call back into. Built once by the wiring object with every
    part it needs; nothing is attached afterwards. Methods say their thread."""

    def __init__(self, cfg: Config, line: Line, *, link_pool, alarm_sink=None, coupling=None) -> None:
        """``line``: the line's no-IO state; ``link_pool``: the links' buffer pool (released on close);
        ``alarm_sink``: the alarm stage (``observe_device_alarm``), None without one; ``coupling``:
        the coupling workers (``submit``), None without them."""
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
        self.counters: Counter = Counter()
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
        """The link completed HELLO. Loop thread of the link."""
        old = self.registry.link_up(link.device_id, link.net, link, now_ms)
        if old is not None:
            old.close(LinkEvent.REPLACED, "replaced by a newer link")

    def link_left_up(self, link, why: str) -> None:
        """The link left UP (timeout, close, error). Loop thread of the link."""
        self.registry.link_down(link.device_id, link.net, link, self.now_ms(), why)

    def link_closed(self, link) -> None:
        """The socket is closed; its buffers go back to the pool. Loop thread of the link."""
        with self._links_lock:
            self.links.discard(link)
        self.link_pool.release(link.buffers)

    def device_message(self, link, frame, now_ms: int) -> None:
        """An accepted DEVICE_ALARM (an event, and to the alarm stage) or COMMAND_RESULT (an event). Loop thread."""
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


def new_link(ctx: Context, loop, sock, net: str, buffers):
    """One device link, as the acceptors build it: the ICD protocol (``gateway/line/link_protocol.py``)
    decoding from the link's ring, and the connection doing its IO (``gateway/net/connection.py``),
    which is what the registry, status and ``close``/``send`` callers know as the link. The wiring
    hands it to each acceptor with ``ctx`` bound. Base loop thread."""
    peer = peer_address(sock)
    protocol = LinkProtocol(ctx, net, buffers.ring, peer)
    return TcpConnection(loop, sock, protocol, buffers, clock_ms=ctx.now_ms, peer=peer)
