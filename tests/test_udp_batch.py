"""recvmmsg into the slab pool (gateway.net._udp_batch) against the recv_into reference, on loopback.

The compiled receiver is tested alone (batches, lengths, oversize, EAGAIN, which slab gets which
bytes), then the UDP endpoint runs the same datagrams through both receive paths and must give the
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
from gateway.app.runtime import UDP_CLASSES
from gateway.line.line import Line
from gateway.net import udp_endpoint
from gateway.net.slab_pool import SlabPool
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


def recv_all(receiver, fd: int, indices: list, want: int, timeout: float = 5.0) -> int:
    """recv until ``want`` datagrams came (loopback delivery is synchronous; the wait is a guard)."""
    got, deadline = 0, time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        got += receiver.recv(fd, indices[got:], want - got)
    return got


# ---------------------------------------------------------------- the compiled receiver alone

def test_one_recv_gets_a_batch_into_the_named_slabs(pair):
    rx, send = pair
    m = batch_module()
    arena = bytearray(144 * 16)
    r = m.BatchReceiver(arena, 144, 8)
    assert (r.batch, r.slab_size, r.slab_count) == (8, 144, 16)
    sizes = [32, 48, 64, 80, 128, 144, 1]
    for k, n in enumerate(sizes):
        send(bytes([0x10 + k]) * n)
    indices = [9, 2, 15, 0, 7, 3, 12]
    assert r.recv(rx.fileno(), indices) == len(sizes)  # all waiting: one system call
    assert list(r.lengths[:len(sizes)]) == sizes
    for k, (i, n) in enumerate(zip(indices, sizes)):
        slab = arena[i * 144:(i + 1) * 144]
        assert slab[:n] == bytes([0x10 + k]) * n and slab[n:] == bytes(144 - n), f"slab {i}"
    for i in set(range(16)) - set(indices):
        assert arena[i * 144:(i + 1) * 144] == bytes(144), f"slab {i} was not named but written"
    assert r.recv(rx.fileno(), indices) == 0  # drained: EAGAIN is 0, not an exception


def test_oversize_datagram_is_flagged_with_its_real_length(pair):
    rx, send = pair
    r = batch_module().BatchReceiver(bytearray(144 * 4), 144, 4)
    send(bytes(range(200)))
    send(b"\xa5" * MAX_DATAGRAM)
    send(b"\x5a" * (MAX_DATAGRAM + 1))
    assert recv_all(r, rx.fileno(), [1, 0, 3], 3) == 3
    assert list(r.lengths[:3]) == [200, MAX_DATAGRAM, MAX_DATAGRAM + 1]
    assert r.arena[144:288] == bytes(range(144))  # its head, cut at the slab's end
    assert r.arena[288:432] == bytes(144)          # slab 2 untouched by the longer datagrams
    assert r.arena[432:576] == b"\x5a" * 144


def test_truncation_without_a_real_length_is_still_over_the_slab_size():
    """AF_UNIX may not report a datagram's real length: any length over the slab size means cut short."""
    r = batch_module().BatchReceiver(bytearray(32 * 2), 32, 2)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(bytes(100))
        a.send(bytes(32))
        assert r.recv(b.fileno(), [1, 0]) == 2
        assert r.lengths[0] > 32 and r.lengths[1] == 32


def test_count_and_batch_cap_what_one_recv_takes(pair):
    rx, send = pair
    r = batch_module().BatchReceiver(bytearray(48 * 8), 48, 4)
    for k in range(7):
        send(bytes([k]) * 40)
    assert r.recv(rx.fileno(), [0, 1, 2, 3, 4, 5, 6, 7]) == 4   # capped at batch
    assert r.recv(rx.fileno(), [4, 5, 6, 7], 2) == 2             # capped at count
    assert r.recv(rx.fileno(), [6, 7, 0, 1], 0) == 0             # nothing asked, nothing read
    assert r.recv(rx.fileno(), [6, 7, 0, 1]) == 1                # the last one; then drained
    assert [r.arena[i * 48] for i in range(8)] == [0, 1, 2, 3, 4, 5, 6, 0]


