"""The admin HTTP API over real sockets on 127.0.0.1 (port 0): the routing table, limits, keep-alive,
handlers answering by future (without holding other clients), deadlines, shutdown."""
from __future__ import annotations

import copy
import http.client
import json
import os
import re
import socket
import threading
import time
from concurrent.futures import Future

import pytest

from gateway.adapters.admin_http import MAX_BODY_BYTES, AdminServer, Request, Response
from gateway.app.admin_routes import AdminRoutes
from gateway.app.metrics import render_metrics

SAMPLE_STATUS = {
    "gateway_id": 1, "name": "demo-gw", "uptime_s": 12.5, "version": "0.1.0",
    "started_at": "2026-11-22T10:00:00+08:00",
    "devices": [{"id": 257, "name": "CI-1", "kind": "interlocking", "reachable": True, "applied": 120,
                 "duplicates": 118, "gap": 0, "stale": 1,
                 "links": [{"net": "A", "alive": True, "state": "up", "peer": "127.0.0.1:40000", "loop": "io-0",
                            "rx_frames": 240, "tx_frames": 30, "rx_bytes": 9000, "tx_bytes": 960,
                            "last_rx_age_ms": 120, "errors": {"bad_crc": 1}},
                           {"net": "B", "alive": False, "state": "closed", "peer": None, "loop": None,
                            "rx_frames": 0, "tx_frames": 0, "rx_bytes": 0, "tx_bytes": 0,
                            "last_rx_age_ms": None, "errors": {}}]}],
    "trains": [{"id": 1025, "reachable": True, "section_id": 104, "offset_cm": 1200, "speed_cm_s": 1500,
                "consist_id": 9, "coupling": 2, "role": 1, "last_rx_age_ms": 40, "applied": 300, "duplicates": 0,
                "gap": 0, "stale": 0}],
    "udp": {"rx_datagrams": 5000, "oversize": 0, "errors": {"bad_size": 2}},
    "loops": [{"name": "io-0", "links": 3, "iterations": 10000, "events": 20000, "functors": 50, "timers": 400}],
    "pools": {"links": {"in_use": 5, "max": 4096, "refused": 0}},
    "conditions": [{"name": "LINK_REDUNDANCY_LOST", "source": "CI-1", "since_ms": 1795000000000}],
    "events": [{"time_ms": 1795000000000, "name": "LINK_DOWN", "source": "CI-1",
                "detail": "net B heartbeat timeout"}],
}


def table(provider=lambda: SAMPLE_STATUS, extra: dict | None = None) -> dict:
    """The admin API's table around ``provider`` (no alarm stage), plus a test's own ``extra`` routes."""
    return {**AdminRoutes(provider).table(), **(extra or {})}


