"""Listening sockets for net A and net B; new links handed to IO loops round-robin; the pre-session budget.

The acceptor lives on the base loop. On readiness it accepts until EAGAIN
(edge-triggered), admits the connection into the :class:`PreSessionBudget`
(over it, the connection is closed at once and counted ``pre_session_refused``,
so the backlog drains), picks the next IO loop, has the wiring code's factory
build the link (``new_link(loop, sock, net, slot)``: a connection and its
protocol, which this IO-only layer does not know) and starts it there with
``run_in_loop``. A connection takes no device link buffers here: it reads
into a small pre-session buffer until its session is confirmed, and only then
takes its ``LinkBuffers`` from the bounded pool (``max_links`` counts device
links only), so connections that never say HELLO cannot hold a device's place.

The budget: at most ``max_connections`` unconfirmed connections, at most
``per_source`` of them from one address. When it is full, a connection from
an address holding at least two fewer than the address holding the most
takes that address's oldest slot (that connection is aborted): a fair share,
so a few flooding addresses cannot keep a device's connection out, whatever
their deadlines. A slot is left at the confirmation or the close.

Threading: the acceptor runs on the base loop thread only; the budget's
``admit`` runs there, ``leave`` in the IO loops (it takes a lock).
"""
from __future__ import annotations

import errno
import logging
import select
import socket
import threading
from collections import deque

log = logging.getLogger("railgate.acceptor")
EV_READ = select.EPOLLIN | select.EPOLLET


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A non-blocking listening TCP socket (port 0 picks a free one)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class PreSessionSlot:
    """One unconfirmed connection's place in the budget; ``link`` is set by the acceptor."""

    __slots__ = ("budget", "source", "link", "held")

    def __init__(self, budget: "PreSessionBudget", source: str) -> None:
        self.budget, self.source, self.link, self.held = budget, source, None, True

    def leave(self) -> None:
        """Give the place back (the session was confirmed, or the connection closed). Any thread; once."""
        self.budget.leave(self)


class PreSessionBudget:
    """How many connections may wait for their session's confirmation, in all and per source address."""

    def __init__(self, max_connections: int, per_source: int) -> None:
        """Create in any thread."""
        if not 1 <= per_source <= max_connections:
            raise ValueError(f"need 1 <= per_source ({per_source}) <= max_connections ({max_connections})")
        self.max_connections, self.per_source = max_connections, per_source
        self._lock = threading.Lock()
        self._held: dict[str, deque] = {}   # source address -> its slots, oldest first
        self.in_use = self.high_water = self.admitted = self.refused = self.evicted = 0

    def admit(self, source: str) -> tuple[PreSessionSlot | None, object | None]:
        """``(slot, link to evict or None)``, or ``(None, None)`` when refused. Base loop thread."""
        with self._lock:
            mine = self._held.get(source)
            n = len(mine) if mine else 0
            victim = None
            if n >= self.per_source:
                self.refused += 1
                return None, None
            if self.in_use >= self.max_connections:
                heavy = max(self._held.values(), key=len)
                if len(heavy) < n + 2:  # taking its place would not leave us holding fewer than it
                    self.refused += 1
                    return None, None
                old = heavy.popleft()
                old.held = False
                if not heavy:
                    del self._held[old.source]
                self.in_use -= 1
                self.evicted += 1
                victim = old.link
            slot = PreSessionSlot(self, source)
            self._held.setdefault(source, deque()).append(slot)
            self.in_use += 1
            self.admitted += 1
            self.high_water = max(self.high_water, self.in_use)
            return slot, victim

    def leave(self, slot: PreSessionSlot) -> None:
        """Any thread; a slot already left (or evicted) is ignored."""
        with self._lock:
            if not slot.held:
                return
            slot.held = False
            mine = self._held[slot.source]
            mine.remove(slot)
            if not mine:
                del self._held[slot.source]
            self.in_use -= 1

    def stats(self) -> dict:
        """JSON-ready figures. Any thread."""
        with self._lock:
            return {"in_use": self.in_use, "sources": len(self._held), "high_water": self.high_water,
                    "admitted": self.admitted, "refused": self.refused, "evicted": self.evicted,
                    "max_connections": self.max_connections, "max_connections_per_source": self.per_source}


class Acceptor:
    """Accepts device connections on one net."""

    def __init__(self, ctx, base_loop, loops, sock: socket.socket, net: str, pre_session: PreSessionBudget,
                 new_link) -> None:
        """``ctx``: counters (``ctx.counters``); ``pre_session``: the budget of unconfirmed connections
        (shared by both nets); ``new_link(loop, sock, net, slot)``: builds a link with a ``start()`` to
        run in ``loop`` (called in this, the base loop's, thread)."""
        self.ctx, self.base_loop, self.loops, self.sock, self.net = ctx, base_loop, loops, sock, net
        self.pre_session = pre_session
        self.new_link = new_link
        self.accepted = 0
        self.refused = 0

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> None:
        self.base_loop.register(self.sock.fileno(), EV_READ, self._on_events)

    def stop(self) -> None:
        try:
            self.base_loop.unregister(self.sock.fileno())
        except (KeyError, OSError, ValueError):
            pass
        self.sock.close()

    def _on_events(self, mask: int) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept on net %s: %s (out of descriptors or memory)", self.net, exc.strerror)
                    self.ctx.counters["accept_errors"] += 1
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                raise
            slot, victim = self.pre_session.admit(addr[0])
            if slot is None:
                self.refused += 1
                self.ctx.counters["pre_session_refused"] += 1
                conn.close()
                continue
            if victim is not None:
                self.ctx.counters["pre_session_evicted"] += 1
                victim.evict()
            self.accepted += 1
            loop = self.loops.next_loop()
            try:
                link = self.new_link(loop, conn, self.net, slot)
            except Exception:
                log.exception("net %s: building a link for %s failed", self.net, addr[0])
                slot.leave()
                conn.close()
                self.ctx.counters["accept_errors"] += 1
                continue
            slot.link = link
            loop.run_in_loop(link.start)
