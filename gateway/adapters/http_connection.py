"""One HTTP/1.1 server connection on an event loop: bytes in, requests out, answers back.

Who calls it: :class:`gateway.adapters.admin_http.AdminServer` creates one
:class:`HttpConnection` per accepted socket and is told of each complete
request through ``on_request(conn)``; it answers with :meth:`HttpConnection.answer`,
at once or later (when a handler's future completes). Everything runs in the
thread of the ``EventLoop`` the connection is registered with (the admin
loop); no method is safe from another thread.

HTTP parsing and framing are h11's (sans-IO); this module moves bytes between
the socket and an ``h11.Connection``. Limits, each answered with a status code
rather than a stalled socket:

* request head over 16 KiB -> 431, other malformed requests -> 400 (h11's
  ``error_status_hint``), then close;
* request body over 64 KiB -> 413 and close (judged from Content-Length when
  given, so an oversized upload is refused before it is read);
* two deadlines per request, fixed when its phase begins and never moved by
  bytes arriving (a client trickling one byte a second gains nothing): the
  request head within ``head_timeout_s`` of the accept or of the previous
  response, its body within ``body_timeout_s`` of the head. Past either,
  408 if a request was started, else a silent close; ``timed_out`` says so
  (no deadline runs while the server works on an answer: it has its own).

A connection we close while the peer may still be sending is shut down for
writing and drained for up to ``LINGER_S`` first: closing a socket with unread
input sends RST, which can destroy the error response before the client reads it.

Edge-triggered rules as used here (see ``gateway/net/event_loop.py``): an
EPOLLIN edge marks the connection ``unread``; it is read until EAGAIN or a
short read (past short reads to the EOF once the peer's FIN was reported), but
only while no answer is awaited or queued, so a client pipelining without
reading meets the kernel's window, not our memory. Each time the connection
becomes idle again it re-reads what an earlier edge left unread, as no new edge
will come for it. Answers are written directly; EPOLLOUT is on only while
some bytes are left over.
"""
from __future__ import annotations

import json
import logging
import select
import socket

import h11

log = logging.getLogger("railgate.admin")

MAX_BODY_BYTES = 64 * 1024
MAX_HEAD_BYTES = 16 * 1024
LINGER_S = 2.0
RECV_BYTES = 64 * 1024
JSON_TYPE = "application/json"
SERVER_HEADER = f"railgate-admin {h11.PRODUCT_ID}"
EV_READ = select.EPOLLIN | select.EPOLLRDHUP
EV_WRITE = EV_READ | select.EPOLLOUT
_PEER_CLOSED = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


def json_error(text: str) -> bytes:
    """The body of every error answer: ``{"error": text}``."""
    return json.dumps({"error": text}, separators=(",", ":")).encode()


