"""DoubleBufferHandler: no loss, per-thread order, flush/close semantics, bounded backlog; LineFormatter's
one-line ISO-8601 records (text and JSON); reopening the file after a rename (logrotate, SIGUSR1)."""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import tracemalloc
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.base.async_log import DoubleBufferHandler, LineFormatter, install, iso_time, shutdown

_names = itertools.count()


@pytest.fixture
def attach():
    """Attach a handler to a fresh non-propagating logger; detach and close at the end."""
    made = []

    def _attach(handler: DoubleBufferHandler, fmt: str = "%(message)s") -> logging.Logger:
        handler.setFormatter(logging.Formatter(fmt))
        log = logging.getLogger(f"test_async_log.{next(_names)}")
        log.propagate = False
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
        made.append((log, handler))
        return log

    yield _attach
    for log, handler in made:
        log.removeHandler(handler)
        handler.close()


class BlockingFile:
    """A binary file whose write() waits until `release` is set."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, data) -> int:
        self.entered.set()
        self.release.wait(10)
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)


class FailingOnceFile:
    """A binary file whose first write() raises OSError."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.calls = 0

    def write(self, data) -> int:
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device")
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def test_eight_threads_no_loss_no_duplicates_per_thread_order(tmp_path, attach):
    path = tmp_path / "many.log"
    # Smaller buffers than the default so the run retires and reuses many of them.
    handler = DoubleBufferHandler(path, buffer_bytes=8 * 1024)
    log = attach(handler)
    threads_n, per_thread = 8, 20_000
    start = threading.Barrier(threads_n)

    def work(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            log.info("%d %d", t, i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    handler.close()

    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == threads_n * per_thread
    assert len(set(lines)) == len(lines)
    seen: dict[int, list[int]] = {t: [] for t in range(threads_n)}
    for line in lines:
        t, i = line.split()
        seen[int(t)].append(int(i))
    for t in range(threads_n):
        assert seen[t] == list(range(per_thread)), f"thread {t} lines out of order or missing"
    assert handler.dropped == 0
    assert handler.write_errors == 0


def test_flush_makes_earlier_records_visible(tmp_path, attach):
    path = tmp_path / "flush.log"
    # A long interval: only flush() can have put the records on file.
    handler = DoubleBufferHandler(path, flush_interval=60.0)
    log = attach(handler)
    for i in range(100):
        log.info("rec %d", i)
    handler.flush()
    assert path.read_text().splitlines() == [f"rec {i}" for i in range(100)]
    log.info("one more")
    handler.flush()
    assert path.read_text().splitlines()[-1] == "one more"


def test_records_after_close_are_dropped_without_raising(tmp_path, attach, capsys):
    path = tmp_path / "closed.log"
    handler = DoubleBufferHandler(path)
    log = attach(handler)
    for i in range(3):
        log.info("before %d", i)
    handler.close()
    for i in range(5):
        log.info("after %d", i)  # must not raise
    handler.flush()  # returns at once after close
    handler.close()  # idempotent
    assert path.read_text().splitlines() == ["before 0", "before 1", "before 2"]
    assert handler.dropped_after_close == 5
    assert capsys.readouterr().err == ""


def test_backlog_is_bounded_while_writer_is_blocked(attach):
    blocking = BlockingFile()
    buffer_bytes, max_backlog = 1024, 4096
    handler = DoubleBufferHandler(blocking, buffer_bytes=buffer_bytes,
                                  max_backlog_bytes=max_backlog, flush_interval=0.01)
    log = attach(handler)
    try:
        total = _flood_while_blocked(handler, log, blocking, max_backlog)
    finally:
        # On a failed assertion too, or the fixture's close() would wait on
        # every blocked write.
        blocking.release.set()

    handler.close()
    lines = blocking.getvalue().decode().splitlines()
    notices = [int(m.group(1)) for line in lines
               if (m := re.search(r"async_log: dropped (\d+) records", line))]
    assert notices, "no drop notice written"
    assert sum(notices) == handler.dropped
    kept = [int(line.split()[1]) for line in lines if line.startswith("rec ")]
    assert lines[0] == "first"
    assert len(kept) + handler.dropped == total
    # Whole buffers are shed oldest first, so what survives is an unbroken
    # run ending at the last record.
    assert kept == list(range(total - len(kept), total))


def _flood_while_blocked(handler, log, blocking, max_backlog):
    log.info("first")
    assert blocking.entered.wait(5), "writer thread never called write()"

    total = 20_000
    payload = "x" * 90  # ~100-byte lines: ~2 MB in all, far over the bound
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        worst_backlog = 0
        for i in range(total):
            log.info("rec %05d %s", i, payload)
            if i % 500 == 0:
                worst_backlog = max(worst_backlog, handler.backlog_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert handler.dropped > 0
    assert worst_backlog <= max_backlog
    assert handler.backlog_bytes <= max_backlog
    # Unbounded buffering would hold ~2 MB here.
    assert peak - base < 256 * 1024, f"memory grew by {peak - base} bytes"
    return total


def test_time_based_flush_without_calling_flush(tmp_path, attach):
    path = tmp_path / "timed.log"
    handler = DoubleBufferHandler(path, flush_interval=0.05)
    log = attach(handler)
    log.info("visible soon")
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if path.read_text() == "visible soon\n":
            break
        time.sleep(0.01)
    assert path.read_text() == "visible soon\n"


def test_write_error_is_reported_and_writer_thread_survives(attach, capsys):
    failing = FailingOnceFile()
    handler = DoubleBufferHandler(failing, flush_interval=60.0)
    log = attach(handler)
    log.info("lost")
    handler.flush()
    log.info("kept")
    handler.flush()
    assert handler.write_errors == 1
    assert b"".join(failing.chunks) == b"kept\n"
    err = capsys.readouterr().err
    assert "Logging error in DoubleBufferHandler writer thread" in err
    assert "No space left on device" in err


def test_record_larger_than_a_buffer_keeps_order(tmp_path, attach):
    path = tmp_path / "big.log"
    handler = DoubleBufferHandler(path, buffer_bytes=256)
    log = attach(handler)
    log.info("a")
    log.info("B" * 1000)
    log.info("c")
    handler.close()
    assert path.read_text().splitlines() == ["a", "B" * 1000, "c"]


def test_install_and_shutdown_on_root_logger(tmp_path):
    path = tmp_path / "root.log"
    root = logging.getLogger()
    old_level = root.level
    try:
        handler = install(path, level=logging.INFO, fmt="%(levelname)s %(name)s %(message)s")
        assert handler in root.handlers
        logging.getLogger("railgate.test").debug("hidden")
        logging.getLogger("railgate.test").info("hello")
        shutdown()
        assert handler not in root.handlers
        assert path.read_text() == "INFO railgate.test hello\n"
        shutdown()  # nothing installed: no-op
    finally:
        shutdown()
        root.setLevel(old_level)


# -- one line per record, ISO-8601 stamps, JSON lines, reopen (issue 13, item 8) ---------------------

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


def _record(msg: str, *args, created: float = 1_795_874_020.123, exc_info=None) -> logging.LogRecord:
    rec = logging.LogRecord("railgate.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.created, rec.msecs = created, 123.0
    return rec


def test_iso_time_has_milliseconds_and_the_zone_offset():
    t = 1_795_874_020.123                     # 2026-11-28T13:53:40.123Z
    assert iso_time(t, ZoneInfo("Asia/Shanghai")) == "2026-11-28T21:53:40.123+08:00"
    assert iso_time(t, ZoneInfo("America/New_York")) == "2026-11-28T08:53:40.123-05:00"
    assert iso_time(t, ZoneInfo("UTC")) == "2026-11-28T13:53:40.123+00:00"
    # no zone given: the host's, with its offset written out
    assert iso_time(t) == datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")
    assert ISO.fullmatch(iso_time(t))


def test_text_lines_start_with_the_iso_time_and_stay_one_line():
    f = LineFormatter(tz=ZoneInfo("Asia/Shanghai"))
    line = f.format(_record("link %s closed:\nreason %s\r\n\x1b[31mred\u2028end", "CI-1", "timeout"))
    assert line.startswith("2026-11-28T21:53:40.123+08:00 WARNING MainThread railgate.test: ")
    assert line.splitlines() == [line]
    assert "closed:\\nreason timeout\\r\\n\\x1b[31mred\\u2028end" in line


def test_a_traceback_is_folded_into_the_record_line():
    f = LineFormatter()
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        line = f.format(_record("failed", exc_info=sys.exc_info()))
    assert line.splitlines() == [line]
    assert "failed\\nTraceback (most recent call last):\\n" in line and "ValueError: bad\\nvalue" in line


def test_json_lines_have_time_level_logger_message_and_the_traceback():
    f = LineFormatter(style="json", tz=ZoneInfo("Asia/Shanghai"))
    try:
        raise KeyError("x")
    except KeyError:
        line = f.format(_record("two\nlines \u2028 %d", 2, exc_info=sys.exc_info()))
    assert line.splitlines() == [line]
    doc = json.loads(line)
    assert doc["time"] == "2026-11-28T21:53:40.123+08:00" and doc["level"] == "WARNING"
    assert doc["logger"] == "railgate.test" and doc["message"] == "two\nlines \u2028 2"
    assert doc["exc"].startswith("Traceback") and "KeyError: 'x'" in doc["exc"]
    with pytest.raises(ValueError, match="text or json"):
        LineFormatter(style="xml")


def test_handler_with_line_formatter_writes_one_line_per_record(tmp_path, attach):
    path = tmp_path / "lines.log"
    handler = DoubleBufferHandler(path)
    log = attach(handler)
    handler.setFormatter(LineFormatter(style="json"))
    log.info("a\nb")
    log.warning("c")
    handler.close()
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["message"] for d in docs] == ["a\nb", "c"]
    assert all(ISO.fullmatch(d["time"]) for d in docs)


def test_reopen_after_a_rename_writes_to_the_new_file(tmp_path, attach):
    path = tmp_path / "gw.log"
    handler = DoubleBufferHandler(path, flush_interval=60.0)
    log = attach(handler)
    log.info("before")
    handler.flush()
    os.rename(path, tmp_path / "gw.log.1")      # logrotate's rename
    log.info("still old")                        # emitted before the signal: may go to either file
    handler.reopen()
    log.info("after")
    handler.flush()
    assert path.exists() and handler.reopens == 1
    new = path.read_text().splitlines()
    assert new[-1] == "after" and any("log file reopened" in line for line in new)
    assert "after" not in (tmp_path / "gw.log.1").read_text()
    assert (tmp_path / "gw.log.1").read_text().startswith("before\n")
    log.info("more")
    handler.close()
    assert path.read_text().splitlines()[-1] == "more"


def test_reopen_from_a_signal_handler(tmp_path, attach):
    path = tmp_path / "gw.log"
    handler = DoubleBufferHandler(path, flush_interval=0.05)
    log = attach(handler)
    handler.setFormatter(LineFormatter())
    old = signal.signal(signal.SIGUSR1, lambda *_: handler.reopen())
    try:
        log.info("first")
        handler.flush()
        os.rename(path, tmp_path / "gw.log.1")
        os.kill(os.getpid(), signal.SIGUSR1)     # the handler runs in this (main) thread
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:  # reopened without any new record
            time.sleep(0.01)
        log.info("second")
        handler.flush()
    finally:
        signal.signal(signal.SIGUSR1, old)
    lines = path.read_text().splitlines()
    assert "INFO async-log-writer async_log: log file reopened (1 since start)" in lines[0]
    assert ISO.match(lines[0])
    assert lines[-1].endswith("second") and "second" not in (tmp_path / "gw.log.1").read_text()


def test_a_failed_reopen_keeps_the_old_file(tmp_path, attach, capsys):
    d = tmp_path / "logs"
    d.mkdir()
    handler = DoubleBufferHandler(d / "gw.log", flush_interval=60.0)
    log = attach(handler)
    log.info("one")
    handler.flush()
    os.rename(d, tmp_path / "moved")              # the path's directory is gone: open() fails
    handler.reopen()
    log.info("two")
    handler.flush()
    assert handler.write_errors == 1 and handler.reopens == 0
    assert (tmp_path / "moved" / "gw.log").read_text() == "one\ntwo\n"
    assert "Logging error in DoubleBufferHandler writer thread" in capsys.readouterr().err
