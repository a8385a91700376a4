"""recvmmsg into the endpoint's receive arena (gateway.net._udp_batch) against the recv_into reference,
on loopback.

The compiled receiver is tested alone (slot j gets datagram j, batches, lengths, oversize, EAGAIN),
then the UDP endpoint runs the same datagrams through both receive paths and must give the
same counters and the same applied state. Without the extension built these tests fail, unless
RAILGATE_PURE=1 (then the recvmmsg cases are skipped and the recv_into ones still run).
"""
from __future__ import annotations

import array
import gc
import os
import socket
import time
import tracemalloc

import pytest

from gateway.app.context import Context
from gateway.line.line import Line
from gateway.net import udp_endpoint
from gateway.net.udp_endpoint import MAX_DATAGRAM, RECV_BATCH, UdpEndpoint
from gateway_harness import line_config, wait_until
from railcodecs import TrainHeartbeat
from test_gateway_udp import _NoLoop, dgram, status_msg

PURE = os.environ.get("RAILGATE_PURE") == "1"
PATHS = ["recvmmsg", "recv_into"]


def batch_module():
    """gateway.net._udp_batch; a failure when it is not built, a skip only under RAILGATE_PURE=1."""
    try:
        from gateway.net import _udp_batch
    except ImportError as exc:
        if PURE:
            pytest.skip(f"RAILGATE_PURE=1 and gateway.net._udp_batch is not built ({exc})")
        raise
    return _udp_batch


def need_path(path: str) -> None:
    if path == "recvmmsg":
        batch_module()


@pytest.fixture
def pair():
    """A bound loopback receiver (4 MiB buffer) and a sender: ``(rx, send)``, send(bytes) to rx."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = rx.getsockname()
    yield rx, lambda data: tx.sendto(data, addr)
    rx.close()
    tx.close()


def recv_all(receiver, fd: int, want: int, timeout: float = 5.0) -> list[int]:
    """recv until ``want`` datagrams came; each call's count (loopback delivery is synchronous; the wait
    is a guard)."""
    counts, deadline = [], time.monotonic() + timeout
    while sum(counts) < want and time.monotonic() < deadline:
        got = receiver.recv(fd)
        if got:
            counts.append(got)
    return counts


# ---------------------------------------------------------------- the compiled receiver alone

def test_one_recv_puts_datagram_j_into_slot_j(pair):
    rx, send = pair
    m = batch_module()
    arena = bytearray(144 * 8)
    r = m.BatchReceiver(arena, 144, 8)
    assert (r.batch, r.slot_size) == (8, 144) and r.arena is arena
    sizes = [32, 48, 64, 80, 128, 144, 1]
    for k, n in enumerate(sizes):
        send(bytes([0x10 + k]) * n)
    assert r.recv(rx.fileno()) == len(sizes)  # all waiting: one system call, short of the batch
    assert list(r.lengths[:len(sizes)]) == sizes
    for j, n in enumerate(sizes):
        slot = arena[j * 144:(j + 1) * 144]
        assert slot[:n] == bytes([0x10 + j]) * n and slot[n:] == bytes(144 - n), f"slot {j}"
    assert arena[7 * 144:] == bytes(144), "slot 7 was written with no datagram for it"
    assert r.recv(rx.fileno()) == 0  # drained: EAGAIN is 0, not an exception


def test_the_next_batch_reuses_the_slots_from_slot_0(pair):
    rx, send = pair
    arena = bytearray(48 * 4)
    r = batch_module().BatchReceiver(arena, 48, 4)
    for k in range(7):
        send(bytes([k + 1]) * (40 - k))
    assert r.recv(rx.fileno()) == 4                             # capped at batch: the queue is not empty
    assert [arena[j * 48] for j in range(4)] == [1, 2, 3, 4]
    assert r.recv(rx.fileno()) == 3                             # short: drained
    assert [arena[j * 48] for j in range(4)] == [5, 6, 7, 4]    # datagram j in slot j again
    assert list(r.lengths) == [36, 35, 34, 37]                  # lengths[3] is the first batch's
    assert r.recv(rx.fileno()) == 0


def test_oversize_datagram_is_flagged_with_its_real_length(pair):
    rx, send = pair
    r = batch_module().BatchReceiver(bytearray(144 * 4), 144, 4)
    send(bytes(range(200)))
    send(b"\xa5" * MAX_DATAGRAM)
    send(b"\x5a" * (MAX_DATAGRAM + 1))
    assert recv_all(r, rx.fileno(), 3) == [3]
    assert list(r.lengths[:3]) == [200, MAX_DATAGRAM, MAX_DATAGRAM + 1]
    assert r.arena[:144] == bytes(range(144))       # its head, cut at the slot's end
    assert r.arena[144:288] == b"\xa5" * 144
    assert r.arena[288:432] == b"\x5a" * 144        # the longer one's head: slot 3 untouched
    assert r.arena[432:576] == bytes(144)


def test_truncation_without_a_real_length_is_still_over_the_slot_size():
    """AF_UNIX may not report a datagram's real length: any length over the slot size means cut short."""
    r = batch_module().BatchReceiver(bytearray(32 * 2), 32, 2)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(bytes(100))
        a.send(bytes(32))
        assert r.recv(b.fileno()) == 2
        assert r.lengths[0] > 32 and r.lengths[1] == 32