class HttpConnection:
    """One accepted connection. Loop thread only; see the module docstring."""

    def __init__(self, loop, sock: socket.socket, *, head_timeout_s: float, body_timeout_s: float, on_request,
                 on_closed, peer: str = "") -> None:
        """Register ``sock`` (non-blocking) with ``loop``. ``on_request(conn)`` is called for each
        complete request (``conn.request``, ``conn.body``), ``on_closed(conn)`` once at the end.
        ``peer``: the client's address as text (``ip:port``), for the handlers and the logs."""
        self.loop, self.sock, self.fd, self.peer = loop, sock, sock.fileno(), peer
        self.head_timeout_s, self.body_timeout_s = head_timeout_s, body_timeout_s
        self.timed_out = False    # closed (after a 408, or silently) because a deadline passed
        self._on_request, self._on_closed = on_request, on_closed
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.waiting = False      # on_request has been called; the answer has not come yet
        self.closed = False
        self._dispatching = False
        self._out = bytearray()   # response bytes the socket has not taken yet
        self._closing = False     # shut down once `_out` is flushed
        self._draining = False    # shut down for writing; discarding input until EOF or deadline
        self._unread = False      # the kernel may hold input we have not read (ET: no second edge)
        self._peer_closed = False  # FIN/HUP reported: read on past short reads, to the EOF
        self._eof = False
        self._deadline = 0.0      # loop clock seconds; `_timer` fires at or before it
        self._timer = None
        self._set_deadline(loop.clock() + head_timeout_s)
        # a request already here is reported too: epoll checks readiness when an fd is added
        loop.register(self.fd, EV_READ, self._on_events)

    def answer(self, status: int, content_type: str, body: bytes, *, headers=(), close: bool = False) -> None:
        """Answer the request being waited for: during ``on_request`` or later (from a loop functor)."""
        if self.closed or not self.waiting:
            return
        self.waiting = False
        try:
            self._respond(status, content_type, body, headers=headers, close=close)
            if not self._dispatching:
                self._next_cycle()
        except Exception:
            log.exception("admin API: connection failed")
            return self.close()
        if not self._dispatching:
            self._pump()  # on to the requests pipelined meanwhile

    @property
    def idle(self) -> bool:
        """Nothing would be lost by closing now: no answer awaited or queued, at most a request still
        being read (a slow client's). What the server may evict to make room."""
        return not self.closed and not self.waiting and not self._out

    def close(self) -> None:
        """Close now (idempotent). Unregisters first unless the loop is gone with its epoll."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if not self.loop.closed:
            self.loop.unregister(self.fd)
        self.sock.close()
        self._on_closed(self)

    # -- input --------------------------------------------------------------------------------
    def _on_events(self, mask: int) -> None:
        if mask & (select.EPOLLIN | _PEER_CLOSED):
            self._unread = True
        if mask & _PEER_CLOSED:
            self._peer_closed = True
        if mask & select.EPOLLOUT:
            self._flush()
        self._pump()

    def _pump(self) -> None:
        """Answer what h11 holds, then read more, until the connection has to wait: for input,
        for an answer, or for the socket to take queued output."""
        try:
            while not self.closed:
                if not self._draining:
                    self._process()
                    if self._closing and not self._out and not self.waiting:
                        self._linger()
                        continue
                if self.waiting or self._out or not self._unread:
                    return
                data = self._recv()
                if data is None:
                    return
                if self._draining or self._closing:
                    if not data:
                        self.close()
                else:
                    self.conn.receive_data(data)  # b"" tells h11 the peer closed
        except Exception:  # one broken connection must not stop the others being served
            log.exception("admin API: connection failed")
            self.close()

    def _recv(self) -> bytes | None:
        if self._eof:  # h11 has heard it; nothing follows a FIN
            self._unread = False
            return None
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            self._unread = False
            return None
        except OSError:
            data = b""  # reset by the peer: same as EOF for us
        if not data:
            self._eof = True
        if not data or (len(data) < RECV_BYTES and not self._peer_closed):
            self._unread = False  # short read: drained (no extra read only to hear EAGAIN)
        return data

    def _process(self) -> None:
        """Hand every complete request h11 has buffered to on_request, one at a time."""
        while not (self.closed or self._closing or self._out or self.waiting):
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                return self._error(exc.error_status_hint, f"malformed request: {exc}", close=True)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request, self.body = event, bytearray()
                length = next((int(v) for n, v in event.headers if n == b"content-length"), None)
                head = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                self._set_deadline(self.loop.clock() + self.body_timeout_s)  # the head's timer re-arms for it
                if head > MAX_HEAD_BYTES:  # h11 caps only heads still incomplete; one recv may bring it whole
                    self._error(431, f"request head of about {head} bytes is over the {MAX_HEAD_BYTES} byte "
                                     f"limit", close=True)
                elif length is not None and length > MAX_BODY_BYTES:
                    self._too_large(length)
                elif self.conn.they_are_waiting_for_100_continue:
                    self._send(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > MAX_BODY_BYTES:
                    self._too_large(len(self.body))
            elif isinstance(event, h11.EndOfMessage):
                self.waiting, self._dispatching = True, True
                try:
                    self._on_request(self)
                finally:
                    self._dispatching = False
                if not self.waiting and not self.closed:
                    self._next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self._closing = True

    def _next_cycle(self) -> None:
        if self.conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            self.conn.start_next_cycle()
            self.request, self.body = None, bytearray()
            self._set_deadline(self.loop.clock() + self.head_timeout_s)

    # -- output -------------------------------------------------------------------------------
    def _too_large(self, size: int) -> None:
        self._error(413, f"request body of {size} bytes is over the {MAX_BODY_BYTES} byte limit", close=True)

    def _error(self, status: int, text: str, *, close: bool = False) -> None:
        self._respond(status, JSON_TYPE, json_error(text), close=close)

    def _respond(self, status: int, content_type: str, body: bytes, *, headers=(), close: bool = False) -> None:
        conn = self.conn
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self._closing = True  # already answered (or broken): there is nothing sane left to send
            return
        head = [("Server", SERVER_HEADER), ("Content-Type", content_type), ("Content-Length", str(len(body))),
                *headers]
        if close:
            head.append(("Connection", "close"))
        data = conn.send(h11.Response(status_code=status, headers=head))
        if body and not (self.request is not None and self.request.method == b"HEAD"):
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        if conn.our_state is h11.MUST_CLOSE:
            self._closing = True
        self._send(data)

    def _send(self, data: bytes) -> None:
        """Write directly when nothing is queued; queue the rest and poll for EPOLLOUT meanwhile."""
        if self._out:
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:  # the peer is gone: nothing more to say to it
            return self.close()
        if sent < len(data):
            self._out += data[sent:]
            self.loop.modify(self.fd, EV_WRITE)

    def _flush(self) -> None:
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return
            except OSError:
                return self.close()
            del self._out[:sent]
        self.loop.modify(self.fd, EV_READ)

    def _linger(self) -> None:
        if self._eof:  # nothing more can arrive: no RST to fear
            return self.close()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self.close()
        self._draining = True
        self._set_deadline(self.loop.clock() + LINGER_S)

    # -- deadline -----------------------------------------------------------------------------
    def _set_deadline(self, when: float) -> None:
        """One timer per connection, re-armed lazily: a later deadline waits for the current one to fire."""
        self._deadline = when
        if self._timer is not None:
            if self._timer.when <= when:
                return
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if self.closed or self.waiting:  # the server's answer has its own deadline; next_cycle re-arms
            return
        if self.loop.clock() < self._deadline:
            return self._set_deadline(self._deadline)
        conn = self.conn
        if not self._draining:
            self.timed_out = True
        if not self._draining and not self._out and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and (
                conn.their_state is not h11.IDLE or conn.trailing_data[0]):
            what = (f"request head not complete within {self.head_timeout_s} s" if self.request is None else
                    f"request body not complete within {self.body_timeout_s} s of its head")
            self._error(408, what, close=True)
            self._pump()  # flushed: linger, so the 408 is not lost to an RST
        else:
            self.close()
