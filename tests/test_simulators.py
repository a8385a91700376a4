"""The simulators against a plain capturing listener: what they send decodes, and faults count exactly.

:class:`Capture` is a minimal gateway stand-in on 127.0.0.1 (one thread,
selectors): it accepts net A and net B, answers HELLO with HELLO_ACK, sends
heartbeats, answers CLOSE, and runs everything it receives through
railcodecs' StreamDecoder / decode_datagram and Receiver, keeping every
link's counters (also of links that closed).
"""
from __future__ import annotations

import asyncio
import json
import os
import select
import selectors
import signal
import socket
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace

import pytest
import yaml

from gateway.app.config import Endpoint, parse
from railcodecs import (GATEWAY_RX_TYPES, UDP_TYPES, Close, Command, FrameError, Heartbeat, Hello, HelloAck,
                        MacPolicy, Receiver, SessionConfirm, StreamDecoder, decode_datagram, encode, session_key)
from simulators.cli import main as sim_main
from simulators.consists import ConsistTimeline, parse_scenario
from simulators.faults import RATE_FAULTS, FaultPlan, parse_at
from simulators.runner import Options, Simulation

from gateway_harness import DEMO, ROOT, wait_until

SENDER_KEYS = ("applied", "duplicates", "stale", "gap")
ERROR_KEYS = ("bad_sync", "bad_crc", "bad_mac", "missing_mac", "unknown_source", "wrong_destination",
              "bad_payload", "unknown_type", "bad_flags", "bad_version", "oversize", "bad_size")
HB_S = 0.1