def test_bad_arguments_and_socket_errors():
    m = batch_module()
    with pytest.raises(ValueError):
        m.BatchReceiver(bytearray(144), 0)
    with pytest.raises(ValueError):
        m.BatchReceiver(bytearray(144), 144, 0)
    with pytest.raises(ValueError):
        m.BatchReceiver(bytearray(144 * 4096), 144, 4096)  # over the kernel's recvmmsg cap
    with pytest.raises(ValueError):
        m.BatchReceiver(bytearray(144 * 3), 144, 4)        # too short for its slots
    with pytest.raises((BufferError, TypeError, ValueError)):
        m.BatchReceiver(bytes(144), 144, 1)                # read-only: no slot can be written
    r = m.BatchReceiver(bytearray(144 * 2), 144, 2)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = s.fileno()
    s.close()
    with pytest.raises(OSError):
        r.recv(fd)                                         # EBADF: a real error, raised
    with pytest.raises(BufferError):
        r.lengths.append(1)                                # filled in place: it cannot move under the receiver
    with pytest.raises(BufferError):
        r.arena.extend(b"x")                               # nor the arena the iovecs point into
    assert isinstance(r.lengths, array.array) and len(r.lengths) == 2


def test_receive_allocates_nothing_per_datagram(pair):
    rx, send = pair
    r = batch_module().BatchReceiver(bytearray(144 * 64), 144, 64)
    recv, fd, lengths = r.recv, rx.fileno(), r.lengths
    frame = bytes(61)

    def rounds(n):
        total = 0
        for _ in range(n):
            for _ in range(64):
                send(frame)
            total += recv(fd)
            total += recv(fd)  # the EAGAIN one
        return total

    rounds(20)  # warm-up
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        got = rounds(300)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert got == 300 * 64 and lengths[63] == 61
    assert after - before < 2048, f"{after - before} bytes retained over {got} datagrams"


# ---------------------------------------------------------------- the endpoint, both paths

def endpoint(path: str, clock_ms: int, **kw):
    """The real UDP path without a loop thread (as test_gateway_udp._endpoint), on the chosen path."""
    need_path(path)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    cfg = line_config()
    line = Line(cfg, lambda: clock_ms)
    ctx = Context(cfg, line, link_pool=None)
    ep = UdpEndpoint(ctx, _NoLoop(), rx, line.receiver.new_link("udp"), batch=path == "recvmmsg", **kw)
    ep.start()
    return ep, line, rx


def mixed_datagrams(clock: int) -> list[bytes]:
    """Every case the per-datagram step tells apart, several times over (more than one batch)."""
    out = []
    for r in range(40):
        seq = 10 * r + 1
        good = dgram(status_msg(section=101 + r % 20, speed=100 + r), seq=seq, time_ms=clock)
        bad_crc = bytearray(dgram(status_msg(), seq=seq + 1, time_ms=clock))
        bad_crc[-1] ^= 0xFF
        out += [
            good,
            good,                                                              # duplicate
            bytes(bad_crc),                                                    # bad_crc
            dgram(status_msg(), seq=seq + 2, time_ms=clock) + bytes(300),      # oversize: bad_size
            bytes(200),                                                        # oversize: bad_sync
            bytes(MAX_DATAGRAM),                                               # not oversize: bad_sync
            dgram(status_msg(), train=4242, seq=seq, time_ms=clock),           # unknown_source
            dgram(status_msg(), seq=seq + 3, time_ms=clock)[:-1],              # wrong size: bad_size
            dgram(TrainHeartbeat(r), train=1026, seq=r + 1, time_ms=clock),    # applied
        ]
    return out


