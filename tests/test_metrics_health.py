"""/metrics for the alarm pipeline, coupling, admin and process families, and /healthz and /readyz,
from real gateways on 127.0.0.1 (alarm stage on, a quiet relay or a relay stand-in with figures)."""
from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import Future

import pytest

from gateway.adapters.admin_http import AdminServer
from gateway.app import admin_routes
from gateway.app.admin_routes import AdminRoutes
from gateway.app.metrics import render_metrics
from gateway_harness import QuietRelay, RunningGateway, line_config, wait_until
from test_admin_http import SAMPLE_STATUS, parse_prometheus, value_of

try:  # the field's parser, when installed; the strict parse_prometheus always runs too
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    text_string_to_metric_families = None


def get(port: int, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scrape(port: int) -> tuple[dict, list]:
    code, body = get(port, "/metrics")
    assert code == 200
    text = body.decode()
    if text_string_to_metric_families is not None:
        assert {f.name for f in text_string_to_metric_families(text)}
    return parse_prometheus(text)


class FigureRelay(QuietRelay):
    """A relay stand-in reporting what a RelaySupervisor reports (``pid`` None: no child running)."""
    stats_doc = {"produced": 7, "delivered": 5, "failed": 2, "republished": 1, "pending": 3, "in_flight": 2,
                 "restarts": 1, "pid": 4321}

    def stats(self) -> dict:
        return dict(self.stats_doc)


class DeadRelay(FigureRelay):
    stats_doc = {**FigureRelay.stats_doc, "pid": None}


@pytest.fixture
def cfg(tmp_path):
    return line_config(state_dir=str(tmp_path))


def _journaled(gw) -> dict:
    """The alarm stage's engine status once the start-up's DEVICE_COMM_LOST alarms are journaled."""
    wait_until(lambda: gw.alarms.status()["engine"].get("event_seq", 0) >= 4, 10, "start-up alarms journaled")
    wait_until(lambda: gw.alarms.status()["writers"]["history"]["lag_events"] == 0, 10, "history written")
    return gw.alarms.status()


# -- /metrics ------------------------------------------------------------------------------------
def test_alarm_engine_and_journal_families_match_the_alarm_thread(cfg):
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        st = _journaled(gw)
        families, samples = scrape(gw.ports["admin"])
    engine, service = st["engine"], st["engine"]["service"]
    assert value_of(samples, "railgate_alarm_engine_answered") == 1
    for state, n in engine["by_state"].items():
        assert value_of(samples, "railgate_alarms", state=state) == n
    assert engine["by_severity"] == {"critical": {"UNACK": 4}}  # four devices never connected
    assert value_of(samples, "railgate_alarms_active", severity="critical", state="UNACK") == 4
    assert value_of(samples, "railgate_alarm_event_seq") == engine["event_seq"] >= 4
    assert value_of(samples, "railgate_alarm_events_total") == engine["events"]
    assert value_of(samples, "railgate_alarm_flood") == 0 and value_of(samples, "railgate_alarms_chattering") == 0
    assert value_of(samples, "railgate_alarms_max") == engine["max_active"]
    assert value_of(samples, "railgate_alarm_inputs_refused_total") == 0
    assert value_of(samples, "railgate_alarm_evicted_total") == 0
    assert value_of(samples, "railgate_journal_events_total") == service["events"] >= 4
    assert value_of(samples, "railgate_journal_appends_total") >= 1
    assert value_of(samples, "railgate_journal_append_retries_total") == 0
    assert 0 < value_of(samples, "railgate_journal_last_append_seconds") < 5
    assert value_of(samples, "railgate_alarm_writer_written_total", writer="history") >= 4
    assert value_of(samples, "railgate_alarm_writer_lag_events", writer="history") == 0
    assert value_of(samples, "railgate_alarm_writer_failures_total", writer="history") == 0
    assert value_of(samples, "railgate_alarm_writer_up", writer="history") == 1
    assert families["railgate_alarms"]["type"] == "gauge"
    assert families["railgate_alarm_events_total"]["type"] == "counter"


def test_relay_families_carry_the_relay_figures(cfg):
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=FigureRelay) as gw:
        _, samples = scrape(gw.ports["admin"])
    want = {"railgate_relay_produced_total": 7, "railgate_relay_delivered_total": 5,
            "railgate_relay_failed_total": 2, "railgate_relay_republished_total": 1,
            "railgate_relay_backlog_events": 3, "railgate_relay_in_flight_events": 2,
            "railgate_relay_restarts_total": 1, "railgate_relay_up": 1}
    assert {name: value_of(samples, name) for name in want} == want


