"""Shared plumbing of the benchmarks: line configs, child processes, CPU and RSS readings.

Every benchmark runs its servers and its load generators as separate
processes on 127.0.0.1 (``bench/servers.py``, ``bench/load.py``), so a
server's CPU time can be read from ``/proc/PID/stat`` without the load
generator's. The bench process itself only orchestrates: it starts the
children, says "go", polls counters over a pipe and reads ``/proc``.

Every wait here is bounded in time; a child that does not answer in time is
killed (by its own pid) and the benchmark reports an error row instead of
hanging ``make bench``.
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import pathlib
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

GATEWAY_ID = 1
STDERR_TAIL = 2000   # characters of a child's stderr kept for its error message
_STATE_DIR: str | None = None
DEVICE_BASE = 1000   # device ids: DEVICE_BASE + i
TRAIN_BASE = 20000   # train ids: TRAIN_BASE + j


def bench_state_dir() -> str:
    """This bench process's gateway state directory: one per run (made on first use, removed at exit), so two
    runs at once (a smoke test beside a full run) never meet on one identity lock or journal."""
    global _STATE_DIR
    if _STATE_DIR is None:
        _STATE_DIR = tempfile.mkdtemp(prefix="railgate-bench-state-")
        atexit.register(shutil.rmtree, _STATE_DIR, True)
    return _STATE_DIR


def handshake(sock: socket.socket, dev: int, net: int, hb_ms: int, version: str = "BENCH-1") -> int:
    """ICD 1.1 link start on a blocking socket, for unsigned bench devices: HELLO with a random
    device nonce, wait for the HELLO_ACK, answer SESSION_CONFIRM. Returns the session nonce (0: refused).
    Bytes the gateway sends after its HELLO_ACK (heartbeats) are read and dropped."""
    from railcodecs import DEVICE_RX_TYPES, Frame, Hello, HelloAck, SessionConfirm, StreamDecoder, encode
    device_nonce = int.from_bytes(os.urandom(8), "big")
    sock.sendall(encode(Hello(1, net, hb_ms, version, device_nonce), src=dev, dst=GATEWAY_ID, seq=0,
                        time_ms=int(time.time() * 1000)))
    dec = StreamDecoder(types=DEVICE_RX_TYPES)
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"device {dev} net {net}: the gateway closed before HELLO_ACK")
        dec.feed(data)
        for ev in dec.events():
            if isinstance(ev, Frame) and isinstance(ev.message, HelloAck):
                nonce = ev.message.session_nonce
                if ev.message.result == HelloAck.OK:
                    sock.sendall(encode(SessionConfirm(device_nonce, nonce), src=dev, dst=GATEWAY_ID, seq=0,
                                        time_ms=int(time.time() * 1000)))
                return nonce


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def line_config(devices: int, trains: int = 0, *, io_threads: int | None = None, heartbeat_ms: int = 500,
                max_age_ms: int = 2000, train_hb_ms: int = 1000, dead_after: int | None = None) -> dict:
    """A line of ``devices`` interlockings (nets A and B, no MAC) and ``trains`` trains, on free ports.

    Each call gets a fresh state directory (journal, history, identity lock) under
    :func:`bench_state_dir`, so no measurement starts on another's state.

    ``io_threads`` None leaves the key out: the gateway runs its shipped default
    (``gateway.app.config``; ``config/*.yaml`` do not override it). ``dead_after``: the gateway's
    ``dead_after_heartbeats`` (None: its default, 3).
    """
    devs = [{"id": DEVICE_BASE + i, "name": f"CI-{i}", "kind": "interlocking", "nets": ["A", "B"], "mac": "off",
             "sections": list(range(100, 110)), "signals": list(range(200, 206)), "switches": [300, 301, 302]}
            for i in range(devices)]
    return {
        "gateway": {"id": GATEWAY_ID, "name": "bench-gw",
                    "listen": {"net_a": {"host": "127.0.0.1", "port": free_port()},
                               "net_b": {"host": "127.0.0.1", "port": free_port()},
                               "udp": {"host": "127.0.0.1", "port": free_port(socket.SOCK_DGRAM)}},
                    "admin": {"host": "127.0.0.1", "port": free_port()},
                    "heartbeat_ms": heartbeat_ms, "max_age_ms": max_age_ms,
                    "max_links": max(4096, 2 * devices + 64), "log": {"level": "WARNING"},
                    # every simulated device connects from this one host; in a station each has an address
                    # of its own, and the default per-source cap (8) is meant for that
                    "pre_session": {"max_connections": max(64, 2 * devices + 64),
                                    "max_connections_per_source": max(8, 2 * devices + 64)},
                    # a state directory of its own: a gateway started on another line's journal restores
                    # that line's alarms (1,000 devices' comm losses after a line-load run) and works
                    # through them in the next module's window (bench/results/udp-rss-state-2026-11-30.txt)
                    "state_dir": tempfile.mkdtemp(prefix="line-", dir=bench_state_dir()),
                    **({} if io_threads is None else {"io_threads": io_threads}),
                    **({} if dead_after is None else {"dead_after_heartbeats": dead_after})},
        "line": {"name": "bench-line", "timezone": "UTC"},
        "devices": devs,
        "trains": {"heartbeat_ms": train_hb_ms, "ids": [TRAIN_BASE + j for j in range(trains)]},
    }


def effective_io_threads(cfg: dict) -> int:
    """The io_threads the gateway runs on the line ``cfg`` (its own default when the key is absent)."""
    from gateway.app import config
    return config.parse(cfg, "bench").gateway.io_threads


def ports(cfg: dict) -> dict:
    listen = cfg["gateway"]["listen"]
    return {"A": listen["net_a"]["port"], "B": listen["net_b"]["port"], "udp": listen["udp"]["port"]}


# -- /proc readings -------------------------------------------------------------------

def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


# -- child processes ---------------------------------------------------------------

class Child:
    """A child speaking JSON lines: it prints ``{"ready": ...}``, then answers one line per command."""

    def __init__(self, script: str, *args: str, name: str = "", ready_timeout: float = 60.0,
                 env: dict | None = None) -> None:
        """``env``: variables added to the child's environment (LD_PRELOAD, RAILGATE_PURE...)."""
        self.name = name or script
        env = dict(os.environ, **(env or {}),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([PY, str(ROOT / "bench" / script), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                     env=env, cwd=str(ROOT))
        self.pid = self.proc.pid
        # stderr is drained all along (its last STDERR_TAIL bytes kept for an error): a child that logs
        # more than a pipe holds (64 KiB; a gateway's warnings when 2,000 links die) must never block on it
        self._stderr_tail: collections.deque = collections.deque(maxlen=STDERR_TAIL)
        self._stderr_reader = threading.Thread(target=self._drain_stderr, name=f"{self.name} stderr", daemon=True)
        self._stderr_reader.start()
        self.ready = self._line(ready_timeout)

    def _drain_stderr(self) -> None:
        try:
            for line in self.proc.stderr:
                self._stderr_tail.extend(line)
        except (OSError, ValueError):  # closed by close()
            pass

    def stderr_tail(self) -> str:
        """The child's last STDERR_TAIL characters of stderr (all of it once it has exited)."""
        if self.proc.poll() is not None:
            self._stderr_reader.join(2)
        return "".join(self._stderr_tail)

    def _line(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s")
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if not r:
                continue
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"{self.name} exited ({code}): {self.stderr_tail()}")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, cmd: str, timeout: float = 30.0) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._line(timeout)

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its pid
            self.proc.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _arg_file(obj: dict) -> str:
    """Parameters go to a child as ``@file`` (a line of 1,000 devices is too long for argv)."""
    fd, path = tempfile.mkstemp(prefix="railgate-bench-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    return "@" + path


def read_arg(arg: str) -> dict:
    """In a child: the parameters given by :func:`_arg_file` (the file is removed once read)."""
    if not arg.startswith("@"):
        return json.loads(arg)
    with open(arg[1:]) as f:
        obj = json.load(f)
    os.unlink(arg[1:])
    return obj


def server(kind: str, cfg: dict, env: dict | None = None, **extra) -> Child:
    """Start ``bench/servers.py KIND`` on the line ``cfg`` (``env``: added to its environment)."""
    return Child("servers.py", kind, _arg_file({"cfg": cfg, **extra}), name=f"server {kind}", env=env)


def load(mode: str, **params) -> Child:
    """Start ``bench/load.py MODE`` (it prepares its bytes, then prints ready and waits for "go")."""
    return Child("load.py", mode, _arg_file(params), name=f"load {mode}", ready_timeout=180.0)


def wait_count(srv: Child, key: str, target: int, timeout: float, poll_s: float = 0.01) -> tuple[int, float]:
    """Poll ``srv``'s counter ``key`` until it reaches ``target`` or ``timeout``; (count, monotonic time)."""
    deadline = time.monotonic() + timeout
    while True:
        n = srv.ask("stats")[key]
        now = time.monotonic()
        if n >= target or now >= deadline:
            return n, now
        time.sleep(poll_s)


def row(name: str, value, unit: str, target: str | None = None, met: bool | None = None, **extra) -> dict:
    out = {"name": name, "value": value, "unit": unit}
    if target is not None:
        out["target"] = target
        out["met"] = met
    out.update(extra)
    return out


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
