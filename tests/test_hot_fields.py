"""The hot fields of a link as C fields (codecs/_fields.pxi, ``_reactor.ConnFields``) and the compiled
reader's calls that write them (``railcodecs._core.READER_API``).

* the compiled bases and their pure twins name the same fields, and the classes take the right one;
* a compiled link's reads record what ``LinkProtocol._decode`` records from the Python path: the
  time of the last bytes and of the last accepted frame, the bytes received, and a partial frame's
  wait (set while a frame is cut, cleared once the FastLink has taken every byte).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from gateway.net import compiled
from gateway.net.connection import TcpConnection
from gateway.line.link_protocol import LinkProtocol
from gateway_harness import Device, RunningGateway, line_config, wait_until
from railcodecs import TrackSections, speedups
from railcodecs.byte_source import _Readable
from railcodecs.receiver import LinkChecks
from railcodecs.stream import StreamDecoder

CLASSES = {"ReadableFields": _Readable, "DecoderFields": StreamDecoder, "ChecksFields": LinkChecks,
           "LinkFields": LinkProtocol}


def _data_fields(cls) -> set:
    return {name for name, v in vars(cls).items() if hasattr(v, "__set__") and not name.startswith("__")}


@pytest.mark.skipif(not speedups.available(), reason="the compiled core is not built or RAILGATE_PURE=1")
def test_the_compiled_bases_hold_exactly_the_named_fields():
    from railcodecs import _core
    for name, fields in speedups.FIELDS.items():
        assert _data_fields(getattr(_core, name)) == set(fields), name
    from gateway.net import _reactor
    assert _data_fields(_reactor.ConnFields) == set(compiled.CONN_FIELDS)


def test_each_class_takes_the_base_of_the_implementation_built():
    for name, cls in CLASSES.items():
        base = cls.__mro__[1]
        assert base.__name__ == name
        assert base.__module__ == ("railcodecs._core" if speedups.available() else "railcodecs.speedups")
        if not speedups.available():
            assert base.__slots__ == speedups.FIELDS[name]
    conn_base = TcpConnection.__mro__[1]
    assert conn_base.__name__ == "ConnFields"
    # (chosen at import, as the others: whatever speedups.use() says later)
    assert conn_base.__module__ == ("gateway.net._reactor" if compiled._reactor is not None and speedups.available()
                                    else "gateway.net.compiled")


def test_forced_pure_gives_plain_slotted_bases():
    """RAILGATE_PURE=1 at import: every base is the pure twin, with the same names as slots."""
    code = ("from railcodecs.receiver import LinkChecks; from gateway.net.connection import TcpConnection;"
            "from gateway.line.link_protocol import LinkProtocol;"
            "print(LinkChecks.__mro__[1].__module__, TcpConnection.__mro__[1].__module__,"
            " LinkProtocol.__mro__[1].__slots__)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "RAILGATE_PURE": "1"},
                         capture_output=True, text=True, check=True).stdout.split(None, 2)
    assert out[:2] == ["railcodecs.speedups", "gateway.net.compiled"]
    assert out[2].strip() == repr(speedups.FIELDS["LinkFields"])


def test_a_links_reads_record_its_times_bytes_and_partial_frame(implementation):
    """The same records from the compiled reader (READER_API.commit_run) as from the Python path.
    (Heartbeats of 3 s: no tick, whose Python path also looks at a partial frame, runs meanwhile.)"""
    with RunningGateway(line_config(heartbeat_ms=3000)) as gw:
        dev = Device(gw.ports["A"], hb_ms=3000)
        dev.hello()
        (link,) = wait_until(lambda: [lk for lk in gw.ctx.links if lk.alive] or None, what="link up")
        p = link.protocol
        assert p.heartbeat_ms == 3000
        wait_until(lambda: p.fast is not None or implementation == "pure", what="the FastLink")
        rx0 = link.rx_bytes
        time.sleep(0.05)
        t0 = time.monotonic()
        frames = [dev.encode(TrackSections(((111, seq % 2),)), seq=seq) for seq in range(1, 11)]
        for f in frames:
            dev.sock.sendall(f)
        sender = gw.ctx.receiver.senders[258]
        wait_until(lambda: sender.applied == 10, what="10 frames applied")
        wait_until(lambda: link.rx_bytes - rx0 == sum(map(len, frames)), what="the bytes counted")
        assert p.last_rx >= t0 and p.last_frame >= t0
        assert p._partial_since is None
        # a frame cut in two: its first half waits (the Python path says since when) ...
        last = dev.encode(TrackSections(((111, 1),)), seq=11)
        dev.sock.sendall(last[:10])
        wait_until(lambda: p._partial_since is not None, what="a partial frame noted")
        t1 = time.monotonic()
        time.sleep(0.02)
        # ... and the rest completes it: the reader took every byte, nothing waits any more
        dev.sock.sendall(last[10:])
        wait_until(lambda: sender.applied == 11, what="the cut frame applied")
        wait_until(lambda: p._partial_since is None, timeout=1.0, what="the wait cleared by the read")
        assert p.last_frame >= t1 and p.last_rx >= t1
        if implementation == "compiled":
            assert p.fast.frames >= 11  # (so the compiled reader made those records)
        dev.close()


@pytest.mark.parametrize("bulk", [False, True], ids=["one-recv", "bulk-pass"])
def test_a_busy_links_partial_frame_wait_restarts_with_each_read_that_takes_frames(implementation, bulk):
    """A read that takes frames and ends inside the next one: the partial frame has waited since that
    read (``LinkProtocol._decode``: progress, then a rest), not since an earlier read that also
    ended mid-frame, and the last accepted frame is that read's too. Otherwise a busy link whose
    reads keep ending mid-frame would have its partial frame abandoned as overdue (a good frame
    dropped as ``truncated``). ``bulk``: every read after the first is a bulk pass of the compiled
    reader (``set_nogil_bytes(0)``), else the one-recv way."""
    if bulk and implementation != "compiled":
        pytest.skip("the bulk pass is the compiled reader's")
    old = speedups._core.set_nogil_bytes(0) if bulk else None
    try:
        with RunningGateway(line_config(heartbeat_ms=3000)) as gw:
            dev = Device(gw.ports["A"], hb_ms=3000)
            dev.hello()
            (link,) = wait_until(lambda: [lk for lk in gw.ctx.links if lk.alive] or None, what="link up")
            p = link.protocol
            wait_until(lambda: p.fast is not None or implementation == "pure", what="the FastLink")
            sender = gw.ctx.receiver.senders[258]
            frames = [dev.encode(TrackSections(((111, seq % 2),)), seq=seq) for seq in range(1, 5)]
            dev.sock.sendall(frames[0])  # (the object's first value: stored by the Python path)
            wait_until(lambda: sender.applied == 1, what="the first frame applied")
            dev.sock.sendall(frames[1] + frames[2][:10])
            wait_until(lambda: sender.applied == 2 and p._partial_since is not None, what="frame 2 and a partial")
            time.sleep(0.05)
            t1 = time.monotonic()
            dev.sock.sendall(frames[2][10:] + frames[3][:10])
            wait_until(lambda: sender.applied == 3 and p.last_rx >= t1, what="frame 3 applied")
            time.sleep(0.05)  # (the read's records are written by the end of its event)
            assert p._partial_since is not None and p._partial_since >= t1
            assert p.last_frame >= t1
            if bulk:
                assert p.fast.frames_bulk >= 1
            dev.close()
    finally:
        if old is not None:
            speedups._core.set_nogil_bytes(old)


def test_a_fastlink_without_its_link_is_left_to_the_python_path(implementation):
    """``speedups.fast_link(...)`` without ``link`` (a FastLink run from Python only) is never read by
    the compiled reader: it has no protocol fields to record into, so the reader's ``alive`` says no
    and the connection's Python read runs it (``LinkProtocol._decode``). Nothing raises in the loop."""
    if implementation != "compiled":
        pytest.skip("the compiled reader exists only in the compiled implementation")
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"])
        dev.hello()
        (link,) = wait_until(lambda: [lk for lk in gw.ctx.links if lk.alive] or None, what="link up")
        p = link.protocol
        wait_until(lambda: p.fast is not None, what="the FastLink")

        def swap():  # in the loop thread, before the first status frame arms the reader
            p.fast = speedups.fast_link(p.decoder, p.checks, gw.ctx.receiver.senders[258], gw.ctx.receiver,
                                        gw.ctx.objects, p.decoder.mac.session_key)
        link.loop.run_in_loop(swap)
        wait_until(lambda: p.fast is not None and p.fast.frames == 0, what="the swap")
        errors = link.loop.callback_errors
        for seq in range(1, 11):
            dev.send(TrackSections(((111, seq % 2),)), seq=seq)
        sender = gw.ctx.receiver.senders[258]
        wait_until(lambda: sender.applied == 10, what="10 frames applied")
        assert p.fast.frames == 10  # run from Python (LinkProtocol._decode), not by the reader
        assert link.loop.callback_errors == errors and link.alive
        dev.close()