@pytest.fixture
def serve():
    """``serve(provider=..., routes=..., **kw)`` starts an AdminServer on 127.0.0.1:0 with ``routes``
    (default: the admin routes around ``provider``); all are stopped after the test."""
    servers = []

    def start(provider=lambda: SAMPLE_STATUS, routes=None, **kw) -> AdminServer:
        srv = AdminServer(routes=routes if routes is not None else table(provider), **kw)
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def get(port: int, path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes; the server must close within ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def read_responses(f, n: int) -> list[tuple[int, bytes]]:
    """``n`` (status, body) from a socket's file; bodies framed by Content-Length."""
    out = []
    for _ in range(n):
        code = int(f.readline().split()[1])
        length = 0
        while (line := f.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        out.append((code, f.read(length)))
    return out


# -- a small Prometheus text-format 0.0.4 parser ------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse_prometheus(text: str) -> tuple[dict, list]:
    """Returns ({family: {"help", "type"}}, [(name, {labels}, value)]); asserts the format's rules."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    samples = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in families, f"second HELP for {name}"
            families[name] = {"help": help_}
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert families.get(name, {}).get("type") is None and kind in ("counter", "gauge"), line
            families.setdefault(name, {})["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, label_text, value = m.groups()
            labels, pos = {}, 0
            while label_text and pos < len(label_text):
                lm = _LABEL.match(label_text, pos)
                assert lm, f"bad labels at {pos} in {line!r}"
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
            samples.append((name, labels, float(value)))
            assert name in families and "help" in families[name] and "type" in families[name], name
            assert name.startswith(("railgate_", "process_", "python_gc_"))   # the last two: prometheus_client's standard names
    for name, fam in families.items():
        assert "help" in fam and "type" in fam, f"{name} lacks HELP or TYPE"
    return families, samples


def value_of(samples, name: str, **labels) -> float:
    want = {k: str(v) for k, v in labels.items()}
    found = [v for n, lb, v in samples if n == name and all(lb.get(k) == x for k, x in want.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


# -- routes ---------------------------------------------------------------------------------------
def test_status_json_round_trip(serve):
    srv = serve()
    assert srv.host == "127.0.0.1" and srv.port > 0
    status, headers, body = get(srv.port, "/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == SAMPLE_STATUS


def test_keep_alive_two_requests_on_one_connection(serve):
    srv = serve()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/status")
    assert conn.getresponse().read() and conn.sock is not None
    first = conn.sock
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read().startswith(b"# HELP")
    assert conn.sock is first  # http.client reconnects silently if the server had closed: it did not
    conn.close()


def test_pipelined_requests_are_answered_in_order(serve):
    srv = serve()
    req = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw_exchange(srv.port, req)
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1 404 ") == 1


def test_a_request_byte_by_byte_then_one_with_its_fin(serve):
    """Edge-triggered reading: every byte arrives on its own edge; then a request and the client's
    FIN arrive together (one edge): answered, then closed."""
    srv = serve()
    req = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(req)):
            s.send(req[i:i + 1])
            time.sleep(0.001)
        f = s.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 200 ")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(req)
        s.shutdown(socket.SHUT_WR)
        out = b"".join(iter(lambda: s.recv(65536), b""))   # the server closes after answering
    assert out.startswith(b"HTTP/1.1 200 ") and json.loads(out.partition(b"\r\n\r\n")[2]) == SAMPLE_STATUS


def test_pipelining_client_that_does_not_read_is_held_back_then_served(serve):
    """1,000 pipelined requests (1 MiB) sent before any answer is read (8 MB of them): the server stops
    reading while answers are queued, so the kernel's window pushes back on the client instead of
    our memory growing, and reads on as they drain."""
    big = {"blob": "x" * 8_000}
    srv = serve(lambda: big)
    n = 1000
    req = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        sender = threading.Thread(target=s.sendall, args=(req * n,))
        sender.start()
        time.sleep(0.3)   # answers pile up unread on both sides meanwhile
        answers = read_responses(s.makefile("rb"), n)
        sender.join(5)
    assert [code for code, _ in answers] == [200] * n and json.loads(answers[-1][1]) == big


def test_metrics_parse_as_prometheus_text(serve):
    status = copy.deepcopy(SAMPLE_STATUS)
    status["devices"][0]["name"] = 'CI "north" \\ 1\nx'
    srv = serve(lambda: status)
    code, headers, body = get(srv.port, "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families, samples = parse_prometheus(body.decode())
    assert value_of(samples, "railgate_uptime_seconds") == 12.5
    assert value_of(samples, "railgate_link_rx_frames_total", device=257, net="A") == 240
    assert value_of(samples, "railgate_link_errors_total", device=257, net="A", reason="bad_crc") == 1
    assert value_of(samples, "railgate_link_last_rx_age_seconds", device=257, net="A") == 0.12
    assert not [s for s in samples if s[0] == "railgate_link_last_rx_age_seconds" and s[1]["net"] == "B"]
    assert value_of(samples, "railgate_device_reachable", device=257) == 1
    assert value_of(samples, "railgate_device_info", device=257) == 1
    assert [lb["name"] for n, lb, _ in samples if n == "railgate_device_info"] == [status["devices"][0]["name"]]
    assert value_of(samples, "railgate_train_reachable", train=1025) == 1
    assert value_of(samples, "railgate_train_speed_meters_per_second", train=1025) == 15.0
    assert value_of(samples, "railgate_pool_links", state="in_use") == 5
    assert value_of(samples, "railgate_udp_errors_total", reason="bad_size") == 2
    assert not [n for n, _, _ in samples if "slab" in n or n == "railgate_pool_exhausted_total"]
    assert value_of(samples, "railgate_loop_iterations_total", loop="io-0") == 10000
    assert families["railgate_link_rx_frames_total"]["type"] == "counter"
    assert families["railgate_device_reachable"]["type"] == "gauge"


def test_render_metrics_tolerates_missing_sections():
    families, samples = parse_prometheus(render_metrics({}))
    assert "railgate_uptime_seconds" in families and not [s for s in samples if s[0] == "railgate_uptime_seconds"]


def test_unknown_path_is_404_naming_it(serve):
    srv = serve()
    status, headers, body = get(srv.port, "/nowhere?x=1")
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": "no such path: /nowhere", "path": "/nowhere"}


def test_wrong_method_is_405_with_allow(serve):
    srv = serve(routes=table(extra={("POST", "/alarms/ack"): lambda req: Response(200, {})}))
    status, headers, body = get(srv.port, "/status", method="DELETE")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert "DELETE" in json.loads(body)["error"]
    status, headers, _ = get(srv.port, "/alarms/ack")
    assert status == 405 and headers["Allow"] == "POST"


def test_malformed_request_is_400_then_close(serve):
    srv = serve()
    out = raw_exchange(srv.port, b"GET /status HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in out
    assert b"malformed request" in out
    assert get(srv.port, "/status")[0] == 200  # the server keeps serving


def test_oversized_head_is_431(serve):
    srv = serve()
    out = raw_exchange(srv.port, b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")


def test_body_over_64_kib_is_413(serve):
    calls = []
    srv = serve(routes=table(extra={("POST", "/alarms/ack"): lambda req: calls.append(req.body) or Response(200)}))
    status, headers, body = get(srv.port, "/alarms/ack", "POST", b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413 and str(MAX_BODY_BYTES) in json.loads(body)["error"]
    # chunked, so the server only finds out while reading
    chunk = b"x" * 8192
    req = (b"POST /alarms/ack HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           + (b"2000\r\n" + chunk + b"\r\n") * 9 + b"0\r\n\r\n")
    assert raw_exchange(srv.port, req).startswith(b"HTTP/1.1 413 ")
    assert calls == []
    assert get(srv.port, "/alarms/ack", "POST", b"x" * MAX_BODY_BYTES)[0] == 200 and len(calls[0]) == MAX_BODY_BYTES


def test_provider_raising_is_500_and_the_next_request_works(serve, caplog):
    fail = [True]  # the first call only

    def provider():
        if fail:
            fail.pop()
            raise RuntimeError("snapshot broke")
        return SAMPLE_STATUS

    srv = serve(provider)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/status")
    resp = conn.getresponse()
    assert resp.status == 500
    assert json.loads(resp.read()) == {"error": "GET /status failed: RuntimeError: snapshot broke"}
    conn.request("GET", "/status")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == SAMPLE_STATUS
    conn.close()
    assert "snapshot broke" in caplog.text


def test_post_route_gets_query_and_body(serve):
    seen = []

    def ack(req: Request):
        seen.append((req.method, req.path, req.query, req.body, threading.current_thread().name))
        return Response(201, {"acked": req.query["id"]})

    srv = serve(routes={("POST", "/alarms/ack"): ack})
    status, headers, body = get(srv.port, "/alarms/ack?id=42&by=op%201", "POST", b'{"note": "seen"}')
    assert status == 201 and json.loads(body) == {"acked": "42"}
    assert seen == [("POST", "/alarms/ack", {"id": "42", "by": "op 1"}, b'{"note": "seen"}', "admin")]


def test_route_handler_bad_return_is_500(serve):
    srv = serve(routes={("POST", "/x"): lambda req: (200, {})})
    status, _, body = get(srv.port, "/x", "POST", b"")
    assert status == 500 and "expected a Response or a concurrent.futures.Future" in json.loads(body)["error"]
    fut = Future()
    fut.set_result("ok")
    srv2 = serve(routes={("GET", "/z"): lambda req: fut})
    status, _, body = get(srv2.port, "/z")
    assert status == 500 and "returned 'ok'" in json.loads(body)["error"]


def test_the_server_has_no_routes_of_its_own():
    """The table given is the whole API: the HTTP module builds in no /status, /metrics or any other."""
    srv = AdminServer(routes={("GET", "/x"): lambda req: Response(200, {"x": 1})})
    srv.start()
    try:
        assert get(srv.port, "/x")[0] == 200
        assert get(srv.port, "/status")[0] == 404 and get(srv.port, "/metrics")[0] == 404
    finally:
        srv.stop()
    for bad in ({("get", "/x"): dict}, {("GET", "x"): dict}, {"GET /x": dict}, {("GET", "/x"): "not callable"}):
        with pytest.raises(ValueError, match="expected \\('METHOD', '/path'\\) -> callable"):
            AdminServer(routes=bad)


def test_the_admin_api_is_one_table(serve):
    """Every route the gateway serves is named in AdminRoutes.table(); anything else is 404, or 405
    with Allow for a known path."""
    assert set(AdminRoutes(dict).table()) == {("GET", "/status"), ("GET", "/metrics"), ("GET", "/healthz"),
                                              ("GET", "/readyz"), ("GET", "/alarms"), ("POST", "/alarms/action"),
                                              ("POST", "/commands/select"), ("POST", "/commands/operate"),
                                              ("POST", "/commands/cancel"), ("GET", "/commands"),
                                              ("GET", "/routes/plan")}
    srv = serve()
    status, _, body = get(srv.port, "/alarms/nowhere")
    assert status == 404 and json.loads(body)["path"] == "/alarms/nowhere"
    status, headers, _ = get(srv.port, "/alarms/action")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = get(srv.port, "/metrics", "POST", b"")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = get(srv.port, "/metrics", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, _, body = get(srv.port, "/alarms")
    assert status == 404 and "without the alarm stage" in json.loads(body)["error"]


# -- handlers answering by future -----------------------------------------------------------------
def _wait(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def _slow_routes(futures: list) -> dict:
    """The admin table plus POST /slow, whose future the test completes."""
    def slow(req: Request) -> Future:
        futures.append(Future())
        return futures[-1]
    return table(extra={("POST", "/slow"): slow})


def test_a_pending_future_holds_only_its_own_connection(serve):
    """While one request waits for its handler's future, other clients are answered at once; the
    future, completed in another thread, is then written, and the 100 KiB of requests pipelined
    behind it are read and answered (the server reads on by itself: no new edge comes for them)."""
    futures: list[Future] = []
    srv = serve(routes=_slow_routes(futures))
    behind = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" + behind * 100)
        _wait(lambda: futures)
        t0 = time.monotonic()
        for _ in range(10):
            assert get(srv.port, "/status")[0] == 200
        assert time.monotonic() - t0 < 1.0 and not futures[0].done()
        threading.Thread(target=futures[0].set_result, args=(Response(202, {"done": True}),)).start()
        answers = read_responses(s.makefile("rb"), 101)
    assert answers[0] == (202, b'{"done":true}')
    assert [code for code, _ in answers[1:]] == [200] * 100 and json.loads(answers[-1][1]) == SAMPLE_STATUS


def test_a_pending_future_past_its_deadline_is_503_and_its_late_answer_dropped(serve):
    futures: list[Future] = []
    srv = serve(routes=_slow_routes(futures), action_timeout_s=0.3)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    t0 = time.monotonic()
    conn.request("POST", "/slow", body=b"{}")
    resp = conn.getresponse()
    assert resp.status == 503 and 0.25 < time.monotonic() - t0 < 3
    assert "no answer within 0.3 s" in json.loads(resp.read())["error"]
    futures[0].set_result(Response(200, {"too": "late"}))   # dropped: the client has its answer
    _wait(lambda: srv.late == 1)
    conn.request("GET", "/status")   # the same connection, kept alive
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == SAMPLE_STATUS
    conn.close()
    failed = Future()
    failed.set_exception(RuntimeError("alarm thread gone"))
    srv2 = serve(routes={("GET", "/f"): lambda req: failed})
    status, _, body = get(srv2.port, "/f")
    assert status == 500 and json.loads(body) == {"error": "GET /f failed: RuntimeError: alarm thread gone"}



def test_a_slow_operator_action_does_not_delay_status_on_another_connection(tmp_path):
    """Through the gateway's own table: an ack waits while the alarm thread is held busy; meanwhile
    GET /status on another connection answers in about ALARM_WAIT_S, with everything but the engine's
    part; once the thread runs again the ack completes, and /status has the engine again."""
    from gateway_harness import QuietRelay, RunningGateway, line_config

    from gateway.app import config
    from gateway.app.admin_routes import ALARM_WAIT_S

    raw = line_config(state_dir=str(tmp_path / "state"), hello_timeout_ms=60_000).raw  # no start-up check
    raw["kafka"] = {"bootstrap_servers": "127.0.0.1:9"}   # not embedded: no broker; the relay is quiet
    key = "CI-1/DEVICE_COMM_LOST/-"
    with RunningGateway(config.parse(raw, "t"), admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        port = gw.ports["admin"]
        auth = {"Authorization": f"Bearer {(tmp_path / 'state' / 'admin.token').read_text().strip()}"}
        gw.line.events.raise_condition("DEVICE_COMM_LOST", "CI-1", gw.line.now_ms(), "no link up")
        _wait(lambda: key in {e["alarm"]["key"] for e in json.loads(get(port, "/alarms")[2])["alarms"]})
        assert "areas" in json.loads(get(port, "/status")[2])["alarms"]["engine"]   # an answer to fall back on
        held, hold = threading.Event(), threading.Event()
        gw.alarms.service.call(lambda engine: held.set() or hold.wait(10))   # the alarm thread is busy
        action = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            assert held.wait(5)
            action.request("POST", "/alarms/action",
                           body=json.dumps({"action": "ack", "key": key, "operator": "alice"}).encode(),
                           headers=auth)
            _wait(lambda: len(gw.admin._pending) == 1)   # the ack waits for the alarm thread
            t0 = time.monotonic()
            code, _, body = get(port, "/status")
            elapsed = time.monotonic() - t0
            assert code == 200 and elapsed < ALARM_WAIT_S + 1.0
            status = json.loads(body)
            engine = status["alarms"]["engine"]    # the alarm thread's last answer, and its age
            assert "busy" in engine["busy"] and engine["age_s"] >= 0 and "areas" in engine
            assert status["alarms"]["relay"] == {"delivered": 0}
            assert [d["name"] for d in status["devices"]] and "history" in status["alarms"]["writers"]
            assert get(port, "/metrics")[0] == 200 and get(port, "/alarms/nowhere")[0] == 404
            assert len(gw.admin._pending) == 1   # the ack is still waiting
        finally:
            hold.set()
        resp = action.getresponse()
        answer = json.loads(resp.read())
        action.close()
        assert resp.status == 200 and [(e["alarm"]["key"], e["state"], e["operator"]) for e in answer["events"]] \
            == [(key, "ACKED", "alice")]
        engine = json.loads(get(port, "/status")[2])["alarms"]["engine"]
        assert "error" not in engine and "busy" not in engine and engine["event_seq"] == 2
        code, _, body = get(port, "/alarms/action", "POST", b"[1]", auth)
        assert code == 400 and "bad alarm action" in json.loads(body)["error"]
        code, _, body = get(port, "/alarms/action", "POST", json.dumps({"action": "ack", "key": key,
                                                                        "operator": "alice"}).encode(), auth)
        assert code == 409


# -- load, timeouts, shutdown ------------------------------------------------------------------
def test_50_concurrent_clients_x_20_requests(serve):
    srv = serve(max_per_client=50)  # all from 127.0.0.1: over the default cap of 16 per address
    answered, errors = [], []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            for _ in range(20):
                conn.request("GET", "/status")
                resp = conn.getresponse()
                if resp.status == 200 and json.loads(resp.read()) == SAMPLE_STATUS:
                    answered.append(1)
        except Exception as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(answered) == 50 * 20


def test_timeouts_408_for_a_partial_request_silent_close_when_idle(serve):
    srv = serve(head_timeout_s=0.3)
    t0 = time.monotonic()
    out = raw_exchange(srv.port, b"GET /status HTTP/1.1\r\nHost: x\r\n")
    assert out.startswith(b"HTTP/1.1 408 ") and 0.25 < time.monotonic() - t0 < 3
    assert raw_exchange(srv.port, b"") == b""


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_stop_leaves_no_thread_and_no_fd():
    import gc
    gc.collect()   # an earlier test's Kafka client closes its sockets when collected, not within this test
    threads_before, fds_before = set(threading.enumerate()), _open_fds()
    srv = AdminServer(routes=table())
    srv.start()
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    partial = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    partial.sendall(b"GET /status HTTP/1.1\r\n")
    keep = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    keep.request("GET", "/status")
    keep.getresponse().read()
    srv.stop()
    assert idle.recv(1) == b"" and partial.recv(1) == b""  # the server closed its ends
    for s in (idle, partial, keep):
        s.close()
    srv.stop()  # idempotent
    assert set(threading.enumerate()) == threads_before
    assert _open_fds() == fds_before
