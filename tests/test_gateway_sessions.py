"""ICD 1.1 sessions on real loopback sockets: HELLO, HELLO_ACK with a session nonce, SESSION_CONFIRM,
the session key, replayed recordings, no_session, bad_session, the confirm deadline and rule 7."""
from __future__ import annotations

import time

from gateway_harness import KEY_257, Device, RunningGateway, line_config, wait_until
from railcodecs import Close, Hello, HelloAck, Signals, TrackSections

CI1, CI2 = 257, 258


def close_reason(dev: Device, timeout: float = 5.0) -> int:
    return dev.wait_for("CLOSE", timeout).message.reason


def link_of(gw, dev: Device):
    """The gateway's connection for the test device ``dev`` (matched by its local port)."""
    port = dev.sock.getsockname()[1]
    return wait_until(lambda: next((lk for lk in gw.ctx.links_snapshot()
                                    if lk.peer and lk.peer.endswith(f":{port}")), None), what="the device's link")


def registered(gw, device_id: int, net: str = "A"):
    return gw.ctx.registry.links_of(device_id).get(net)


def test_handshake_then_frames_signed_with_the_session_key():
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"], dev_id=CI1, key=KEY_257)
        ack = dev.hello(confirm=False)
        assert ack.message.result == HelloAck.OK and ack.mac and ack.message.session_nonce != 0
        link = link_of(gw, dev)
        # answered, not yet up: not alive, not registered, the device not reachable
        time.sleep(0.15)
        assert link.state.value == "await_confirm" and not link.alive and registered(gw, CI1) is None
        assert dev.session_key is not None and dev.session_key != KEY_257
        dev.confirm()
        wait_until(lambda: registered(gw, CI1) is link, what="registered at confirmation")
        assert link.alive and gw.ctx.registry.devices[CI1].reachable
        dev.send(Signals(((201, 2),)), seq=1)
        wait_until(lambda: (CI1, 201) in gw.ctx.objects.signals, what="signed frame applied")
        hb = dev.wait_for("HEARTBEAT", 2)
        assert hb.mac  # the gateway's heartbeat verified with K_s by the device's decoder
        assert not link.checks.errors
        ci1 = next(d for d in gw.status()["devices"] if d["id"] == CI1)
        assert ci1["reachable"] and ci1["applied"] == 1 and ci1["sessions"] == 1
        dev.close()


def test_replayed_recorded_hello_is_answered_but_cannot_confirm_and_the_genuine_link_is_untouched():
    with RunningGateway(line_config()) as gw:
        genuine = Device(gw.ports["A"], dev_id=CI1, key=KEY_257, hb_ms=10_000)  # alive without beating
        first_ack = genuine.hello()
        genuine.send(Signals(((201, 2),)), seq=1)  # recorded by the attacker with everything before it
        wait_until(lambda: gw.ctx.objects.signals.get((CI1, 201), (None,))[0] == 2, what="genuine frame applied")
        genuine.send(Signals(((201, 0),)), seq=2)
        wait_until(lambda: gw.ctx.objects.signals[(CI1, 201)][0] == 0, what="second genuine frame applied")
        recording = b"".join(genuine.sent)  # HELLO, SESSION_CONFIRM, SIGNALS seq 1, SIGNALS seq 2
        genuine_link = registered(gw, CI1)

        # the attacker replays the recording, blind, on a new connection on the same net
        replayer = Device(gw.ports["A"], dev_id=CI1, key=KEY_257)
        replayer.device_nonce = genuine.device_nonce  # the recorded HELLO's: lets the test read the answers
        replayer.sock.sendall(recording)
        ack = replayer.wait_for("HELLO_ACK")
        assert ack.message.result == HelloAck.OK
        assert ack.message.session_nonce not in (0, first_ack.message.session_nonce)  # a new session
        fake = link_of(gw, replayer)
        # its recorded SESSION_CONFIRM and frames carry the old session's MAC: bad_mac, none applied
        wait_until(lambda: fake.checks.errors.get("bad_mac") == 3, what="three replayed frames refused")
        assert fake.state.value == "await_confirm" and not fake.alive
        assert close_reason(replayer, 3) == Close.PROTOCOL_ERROR  # the confirm deadline (1 s here)
        # the genuine link: still registered, alive, never told CLOSE 3; nothing replayed was applied
        assert registered(gw, CI1) is genuine_link and genuine_link.alive
        genuine.read(0.2)
        assert "CLOSE" not in [getattr(e, "name", e) for e in genuine.received]
        ci1 = next(d for d in gw.status()["devices"] if d["id"] == CI1)
        assert ci1["applied"] == 2 and ci1["duplicates"] == 0 and ci1["sessions"] == 1
        assert gw.ctx.objects.signals[(CI1, 201)][0] == 0
        genuine.send(Signals(((202, 1),)), seq=3)
        wait_until(lambda: (CI1, 202) in gw.ctx.objects.signals, what="the genuine link still works")
        genuine.close()


