"""The Kafka relay in its own supervised child process, so a librdkafka crash cannot take the gateway down.

librdkafka 2.16 has segfaulted around a broker restart (rdk:main thread,
``rd_kafka_metadata_update_op -> rd_kafka_metadata_cache_find -> strcmp``). In
a thread of the gateway that would kill the device links and trains with it;
in a child it costs a restart. The journal (SQLite WAL, safe across processes)
is the only hand-over: the child reads ``pending`` rows and marks them
delivered, so a child that dies loses nothing: the next one sends what was not
acknowledged (at least once; consumers dedupe by ``event_id``).

::

    gateway process                                    relay child (python -m alarms.kafka.relay_process)
    ┌──────────────────────────────┐   wake pipe     ┌───────────────────────────────────────┐
    │ alarm thread: wake() ─ 1 byte ├──────────────▶ │ stdin   main thread: select → wake()  │
    │ supervisor thread:           │   stats lines   │ stdout  KafkaRelay thread             │
    │   spawn, read stats, restart ◀───────────────── │         (own Journal, own snapshots)  │
    └──────────────────────────────┘   JSON, 2/s     │ stderr → <state_dir>/kafka-relay.log  │
                                                     └───────────────────────────────────────┘

* The wake pipe lives as long as the supervisor and is every child's stdin, so
  a wake never blocks and is never lost across a restart (a full pipe already
  means "wake up"; the byte is dropped). EOF on it means the gateway is gone.
* The child's stdout carries one JSON line of relay stats per
  ``stats_interval_s`` and a last one at a graceful exit; EOF tells the
  supervisor the child has gone.
* Snapshots are built in the child from the journal's ``latest`` table
  (:func:`alarms.live.live_table.journal_snapshot`), so no callable crosses the
  process boundary.
* Orphans: the child asks for ``PR_SET_PDEATHSIG`` = SIGKILL as its first act
  and exits if its parent is already gone. The signal follows the *thread* that
  started the child: the supervisor thread, which outlives every child it
  starts. No ``preexec_fn``: running Python between fork and exec is unsafe
  while the gateway has other threads.

:class:`ChildSupervisor` is the generic part (spawn, read lines, restart with a
bounded back-off); :class:`RelaySupervisor` adds the wake pipe and the stats.

Threading: ``start`` and ``stop`` from the owner thread; ``wake``, ``stats``,
``pid`` from any thread; the line callback runs in the supervisor thread.
"""
from __future__ import annotations

import argparse
import ctypes
import faulthandler
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("alarms.kafka.relay_process")

_PR_GET_PDEATHSIG = 2
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def exit_text(code: int | None) -> str:
    """``"SIGSEGV"`` for a child killed by a signal (Popen's negative code), ``"exit 3"`` otherwise."""
    if code is None:
        return "running"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


