"""Trains over UDP: the receive arena, checks, state, no allocation per datagram, comm lost/restored."""
from __future__ import annotations

import gc
import socket
import time
import tracemalloc

from gateway_harness import RunningGateway, line_config, wait_until
from gateway.app.context import Context
from gateway.line.line import Line
from gateway.net.udp_endpoint import RECV_BATCH, UdpEndpoint
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


def _endpoint(clock_ms: int):
    """The real UDP path without a loop thread: the demo line's Line (its Receiver, ObjectState.apply,
    MAC policy, registry) behind the real link Context; the test calls ``_on_events`` itself."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    cfg = line_config()
    line = Line(cfg, lambda: clock_ms)
    ctx = Context(cfg, line, link_pool=None)      # no TCP links here; no coupling workers to feed
    ep = UdpEndpoint(ctx, _NoLoop(), rx, line.receiver.new_link("udp"))
    ep.start()
    return ep, line, rx


def _top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int = 10) -> str:
    return "\n".join(str(stat) for stat in after.compare_to(before, "lineno")[:n])


def test_no_allocation_retained_per_datagram():
    """100,000 train datagrams received into the arena (by the implementation's path), decoded, through
    the receiver's checks and the real ObjectState.apply: memory stays flat."""
    clock = int(time.time() * 1000)
    ep, line, rx = _endpoint(clock)
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
    rx.close(), tx.close()


def test_a_burst_larger_than_the_arena_is_all_received_in_batches():
    """500 datagrams queued at once, 7.8 times the arena's slots: one readiness event drains them all,
    on recvmmsg in batches of at most RECV_BATCH (datagram j of each into slot j), every one applied."""
    clock = int(time.time() * 1000)
    ep, line, rx = _endpoint(clock)
    assert len(ep.arena) == RECV_BATCH * 144
    batches: list[int] = []
    if ep.recv_path == "recvmmsg" and ep.datagram_step == "compiled":
        run = ep._step.run                        # wrapped to record each batch's size (the real step runs)
        ep._drain = type(ep._drain)(ep._batch, ep.fd, ep, lambda lengths, n, now: batches.append(n) or run(
            lengths, n, now), ep.ctx.now_ms)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(1, 501):
        tx.sendto(dgram(TrainHeartbeat(i), seq=i, time_ms=clock), rx.getsockname())
    ep._on_events(0)                              # one event: edge-triggered, so it must drain to EAGAIN
    assert ep.rx_datagrams == 500 and ep.checks.applied == 500 and ep.checks.errors == {}
    assert line.registry.train_reachable(1025)
    if ep.recv_path == "recvmmsg":
        assert ep.rx_batches == 8                 # 7 x 64, then 52: short, drained
        if batches:
            assert batches == [64] * 7 + [52]
    else:
        assert ep.rx_batches == 0
    rx.close(), tx.close()


def test_the_configured_gateway_coalesces_wake_ups_and_applies_every_datagram():
    """gateway.udp_coalesce_ms reaches the endpoint (default 1; 50 here, so that a loaded machine still
    sees two wake-ups as quick): two quick wake-ups move it to POLLING, a burst is then drained on its
    timer with every datagram applied, and a quiet socket moves it back to EVENTS."""
    assert line_config().gateway.udp_coalesce_ms == 1
    cfg = line_config()
    object.__setattr__(cfg.gateway, "udp_coalesce_ms", 50)
    with RunningGateway(cfg) as gw:
        assert gw.udp.stats()["coalesce_ms"] == 50
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        addr = ("127.0.0.1", gw.ports["udp"])
        for seq in (1, 2):
            tx.sendto(dgram(status_msg(speed=seq), seq=seq), addr)
            wait_until(lambda: gw.udp.rx_datagrams == seq, what=f"datagram {seq}")
        assert gw.udp.polling and gw.udp.poll_entries == 1
        for seq in range(3, 3001):
            tx.sendto(dgram(status_msg(speed=seq), seq=seq), addr)
        wait_until(lambda: gw.udp.rx_datagrams == 3000, what="3,000 datagrams")
        assert gw.udp.checks.applied == 3000 and gw.ctx.objects.trains[1025].speed_cm_s == 3000
        wait_until(lambda: not gw.udp.polling, what="back to EVENTS")
        tx.close()
