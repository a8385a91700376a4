"""The admin API of the command path (issue 16): select before operate, cancel, the commands, route plans.

::

    POST /commands/select   token  {"kind", "object", "value", "operator", "workstation"?} -> {"selection": S}
    POST /commands/operate  token  {"selection", "operator"} -> {"selection": S} (sent; it ends by itself)
    POST /commands/cancel   token  {"selection", "operator"} -> {"selection": S}
    GET  /commands          open   {"open": [S...], "recent": [S + "outcome"...]}
    GET  /routes/plan       open   ?from=SIGNAL&to=SIGNAL -> {"plan": {...}} (A*, avoiding what is not free now)

``S`` is a selection (``gateway/commands/engine.py`` ``summary()``). Answers:
400 a malformed body or value out of range, 404 an unknown object or signal,
409 refused (held by another workstation, interlocked, already selected, not
selected, expired, wrong operator, no route), 503 no command path. The POST
routes are behind the admin token like every state-changing route
(``gateway/app/admin_routes.py`` guards by method).

Threads: handlers run in the admin loop and return at once (a Response, or a
Future completed by the commands thread); ``/routes/plan`` reads the line's
state without waiting.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from gateway.adapters.admin_http import Request, Response
from gateway.commands import model as m
from gateway.commands.routes import NoRoute, UnknownSignal

SELECT_FIELDS = frozenset({"kind", "object", "value", "operator", "workstation"})
SELECTION_FIELDS = frozenset({"selection", "operator"})


def command_routes(commands, parse_json: Callable, then: Callable) -> dict:
    """``{(METHOD, path): handler}`` for the command path; ``commands``: the CommandStage, None without one.
    ``parse_json`` / ``then``: the admin module's bounded JSON parser and Future mapper."""

    def body(request: Request, fields: frozenset) -> dict:
        doc = parse_json(request.body or b"{}")
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        unknown = sorted(set(doc) - fields)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(repr(str(n)[:40]) for n in unknown[:5])}; expected "
                             f"{', '.join(sorted(fields))}")
        return doc

    def answer(fut: Future) -> Future:
        return then(fut, lambda sel: Response(200, {"selection": sel}), refused)

    def select(request: Request) -> Response | Future:
        if commands is None:
            return _none()
        try:
            doc = body(request, SELECT_FIELDS)
            missing = [f for f in ("kind", "object", "value", "operator") if f not in doc]
            if missing:
                raise ValueError(f"missing field(s) {', '.join(missing)}")
            return answer(commands.select(doc["kind"], doc["object"], doc["value"], doc["operator"],
                                          doc.get("workstation")))
        except (ValueError, TypeError) as exc:
            return Response(400, {"error": f"bad select: {exc}"})

    def on_selection(verb: str, call: Callable) -> Callable:
        def handler(request: Request) -> Response | Future:
            if commands is None:
                return _none()
            try:
                doc = body(request, SELECTION_FIELDS)
                if not isinstance(doc.get("selection"), str) or not isinstance(doc.get("operator"), str):
                    raise ValueError("expected selection (text) and operator (text)")
                return answer(call(doc["selection"], doc["operator"]))
            except (ValueError, TypeError) as exc:
                return Response(400, {"error": f"bad {verb}: {exc}"})
        return handler

    def get_commands(request: Request) -> Response | Future:
        if commands is None:
            return _none()
        return then(commands.commands(), lambda doc: Response(200, doc), refused)

    def route_plan(request: Request) -> Response:
        if commands is None:
            return _none()
        try:
            a, b = int(request.query.get("from", "")), int(request.query.get("to", ""))
        except ValueError:
            return Response(400, {"error": "expected ?from=SIGNAL&to=SIGNAL (signal ids)"})
        try:
            p, route_id = commands.plan_route(a, b)
        except UnknownSignal as exc:
            return Response(404, {"error": str(exc)})
        except (NoRoute, LookupError) as exc:
            return Response(409, {"error": str(exc)})
        return Response(200, {"plan": {"from": a, "to": b, "sections": list(p.sections),
                                       "switches": [list(s) for s in p.switches], "signals": list(p.signals),
                                       "cost_m": p.cost_m, "route_id": route_id}})

    return {("POST", "/commands/select"): select,
            ("POST", "/commands/operate"): on_selection("operate", lambda s, o: commands.operate(s, o)),
            ("POST", "/commands/cancel"): on_selection("cancel", lambda s, o: commands.cancel(s, o)),
            ("GET", "/commands"): get_commands,
            ("GET", "/routes/plan"): route_plan}


def refused(exc: Exception) -> Response:
    """A command error as an answer; anything else stays an error (500)."""
    if isinstance(exc, m.UnknownObject):
        return Response(404, {"error": str(exc)})
    if isinstance(exc, m.BadValue):
        return Response(400, {"error": str(exc)})
    if isinstance(exc, m.CommandError):
        return Response(409, {"error": str(exc)})
    if isinstance(exc, RuntimeError):
        return Response(503, {"error": str(exc)})
    raise exc


def _none() -> Response:
    return Response(503, {"error": "this gateway runs without the command path"})
