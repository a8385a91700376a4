"""TimerQueue, EventLoop and the loop thread pool: ordering, cross-thread calls, ET IO, fds."""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time

import pytest

from gateway.net.event_loop import EventLoop
from gateway.net.loop_pool import EventLoopThread, EventLoopThreadPool
from gateway.net.timer_queue import COMPACT_MIN, TimerQueue
from gateway_harness import wait_until

try:
    from gateway.net._timers import TimerQueue as CompiledTimerQueue
except ImportError:  # not built (no C compiler at install time)
    CompiledTimerQueue = None

# -- TimerQueue (clock passed in: no sleeping) ----------------------------------------------------


@pytest.fixture(params=["pure", "compiled"], ids=["queue:pure", "queue:compiled"])
def queue_cls(request):
    """Each TimerQueue test runs on the pure queue (the reference) and on its compiled twin.

    The compiled one is used whatever RAILGATE_PURE says (the loop's choice is not the queue's).
    """
    if request.param == "pure":
        return TimerQueue
    if CompiledTimerQueue is None:
        pytest.skip("gateway.net._timers is not built (no C compiler at install time): "
                    "only the pure TimerQueue is tested")
    return CompiledTimerQueue


def test_timers_run_in_deadline_order_and_ties_in_insertion_order(queue_cls):
    q, out = queue_cls(), []
    q.add(3.0, out.append, args=("c",))
    q.add(1.0, out.append, args=("a",))
    q.add(2.0, out.append, args=("b1",))
    q.add(2.0, out.append, args=("b2",))
    q.add(2.0, out.append, args=("b3",))
    assert q.next_timeout(0.5) == pytest.approx(0.5)
    assert q.run_due(0.9) == 0
    assert q.run_due(2.0) == 4
    assert out == ["a", "b1", "b2", "b3"]
    assert q.next_timeout(2.0) == pytest.approx(1.0)
    q.run_due(10.0)
    assert out[-1] == "c" and q.next_timeout(10.0) is None and len(q) == 0


def test_next_timeout_is_zero_when_overdue(queue_cls):
    q = queue_cls()
    q.add(1.0, lambda: None)
    assert q.next_timeout(5.0) == 0.0


def test_cancel_is_lazy_and_skipped(queue_cls):
    q, out = queue_cls(), []
    h = q.add(1.0, out.append, args=("x",))
    q.add(2.0, out.append, args=("y",))
    h.cancel()
    h.cancel()  # idempotent
    assert len(q) == 1 and q.heap_size == 2  # still in the heap, marked
    assert q.next_timeout(0.0) == pytest.approx(2.0)  # the dead top was dropped
    assert q.heap_size == 1
    q.run_due(3.0)
    assert out == ["y"]


def test_cancel_during_the_run_of_the_same_pass(queue_cls):
    q, out = queue_cls(), []
    victim = None

    def first():
        out.append("first")
        victim.cancel()

    q.add(1.0, first)
    victim = q.add(1.0, out.append, args=("victim",))
    q.add(1.0, out.append, args=("third",))
    assert q.run_due(1.0) == 2
    assert out == ["first", "third"]


def test_a_timer_added_during_a_pass_waits_for_the_next_pass(queue_cls):
    q, out = queue_cls(), []

    def readd():
        out.append("outer")
        q.add(0.5, out.append, args=("inner",))  # already overdue, but added mid-pass

    q.add(1.0, readd)
    assert q.run_due(1.0) == 1
    assert out == ["outer"]
    assert q.next_timeout(1.0) == 0.0
    assert q.run_due(1.0) == 1
    assert out == ["outer", "inner"]


def test_repeat_rearms_and_skips_missed_beats(queue_cls):
    q, ticks = queue_cls(), []
    h = q.add(1.0, lambda: ticks.append(1), interval=1.0)
    q.run_due(1.0)
    assert h.when == 2.0 and len(ticks) == 1
    q.run_due(5.5)  # 2, 3, 4 and 5 were due: one run, no burst
    assert len(ticks) == 2 and h.when == 6.0 and q.missed == 3
    q.run_due(6.0)
    assert len(ticks) == 3 and h.when == 7.0
    h.cancel()
    q.run_due(100.0)
    assert len(ticks) == 3 and len(q) == 0


