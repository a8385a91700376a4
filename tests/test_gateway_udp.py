"""Trains over UDP: slab pool, checks, state, no allocation per datagram, comm lost/restored."""
from __future__ import annotations

import gc
import socket
import time
import tracemalloc

from gateway_harness import RunningGateway, line_config, wait_until
from gateway.app.context import Context
from gateway.app.runtime import UDP_CLASSES
from gateway.line.line import Line
from gateway.net.slab_pool import SlabPool
from gateway.net.udp_endpoint import UdpEndpoint
from railcodecs import TrainHeartbeat, TrainStatus, encode


def status_msg(section=104, speed=1500, consist=9, role=1, peer=1026):
    return TrainStatus(section, 1000, speed, 0, 0, consist, 2, role, peer, 0, 0)


def dgram(msg, train=1025, seq=1, time_ms=None, dst=1):
    return encode(msg, src=train, dst=dst, seq=seq, time_ms=int(time.time() * 1000) if time_ms is None else time_ms)


def test_train_datagrams_applied_and_bad_ones_counted():
    with RunningGateway(line_config()) as gw:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        addr = ("127.0.0.1", gw.ports["udp"])
        tx.sendto(dgram(status_msg(), seq=1), addr)
        tx.sendto(dgram(status_msg(speed=1600), seq=1), addr)          # repetition
        tx.sendto(dgram(status_msg(), seq=2)[:-1], addr)               # wrong size
        tx.sendto(dgram(status_msg(), train=4242, seq=1), addr)        # not a configured train
        tx.sendto(dgram(TrainHeartbeat(1), train=1026, seq=1), addr)
        wait_until(lambda: gw.udp.rx_datagrams == 5, what="5 datagrams")
        st = gw.ctx.objects.trains[1025]
        assert (st.section_id, st.speed_cm_s, st.consist_id, st.role) == (104, 1500, 9, 1)
        assert gw.udp.checks.errors == {"duplicate": 1, "bad_size": 1, "unknown_source": 1}
        assert gw.ctx.registry.train_reachable(1025) and gw.ctx.registry.train_reachable(1026)
        assert gw.slabs.stats()["total"]["in_use"] == 0
        tx.close()


def test_datagram_longer_than_any_icd_type_is_counted_oversize_not_decoded_from_its_head():
    with RunningGateway(line_config()) as gw:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        addr = ("127.0.0.1", gw.ports["udp"])
        tx.sendto(dgram(status_msg(), seq=1) + bytes(300), addr)      # a valid frame, then 300 more bytes
        tx.sendto(dgram(status_msg(speed=700), seq=2), addr)
        wait_until(lambda: gw.udp.rx_datagrams == 2, what="2 datagrams")
        assert gw.udp.stats()["oversize"] == 1
        assert gw.udp.checks.errors == {"bad_size": 1}
        assert gw.ctx.objects.trains[1025].speed_cm_s == 700
        assert gw.slabs.stats()["total"]["in_use"] == 0
        tx.close()


def test_train_comm_lost_and_restored():
    cfg = line_config()
    object.__setattr__(cfg.trains, "heartbeat_ms", 100)  # lost after 300 ms of silence
    with RunningGateway(cfg) as gw:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        addr = ("127.0.0.1", gw.ports["udp"])
        tx.sendto(dgram(TrainHeartbeat(1), seq=1), addr)
        wait_until(lambda: gw.ctx.events.is_active("TRAIN_COMM_LOST", "train 1025"), what="train lost")
        tx.sendto(dgram(TrainHeartbeat(2), seq=2), addr)
        wait_until(lambda: not gw.ctx.events.is_active("TRAIN_COMM_LOST", "train 1025"), what="train back")
        assert gw.ctx.events.counts["TRAIN_COMM_RESTORED"] >= 1
        tx.close()


class _NoLoop:
    def register(self, *a):
        pass


def _endpoint(slabs, clock_ms: int):
    """The real UDP path without a loop thread: the demo line's Line (its Receiver, ObjectState.apply,
    MAC policy, registry) behind the real link Context; the test calls ``_on_events`` itself."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    cfg = line_config()
    line = Line(cfg, lambda: clock_ms)
    ctx = Context(cfg, line, link_pool=None)      # no TCP links here; no coupling workers to feed
    ep = UdpEndpoint(ctx, _NoLoop(), rx, slabs, line.receiver.new_link("udp"))
    ep.start()
    return ep, line, rx


def _top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int = 10) -> str:
    return "\n".join(str(stat) for stat in after.compare_to(before, "lineno")[:n])


def test_no_allocation_retained_per_datagram():
    """100,000 train datagrams through recv_into a slab, decode, the receiver's checks and the real
    ObjectState.apply: memory stays flat."""
    clock = int(time.time() * 1000)
    slabs = SlabPool({size: 16 for size in UDP_CLASSES})
    ep, line, rx = _endpoint(slabs, clock)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    frames = [dgram(status_msg(section=101 + i % 20, speed=i % 3000), seq=i, time_ms=clock)
              for i in range(1, 100_001)]

    def pump(batch):
        for f in batch:
            tx.sendto(f, rx.getsockname())
        ep._on_events(0)

    for i in range(0, 10_000, 500):
        pump(frames[i:i + 500])  # warm-up: caches, counters, the receiver's window
    gc.collect()
    tracemalloc.start()
    snap_before = tracemalloc.take_snapshot()     # first: its own memory is then part of `before`
    before = tracemalloc.get_traced_memory()[0]
    for i in range(10_000, 100_000, 500):
        pump(frames[i:i + 500])
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    growth = _top_growth(snap_before, tracemalloc.take_snapshot()) if grown >= 4096 else ""
    tracemalloc.stop()
    assert ep.rx_datagrams == 100_000 and ep.checks.applied == 100_000 and ep.checks.errors == {}
    st = line.objects.trains[1025]                  # the last datagram's values, applied for real
    assert (st.section_id, st.speed_cm_s, st.applied_ms) == (101 + 100_000 % 20, 100_000 % 3000, clock)
    assert grown < 4096, f"{grown} bytes retained over 90,000 datagrams; top growth:\n{growth}"
    assert slabs.stats()["total"]["in_use"] == 0
    rx.close(), tx.close()


def test_exhausted_pool_drops_and_counts_without_growing():
    clock = int(time.time() * 1000)
    slabs = SlabPool({144: 1})
    held = slabs.acquire_for_recv()  # someone (a slow worker) holds the only slab
    ep, line, rx = _endpoint(slabs, clock)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(1, 6):
        tx.sendto(dgram(TrainHeartbeat(i), seq=i, time_ms=clock), rx.getsockname())
    wait_until(lambda: ep._on_events(0) or ep.rx_datagrams + ep.dropped_no_slab >= 5, what="5 datagrams read")
    assert ep.dropped_no_slab == 5 and ep.checks.applied == 0
    assert slabs.stats()["total"]["exhausted"] >= 5
    slabs.release(held[0], held[1])
    tx.sendto(dgram(TrainHeartbeat(9), seq=9, time_ms=clock), rx.getsockname())
    wait_until(lambda: ep._on_events(0) or ep.rx_datagrams >= 1, what="the datagram after the release")
    assert ep.checks.applied == 1 and ep.rx_datagrams == 1 and line.registry.train_reachable(1025)
    rx.close(), tx.close()
