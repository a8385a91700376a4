"""The gateway process: wiring of config, loops, links, checks and state.

::

    main thread: base loop ── acceptors (net A, net B), liveness timers, SIGHUP/SIGTERM
    io-0 .. io-N: IO loops ── TCP links (round-robin), the UDP endpoint (on io-0)
    admin thread: HTTP /status and /metrics

:class:`Context` is what links and the UDP endpoint call back into; every
method there states its thread. :class:`Gateway` builds and runs it all.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter

from railcodecs import MacPolicy, Receiver

from gateway.app.config import Config, diff
from gateway.line.devices import Registry
from gateway.line.events import EventLog
from gateway.line.link_state import LinkEvent
from gateway.line.object_state import ObjectState

log = logging.getLogger("railgate.gateway")


class LinkBuffers:
    """The heavy, reusable part of a link (its ring); pooled, bounded by max_links."""

    def __init__(self, ring_bytes: int) -> None:
        from gateway.net.ring_buffer import SpscRing
        self.ring = SpscRing(ring_bytes)

    def reset(self) -> None:
        self.ring.reset()


class Context:
    """Shared state the links and the UDP endpoint use. Methods say their thread."""

    def __init__(self, cfg: Config, clock_ms=None) -> None:
        self.cfg = cfg
        self.settings = cfg.gateway
        self.events = EventLog()
        self.registry = Registry(cfg, self.events)
        self.receiver = Receiver(cfg.gateway.id, cfg.senders(), max_age_ms=cfg.gateway.max_age_ms,
                                 train_reset_ms=3 * cfg.trains.heartbeat_ms)
        self.objects = ObjectState()
        self.mac_policy = MacPolicy(
            keys={d.id: d.mac_key for d in cfg.devices if d.mac_key is not None and d.mac != "off"},
            required_srcs=frozenset(d.id for d in cfg.devices if d.mac == "required"))
        self.counters: Counter = Counter()
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._links_lock = threading.Lock()
        self.links: set = set()
        self.link_pool = None  # set by the Gateway
        self.coupling_workers = None  # set by the Gateway: gateway/coupling/workers.py
        self.alarm_sink = None        # set by the Gateway: gateway/app/alarm_stage.py
        self.udp_checks = None        # set by the Gateway: the UDP endpoint's counters (threat sampling)
        self.apply = self.objects.apply

    def now_ms(self) -> int:
        """Gateway wall clock, epoch ms (injectable for tests). Any thread."""
        return self._clock_ms()

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
        if self.link_pool is not None:
            self.link_pool.release(link.buffers)

    def device_message(self, link, frame, now_ms: int) -> None:
        """An accepted DEVICE_ALARM or COMMAND_RESULT (until the alarm stage: an event)."""
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
        if self.coupling_workers is not None and frame.message.NAME == "TRAIN_STATUS":
            self.coupling_workers.submit(frame.src, frame.message, frame.time_ms, now_ms)  # pairs by sender time

    def reload(self, new: Config) -> tuple[list[str], list[str]]:
        """Apply the live part of a new config (SIGHUP). Base loop thread."""
        live, restart = diff(self.cfg, new)
        if live:
            self.settings = new.gateway
            self.receiver.set_max_age(new.gateway.max_age_ms)
            logging.getLogger("railgate").setLevel(new.gateway.log_level)
        return live, restart


def udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind UDP {host}:{port}: {exc.strerror}") from None
    return sock