def test_repeating_timer_cancelling_itself_is_not_rearmed(queue_cls):
    q, ticks = queue_cls(), []
    holder = {}

    def tick():
        ticks.append(1)
        if len(ticks) == 2:
            holder["h"].cancel()

    holder["h"] = q.add(1.0, tick, interval=1.0)
    for t in range(1, 6):
        q.run_due(float(t))
    assert len(ticks) == 2 and q.heap_size == 0


def test_compaction_when_more_than_half_are_cancelled(queue_cls):
    q = queue_cls()
    handles = [q.add(float(i), lambda: None) for i in range(100)]
    for h in handles[:60]:
        h.cancel()
    assert q.heap_size == 100 and len(q) == 40
    q.next_timeout(0.0)
    assert q.heap_size == 40 and q.compactions == 1
    # small heaps are left alone
    q2 = queue_cls()
    small = [q2.add(float(i), lambda: None) for i in range(COMPACT_MIN - 1)]
    for h in small[1:]:
        h.cancel()
    q2.add(100.0, lambda: None)
    assert q2.heap_size == COMPACT_MIN and q2.compactions == 0


def test_a_raising_timer_is_logged_and_the_rest_still_run(queue_cls, caplog):
    q, out = queue_cls(), []
    q.add(1.0, lambda: 1 / 0, interval=1.0)
    q.add(1.0, out.append, args=("after",))
    with caplog.at_level(logging.ERROR):
        assert q.run_due(1.0) == 2
    assert out == ["after"] and q.errors == 1 and len(q) == 1  # the repeating one stays armed
    assert "ZeroDivisionError" in caplog.text


def test_timer_interval_must_be_positive(queue_cls):
    with pytest.raises(ValueError):
        queue_cls().add(1.0, lambda: None, interval=0)


# -- EventLoop ---------------------------------------------------------------------------------


@pytest.fixture
def loop_thread():
    t = EventLoopThread("test-io")
    loop = t.start_loop()
    yield loop
    t.stop()


def test_run_in_loop_from_another_thread_runs_in_the_loop_thread(loop_thread):
    done = threading.Event()
    seen = {}

    def fn(a, b):
        seen["thread"] = threading.get_ident()
        seen["args"] = (a, b)
        done.set()

    loop_thread.run_in_loop(fn, 1, 2)
    assert done.wait(2)
    assert seen == {"thread": loop_thread.thread_id, "args": (1, 2)}
    assert seen["thread"] != threading.get_ident()


def test_run_in_loop_in_the_loop_thread_runs_now():
    loop = EventLoop()
    try:
        out = []
        loop.run_in_loop(out.append, 1)
        assert out == [1]
    finally:
        loop.close()


def test_queue_in_loop_keeps_order_and_defers():
    loop = EventLoop()
    try:
        out = []

        def first():
            out.append("first")
            loop.queue_in_loop(out.append, "queued by a functor")  # next pass, loop wakes itself
            loop.run_in_loop(out.append, "run now")

        loop.queue_in_loop(first)
        loop.queue_in_loop(out.append, "second")
        assert out == []  # deferred even in the loop thread
        loop.run_once(0)
        assert out == ["first", "run now", "second"]
        t0 = time.monotonic()
        loop.run_once(1.0)  # the functor's wake-up must not let the poll sleep
        assert time.monotonic() - t0 < 0.5
        assert out[-1] == "queued by a functor"
    finally:
        loop.close()


