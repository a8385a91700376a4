"""The gateway on real loopback sockets: HELLO, frames applied, dual net, liveness, close."""
from __future__ import annotations

import time

import pytest

from gateway_harness import Device, RunningGateway, line_config, wait_until
from railcodecs import Close, HelloAck, Signals, TrackSections


def test_hello_frames_and_state_applied():
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"])
        ack = dev.hello()
        assert ack.message.result == HelloAck.OK and ack.message.heartbeat_ms == 100
        dev.send(TrackSections(((111, 1), (112, 0))), seq=1)
        dev.send(Signals(((207, 2),)), seq=2)
        wait_until(lambda: (258, 207) in gw.ctx.objects.signals, what="signal applied")
        assert gw.ctx.objects.sections[(258, 111)][0] == 1
        st = gw.status()
        ci2 = next(d for d in st["devices"] if d["id"] == 258)
        assert ci2["reachable"] and ci2["applied"] == 2
        assert next(lk for lk in ci2["links"] if lk["net"] == "A")["alive"]
        dev.close()


def close_reason(dev: Device, timeout: float = 5.0) -> int:
    return dev.wait_for("CLOSE", timeout).message.reason


def test_the_implementation_in_use_is_the_one_that_takes_the_frames(implementation):
    """Compiled: the loops poll through the C poller, the link's reads go to the C reader and the
    FastLink takes the status frames; pure: none of them exists. (The outcomes being equal, only
    this tells which path produced them.)"""
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"])
        dev.hello()
        for seq in range(1, 21):
            dev.send(TrackSections(((111, seq % 2),)), seq=seq)
        wait_until(lambda: gw.ctx.receiver.senders[258].applied == 20, what="20 frames applied")
        (link,) = [lk for lk in gw.ctx.links if lk.alive]
        handler = link.loop._channels[link.fd].handler
        fast = link.protocol.fast
        if implementation == "compiled":
            assert type(link.loop._poller).__name__ == "Poller" and type(handler).__name__ == "FastReader"
            assert type(link.loop._timers).__module__ == "gateway.net._timers"
            assert fast is not None and fast.frames >= 19  # (the first may share the confirm's read)
        else:
            assert link.loop._poller is None and handler == link._on_events and fast is None
            assert type(link.loop._timers).__module__ == "gateway.net.timer_queue"
        dev.close()


@pytest.mark.parametrize("placement, n_loops", [("round_robin", 2), ("device", 1)])
def test_dual_net_first_copy_wins(placement, n_loops):
    """round_robin: net A and net B on two IO loops (the sender's lock between them); device (the default):
    both links moved to the device's home loop after their HELLOs."""
    with RunningGateway(line_config(io_threads=2, link_placement=placement)) as gw:
        a, b = Device(gw.ports["A"], net=0), Device(gw.ports["B"], net=1)
        a.hello(), b.hello()
        loops = wait_until(lambda: {lk.loop.name for lk in gw.ctx.links if lk.alive} if len(
            [lk for lk in gw.ctx.links if lk.alive]) == 2 else None, what="two links up")
        assert len(loops) == n_loops, f"{placement}: net A and net B on {sorted(loops)}"
        for seq in range(1, 201):
            frame = a.encode(TrackSections(((111, seq % 2),)), seq=seq)
            a.sock.sendall(frame)
            b.sock.sendall(frame)
        sender = gw.ctx.receiver.senders[258]
        wait_until(lambda: sender.applied + sender.duplicates + sender.stale == 400, what="400 copies checked")
        assert sender.applied == 200 and sender.duplicates + sender.stale == 200 and sender.gap == 0
        assert gw.ctx.objects.sections[(258, 111)][0] == 0  # seq 200's value, the latest
        assert not gw.ctx.events.is_active("LINK_REDUNDANCY_LOST", "CI-2")


def test_heartbeat_timeout_flags_dead_then_close_reason_1():
    with RunningGateway(line_config()) as gw:
        a, b = Device(gw.ports["A"], net=0), Device(gw.ports["B"], net=1)
        a.hello(), b.hello()
        t0 = time.monotonic()
        # net A keeps beating, net B goes silent
        deadline = t0 + 1.0
        while time.monotonic() < deadline:
            a.heartbeat()
            b.read(0.05)
            if "EOF" in b.received or any(getattr(e, "name", "") == "CLOSE" for e in b.received):
                break
        assert close_reason(b) == Close.HEARTBEAT_TIMEOUT
        elapsed = time.monotonic() - t0
        assert 0.25 < elapsed < 1.5  # 3 x 100 ms, with generous bounds (timings belong in benchmarks)
        b.wait_for("EOF")  # then the gateway shut its side and closed
        wait_until(lambda: gw.ctx.events.is_active("LINK_REDUNDANCY_LOST", "CI-2"), what="redundancy lost")
        assert not gw.ctx.events.is_active("DEVICE_COMM_LOST", "CI-2")
        assert gw.ctx.counters["heartbeat_timeouts"] == 1


def test_no_hello_in_time_and_frame_before_hello_close_reason_2():
    with RunningGateway(line_config(hello_timeout_ms=300)) as gw:
        silent = Device(gw.ports["A"])
        assert close_reason(silent, 3) == Close.PROTOCOL_ERROR
        rude = Device(gw.ports["A"])
        rude.send(Signals(((207, 1),)), seq=1)
        assert close_reason(rude) == Close.PROTOCOL_ERROR


def test_hello_refusals():
    with RunningGateway(line_config()) as gw:
        unknown = Device(gw.ports["A"], dev_id=4000)
        assert unknown.hello().message.result == HelloAck.UNKNOWN_DEVICE
        assert close_reason(unknown) == Close.PROTOCOL_ERROR
        psd_on_b = Device(gw.ports["B"], dev_id=769, kind=3, net=1)  # PSD-1 is configured on net A only
        assert psd_on_b.hello().message.result == HelloAck.UNKNOWN_DEVICE
        unsigned = Device(gw.ports["A"], dev_id=257)  # CI-1 requires a MAC
        assert unsigned.hello().message.result == HelloAck.MAC_REQUIRED


def test_mac_device_full_path():
    from gateway_harness import KEY_257
    with RunningGateway(line_config()) as gw:
        ci1 = Device(gw.ports["A"], dev_id=257, key=KEY_257)
        ack = ci1.hello()
        assert ack.mac and ack.message.result == HelloAck.OK  # the gateway signs its answers too
        ci1.send(Signals(((201, 2),)), seq=1)
        wait_until(lambda: (257, 201) in gw.ctx.objects.signals, what="signed frame applied")


def test_graceful_close_both_ways():
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"])
        dev.hello()
        dev.send(Close(Close.NORMAL))
        assert close_reason(dev) == Close.NORMAL  # the gateway answers CLOSE 0
        dev.wait_for("EOF")
        other = Device(gw.ports["A"])
        other.hello()
        gw_ref = gw
    # leaving the block stopped the gateway: the device got CLOSE 0 and EOF
    assert close_reason(other) == Close.NORMAL
    other.wait_for("EOF")
    assert not gw_ref.ctx.links


def test_newer_link_replaces_the_old_one_reason_3():
    with RunningGateway(line_config()) as gw:
        old = Device(gw.ports["A"])
        old.hello()
        new = Device(gw.ports["A"])
        new.hello()
        assert close_reason(old) == Close.REPLACED
        new.send(Signals(((207, 1),)), seq=1)
        wait_until(lambda: (258, 207) in gw.ctx.objects.signals, what="frame on the new link")
        assert gw.ctx.registry.devices[258].reachable