def test_a_stopped_alarm_thread_leaves_the_rest_of_the_metrics(cfg):
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        gw.alarms.service.stop()
        _, samples = scrape(gw.ports["admin"])
    assert value_of(samples, "railgate_alarm_engine_answered") == 0
    assert not [s for s in samples if s[0] in ("railgate_alarms", "railgate_alarm_event_seq")]
    assert value_of(samples, "railgate_uptime_seconds") > 0
    assert value_of(samples, "railgate_relay_delivered_total") == 0  # relay figures need no alarm thread


def test_coupling_admin_and_process_families(cfg):
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        port = gw.ports["admin"]
        assert get(port, "/alarms/action", "POST")[0] == 401
        _, samples = scrape(port)
        coupling = gw.status()["coupling"]
    assert value_of(samples, "railgate_coupling_evaluations_total") == coupling["evaluations"]
    assert value_of(samples, "railgate_coupling_worker_queue_depth", worker=0) == 0
    assert value_of(samples, "railgate_coupling_worker_dropped_total", worker=0) == 0
    assert value_of(samples, "railgate_coupling_conditions_raised_total", condition="COUPLING_TIMEOUT") == 0
    assert value_of(samples, "railgate_coupling_abnormal_evaluations_total", kind="mismatch") == 0
    assert value_of(samples, "railgate_admin_unauthorized_total") == 1
    assert value_of(samples, "railgate_admin_connections") >= 1
    assert value_of(samples, "railgate_admin_timed_out_total") == 0
    assert value_of(samples, "railgate_admin_refused_total") == 0
    assert value_of(samples, "process_open_fds") > 3
    assert value_of(samples, "process_max_fds") >= value_of(samples, "process_open_fds")
    assert value_of(samples, "process_resident_memory_bytes") > 1_000_000
    assert value_of(samples, "process_cpu_seconds_total") > 0
    assert time.time() - 86400 < value_of(samples, "process_start_time_seconds") <= time.time()
    assert value_of(samples, "railgate_threads") >= 4


def test_pipeline_figures_from_a_status_document_flood_chatter_and_errors():
    doc = {**SAMPLE_STATUS,
           "alarms": {"engine": {"by_state": {"UNACK": 2, "ACKED": 1}, "chattering": 1, "flood": True,
                                 "event_seq": 99, "evicted": 3, "suppressed_chatter": 4, "groups": 2,
                                 "over_bound": 1, "grouped": 7,
                                 "areas": {"north": {"flood": True, "new_alarms_in_window": 12, "alarms": 5,
                                                     "chattering": 2, "shelved": 3}},
                                 "by_severity": {"major": {"UNACK": 2}, "minor": {"ACKED": 1}},
                                 "service": {"dropped_queue_full": 5, "append_retries": 6, "last_append_ms": 2.5,
                                             "sampled_away": {"threat_sample": 9}}},
                      "relay": {"alive": False}, "writers": {"live": {"state": "backoff", "lag_events": 8}},
                      "retention": {"journal_bytes": 4096, "history_bytes": 8192, "deleted": 11,
                                    "history_deleted": 12}}}
    _, samples = parse_prometheus(render_metrics(doc))
    assert value_of(samples, "railgate_alarm_flood") == 1 and value_of(samples, "railgate_alarms_chattering") == 1
    assert value_of(samples, "railgate_alarms_active", severity="major", state="UNACK") == 2
    assert value_of(samples, "railgate_alarm_evicted_total") == 3
    assert value_of(samples, "railgate_journal_disk_bytes") == 4096
    assert value_of(samples, "railgate_history_disk_bytes") == 8192
    assert value_of(samples, "railgate_journal_pruned_total") == 11
    assert value_of(samples, "railgate_history_pruned_total") == 12
    assert value_of(samples, "railgate_alarm_grouped_total") == 7 and value_of(samples, "railgate_alarm_groups") == 2
    assert value_of(samples, "railgate_alarms_over_bound") == 1
    assert value_of(samples, "railgate_alarm_area_flood", area="north") == 1
    assert value_of(samples, "railgate_alarm_area_new", area="north") == 12
    assert value_of(samples, "railgate_alarm_area_chattering", area="north") == 2
    assert value_of(samples, "railgate_alarm_area_shelved", area="north") == 3
    assert value_of(samples, "railgate_alarm_inputs_sampled_away_total", kind="threat_sample") == 9
    assert value_of(samples, "railgate_alarm_suppressed_chatter_total") == 4
    assert value_of(samples, "railgate_alarm_inputs_refused_total") == 5
    assert value_of(samples, "railgate_journal_append_retries_total") == 6
    assert value_of(samples, "railgate_journal_last_append_seconds") == 0.0025
    assert value_of(samples, "railgate_relay_up") == 0
    assert value_of(samples, "railgate_alarm_writer_up", writer="live") == 0
    assert value_of(samples, "railgate_alarm_writer_lag_events", writer="live") == 8