def test_cross_thread_calls_all_run_exactly_once(loop_thread):
    n_threads, n_calls = 4, 10_000
    counts = [0] * (n_threads * n_calls)
    wrong_thread = []
    done = threading.Event()
    remaining = [n_threads * n_calls]

    def hit(i):
        counts[i] += 1
        if threading.get_ident() != loop_thread.thread_id:
            wrong_thread.append(i)
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()

    def producer(k):
        for j in range(n_calls):
            loop_thread.run_in_loop(hit, k * n_calls + j)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done.wait(10)
    assert set(counts) == {1} and wrong_thread == []
    stats = loop_thread.stats()
    assert stats["functors_run"] >= n_threads * n_calls
    assert stats["wakeups"] <= n_threads * n_calls  # batched: far fewer in practice


def test_functors_from_one_thread_run_in_order(loop_thread):
    out, done = [], threading.Event()
    for i in range(1000):
        loop_thread.queue_in_loop(out.append, i)
    loop_thread.queue_in_loop(done.set)
    assert done.wait(2)
    assert out == list(range(1000))


def test_a_timer_fires_and_stops_the_loop():
    loop = EventLoop()
    try:
        fired = []
        t0 = time.monotonic()
        loop.call_later(0.05, fired.append, "once")
        loop.call_later(0.08, loop.stop)
        loop.run()
        elapsed = time.monotonic() - t0
        assert fired == ["once"] and 0.075 <= elapsed < 0.5
        assert loop.stats()["timers_run"] == 2
    finally:
        loop.close()


def test_call_every_and_cancel():
    loop = EventLoop()
    try:
        ticks = []

        def tick():
            ticks.append(time.monotonic())
            if len(ticks) == 3:
                h.cancel()
                loop.call_later(0.03, loop.stop)

        h = loop.call_every(0.01, tick)
        loop.run()
        assert len(ticks) == 3
    finally:
        loop.close()


def test_timers_scheduled_from_another_thread(loop_thread):
    done = threading.Event()
    where = []
    loop_thread.call_later(0.01, lambda: (where.append(threading.get_ident()), done.set()))
    cancelled = loop_thread.call_later(0.01, where.append, "never")
    cancelled.cancel()
    assert done.wait(2)
    time.sleep(0.03)
    assert where == [loop_thread.thread_id]


def test_edge_triggered_read_on_a_socketpair():
    loop = EventLoop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        got, calls, masks = bytearray(), [], []
        buf = bytearray(4096)

        def on_readable(mask):
            masks.append(mask)
            while True:  # edge-triggered: drain
                try:
                    n = a.recv_into(buf)
                except BlockingIOError:
                    calls.append("EAGAIN")
                    return
                calls.append(n)
                got.extend(buf[:n])
                if n < len(buf):
                    return  # short read on a stream socket: the kernel buffer is empty

        loop.register(a.fileno(), select.EPOLLIN, on_readable)
        payload = os.urandom(10_000)
        b.sendall(payload)
        loop.run_once(1.0)
        assert bytes(got) == payload
        assert calls == [4096, 4096, 1808]  # no extra read that would only say EAGAIN
        assert masks[0] & select.EPOLLIN
        # edge-triggered: nothing new, no event, even though we poll again
        loop.run_once(0.02)
        assert len(masks) == 1
        b.send(b"more")
        loop.run_once(1.0)
        assert len(masks) == 2 and bytes(got).endswith(b"more")
        loop.unregister(a.fileno())  # before close, always
    finally:
        a.close()
        b.close()
        loop.close()


def test_edge_triggered_undrained_readiness_is_not_reported_again():
    loop = EventLoop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        events = []
        loop.register(a.fileno(), select.EPOLLIN, lambda m: events.append(a.recv(1)))  # reads 1 byte only
        b.send(b"abc")
        loop.run_once(1.0)
        loop.run_once(0.02)
        assert events == [b"a"]  # 'bc' still waits: why handlers must read until EAGAIN
        loop.unregister(a.fileno())
    finally:
        a.close()
        b.close()
        loop.close()