class ChildSupervisor:
    """Keeps ``argv`` running as a child process; restarts it when it dies without being asked to.

    ``on_line(generation, line)`` gets every line the child writes to stdout (supervisor thread);
    ``generation`` counts the children started, from 1. stderr is appended to ``log_path``. ``stdin``
    is an fd the child gets as its stdin (default: /dev/null). ``restart_argv`` is appended to the
    command of every child after the first. Restarts wait ``backoff_s[0]``,
    doubling up to ``backoff_s[1]``; a child that ran ``stable_s`` resets the back-off.
    """

    def __init__(self, name: str, argv: Sequence[str], *, log_path: str,
                 on_line: Callable[[int, str], None] | None = None, stdin: int | None = None,
                 restart_argv: Sequence[str] = (), env: dict | None = None,
                 backoff_s: tuple[float, float] = (0.5, 10.0), stable_s: float = 30.0) -> None:
        self.name, self.argv, self.restart_argv, self.log_path = name, list(argv), list(restart_argv), log_path
        self.on_line, self._stdin, self.backoff_s, self.stable_s = on_line, stdin, backoff_s, stable_s
        path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        self._env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ctl_r, self._ctl_w = os.pipe()        # stop() wakes the supervisor thread's select
        self._stop_timeout_s = 10.0
        self.generation = 0
        self.restarts = 0
        self.last_exit: str | None = None

    # -- owner / any thread -----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The running child's pid, None between children. Any thread."""
        with self._lock:
            p = self._proc
        return p.pid if p is not None and p.returncode is None else None

    def start(self) -> "ChildSupervisor":
        """Start the supervisor thread (it starts the child). Owner thread."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        self._thread = threading.Thread(target=self._supervise, name=f"{self.name}-supervisor", daemon=True)
        self._thread.start()
        return self

    def wait_running(self, timeout_s: float) -> int:
        """Wait until a child runs; returns its pid (tests, status). Any thread."""
        deadline = time.monotonic() + timeout_s
        while (pid := self.pid) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no child running after {timeout_s} s")
            time.sleep(0.01)
        return pid

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the child, SIGKILL it if still there after ``timeout_s``, join. Idempotent. Owner thread."""
        self._stop_timeout_s = timeout_s
        self._stopping.set()
        _write_byte(self._ctl_w)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for fd in (self._ctl_r, self._ctl_w):
            _close(fd)
        self._ctl_r = self._ctl_w = -1

    # -- supervisor thread ------------------------------------------------------------------------
    def _supervise(self) -> None:
        delay = self.backoff_s[0]
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                code = self._run_one()
            except OSError as exc:          # cannot spawn (fd limit, exec failure): retry like a crash
                log.error("%s: cannot start the child: %s", self.name, exc)
                code = None
            if self._stopping.is_set():
                break
            self.restarts += 1
            delay = self.backoff_s[0] if time.monotonic() - started > self.stable_s else delay
            log.warning("%s died of %s, restart %d in %.1f s (log %s)", self.name, exit_text(code), self.restarts,
                        delay, self.log_path)
            self._stopping.wait(delay)
            delay = min(delay * 2, self.backoff_s[1])

    def _run_one(self) -> int:
        """Start one child, pass its lines on until EOF or stop, reap it; returns its exit code."""
        self.generation += 1
        gen = self.generation
        argv = self.argv + (self.restart_argv if gen > 1 else [])
        with open(self.log_path, "ab") as err:
            err.write(f"=== railgate: {self.name} child {gen} starting: {' '.join(argv)}\n".encode())
            err.flush()
            proc = subprocess.Popen(argv, stdin=self._stdin if self._stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, env=self._env, start_new_session=True,
                                    close_fds=True, bufsize=0)
        with self._lock:
            self._proc = proc
        out, buf = proc.stdout.fileno(), b""
        try:
            while True:
                ready, _, _ = select.select([out, self._ctl_r], [], [])
                if self._ctl_r in ready and self._stopping.is_set():
                    self._terminate(proc)
                    buf = self._lines(gen, buf + _read_all(out))
                    break
                if out in ready:
                    chunk = os.read(out, 65536)
                    if not chunk:
                        break               # the child closed stdout: it is exiting (or gone)
                    buf = self._lines(gen, buf + chunk)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            with self._lock:
                self._proc = None
        self.last_exit = exit_text(code)
        return code

    def _terminate(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s: child %d did not stop within %.1f s: SIGKILL", self.name, proc.pid,
                            self._stop_timeout_s)
                proc.kill()
                proc.wait()

    def _lines(self, gen: int, buf: bytes) -> bytes:
        *lines, rest = buf.split(b"\n")
        for line in lines:
            if line and self.on_line is not None:
                try:
                    self.on_line(gen, line.decode("utf-8", "replace"))
                except Exception:
                    log.exception("%s: line handler failed on %r", self.name, line[:200])
        return rest


def _write_byte(fd: int) -> None:
    try:
        os.write(fd, b"\x01")
    except (BlockingIOError, OSError):
        pass                                # full: a wake is already pending; closed: stopping anyway


def _read_all(fd: int) -> bytes:
    """What is left in the pipe once the child has exited (its last stats line)."""
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