class Capture:
    """A capturing stand-in gateway for the demo line (config ``cfg``), on ephemeral loopback ports."""

    def __init__(self, cfg) -> None:
        self.cfg, self.gw_id = cfg, cfg.gateway.id
        self.receiver = Receiver(self.gw_id, cfg.senders(), max_age_ms=cfg.gateway.max_age_ms,
                                 train_reset_ms=3 * cfg.trains.heartbeat_ms)
        self.mac = MacPolicy(keys={d.id: d.mac_key for d in cfg.devices if d.mac_key and d.mac != "off"},
                             required_srcs=frozenset(d.id for d in cfg.devices if d.mac == "required"))
        self.sel = selectors.DefaultSelector()
        self.listeners = {}
        for net in ("A", "B"):
            s = socket.create_server(("127.0.0.1", 0))
            s.setblocking(False)
            self.listeners[net] = s
            self.sel.register(s, selectors.EVENT_READ, ("accept", net))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.sel.register(self.udp, selectors.EVENT_READ, ("udp", None))
        self.udp_checks = self.receiver.new_link("udp")
        self.links: list[dict] = []          # every link ever: checks, net, sock, decoder, closes seen
        self.frames: list = []               # (net or "udp", Frame) applied or not, in arrival order
        self.command: Command | None = None  # sent to every device link after HELLO when set
        self.passes = 0                      # capture loop iterations completed (wait_settled)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def ports(self) -> dict:
        return {"A": self.listeners["A"].getsockname()[1], "B": self.listeners["B"].getsockname()[1],
                "udp": self.udp.getsockname()[1]}

    def config(self):
        g = self.cfg.gateway
        p = self.ports
        return replace(self.cfg, gateway=replace(g, net_a=Endpoint("127.0.0.1", p["A"]),
                                                 net_b=Endpoint("127.0.0.1", p["B"]),
                                                 udp=Endpoint("127.0.0.1", p["udp"])))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join(5)

    # -- the loop (capture thread) -----------------------------------------------------
    def _run(self) -> None:
        next_hb = time.monotonic() + HB_S
        while not self._stop:
            for key, _ in self.sel.select(0.02):
                what, arg = key.data
                if what == "accept":
                    self._accept(arg)
                elif what == "udp":
                    self._datagrams()
                else:
                    self._read(arg)
            if time.monotonic() >= next_hb:
                next_hb += HB_S
                for link in self.links:
                    if link["up"]:
                        link["hb"] += 1
                        self._send(link, Heartbeat(link["hb"]))
            self.passes += 1

    def _accept(self, net: str) -> None:
        sock, _ = self.listeners[net].accept()
        link = {"net": net, "sock": sock, "checks": self.receiver.new_link(net), "up": False, "hb": 0,
                "decoder": StreamDecoder(types=GATEWAY_RX_TYPES, mac=self.mac), "closes": [], "eof": False,
                "key": None}
        self.links.append(link)
        self.sel.register(sock, selectors.EVENT_READ, ("tcp", link))

    def _send(self, link, message) -> None:
        dev = self.cfg.device(link["checks"].device_id or 0)
        key = link["key"]
        try:
            link["sock"].sendall(encode(message, src=self.gw_id, dst=dev.id if dev else 0, seq=0,
                                        time_ms=int(time.time() * 1000), mac_key=key))
        except OSError:
            link["up"] = False

    def _read(self, link) -> None:
        try:
            data = link["sock"].recv(65536)
        except OSError:
            data = b""
        if data:
            link["decoder"].feed(data)
        now = int(time.time() * 1000)
        checks = link["checks"]
        for ev in link["decoder"].events():
            if isinstance(ev, FrameError):
                checks.count(ev.reason)
                continue
            self.frames.append((link["net"], ev))
            msg = ev.message
            if isinstance(msg, Hello):
                result = self.receiver.hello(checks, ev, now)
                dev = self.cfg.device(ev.src)
                link["key"] = dev.mac_key if result == HelloAck.OK and dev is not None and dev.mac != "off" else None
                nonce = checks.session_nonce = secrets.randbits(63) + 1 if result == HelloAck.OK else 0
                self._send(link, HelloAck(result, msg.heartbeat_ms, now, nonce))
                if link["key"] is not None:  # ICD 1.1: the session key both ways from here on
                    link["key"] = session_key(link["key"], msg.device_nonce, nonce)
                    link["decoder"].set_session_key(link["key"])
            elif isinstance(msg, SessionConfirm):
                link["up"] = self.receiver.confirm(checks, ev, now) is None
                if link["up"] and self.command is not None:
                    self._send(link, self.command)
            elif isinstance(msg, Close):
                link["closes"].append(msg.reason)
                if link["up"]:
                    self._send(link, Close(Close.NORMAL))
                link["up"] = False
            else:
                self.receiver.check(checks, ev, now)
        if not data:
            link["up"], link["eof"] = False, True
            self.sel.unregister(link["sock"])
            link["sock"].close()
            self.receiver.link_closed(checks)

    def _datagrams(self) -> None:
        while True:
            try:
                data = self.udp.recv(2048)
            except BlockingIOError:
                return
            ev = decode_datagram(data, types=UDP_TYPES, mac=self.mac)
            if isinstance(ev, FrameError):
                self.udp_checks.count(ev.reason)
                continue
            self.frames.append(("udp", ev))
            self.receiver.check_datagram(self.udp_checks, ev, int(time.time() * 1000))

    # -- results (after the run) --------------------------------------------------------
    def wait_settled(self, timeout: float = 5.0) -> None:
        """Test thread, once the senders are done: every link has reached EOF and no datagram is
        waiting, then one whole capture pass has run (whatever it had read is processed)."""
        wait_until(lambda: all(link["eof"] for link in self.links) and not select.select([self.udp], [], [], 0)[0],
                   timeout, what="every link at EOF and no datagram waiting")
        after = self.passes + 2
        wait_until(lambda: self.passes >= after, timeout, what="a whole capture pass")

    def link_errors(self) -> dict:
        """Decoder/source errors per (device name, net), summed over every link of that net."""
        out: dict = {}
        for link in self.links:
            if not link["checks"].confirmed:
                continue  # a replayed session: the gateway shows only its devices' confirmed links
            dev = self.cfg.device(link["checks"].device_id or 0)
            errs = Counter({k: v for k, v in link["checks"].errors.items() if k in ERROR_KEYS})
            if dev is not None:
                out.setdefault((dev.name, link["net"]), Counter()).update(errs)
        return {k: dict(v) for k, v in out.items()}

    def sender(self, node_id: int) -> dict:
        return {k: v for k, v in self.receiver.senders[node_id].counters().items() if k in SENDER_KEYS}


def demo_cfg():
    d = json.loads(json.dumps(DEMO))
    d["gateway"]["heartbeat_ms"] = 250
    return parse(d, "demo-test")


class SimThread:
    """Run one Simulation in its own thread and asyncio loop; ``summary`` after join()."""

    def __init__(self, sim: Simulation) -> None:
        self.sim, self.summary, self.error = sim, None, None
        self.thread = threading.Thread(target=self._main, name="simulator", daemon=True)

    def _main(self) -> None:
        try:
            self.summary = asyncio.run(self.sim.run())
        except BaseException as exc:  # re-raised by join()
            self.error = exc

    def start(self) -> "SimThread":
        self.thread.start()
        return self

    def join(self, timeout: float = 20) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "simulator did not stop"
        if self.error:
            raise self.error
        return self.summary


def simulate(cap: Capture, **opts) -> dict:
    summary = SimThread(Simulation(cap.config(), Options(heartbeat_ms=250, **opts))).start().join()
    cap.wait_settled()
    return summary