def test_modify_enables_epollout_while_output_is_pending():
    loop = EventLoop()
    a, b = socket.socketpair()
    try:
        masks = []
        loop.register(a.fileno(), select.EPOLLIN, masks.append)
        loop.run_once(0.02)
        assert masks == []
        loop.modify(a.fileno(), select.EPOLLIN | select.EPOLLOUT)
        loop.run_once(1.0)
        assert masks and masks[0] & select.EPOLLOUT
        loop.modify(a.fileno(), select.EPOLLIN)
        loop.unregister(a.fileno())
        with pytest.raises(KeyError):
            loop.unregister(a.fileno())
    finally:
        a.close()
        b.close()
        loop.close()


def test_events_for_fds_unregistered_or_reused_within_a_batch_are_dropped():
    loop = EventLoop()
    p1, p2 = socket.socketpair(), socket.socketpair()
    extra: list = []
    try:
        first, second = p1[0], p2[0]
        calls = []

        def new_handler(mask):
            calls.append("new socket got a stale event")

        def handler(name, mask):
            calls.append(name)
            other = second if name == "first" else first
            loop.unregister(other.fileno())
            number = other.fileno()
            other.close()
            pair = socket.socketpair()  # the lowest free number: usually the one just closed
            extra.extend(pair)
            if pair[0].fileno() == number:
                loop.register(pair[0].fileno(), select.EPOLLIN, new_handler)

        loop.register(first.fileno(), select.EPOLLIN, lambda m: handler("first", m))
        loop.register(second.fileno(), select.EPOLLIN, lambda m: handler("second", m))
        p1[1].send(b"x")
        p2[1].send(b"x")
        wait_until(lambda: len(select.select([first, second], [], [], 0)[0]) == 2,
                   what="both sockets readable")             # one epoll_wait must return both
        loop.run_once(1.0)
        assert len(calls) == 1 and calls[0] in ("first", "second")
    finally:
        for s in (*p1, *p2, *extra):
            s.close()
        loop.close()


def test_an_fd_unregistered_by_an_earlier_handler_of_the_batch_gets_no_event():
    """The plain "gone" case (no reuse of the number): its event of this batch is dropped, and so
    is every later one (the compiled poller's mirror of the registrations is kept in step)."""
    loop = EventLoop()
    p1, p2 = socket.socketpair(), socket.socketpair()
    try:
        calls = []

        def handler(name, other, mask):
            calls.append(name)
            if other.fileno() in loop._channels:
                loop.unregister(other.fileno())

        loop.register(p1[0].fileno(), select.EPOLLIN, lambda m: handler("first", p2[0], m))
        loop.register(p2[0].fileno(), select.EPOLLIN, lambda m: handler("second", p1[0], m))
        p1[1].send(b"x")
        p2[1].send(b"x")
        wait_until(lambda: len(select.select([p1[0], p2[0]], [], [], 0)[0]) == 2, what="both sockets readable")
        loop.run_once(1.0)
        assert len(calls) == 1
        assert len(loop._channels) == 1
    finally:
        for s in (*p1, *p2):
            s.close()
        loop.close()


def test_exceptions_in_callbacks_are_logged_and_the_loop_goes_on(caplog):
    loop = EventLoop()
    a, b = socket.socketpair()
    try:
        loop.register(a.fileno(), select.EPOLLIN, lambda m: 1 / 0)
        loop.queue_in_loop(lambda: [][1])
        loop.call_later(0, lambda: {}["k"])
        out = []
        loop.call_later(0.02, loop.stop)
        loop.queue_in_loop(out.append, "still running")
        b.send(b"x")
        with caplog.at_level(logging.ERROR):
            loop.run()
        assert out == ["still running"]
        assert loop.stats()["callback_errors"] == 3
        for name in ("ZeroDivisionError", "IndexError", "KeyError"):
            assert name in caplog.text
        loop.unregister(a.fileno())
    finally:
        a.close()
        b.close()
        loop.close()


def test_stop_from_another_thread():
    loop = EventLoop()
    try:
        threading.Timer(0.05, loop.stop).start()
        t0 = time.monotonic()
        loop.run()  # no timers: the poll would sleep up to the 1 s cap without the wake-up
        assert time.monotonic() - t0 < 0.5
    finally:
        loop.close()


