"""The admin API under attack, over real loopback sockets (issue 12, item 5).

* a flood of idle and slowloris connections, from other loopback addresses and from the operator's
  own 127.0.0.1, while ``gateway status`` keeps answering within a second or two;
* request head and body deadlines that bytes trickling in do not move;
* state-changing requests need the admin token (401 without it, counted), reads stay open;
* the operator's name, the reason, the JSON nesting and the alarm key are bounded (400, never 409 or 500);
* the client's address is journaled with the action;
* every CLI printer escapes control characters that came from the network or the store.
"""
from __future__ import annotations

import http.client
import json
import os
import pathlib
import socket
import stat
import threading
import time
from concurrent.futures import Future

import jsonschema
import pytest
import yaml
from gateway_harness import QuietRelay, RunningGateway, line_config, wait_until
from test_admin_http import SAMPLE_STATUS
from test_history_fixtures import event, rows_of

from alarms.history.store import SqliteHistory
from alarms.journal import Journal
from alarms.model import AlarmEvent
from gateway.adapters.admin_http import AdminServer, Request, Response, client_key
from gateway.app import config
from gateway.app.admin_routes import AdminRoutes, TokenError, load_or_create_token, parse_json
from gateway.cli import alarms_action_cmd, alarms_history_cmd, status_cmd
from gateway.cli.alarms_cmd import format_change
from gateway.cli.status_cmd import render_text
from gateway.cli.terminal_text import json_line, safe_text

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "schema" / "alarm-message.schema.json").read_text())
FORGED = "mallory\n2026-11-23T17:26:54.859+08:00  #99     critical ack  FORGED\x1b[2J\x1b]0;pwned\x07\u202e\x9b"