def assert_counters_match(cap: Capture, summary: dict) -> None:
    expected = summary["expected"]
    for dev in cap.cfg.devices:
        want = expected["devices"][dev.name]
        assert cap.sender(dev.id) == {k: want[k] for k in SENDER_KEYS}, dev.name
        for net in dev.nets:
            assert cap.link_errors().get((dev.name, net), {}) == want["links"].get(net, {}), (dev.name, net)
    for tid in cap.cfg.trains.ids:
        assert cap.sender(tid) == expected["trains"][str(tid)], tid
    assert {k: v for k, v in cap.udp_checks.errors.items() if k in ERROR_KEYS} == expected["udp"]


def test_clean_run_decodes_with_zero_errors_and_answers_commands():
    with Capture(demo_cfg()) as cap:
        cap.command = Command(7, 2, 301, 0, 5)   # switch 301 reverse, to every device link
        summary = simulate(cap, seed=3, duration_s=2.0)
    assert not any(cap.link_errors().values())
    assert not cap.udp_checks.errors
    assert_counters_match(cap, summary)
    # every configured link said HELLO and closed with CLOSE reason 0
    for dev in cap.cfg.devices:
        links = [link for link in cap.links if link["checks"].device_id == dev.id]
        assert sorted(link["net"] for link in links) == sorted(dev.nets)
        assert all(link["closes"] == [0] for link in links)
    # dual-net devices: every status frame on both nets (the second copy is a duplicate); the command
    # result may go out while only the first link is up
    ci1 = summary["expected"]["devices"]["CI-1"]
    assert ci1["applied"] > 3 and ci1["applied"] - 1 <= ci1["duplicates"] <= ci1["applied"]
    for kind in ("TRACK_SECTIONS", "SIGNALS", "SWITCHES"):
        assert summary["sent"]["CI-1"]["A"][kind] == summary["sent"]["CI-1"]["B"][kind] > 1
    # what the summary says was sent is what arrived
    arrived = Counter((net, f.name) for net, f in cap.frames if f.src == 257)
    for net in ("A", "B"):
        for name, n in summary["sent"]["CI-1"][net].items():
            assert arrived[(net, name)] == n, (net, name)
    # the command is answered once (it came on both nets), only by the device that owns switch 301
    results = [f.message for _, f in cap.frames if f.name == "COMMAND_RESULT"]
    seqs = {(f.src, f.seq) for _, f in cap.frames if f.name == "COMMAND_RESULT"}
    assert sorted(src for src, _ in seqs) == [257, 258, 513, 769]
    assert {r.result for r in results if r.command_id == 7} == {0, 1}   # done by CI-1, rejected elsewhere
    statuses = [f.message for _, f in cap.frames if f.name == "TRAIN_STATUS"]
    assert len({s.section_id for s in statuses}) > 1 and all(s.consist_id for s in statuses)


def test_seeded_fault_plan_counts_exactly_what_the_summary_says():
    with Capture(demo_cfg()) as cap:
        plan = FaultPlan(9, dict.fromkeys(RATE_FAULTS, 0.03),
                         [parse_at("0.6:corrupt:CI-1"), parse_at("0.8:garbage:1030"), parse_at("1:kill_link:ZC-1:B")])
        summary = simulate(cap, seed=9, duration_s=2.5, plan=plan)
    injected = summary["injected"]
    assert set(injected) == set(RATE_FAULTS) | {"kill_link"}, injected
    assert injected["corrupt"].get("CI-1", 0) >= 1 and injected["kill_link"] == {"ZC-1": 1}
    assert summary["links"]["ZC-1"]["B"]["connects"] == 2
    assert_counters_match(cap, summary)
    assert sum(summary["expected"]["udp"].values()) > 0


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("received", "timing")}


def test_same_seed_gives_the_same_summary():
    runs = []
    for _ in range(2):
        with Capture(demo_cfg()) as cap:
            runs.append(simulate(cap, seed=21, duration_s=1.5, plan=FaultPlan(21, dict.fromkeys(RATE_FAULTS, 0.04))))
    assert comparable(runs[0]) == comparable(runs[1])
    with Capture(demo_cfg()) as cap:
        other = simulate(cap, seed=22, duration_s=1.5, plan=FaultPlan(22, dict.fromkeys(RATE_FAULTS, 0.04)))
    assert comparable(other)["injected"] != comparable(runs[0])["injected"]


