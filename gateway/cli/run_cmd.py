"""`gateway run` and `gateway stop`: foreground, daemon mode, pid files.

``gateway run -c FILE [--daemon --pidfile FILE] [--log FILE]`` validates the
config first (errors name the key path; exit 2), then runs the gateway. With
``--daemon`` it double-forks, detaches from the terminal, writes the pid file
(refusing to start if it names a live process) and logs to the log file. The
pid file is written whole or not at all (a temporary file in the same
directory, fsynced, then ``os.replace``): a ``gateway stop`` racing the start
finds no file or a complete one, never an empty or half-written one.

The command that started a daemon exits only once the daemon has said how its
start went: the daemon writes one line into a pipe the double fork keeps open
(``up``, or ``error <reason>``) and the command exits 0, or 1 with the reason
on stderr (a daemon that dies without a word: 1, "see the log").

Operator errors are one line on stderr, never a traceback: an invalid config
(exit 2), and with exit 1 a busy or forbidden address ("cannot listen on
127.0.0.1:7001: Address already in use"), a state dir, log file or pid file
that cannot be created, a pid file naming a running gateway, and an identity
another live gateway holds ("another gateway holds this identity: gateway id 1
is held by host:4242 since ..., expires in 8 s unless renewed (redis key
railgate:gateway:1:lease)"; see gateway/app/identity.py).

Logs: one line per record (``gateway.log.format``: text or json) stamped with
ISO-8601 time and the line's UTC offset (``line.timezone``; the host's zone if
the file sets none). SIGUSR1 reopens the log file (logrotate: rename, then
``kill -USR1``).

``gateway stop --pidfile FILE [--timeout S]`` sends SIGTERM (a graceful stop:
links closed with CLOSE reason 0, logs flushed) and waits for the process to
exit; exit 1 if it did not stop in time.

Runs in the main thread of the process.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import select
import signal
import sys
import tempfile
import time
from zoneinfo import ZoneInfo

from gateway.base import async_log
from gateway.app.config import Config, ConfigError, install, load

log = logging.getLogger("railgate.run")

#: how long `gateway run --daemon` waits for the daemon's word (an embedded broker takes a few seconds)
START_TIMEOUT_S = 120.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PidfileError(ValueError):
    """The pid file is missing, empty, unreadable or does not hold a process id; the message says which."""


def read_pidfile(path: str) -> int:
    """The process id in ``path``; PidfileError naming the file and what is wrong with it."""
    try:
        with open(path) as f:
            text = f.read(64).strip()
    except FileNotFoundError:
        raise PidfileError(f"no pid file {path} (is the gateway running with --pidfile {path}?)") from None
    except OSError as exc:
        raise PidfileError(f"cannot read pid file {path}: {exc.strerror}") from None
    if not text:
        raise PidfileError(f"pid file {path} is empty")
    try:
        pid = int(text)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise PidfileError(f"pid file {path} does not hold a process id: {text[:20]!r}")
    return pid


def _pid_in(path: str) -> int | None:
    """``read_pidfile`` for a file that may be missing or stale: None when there is no usable pid."""
    try:
        return read_pidfile(path)
    except PidfileError:
        return None


def write_pidfile(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` atomically: a temporary file in the same directory, fsynced, renamed
    over ``path`` with ``os.replace``, then the directory fsynced (the rename survives a crash)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)                   # mkstemp makes it 0600; a pid file is for every operator
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def private_dir(path: str) -> None:
    """Create ``path`` (and parents) if needed and make it 0700: an existing state dir from an older
    release, created 0755, is tightened too."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def reason(exc: BaseException) -> str:
    """One line saying what went wrong, for an operator: an OSError's own words and the file it names
    (``Not a directory: '/srv/x/state'``), else the exception's type and text."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return async_log.one_line(text)


def _fail(message: str, code: int = 1) -> int:
    print(f"gateway run: {message}", file=sys.stderr)
    return code


def _daemonize(log_file: str) -> int:
    """Detach (double fork, new session, cwd /, stdio on /dev/null). Returns, in the daemon, the write
    end of the start pipe, for :func:`_tell`. The calling process never returns: it waits for the
    daemon's line and exits 0 ("up") or 1 (the reason on stderr)."""
    r, w = os.pipe()                  # O_CLOEXEC: the relay and broker children do not inherit it
    first = os.fork()
    if first > 0:
        os.close(w)
        code = _await_daemon(r, first, log_file)
        sys.stderr.flush()
        os._exit(code)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return w


def _await_daemon(r: int, first_child: int, log_file: str) -> int:
    """The starting command's side of the start pipe: the daemon's one line, or EOF if it died."""
    os.waitpid(first_child, 0)        # it exits as soon as it has forked the daemon
    deadline = time.monotonic() + START_TIMEOUT_S
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return _fail(f"no word from the daemon within {START_TIMEOUT_S:.0f} s; it may still be starting "
                         f"(log {log_file})")
        if select.select([r], [], [], left)[0]:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    if line == "up":
        return 0
    if line.startswith("error "):
        return _fail(line[len("error "):])
    return _fail(f"the daemon exited while starting (log {log_file})")


def _tell(fd: int | None, line: str) -> None:
    """The daemon's word to the command that started it, once; nothing without --daemon."""
    if fd is None:
        return
    try:
        os.write(fd, (async_log.one_line(line) + "\n").encode("utf-8", "replace"))
    except OSError:
        pass                          # that command is gone (killed): nobody to tell
    finally:
        os.close(fd)


