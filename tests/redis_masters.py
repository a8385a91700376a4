"""Independent Redis masters for tests: real ``redis-server`` processes on free loopback ports.

``redis_masters`` (fixture) starts three, each with no persistence (``--save "" --appendonly no``)
in its own temporary folder, and stops them after the test. A :class:`RedisMaster` can be killed
(SIGKILL: the kernel closes its sockets, as when a host dies), paused (SIGSTOP: connected but
silent, as a hung host) and restarted empty on the same port.
Import the fixture into a test module: ``from redis_masters import redis_masters  # noqa: F401``.

Used from the test's thread only.
"""
from __future__ import annotations

import pathlib
import shutil
import signal
import socket
import subprocess
import time

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisMaster:
    """One ``redis-server`` on 127.0.0.1:``port``; ``url`` for clients."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, port: int | None = None) -> None:
        """Start on ``port`` (default: a free one; another is tried if it was taken meanwhile)."""
        for attempt in range(5):
            self.port = port or free_port()
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log"), "--daemonize", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5) as c:
                        if c.ping():
                            return
                except redis.ConnectionError:
                    time.sleep(0.005)
            self.stop()
            if port is not None:
                time.sleep(0.1)           # the same port again: give the kernel a moment
        log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}:\n{log}")

    def kill(self) -> None:
        """SIGKILL: gone at once, with its data (there is no persistence)."""
        self.stop()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel's backlog) but nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def restart_empty(self) -> None:
        """Kill if running, then a fresh server with no data on the same port."""
        self.stop()
        self.start(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def start_masters(n: int, folder: pathlib.Path) -> list[RedisMaster]:
    masters = []
    try:
        for i in range(n):
            master = RedisMaster(folder / f"master{i}")
            master.start()
            masters.append(master)
    except BaseException:
        for master in masters:
            master.stop()
        raise
    return masters


@pytest.fixture
def redis_masters(tmp_path):
    """Three independent masters (list of RedisMaster), stopped after the test."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed: the Redlock tests need real independent masters")
    masters = start_masters(3, tmp_path / "redis")
    try:
        yield masters
    finally:
        for master in masters:
            master.stop()
