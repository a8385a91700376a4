"""The admin API's routing table: the one place that says which ``(METHOD, "/path")`` does what.

::

    GET  /status         open   the status document (gateway/app/status.py), JSON
    GET  /metrics        open   the same as Prometheus text (gateway/app/metrics.py)
    GET  /healthz        open   live: 200 while the base loop turns, else 503
    GET  /readyz         open   ready: 200 when listeners, journal and relay are up, else 503 naming them
    GET  /alarms         open   the alarm table (alarm thread)
    POST /alarms/action  token  an operator action: ack, shelve, ... (alarm thread)
    POST /commands/select, /commands/operate, /commands/cancel   token   the command path
    GET  /commands, /routes/plan                                 open    (gateway/app/command_routes.py)

Who may do what. Every route whose method is not GET changes state and needs
the admin token, ``Authorization: Bearer <token>`` (compared in constant
time); that is decided here, by method, so a POST route added later is
guarded without anyone remembering to. A request without it or with a wrong
one gets 401 before its body is even parsed, and is counted
(``unauthorized`` in the ``admin`` section of /status). The reads stay open:
they change nothing, ``gateway status`` must work for whoever can reach the
port (also when the token file is not readable to them), and the same
figures go to Prometheus, which scrapes without credentials.

The token: ``gateway.admin.token_file`` when configured, else
``<state_dir>/admin.token``; created at the first start with 32 random bytes
(64 hex digits) and mode 0600 (``O_CREAT | O_EXCL``: never over an existing
file), read at every later start. The CLI reads the same file
(:func:`token_path`, :func:`read_token`). A gateway without the alarm stage
has no state to change and creates no token.

An operator action's body is bounded before it reaches the alarm thread:
JSON nested at most ``MAX_JSON_DEPTH`` deep (checked before parsing: deeper
is 400, never a RecursionError's 500), only the known fields, and the
checks of ``alarms.model.OperatorAction`` (key, operator, reason); each
failure is 400 naming the field. The client's address is journaled with the
action's events.

Who calls it: :meth:`gateway.app.runtime.Gateway.start` builds the table with
:func:`gateway_routes` and hands it to ``AdminServer``
(``gateway/adapters/admin_http.py``), which knows HTTP and nothing else;
tests build :class:`AdminRoutes` around a status function of their own.

Threads: every handler runs in the admin loop thread and returns at once,
with a ``Response`` or with a ``Future`` of one when the answer needs the
alarm thread. Those futures are completed in the alarm thread; the mapping to
a ``Response`` (``_then``) runs there too, so it stays small: a dict built,
no JSON encoded (the server encodes in its loop). Nothing here waits for the
alarm thread. An operator action gets the server's deadline (503); ``/status``
and ``/metrics`` wait for the engine's part at most ``alarm_wait_s`` (a timer
in the admin loop) and then answer with the rest, so a busy alarm thread never
holds back the status of the line.

Health, for an orchestrator or a load balancer (both open GETs, no token):
``/healthz`` is liveness: the base loop (acceptors, timers, signals) runs a
timer every ``HEARTBEAT_S`` that stamps the time, and the answer is 503 when
the stamp is older than ``STALE_S`` (a stuck base loop: restart the process).
``/readyz`` is readiness: both device listeners listening, the journal
writable (the alarm thread answers within ``alarm_wait_s``: a failing append
retries in that thread, so it does not), the relay alive; 503 otherwise, with
``{"ready": false, "not_ready": {part: why}}``.
"""
from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import re
import secrets
import socket
import stat
import time
from concurrent.futures import Future, InvalidStateError
from typing import Callable

from alarms.engine import UnknownAlarm
from alarms.lifecycle import IllegalTransition
from alarms.service import ServiceStopped
from gateway.adapters.admin_http import Request, Response, RouteTable
from gateway.app.command_routes import command_routes
from gateway.app.metrics import PROMETHEUS_TYPE, render_metrics
from gateway.app.status import build_status

log = logging.getLogger("railgate.admin")

#: how long /status waits for the alarm thread's part before answering without it
ALARM_WAIT_S = 0.5
HEARTBEAT_S = 1.0                   # the base loop stamps its liveness this often
STALE_S = 5.0                       # /healthz: 503 once the stamp is older than this
TOKEN_FILE = "admin.token"          # in state_dir, unless gateway.admin.token_file names another
MAX_JSON_DEPTH = 8                  # nesting of a request body's JSON (an action needs 1)
ACTION_FIELDS = frozenset({"action", "key", "operator", "minutes", "reason"})
OPEN_METHODS = frozenset({"GET"})   # every other method needs the token
UNAUTHORIZED_LOG_EVERY_S = 10.0
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{32,512}")   # RFC 6750 b64token, at least 32 characters
_BEARER_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="railgate-admin"'),)