def run(path: str, datagrams: list[bytes], **kw):
    clock = 1_700_000_000_000
    ep, line, rx = endpoint(path, clock, **kw)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for k in range(0, len(datagrams), 100):
            for d in datagrams[k:k + 100]:
                tx.sendto(d, rx.getsockname())
            ep._on_events(0)
        wait_until(lambda: ep._on_events(0) or ep.rx_datagrams >= len(datagrams),
                   what=f"{len(datagrams)} datagrams")
        st = line.objects.trains.get(1025)
        state = {"trains": st and (st.section_id, st.speed_cm_s, st.applied_ms), "applied": ep.checks.applied,
                 "reachable": (line.registry.train_reachable(1025), line.registry.train_reachable(1026))}
        return ep, state
    finally:
        rx.close()
        tx.close()


def counters(ep) -> dict:
    st = ep.stats()
    del st["recv"], st["rx_batches"], st["polling"], st["poll_entries"], st["coalesce_ms"]  # not counters
    return st


def test_both_paths_give_the_same_counters_and_state():
    datagrams = mixed_datagrams(1_700_000_000_000)
    results = {}
    for path in PATHS:
        need_path(path)
        ep, state = run(path, datagrams)
        assert ep.stats()["recv"] == path
        results[path] = (counters(ep), state)
    batch, each = results["recvmmsg"], results["recv_into"]
    assert batch == each
    assert batch[0] == {"rx_datagrams": 360, "oversize": 80,
                        "errors": {"duplicate": 40, "bad_crc": 40, "bad_size": 80, "bad_sync": 80,
                                   "unknown_source": 40, "gap": 39 * 9}}  # seq 10r+1: 9 missed a round
    assert batch[1] == {"trains": (120, 139, 1_700_000_000_000), "applied": 80, "reachable": (True, True)}


@pytest.mark.parametrize("path", PATHS)
def test_each_path_drains_to_eagain_in_batches_of_the_arena(path):
    datagrams = [dgram(TrainHeartbeat(i % 256), seq=i, time_ms=1_700_000_000_000) for i in range(1, 501)]
    ep, state = run(path, datagrams)
    assert ep.rx_datagrams == 500 and state["applied"] == 500
    if path == "recvmmsg":
        # 100 sent per event: a full batch of 64, then 36 (short: drained, the event ends)
        assert ep.rx_batches == 10
    else:
        assert ep.rx_batches == 0


@pytest.mark.parametrize("path", PATHS)
def test_a_smaller_arena_takes_smaller_batches(path):
    datagrams = [dgram(TrainHeartbeat(i), seq=i, time_ms=1_700_000_000_000) for i in range(1, 12)]
    ep, state = run(path, datagrams, batch_size=2)
    assert ep.rx_datagrams == 11 and state["applied"] == 11 and len(ep.arena) == 2 * 144
    if path == "recvmmsg":
        assert ep.rx_batches == 6  # 2+2+2+2+2+1


def default_path() -> str:
    """The receive path an endpoint built with no ``batch`` argument takes, now."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        return UdpEndpoint(None, _NoLoop(), sock, None).recv_path


def test_default_path_follows_the_implementation(implementation):
    """recvmmsg with the compiled implementation, recv_into with the pure one (railcodecs.speedups:
    RAILGATE_PURE=1, or the test's run per implementation)."""
    batch_module()  # not built: fails here, unless the whole run is RAILGATE_PURE=1 (then a skip)
    assert udp_endpoint.batch_available() == (implementation == "compiled")
    assert default_path() == ("recvmmsg" if implementation == "compiled" else "recv_into")


def test_batch_path_refused_when_not_built(monkeypatch):
    monkeypatch.setattr(udp_endpoint, "BatchReceiver", None)
    assert not udp_endpoint.batch_available() and default_path() == "recv_into"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock, pytest.raises(ImportError):
        UdpEndpoint(None, _NoLoop(), sock, None, batch=True)