@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """One gateway with the alarm stage for the module: its admin port, state dir, token and a config
    file pointing at both (for the CLI's ``-c``)."""
    tmp = tmp_path_factory.mktemp("admin-security")
    raw = line_config(state_dir=str(tmp / "state"), hello_timeout_ms=60_000).raw   # no start-up check
    raw["kafka"] = {"bootstrap_servers": "127.0.0.1:9"}    # not embedded: no broker; the relay is quiet
    with RunningGateway(config.parse(raw, "t"), admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        raw["gateway"]["admin"] = {"host": "127.0.0.1", "port": gw.ports["admin"]}
        cfg_path = tmp / "line.yaml"
        cfg_path.write_text(yaml.safe_dump(raw))
        state = tmp / "state"
        gw.port, gw.state, gw.cfg_path = gw.ports["admin"], state, str(cfg_path)
        gw.token = (state / "admin.token").read_text().strip()
        yield gw


_alarm_numbers = iter(range(1, 1000))


def new_alarm(gw) -> str:
    """A fresh UNACK alarm (a DEVICE_COMM_LOST condition of a new source); its key."""
    source = f"SEC-{next(_alarm_numbers)}"
    key = f"{source}/DEVICE_COMM_LOST/-"
    gw.line.events.raise_condition("DEVICE_COMM_LOST", source, gw.line.now_ms(), "test")
    wait_until(lambda: state_of(gw, key) == "UNACK", what=f"{key} raised")
    return key


def state_of(gw, key: str) -> str | None:
    return next((a["state"] for a in get_json(gw.port, "/alarms")[1]["alarms"] if a["alarm"]["key"] == key), None)


def get_json(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def post(port: int, body, authorization: str | None = None):
    """POST /alarms/action; (status, headers, answer, our 'ip:port')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.connect()
        ours = "%s:%d" % conn.sock.getsockname()[:2]
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        conn.request("POST", "/alarms/action", body=body if isinstance(body, bytes) else json.dumps(body).encode(),
                     headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read()), ours
    finally:
        conn.close()


def unauthorized(gw) -> int:
    return get_json(gw.port, "/status")[1]["admin"]["unauthorized"]


# -- the token ------------------------------------------------------------------------------------
def test_the_token_file_is_created_once_with_mode_0600(gateway, tmp_path):
    st = os.stat(gateway.state / "admin.token")
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert len(gateway.token) == 64 and int(gateway.token, 16) >= 0          # 32 random bytes, hex
    path = str(tmp_path / "sub" / "admin.token")
    first = load_or_create_token(path)
    assert load_or_create_token(path) == first and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first != gateway.token
    (tmp_path / "short.token").write_text("secret\n")
    with pytest.raises(TokenError, match="short.token: expected one token of 32..512 characters"):
        load_or_create_token(str(tmp_path / "short.token"))


def test_a_configured_token_file_is_used_and_an_inline_token_refused(tmp_path):
    raw = line_config(state_dir=str(tmp_path / "state")).raw
    raw["gateway"]["admin"] = {"host": "127.0.0.1", "port": 0, "token_file": str(tmp_path / "secrets" / "t")}
    from gateway.app.admin_routes import token_path
    assert token_path(config.parse(raw, "t")) == str(tmp_path / "secrets" / "t")
    raw["gateway"]["admin"]["token"] = "0123456789abcdef0123456789abcdef"
    with pytest.raises(config.ConfigError, match=r"gateway.admin.token: not supported \(value not shown\)") as err:
        config.parse(raw, "t")
    assert "0123456789abcdef" not in str(err.value)


# -- authentication -------------------------------------------------------------------------------
def test_reads_are_open_and_actions_need_the_token(gateway):
    key = new_alarm(gateway)
    before = unauthorized(gateway)
    assert get_json(gateway.port, "/status")[0] == 200 and get_json(gateway.port, "/alarms")[0] == 200
    ack = {"action": "ack", "key": key, "operator": "alice"}
    for authorization in (None, "Bearer wrong", f"Basic {gateway.token}", f"Bearer {gateway.token}x", "Bearer "):
        code, headers, answer, _ = post(gateway.port, ack, authorization)
        assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert "needs the admin token" in answer["error"]
    assert unauthorized(gateway) == before + 5
    assert state_of(gateway, key) == "UNACK"                                 # nothing happened
    code, _, answer, _ = post(gateway.port, ack, f"Bearer {gateway.token}")
    assert code == 200 and [e["state"] for e in answer["events"]] == ["ACKED"]
    assert unauthorized(gateway) == before + 5
    assert "unauthorized 5 requests (401)" in render_text({"admin": {"unauthorized": 5}})


def test_the_body_is_not_parsed_before_the_token_is_checked(gateway):
    code, _, _, _ = post(gateway.port, b"[" * 60_000)
    assert code == 401


def test_every_route_but_get_needs_the_token():
    """Decided by method in the routing layer: a POST route added later is guarded without a flag."""
    routes = AdminRoutes(dict, alarms=object(), token="t" * 64)
    table = routes.table()
    request = Request("POST", "/x", {}, b"{}", lambda *a: None, {}, "127.0.0.1:1")
    guarded = [key for key, handler in table.items() if key[0] != "GET"]
    assert guarded == [("POST", "/alarms/action"), ("POST", "/commands/select"), ("POST", "/commands/operate"),
                       ("POST", "/commands/cancel")]
    for key in guarded:
        assert table[key](request).status == 401
    assert routes.unauthorized == len(guarded)
    assert AdminRoutes(dict, alarms=object()).table()[("POST", "/alarms/action")](
        Request("POST", "/x", {}, b"{}", lambda *a: None, {"authorization": "Bearer "}, "")).status == 401


# -- bounds -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("change,field", [
    ({"operator": "o" * 65}, "operator"),
    ({"operator": "bob\n2026-11-23 #99 forged line"}, "operator"),
    ({"operator": "bob\x1b[31m"}, "operator"),
    ({"operator": "bob\u202eevil"}, "operator"),
    ({"operator": "   "}, "operator"),
    ({"operator": 7}, "operator"),
    ({"reason": "r" * 501}, "reason"),
    ({"reason": "line\nbreak"}, "reason"),
    ({"key": "a/b"}, "alarm.key"),
    ({"key": "CI-1/lower_case/-"}, "alarm.code"),
    ({"key": "x" * 5000}, "key"),
    ({"key": None}, "key: expected 'source/code/object'"),
    ({"client": "10.9.9.9:1"}, "unknown field(s) 'client'"),
])
def test_bad_fields_are_400_naming_the_field_and_change_nothing(gateway, change, field):
    key = new_alarm(gateway)
    code, _, answer, _ = post(gateway.port, {"action": "ack", "key": key, "operator": "alice", **change},
                              f"Bearer {gateway.token}")
    assert code == 400 and answer["error"].startswith("bad alarm action: ") and field in answer["error"]
    assert len(answer["error"]) < 400                       # the value is not echoed back whole
    assert state_of(gateway, key) == "UNACK"


def test_names_and_reasons_up_to_their_bounds_are_taken(gateway):
    key = new_alarm(gateway)
    name, reason = "Ø" * 63 + "x", "维护 " * 166 + "ok"          # 64 and 500 characters, not ASCII
    assert len(reason) == 500
    code, _, answer, _ = post(gateway.port, {"action": "shelve", "key": key, "operator": name, "minutes": 5,
                                             "reason": reason}, f"Bearer {gateway.token}")
    assert code == 200 and answer["events"][0]["operator"] == name and answer["events"][0]["reason"] == reason


@pytest.mark.parametrize("body", [b"[" * 60_000, b'{"a":' * 9_000 + b"1" + b"}" * 9_000,
                                  json.dumps({"action": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {}}}}}}}}}).encode()])
def test_deep_nesting_is_400_not_500(gateway, body):
    code, _, answer, _ = post(gateway.port, body, f"Bearer {gateway.token}")
    assert code == 400 and "nested deeper than 8 levels" in answer["error"]


def test_json_depth_check_skips_brackets_in_strings():
    assert parse_json(b'{"a": "[[[[[[[[[[[[[[[[[[[[", "b": "\\"{{{{{{{{{{{{{{"}') == {"a": "[" * 20,
                                                                               "b": '"' + "{" * 14}
    assert parse_json(b"[" * 8 + b"]" * 8) == [[[[[[[[]]]]]]]]
    with pytest.raises(ValueError, match="nested deeper than 8"):
        parse_json(b"[" * 9 + b"]" * 9)


# -- the client's address in the journal --------------------------------------------------------------
def test_the_client_address_is_journaled_with_the_action(gateway, capsys):
    key = new_alarm(gateway)
    code, _, answer, ours = post(gateway.port, {"action": "ack", "key": key, "operator": "alice",
                                                "reason": "checked on site"}, f"Bearer {gateway.token}")
    assert code == 200 and ours.startswith("127.0.0.1:")
    assert answer["events"][0]["client"] == ours and answer["events"][0]["reason"] == "checked on site"
    journal = Journal(str(gateway.state / "journal.db"))
    try:
        events = [AlarmEvent.decode(r.value) for r in journal.read_after(0, limit=10_000)]
    finally:
        journal.close()
    ack = next(e for e in events if e.key == key and e.transition == "ack")
    assert (ack.operator, ack.client, ack.reason) == ("alice", ours, "checked on site")
    jsonschema.validate(json.loads(ack.encode()), SCHEMA)
    raised = next(e for e in events if e.key == key and e.transition == "raise")
    assert "client" not in json.loads(raised.encode())                     # other messages keep their shape

    def in_history():
        assert alarms_history_cmd.main(["-c", gateway.cfg_path, "--source", key.split("/")[0]]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if " ack " in line]
    [line] = wait_until(in_history, what="the ack in the history")
    assert f"by alice from {ours}" in line and "(reason: checked on site)" in line


# -- the CLI with the token ------------------------------------------------------------------------
def test_cli_reads_the_token_from_the_config_state_dir_or_a_file(gateway, tmp_path, capsys):
    key = new_alarm(gateway)
    url = f"http://127.0.0.1:{gateway.port}"
    assert alarms_action_cmd.ack_main(["--url", url, key, "--operator", "alice"]) == 1
    err = capsys.readouterr().err
    assert "refused (401)" in err and "give --token-file or -c CONFIG" in err
    wrong = tmp_path / "wrong.token"
    wrong.write_text("f" * 64)
    assert alarms_action_cmd.ack_main(["--url", url, key, "--operator", "alice", "--token-file", str(wrong)]) == 1
    assert "refused (401)" in capsys.readouterr().err
    assert alarms_action_cmd.ack_main(["--url", url, key, "--operator", "alice", "--token-file",
                                       str(tmp_path / "missing")]) == 2
    assert "cannot read the admin token" in capsys.readouterr().err
    assert alarms_action_cmd.shelve_main(["-c", gateway.cfg_path, key, "--operator", "bob", "--minutes", "5",
                                          "--reason", "track work"]) == 0
    assert "UNACK -> SHELVED by bob" in capsys.readouterr().out
    assert alarms_action_cmd.unshelve_main(["-c", gateway.cfg_path, key, "--operator", "b" * 65]) == 1
    assert "refused (400): bad alarm action: operator: expected at most 64 characters" in capsys.readouterr().err


# -- connection flood ---------------------------------------------------------------------------------
@pytest.fixture
def admin():
    servers = []

    def start(**kw) -> AdminServer:
        srv = AdminServer(routes=AdminRoutes(lambda: SAMPLE_STATUS).table(), **kw)
        srv.start()
        servers.append(srv)
        return srv
    yield start
    for srv in servers:
        srv.stop()


def server_stats(srv: AdminServer) -> dict:
    """The server's figures, read in its own thread (as a handler would)."""
    fut: Future = Future()
    srv._loop.queue_in_loop(lambda: fut.set_result(srv.stats()))
    return fut.result(5)


def flood(port: int, sources: list[str], per_source: int) -> list[socket.socket]:
    """``per_source`` connections from each loopback address: every other one idle, the rest slowloris
    (a request head begun and never finished)."""
    socks = []
    for src in sources:
        for i in range(per_source):
            s = socket.socket()
            s.bind((src, 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            if i % 2:
                try:
                    s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                except OSError:
                    pass  # already closed by the server: refused or evicted
            socks.append(s)
    return socks


class Trickle(threading.Thread):
    """Sends one byte to every flood socket every 100 ms: the deadlines must not move for it."""

    def __init__(self, socks) -> None:
        super().__init__(daemon=True)
        self.socks, self.stop_event = socks, threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            for s in self.socks:
                try:
                    s.send(b"a")
                except OSError:
                    pass


def status_answers_quickly(port: int, capsys, times: int = 3) -> None:
    for _ in range(times):
        t0 = time.monotonic()
        code = status_cmd.main(["--url", f"http://127.0.0.1:{port}", "--json"])
        elapsed = time.monotonic() - t0
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert json.loads(captured.out) == SAMPLE_STATUS and elapsed < 2.0


def _settled(srv: AdminServer, attempts: int):
    def done():
        st = server_stats(srv)
        return st if st["connections"] + st["evicted"] + st["refused"] == attempts else None
    return wait_until(done, what="every flood connection accepted or refused")


def test_status_answers_while_other_addresses_flood_the_server(admin, capsys):
    """180 idle and slowloris connections from 9 addresses fill the 124 general slots; the reserved ones
    still take a fresh address, so `gateway status` from 127.0.0.1 answers 3 of 3 times."""
    srv = admin()
    sources = [f"127.0.0.{i}" for i in range(2, 11)]
    socks = flood(srv.port, sources, 20)
    trickle = Trickle(socks)
    trickle.start()
    try:
        st = _settled(srv, len(socks))
        assert st["connections"] == 125 and st["clients"] == 9 and st["refused"] > 0
        status_answers_quickly(srv.port, capsys)
    finally:
        trickle.stop_event.set()
        trickle.join()
        for s in socks:
            s.close()


def test_status_answers_while_its_own_address_floods_the_server(admin, capsys):
    """200 idle and slowloris connections from 127.0.0.1, the address `gateway status` uses too: the
    address keeps its 16 newest, and the status request, newest of all, is answered."""
    srv = admin()
    socks = flood(srv.port, ["127.0.0.1"], 200)
    trickle = Trickle(socks)
    trickle.start()
    try:
        st = _settled(srv, len(socks))
        assert st["connections"] == 16 and st["evicted"] == 184
        status_answers_quickly(srv.port, capsys)
    finally:
        trickle.stop_event.set()
        trickle.join()
        for s in socks:
            s.close()


def test_an_address_whose_connections_all_wait_for_answers_is_refused_more(capsys):
    futures: list[Future] = []

    def slow(req: Request) -> Future:
        futures.append(Future())
        return futures[-1]
    srv = AdminServer(routes={**AdminRoutes(lambda: SAMPLE_STATUS).table(), ("GET", "/slow"): slow},
                      max_per_client=4, action_timeout_s=30)
    srv.start()
    busy = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            busy.append(s)
        wait_until(lambda: len(futures) == 4, what="four requests waiting")
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        assert extra.recv(1) == b""                                         # closed: nothing to evict
        extra.close()
        st = server_stats(srv)
        assert st["refused_per_client"] == 1 and st["evicted"] == 0 and st["connections"] == 4
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5, source_address=("127.0.0.2", 0)) as other:
            other.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert other.recv(100).startswith(b"HTTP/1.1 200 ")             # another address is served
        for fut in futures:
            fut.set_result(Response(200, {}))
    finally:
        for s in busy:
            s.close()
        srv.stop()


def test_client_key_counts_ipv4_and_ipv6_64():
    assert client_key("127.0.0.1") == "127.0.0.1" and client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")


# -- deadlines ----------------------------------------------------------------------------------------
def _exchange_trickling(port: int, first: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send ``first``, then one byte every 50 ms until the server answers or closes; (answer, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.monotonic()
        s.sendall(first)
        s.settimeout(0.05)
        chunks = []
        while time.monotonic() - t0 < timeout:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                try:
                    s.send(b"a")
                except OSError:
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - t0


def test_a_head_trickled_byte_by_byte_gets_408_at_the_head_deadline(admin):
    srv = admin(head_timeout_s=0.5, body_timeout_s=5)
    out, elapsed = _exchange_trickling(srv.port, b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert out.startswith(b"HTTP/1.1 408 ") and b"request head not complete within 0.5 s" in out
    assert 0.4 < elapsed < 2.0
    # counted when the server's loop handles the close, which the client may see first
    wait_until(lambda: server_stats(srv)["timed_out"] >= 1, what="the timeout counted")
    assert server_stats(srv)["timed_out"] == 1


def test_a_body_trickled_byte_by_byte_gets_408_at_the_body_deadline(admin):
    srv = admin(head_timeout_s=5, body_timeout_s=0.5)
    out, elapsed = _exchange_trickling(srv.port, b"POST /alarms/action HTTP/1.1\r\nHost: x\r\n"
                                                 b"Content-Length: 1000\r\n\r\n{")
    assert out.startswith(b"HTTP/1.1 408 ") and b"request body not complete within 0.5 s" in out
    assert 0.4 < elapsed < 2.0


def test_an_idle_connection_is_closed_silently_at_the_head_deadline(admin):
    srv = admin(head_timeout_s=0.3)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        t0 = time.monotonic()
        assert s.recv(1) == b"" and 0.25 < time.monotonic() - t0 < 2


# -- CLI output escapes what came from the network ----------------------------------------------------
def test_safe_text_escapes_controls_and_keeps_scripts():
    assert safe_text("CI-1 站台门 7 Ø") == "CI-1 站台门 7 Ø"
    assert safe_text("a\nb\x1b[2J\t\u202e\x9b\u2028") == "a\\nb\\x1b[2J\\t\\u202e\\x9b\\u2028"
    assert json.loads(json_line({"op": FORGED})) == {"op": FORGED}
    assert json_line({"op": FORGED}).isprintable()


def test_history_cli_escapes_a_forged_operator_name(tmp_path, capsys):
    """An operator name stored before the bounds (or by another writer) prints as one escaped line."""
    (tmp_path / "state").mkdir()
    store = SqliteHistory(str(tmp_path / "state" / "history.db"))
    raised = event(1)
    acked = AlarmEvent(**{**{f: getattr(raised, f) for f in AlarmEvent.__dataclass_fields__},
                          "event_id": "ab" * 16, "event_seq": 2, "transition": "ack", "previous_state": "UNACK",
                          "state": "ACKED", "operator": FORGED, "text": "text\x1b[31m red"})
    store.insert_batch(rows_of([raised, acked]))
    store.close()
    cfg = {"gateway": {"state_dir": str(tmp_path / "state"),
                       "listen": {"net_a": {"port": 0}, "net_b": {"port": 0}, "udp": {"port": 0}}},
           "line": {"name": "demo-line-1", "timezone": "Asia/Shanghai"}}
    (tmp_path / "line.yaml").write_text(yaml.safe_dump(cfg))
    assert alarms_history_cmd.main(["-c", str(tmp_path / "line.yaml")]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2 and "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    assert "by mallory\\n2026-11-23" in out and "FORGED\\x1b[2J" in out and "text\\x1b[31m red" in out
    assert alarms_history_cmd.main(["-c", str(tmp_path / "line.yaml"), "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2 and out.replace("\n", "").isprintable()
    assert {json.loads(line)["operator"] for line in out.splitlines()} == {None, FORGED}


def test_status_and_alarm_list_escape_forged_names(admin, capsys):
    status = json.loads(json.dumps(SAMPLE_STATUS))
    status["devices"][0]["name"] = FORGED
    status["events"][0]["detail"] = "net B\n  forged row\x1b[2J"
    text = render_text(status)
    assert "\x1b" not in text and "\u202e" not in text
    assert len(text.splitlines()) == len(render_text(SAMPLE_STATUS).splitlines())

    alarms = {"event_seq": 3, "alarms": [{"alarm": {"key": "CI-1/DEVICE_ALARM_1/-"}, "severity": "major",
                                          "state": "ACKED", "operator": FORGED, "text": "motor\x1b[8m hidden"}]}
    srv = AdminServer(routes={("GET", "/alarms"): lambda req: Response(200, alarms)})
    srv.start()
    try:
        assert alarms_action_cmd.list_main(["--url", f"http://127.0.0.1:{srv.port}"]) == 0
    finally:
        srv.stop()
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2 and "\x1b" not in out and "by mallory\\n" in out


def test_tail_lines_escape_forged_texts():
    class Change:
        kind, topic, keys = "event", "railgate.alarms.20261123", ()
        event = {"time_ms": 1795000000000, "alarm": {"key": "CI-1/X/-"}, "transition": "ack",
                 "previous_state": "UNACK", "state": "ACKED", "severity": "major", "event_seq": 2,
                 "operator": FORGED, "text": "t\x1b[2J", "client": "127.0.0.1:5"}
    from zoneinfo import ZoneInfo
    line = format_change(Change(), ZoneInfo("UTC"))
    assert "\n" not in line and "\x1b" not in line and "from 127.0.0.1:5" in line
