"""Double-buffered asynchronous logging: callers append to memory, one thread writes.

What it is for: the gateway's IO loop threads log (link state changes,
receiver-check failures, alarms) and must not stall on a slow or busy disk.
:class:`DoubleBufferHandler` is a :class:`logging.Handler` in the style of
muduo's ``AsyncLogging``: ``emit()`` formats the record in the calling thread,
copies the encoded line into an in-memory buffer under a small lock and
returns; a background writer thread moves whole buffers to the file, one
``write()`` per buffer.

Who calls it, and from which thread:

* any thread that logs calls :meth:`DoubleBufferHandler.emit` (through
  ``logging``); it never touches the file;
* the handler's own writer thread (``async-log-writer``) is the only one that
  writes to the file;
* start-up/shut-down code (normally the main thread) calls :func:`install`
  and :func:`shutdown`, or builds the handler and calls ``close()`` itself;
  ``logging.shutdown()`` at interpreter exit also flushes and closes it.

Buffers (fixed-size bytearrays of ``buffer_bytes``, reused)::

    writers (any thread)                    writer thread (one)
    ---------------------                   -------------------
    current: |#### lines ####|....free....|
                 | full: the next line does not fit
                 v
    full:    [ buf1 ][ buf2 ][ buf3 ] ...   <- backlog, at most about
                 |                             max_backlog_bytes; the oldest
                 |                             whole buffers are dropped beyond
                 | every flush_interval, on a full buffer, flush() or close():
                 | under the lock: current -> full, a spare -> current,
                 | take the whole full list (the swap)
                 v
    batch:   [ buf1 ][ buf2 ][ buf3 ][ cur ]  -> file.write() each, outside
                                                 the lock, then file.flush()
    spares:  [ empty ][ empty ]             <- written buffers come back here
                                               (at most spare_buffers kept)

Writers hold the lock only for one copy into ``current`` (or, when it is
full, to hand it over and take a spare); the writer thread holds it only for
the swap and to return buffers. Memory is bounded: the current buffer, the
backlog (``max_backlog_bytes``, or one buffer if that is larger), the batch
being written (the same bound again) and the spares.

Log rotation: :meth:`DoubleBufferHandler.reopen` (the gateway calls it on
SIGUSR1, logrotate's ``postrotate``) only sets a flag; the writer thread, after
its next swap and before writing, opens the path again and closes the old file,
so every record emitted after the signal lands in the new file.

Lines: :class:`LineFormatter` makes every record exactly one line (newlines
and other line breaks in messages and tracebacks are escaped) stamped with an
ISO-8601 time with its UTC offset (``2026-11-28T21:53:40.123+08:00``), as text
or as one JSON object per line.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import sys
import threading
import traceback
from datetime import datetime, tzinfo
from typing import BinaryIO

__all__ = ["DoubleBufferHandler", "LineFormatter", "install", "shutdown", "iso_time", "DEFAULT_FORMAT"]

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"

# Every character str.splitlines() breaks on, and the other C0 controls but TAB (a terminal escape
# in a device name must not reach an operator's terminal either): one record stays one line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85) if c != 0x09}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text: str) -> str:
    """``text`` with every line break and control character but TAB escaped (``\\n``, ``\\x1b``)."""
    return text.translate(_ESCAPES)


def iso_time(timestamp: float, tz: tzinfo | None = None) -> str:
    """``2026-11-28T21:53:40.123+08:00``: ISO 8601, milliseconds, the offset of ``tz`` (None: local)."""
    moment = datetime.fromtimestamp(timestamp, tz) if tz is not None else datetime.fromtimestamp(timestamp).astimezone()
    return moment.isoformat(timespec="milliseconds")


class LineFormatter(logging.Formatter):
    """One record, one line, with an ISO-8601 time and its offset. Safe from any thread.

    ``style="text"``: ``fmt`` (default :data:`DEFAULT_FORMAT`) with ``%(asctime)s`` as
    :func:`iso_time`; the traceback of ``exc_info`` follows the message on the same line, its
    newlines escaped. ``style="json"``: one JSON object per line with ``time``, ``level``,
    ``logger``, ``thread``, ``message`` and, when there is one, ``exc`` (the traceback) and
    ``stack``. ``tz``: the time zone of the stamps (the line's; None: the host's local zone).
    """

    def __init__(self, fmt: str = DEFAULT_FORMAT, *, style: str = "text", tz: tzinfo | None = None) -> None:
        if style not in ("text", "json"):
            raise ValueError(f"log format: expected text or json, got {style!r}")
        super().__init__(fmt)
        self.json = style == "json"
        self.tz = tz

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created, self.tz)

    def format(self, record: logging.LogRecord) -> str:
        if not self.json:
            return one_line(super().format(record))
        doc = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "thread": record.threadName, "message": record.getMessage()}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: no U+2028 or other Unicode line break can split the line
        return json.dumps(doc, ensure_ascii=True, default=str)


class _Buffer:
    """One buffer: a bytearray, a view to fill it without resizing, and counters."""

    __slots__ = ("data", "view", "used", "records")

    def __init__(self, data: bytearray | bytes, used: int = 0, records: int = 0) -> None:
        self.data = data
        self.view = memoryview(data)
        self.used = used
        self.records = records


class DoubleBufferHandler(logging.Handler):
    """A logging handler that appends to memory and writes from a background thread.

    ``target`` is a path (opened for appending in binary mode and owned by the
    handler) or a binary file object with ``write()`` and ``flush()`` (the
    caller owns it: ``close()`` flushes it but does not close it, as
    :class:`logging.StreamHandler` does). A file object must follow the
    :meth:`io.BufferedIOBase.write` contract and not keep the buffer it is
    given after ``write()`` returns: the handler reuses its buffers.

    Counters (plain ints, read them from any thread): ``dropped`` records shed
    because the backlog exceeded ``max_backlog_bytes``; ``dropped_after_close``
    records emitted after ``close()``; ``write_errors`` failed ``write()`` /
    ``flush()`` calls on the file (and failed reopens); ``reopens`` files
    opened again by :meth:`reopen`.
    """

    terminator = "\n"

    def __init__(self, target: str | bytes | os.PathLike[str] | BinaryIO, *,
                 buffer_bytes: int = 64 * 1024, flush_interval: float = 0.2,
                 max_backlog_bytes: int = 64 * 1024 * 1024, spare_buffers: int = 4,
                 encoding: str = "utf-8", errors: str = "backslashreplace",
                 level: int = logging.NOTSET) -> None:
        """Open ``target`` and start the writer thread. Call from one thread, once."""
        if buffer_bytes <= 0 or flush_interval <= 0 or max_backlog_bytes <= 0 or spare_buffers < 0:
            raise ValueError("buffer_bytes, flush_interval, max_backlog_bytes must be > 0, "
                             "spare_buffers >= 0")
        super().__init__(level)
        if hasattr(target, "write"):
            self._file, self._owns_file, self._path = target, False, None
        else:
            self._file, self._owns_file, self._path = open(target, "ab"), True, target
        self.encoding = encoding
        self.errors = errors
        self._buffer_bytes = buffer_bytes
        self._flush_interval = flush_interval
        self._max_backlog = max_backlog_bytes
        self._max_spares = spare_buffers
        self.dropped = 0
        self.dropped_after_close = 0
        self.write_errors = 0
        self.reopens = 0
        self._reopen_req = False       # set by reopen() (a signal handler): no lock, see reopen()

        # One plain Lock for the buffers; logging's own per-handler RLock
        # (self.lock) is not used on the emit path, see handle().
        self._mutex = threading.Lock()
        self._wake = threading.Condition(self._mutex)      # writers/flush/close -> thread
        self._flushed = threading.Condition(self._mutex)   # thread -> flush() waiters
        self._current = self._new_buffer()
        self._full: collections.deque[_Buffer] = collections.deque()
        self._backlog = 0              # bytes in self._full
        self._spares: list[_Buffer] = []
        self._drop_pending = 0         # records shed since the last drop notice
        self._flush_req = 0            # flush() calls so far
        self._flush_done = 0           # the last flush_req whose records are on file
        self._closed = False
        # Daemon, so a forgotten close() cannot hang interpreter exit;
        # logging.shutdown() (atexit) still calls flush() and close().
        self._thread = threading.Thread(target=self._run, name="async-log-writer", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- writers

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:
        """Filter and emit without taking the handler-wide RLock. Safe from any thread.

        ``logging.Handler.handle`` holds ``self.lock`` around ``emit()``, i.e.
        around formatting; emit() here is thread-safe by itself and formats
        outside any lock, so callers only serialise on the short buffer copy.
        """
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may return a new record
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and append it to the current buffer. Safe from any thread.

        Never blocks on the file; blocks only while another thread holds the
        buffer lock for a copy or a swap. After ``close()`` the record is
        dropped and counted in ``dropped_after_close``; nothing is raised.
        """
        try:
            data = (self.format(record) + self.terminator).encode(self.encoding, self.errors)
        except Exception:
            self.handleError(record)
            return
        n = len(data)
        with self._mutex:
            if self._closed:
                self.dropped_after_close += 1
                return
            buf = self._current
            pos = buf.used
            if pos + n > self._buffer_bytes:
                if pos:
                    self._retire_current_locked()
                    buf, pos = self._current, 0
                if n > self._buffer_bytes:
                    # Larger than a whole buffer: it travels as its own buffer
                    # (never reused) so that line order is kept.
                    self._push_full_locked(_Buffer(data, n, 1))
                    return
            buf.view[pos:pos + n] = data
            buf.used = pos + n
            buf.records += 1

    def _new_buffer(self) -> _Buffer:
        return _Buffer(bytearray(self._buffer_bytes))

    def _retire_current_locked(self) -> None:
        self._push_full_locked(self._current)
        self._current = self._spares.pop() if self._spares else self._new_buffer()

    def _push_full_locked(self, buf: _Buffer) -> None:
        full = self._full
        full.append(buf)
        self._backlog += buf.used
        # Shed whole buffers, oldest first (muduo's policy), but keep the
        # newest: a backlog bound smaller than one buffer must not drop all.
        while self._backlog > self._max_backlog and len(full) > 1:
            old = full.popleft()
            self._backlog -= old.used
            self.dropped += old.records
            self._drop_pending += old.records
            self._recycle_locked(old)
        self._wake.notify()

    def _recycle_locked(self, buf: _Buffer) -> None:
        if len(buf.data) == self._buffer_bytes and len(self._spares) < self._max_spares:
            buf.used = buf.records = 0
            self._spares.append(buf)

    # ---------------------------------------------------------- writer thread

    def _run(self) -> None:
        mutex = self._mutex
        batch: collections.deque[_Buffer] = collections.deque()
        while True:
            with mutex:
                if not self._full and not self._closed and self._flush_req == self._flush_done:
                    self._wake.wait(self._flush_interval)
                # The swap: everything appended so far goes into this batch.
                if self._current.used:
                    self._full.append(self._current)
                    self._current = self._spares.pop() if self._spares else self._new_buffer()
                batch, self._full = self._full, batch
                self._backlog = 0
                dropped, self._drop_pending = self._drop_pending, 0
                flush_req = self._flush_req
                stopping = self._closed
            if self._reopen_req:
                # after the swap: what was emitted after reopen() is in this batch, and goes to the new file
                self._reopen_req = False
                self._reopen_file()
            if batch or dropped:
                self._write_batch(batch, dropped)
            with mutex:
                for buf in batch:
                    self._recycle_locked(buf)
                batch.clear()
                self._flush_done = flush_req
                self._flushed.notify_all()
            if stopping:
                # closed was set under the lock before this swap, so no
                # record can have been appended after it.
                return

    def _note(self, level: int, text: str) -> bytes:
        """A line of the handler's own (writer thread), in the handler's format when it is a
        LineFormatter, else ``<time> LEVEL async_log: text``."""
        if isinstance(self.formatter, LineFormatter):
            record = logging.LogRecord("async_log", level, __file__, 0, text, None, None)
            line = self.formatter.format(record)
        else:
            line = f"{iso_time(datetime.now().timestamp())} {logging.getLevelName(level)} async_log: {text}"
        return (line + self.terminator).encode(self.encoding, self.errors)

    def _reopen_file(self) -> None:
        """Writer thread: open the path again (logrotate renamed the file), then close the old one.
        A failure keeps the old file and counts a write error."""
        if not self._owns_file:
            return
        try:
            new = open(self._path, "ab")
        except OSError:
            self.write_errors += 1
            self._report_error()
            return
        old, self._file = self._file, new
        self.reopens += 1
        try:
            old.close()
        except Exception:
            self.write_errors += 1
            self._report_error()
        self._write_one(new, self._note(logging.INFO, f"log file reopened ({self.reopens} since start)"))

    def _write_batch(self, batch: collections.deque[_Buffer], dropped: int) -> None:
        f = self._file
        if dropped:
            self._write_one(f, self._note(logging.WARNING, f"dropped {dropped} records "
                                                           f"(log backlog over {self._max_backlog} bytes)"))
        for buf in batch:
            self._write_one(f, buf.view[:buf.used])
        try:
            f.flush()
        except Exception:
            self.write_errors += 1
            self._report_error()

    def _write_one(self, f: BinaryIO, data: memoryview | bytes) -> None:
        try:
            n = f.write(data)
            # A raw (unbuffered) file may take less than it is given.
            while n is not None and n < len(data):
                data = data[n:]
                n = f.write(data)
        except Exception:
            # The buffer is lost but the thread carries on: a full disk or a
            # closed pipe must not silence every later record.
            self.write_errors += 1
            self._report_error()

    def _report_error(self) -> None:
        """handleError() for the writer thread, which has no record to blame."""
        if logging.raiseExceptions and sys.stderr:
            try:
                sys.stderr.write("--- Logging error in DoubleBufferHandler writer thread ---\n")
                traceback.print_exc(file=sys.stderr)
            except Exception:
                pass

    # -------------------------------------------------------------- control

    def flush(self) -> None:
        """Write everything appended before this call and flush the file. Safe from any thread.

        Blocks until the writer thread has handed those records to the file
        and called ``file.flush()`` (so another process reading the file sees
        them; no fsync). Returns at once after ``close()``. Must not be called
        from the writer thread (it never is: that thread does not log).
        """
        with self._mutex:
            if self._closed:
                return
            self._flush_req += 1
            target = self._flush_req
            self._wake.notify()
            while self._flush_done < target and self._thread.is_alive():
                self._flushed.wait(1.0)

    def close(self) -> None:
        """Stop the writer thread after it has written everything, then close the file.

        Safe from any thread except the writer thread; idempotent. Every record
        whose ``emit()`` returned before ``close()`` was called is written;
        later ones are dropped and counted. A file object passed in by the
        caller is flushed, not closed.
        """
        with self._mutex:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        if self._owns_file and not self._file.closed:
            try:
                self._file.close()
            except Exception:
                self.write_errors += 1
                self._report_error()
        super().close()

    def reopen(self) -> None:
        """Have the writer thread reopen the file by its path before it writes again (within
        ``flush_interval``; at once on ``flush()``). For logrotate: rename the file, then signal.

        Safe from a signal handler and from any thread: it only sets a flag (a handler running
        in a thread that holds the buffer lock must not wait for it). Does nothing for a file
        object passed in by the caller."""
        self._reopen_req = True

    @property
    def backlog_bytes(self) -> int:
        """Bytes in full buffers waiting for the writer thread. Safe from any thread."""
        return self._backlog


