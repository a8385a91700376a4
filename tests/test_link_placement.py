"""A device's links on its home IO loop: the pool's choice, and the connection's move after the HELLO.

The acceptor puts a new link on the next IO loop round-robin; once the HELLO names the device, the
link moves to the device's home loop (``gateway/net/loop_pool.py``, ``gateway/net/connection.py``).
These tests use real loops, sockets and the gateway; the demo line's CI-1 (257, keyed) and CI-2 (258)
are on nets A and B.
"""
from __future__ import annotations

import sys
import threading
import time

import pytest

from gateway.net.event_loop import EventLoop
from gateway.net.loop_pool import EventLoopThreadPool
from gateway_harness import KEY_257, Device, RunningGateway, line_config, wait_until
from railcodecs import Close, TrackSections


# -- the pool's choice ------------------------------------------------------------------------------

def test_a_home_is_the_loop_with_fewest_devices_then_stays():
    base = EventLoop(name="base")
    pool = EventLoopThreadPool(base, 3)
    try:
        pool.start()
        homes = [pool.home_loop(k).name for k in (40, 41, 42, 43, 41, 40, 44, 45)]
        assert homes == ["io-0", "io-1", "io-2", "io-0", "io-1", "io-0", "io-1", "io-2"]
        assert pool.homes() == {"io-0": 2, "io-1": 2, "io-2": 2}
    finally:
        pool.stop()
        base.close()


def test_homes_asked_from_many_threads_agree_and_balance():
    """8 threads ask for the same 2,000 devices at once, with the interpreter switching threads every
    microsecond (so a check-then-set without the pool's lock is interrupted between the two)."""
    base = EventLoop(name="base")
    pool = EventLoopThreadPool(base, 2)
    interval = sys.getswitchinterval()
    try:
        pool.start()
        got: list[list] = [[] for _ in range(8)]
        start = threading.Barrier(8)

        def ask(i: int) -> None:
            start.wait(5)
            got[i] = [pool.home_loop(k) for k in range(2000)]
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        sys.setswitchinterval(1e-6)
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(interval)
        pool.stop()
        base.close()
    assert all(g == got[0] for g in got), "two threads were given different homes for one device"
    assert pool.homes() == {}  # (stopped: the pool forgets its homes)
    assert sum(1 for lp in got[0] if lp.name == "io-0") == 1000


def test_without_io_loops_the_home_is_the_base_loop():
    base = EventLoop(name="base")
    try:
        pool = EventLoopThreadPool(base, 0)
        pool.start()
        assert pool.home_loop(258) is base and pool.homes() == {}
        pool.stop()
    finally:
        base.close()


# -- the gateway: links moved to their device's loop ---------------------------------------------------

def _up(gw, n: int) -> list:
    return wait_until(lambda: (lambda up: up if len(up) == n else None)([lk for lk in gw.ctx.links if lk.alive]),
                      what=f"{n} links up")


def test_each_devices_links_share_its_home_loop_and_the_devices_spread():
    """Accepted A(257), B(257), A(258), B(258): round-robin would put every net A link on io-0 and every
    net B link on io-1; each device's links end on one loop, and the two devices on two."""
    with RunningGateway(line_config(io_threads=2)) as gw:
        devs = []
        for dev_id, key in ((257, KEY_257), (258, None)):
            for net in (0, 1):
                d = Device(gw.ports["AB"[net]], dev_id=dev_id, net=net, key=key)
                d.hello()
                devs.append(d)
        up = _up(gw, 4)
        by_device = {}
        for lk in up:
            by_device.setdefault(lk.device_id, set()).add(lk.loop.name)
        assert by_device == {257: {"io-0"}, 258: {"io-1"}}
        assert sorted(lk.moves for lk in up) == [0, 0, 1, 1]
        assert gw.pool.homes() == {"io-0": 1, "io-1": 1}
        st = gw.status()
        loops = {(d["id"], lk["net"]): lk["loop"] for d in st["devices"] for lk in d["links"] if lk["alive"]}
        assert loops == {(257, "A"): "io-0", (257, "B"): "io-0", (258, "A"): "io-1", (258, "B"): "io-1"}
        assert {lp["name"]: lp["devices_at_home"] for lp in st["loops"]} == {"io-0": 1, "io-1": 1}
        for d in devs:
            d.close()


def test_round_robin_placement_leaves_the_links_where_accepted():
    with RunningGateway(line_config(io_threads=2, link_placement="round_robin")) as gw:
        a, b = Device(gw.ports["A"], net=0), Device(gw.ports["B"], net=1)
        a.hello(), b.hello()
        up = _up(gw, 2)
        assert {lk.loop.name for lk in up} == {"io-0", "io-1"} and all(lk.moves == 0 for lk in up)