class TokenError(ValueError):
    """The admin token file cannot be created or read, or holds no usable token; says which file."""


def token_path(cfg) -> str:
    """Where the gateway keeps its admin token: ``gateway.admin.token_file`` or ``<state_dir>/admin.token``."""
    return os.path.abspath(cfg.gateway.admin.token_file or os.path.join(cfg.gateway.state_dir, TOKEN_FILE))


def read_token(path: str) -> str:
    """The token in ``path``; raises TokenError (or OSError: missing, not readable). The caller's thread."""
    with open(path, "rb") as f:
        text = f.read(1024).decode("ascii", "replace").strip()
        mode = os.fstat(f.fileno()).st_mode
    if not _TOKEN.fullmatch(text):
        raise TokenError(f"admin token file {path}: expected one token of 32..512 characters "
                         f"[A-Za-z0-9._~+/=-] (value not shown)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("admin token file %s is accessible to group or others (mode %04o): chmod 600 it", path,
                    stat.S_IMODE(mode))
    return text


def load_or_create_token(path: str) -> str:
    """Read the token file, or create it (mode 0600, 32 random bytes as hex) if there is none. At start."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise TokenError(f"admin token file {path}: cannot create it: {exc.strerror}") from None
    else:
        token = secrets.token_hex(32)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.info("admin API: created the token file %s (mode 0600)", path)
        return token
    try:
        return read_token(path)
    except OSError as exc:
        raise TokenError(f"admin token file {path}: cannot read it: {exc.strerror}") from None


def gateway_routes(gw, *, alarm_wait_s: float = ALARM_WAIT_S) -> RouteTable:
    """The routing table of a running ``Gateway``. Base loop thread, in ``Gateway.start()``; creates the
    admin token when the gateway has state to change (the alarm stage); raises TokenError."""
    view = _WithoutAlarmStage(gw)
    token = load_or_create_token(token_path(gw.cfg)) if gw.alarms is not None else None

    def status() -> dict:  # the admin loop thread, which also owns the server's counters
        server = gw.admin.stats() if gw.admin is not None else {}
        return {**build_status(view), "admin": {**server, **routes.stats()}}
    routes = AdminRoutes(status, gw.alarms, token=token, alarm_wait_s=alarm_wait_s, probes=GatewayProbes(gw),
                         commands=getattr(gw, "commands", None))
    return routes.table()


class GatewayProbes:
    """What /healthz and /readyz read of a running gateway, without waiting. Built in the base loop
    thread (``gateway_routes``), which it then stamps every ``HEARTBEAT_S``; read in the admin thread."""

    def __init__(self, gw) -> None:
        self._gw = gw
        self.last_beat = time.monotonic()  # one float store per beat: the admin thread reads it whole
        gw.base.call_every(HEARTBEAT_S, self._beat)

    def _beat(self) -> None:  # base loop
        self.last_beat = time.monotonic()

    def not_live(self) -> str | None:
        """Why the gateway is not live (None: it is). Admin thread."""
        age = time.monotonic() - self.last_beat
        return f"base loop: no turn for {age:.1f} s (limit {STALE_S} s)" if age > STALE_S else None

    def not_ready(self) -> dict[str, str]:
        """{part: why} for the parts read without the alarm thread: base loop, listeners, relay."""
        out = {}
        if (why := self.not_live()) is not None:
            out["base_loop"] = why
        for acc in self._gw.acceptors:
            if not _listening(acc.sock):
                out[f"listener_{acc.net.lower()}"] = f"net {acc.net}: not listening"
        alarms = self._gw.alarms
        if alarms is not None and not alarms.relay_alive():
            out["relay"] = "Kafka relay: not running (restarting, or stopped)"
        return out


def _listening(sock: socket.socket) -> bool:
    try:
        return sock.fileno() >= 0 and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    except OSError:
        return False


class AdminRoutes:
    """The handlers, and the table that names them. Handlers: admin loop thread."""

    def __init__(self, status: Callable[[], dict], alarms=None, *, token: str | None = None,
                 alarm_wait_s: float = ALARM_WAIT_S, probes=None, commands=None) -> None:
        """``status()``: the status document without the alarm thread's part (read without waiting);
        ``alarms``: the ``AlarmStage`` (``gateway/app/alarm_stage.py``), None without one;
        ``token``: what state-changing requests must present (None: they are all refused);
        ``probes``: ``not_live()`` and ``not_ready()`` (:class:`GatewayProbes`), None: only the
        journal is checked (tests around a status function)."""
        self._status, self.alarms, self.alarm_wait_s = status, alarms, alarm_wait_s
        self.probes = probes
        self.commands = commands     # the CommandStage (gateway/app/command_stage.py), None without one
        self._token = None if token is None else token.encode("ascii")
        self.unauthorized = 0        # 401 answers (admin thread writes)
        self._logged_unauthorized = (0, float("-inf"))  # (count, monotonic s) at the last warning

    def table(self) -> RouteTable:
        """The whole admin API; every route not GET behind the token check. Any thread."""
        routes = {("GET", "/status"): self.get_status,
                  ("GET", "/metrics"): self.get_metrics,
                  ("GET", "/healthz"): self.get_healthz,
                  ("GET", "/readyz"): self.get_readyz,
                  ("GET", "/alarms"): self.get_alarms,
                  ("POST", "/alarms/action"): self.post_action,
                  **command_routes(self.commands, parse_json, _then)}
        return {(method, path): handler if method in OPEN_METHODS else self._with_token(handler)
                for (method, path), handler in routes.items()}

    def stats(self) -> dict:
        """The routing layer's figures for /status (counts of requests). Admin thread."""
        return {"unauthorized": self.unauthorized}

    def _with_token(self, handler: Callable) -> Callable:
        @functools.wraps(handler)
        def guarded(request: Request):
            header = request.headers.get("authorization", "")
            scheme, _, credentials = header.strip().partition(" ")
            presented = credentials.strip().encode("latin-1", "replace")
            if self._token is not None and scheme.lower() == "bearer" and hmac.compare_digest(presented,
                                                                                              self._token):
                return handler(request)
            return self._unauthorized(request, "missing" if not header else "wrong")
        return guarded

    def _unauthorized(self, request: Request, why: str) -> Response:
        self.unauthorized += 1
        count, at = self._logged_unauthorized
        now = time.monotonic()
        if now - at >= UNAUTHORIZED_LOG_EVERY_S:  # a flood of them must not flood the log
            log.warning("admin API: %d request(s) refused without a valid token (401) since the last report; "
                        "the latest: %s %s from %s, token %s", self.unauthorized - count, request.method,
                        request.path, request.client or "?", why)
            self._logged_unauthorized = (self.unauthorized, now)
        text = ("this gateway has no admin token: state-changing requests are refused" if self._token is None
                else f"{request.method} {request.path} needs the admin token: 'Authorization: Bearer <token>' "
                     f"(gateway alarms ... reads it with -c CONFIG or --token-file)")
        return Response(401, {"error": text}, headers=_BEARER_CHALLENGE)

    def get_status(self, request: Request) -> Response | Future:
        return self._with_engine(request, lambda doc, engine: Response(200, self._whole(doc, engine)))

    def get_metrics(self, request: Request) -> Response | Future:
        return self._with_engine(request, lambda doc, engine: Response(
            200, body=render_metrics(self._whole(doc, engine)).encode(), content_type=PROMETHEUS_TYPE))

    def get_healthz(self, request: Request) -> Response:
        why = self.probes.not_live() if self.probes is not None else None
        return Response(200, {"live": True}) if why is None else Response(503, {"live": False, "why": why})

    def get_readyz(self, request: Request) -> Response | Future:
        not_ready = dict(self.probes.not_ready()) if self.probes is not None else {}

        def answer(doc, engine) -> Response:  # the alarm thread or the admin loop: its own dict
            parts = dict(not_ready)
            why = engine.get("error") or engine.get("busy") if engine is not None else None
            if why:  # stopped, or stuck (an append retrying): its last figures do not make it ready
                parts["journal"] = f"journal not writable: {why}"
            if parts:
                return Response(503, {"ready": False, "not_ready": parts})
            return Response(200, {"ready": True})
        return self._with_engine(request, answer, document=False)

    def _whole(self, doc: dict, engine: dict | None) -> dict:
        """The status document with the alarm stage's part (relay and writers are read here)."""
        return doc if engine is None else {**doc, "alarms": self.alarms.status(engine)}

    def _with_engine(self, request: Request, respond: Callable, *, document: bool = True) -> Response | Future:
        """``respond(doc, engine)`` at once without the alarm stage (``engine`` None), else once the alarm
        thread answers :meth:`AlarmStage.engine_status`, or after ``alarm_wait_s`` with its last answer
        (``age_s``, and ``busy`` saying why: a storm must not blank the per-area figures) or, before any,
        an ``{"error": ...}``. ``respond`` always runs in the admin loop: the answer is handed back to it
        (``call_later(0, ...)``), so rendering /metrics for a large line never costs the alarm thread."""
        doc = self._document() if document else None
        alarms = self.alarms
        if alarms is None:
            return respond(doc, None)
        out: Future = Future()

        def settle(engine: dict) -> None:  # the admin loop: the answer handed over, or the timer
            if out.done():
                return  # the other one came first
            try:
                response = respond(doc, engine)
            except Exception as exc:
                response = exc
            try:
                out.set_exception(response) if isinstance(response, Exception) else out.set_result(response)
            except InvalidStateError:
                pass  # the other one came first

        def answered(fut: Future) -> None:  # the alarm thread (or this one, when it is stopped)
            try:
                engine = fut.result()
            except Exception as exc:  # a stopped alarm thread: say so, keep the rest of the status
                engine = {"error": f"alarm thread: {type(exc).__name__}: {exc}"}
            timer.cancel()
            request.call_later(0, settle, engine)

        def busy() -> None:  # the admin loop: the alarm thread's last figures, if it has answered before
            last = alarms.last_engine_status() if hasattr(alarms, "last_engine_status") else None
            busy_text = f"alarm thread busy: no answer within {self.alarm_wait_s} s"
            settle({**last, "busy": busy_text} if last is not None else {"error": busy_text})

        timer = request.call_later(self.alarm_wait_s, busy)
        alarms.engine_status().add_done_callback(answered)
        return out

    def get_alarms(self, request: Request) -> Response | Future:
        if self.alarms is None:
            return _no_alarm_stage()
        return _then(self.alarms.alarm_table(),
                     lambda table: Response(200, {"event_seq": table[0], "alarms": table[1]}), _refused)

    def post_action(self, request: Request) -> Response | Future:
        """Body ``{"action": "ack"|"shelve"|..., "key": "src/CODE/obj", "operator": NAME, "minutes": N,
        "reason": TEXT}`` (``minutes`` only for shelve, ``reason`` optional). Token checked already."""
        if self.alarms is None:
            return _no_alarm_stage()
        try:
            action = parse_json(request.body or b"{}")
            if not isinstance(action, dict):
                raise ValueError("expected a JSON object")
            unknown = sorted(set(action) - ACTION_FIELDS)
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(repr(n[:40]) for n in unknown[:5])}; expected "
                                 f"{', '.join(sorted(ACTION_FIELDS))}")
            fut = self.alarms.operate(action, client=request.client or None)
        except (ValueError, TypeError) as exc:  # ModelError is a ValueError
            return Response(400, {"error": f"bad alarm action: {exc}"})
        return _then(fut, lambda events: Response(200, {"events": [e.to_json() for e in events]}), _refused)

    def _document(self) -> dict:
        doc = self._status()
        if not isinstance(doc, dict):
            raise TypeError(f"status function returned {type(doc).__name__}, expected a dict")
        return doc


