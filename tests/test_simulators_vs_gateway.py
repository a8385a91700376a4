"""The simulators against the real gateway: its counters equal what the simulator says it injected.

The gateway runs in a thread (tests/gateway_harness.py) on ephemeral loopback
ports; the simulator runs its asyncio loop in another thread. Sender counters
(per device and per train) and the UDP endpoint's errors outlive the links, so
they are compared after the run. A link's decoder errors live only as long as
the link, so they are read while the links are up: faults are injected in the
first seconds only (``faults_for_s``) and the status is polled meanwhile.
"""
from __future__ import annotations

import json
import select
import threading
import time
from dataclasses import replace

from gateway.app.config import Endpoint
from gateway.cli.status_cmd import main as status_main
from simulators.faults import RATE_FAULTS, FaultPlan, parse_at
from simulators.runner import Options, Simulation

from gateway_harness import RunningGateway, line_config, wait_until
from test_simulators import SimThread

LINK_REASONS = ("bad_sync", "bad_crc", "bad_mac", "missing_mac", "unknown_source", "wrong_destination",
                "bad_payload", "unknown_type", "bad_flags", "bad_version", "oversize")
SENDER_KEYS = ("applied", "duplicates", "stale", "gap")


def at_ports(cfg, ports: dict):
    g = cfg.gateway
    return replace(cfg, gateway=replace(g, net_a=Endpoint("127.0.0.1", ports["A"]),
                                        net_b=Endpoint("127.0.0.1", ports["B"]),
                                        udp=Endpoint("127.0.0.1", ports["udp"])))


def link_errors_while_up(gw, sim_thread: SimThread) -> dict:
    """The highest decoder/source error counts seen per (device, net) while that link was up."""
    seen: dict = {}
    while sim_thread.thread.is_alive():
        for dev in gw.status()["devices"]:
            for link in dev["links"]:
                if link["state"] != "up":
                    continue
                errs = {k: v for k, v in link["errors"].items() if k in LINK_REASONS and v}
                key = (dev["name"], link["net"])
                if sum(errs.values()) >= sum(seen.get(key, {}).values()):
                    seen[key] = errs
        time.sleep(0.02)
    return seen


def wait_processed(gw) -> None:
    """Once the simulator has stopped: every link of it is closed in the gateway (all its bytes were
    read and checked before the EOF), no datagram is waiting, and the UDP loop has finished what it read."""
    wait_until(lambda: not gw.ctx.links and not select.select([gw.udp_sock], [], [], 0)[0],
               what="every simulator link closed and no datagram waiting")
    done = threading.Event()
    gw.udp.loop.queue_in_loop(done.set)   # runs after the handler that read the last datagram
    assert done.wait(5), "UDP loop did not come round"


