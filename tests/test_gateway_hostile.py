"""Slow and hostile peers, send() racing the heartbeat timeout, link churn, the link bound."""
from __future__ import annotations

import gc
import logging
import os
import random
import socket
import threading
import time
import tracemalloc

from gateway_harness import Device, RunningGateway, line_config, wait_until
from gateway.line.link_state import LinkEvent
from railcodecs import Close, Command, encode


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def up_link(gw, device_id=258):
    return wait_until(lambda: next((lk for lk in list(gw.ctx.links) if lk.alive and lk.device_id == device_id),
                                   None), what="link up")


def test_slow_reader_is_closed_at_the_high_water_mark():
    with RunningGateway(line_config(output_high_water_bytes=64 * 1024)) as gw:
        dev = Device(gw.ports["A"])
        dev.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        dev.hello()
        link = up_link(gw)
        big = encode(Command(1, 1, 301, 0, 7), src=1, dst=258, seq=1, time_ms=0) * 90  # ~4 KiB
        sent = 0
        while link.send(big) and sent < 10_000:  # the device never reads
            sent += 1
            if sent % 200 == 0:
                time.sleep(0.01)
        wait_until(lambda: gw.ctx.counters["closed_slow"] == 1, what="closed as slow")
        assert link.state.value == "closed" and not link.alive
        assert link.send(b"x") is False and link.refused_sends >= 1
        # the queue (what other threads handed to send() and the kernel has not taken) stayed bounded
        assert sent > 0 and 0 < link.queued_high_water <= 64 * 1024


def test_garbage_is_resynced_counted_then_closed_over_the_rate():
    with RunningGateway(line_config(error_rate_limit=20)) as gw:
        dev = Device(gw.ports["A"])
        dev.hello()
        link = up_link(gw)
        dev.sock.sendall(b"\x00" * 5000 + dev.encode(Close(0)).replace(b"\xa5\x5a", b"\xa5\x5a", 1)[:0])
        dev.heartbeat()
        wait_until(lambda: link.checks.errors.get("bad_sync", 0) >= 1, what="bad_sync counted")
        assert link.alive  # a little noise is survivable
        rng = random.Random(1)
        for _ in range(40):  # 40 corrupted frames in well under a second
            frame = bytearray(dev.encode(Command(1, 1, 1, 0, 0), seq=0))
            frame[rng.randrange(24, len(frame) - 4)] ^= 0xFF
            dev.sock.sendall(bytes(frame))
        assert dev.wait_for("CLOSE").message.reason == Close.PROTOCOL_ERROR
        assert gw.ctx.counters["closed_error_rate"] == 1


def test_eight_threads_sending_while_the_heartbeat_timeout_fires():
    """Many rounds: send() from 8 threads races the timeout; no exception, no crash, no fd leak."""
    with RunningGateway(line_config(heartbeat_ms=50)) as gw:
        before = fd_count()
        frame = encode(Command(1, 1, 301, 0, 7), src=1, dst=258, seq=1, time_ms=0)
        for _ in range(15):
            dev = Device(gw.ports["A"], hb_ms=50)
            dev.hello()
            link = up_link(gw)
            errors, accepted, refused = [], [0], [0]
            stop = threading.Event()

            def sender():
                try:
                    while not stop.is_set():
                        if link.send(frame):
                            accepted[0] += 1
                        else:
                            refused[0] += 1
                            if link.state.value == "closed":
                                return
                        time.sleep(0.0005)  # a busy control room, not a flood: the timeout must be what ends it
                except BaseException as exc:  # any exception is a failure
                    errors.append(exc)

            threads = [threading.Thread(target=sender) for _ in range(8)]
            for t in threads:
                t.start()
            # the device heartbeats until the senders are in (on a loaded machine their first send can
            # come after 3 x 50 ms of silence since the handshake), then goes silent: 3 x 50 ms later
            # the link is dead
            wait_until(lambda: accepted[0] > 0 or dev.heartbeat(), what="a send accepted")
            assert dev.wait_for("CLOSE", 5).message.reason == Close.HEARTBEAT_TIMEOUT
            dev.close()  # as a device does after the gateway's CLOSE
            wait_until(lambda: link.state.value == "closed", what="link closed")
            stop.set()
            for t in threads:
                t.join(5)
            assert errors == [] and accepted[0] > 0 and refused[0] > 0
        wait_until(lambda: not gw.ctx.links, what="all links gone")
        assert fd_count() <= before
        assert all(lp.callback_errors == 0 for lp in gw.pool.all_loops())