def test_stop_from_a_signal_handler_wakes_the_poll():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    loop = EventLoop()
    old = signal.signal(signal.SIGUSR1, lambda *_: loop.queue_in_loop(loop.stop))
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        t0 = time.monotonic()
        loop.run()
        assert time.monotonic() - t0 < 0.5
    finally:
        signal.signal(signal.SIGUSR1, old)
        loop.close()


def test_functors_queued_before_stop_run_before_run_returns(loop_thread):
    out = []
    loop_thread.queue_in_loop(out.append, "last words")
    t = threading.Thread(target=loop_thread.stop)
    t.start()
    t.join()
    deadline = time.monotonic() + 2
    while loop_thread.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert out == ["last words"]


def test_two_loops_in_one_thread_are_refused():
    loop = EventLoop()
    try:
        with pytest.raises(RuntimeError, match="already has an event loop"):
            EventLoop()
        assert EventLoop.current() is loop
    finally:
        loop.close()
    again = EventLoop()  # a closed loop frees the thread's slot
    again.close()


def test_loop_thread_only_methods_refuse_other_threads(loop_thread):
    with pytest.raises(RuntimeError):
        loop_thread.register(0, select.EPOLLIN, lambda m: None)
    with pytest.raises(RuntimeError):
        loop_thread.assert_in_loop_thread()
    with pytest.raises(RuntimeError):
        loop_thread.run()


def test_no_fd_leak_after_200_loops():
    def fds():
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    for _ in range(200):
        loop = EventLoop()
        loop.queue_in_loop(lambda: None)
        loop.run_once(0)
        loop.close()
        loop.close()  # idempotent
    assert fds() == before


def test_closed_loop_drops_functors_without_touching_a_reused_fd(caplog):
    loop = EventLoop()
    loop.close()
    with caplog.at_level(logging.WARNING):
        loop.queue_in_loop(lambda: None)
    assert loop.stats()["dropped_functors"] == 1
    loop.stop()  # no error, no write
    with pytest.raises(RuntimeError):
        loop.run()


# -- loop threads and the pool -------------------------------------------------------------


def test_pool_round_robin_over_3_threads():
    base = EventLoop(name="base")
    pool = EventLoopThreadPool(base, 3)
    try:
        pool.start()
        picked = [pool.next_loop() for _ in range(7)]
        assert [lp.name for lp in picked] == ["io-0", "io-1", "io-2", "io-0", "io-1", "io-2", "io-0"]
        assert len({lp.thread_id for lp in picked}) == 3 and base not in picked
        assert pool.loop_for_hash(4) is pool.loop_for_hash(7) is picked[1]
        assert pool.all_loops() == picked[:3]
        idents, done = [], threading.Barrier(4)
        for lp in picked[:3]:
            lp.run_in_loop(lambda lp=lp: (idents.append(threading.get_ident() == lp.thread_id), done.wait(2)))
        done.wait(2)
        assert idents == [True, True, True]
    finally:
        pool.stop()
        base.close()
    assert all(lp.closed for lp in picked)
    assert not any(t.name.startswith("io-") for t in threading.enumerate())


def test_pool_of_zero_threads_uses_the_base_loop():
    base = EventLoop(name="base")
    try:
        pool = EventLoopThreadPool(base, 0)
        inits = []
        pool.start(init=inits.append)
        assert pool.next_loop() is base and pool.loop_for_hash(12345) is base
        assert pool.all_loops() == [base] and inits == [base]
        pool.stop()
    finally:
        base.close()


def test_loop_thread_init_runs_in_the_thread_and_failures_surface():
    seen = []
    t = EventLoopThread("init-test", init=lambda lp: seen.append(lp.is_in_loop_thread()))
    t.start_loop()
    t.stop()
    assert seen == [True] and not t.is_alive() and t.loop.closed

    def boom(loop):
        raise OSError("no")

    bad = EventLoopThread("bad", init=boom)
    with pytest.raises(RuntimeError, match="failed to start"):
        bad.start_loop()