def test_bad_arguments_and_socket_errors():
    m = batch_module()
    with pytest.raises(ValueError):
        m.BatchReceiver(bytearray(144), 0)
    with pytest.raises(ValueError):
        m.BatchReceiver(bytearray(144), 144, 0)
    with pytest.raises(ValueError):
        m.BatchReceiver(bytearray(144), 144, 4096)  # over the kernel's recvmmsg cap
    with pytest.raises((BufferError, TypeError, ValueError)):
        m.BatchReceiver(bytes(144), 144)            # read-only: no slab can be written
    r = m.BatchReceiver(bytearray(144 * 2), 144, 2)
    with pytest.raises(ValueError):
        r.recv(0, [2])                              # slab 2 is outside the arena
    with pytest.raises(ValueError):
        r.recv(0, [-1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = s.fileno()
    s.close()
    with pytest.raises(OSError):
        r.recv(fd, [0])                             # EBADF: a real error, raised
    with pytest.raises(BufferError):
        r.lengths.append(1)                         # filled in place: it cannot move under the receiver
    assert isinstance(r.lengths, array.array) and len(r.lengths) == 2


def test_receive_allocates_nothing_per_datagram(pair):
    rx, send = pair
    r = batch_module().BatchReceiver(bytearray(144 * 64), 144, 64)
    recv, fd, lengths, indices = r.recv, rx.fileno(), r.lengths, list(range(64))
    frame = bytes(61)

    def rounds(n):
        total = 0
        for _ in range(n):
            for _ in range(64):
                send(frame)
            total += recv(fd, indices)
            total += recv(fd, indices)  # the EAGAIN one
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

def endpoint(path: str, slabs: SlabPool, clock_ms: int, **kw):
    """The real UDP path without a loop thread (as test_gateway_udp._endpoint), on the chosen path."""
    need_path(path)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    cfg = line_config()
    line = Line(cfg, lambda: clock_ms)
    ctx = Context(cfg, line, link_pool=None)
    ep = UdpEndpoint(ctx, _NoLoop(), rx, slabs, line.receiver.new_link("udp"), batch=path == "recvmmsg", **kw)
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


def run(path: str, datagrams: list[bytes], slabs: SlabPool | None = None, **kw):
    clock = 1_700_000_000_000
    slabs = slabs or SlabPool({size: 16 for size in UDP_CLASSES})
    ep, line, rx = endpoint(path, slabs, clock, **kw)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for k in range(0, len(datagrams), 100):
            for d in datagrams[k:k + 100]:
                tx.sendto(d, rx.getsockname())
            ep._on_events(0)
        wait_until(lambda: ep._on_events(0) or ep.rx_datagrams + ep.dropped_no_slab >= len(datagrams),
                   what=f"{len(datagrams)} datagrams")
        st = line.objects.trains.get(1025)
        state = {"trains": st and (st.section_id, st.speed_cm_s, st.applied_ms), "applied": ep.checks.applied,
                 "reachable": (line.registry.train_reachable(1025), line.registry.train_reachable(1026))}
        return ep, state, slabs
    finally:
        rx.close()
        tx.close()


def counters(ep) -> dict:
    st = ep.stats()
    del st["recv"], st["rx_batches"]
    return st


def test_both_paths_give_the_same_counters_and_state():
    datagrams = mixed_datagrams(1_700_000_000_000)
    results = {}
    for path in PATHS:
        need_path(path)
        ep, state, slabs = run(path, datagrams)
        assert ep.stats()["recv"] == path
        assert slabs.stats()["total"]["in_use"] == 0
        results[path] = (counters(ep), state)
    batch, each = results["recvmmsg"], results["recv_into"]
    assert batch == each
    assert batch[0] == {"rx_datagrams": 360, "dropped_no_slab": 0, "oversize": 80,
                        "errors": {"duplicate": 40, "bad_crc": 40, "bad_size": 80, "bad_sync": 80,
                                   "unknown_source": 40, "gap": 39 * 9}}  # seq 10r+1: 9 missed a round
    assert batch[1] == {"trains": (120, 139, 1_700_000_000_000), "applied": 80, "reachable": (True, True)}


@pytest.mark.parametrize("path", PATHS)
def test_each_path_drains_to_eagain_and_gives_every_slab_back(path):
    datagrams = [dgram(TrainHeartbeat(i % 256), seq=i, time_ms=1_700_000_000_000) for i in range(1, 501)]
    ep, state, slabs = run(path, datagrams, SlabPool({144: 2 * RECV_BATCH}))
    assert ep.rx_datagrams == 500 and state["applied"] == 500
    s = slabs.stats()["classes"][144]
    assert s["in_use"] == 0 and s["exhausted"] == 0
    if path == "recvmmsg":
        # 100 sent per event: a full batch of 64, then 36 (short: drained, the event ends)
        assert ep.rx_batches == 10
        assert s["high_water"] == RECV_BATCH  # a batch holds its slabs, filled or not, until handled
    else:
        assert ep.rx_batches == 0 and s["high_water"] == 1


@pytest.mark.parametrize("path", PATHS)
def test_small_pool_batches_no_bigger_than_the_free_slabs(path):
    slabs = SlabPool({144: 3})
    held = slabs.acquire_for_recv()  # a slow worker holds one: batches of 2
    datagrams = [dgram(TrainHeartbeat(i), seq=i, time_ms=1_700_000_000_000) for i in range(1, 12)]
    ep, state, _ = run(path, datagrams, slabs)
    assert ep.rx_datagrams == 11 and state["applied"] == 11 and ep.dropped_no_slab == 0
    if path == "recvmmsg":
        assert ep.rx_batches == 6  # 2+2+2+2+2+1
    slabs.release(held[0], held[1])
    assert slabs.stats()["total"]["in_use"] == 0


@pytest.mark.parametrize("path", PATHS)
def test_exhausted_pool_drops_and_counts_on_each_path(path):
    slabs = SlabPool({144: 1})
    held = slabs.acquire_for_recv()
    datagrams = [dgram(TrainHeartbeat(i), seq=i, time_ms=1_700_000_000_000) for i in range(1, 6)]
    ep, state, _ = run(path, datagrams, slabs)
    assert ep.dropped_no_slab == 5 and ep.rx_datagrams == 0 and state["applied"] == 0
    assert slabs.stats()["total"]["exhausted"] >= 5
    slabs.release(held[0], held[1])


def default_path() -> str:
    """The receive path an endpoint built with no ``batch`` argument takes, now."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        return UdpEndpoint(None, _NoLoop(), sock, SlabPool({144: 4}), None).recv_path


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
        UdpEndpoint(None, _NoLoop(), sock, SlabPool({144: 1}), None, batch=True)


