"""`gateway decode` reproduces every ICD vector; exit codes 0/1/2; clear usage errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import load_vectors
from gateway.cli.decode_cmd import main
from railcodecs import Hello, encode

VECTORS = load_vectors()


def run(args, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        import io
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(args)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def session_nonces() -> str:
    """``DEVICE_NONCE:SESSION_NONCE`` of the hello / hello_ack vectors (the session of the session vectors)."""
    by_name = {v["name"]: v["expect"]["fields"] for v in VECTORS["vectors"] if v["name"] in ("hello", "hello_ack")}
    return f"{by_name['hello']['device_nonce']:016x}:{by_name['hello_ack']['session_nonce']:x}"


SESSION_WAYS = {"link key and nonces": lambda: ["--mac-key", VECTORS["mac_key_hex"], "--session", session_nonces()],
                "session key": lambda: ["--session-key", VECTORS["session_key_hex"]]}


@pytest.mark.parametrize("way", SESSION_WAYS)
@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["name"])
def test_every_vector(vec, way, capsys):
    expect = vec["expect"]
    args = [vec["hex"]]
    if "size" in expect or expect.get("udp"):
        args.append("--udp")
    if expect.get("mac_key_hex", VECTORS["mac_key_hex"]) == VECTORS["session_key_hex"]:
        args += SESSION_WAYS[way]()  # a frame after HELLO_ACK: its MAC is made with the session key
    elif "mac_key_hex" in expect or expect.get("mac"):
        args += ["--mac-key", expect.get("mac_key_hex", VECTORS["mac_key_hex"])]
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


def test_session_frames_need_their_session_key(capsys):
    """The link key alone finds a session frame bad_mac; the session options verify it, and a HELLO still
    with the link key; a wrong session is bad_mac."""
    confirm = next(v["hex"] for v in VECTORS["vectors"] if v["name"] == "session_confirm_with_mac")
    code, lines, _ = run(["--mac-key", VECTORS["mac_key_hex"], confirm], capsys)
    assert code == 1 and lines[0]["error"] == "bad_mac"
    code, lines, _ = run(["--mac-key", VECTORS["mac_key_hex"], "--session", "0x123456789abcdef:1", confirm], capsys)
    assert code == 1 and lines[0]["error"] == "bad_mac"
    signed_hello = encode(Hello(1, 0, 500, "X", 5), src=257, dst=1, seq=0, time_ms=1,
                          mac_key=bytes.fromhex(VECTORS["mac_key_hex"])).hex()
    code, lines, _ = run(["--mac-key", VECTORS["mac_key_hex"], "--session", session_nonces(), signed_hello + confirm],
                         capsys)
    assert code == 0 and [x["type"] for x in lines] == ["HELLO", "SESSION_CONFIRM"]


@pytest.mark.parametrize("args, message", [
    (["--session", "1:2", "a55a"], "--session needs --mac-key"),
    (["--mac-key", "00" * 32, "--session", "12", "a55a"], "expected DEVICE_NONCE:SESSION_NONCE"),
    (["--mac-key", "00" * 32, "--session", "1:1ffffffffffffffff", "a55a"],
     "session nonce '1ffffffffffffffff' is not hex"),
    (["--session-key", "00", "--session", "1:2", "a55a"], "not both"),
])
def test_session_usage_errors(args, message, capsys):
    code, _, err = run(args, capsys)
    assert code == 2 and message in err


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