# -- coalescing (interrupt moderation) ------------------------------------------------------------

def test_a_busy_loop_waits_out_the_coalescing_interval_but_never_past_a_timer():
    """Woken with events, the next poll is put off until ``coalesce_s`` after that wake-up, so what arrived
    meanwhile is handled in one wake-up; a timer due sooner still fires on time, and a loop whose last poll
    found nothing (a quiet spell, its timers) polls at once. (0.3 s: wide margins on a loaded machine.)"""
    loop = EventLoop()
    loop.coalesce_s = 0.3
    a, b = socket.socketpair()
    a.setblocking(False)
    got: list = []

    def on_readable(mask):
        while True:
            try:
                data = a.recv(4096)
            except BlockingIOError:
                return
            got.append((time.monotonic(), data))
    try:
        loop.register(a.fileno(), select.EPOLLIN, on_readable)
        b.send(b"1")
        loop.run_once(2.0)                           # quiet before: polls at once
        woke = time.monotonic()
        assert [d for _, d in got] == [b"1"] and loop.coalesced == 0
        b.send(b"2")
        b.send(b"3")
        loop.run_once(2.0)                           # busy: waits out the interval, then takes both
        assert b"".join(d for _, d in got[1:]) == b"23" and got[-1][0] - woke >= 0.25
        assert loop.coalesced == 1 and loop.stats()["coalesced"] == 1
        fired: list = []
        loop.call_later(0.05, lambda: fired.append(time.monotonic()))
        t0 = time.monotonic()
        b.send(b"4")
        loop.run_once(2.0)                           # busy again, but the timer is due in 50 ms
        assert fired and fired[0] - t0 < 0.2, "the coalescing wait held a timer back"
        loop.run_once(2.0)                           # the rest of the interval, then "4"
        assert got[-1][1] == b"4"
        quiet = time.monotonic()
        loop.run_once(0.05)                          # nothing: the poll times out
        b.send(b"5")
        loop.run_once(2.0)                           # after a quiet poll: at once
        assert got[-1][1] == b"5" and got[-1][0] - quiet < 0.2
        loop.unregister(a.fileno())
    finally:
        a.close()
        b.close()
        loop.close()


def test_a_signal_during_the_coalescing_wait_still_wakes_the_poll():
    """The loop counts as polling while it waits out the interval: a signal handler that queues a call then
    (SIGTERM's stop, on a gateway whose base loop is its IO loop) writes the eventfd, so the call runs
    right after the wait, not after the poll's whole timeout (2 s here). (Another thread's calls always
    write it.)"""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    loop = EventLoop()
    loop.coalesce_s = 0.3
    a, b = socket.socketpair()
    a.setblocking(False)
    ran: list = []
    old = signal.signal(signal.SIGUSR1, lambda *_: loop.queue_in_loop(lambda: ran.append(time.monotonic())))
    try:
        loop.register(a.fileno(), select.EPOLLIN, lambda mask: a.recv(4096))
        b.send(b"x")
        loop.run_once(2.0)                           # busy: the next iteration waits out 0.3 s
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.start()
        t0 = time.monotonic()
        loop.run_once(2.0)
        timer.join()
        assert ran and ran[0] - t0 < 1.0, "the call waited for the poll's timeout"
        loop.unregister(a.fileno())
    finally:
        signal.signal(signal.SIGUSR1, old)
        a.close()
        b.close()
        loop.close()


def test_the_pool_gives_its_io_loops_the_coalescing_interval():
    base = EventLoop(name="base")
    pool = EventLoopThreadPool(base, 2, coalesce_ms=3)
    try:
        pool.start()
        assert [lp.coalesce_s for lp in pool.all_loops()] == [0.003, 0.003] and base.coalesce_s == 0
    finally:
        pool.stop()
        base.close()
    base = EventLoop(name="base")
    try:
        pool = EventLoopThreadPool(base, 0, coalesce_ms=2)
        pool.start()
        assert base.coalesce_s == 0.002          # the base loop is the IO loop
        pool.stop()
    finally:
        base.close()