class RelaySupervisor:
    """:class:`~alarms.kafka.relay.KafkaRelay` in a supervised child; the same public surface.

    Takes KafkaRelay's arguments except the two callables: ``snapshot_provider`` (the child reads
    snapshots from the journal; ``snapshots=False`` turns them off) and ``clock_ms`` (the child uses the
    wall clock). ``log_path`` defaults to ``kafka-relay.log`` beside the journal (the state dir).
    """

    def __init__(self, journal_path: str, bootstrap: str, *, topic_prefix: str, tz: str, gateway_id: int,
                 line: str, partitions: int = 3, replication_factor: int = 1, snapshots: bool = True,
                 snapshot_interval_s: float = 10.0, producer_config: dict | None = None,
                 poll_interval_s: float = 0.5, batch: int = 5000, max_in_flight: int = 100_000,
                 topic_check_s: float = 5.0, flush_timeout_s: float = 5.0, log_path: str | None = None,
                 stats_interval_s: float = 0.5, backoff_s: tuple[float, float] = (0.5, 10.0),
                 republish_first: bool = False, **callables) -> None:
        """``republish_first``: the first child also sends today's rows again (a fresh memory broker,
        such as the embedded one started with the gateway, holds none of them)."""
        if callables:
            raise TypeError(f"RelaySupervisor: {', '.join(sorted(callables))} cannot cross into the relay "
                            "process (snapshots are read from the journal there; pass snapshots=False to "
                            "publish none)")
        tz_name = getattr(tz, "key", tz)
        self.flush_timeout_s = flush_timeout_s
        config = {"topic_prefix": topic_prefix, "tz": tz_name, "gateway_id": gateway_id, "line": line,
                  "partitions": partitions, "replication_factor": replication_factor,
                  "snapshot_interval_s": snapshot_interval_s, "producer_config": producer_config or {},
                  "poll_interval_s": poll_interval_s, "batch": batch, "max_in_flight": max_in_flight,
                  "topic_check_s": topic_check_s, "flush_timeout_s": flush_timeout_s}
        self.log_path = log_path or os.path.join(os.path.dirname(os.path.abspath(journal_path)), "kafka-relay.log")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()      # wake() never writes to a closed (maybe reused) fd number
        argv = [sys.executable, "-m", "alarms.kafka.relay_process", "--journal", journal_path, "--bootstrap", bootstrap,
                "--config", json.dumps(config), "--parent-pid", str(os.getpid()),
                "--snapshots", "1" if snapshots else "0", "--stats-interval", str(stats_interval_s)]
        if republish_first:
            argv.append("--republish-today")
        self._stats: dict = {}
        self._stats_lock = threading.Lock()
        # a restarted relay republishes today: its predecessor may have died around a broker restart
        # that lost the day's topic, which a relay that knows no topics yet cannot detect
        self._child = ChildSupervisor("kafka relay", argv, log_path=self.log_path, on_line=self._on_stats,
                                      stdin=self._wake_r, restart_argv=["--republish-today"], backoff_s=backoff_s)

    def start(self) -> "RelaySupervisor":
        """Start the supervisor thread and the first relay child. Owner thread."""
        self._child.start()
        return self

    def wake(self) -> None:
        """New rows were journaled: one byte on the wake pipe; never blocks. Any thread."""
        with self._wake_lock:
            if self._wake_w >= 0:
                _write_byte(self._wake_w)

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful: the child flushes (up to ``flush_timeout_s``) and exits; SIGKILL after ``timeout_s``.
        Owner thread."""
        self._child.stop(timeout_s if timeout_s is not None else self.flush_timeout_s + 10)
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                _close(fd)
            self._wake_r = self._wake_w = -1

    def stats(self) -> dict:
        """The child's last relay stats (counts are the current child's, since its start) plus
        ``restarts``, ``last_exit`` ("SIGSEGV", "exit 0", None) and ``pid``. Any thread."""
        with self._stats_lock:
            st = dict(self._stats)
        st.update(restarts=self._child.restarts, last_exit=self._child.last_exit, pid=self._child.pid)
        return st

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def wait_running(self, timeout_s: float) -> int:
        return self._child.wait_running(timeout_s)

    def _on_stats(self, generation: int, line: str) -> None:
        try:
            st = json.loads(line)
        except ValueError:
            log.warning("kafka relay: not a stats line from the child: %r", line[:200])
            return
        st["generation"] = generation
        with self._stats_lock:
            self._stats = st


# -- the child ----------------------------------------------------------------------------------
class _JournalSnapshots:
    """The relay's snapshot provider in the child: the journal's ``latest`` table, on a Journal of its own
    opened in the thread that calls it first (the relay's snapshot worker)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._journal = None

    def __call__(self) -> tuple[int, list[dict]]:
        from alarms.journal import Journal
        from alarms.live.live_table import journal_snapshot
        if self._journal is None:
            self._journal = Journal(self.path)
        return journal_snapshot(self._journal)


def _pdeathsig() -> int:
    sig = ctypes.c_int(0)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_GET_PDEATHSIG, ctypes.byref(sig))
    except (OSError, AttributeError):
        pass
    return sig.value


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alarms.kafka.relay_process",
                                description="Run the Kafka relay of one journal (started by RelaySupervisor).")
    p.add_argument("--journal", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--config", required=True, help="KafkaRelay keyword arguments as JSON")
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--snapshots", type=int, default=1)
    p.add_argument("--stats-interval", type=float, default=0.5)
    p.add_argument("--republish-today", action="store_true", help="send today's journal rows again first")
    args = p.parse_args(argv)

    from alarms.kafka.broker import _die_with_parent
    _die_with_parent()
    if os.getppid() != args.parent_pid:
        return 2                            # the gateway died before PR_SET_PDEATHSIG took effect
    faulthandler.enable()                   # stderr is the log file: a crash leaves every thread's stack there
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from alarms.kafka.relay import KafkaRelay     # late: librdkafka is loaded in the child only
    provider = _JournalSnapshots(args.journal) if args.snapshots else None
    relay = KafkaRelay(args.journal, args.bootstrap, snapshot_provider=provider,
                       republish_today=args.republish_today, **json.loads(args.config))

    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGTERM, lambda *_: None)     # the wakeup fd does the work
    extra = {"pid": os.getpid(), "pdeathsig": _pdeathsig()}
    relay.start()
    code, reason = 0, "SIGTERM"
    while True:
        ready, _, _ = select.select([0, sig_r], [], [], args.stats_interval)
        if sig_r in ready:
            break
        if 0 in ready:
            if not os.read(0, 4096):
                reason = "the wake pipe closed (gateway gone)"
                break
            relay.wake()
        if not relay.alive:
            code, reason = 3, "the relay thread died (see the traceback above)"
            break
        _emit(relay.stats(), extra)
    log.info("kafka relay child %d: stopping: %s", os.getpid(), reason)
    relay.stop()
    _emit(relay.stats(), extra)
    return code


def _emit(stats: dict, extra: dict) -> None:
    if isinstance(stats.get("last_error"), str):
        stats["last_error"] = stats["last_error"][:500]
    try:
        os.write(1, (json.dumps({**stats, **extra}) + "\n").encode())
    except BrokenPipeError:
        pass                                # the supervisor is gone; PDEATHSIG is on its way


if __name__ == "__main__":
    sys.exit(main())
