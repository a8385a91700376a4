"""`gateway run` and `gateway stop`: foreground, daemon mode, pid files.

``gateway run -c FILE [--daemon --pidfile FILE] [--log FILE]`` validates the
config first (errors name the key path; exit 2), then runs the gateway. With
``--daemon`` it double-forks, detaches from the terminal, writes the pid file
(refusing to start if it names a live process) and logs to the log file. The
pid file is written whole or not at all (a temporary file in the same
directory, fsynced, then ``os.replace``): a ``gateway stop`` racing the start
finds no file or a complete one, never an empty or half-written one.

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
import signal
import sys
import tempfile
import time

from gateway.base import async_log
from gateway.app.config import ConfigError, install, load


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


def _daemonize(pidfile: str) -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    write_pidfile(pidfile, os.getpid())


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
    private_dir(state_dir)
    # the daemon changes directory to /: every path it keeps must be absolute by then
    cfg = dataclasses.replace(cfg, gateway=dataclasses.replace(cfg.gateway, state_dir=state_dir))
    log_file = os.path.abspath(args.log) if args.log else (
        os.path.join(state_dir, "gateway.log") if args.daemon else cfg.gateway.log_file)
    if args.pidfile:
        args.pidfile = os.path.abspath(args.pidfile)
        old = _pid_in(args.pidfile)   # missing, empty or garbage: nothing running under it
        if old is not None and _pid_alive(old):
            print(f"gateway run: {args.pidfile} names a running process ({old}); stop it first", file=sys.stderr)
            return 1
    install(cfg)
    from gateway.app.runtime import Gateway  # after the config check: a bad file fails fast
    try:
        gw = Gateway(cfg)
    except OSError as exc:
        print(f"gateway run: {exc}", file=sys.stderr)
        return 1
    if args.daemon:
        _daemonize(args.pidfile)
    elif args.pidfile:
        write_pidfile(args.pidfile, os.getpid())
    handler = async_log.install(log_file, level=cfg.gateway.log_level) if log_file else None
    if handler is None:
        logging.basicConfig(level=cfg.gateway.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        gw.start(config_path)
        gw.run()
    finally:
        if args.pidfile and _pid_in(args.pidfile) == os.getpid():
            os.unlink(args.pidfile)
        if handler is not None:
            async_log.shutdown()
    return 0


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