def test_a_thousand_connect_disconnect_cycles_leave_fds_and_memory_flat(caplog):
    # pytest keeps every captured log record; 2,000 condition warnings would be its memory, not ours
    caplog.set_level(logging.ERROR, logger="railgate")
    with RunningGateway(line_config()) as gw:
        def cycle(n):
            for _ in range(n):
                dev = Device(gw.ports["A"])
                dev.hello()
                dev.close()
            wait_until(lambda: not gw.ctx.links, what="links gone")

        cycle(100)  # warm up pools and caches
        gc.collect()
        fds = fd_count()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        cycle(1000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert fd_count() <= fds
        assert grown < 256 * 1024, f"{grown} bytes retained after 1,000 cycles"
        # receive buffers are reused, not reallocated: a few links overlap (since ICD 1.1 the device closes
        # right after its SESSION_CONFIRM, which is not answered, so the next connect can come before
        # the gateway has read that EOF), never one per cycle
        assert gw.link_pool.stats()["created"] <= 8


def test_links_over_max_links_are_refused_at_their_confirmation_and_counted():
    """max_links counts device links: a third device is accepted (pre-session) and answered, and refused
    with CLOSE reason 2 only when its confirmed session finds no link buffers free."""
    with RunningGateway(line_config(max_links=2)) as gw:
        # long heartbeats: nobody dies of silence during the test (with 100 ms, A and B were dead after
        # 300 ms on a loaded machine, which freed their buffers, and C then timed out: CLOSE reason 1)
        a, b = Device(gw.ports["A"], hb_ms=10_000), Device(gw.ports["B"], net=1, hb_ms=10_000)
        a.hello(), b.hello()
        c = Device(gw.ports["A"], dev_id=513, kind=2, hb_ms=10_000)
        c.hello()  # HELLO_ACK, then SESSION_CONFIRM
        assert c.wait_for("CLOSE", 3).message.reason == Close.PROTOCOL_ERROR
        assert gw.ctx.counters["links_refused"] == 1 and gw.link_pool.stats()["refused"] == 1
        assert gw.link_pool.stats()["created"] == 2



def test_heartbeats_are_counted_so_a_peer_reading_nothing_is_closed_as_slow():
    """Issue 12 item 6: every byte written is counted when queued and when sent, heartbeats too.

    The device keeps beating but reads nothing. The kernel buffers are filled with sends and the
    queue brought to just under the high-water mark; from then on only the gateway's heartbeats
    are written, and they alone must carry the queue over the mark (before the fix they were
    uncounted when queued but subtracted when sent: the count went negative and the bound loosened).
    """
    high_water = 64 * 1024
    with RunningGateway(line_config(output_high_water_bytes=high_water)) as gw:
        dev = Device(gw.ports["A"])
        dev.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        dev.hello()
        link = up_link(gw)
        queued = []
        beat_at = time.monotonic()

        def settled_queue() -> int:
            """The queue once the loop has run what was handed to it; the device beats meanwhile."""
            nonlocal beat_at
            if time.monotonic() >= beat_at:  # the device stays alive: it beats, it just never reads
                dev.heartbeat()
                beat_at = time.monotonic() + 0.03
            time.sleep(0.001)
            queued.append(link.stats()["output_queued_bytes"])
            return queued[-1]

        deadline = time.monotonic() + 5
        while link.stats()["tx_frames"] < 4 and time.monotonic() < deadline:  # HELLO_ACK, 3 heartbeats
            settled_queue()
        assert min(queued) >= 0, f"heartbeats written straight to the kernel made the count {min(queued)}"
        small = encode(Command(1, 1, 301, 0, 7), src=1, dst=258, seq=1, time_ms=0)  # 45 bytes
        # the kernel's buffers first (MBs on loopback), then up to just under the mark
        for frame, stop_at in ((small * 900, 1), (small * 22, high_water - 2048), (small, high_water - 200)):
            for _ in range(10_000):
                if settled_queue() >= stop_at:
                    break
                assert link.send(frame), f"refused at {queued[-1]} bytes queued: {link.stats()}"
            else:
                raise AssertionError(f"queue never reached {stop_at} bytes: {queued[-1]}")
        tx_before = link.stats()["tx_frames"]
        deadline = time.monotonic() + 5
        while gw.ctx.counters["closed_slow"] == 0 and time.monotonic() < deadline:
            settled_queue()
        assert gw.ctx.counters["closed_slow"] == 1, f"not closed; queued {queued[-1]} of {high_water} bytes"
        assert link.stats()["tx_frames"] > tx_before  # heartbeats, and nothing else, went over the mark
        assert min(queued) >= 0 and link.state.value == "closed"
