"""The admin API's routing table: the one place that says which ``(METHOD, "/path")`` does what.

::

    GET  /status         the status document (gateway/app/status.py), JSON
    GET  /metrics        the same as Prometheus text (gateway/app/metrics.py)
    GET  /alarms         the alarm table (alarm thread)
    POST /alarms/action  an operator action: ack, shelve, ... (alarm thread)

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
waits for the engine's part at most ``alarm_wait_s`` (a timer in the admin
loop) and then answers with the rest, so a busy alarm thread never holds
back the status of the line.
"""
from __future__ import annotations

import json
from concurrent.futures import Future, InvalidStateError
from typing import Callable

from alarms.engine import UnknownAlarm
from alarms.lifecycle import IllegalTransition
from alarms.service import ServiceStopped
from gateway.adapters.admin_http import Request, Response, RouteTable
from gateway.app.metrics import PROMETHEUS_TYPE, render_metrics
from gateway.app.status import build_status

#: how long /status waits for the alarm thread's part before answering without it
ALARM_WAIT_S = 0.5


def gateway_routes(gw, *, alarm_wait_s: float = ALARM_WAIT_S) -> RouteTable:
    """The routing table of a running ``Gateway``. Base loop thread, in ``Gateway.start()``."""
    view = _WithoutAlarmStage(gw)
    return AdminRoutes(lambda: build_status(view), gw.alarms, alarm_wait_s=alarm_wait_s).table()


class AdminRoutes:
    """The handlers, and the table that names them. Handlers: admin loop thread."""

    def __init__(self, status: Callable[[], dict], alarms=None, *, alarm_wait_s: float = ALARM_WAIT_S) -> None:
        """``status()``: the status document without the alarm thread's part (read without waiting);
        ``alarms``: the ``AlarmStage`` (``gateway/app/alarm_stage.py``), None without one."""
        self._status, self.alarms, self.alarm_wait_s = status, alarms, alarm_wait_s

    def table(self) -> RouteTable:
        """The whole admin API. Any thread."""
        return {("GET", "/status"): self.get_status,
                ("GET", "/metrics"): self.get_metrics,
                ("GET", "/alarms"): self.get_alarms,
                ("POST", "/alarms/action"): self.post_action}

    def get_status(self, request: Request) -> Response | Future:
        doc = self._document()
        alarms = self.alarms
        if alarms is None:
            return Response(200, doc)
        out: Future = Future()

        def settle(engine: dict) -> None:  # the alarm thread (its answer) or the admin loop (the timer)
            try:
                out.set_result(Response(200, {**doc, "alarms": alarms.status(engine)}))
            except InvalidStateError:
                pass  # the other one came first

        def answered(fut: Future) -> None:
            timer.cancel()
            try:
                engine = fut.result()
            except Exception as exc:  # a stopped alarm thread: say so, keep the rest of the status
                engine = {"error": f"alarm thread: {type(exc).__name__}: {exc}"}
            settle(engine)

        timer = request.call_later(self.alarm_wait_s, settle,
                                   {"error": f"alarm thread busy: no answer within {self.alarm_wait_s} s"})
        alarms.engine_status().add_done_callback(answered)
        return out

    def get_metrics(self, request: Request) -> Response:
        return Response(200, body=render_metrics(self._document()).encode(), content_type=PROMETHEUS_TYPE)

    def get_alarms(self, request: Request) -> Response | Future:
        if self.alarms is None:
            return _no_alarm_stage()
        return _then(self.alarms.alarm_table(),
                     lambda table: Response(200, {"event_seq": table[0], "alarms": table[1]}), _refused)

    def post_action(self, request: Request) -> Response | Future:
        """Body ``{"action": "ack"|"shelve"|..., "key": "src/CODE/obj", "operator": NAME, "minutes": N}``."""
        if self.alarms is None:
            return _no_alarm_stage()
        try:
            action = json.loads(request.body or b"{}")
            if not isinstance(action, dict):
                raise ValueError("expected a JSON object")
            fut = self.alarms.operate(action)
        except (ValueError, TypeError) as exc:  # ModelError is a ValueError
            return Response(400, {"error": f"bad alarm action: {exc}"})
        return _then(fut, lambda events: Response(200, {"events": [e.to_json() for e in events]}), _refused)

    def _document(self) -> dict:
        doc = self._status()
        if not isinstance(doc, dict):
            raise TypeError(f"status function returned {type(doc).__name__}, expected a dict")
        return doc


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