_JSON_NESTING = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')   # a whole string (skipped), or a bracket


def parse_json(body: bytes, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` for a request body, refusing (ValueError) nesting deeper than ``max_depth`` before
    parsing: the parser would recurse once per level, and 64 KiB of ``[`` ends in a RecursionError."""
    depth = 0
    for m in _JSON_NESTING.finditer(body):
        c = body[m.start()]
        if c in b"[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth} levels")
        elif c in b"]}":
            depth -= 1
    return json.loads(body)


def _refused(exc: Exception) -> Response:
    """What the alarm thread said no with, as an answer; anything else stays an error (500)."""
    if isinstance(exc, UnknownAlarm):
        return Response(404, {"error": str(exc)})
    if isinstance(exc, ServiceStopped):
        return Response(503, {"error": str(exc)})
    if isinstance(exc, (IllegalTransition, ValueError)):  # ModelError is a ValueError
        return Response(409, {"error": str(exc)})
    raise exc


def _no_alarm_stage() -> Response:
    return Response(404, {"error": "this gateway runs without the alarm stage"})


def _then(fut: Future, on_result: Callable, on_error: Callable | None = None) -> Future:
    """A Future of ``on_result(result)``, or of ``on_error(exception)`` (which may raise it again).
    Both run in the thread that completes ``fut``: keep them short."""
    out: Future = Future()

    def done(f: Future) -> None:
        try:
            try:
                value = f.result()
            except Exception as exc:
                if on_error is None:
                    raise
                out.set_result(on_error(exc))
                return
            out.set_result(on_result(value))
        except Exception as exc:
            out.set_exception(exc)

    fut.add_done_callback(done)
    return out


class _WithoutAlarmStage:
    """The gateway as :func:`build_status` reads it, minus the alarm stage: that part needs the alarm
    thread, so the /status handler asks for it by future rather than wait in the admin loop."""

    __slots__ = ("_gw",)
    alarms = None

    def __init__(self, gw) -> None:
        self._gw = gw

    def __getattr__(self, name: str):
        return getattr(self._gw, name)
