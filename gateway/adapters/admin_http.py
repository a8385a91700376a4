"""The admin API's HTTP server: one routing table, served on its own event loop thread.

Who calls it: :class:`gateway.app.runtime.Gateway` builds the routing table
(``gateway/app/admin_routes.py``, the one place that says which
``(METHOD, "/path")`` does what) and starts one :class:`AdminServer` with it
in ``start()``, stopping it in ``_shutdown()``; ``gateway status`` and
``gateway alarms ...`` are its clients. This module knows HTTP and the
table's types (:class:`Request`, :class:`Response`, :data:`RouteTable`),
nothing of the gateway, its status or its alarms. Connections, limits and the
edge-triggered reading are ``gateway/adapters/http_connection.py``'s.

Threads: one **admin** thread, an ``EventLoopThread`` of ``gateway/net``,
runs an ``EventLoop`` over the listener and every connection. The handlers
are called there, one at a time, and never block it. The contract:

* ``handler(request)`` returns a ready :class:`Response`, or a
  ``concurrent.futures.Future`` that will hold one (say, an operator action
  the alarm thread will answer);
* for a future the server adds a done-callback. It runs in whatever thread
  completes the future and only hands it back to the admin loop with
  ``queue_in_loop``; the answer is encoded and written there. Meanwhile that
  connection reads nothing more (its pipelined requests wait their turn) and
  every other connection is served;
* a future not done ``action_timeout_s`` after its request gets 503. It is not
  cancelled (the work may still happen, and the alarm thread does not expect
  cancelled futures); its late result is dropped and counted (``late``);
* a handler that raises, a future that fails, or a result that is not a
  Response -> 500 naming the error, and the server goes on serving.

``start``/``stop`` are called from any thread but the admin one; ``port`` from any;
``stats`` from the admin thread (a handler).

Connections, and why ``gateway status`` still gets in during a flood. A
connection costs the server little, but the table of them is bounded
(``max_connections``), and a bounded table is what a flood fills: 128 idle
sockets used to lock every operator out. Three rules keep a slot for an
operator (each refusal or eviction is counted in :meth:`AdminServer.stats`):

* **Deadlines** (``http_connection.py``): a request head within
  ``head_timeout_s`` (5 s) of the accept, its body within ``body_timeout_s``
  (10 s) of the head, however slowly bytes trickle in. A slot held without a
  request is held for seconds, not forever.
* **Per client address** at most ``max_per_client`` (16) connections; an
  address is an IPv4 address or an IPv6 /64 (one host may own a whole /64).
  A new connection from an address at its cap replaces that address's
  oldest connection that is *idle* (no answer awaited or queued: still
  sending its request, or between requests); only if none is idle is the
  new one refused. So an address flooding with idle or slowloris sockets
  (the admin API usually listens on loopback, where the operator's CLI and
  any local flooder share 127.0.0.1) crowds out only its own oldest ones,
  while ``gateway status`` opens one connection and is answered within
  milliseconds, long before it becomes the oldest.
* **Reserved slots**: the last ``reserved`` (4) of ``max_connections`` go
  only to an address that holds no connection yet. Addresses that already
  hold one can fill the rest (8 addresses at their cap of 16 fill 124), and
  a fresh address, an operator's machine, still finds a slot.

Chosen over loopback-only reservations (a local flooder is loopback too) and
over evicting across addresses (a flood from many addresses would then evict
the operator as readily as anyone else). Not defended: a flood from more
distinct addresses than ``(max_connections - reserved) / max_per_client +
reserved`` (12 by default) holding sockets can still fill every slot for the
few seconds of a deadline at a time; filter the admin port by firewall.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import select
import socket
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Callable, Union
from urllib.parse import parse_qsl, urlsplit

from gateway.adapters.http_connection import (JSON_TYPE, MAX_BODY_BYTES, MAX_HEAD_BYTES, HttpConnection,
                                              json_error)
from gateway.net.loop_pool import EventLoopThread

__all__ = ["AdminServer", "Handler", "JSON_TYPE", "MAX_BODY_BYTES", "MAX_HEAD_BYTES", "Request", "Response",
           "RouteTable"]

log = logging.getLogger("railgate.admin")

HEAD_TIMEOUT_S = 5.0      # request head complete within this of the accept / the previous response
BODY_TIMEOUT_S = 10.0     # request body complete within this of its head
ACTION_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 128
MAX_PER_CLIENT = 16       # connections per client address (IPv4 address, IPv6 /64)
RESERVED = 4              # of MAX_CONNECTIONS, only for an address holding none
ACCEPT_RETRY_S = 0.1  # after EMFILE & co.: no new edge comes for connections left in the backlog


@dataclass(frozen=True, slots=True)
class Request:
    """One complete request as a handler sees it. ``method`` as sent (HEAD is routed as GET);
    ``query`` is {name: last value}; ``headers`` {lower-case name: last value} (latin-1 text);
    ``client`` the peer's address, ``ip:port`` (``[ip]:port`` for IPv6)."""

    method: str
    path: str
    query: dict
    body: bytes
    #: ``call_later(delay_s, fn, *args)`` runs ``fn`` in the admin loop and returns a handle with
    #: ``cancel()``: for a handler's own deadline shorter than the server's. Safe from any thread.
    call_later: Callable = field(repr=False, compare=False)
    headers: dict = field(default_factory=dict, repr=False)
    client: str = ""