def test_gateway_counters_equal_the_simulators_expected_counters(capsys):
    cfg = line_config()
    with RunningGateway(cfg, admin=True) as gw:
        plan = FaultPlan(11, dict.fromkeys(RATE_FAULTS, 0.03))
        sim = Simulation(at_ports(cfg, gw.ports), Options(seed=11, duration_s=4.0, heartbeat_ms=250, plan=plan,
                                                          faults_for_s=2.5))
        runner = SimThread(sim).start()
        live_links = link_errors_while_up(gw, runner)
        summary = runner.join()
        wait_processed(gw)
        assert status_main(["--url", f"http://127.0.0.1:{gw.ports['admin']}", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
    expected = summary["expected"]
    injected = summary["injected"]
    assert sum(sum(v.values()) for v in injected.values()) > 30, injected  # the plan really injected faults
    assert set(injected) == set(RATE_FAULTS)

    for dev in status["devices"]:
        want = expected["devices"][dev["name"]]
        assert {k: dev[k] for k in SENDER_KEYS} == {k: want[k] for k in SENDER_KEYS}, dev["name"]
        for link in dev["links"]:
            key = (dev["name"], link["net"])
            assert live_links.get(key, {}) == want["links"].get(link["net"], {}), key
    for train in status["trains"]:
        want = expected["trains"][str(train["id"])]
        assert {k: train[k] for k in SENDER_KEYS} == want, train["id"]
    udp = {k: v for k, v in status["udp"]["errors"].items() if k in LINK_REASONS}
    assert udp == expected["udp"]
    # the endpoint's duplicate/stale counts are the trains' own, summed
    assert status["udp"]["errors"].get("duplicate", 0) == sum(t["duplicates"] for t in expected["trains"].values())


def test_killed_and_silenced_links_reconnect_and_counters_still_match():
    cfg = line_config()
    with RunningGateway(cfg, admin=False) as gw:
        plan = FaultPlan(5, {"drop": 0.05, "duplicate": 0.05},
                         [parse_at(a) for a in ("0.5:kill_link:CI-1:A", "0.5:hb_stop:CI-2:B")])
        sim = Simulation(at_ports(cfg, gw.ports), Options(seed=5, duration_s=4.0, heartbeat_ms=250, plan=plan,
                                                          devices=cfg.devices[:3], trains=()))
        summary = SimThread(sim).start().join()
        wait_processed(gw)
        status = gw.status()
    assert summary["injected"]["kill_link"] == {"CI-1": 1}
    assert summary["injected"]["hb_stop"] == {"CI-2": 1}
    # both came back: a second HELLO on the faulted net
    assert summary["links"]["CI-1"]["A"]["connects"] == 2
    assert summary["links"]["CI-2"]["B"]["connects"] == 2
    assert summary["received"]["CI-2"]["B"]["CLOSE"] >= 1   # the gateway timed the silent link out
    simulated = [dev for dev in status["devices"] if dev["name"] in summary["devices"]]
    assert len(simulated) == 3
    for dev in simulated:
        want = summary["expected"]["devices"][dev["name"]]
        assert {k: dev[k] for k in SENDER_KEYS} == {k: want[k] for k in SENDER_KEYS}, dev["name"]
        assert dev["sessions"] == 1  # the other net stayed up: the reconnect joined the session


def test_replayed_sessions_are_refused_and_touch_no_genuine_link():
    """ICD 1.1: the replay fault plays a recorded session (HELLO, SESSION_CONFIRM, frames) back on a new
    connection. The gateway answers HELLO_ACK with a new nonce; the recording cannot confirm it (CI-1 has
    a key: bad_mac under the new session key, then the confirm timeout; CI-2 has none: bad_session), so
    the gateway closes it with CLOSE 2, applies nothing of it, and the devices' own links stay up."""
    cfg = line_config()
    with RunningGateway(cfg, admin=False) as gw:
        plan = FaultPlan(6, {}, [parse_at(a) for a in ("1.5:replay:CI-1", "1.5:replay:CI-2")])
        sim = Simulation(at_ports(cfg, gw.ports), Options(seed=6, duration_s=4.0, heartbeat_ms=250, plan=plan,
                                                          devices=cfg.devices[:2], trains=()))
        summary = SimThread(sim).start().join()
        wait_processed(gw)
        status = gw.status()
        events = gw.line.events.snapshot(recent=10_000)["events"]
        counters = dict(gw.ctx.counters)
    assert summary["injected"]["replay"] == {"CI-1": 1, "CI-2": 1}
    for name in ("CI-1", "CI-2"):
        replays = {net: v for net, v in summary["links"][name].items() if net.startswith("replay-")}
        assert sum(v.get("replayed", 0) for v in replays.values()) == 1, summary["links"][name]
        assert sum(v.get("closed_by_gateway_2", 0) for v in replays.values()) == 1, summary["links"][name]
        got = {net: v for net, v in summary["received"][name].items() if net.startswith("replay-")}
        assert sum(v.get("HELLO_ACK", 0) for v in got.values()) == 1 and not any(
            v.get("CLOSE", 0) > 1 for v in got.values())
        for net in ("A", "B"):  # the genuine links: one connect each, never lost, never replaced
            assert summary["links"][name][net] == {"connects": 1}, (name, net)
            assert "CLOSE" not in summary["received"][name][net] or summary["received"][name][net]["CLOSE"] == 1
    assert counters.get("confirm_timeouts", 0) >= 1  # CI-1's recording could not even be read as a confirm
    for dev in (d for d in status["devices"] if d["name"] in ("CI-1", "CI-2")):
        want = summary["expected"]["devices"][dev["name"]]
        assert {k: dev[k] for k in SENDER_KEYS} == {k: want[k] for k in SENDER_KEYS}, dev["name"]
        assert dev["sessions"] == 1
    downs = [e for e in events if e["name"] == "LINK_DOWN"]
    assert downs and all("peer sent CLOSE reason 0" in e["detail"] for e in downs), downs  # only at the end
