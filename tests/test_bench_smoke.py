"""The benchmarks still produce numbers (``make bench-smoke`` in CI). Never asserts a speed.

Runs ``bench/run.py --smoke`` in a subprocess: every bench module's
``run(smoke=True)`` must return rows with a finite numeric value and a unit,
and every target row must say met or not met. Whether a target is met is
``make bench``'s business, on a quiet machine, not this test's.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_benchmark_produces_numbers(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert {"tcp_ingest", "line_load", "udp", "liveness", "scaling", "micro"} <= set(result["modules"])
    for name, mod in result["modules"].items():
        assert not mod.get("error"), f"{name}: {mod['error']}"
        assert mod["rows"], name
        for row in mod["rows"]:
            assert isinstance(row["value"], (int, float)) and not isinstance(row["value"], bool), row
            assert row["unit"], row
            if "target" in row:
                assert isinstance(row["met"], bool), row
    assert result["meta"]["python"] and result["meta"]["cpus"]


def test_a_child_that_floods_stderr_still_answers(tmp_path):
    """bench.common.Child drains its child's stderr all along: a gateway that logs more than a pipe holds
    (its warnings when 2,000 links die) blocked on the write and the line-load bench timed out."""
    from bench.common import Child
    script = tmp_path / "chatty.py"
    script.write_text("import sys, json\n"
                      "sys.stderr.write('w' * 1_000_000 + '\\nlast words\\n')\n"
                      "print(json.dumps({'ready': True}), flush=True)\n"
                      "for line in sys.stdin:\n"
                      "    print(json.dumps({'echo': line.strip()}), flush=True)\n"
                      "    if line.strip() == 'quit':\n"
                      "        sys.exit(3)\n")
    child = Child(str(script), name="chatty", ready_timeout=20)
    assert child.ready == {"ready": True}
    assert child.ask("hello", timeout=10) == {"echo": "hello"}
    child.proc.stdin.write("quit\n")
    child.proc.stdin.flush()
    assert child.proc.wait(10) == 3
    assert child.stderr_tail().endswith("last words\n") and len(child.stderr_tail()) <= 2000


def test_each_bench_line_gets_a_state_directory_of_its_own():
    """A gateway started on another measurement's journal restores its alarms and works through them in
    the next window (bench/results/udp-rss-state-2026-11-30.txt): every line config has its own state
    directory, under the bench process's one (removed at exit)."""
    sys.path.insert(0, str(ROOT))
    from bench.common import bench_state_dir, line_config
    a, b = line_config(1)["gateway"]["state_dir"], line_config(1)["gateway"]["state_dir"]
    assert a != b
    for d in (a, b):
        assert pathlib.Path(d).is_dir() and pathlib.Path(d).parent == pathlib.Path(bench_state_dir())


def test_a_bursts_parts_are_the_one_piece_stream_cut_at_frame_boundaries():
    """``tcp_bursts`` sends a device's stream in parts, one per burst (bench/scaling_bench.py): one
    after the other they must be byte for byte the stream ``tcp_blast`` sends in one piece (the
    same seqs, the same numbered HEARTBEATs), so the gateways judge and apply the same frames."""
    sys.path.insert(0, str(ROOT))
    from bench.load import device_stream
    whole = device_stream(1001, 600, 50, 1_700_000_000_000)
    parts = [device_stream(1001, 100, 50, 1_700_000_000_000, first=1 + j * 100) for j in range(6)]
    assert b"".join(parts) == whole


@pytest.mark.slow
def _sends_only_between_resume_and_pause(count, ld, sending_s: float, at_least: int, what: str) -> None:
    """``ld`` (a load in turns) adds nothing to ``count()`` before its first resume or after its pause, and at
    least ``at_least`` in ``sending_s`` between them."""
    import time
    time.sleep(0.5)
    before = count()
    time.sleep(0.5)
    assert count() == before, f"the {what} sent before its first resume"
    ld.ask("resume")
    time.sleep(sending_s)
    ld.ask("pause")
    time.sleep(0.2)              # what was in flight at the pause is counted
    paused = count()
    assert paused - before >= at_least, f"only {paused - before} in {sending_s} s of sending"
    time.sleep(0.5)
    assert count() == paused, f"the {what} went on sending after pause"


def test_a_line_load_in_turns_sends_nothing_while_paused():
    """The line-load ratio compares the gateway and uvloop in turns (bench/line_load_bench.py in_turns):
    a server's load must send only between ``resume`` and ``pause``, or the other's window would carry
    this one's work. A real gateway counts what arrives."""
    sys.path.insert(0, str(ROOT))
    from bench.common import line_config, load, ports, raise_nofile, server
    raise_nofile()
    cfg = line_config(4, 2, max_age_ms=600_000, heartbeat_ms=500, dead_after=20)
    with server("gateway", cfg) as srv, load("line", ports=ports(cfg), devices=4, trains=2, seconds=30,
                                             turns=True, max_s=60) as ld:
        def count():
            s = srv.ask("stats")
            return s["frames"] + s["datagrams"]
        _sends_only_between_resume_and_pause(count, ld, 0.6, 40, "load")


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_a_udp_blast_in_turns_sends_nothing_while_paused(native):
    """The UDP ratio compares the gateway and the bare loop in turns (bench/udp_bench.py in_turns): a
    sender (the Python one, or the C one the module uses) must blast only between ``resume`` and
    ``pause``. The bare loop counts what arrives."""
    sys.path.insert(0, str(ROOT))
    from bench.common import line_config, load, ports, raise_nofile, server
    raise_nofile()
    cfg = line_config(0, 20, train_hb_ms=10_000)
    with server("bare_udp", cfg) as srv, load("udp_blast", port=ports(cfg)["udp"], trains=20, turns=True,
                                              native=native, max_s=60) as ld:
        _sends_only_between_resume_and_pause(lambda: srv.ask("stats")["datagrams"], ld, 0.3, 1000, "sender")


def test_the_native_udp_senders_datagrams_pass_every_check_of_the_gateway():
    """The C sender (bench/udp_blaster.c) patches seq, time and CRC itself: the gateway must accept its
    datagrams as it does the Python sender's (every train applied, no datagram refused), or the UDP row
    would compare the bare loop's count with the gateway's refusals."""
    sys.path.insert(0, str(ROOT))
    import time
    from bench.common import line_config, load, ports, raise_nofile, server
    raise_nofile()
    cfg = line_config(0, 20, train_hb_ms=10_000)
    with server("gateway", cfg) as srv, load("udp_blast", port=ports(cfg)["udp"], trains=20, turns=True,
                                             native=True, max_s=60) as ld:
        ld.ask("resume")
        time.sleep(0.3)
        ld.ask("pause")
        time.sleep(0.2)
        st = srv.ask("stats")
    assert st["datagrams"] >= 1000 and st["trains"] == 20
    assert not {k: v for k, v in st["udp_errors"].items() if k != "gap"}, st["udp_errors"]