@dataclass(frozen=True, slots=True)
class Response:
    """An answer. ``document`` (JSON-ready) is encoded by the server in its loop, so a future may be
    completed with it cheaply in another thread; without one, ``body`` is sent as ``content_type``."""

    status: int
    document: object = None
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if type(self.status) is not int or not 100 <= self.status <= 599:
            raise ValueError(f"Response status must be an int in 100..599, got {self.status!r}")
        if not isinstance(self.body, bytes) or (self.body and self.document is not None):
            raise ValueError("Response: give a JSON document or body bytes, not both")


#: ``handler(request) -> Response | Future[Response]``; called in the admin loop thread, never blocks.
Handler = Callable[[Request], Union[Response, Future]]
#: ``{("GET", "/status"): handler, ...}``: the whole API; built in ``gateway/app/admin_routes.py``.
RouteTable = dict[tuple[str, str], Handler]


class AdminServer:
    """HTTP on its own loop thread; see the module docstring for the handler contract."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, routes: RouteTable | None = None, *,
                 head_timeout_s: float = HEAD_TIMEOUT_S, body_timeout_s: float = BODY_TIMEOUT_S,
                 action_timeout_s: float = ACTION_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                 max_per_client: int = MAX_PER_CLIENT, reserved: int = RESERVED) -> None:
        """Configure; nothing is bound until start(). Any thread.

        ``routes``: the :data:`RouteTable`, used as given (no route is built in). The limits: see the
        module docstring; ``1 <= max_per_client <= max_connections - reserved``.
        """
        if not (0 <= reserved < max_connections and 1 <= max_per_client <= max_connections - reserved):
            raise ValueError(f"AdminServer: expected 0 <= reserved ({reserved}) < max_connections "
                             f"({max_connections}) and 1 <= max_per_client ({max_per_client}) <= "
                             f"max_connections - reserved")
        if not isinstance(routes, dict):
            raise TypeError(f"AdminServer needs a routing table {{(METHOD, '/path'): handler}}, got {routes!r}")
        for key, handler in routes.items():
            if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str) and key[0].isupper()
                    and isinstance(key[1], str) and key[1].startswith("/") and callable(handler)):
                raise ValueError(f"route {key!r}: expected ('METHOD', '/path') -> callable")
        self._routes: RouteTable = dict(routes)
        self._allowed: dict[str, list[str]] = {}
        for method, path in self._routes:
            self._allowed.setdefault(path, []).append(method)
        self.host, self._requested_port, self._port = host, port, port
        self._head_timeout_s, self._body_timeout_s = head_timeout_s, body_timeout_s
        self._action_timeout_s = action_timeout_s
        self._max_connections, self._max_per_client, self._reserved = max_connections, max_per_client, reserved
        self._listener: socket.socket | None = None
        self._thread: EventLoopThread | None = None
        self._loop = None
        self._conns: dict[HttpConnection, str] = {}               # conn -> its client address key
        self._by_client: dict[str, dict[HttpConnection, None]] = {}  # key -> its conns, oldest first
        self._pending: dict[HttpConnection, tuple[Future, object]] = {}  # conn -> (future, deadline timer)
        # counters: the admin thread writes them
        self.refused = 0            # connections closed at accept: every slot they could take was held
        self.refused_per_client = 0  # ... of which: their address at its cap with none of its own idle
        self.evicted = 0            # idle connections closed to make room for their address's newer one
        self.timed_out = 0          # connections closed for a deadline (408, or silently when idle)
        self.late = 0               # futures done after their 503 or their connection

    @property
    def port(self) -> int:
        """The bound port once start() has run (the requested one before). Any thread."""
        return self._port

    def stats(self) -> dict:
        """JSON-ready connection figures (counts of connections, futures). Admin thread (a handler)."""
        return {"connections": len(self._conns), "clients": len(self._by_client),
                "max_connections": self._max_connections, "max_per_client": self._max_per_client,
                "reserved": self._reserved, "refused": self.refused, "refused_per_client": self.refused_per_client,
                "evicted": self.evicted, "timed_out": self.timed_out, "late": self.late}

    # -- life -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind, listen, start the admin loop thread; returns once connections are accepted. Once."""
        if self._listener is not None:
            raise RuntimeError("AdminServer.start(): already started (a server runs once)")
        try:
            family = socket.getaddrinfo(self.host, self._requested_port, type=socket.SOCK_STREAM)[0][0]
            self._listener = socket.create_server((self.host, self._requested_port), family=family, backlog=128)
        except OSError as exc:
            raise OSError(exc.errno, f"admin API cannot listen on {self.host}:{self._requested_port}: "
                                     f"{exc.strerror}") from exc
        self._listener.setblocking(False)
        self._port = self._listener.getsockname()[1]  # kept: still answerable after stop() closes the socket
        self._thread = EventLoopThread("admin", init=self._init_loop)
        try:
            self._loop = self._thread.start_loop()
        except BaseException:
            self._listener.close()
            raise
        log.info("admin API listening on http://%s:%d", self.host, self.port)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every connection, join the admin thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and loop.is_in_loop_thread():
            raise RuntimeError("AdminServer.stop() called from the admin thread (a handler); it would join itself")
        if loop is not None and not loop.closed:
            loop.queue_in_loop(self._close_all)  # runs before the loop's run() returns
        thread.stop(timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"admin thread did not stop within {timeout_s} s")
        self._close_all()  # a no-op, unless the loop thread died before doing it
        self._thread = None

    # -- the admin loop thread ------------------------------------------------------------------
    def _init_loop(self, loop) -> None:
        self._loop = loop
        loop.register(self._listener.fileno(), select.EPOLLIN, self._accept)

    def _close_all(self) -> None:
        for conn in list(self._conns):
            conn.close()
        if self._listener.fileno() >= 0:
            if not self._loop.closed:
                self._loop.unregister(self._listener.fileno())
            self._listener.close()

    def _accept(self, _mask: int = 0) -> None:
        while self._listener.fileno() >= 0:  # ET: until EAGAIN
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("admin API: accept failed: %s; retrying in %s s", exc, ACCEPT_RETRY_S)
                self._loop.call_later(ACCEPT_RETRY_S, self._accept)
                return
            key = client_key(addr[0])
            if not self._make_room(key):
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = HttpConnection(self._loop, sock, head_timeout_s=self._head_timeout_s,
                                  body_timeout_s=self._body_timeout_s, on_request=self._dispatch,
                                  on_closed=self._closed, peer=peer_text(addr))
            self._conns[conn] = key
            self._by_client.setdefault(key, {})[conn] = None

    def _make_room(self, key: str) -> bool:
        """May a new connection from ``key`` be taken? Evicts its oldest idle one at its cap (see the
        module docstring for the rules and why)."""
        mine = self._by_client.get(key)
        held = len(mine) if mine else 0
        if held >= self._max_per_client:
            victim = next((c for c in mine if c.idle), None)
            if victim is None:
                self.refused_per_client += 1
                return False
            self.evicted += 1
            victim.close()  # _closed() forgets it: the total stays the same
            return True
        total = len(self._conns)
        return total < self._max_connections - (self._reserved if held else 0)

    def _closed(self, conn: HttpConnection) -> None:
        key = self._conns.pop(conn, None)
        if key is not None:
            mine = self._by_client[key]
            del mine[conn]
            if not mine:
                del self._by_client[key]
        if conn.timed_out:
            self.timed_out += 1
        pending = self._pending.pop(conn, None)
        if pending is not None:
            pending[1].cancel()

    def _dispatch(self, conn: HttpConnection) -> None:
        """``on_request``: route the request; answer it now, or when its future is done."""
        req = conn.request
        method = req.method.decode("ascii")
        target = urlsplit(req.target.decode("ascii", "replace"))
        path = target.path or "/"
        handler = self._routes.get(("GET" if method == "HEAD" else method, path))
        if handler is None:
            allowed = self._allowed.get(path)
            if allowed is None:
                return self._answer(conn, Response(404, {"error": f"no such path: {path}", "path": path}))
            allow = sorted(allowed + (["HEAD"] if "GET" in allowed else []))
            return self._answer(conn, Response(405, {"error": f"method {method} not allowed on {path}",
                                                     "allow": allow}, headers=(("Allow", ", ".join(allow)),)))
        headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in req.headers}  # h11: lower-case names
        try:
            result = handler(Request(method, path, dict(parse_qsl(target.query, keep_blank_values=True)),
                                     bytes(conn.body), self._loop.call_later, headers, conn.peer))
        except Exception as exc:  # a handler's bug: tell the client, keep serving
            return self._failed(conn, exc)
        if isinstance(result, Future) and not result.done():
            timer = self._loop.call_later(self._action_timeout_s, self._expired, conn, result)
            self._pending[conn] = (result, timer)
            result.add_done_callback(lambda fut: self._settled(conn, fut))
        else:
            self._answer(conn, result)

    def _settled(self, conn: HttpConnection, fut: Future) -> None:
        """A handler's future is done. Any thread (the one that completed it): hop to the loop."""
        if not self._loop.closed:
            self._loop.queue_in_loop(self._resume, conn, fut)

    def _resume(self, conn: HttpConnection, fut: Future) -> None:
        pending = self._pending.get(conn)
        if pending is None or pending[0] is not fut:  # answered 503 already, or the connection is gone
            self.late += 1
            return
        del self._pending[conn]
        pending[1].cancel()
        self._answer(conn, fut)

    def _expired(self, conn: HttpConnection, fut: Future) -> None:
        pending = self._pending.get(conn)
        if pending is None or pending[0] is not fut:
            return
        del self._pending[conn]
        log.warning("admin API: %s %s not answered within %s s", conn.request.method.decode(),
                    conn.request.target.decode("ascii", "replace"), self._action_timeout_s)
        conn.answer(503, JSON_TYPE, json_error(f"no answer within {self._action_timeout_s} s; the request may "
                                               f"still take effect: check before repeating it"))

    def _answer(self, conn: HttpConnection, result) -> None:
        if isinstance(result, Future):
            try:
                result = result.result(timeout=0)  # done: never waits
            except (Exception, CancelledError) as exc:
                return self._failed(conn, exc)
        if not isinstance(result, Response):
            return self._failed(conn, TypeError(f"route handler returned {result!r}, expected a Response "
                                                f"or a concurrent.futures.Future of one"))
        try:
            body = result.body if result.document is None else json.dumps(result.document,
                                                                         separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            return self._failed(conn, exc)
        conn.answer(result.status, result.content_type, body, headers=result.headers)

    def _failed(self, conn: HttpConnection, exc: BaseException) -> None:
        method, path = conn.request.method.decode(), urlsplit(conn.request.target.decode("ascii", "replace")).path
        log.error("admin API: %s %s failed", method, path, exc_info=exc)
        conn.answer(500, JSON_TYPE, json_error(f"{method} {path} failed: {type(exc).__name__}: {exc}"))


def client_key(host: str) -> str:
    """The address a per-client cap counts by: an IPv4 address (also when IPv4-mapped), an IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def peer_text(addr) -> str:
    """``ip:port``, ``[ip]:port`` for IPv6: how a client is named in logs and journaled actions."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
