"""Listening sockets for net A and net B; new links handed to IO loops round-robin.

The acceptor lives on the base loop. On readiness it accepts until EAGAIN
(edge-triggered), takes a buffer set from the bounded link pool (over
``max_links`` the connection is closed at once and counted as refused),
picks the next IO loop, has the wiring code's factory build the link
(``new_link(loop, sock, net, buffers)``: a connection and its protocol, which
this IO-only layer does not know) and starts it there with ``run_in_loop``.

Threading: base loop thread only.
"""
from __future__ import annotations

import errno
import logging
import select
import socket

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


class Acceptor:
    """Accepts device connections on one net."""

    def __init__(self, ctx, base_loop, loops, sock: socket.socket, net: str, link_pool, new_link) -> None:
        """``ctx``: counters (``ctx.counters``); ``new_link(loop, sock, net, buffers)``: builds a link
        with a ``start()`` to run in ``loop`` (called in this, the base loop's, thread)."""
        self.ctx, self.base_loop, self.loops, self.sock, self.net = ctx, base_loop, loops, sock, net
        self.link_pool = link_pool
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
                conn, _ = self.sock.accept()
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
            buffers = self.link_pool.acquire()
            if buffers is None:
                self.refused += 1
                self.ctx.counters["links_refused"] += 1
                conn.close()
                continue
            self.accepted += 1
            loop = self.loops.next_loop()
            link = self.new_link(loop, conn, self.net, buffers)
            loop.run_in_loop(link.start)
