"""The CLI of the command path: ``gateway command select|operate|cancel|list``, ``gateway route set`` and the
live ``gateway route plan``, against the admin API's contract.

The gateway here is :class:`FakeGateway`, a real HTTP server on 127.0.0.1 in a thread that implements the
contract (``POST /commands/select|operate|cancel`` with the bearer token, ``GET /commands``,
``GET /routes/plan``) with canned transitions: a selection is SELECTED at once, an operated one goes
OPERATING -> AWAIT_FEEDBACK -> its canned end after ``polls_to_end`` reads of ``GET /commands``. It records
every request, so a test can say what the CLI asked and in which order. This tests the CLI's behaviour,
not the gateway's (the end-to-end test against the real gateway and the simulator is elsewhere).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.cli import command_cmd, route_set
from gateway.cli import main as gateway_main

TOKEN = "t0k3n-" + "a" * 40
OPERATOR = "alice"
VALUES = {"switch": ("normal", "reverse"), "route": ("set", "cancel"), "section": ("block", "unblock")}
TERMINAL = {"DONE", "FAILED", "CANCELLED", "EXPIRED", "REFUSED"}


class FakeGateway:
    """The admin API's command contract with canned state; every method runs in the server's threads."""

    def __init__(self) -> None:
        self.zones = {("switch", 301): "Z1", ("switch", 302): "Z1", ("switch", 304): "Z2", ("switch", 305): "Z2",
                      ("switch", 306): "Z3", ("route", 401): "Z1", ("section", 105): "Z1"}
        self.refuse: dict[tuple[str, int], str] = {}            # object -> 409 text at select
        self.ends: dict[tuple[str, int], tuple[str, str]] = {}  # object -> (terminal state, outcome)
        self.plans: dict[tuple[int, int], dict | tuple[int, str]] = {}
        self.polls_to_end = 2
        self.no_command_path = False
        self.requests: list[tuple[str, str, dict | None]] = []
        self.unauthorized = 0
        self.open: dict[str, dict] = {}
        self.countdown: dict[str, int] = {}
        self.recent: list[dict] = []
        self.lock = threading.Lock()
        self._n = 0

    def posts(self, path: str) -> list[dict]:
        return [body for method, p, body in self.requests if method == "POST" and p == path]

    def handle(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((method, path, body))
            url = urlsplit(path)
            if url.path == "/routes/plan":
                q = parse_qs(url.query)
                plan = self.plans.get((int(q["from"][0]), int(q["to"][0])))
                if plan is None:
                    return 404, {"error": f"unknown signal {q['from'][0]} (from)"}
                return (plan[0], {"error": plan[1]}) if isinstance(plan, tuple) else (200, {"plan": plan})
            if self.no_command_path:
                return 503, {"error": "no command path: the line has no control: devices"}
            if method == "GET" and url.path == "/commands":
                self._advance()
                return 200, {"open": list(self.open.values()), "recent": list(self.recent)}
            if method == "POST" and url.path == "/commands/select":
                return self._select(body)
            if method == "POST" and url.path in ("/commands/operate", "/commands/cancel"):
                s = self.open.get(body.get("selection"))
                if s is None:
                    return 409, {"error": f"no selection {body.get('selection')!r} (select the object first)"}
                if s["state"] != "SELECTED":
                    return 409, {"error": f"selection {s['selection_id']}: already operated ({s['state']})"}
                if url.path.endswith("operate"):
                    s["state"] = "OPERATING"
                    self.countdown[s["selection_id"]] = self.polls_to_end
                else:
                    self._end(s, "CANCELLED", f"cancelled by {body['operator']}")
                return 200, {"selection": dict(s)}
            return 404, {"error": f"no route {method} {url.path}"}

    def _select(self, body: dict) -> tuple[int, dict]:
        kind, obj, value = body.get("kind"), body.get("object"), body.get("value")
        if kind not in VALUES or value not in VALUES[kind]:
            return 400, {"error": f"value: expected one of {', '.join(VALUES.get(kind, ()))} for a {kind}, "
                                  f"got {value!r}"}
        zone = self.zones.get((kind, obj))
        if zone is None:
            return 404, {"error": f"{kind} {obj}: no such object on the line"}
        if (kind, obj) in self.refuse:
            return 409, {"error": self.refuse[(kind, obj)]}
        held = next((s for s in self.open.values() if s["zone"] == zone), None)
        workstation = body.get("workstation") or "railgate"
        if held is not None and (held["operator"], held["workstation"]) != (body["operator"], workstation):
            return 409, {"error": f"{kind} {obj}: zone {zone} is held by the selection of {held['kind']} "
                                  f"{held['object_id']} by {held['operator']} at {held['workstation']} "
                                  f"({held['state']})"}
        self._n += 1
        s = {"selection_id": f"sel-{self._n}", "command_id": 1000 + self._n, "kind": kind, "object_id": obj,
             "value": value, "device": "IL-1", "zone": zone, "operator": body["operator"],
             "workstation": workstation, "state": "SELECTED",
             "fencing_token": held["fencing_token"] if held is not None else 40 + self._n,   # the zone's lease
             "expires_ms": int(time.time() * 1000) + 30_000}
        self.open[s["selection_id"]] = s
        return 200, {"selection": dict(s)}

    def _advance(self) -> None:
        for sid in list(self.countdown):
            s = self.open[sid]
            self.countdown[sid] -= 1
            if self.countdown[sid] > 0:
                s["state"] = "AWAIT_FEEDBACK"
                continue
            del self.countdown[sid]
            state, outcome = self.ends.get((s["kind"], s["object_id"]), ("DONE", f"done: status shows {s['value']}"))
            self._end(s, state, outcome)

    def _end(self, s: dict, state: str, outcome: str) -> None:
        del self.open[s["selection_id"]]
        s["state"] = state
        self.recent.append(dict(s, outcome=outcome))


class _Handler(BaseHTTPRequestHandler):
    gateway: FakeGateway

    def log_message(self, *args) -> None:
        pass

    def _answer(self, code: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(*self.gateway.handle("GET", self.path, None))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.gateway.unauthorized += 1
            self._answer(401, {"error": "unauthorized: send Authorization: Bearer <the admin token>"})
            return
        self._answer(*self.gateway.handle("POST", self.path, body))


@pytest.fixture
def gw():
    gateway = FakeGateway()
    handler = type("Handler", (_Handler,), {"gateway": gateway})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    gateway.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield gateway
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "admin.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(command_cmd, "POLL_S", 0.01)


def run(capsys, *argv) -> tuple[int, str, str]:
    """``gateway ARGV`` through the top-level entry point: (exit status, stdout, stderr)."""
    code = gateway_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def writes(gw, token_file) -> list[str]:
    return ["--url", gw.url, "--token-file", token_file]


# -- gateway command ------------------------------------------------------------------------------
def test_select_prints_the_selection_its_zone_fencing_token_and_expiry(gw, token_file, capsys):
    code, out, err = run(capsys, "command", "select", "switch", 304, "reverse", "--operator", OPERATOR,
                         "--workstation", "WS-7", *writes(gw, token_file))
    assert (code, err) == (0, "")
    assert gw.posts("/commands/select") == [{"kind": "switch", "object": 304, "value": "reverse",
                                             "operator": OPERATOR, "workstation": "WS-7"}]
    first = out.splitlines()[0]
    for part in ("selection sel-1", "switch 304 reverse SELECTED", "zone Z2", "fencing token 41", "expires "):
        assert part in first
    assert "(in 29." in first or "(in 30.0 s)" in first
    assert "gateway command operate sel-1 --operator alice" in out


def test_select_json_prints_the_gateways_answer(gw, token_file, capsys):
    code, out, _ = run(capsys, "command", "select", "section", 105, "block", "--operator", OPERATOR, "--json",
                       *writes(gw, token_file))
    assert code == 0
    assert json.loads(out)["selection"]["zone"] == "Z1"
    assert "workstation" not in gw.posts("/commands/select")[0]     # none given: the gateway's default


def _selected(gw, kind="switch", obj=304, value="reverse") -> str:
    code, answer = gw.handle("POST", "/commands/select", {"kind": kind, "object": obj, "value": value,
                                                         "operator": OPERATOR})
    assert code == 200
    return answer["selection"]["selection_id"]


def test_operate_waits_until_done_and_exits_0(gw, token_file, capsys):
    sid = _selected(gw)
    gw.polls_to_end = 4
    code, out, err = run(capsys, "command", "operate", sid, "--operator", OPERATOR, *writes(gw, token_file))
    assert (code, err) == (0, "")
    assert gw.posts("/commands/operate") == [{"selection": sid, "operator": OPERATOR}]
    polls = [r for r in gw.requests if r[:2] == ("GET", "/commands")]
    assert len(polls) == 4                      # it polled until the end, and stopped there
    assert gw.requests.index(polls[0]) > gw.requests.index(("POST", "/commands/operate", gw.posts(
        "/commands/operate")[0]))
    assert f"selection {sid}: switch 304 reverse DONE: done: status shows reverse" in out


def test_operate_that_ends_failed_exits_1_with_the_outcome_on_stderr(gw, token_file, capsys):
    sid = _selected(gw)
    gw.ends[("switch", 304)] = ("FAILED", "feedback timeout: the status still shows normal after 10 s")
    code, out, err = run(capsys, "command", "operate", sid, "--operator", OPERATOR, *writes(gw, token_file))
    assert code == 1
    assert err == (f"gateway command operate: selection {sid}: switch 304 reverse FAILED: feedback timeout: "
                   "the status still shows normal after 10 s\n")
    assert "DONE" not in out


def test_operate_without_an_end_within_wait_exits_1(gw, token_file, capsys):
    sid = _selected(gw)
    gw.polls_to_end = 10_000
    started = time.monotonic()
    code, _, err = run(capsys, "command", "operate", sid, "--operator", OPERATOR, "--wait", "0.3",
                       *writes(gw, token_file))
    assert code == 1
    assert 0.3 <= time.monotonic() - started < 5
    assert f"selection {sid}: not ended within 0.3 s, still AWAIT_FEEDBACK" in err and err.count("\n") == 1


def test_cancel_sends_the_selection_and_prints_it_cancelled(gw, token_file, capsys):
    sid = _selected(gw)
    code, out, err = run(capsys, "command", "cancel", sid, "--operator", OPERATOR, *writes(gw, token_file))
    assert (code, err) == (0, "")
    assert gw.posts("/commands/cancel") == [{"selection": sid, "operator": OPERATOR}]
    assert out == f"selection {sid}: switch 304 reverse CANCELLED\n"
    assert gw.open == {}


def test_list_prints_the_open_and_the_recent_commands(gw, capsys):
    open_sid = _selected(gw, "switch", 304, "reverse")
    ended = _selected(gw, "section", 105, "block")
    gw.handle("POST", "/commands/cancel", {"selection": ended, "operator": OPERATOR})
    code, out, err = run(capsys, "command", "list", "--url", gw.url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "open commands: 1"
    assert "SELECTION" in lines[1] and "EXPIRES IN (s)" in lines[1]
    assert lines[2].split()[:8] == [open_sid, "1001", "switch", "304", "reverse", "SELECTED", "Z2", "41"]
    assert lines[3] == "recent (ended, newest last): 1"
    assert lines[5].split()[:7] == [ended, "1002", "section", "105", "block", "CANCELLED", OPERATOR]
    assert lines[5].endswith("cancelled by alice")


@pytest.mark.parametrize("argv, setup, code, text", [
    (["switch", 304, "sideways"], None, 400, "value: expected one of normal, reverse for a switch, got 'sideways'"),
    (["switch", 999, "normal"], None, 404, "switch 999: no such object on the line"),
    (["switch", 304, "normal"], "refuse", 409, "switch 304: its section 118 is occupied (interlocking: refused)"),
    (["route", 401, "set"], "no_path", 503, "no command path: the line has no control: devices"),
], ids=["400-bad-value", "404-unknown-object", "409-refused", "503-no-command-path"])
def test_a_refused_select_is_one_line_on_stderr_and_exit_1(gw, token_file, capsys, argv, setup, code, text):
    if setup == "refuse":
        gw.refuse[("switch", 304)] = text
    elif setup == "no_path":
        gw.no_command_path = True
    status, out, err = run(capsys, "command", "select", *argv, "--operator", OPERATOR, *writes(gw, token_file))
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("gateway command select: ")
    assert f"({code}): {text}" in err


@pytest.mark.parametrize("action", ["operate", "cancel"])
def test_an_operate_or_cancel_of_an_unknown_selection_is_refused(gw, token_file, capsys, action):
    code, out, err = run(capsys, "command", action, "sel-nope", "--operator", OPERATOR, *writes(gw, token_file))
    assert (code, out) == (1, "")
    assert err == f"gateway command {action}: refused (409): no selection 'sel-nope' (select the object first)\n"


def test_a_server_error_text_with_a_newline_stays_on_one_line(gw, token_file, capsys):
    gw.refuse[("switch", 304)] = "refused\nforged line \x1b[31m"
    code, _, err = run(capsys, "command", "select", "switch", 304, "normal", "--operator", OPERATOR,
                       *writes(gw, token_file))
    assert code == 1
    assert err.count("\n") == 1 and "\\n" in err and "\x1b" not in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv", [
    ["command", "list"],
    ["command", "select", "switch", 304, "normal", "--operator", OPERATOR],
    ["command", "operate", "sel-1", "--operator", OPERATOR],
    ["command", "cancel", "sel-1", "--operator", OPERATOR],
], ids=["list", "select", "operate", "cancel"])
def test_no_gateway_listening_is_one_clear_line_and_exit_1(capsys, argv):
    url = f"http://127.0.0.1:{_closed_port()}"
    code, out, err = run(capsys, *argv, "--url", url)
    assert (code, out) == (1, "")
    assert err == f"gateway command {argv[1]}: no gateway at {url}: connection refused\n"


@pytest.mark.parametrize("argv", [
    ["select", "switch", 304, "normal"],
    ["operate", "sel-1"],
    ["cancel", "sel-1"],
])
def test_a_missing_operator_is_a_usage_error_and_nothing_is_sent(gw, token_file, capsys, argv):
    code, out, err = run(capsys, "command", *argv, *writes(gw, token_file))
    assert code == 2
    assert "the following arguments are required: --operator" in err
    assert gw.requests == []


@pytest.mark.parametrize("argv", [
    ["select", "train", 304, "normal", "--operator", OPERATOR],         # not a kind
    ["select", "switch", "x304", "normal", "--operator", OPERATOR],     # not an id
    ["operate", "sel-1", "--operator", OPERATOR, "--wait", "0"],       # not a wait
    ["frobnicate"],
])
def test_bad_usage_exits_2_and_sends_nothing(gw, token_file, capsys, argv):
    code, _, _ = run(capsys, "command", *argv, *writes(gw, token_file))
    assert code == 2
    assert gw.requests == []


def test_a_select_without_the_token_is_refused_with_a_hint(gw, capsys):
    code, _, err = run(capsys, "command", "select", "switch", 304, "normal", "--operator", OPERATOR, "--url", gw.url)
    assert code == 1 and gw.unauthorized == 1
    assert "not authorized (401)" in err and "no token sent: give --token-file or -c CONFIG" in err


def test_an_unreadable_token_file_is_exit_2(gw, tmp_path, capsys):
    code, _, err = run(capsys, "command", "select", "switch", 304, "normal", "--operator", OPERATOR, "--url", gw.url,
                       "--token-file", tmp_path / "missing.token")
    assert code == 2 and "cannot read the admin token" in err and "missing.token" in err
    assert gw.requests == []


# -- gateway route plan (live) / route set ---------------------------------------------------------
CROSSOVER = {"from": 202, "to": 209, "sections": [103, 118, 117, 116, 115, 114], "cost_m": 2040.0,
             "switches": [[301, "reverse"], [304, "reverse"], [306, "normal"]], "signals": [202, 211, 210, 209],
             "route_id": None}
CONFIGURED = {"from": 201, "to": 204, "sections": [102, 103, 104, 105, 106], "cost_m": 1620.0,
              "switches": [[301, "normal"]], "signals": [202, 203, 204], "route_id": 401}


def test_wants_live_only_with_url_or_live():
    assert route_set.wants_live(["201", "204", "--url", "http://127.0.0.1:1"])
    assert route_set.wants_live(["201", "204", "--url=http://127.0.0.1:1"])
    assert route_set.wants_live(["201", "204", "-c", "line.yaml", "--live"])
    assert not route_set.wants_live(["201", "204", "-c", "line.yaml", "--unavailable", "105"])
    assert not route_set.wants_live(["201", "204", "-c", "line.yaml", "--", "--live"])


def test_live_plan_prints_the_gateways_plan(gw, capsys):
    gw.plans[(202, 209)] = CROSSOVER
    code = route_set.plan_main(["202", "209", "--url", gw.url])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert gw.requests == [("GET", "/routes/plan?from=202&to=209", None)]
    assert out.splitlines() == [
        "route 202 -> 209: 2,040.0 m through 6 sections (live: the gateway's plan on the line's occupancy now)",
        "  sections: 103 118 117 116 115 114",
        "  switches: 301 reverse, 304 reverse, 306 normal",
        "  signals:  202 211 210 209",
        "  route id: none configured (`route set` selects and operates each switch)"]


@pytest.mark.parametrize("answer, text", [
    (None, "not found (404): unknown signal 202 (from)"),
    ((409, "no route from 202 to 209 avoiding section 118 (occupied/blocked)"),
     "refused (409): no route from 202 to 209 avoiding section 118 (occupied/blocked)"),
])
def test_live_plan_and_route_set_without_a_route_exit_1(gw, token_file, capsys, answer, text):
    if answer is not None:
        gw.plans[(202, 209)] = answer
    assert route_set.plan_main(["202", "209", "--url", gw.url]) == 1
    assert capsys.readouterr().err == f"gateway route plan: {text}\n"
    assert route_set.set_main(["202", "209", "--operator", OPERATOR, *writes(gw, token_file)]) == 1
    assert capsys.readouterr().err == f"gateway route set: {text}\n"
    assert gw.posts("/commands/select") == []


def test_route_set_with_a_configured_route_sends_one_route_command(gw, token_file, capsys):
    gw.plans[(201, 204)] = CONFIGURED
    code = route_set.set_main(["201", "204", "--operator", OPERATOR, *writes(gw, token_file)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert gw.posts("/commands/select") == [{"kind": "route", "object": 401, "value": "set", "operator": OPERATOR}]
    assert gw.posts("/commands/operate") == [{"selection": "sel-1", "operator": OPERATOR}]
    assert [s["state"] for s in gw.recent] == ["DONE"]
    assert out.splitlines()[-1] == "route 201 -> 204 set: 1 of 1 command DONE"


def test_route_set_by_switches_selects_all_then_operates_each_in_order(gw, token_file, capsys):
    gw.plans[(202, 209)] = CROSSOVER
    code = route_set.set_main(["202", "209", "--operator", OPERATOR, "--workstation", "WS-7",
                               *writes(gw, token_file)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    posts = [(p, b.get("object", b.get("selection"))) for m, p, b in gw.requests if m == "POST"]
    assert posts == [("/commands/select", 301), ("/commands/select", 304), ("/commands/select", 306),
                     ("/commands/operate", "sel-1"), ("/commands/operate", "sel-2"), ("/commands/operate", "sel-3")]
    assert [b["workstation"] for b in gw.posts("/commands/select")] == ["WS-7"] * 3
    assert [(s["object_id"], s["value"], s["state"]) for s in gw.recent] == [
        (301, "reverse", "DONE"), (304, "reverse", "DONE"), (306, "normal", "DONE")]
    assert out.splitlines()[-1] == "route 202 -> 209 set: 3 of 3 commands DONE"


def test_route_set_whose_third_select_fails_cancels_the_first_two_and_exits_1(gw, token_file, capsys):
    gw.plans[(202, 209)] = CROSSOVER
    gw.refuse[("switch", 306)] = "zone Z3: held by WS-2 for 2000 ms more"
    code = route_set.set_main(["202", "209", "--operator", OPERATOR, *writes(gw, token_file)])
    _, err = capsys.readouterr()
    assert code == 1
    assert gw.posts("/commands/cancel") == [{"selection": "sel-1", "operator": OPERATOR},
                                            {"selection": "sel-2", "operator": OPERATOR}]
    assert gw.posts("/commands/operate") == []
    assert gw.open == {}                                    # every zone released
    lines = err.splitlines()
    assert lines[0] == ("gateway route set: select 3 of 3 (switch 306 normal) failed: refused (409): "
                        "zone Z3: held by WS-2 for 2000 ms more")
    assert lines[1:] == ["  cancelled: switch 301 reverse (selection sel-1, never operated)",
                         "  cancelled: switch 304 reverse (selection sel-2, never operated)",
                         "  route 202 -> 209 is NOT set"]


def test_route_set_whose_second_operate_fails_cancels_the_rest_and_says_the_first_stays_moved(
        gw, token_file, capsys):
    gw.plans[(202, 209)] = CROSSOVER
    gw.ends[("switch", 304)] = ("FAILED", "IL-2 rejected it: switch held by a set route")
    code = route_set.set_main(["202", "209", "--operator", OPERATOR, *writes(gw, token_file)])
    _, err = capsys.readouterr()
    assert code == 1
    assert gw.posts("/commands/operate") == [{"selection": "sel-1", "operator": OPERATOR},
                                             {"selection": "sel-2", "operator": OPERATOR}]
    assert gw.posts("/commands/cancel") == [{"selection": "sel-3", "operator": OPERATOR}]
    assert err.splitlines() == [
        "gateway route set: operate 2 of 3 (switch 304 reverse) ended FAILED: IL-2 rejected it: switch held by "
        "a set route",
        "  cancelled: switch 306 normal (selection sel-3, never operated)",
        "  done: switch 301 reverse (stays moved: a command sent is not called back)",
        "  route 202 -> 209 is NOT set"]


def test_route_set_whose_operate_is_refused_cancels_that_selection_too(gw, token_file, capsys, monkeypatch):
    gw.plans[(202, 209)] = CROSSOVER
    real_operate = command_cmd.operate

    def refuse_the_second(client, selection_id, operator):
        if selection_id == "sel-2":
            raise command_cmd.Refused(409, "switch 304: its section 118 is occupied (interlocking: refused)")
        return real_operate(client, selection_id, operator)
    monkeypatch.setattr(route_set, "operate", refuse_the_second)
    code = route_set.set_main(["202", "209", "--operator", OPERATOR, *writes(gw, token_file)])
    _, err = capsys.readouterr()
    assert code == 1
    assert gw.posts("/commands/cancel") == [{"selection": "sel-2", "operator": OPERATOR},
                                            {"selection": "sel-3", "operator": OPERATOR}]
    assert err.splitlines()[0] == ("gateway route set: operate 2 of 3 (switch 304 reverse) failed, nothing sent: "
                                   "refused (409): switch 304: its section 118 is occupied (interlocking: refused)")


def test_route_set_with_two_switches_in_one_zone_is_one_operation(gw, token_file, capsys):
    """The gateway shares a zone's lock among one operator's selections (same fencing token)."""
    gw.plans[(202, 206)] = dict(CROSSOVER, to=206, switches=[[301, "reverse"], [302, "reverse"]])
    code = route_set.set_main(["202", "206", "--operator", OPERATOR, *writes(gw, token_file)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [b["object"] for b in gw.posts("/commands/select")] == [301, 302] and gw.posts("/commands/cancel") == []
    assert [(s["object_id"], s["state"], s["fencing_token"]) for s in gw.recent] == [(301, "DONE", 41),
                                                                                     (302, "DONE", 41)]
    assert out.splitlines()[-1] == "route 202 -> 206 set: 2 of 2 commands DONE"


def test_route_set_in_a_zone_another_operator_holds_names_the_holder(gw, token_file, capsys):
    gw.plans[(202, 206)] = dict(CROSSOVER, to=206, switches=[[301, "reverse"], [302, "reverse"]])
    assert command_cmd.main(["select", "switch", "302", "normal", "--operator", "bob", *writes(gw, token_file)]) == 0
    capsys.readouterr()
    code = route_set.set_main(["202", "206", "--operator", OPERATOR, *writes(gw, token_file)])
    _, err = capsys.readouterr()
    assert code == 1 and gw.posts("/commands/cancel") == []
    assert err.splitlines()[0] == ("gateway route set: select 1 of 2 (switch 301 reverse) failed: refused (409): "
                                   "switch 301: zone Z1 is held by the selection of switch 302 by bob at railgate "
                                   "(SELECTED)")


def test_route_set_without_operator_is_usage_error_and_asks_nothing(gw, capsys):
    assert route_set.set_main(["202", "209", "--url", gw.url]) == 2
    assert "--operator" in capsys.readouterr().err
    assert gw.requests == []


def test_route_set_with_no_gateway_is_one_line(capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    assert route_set.set_main(["202", "209", "--operator", OPERATOR, "--url", url]) == 1
    assert capsys.readouterr().err == f"gateway route set: no gateway at {url}: connection refused\n"