def _log_tz(cfg: Config):
    """The log's time zone: the line's (``line.timezone``), or None (the host's) if the file sets none."""
    line = cfg.raw.get("line") if isinstance(cfg.raw, dict) else None
    return ZoneInfo(cfg.timezone) if isinstance(line, dict) and line.get("timezone") else None


def setup_logging(cfg: Config, log_file: str | None) -> async_log.DoubleBufferHandler | None:
    """Root logging for the gateway: one line per record, ``gateway.log.format``, ISO-8601 stamps; to
    ``log_file`` through the async handler (returned; OSError if it cannot be opened), else to stderr.
    SIGUSR1 reopens the file (a no-op without one, rather than the signal's default: death). Main thread."""
    formatter = async_log.LineFormatter(style=cfg.gateway.log_format, tz=_log_tz(cfg))
    handler = None
    if log_file:
        handler = async_log.install(log_file, level=cfg.gateway.log_level, formatter=formatter)
    else:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root = logging.getLogger()
        root.addHandler(stream)
        root.setLevel(cfg.gateway.log_level)
    signal.signal(signal.SIGUSR1, lambda *_: handler.reopen() if handler is not None else None)
    return handler


def run_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gateway run", description="Run the gateway.")
    p.add_argument("-c", "--config", required=True, help="YAML line file (see config/)")
    p.add_argument("--daemon", action="store_true", help="detach and run in the background")
    p.add_argument("--pidfile", help="write the process id here (required with --daemon)")
    p.add_argument("--log", help="log file (default: stderr; with --daemon: <state_dir>/gateway.log)")
    args = p.parse_args(argv)
    if args.daemon and not args.pidfile:
        p.error("--daemon needs --pidfile FILE")
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"gateway run: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    config_path = os.path.abspath(args.config)
    state_dir = os.path.abspath(cfg.gateway.state_dir)
    # The journal, history, logs and the admin token are the control room's record and its key:
    # nothing the gateway creates from here on is readable by other users of the host.
    os.umask(0o077)
    try:
        private_dir(state_dir)
    except OSError as exc:
        return _fail(f"cannot create the state dir {state_dir} (gateway.state_dir): {exc.strerror or reason(exc)}")
    # the daemon changes directory to /: every path it keeps must be absolute by then
    cfg = dataclasses.replace(cfg, gateway=dataclasses.replace(cfg.gateway, state_dir=state_dir))
    log_file = os.path.abspath(args.log) if args.log else (
        os.path.join(state_dir, "gateway.log") if args.daemon else cfg.gateway.log_file)
    if args.pidfile:
        args.pidfile = os.path.abspath(args.pidfile)
        old = _pid_in(args.pidfile)   # missing, empty or garbage: nothing running under it
        if old is not None and _pid_alive(old):
            return _fail(f"{args.pidfile} names a running process ({old}); stop it first")
    install(cfg)
    from gateway.app.identity import IdentityHeld
    from gateway.app.runtime import Gateway  # after the config check: a bad file fails fast
    try:
        gw = Gateway(cfg, own_process=True)   # binds the listeners: a busy port is refused here, before a fork
    except IdentityHeld as exc:       # another live gateway with this state dir, Redis prefix or id
        return _fail(f"another gateway holds this identity: {async_log.one_line(str(exc))}")
    except OSError as exc:
        return _fail(reason(exc))
    told = _daemonize(log_file) if args.daemon else None
    handler = None
    step: str | None = f"cannot write the pid file {args.pidfile}"
    try:
        if args.pidfile:
            write_pidfile(args.pidfile, os.getpid())
        step = f"cannot open the log file {log_file}"
        handler = setup_logging(cfg, log_file)
        step = None
        gw.start(config_path)
    except Exception as exc:          # noqa: BLE001 - whatever stopped the start: one line, exit 1
        operator = isinstance(exc, OSError)
        why = exc.strerror if operator and exc.strerror else reason(exc)
        message = reason(exc) if step is None else f"{step}: {why}"
        if handler is not None or not operator:   # not an operator's error: the traceback goes to the log
            log.error("start failed: %s", message, exc_info=not operator)
        if step is None:
            _wind_down(gw)
        _finish(args.pidfile, handler)
        # last: once `gateway run` has said why, nothing of this gateway runs any more (no pid file either)
        _tell(told, f"error {message}")
        if told is None:
            print(f"gateway run: {message}", file=sys.stderr)
        return 1
    _tell(told, "up")
    try:
        gw.run()
    finally:
        _finish(args.pidfile, handler)
    return 0


def _wind_down(gw) -> None:
    """After a failed start: stop what did start (alarm thread, relay, loops), as a graceful stop would."""
    try:
        gw.stop()
        gw.run()
    except Exception:                 # noqa: BLE001 - the start already failed; exiting matters more
        log.exception("stopping after the failed start")


def _finish(pidfile: str | None, handler) -> None:
    if pidfile and _pid_in(pidfile) == os.getpid():
        os.unlink(pidfile)
    if handler is not None:
        async_log.shutdown()


def stop_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gateway stop", description="Stop a gateway started with --pidfile.")
    p.add_argument("--pidfile", required=True)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a graceful exit")
    args = p.parse_args(argv)
    try:
        pid = read_pidfile(args.pidfile)
    except PidfileError as exc:
        print(f"gateway stop: {exc}", file=sys.stderr)
        return 1
    if not _pid_alive(pid):
        print(f"gateway stop: process {pid} from {args.pidfile} is not running", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return 0
        time.sleep(0.05)
    print(f"gateway stop: process {pid} still running after {args.timeout:.1f} s", file=sys.stderr)
    return 1
