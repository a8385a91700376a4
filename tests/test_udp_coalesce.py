"""The UDP endpoint's wake-up coalescing (gateway/net/udp_endpoint.py, "Wake-ups"), on a real EventLoop
and loopback sockets, for each drain path: the compiled BatchDrain (its busy test in C), recvmmsg with
the Python step, recv_into.

EVENTS -> POLLING when two wake-ups with datagrams come less than an interval apart; while POLLING
no readiness event wakes the loop and a timer drains the socket; a timer's drain that finds the
socket empty moves back to EVENTS, and a datagram after that is reported by an event again. No
datagram is lost or judged twice across the moves.
"""
from __future__ import annotations

import random
import socket
import time

import pytest

from gateway.app.context import Context
from gateway.line.line import Line
from gateway.net.event_loop import EventLoop
from gateway.net.udp_endpoint import UdpEndpoint
from gateway_harness import line_config
from test_gateway_udp import dgram, status_msg
from test_udp_batch import need_path

CLOCK = 1_700_000_000_000
INTERVAL_MS = 60   # long enough that a loaded machine still sees two quick wake-ups as "busy"
PATHS = ["compiled", "recvmmsg", "recv_into"]


@pytest.fixture(params=PATHS)
def rig(request):
    """``(loop, ep, send)``: an endpoint on a real loop in this thread, coalescing every INTERVAL_MS;
    ``send(n)`` sends n good TRAIN_STATUS datagrams (seq going on) to it."""
    path = request.param
    need_path("recvmmsg" if path != "recv_into" else path)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    cfg = line_config()
    line = Line(cfg, lambda: CLOCK)
    ctx = Context(cfg, line, link_pool=None)
    loop = EventLoop("udp-test")
    ep = UdpEndpoint(ctx, loop, rx, line.receiver.new_link("udp"), batch=path != "recv_into",
                     coalesce_ms=INTERVAL_MS)
    if path == "recvmmsg":  # the Python step over recvmmsg: the reference of the compiled one
        ep._step = ep._drain = None
        ep.datagram_step = "python"
    if path == "compiled" and ep._drain is None:
        loop.close()
        rx.close()
        pytest.skip("the compiled train step is not in use (RAILGATE_PURE=1)")
    ep.start()
    loop.run_once(0)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq = [0]

    def send(n: int) -> None:
        for _ in range(n):
            seq[0] += 1
            tx.sendto(dgram(status_msg(speed=seq[0] % 3000), seq=seq[0], time_ms=CLOCK), rx.getsockname())

    yield loop, ep, send, line
    ep.stop()
    loop.close()
    tx.close()


def run_for(loop, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        loop.run_once(0.005)


def enter_polling(loop, ep, send) -> None:
    """Two wake-ups with a datagram each, well inside one interval: POLLING."""
    send(1)
    loop.run_once(1.0)
    send(1)
    loop.run_once(1.0)
    assert ep.polling


def test_two_quick_wake_ups_move_to_polling_where_no_event_wakes_the_loop(rig):
    loop, ep, send, _ = rig
    send(1)
    loop.run_once(1.0)
    assert (ep.rx_datagrams, ep.polling) == (1, False)  # one wake-up: not busy yet
    send(1)
    loop.run_once(1.0)
    assert (ep.rx_datagrams, ep.polling, ep.poll_entries) == (2, True, 1)
    assert ep.stats()["polling"] is True
    # POLLING: datagrams wait in the socket, and a zero-timeout pass of the loop takes no event
    send(50)
    events = loop.events
    loop.run_once(0)
    assert ep.rx_datagrams == 2 and loop.events == events
    # the timer drains them all within about one interval
    run_for(loop, 2.5 * INTERVAL_MS / 1000)
    assert ep.rx_datagrams == 52


def test_an_empty_timer_drain_moves_back_to_events(rig):
    loop, ep, send, _ = rig
    enter_polling(loop, ep, send)
    run_for(loop, 3 * INTERVAL_MS / 1000)   # a drain with nothing: EVENTS again
    assert not ep.polling and ep._poll_timer is None
    send(1)
    loop.run_once(1.0)  # reported by an event, not a timer: well inside one interval
    assert ep.rx_datagrams == 3 and not ep.polling


def test_a_datagram_that_comes_between_the_last_drain_and_the_rearm_is_not_stranded(rig):
    loop, ep, send, _ = rig
    enter_polling(loop, ep, send)
    # the timer's empty drain, then a datagram before EPOLLIN is back on: the re-arm must report it
    drain_all = ep._drain_all

    def drain_then_arrive():
        got = drain_all()
        if not got:
            send(1)
        return got
    ep._drain_all = drain_then_arrive
    run_for(loop, 2 * INTERVAL_MS / 1000)
    ep._drain_all = drain_all
    assert not ep.polling
    loop.run_once(0.2)  # no new datagram: only the re-arm's readiness can wake the loop for it
    assert ep.rx_datagrams == 3


def test_no_datagram_is_lost_or_judged_twice_across_many_moves(rig):
    loop, ep, send, line = rig
    rnd = random.Random(7)
    sent = 0
    for _ in range(60):
        n = rnd.choice((0, 1, 1, 2, 5, 70, 200))
        send(n)
        sent += n
        if rnd.random() < 0.5:
            loop.run_once(0)
        else:
            run_for(loop, rnd.choice((0.001, 0.02, 0.1)))
    run_for(loop, 4 * INTERVAL_MS / 1000)
    assert ep.rx_datagrams == sent and ep.checks.applied == sent and not ep.checks.errors
    assert line.objects.trains[1025].speed_cm_s == sent % 3000
    assert ep.poll_entries >= 2 and not ep.polling


def test_interval_0_never_polls():
    need_path("recv_into")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    cfg = line_config()
    line = Line(cfg, lambda: CLOCK)
    loop = EventLoop("udp-test")
    ep = UdpEndpoint(Context(cfg, line, link_pool=None), loop, rx, line.receiver.new_link("udp"), coalesce_ms=0)
    ep.start()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for seq in range(1, 201):
            tx.sendto(dgram(status_msg(), seq=seq, time_ms=CLOCK), rx.getsockname())
            loop.run_once(0.5)
        assert ep.rx_datagrams == 200 and ep.poll_entries == 0 and not ep.polling
    finally:
        ep.stop()
        loop.close()
        tx.close()
