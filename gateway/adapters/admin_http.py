"""Admin HTTP API: ``GET /status`` (JSON), ``GET /metrics`` (Prometheus text), pluggable routes.

Who calls it: :class:`gateway.app.runtime.Gateway` starts one ``AdminServer`` in
``start()`` and stops it at shutdown; ``gateway status`` is its main client.

Threading: one **admin** thread runs a ``selectors`` loop over the listening
socket, every open connection and a wake-up eventfd. One thread, not one per
connection, because then ``status_provider`` and every route handler are
called from that thread only, one call at a time: later handlers (alarm
ack/shelve) need no locks against each other, an idle keep-alive client costs a
dict entry instead of a thread, and ``stop()`` joins exactly one thread. The
price is that a slow handler delays every client; status snapshots are plain
ints read without locks (``gateway/app/status.py``), and a handler that may block
must hand its work to another thread.

HTTP parsing and framing are h11's (sans-IO): this module only moves bytes
between sockets and ``h11.Connection`` objects and decides what to answer.
Limits, each answered with a status code rather than a stalled socket:

* request head over 16 KiB -> 431, other malformed requests -> 400 (h11's
  ``error_status_hint``), then close;
* request body over 64 KiB -> 413 and close (judged from Content-Length when
  given, so an oversized upload is refused before it is read);
* a request not complete ``timeout_s`` after the connection's previous
  response (or its accept) -> 408 if one was started, else a silent close;
* more than ``max_connections`` open connections -> new ones closed at accept.

A connection we close while the peer may still be sending is shut down for
writing and drained for up to ``LINGER_S`` first: closing a socket with unread
input sends RST, which can destroy the error response before the client reads
it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import selectors
import socket
import threading
import time
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

import h11

log = logging.getLogger("railgate.admin")

MAX_BODY_BYTES = 64 * 1024
MAX_HEAD_BYTES = 16 * 1024
TIMEOUT_S = 10.0
LINGER_S = 2.0
MAX_CONNECTIONS = 128
RECV_BYTES = 64 * 1024
JSON_TYPE = "application/json"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SERVER_HEADER = f"railgate-admin {h11.PRODUCT_ID}"

#: ``handler(query, body) -> (status_code, json_dict)``; query is {name: last value}.
Handler = Callable[[dict, bytes], tuple[int, dict]]


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _Client:
    """One accepted connection. Touched by the admin thread only."""

    __slots__ = ("sock", "conn", "out", "deadline", "request", "body", "closing", "draining", "events")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.out = bytearray()          # response bytes the socket has not taken yet
        self.deadline = deadline        # monotonic seconds
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.closing = False            # shut down once `out` is flushed
        self.draining = False           # shut down for writing; discarding input until EOF or deadline
        self.events = selectors.EVENT_READ


class AdminServer:
    """The admin API on its own thread. See the module docstring for limits and threading."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, status_provider: Callable[[], dict] | None = None,
                 routes: dict[tuple[str, str], Handler] | None = None, *, timeout_s: float = TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        """Configure; nothing is bound until start(). Any thread.

        ``status_provider()`` returns the status dict (``gateway/app/status.py``);
        ``routes`` maps ``(METHOD, "/path")`` to a :data:`Handler`. Both are
        called in the admin thread only, never concurrently.
        """
        if not callable(status_provider):
            raise TypeError(f"status_provider must be callable, got {status_provider!r}")
        self.host, self._requested_port, self._port = host, port, port
        self._provider = status_provider
        self._timeout_s, self._max_connections = timeout_s, max_connections
        self._routes: dict[tuple[str, str], Callable] = {("GET", "/status"): self._get_status,
                                                         ("GET", "/metrics"): self._get_metrics}
        for (method, path), handler in (routes or {}).items():
            if not (isinstance(path, str) and path.startswith("/")) or not callable(handler):
                raise ValueError(f"route ({method!r}, {path!r}): expected ('METHOD', '/path') -> callable")
            if (method.upper(), path) in self._routes:
                raise ValueError(f"route {method.upper()} {path} is built in and cannot be replaced")
            self._routes[(method.upper(), path)] = _json_route(handler)
        self._allowed: dict[str, list[str]] = {}
        for method, path in self._routes:
            self._allowed.setdefault(path, []).append(method)
        self._listener: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake = -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._clients: set[_Client] = set()
        self.refused = 0  # connections closed at accept over max_connections (admin thread writes)

    @property
    def port(self) -> int:
        """The bound port once start() has run (the requested one before). Any thread."""
        return self._port

    def start(self) -> None:
        """Bind, listen and start the admin thread; returns once connections are accepted. Any thread, once."""
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
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "listener")
        self._sel.register(self._wake, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="admin", daemon=True)
        self._thread.start()
        log.info("admin API listening on http://%s:%d", self.host, self.port)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every connection, join the admin thread. Any thread but the admin one; idempotent."""
        thread = self._thread
        if thread is None:
            return
        if thread is threading.current_thread():
            raise RuntimeError("AdminServer.stop() called from the admin thread (a handler); it would join itself")
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        thread.join(timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"admin thread did not stop within {timeout_s} s")
        os.close(self._wake)
        self._thread, self._wake = None, -1

    # -- the admin thread ----------------------------------------------------------------
    def _run(self) -> None:
        sel = self._sel
        try:
            while not self._stopping:
                for key, mask in sel.select(self._poll_timeout()):
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        os.eventfd_read(self._wake)
                    elif key.data in self._clients:  # may have been closed earlier in this batch
                        self._on_event(key.data, mask)
                self._expire(time.monotonic())
        except Exception:  # a bug here must not leave a zombie listener: log, then close everything
            log.exception("admin API loop failed; admin API stopped")
        finally:
            for c in list(self._clients):
                self._close(c)
            sel.close()
            self._listener.close()

    def _poll_timeout(self) -> float | None:
        if not self._clients:
            return None
        return max(0.0, min(c.deadline for c in self._clients) - time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: the listener stays readable, so without a
                # pause the loop would spin; the admin API may be slow, not hot.
                log.warning("admin API: accept failed: %s", exc)
                time.sleep(0.05)
                return
            if len(self._clients) >= self._max_connections:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _Client(sock, time.monotonic() + self._timeout_s)
            self._clients.add(c)
            self._sel.register(sock, selectors.EVENT_READ, c)

    def _on_event(self, c: _Client, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(c)
            if mask & selectors.EVENT_READ and c in self._clients:
                self._read(c)
            if c in self._clients:
                self._process(c)
        except Exception:  # one broken connection must not stop the others being served
            log.exception("admin API: connection failed")
            self._close(c)

    def _read(self, c: _Client) -> None:
        try:
            data = c.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # reset by the peer: same as EOF for us
        if c.draining or c.closing:
            if not data:
                self._close(c)
            return
        c.conn.receive_data(data)

    def _process(self, c: _Client) -> None:
        """Answer every complete request h11 has buffered; stop while output is pending (back-pressure)."""
        while not c.closing and not c.out:
            try:
                event = c.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._respond(c, exc.error_status_hint, JSON_TYPE, _json({"error": f"malformed request: {exc}"}),
                              close=True)
                break
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                c.request, c.body = event, bytearray()
                length = _content_length(event)
                head = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if head > MAX_HEAD_BYTES:  # h11 caps only heads still incomplete; one recv may bring it whole
                    self._respond(c, 431, JSON_TYPE, _json({"error": f"request head of about {head} bytes is "
                                                                     f"over the {MAX_HEAD_BYTES} byte limit"}),
                                  close=True)
                elif length is not None and length > MAX_BODY_BYTES:
                    self._too_large(c, length)
                elif c.conn.they_are_waiting_for_100_continue:
                    self._send(c, c.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            elif isinstance(event, h11.Data):
                c.body += event.data
                if len(c.body) > MAX_BODY_BYTES:
                    self._too_large(c, len(c.body))
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch(c)
                if c.conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
                    c.conn.start_next_cycle()
                    c.request, c.body = None, bytearray()
                    c.deadline = time.monotonic() + self._timeout_s
            elif isinstance(event, h11.ConnectionClosed):
                c.closing = True
        if c.closing and not c.out and not c.draining:
            self._linger(c)

    def _dispatch(self, c: _Client) -> None:
        req = c.request
        method = req.method.decode("ascii")
        target = urlsplit(req.target.decode("ascii", "replace"))
        path = target.path or "/"
        route = self._routes.get(("GET" if method == "HEAD" else method, path))
        if route is None:
            allowed = self._allowed.get(path)
            if allowed is None:
                self._respond(c, 404, JSON_TYPE, _json({"error": f"no such path: {path}", "path": path}))
            else:
                allow = sorted(allowed + (["HEAD"] if "GET" in allowed else []))
                self._respond(c, 405, JSON_TYPE, _json({"error": f"method {method} not allowed on {path}",
                                                        "allow": allow}), headers=[("Allow", ", ".join(allow))])
            return
        try:
            status, content_type, body = route(dict(parse_qsl(target.query, keep_blank_values=True)), bytes(c.body))
        except Exception as exc:  # the provider's or a handler's bug: tell the client, keep serving
            log.exception("admin API: %s %s failed", method, path)
            status, content_type = 500, JSON_TYPE
            body = _json({"error": f"{method} {path} failed: {type(exc).__name__}: {exc}"})
        self._respond(c, status, content_type, body)

    def _too_large(self, c: _Client, size: int) -> None:
        self._respond(c, 413, JSON_TYPE, _json({"error": f"request body of {size} bytes is over the "
                                                         f"{MAX_BODY_BYTES} byte limit"}), close=True)

    def _respond(self, c: _Client, status: int, content_type: str, body: bytes, *, close: bool = False,
                 headers: list[tuple[str, str]] = ()) -> None:
        if c.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            c.closing = True  # already answered (or broken): there is nothing sane left to send
            return
        head = [("Server", SERVER_HEADER), ("Content-Type", content_type), ("Content-Length", str(len(body))),
                *headers]
        if close:
            head.append(("Connection", "close"))
        data = c.conn.send(h11.Response(status_code=status, headers=head))
        if body and not (c.request is not None and c.request.method == b"HEAD"):
            data += c.conn.send(h11.Data(data=body))
        data += c.conn.send(h11.EndOfMessage())
        if c.conn.our_state is h11.MUST_CLOSE:
            c.closing = True
        self._send(c, data)

    def _send(self, c: _Client, data: bytes) -> None:
        c.out += data
        self._flush(c)

    def _flush(self, c: _Client) -> None:
        """Write what the socket takes now; poll for writability only while output is pending."""
        while c.out:
            try:
                sent = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the peer is gone: nothing more to say to it
                c.out.clear()
                c.closing = c.draining = True
                self._close(c)
                return
            del c.out[:sent]
        # Stop reading while a response is queued: a client pipelining requests
        # without reading answers would otherwise grow h11's buffer without bound.
        want = selectors.EVENT_WRITE if c.out else selectors.EVENT_READ
        if want != c.events:
            self._sel.modify(c.sock, want, c)
            c.events = want

    def _linger(self, c: _Client) -> None:
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(c)
            return
        c.draining = True
        c.deadline = min(c.deadline, time.monotonic() + LINGER_S)

    def _expire(self, now: float) -> None:
        for c in [c for c in self._clients if c.deadline <= now]:
            if not c.draining and not c.out and c.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and (
                    c.conn.their_state is not h11.IDLE or c.conn.trailing_data[0]):
                self._respond(c, 408, JSON_TYPE, _json({"error": f"request not complete within "
                                                                 f"{self._timeout_s} s"}), close=True)
            if c in self._clients:
                self._close(c)

    def _close(self, c: _Client) -> None:
        if c in self._clients:
            self._clients.discard(c)
            self._sel.unregister(c.sock)
            c.sock.close()

    # -- built-in routes (admin thread) -------------------------------------------------
    def _status(self) -> dict:
        status = self._provider()
        if not isinstance(status, dict):
            raise TypeError(f"status_provider returned {type(status).__name__}, expected a dict")
        return status

    def _get_status(self, query: dict, body: bytes) -> tuple[int, str, bytes]:
        return 200, JSON_TYPE, _json(self._status())

    def _get_metrics(self, query: dict, body: bytes) -> tuple[int, str, bytes]:
        return 200, PROMETHEUS_TYPE, render_metrics(self._status()).encode()


def _json_route(handler: Handler) -> Callable[[dict, bytes], tuple[int, str, bytes]]:
    def route(query: dict, body: bytes) -> tuple[int, str, bytes]:
        result = handler(query, body)
        if not (isinstance(result, tuple) and len(result) == 2 and type(result[0]) is int
                and 100 <= result[0] <= 599 and isinstance(result[1], dict)):
            raise TypeError(f"route handler {handler!r} returned {result!r}, expected (status_code, dict)")
        return result[0], JSON_TYPE, _json(result[1])
    return route


def _content_length(req: h11.Request) -> int | None:
    for name, value in req.headers:
        if name == b"content-length":
            return int(value)  # h11 has already checked it is digits
    return None


# -- /metrics: Prometheus text exposition format 0.0.4 -----------------------------------
# Units are Prometheus base units named in the metric: the status dict's _ms
# ages become _seconds, cm/s becomes meters_per_second.

_LOOP_METRICS = (  # (status keys, first present wins; metric; type; help)
    (("iterations",), "railgate_loop_iterations_total", "counter", "Poll iterations of the IO loop."),
    (("events",), "railgate_loop_events_total", "counter", "fd events handled by the IO loop."),
    (("functors", "functors_run"), "railgate_loop_functors_total", "counter", "Cross-thread calls run."),
    (("timers", "timers_run"), "railgate_loop_timers_fired_total", "counter", "Timer callbacks run."),
    (("timers_missed",), "railgate_loop_timers_missed_total", "counter", "Timers that fired late."),
    (("callback_errors",), "railgate_loop_callback_errors_total", "counter", "Callbacks that raised."),
    (("links",), "railgate_loop_links", "gauge", "TCP links owned by the IO loop."),
    (("fds",), "railgate_loop_fds", "gauge", "File descriptors registered with the IO loop."),
    (("timers_pending",), "railgate_loop_timers_pending", "gauge", "Timers waiting to fire."),
)
_LINK_COUNTERS = (("rx_frames", "Frames received on the link."), ("tx_frames", "Frames sent on the link."),
                  ("rx_bytes", "Bytes received on the link."), ("tx_bytes", "Bytes sent on the link."))
_RECEIVER_COUNTERS = (("applied", "applied", "Frames applied (new sequence numbers)."),
                      ("duplicates", "duplicate", "Frames dropped as duplicates (normal on dual nets)."),
                      ("stale", "stale", "Frames dropped as stale (too old or out of order)."),
                      ("gap", "lost", "Frames never received (sequence gaps)."))


class _Families:
    """Metric families in first-use order; every family renders HELP and TYPE, even with no samples."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_: str, value, /, **labels: object) -> None:
        family = self._families.setdefault(name, (kind, help_, []))
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)):
            return  # None (not known yet) has no sample; absent is not zero
        text = ("NaN" if math.isnan(value) else "+Inf" if value == math.inf else "-Inf" if value == -math.inf
                else repr(value))
        pairs = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
        family[2].append(f"{name}{{{pairs}}} {text}" if pairs else f"{name} {text}")

    def render(self) -> str:
        out = []
        for name, (kind, help_, samples) in self._families.items():
            out += [f"# HELP {name} {help_.replace(chr(92), chr(92) * 2)}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(out) + "\n"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _scaled(value, factor: float):
    return value / factor if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def render_metrics(status: dict) -> str:
    """The status dict (``gateway/app/status.py``) as Prometheus text 0.0.4. Pure; any thread.

    Missing sections give families without samples; ``None`` values give no sample.
    """
    f = _Families()
    f.add("railgate_info", "gauge", "Gateway identity in labels; always 1.", 1, gateway_id=status.get("gateway_id", ""),
          name=status.get("name", ""), version=status.get("version", ""))
    f.add("railgate_uptime_seconds", "gauge", "Seconds since the gateway started.", status.get("uptime_s"))
    for d in status.get("devices", ()):
        dev = d.get("id")
        f.add("railgate_device_info", "gauge", "Configured device; name and kind in labels; always 1.", 1,
              device=dev, name=d.get("name", ""), kind=d.get("kind", ""))
        f.add("railgate_device_reachable", "gauge", "1 if the device is reachable on a net.", d.get("reachable"),
              device=dev)
        _receiver(f, "device", d, device=dev)
        for link in d.get("links", ()):
            where = {"device": dev, "net": link.get("net")}
            f.add("railgate_link_up", "gauge", "1 if the link is alive (heartbeats arriving).", link.get("alive"),
                  **where)
            for key, help_ in _LINK_COUNTERS:
                f.add(f"railgate_link_{key}_total", "counter", help_, link.get(key), **where)
            f.add("railgate_link_last_rx_age_seconds", "gauge", "Seconds since the link last received a frame.",
                  _scaled(link.get("last_rx_age_ms"), 1000), **where)
            f.add("railgate_link_errors_total", "counter", "Frames rejected on the link, by reason.", None)
            for reason, n in sorted((link.get("errors") or {}).items()):
                f.add("railgate_link_errors_total", "counter", "", n, **where, reason=reason)
    for t in status.get("trains", ()):
        train = t.get("id")
        f.add("railgate_train_reachable", "gauge", "1 if the train reports within its heartbeat.",
              t.get("reachable"), train=train)
        f.add("railgate_train_speed_meters_per_second", "gauge", "Last reported train speed.",
              _scaled(t.get("speed_cm_s"), 100), train=train)
        f.add("railgate_train_last_rx_age_seconds", "gauge", "Seconds since the train's last datagram.",
              _scaled(t.get("last_rx_age_ms"), 1000), train=train)
        _receiver(f, "train", t, train=train)
    udp = status.get("udp") or {}
    f.add("railgate_udp_rx_datagrams_total", "counter", "UDP datagrams received.", udp.get("rx_datagrams"))
    f.add("railgate_udp_dropped_no_slab_total", "counter", "UDP datagrams dropped: no free slab.",
          udp.get("dropped_no_slab"))
    f.add("railgate_udp_errors_total", "counter", "UDP datagrams rejected, by reason.", None)
    for reason, n in sorted((udp.get("errors") or {}).items()):
        f.add("railgate_udp_errors_total", "counter", "", n, reason=reason)
    for loop in status.get("loops", ()):
        for keys, name, kind, help_ in _LOOP_METRICS:
            key = next((k for k in keys if k in loop), None)
            if key is not None:  # loops report links or fds, not both: no family that is always empty
                f.add(name, kind, help_, loop[key], loop=loop.get("name"))
    pools = status.get("pools") or {}
    slabs, links = pools.get("slabs") or {}, pools.get("links") or {}
    for state in ("in_use", "free"):
        f.add("railgate_pool_slabs", "gauge", "UDP receive slabs, by state.", slabs.get(state), state=state)
    f.add("railgate_pool_slabs_high_water", "gauge", "Most slabs in use at once.", slabs.get("high_water"))
    f.add("railgate_pool_exhausted_total", "counter", "Slab requests refused: pool empty.", slabs.get("exhausted"))
    f.add("railgate_pool_links", "gauge", "Link buffer sets in use.", links.get("in_use"), state="in_use")
    f.add("railgate_pool_links_max", "gauge", "Most link buffer sets allowed.",
          links.get("max", links.get("max_items")))
    f.add("railgate_pool_links_refused_total", "counter", "Connections refused: link pool full.", links.get("refused"))
    f.add("railgate_condition_active", "gauge", "Active conditions (1 each), by name and source.", None)
    for cond in status.get("conditions", ()):
        f.add("railgate_condition_active", "gauge", "", 1, name=cond.get("name"), source=cond.get("source"))
    f.add("railgate_gateway_counter_total", "counter", "Gateway-wide counters (reloads, ...), by name.", None)
    for name, n in sorted((status.get("counters") or {}).items()):
        f.add("railgate_gateway_counter_total", "counter", "", n, counter=name)
    return f.render()


def _receiver(f: _Families, kind: str, obj: dict, **labels) -> None:
    for key, outcome, help_ in _RECEIVER_COUNTERS:
        f.add(f"railgate_{kind}_frames_{outcome}_total", "counter", help_, obj.get(key), **labels)