def _stayer_and_mover(gw) -> tuple[Device, Device, object]:
    """CI-2 connected on nets A and B, no HELLO yet: the two links were accepted on io-0 and io-1
    (round-robin; which net got which depends on what the pool gave out before). A fresh pool makes
    io-0 the device's home at its first HELLO: (the device on io-0, the one on io-1, its link)."""
    devs = {0: Device(gw.ports["A"], net=0), 1: Device(gw.ports["B"], net=1)}
    links = wait_until(lambda: (lambda ls: ls if len(ls) == 2 else None)(list(gw.ctx.links)), what="two links")
    on = {lk.loop.name: lk for lk in links}
    assert set(on) == {"io-0", "io-1"}
    mover = on["io-1"]
    return devs[1 - "AB".index(mover.net)], devs["AB".index(mover.net)], mover


def test_a_moved_link_is_confirmed_takes_frames_and_beats_on_its_new_loop():
    with RunningGateway(line_config(io_threads=2)) as gw:
        stayer, b, link_b = _stayer_and_mover(gw)
        stayer.hello()
        b.hello()
        _up(gw, 2)
        assert link_b.moves == 1 and link_b.loop.name == "io-0"
        for seq in range(1, 51):
            b.send(TrackSections(((111, seq % 2),)), seq=seq)
        sender = gw.ctx.receiver.senders[258]
        wait_until(lambda: sender.applied == 50, what="50 frames on the moved link applied")
        assert gw.ctx.objects.sections[(258, 111)][0] == 0
        beats = 0
        deadline = time.monotonic() + 2
        while beats < 3 and time.monotonic() < deadline:
            b.heartbeat()
            beats = sum(1 for e in b.read(0.1) if getattr(e, "name", "") == "HEARTBEAT") + beats
        assert beats >= 3, "the gateway's heartbeats did not follow the link to its new loop"
        assert link_b.alive


def test_a_session_confirm_that_arrives_while_the_link_is_between_its_loops_is_taken():
    """The home loop is held while the link moves: the device's SESSION_CONFIRM reaches the socket after
    the old loop let go of it and before the home loop took it. Once the home loop runs, the link reads
    it and comes up (its registration reports what is already waiting)."""
    with RunningGateway(line_config(io_threads=2)) as gw:
        stayer, b, link_b = _stayer_and_mover(gw)
        home = next(lp for lp in gw.pool.all_loops() if lp.name == "io-0")
        held, holding = threading.Event(), threading.Event()
        home.run_in_loop(lambda: (holding.set(), held.wait(10)))
        assert holding.wait(5)
        try:
            b.hello()                               # HELLO_ACK from io-1, then the SESSION_CONFIRM
            wait_until(lambda: link_b.moves, what="the link left io-1")
            time.sleep(0.2)                         # the SESSION_CONFIRM is in the socket by now
            assert not link_b.alive and link_b.fd not in home._channels
        finally:
            held.set()
        wait_until(lambda: link_b.alive, what="the link up on its home loop")
        assert link_b.loop is home and link_b.fd in home._channels
        b.send(TrackSections(((111, 1),)), seq=1)
        wait_until(lambda: gw.ctx.receiver.senders[258].applied == 1, what="a frame applied")


def test_a_moved_link_keeps_its_confirmation_deadline():
    """HELLO answered, no SESSION_CONFIRM: the moved link is closed when the confirmation's time (the
    HELLO wait, 400 ms here) runs out, as it would be on its first loop."""
    with RunningGateway(line_config(io_threads=2, hello_timeout_ms=400)) as gw:
        stayer, b, link_b = _stayer_and_mover(gw)
        t0 = time.monotonic()
        b.hello(confirm=False)
        wait_until(lambda: link_b.moves, what="the link moved")
        assert link_b.loop.name == "io-0" and not link_b.alive
        assert b.wait_for("CLOSE", 3).message.reason == Close.PROTOCOL_ERROR
        assert time.monotonic() - t0 < 2.0  # 400 ms, with generous bounds (timings belong in benchmarks)
        wait_until(lambda: link_b not in gw.ctx.links, what="the unconfirmed link gone")


def test_a_close_queued_on_the_loop_a_link_left_runs_on_its_new_loop():
    """A close queued on the old loop before the move (the acceptor's evict, a stop) reaches the link
    after it: it runs on the link's loop now, not on the one it left."""
    with RunningGateway(line_config(io_threads=2)) as gw:
        stayer, b, link_b = _stayer_and_mover(gw)
        b.hello(confirm=False)
        wait_until(lambda: link_b.moves, what="the link moved")
        old = next(lp for lp in gw.pool.all_loops() if lp.name == "io-1")
        ran_on, close = [], link_b.protocol.close

        def close_recording(*args):
            ran_on.append(threading.current_thread().name)
            return close(*args)
        link_b.protocol.close = close_recording
        old.run_in_loop(link_b._close_in_loop, None, "closed by the test")
        assert b.wait_for("CLOSE", 3).message.reason == Close.NORMAL
        assert ran_on == ["io-0"]


@pytest.mark.parametrize("placement", ["device", "round_robin"])
def test_io_threads_1_never_moves(placement):
    with RunningGateway(line_config(io_threads=1, link_placement=placement)) as gw:
        a, b = Device(gw.ports["A"], net=0), Device(gw.ports["B"], net=1)
        a.hello(), b.hello()
        assert all(lk.moves == 0 and lk.loop.name == "io-0" for lk in _up(gw, 2))
