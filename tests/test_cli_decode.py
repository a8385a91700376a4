"""`gateway decode` reproduces every ICD vector; exit codes 0/1/2; clear usage errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import load_vectors
from gateway.cli.decode_cmd import main

VECTORS = load_vectors()


def run(args, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        import io
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(args)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["name"])
def test_every_vector(vec, capsys):
    expect = vec["expect"]
    args = [vec["hex"]]
    if "size" in expect or expect.get("udp"):
        args.append("--udp")
    if "mac_key_hex" in expect or expect.get("mac"):
        args += ["--mac-key", VECTORS["mac_key_hex"]]
    code, lines, _ = run(args, capsys)
    if expect.get("stream"):
        assert code == 1
        assert [x["type"] for x in lines if "type" in x] == expect["frames"]
        assert sum(1 for x in lines if x.get("error") == "bad_crc") >= expect["errors_at_least"]["bad_crc"]
    elif "error" in expect:
        assert code == 1 and lines[0]["error"] == expect["error"] and lines[0]["offset"] == 0
    else:
        assert code == 0 and len(lines) == 1
        got = lines[0]
        assert got["type"] == expect["type"] and got["fields"] == expect["fields"]
        assert got["mac"] == expect.get("mac", False)
        for key in ("src", "dst", "seq", "time_ms", "size"):
            if key in expect:
                assert got[key] == expect[key]
        assert set(got) >= {"type", "src", "dst", "seq", "time_ms", "mac", "fields"}


def test_stdin_lines_and_input_index(capsys, monkeypatch):
    ok = next(v["hex"] for v in VECTORS["vectors"] if v["name"] == "signals")
    bad = next(v["hex"] for v in VECTORS["vectors"] if v["name"] == "bad_crc")
    code, lines, _ = run([], capsys, stdin=f"# captured on net A\n{ok}\n\n{bad}\n", monkeypatch=monkeypatch)
    assert code == 1
    assert [(x["input"], x.get("type") or x["error"]) for x in lines] == [(0, "SIGNALS"), (1, "bad_crc")]


def test_raw_file(tmp_path, capsys):
    stream = bytes.fromhex(next(v["hex"] for v in VECTORS["vectors"] if v["name"] == "stream_with_noise"))
    path = tmp_path / "capture.bin"
    path.write_bytes(stream)
    code, lines, _ = run(["--raw", str(path)], capsys)
    assert code == 1
    assert lines[0] == {"error": "bad_sync", "offset": 0, "length": 10, "detail": "no sync word"}
    assert [x["type"] for x in lines if "type" in x] == ["TRACK_SECTIONS", "SIGNALS", "SWITCHES"]


def test_mac_shown_unchecked_without_a_key_and_required(capsys):
    signed = next(v["hex"] for v in VECTORS["vectors"] if v["name"] == "signals_with_mac")
    plain = next(v["hex"] for v in VECTORS["vectors"] if v["name"] == "signals")
    code, lines, _ = run([signed], capsys)
    assert code == 0 and lines[0]["mac"] is True
    code, lines, _ = run(["--require-mac", plain], capsys)
    assert code == 1 and lines[0]["error"] == "missing_mac"


@pytest.mark.parametrize("args, message", [
    (["a55g"], "argument 1: not hex: character 'g'"),
    (["a55"], "argument 1: not hex: odd number of digits (3)"),
    (["--mac-key", "xyz", "a55a"], "--mac-key: not hex"),
    (["--raw", "/nonexistent/file"], "--raw /nonexistent/file: No such file or directory"),
    (["--raw", "/dev/null", "a55a"], "not both"),
])
def test_bad_usage_exits_2_with_a_clear_message(args, message, capsys):
    code, lines, err = run(args, capsys)
    assert code == 2 and lines == [] and message in err


def test_console_script_end_to_end():
    """The installed `gateway` command, as an operator runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "gateway")
    hb = next(v["hex"] for v in VECTORS["vectors"] if v["name"] == "heartbeat")
    res = subprocess.run([exe, "decode", hb], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and json.loads(res.stdout)["fields"] == {"counter": 7}
    res = subprocess.run([exe, "decode"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and "no input" in res.stderr
    res = subprocess.run([exe, "frobnicate"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "unknown command 'frobnicate'" in res.stderr