def test_replay_on_a_link_without_a_key_is_bad_session():
    """Without a key the nonce echo stops a blind replay: the recorded SESSION_CONFIRM names the old session."""
    with RunningGateway(line_config()) as gw:
        genuine = Device(gw.ports["A"], dev_id=CI2, hb_ms=10_000)
        genuine.hello()
        genuine.send(TrackSections(((111, 1),)), seq=1)
        wait_until(lambda: (CI2, 111) in gw.ctx.objects.sections, what="genuine frame applied")
        replayer = Device(gw.ports["B"], dev_id=CI2, net=0)  # the recording says net A; any port will do
        replayer.sock.sendall(b"".join(genuine.sent))
        replayer.wait_for("HELLO_ACK")
        assert close_reason(replayer, 2) == Close.PROTOCOL_ERROR
        fake_errors = [lk.checks.errors for lk in gw.ctx.links_snapshot() if lk.net == "B"]
        assert not fake_errors or fake_errors[0].get("bad_session") == 1
        ci2 = next(d for d in gw.status()["devices"] if d["id"] == CI2)
        assert ci2["applied"] == 1 and ci2["duplicates"] == 0 and ci2["sessions"] == 1
        assert registered(gw, CI2, "A").alive and registered(gw, CI2, "B") is None
        genuine.close()


def test_status_frame_before_session_confirm_is_no_session_and_not_applied():
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"], dev_id=CI2)
        dev.hello(confirm=False)
        dev.send(Signals(((207, 2),)), seq=1)
        dev.heartbeat()
        link = link_of(gw, dev)
        wait_until(lambda: link.checks.errors.get("no_session") == 1 and link.checks.hb_last == 1,
                   what="no_session counted, the heartbeat let through")
        assert (CI2, 207) not in gw.ctx.objects.signals
        dev.confirm()
        dev.send(Signals(((208, 1),)), seq=2)
        wait_until(lambda: (CI2, 208) in gw.ctx.objects.signals, what="applied after the confirmation")
        assert (CI2, 207) not in gw.ctx.objects.signals
        assert next(d for d in gw.status()["devices"] if d["id"] == CI2)["applied"] == 1
        dev.close()


def test_session_confirm_with_wrong_nonces_is_bad_session_and_closes_with_reason_2():
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"], dev_id=CI2)
        dev.hello(confirm=False)
        link = link_of(gw, dev)
        dev.confirm(session_nonce=dev.session_nonce ^ 0xFF)
        assert close_reason(dev) == Close.PROTOCOL_ERROR
        assert link.checks.errors.get("bad_session") == 1 and registered(gw, CI2) is None


def test_no_session_confirm_within_the_deadline_closes_with_reason_2():
    with RunningGateway(line_config(hello_timeout_ms=600)) as gw:
        dev = Device(gw.ports["A"], dev_id=CI2)
        t0 = time.monotonic()
        dev.hello(confirm=False)
        for _ in range(4):  # heartbeats keep it from being silent; they do not confirm it
            time.sleep(0.1)
            dev.heartbeat()
        assert close_reason(dev, 3) == Close.PROTOCOL_ERROR
        assert 0.55 <= time.monotonic() - t0 < 2.0
        assert "HEARTBEAT" in [getattr(e, "name", e) for e in dev.received]  # beats from the HELLO_ACK on
        assert gw.ctx.counters["confirm_timeouts"] == 1 and registered(gw, CI2) is None


def test_rule_7_an_unconfirmed_link_replaces_nothing():
    with RunningGateway(line_config()) as gw:
        old = Device(gw.ports["A"], dev_id=CI2, hb_ms=10_000)
        old.hello()
        old_link = wait_until(lambda: registered(gw, CI2), what="old link up")
        new = Device(gw.ports["A"], dev_id=CI2)
        new.hello(confirm=False)
        time.sleep(0.3)
        old.read(0.1)
        assert "CLOSE" not in [getattr(e, "name", e) for e in old.received]  # not replaced by a mere HELLO
        assert registered(gw, CI2) is old_link and old_link.alive
        new.confirm()  # a confirmed session does replace it
        assert close_reason(old) == Close.REPLACED
        wait_until(lambda: registered(gw, CI2) is not old_link and registered(gw, CI2) is not None,
                   what="the new link registered")
        new.close()


def test_the_hellos_clock_offset_takes_effect_only_at_confirmation():
    """A replayed HELLO from an hour ago would teach an offset that makes hour-old frames fresh; since it
    cannot confirm, the offset never takes effect (and frames on that link are no_session anyway)."""
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"], dev_id=CI2)
        hour_ago = int(time.time() * 1000) - 3_600_000
        dev.send(Hello(1, 0, 100, "TEST-1", dev.device_nonce), time_ms=hour_ago)
        dev.wait_for("HELLO_ACK")
        link = link_of(gw, dev)
        time.sleep(0.1)
        assert link.checks.offset_ms == 0 and link.checks.pending_offset_ms < -3_500_000
        dev.confirm()
        dev.send(Signals(((209, 1),)), seq=1, time_ms=hour_ago + 50)
        wait_until(lambda: link.checks.offset_ms < -3_500_000, what="offset in effect at confirmation")
        wait_until(lambda: (CI2, 209) in gw.ctx.objects.signals, what="applied by the device's own clock")
        dev.close()