_install_lock = threading.Lock()
_installed: DoubleBufferHandler | None = None


def install(path: str | bytes | os.PathLike[str], level: int = logging.INFO,
            fmt: str = DEFAULT_FORMAT, formatter: logging.Formatter | None = None) -> DoubleBufferHandler:
    """Attach a DoubleBufferHandler for ``path`` to the root logger and return it.

    ``formatter`` (e.g. a :class:`LineFormatter`) replaces a plain ``logging.Formatter(fmt)``.
    Sets the root logger's level to ``level``. A handler installed earlier is
    shut down first. Raises OSError if ``path`` cannot be opened.
    Meant for start-up code; safe from any thread.
    """
    global _installed
    handler = DoubleBufferHandler(path)
    handler.setFormatter(formatter or logging.Formatter(fmt))
    with _install_lock:
        previous, _installed = _installed, handler
        root = logging.getLogger()
        if previous is not None:
            root.removeHandler(previous)
        root.addHandler(handler)
        root.setLevel(level)
    if previous is not None:
        previous.close()
    return handler


def shutdown() -> None:
    """Flush the handler from :func:`install`, detach it from the root logger and close it.

    Meant for shut-down code; safe from any thread; does nothing if nothing
    is installed.
    """
    global _installed
    with _install_lock:
        handler, _installed = _installed, None
        if handler is not None:
            logging.getLogger().removeHandler(handler)
    if handler is not None:
        handler.flush()
        handler.close()