def test_without_the_alarm_stage_the_families_are_there_without_samples():
    families, samples = parse_prometheus(render_metrics(SAMPLE_STATUS))
    for name in ("railgate_alarms", "railgate_alarm_engine_answered", "railgate_relay_delivered_total",
                 "railgate_alarm_writer_lag_events", "railgate_coupling_worker_queue_depth",
                 "process_resident_memory_bytes", "railgate_admin_unauthorized_total"):
        assert name in families and not [s for s in samples if s[0] == name], name


# -- /healthz and /readyz --------------------------------------------------------------------------
def test_healthz_and_readyz_of_a_running_gateway(cfg):
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        port = gw.ports["admin"]
        assert get(port, "/healthz") == (200, b'{"live":true}')
        assert get(port, "/readyz") == (200, b'{"ready":true}')
        assert get(port, "/healthz", "HEAD")[0] == 200


def test_readyz_names_the_journal_when_the_alarm_service_is_stopped(cfg):
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        gw.alarms.service.stop()
        code, body = get(gw.ports["admin"], "/readyz")
        assert get(gw.ports["admin"], "/healthz")[0] == 200  # live: only readiness is lost
    doc = json.loads(body)
    assert code == 503 and doc["ready"] is False and list(doc["not_ready"]) == ["journal"]
    assert "stopped" in doc["not_ready"]["journal"]


def test_readyz_names_the_journal_when_the_alarm_thread_does_not_answer(cfg):
    """A failing append retries in the alarm thread, which then answers nothing: the same as busy."""
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        gw.alarms.service.call(lambda engine: time.sleep(admin_routes.ALARM_WAIT_S * 3))
        code, body = get(gw.ports["admin"], "/readyz")
    assert code == 503 and "no answer within" in json.loads(body)["not_ready"]["journal"]


def test_readyz_names_a_dead_relay(cfg):
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=DeadRelay) as gw:
        code, body = get(gw.ports["admin"], "/readyz")
    assert code == 503 and list(json.loads(body)["not_ready"]) == ["relay"]


def test_readyz_names_a_listener_that_stopped_listening(cfg):
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        port, done = gw.ports["admin"], Future()
        gw.base.run_in_loop(lambda: (gw.acceptors[1].stop(), done.set_result(None)))
        done.result(5)
        code, body = get(port, "/readyz")
    assert code == 503 and list(json.loads(body)["not_ready"]) == ["listener_b"]


def test_healthz_is_503_while_the_base_loop_is_stuck(cfg, monkeypatch):
    monkeypatch.setattr(admin_routes, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(admin_routes, "STALE_S", 0.5)
    with RunningGateway(cfg, admin=True, alarms=False) as gw:
        port = gw.ports["admin"]
        wait_until(lambda: get(port, "/healthz")[0] == 200, 5, "live")
        gw.base.queue_in_loop(time.sleep, 1.5)  # the base loop does nothing else meanwhile
        time.sleep(0.8)
        code, body = get(port, "/healthz")
        assert code == 503 and "base loop" in json.loads(body)["why"]
        code, body = get(port, "/readyz")
        assert code == 503 and "base_loop" in json.loads(body)["not_ready"]
        wait_until(lambda: get(port, "/healthz")[0] == 200, 5, "live again")


def test_health_routes_need_no_token_and_answer_without_probes():
    srv = AdminServer(routes=AdminRoutes(lambda: SAMPLE_STATUS, token="t" * 40).table())
    srv.start()
    try:
        assert get(srv.port, "/healthz") == (200, b'{"live":true}')
        assert get(srv.port, "/readyz") == (200, b'{"ready":true}')
    finally:
        srv.stop()


def test_the_dashboard_charts_the_alarm_pipeline_and_the_process():
    import pathlib
    dashboard = json.loads((pathlib.Path(__file__).parent.parent / "deploy" / "grafana-railgate.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", ()))
    for name in ("railgate_alarms_active", "railgate_alarm_flood", "railgate_relay_backlog_events",
                 "railgate_relay_delivered_total", "railgate_relay_up", "railgate_alarm_writer_lag_events",
                 "railgate_journal_append_retries_total", "railgate_coupling_worker_queue_depth",
                 "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert name in exprs, name
    assert "sum by (severity) (railgate_alarms_active" in exprs