def test_scenario_episode_starts_and_ends_on_time():
    with Capture(demo_cfg()) as cap:
        simulate(cap, seed=1, duration_s=3.5, devices=(), trains=(1029, 1030),
                 scenarios=[parse_scenario("11:double_master@1.5+1")])
    reports = [(f.time_ms, f.src, f.message) for _, f in cap.frames if f.name == "TRAIN_STATUS"]
    t0 = reports[0][0]
    phases = []
    for t, src, s in reports:
        assert s.consist_id == 11
        kind = ("double_master" if (s.coupling, s.role) == (2, 1) and src == 1030 else
                "normal" if (s.coupling, s.role) in ((2, 1), (2, 2), (1, 0)) else "other")
        if src == 1030 and (not phases or phases[-1][0] != kind):
            phases.append((kind, (t - t0) / 1000))
    assert [p[0] for p in phases] == ["normal", "double_master", "normal"]   # one raise, one clear
    assert abs(phases[1][1] - 1.5) < 0.6 and abs(phases[2][1] - 2.5) < 0.6
    peers = {(src, s.peer_train) for _, src, s in reports if s.coupling == 2}
    assert peers == {(1029, 1030), (1030, 1029)}


def test_consist_timeline_phases_and_normal_cycle():
    import random
    report_s = 0.2
    tl = ConsistTimeline(9, (1025, 1026), [parse_scenario("9:mismatch@10+5"), parse_scenario("9:decouple@30+20")],
                         random.Random(1), report_s)
    assert tl.report(1025, 0.0)[:3] == (1, 0, 1026) and tl.report(1026, 2.0)[:3] == (2, 2, 1025)
    assert tl.report(1025, 12.0)[:3] == (2, 1, 1026) and tl.report(1026, 12.0)[:3] == (0, 0, 0)
    assert tl.report(1026, 16.0)[:3] == (2, 2, 1025)
    assert tl.report(1025, 30.5)[:3] == (3, 1, 1026) and tl.report(1025, 40.0)[:3] == (0, 0, 0)
    assert tl.report(1025, 50.5)[:2] == (1, 0) and tl.report(1025, 52.0)[:2] == (2, 1)
    cycling = ConsistTimeline(10, (1027, 1028), [], random.Random(2), report_s)
    seen = [cycling.report(1027, t / 10)[0] for t in range(0, 6000)]
    compact = [c for i, c in enumerate(seen) if i == 0 or seen[i - 1] != c]
    assert compact[:6] == [1, 2, 3, 0, 1, 2]


def write_line(cap: Capture, tmp_path) -> str:
    d = json.loads(json.dumps(DEMO))
    d["gateway"]["listen"] = {net: {"host": "127.0.0.1", "port": cap.ports[k]}
                              for net, k in (("net_a", "A"), ("net_b", "B"), ("udp", "udp"))}
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def test_cli_runs_writes_the_summary_and_prints_it(tmp_path, capsys):
    with Capture(demo_cfg()) as cap:
        out = tmp_path / "summary.json"
        rc = sim_main(["-c", write_line(cap, tmp_path), "--duration", "1", "--seed", "4", "--devices", "CI-1,PSD-1",
                       "--trains", "2", "--rate", "10", "--fault", "drop=0.05", "--summary", str(out)])
    assert rc == 0
    summary = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == summary
    assert summary["devices"] == ["CI-1", "PSD-1"] and summary["trains"] == [1025, 1026]
    assert 10 <= summary["sent"]["1025"]["udp"]["TRAIN_STATUS"] <= 12   # 10 Hz for 1 s, plus the last one


def test_sigterm_stops_cleanly_with_close_0_on_every_link(tmp_path):
    with Capture(demo_cfg()) as cap:
        proc = subprocess.Popen([sys.executable, "-m", "simulators", "-c", write_line(cap, tmp_path), "--trains", "0"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 10
        while sum(link["up"] for link in cap.links) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        cap.wait_settled()
    assert proc.returncode == 0, err
    assert json.loads(out)["devices"] == ["CI-1", "CI-2", "ZC-1", "PSD-1"]
    assert len(cap.links) == 7 and all(link["closes"] == [0] for link in cap.links)


@pytest.mark.parametrize("args, problem", [
    (["--fault", "nope=0.1"], "unknown fault 'nope'"),
    (["--fault", "drop=2"], "rate must be a probability"),
    (["--fault", "drop=0.6", "--fault", "corrupt=0.6"], "add up to 1.2"),
    (["--at", "5:kill_link:CI-1"], "needs the net"),
    (["--at", "5:kill_link:CI-9:A"], "no simulated device or train 'CI-9'"),
    (["--scenario", "99:double_master"], "consist 99 is not in trains.consists"),
    (["--scenario", "11:triple_master"], "unknown kind 'triple_master'"),
    (["--devices", "CI-7"], "no device 'CI-7'"),
    (["--rate", "0"], "--rate"),
    (["--duration", "-1"], "--duration"),
    (["-c", "no/such/line.yaml"], "cannot read"),
])
def test_bad_arguments_exit_2_naming_the_problem(args, problem, capsys):
    line = [] if args[0] == "-c" else ["-c", str(ROOT / "config" / "demo-line.yaml")]
    assert sim_main([*line, *args]) == 2
    assert problem in capsys.readouterr().err
