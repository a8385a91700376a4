"""A link's counters outlive it (issue 15 item 7): once a device's link on a net has closed, /status and
`gateway status` show that net down with the last link's counters (not zeros and ``{}``), and totals
over every link of the net. Real gateway, real loopback sockets, both implementations."""
from __future__ import annotations

import socket
import time

from gateway_harness import Device, RunningGateway, line_config, wait_until
from gateway.cli.status_cmd import fetch_status, render_text
from gateway.line.link_protocol import LinkProtocol
from railcodecs import Close, TrackSections

CI2 = 258
#: a slow heartbeat (the device announces it in its HELLO): no liveness close while a test is talking
HB_MS = 1000


def net_entry(status: dict, net: str = "A", device: int = CI2) -> dict:
    dev = next(d for d in status["devices"] if d["id"] == device)
    return next(k for k in dev["links"] if k["net"] == net)


def the_link(gw, dev: Device):
    """The gateway's connection for ``dev`` (by the device's local address, the link's peer)."""
    host, port = dev.sock.getsockname()[:2]
    return wait_until(lambda: next((lk for lk in gw.ctx.links_snapshot() if lk.peer == f"{host}:{port}"), None),
                      what="the device's link")


def send_good_and_bad(dev: Device, good: int, bad: int, first_seq: int = 1) -> int:
    """``bad`` frames with a broken CRC (the last byte flipped), then ``good`` status frames; the next seq.

    The broken frames come first: the decoder judges a bad CRC by the two bytes after it (a sync word:
    the length was right), so a good frame behind them has them counted at once. They carry the seq
    of the first good frame, as a device would resend it (never accepted, so no gap either)."""
    for _ in range(bad):
        frame = bytearray(dev.encode(TrackSections(((112, 1),)), seq=first_seq))
        frame[-1] ^= 0xFF
        dev.sock.sendall(bytes(frame))
    for seq in range(first_seq, first_seq + good):
        dev.send(TrackSections(((111, seq % 2),)), seq=seq)
    return first_seq + good


def counted(gw, net: str, rx_frames: int, errors: dict) -> dict:
    """The live status entry once the link shows exactly these counts (what it shows just before a close)."""
    return wait_until(lambda: (lambda e: e if e["alive"] and e["rx_frames"] == rx_frames and e["errors"] == errors
                               else None)(net_entry(gw.status(), net)), what=f"{rx_frames} frames, {errors}")


def gone(gw, link) -> None:
    """Wait until the gateway has closed ``link``'s socket (its final counters are then in the registry)."""
    wait_until(lambda: link not in gw.ctx.links_snapshot(), what="link closed")


def test_closed_link_keeps_its_counters_in_status_and_the_cli():
    with RunningGateway(line_config(), admin=True) as gw:
        dev = Device(gw.ports["A"], hb_ms=HB_MS)
        dev.hello()
        link = the_link(gw, dev)
        send_good_and_bad(dev, good=5, bad=2)
        # HELLO and SESSION_CONFIRM are frames of the link too
        before = counted(gw, "A", rx_frames=7, errors={"bad_crc": 2})
        assert before["links_opened"] == 1 and before["errors_total"] == 2 and before["rx_frames_total"] == 7
        dev.sock.shutdown(socket.SHUT_WR)  # the device hangs up: EOF, the link closes
        gone(gw, link)
        dev.close()
        status = fetch_status(f"http://127.0.0.1:{gw.ports['admin']}")  # /status, as served
        down = net_entry(status)
        assert (down["state"], down["alive"], down["loop"]) == ("down", False, None)
        assert down["rx_frames"] == before["rx_frames"] == 7
        assert down["errors"] == before["errors"] == {"bad_crc": 2}
        assert down["peer"] == before["peer"] == link.peer
        final = link.stats()
        for key in ("tx_frames", "rx_bytes", "tx_bytes"):
            assert down[key] == final[key] and down[key] >= before[key] > 0, key
        assert down["closed_reason"] == "peer closed the connection"
        now_ms = gw.ctx.now_ms()
        assert down["closed_ms"] <= now_ms and 0 <= down["closed_age_ms"] < 10_000
        assert down["last_rx_age_ms"] >= 0
        time.sleep(0.05)  # ages are computed when status is read; the counters stay
        later = net_entry(gw.status())
        assert later["last_rx_age_ms"] >= down["last_rx_age_ms"] + 50
        assert later["closed_age_ms"] >= down["closed_age_ms"] + 50 and later["closed_ms"] == down["closed_ms"]
        assert (later["rx_frames"], later["errors"]) == (7, {"bad_crc": 2})
        assert (down["links_opened"], down["rx_frames_total"], down["errors_total"]) == (1, 7, 2)
        ci2 = next(d for d in status["devices"] if d["id"] == CI2)
        assert not ci2["reachable"]
        # CI-2's net B never came up: zeros, nothing closed
        never = net_entry(status, "B")
        assert (never["state"], never["rx_frames"], never["errors"], never["closed_ms"]) == ("down", 0, {}, None)
        assert never["links_opened"] == 0

        # `gateway status`: the down link is one row of the device's link table, with its counters
        lines = render_text(status).splitlines()
        row = next(i for i, line in enumerate(lines) if line.split()[:2] == [str(CI2), "CI-2"])
        a_row = lines[row + 2]
        assert a_row.split()[:4] == ["A", "NO", "down", link.peer]
        cells = a_row.split()
        assert cells[5:10] == [str(down["last_rx_age_ms"]), "7", str(down["tx_frames"]), str(down["rx_bytes"]),
                               str(down["tx_bytes"])]
        assert "bad_crc=2" in a_row and "ms ago: peer closed the connection" in a_row
        assert lines[row + 3].split()[:3] == ["B", "NO", "down"] and lines[row + 4].split()[0] != "A"


def test_counters_after_a_graceful_close_are_the_final_ones():
    """The copy taken as the link leaves UP is completed when its socket closes: our CLOSE answer and
    the device's CLOSE are counted after the link went down."""
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"], hb_ms=HB_MS)
        dev.hello()
        link = the_link(gw, dev)
        send_good_and_bad(dev, good=3, bad=1)
        counted(gw, "A", rx_frames=5, errors={"bad_crc": 1})
        dev.send(Close(Close.NORMAL))
        assert dev.wait_for("CLOSE").message.reason == Close.NORMAL  # sent after the link left UP
        dev.wait_for("EOF")
        dev.close()
        gone(gw, link)
        down, final = net_entry(gw.status()), link.stats()
        assert down["state"] == "down" and final["state"] == "closed"
        assert down["rx_frames"] == final["rx_frames"] == 6  # its CLOSE included
        assert down["errors"] == {"bad_crc": 1}
        for key in ("tx_frames", "tx_bytes", "rx_bytes"):
            assert down[key] == final[key], key
        assert down["closed_reason"] == "peer sent CLOSE reason 0"


def test_replaced_link_counts_in_the_totals_and_never_hides_the_newer_one(monkeypatch):
    # the replaced link waits in CLOSING for its device (which does not answer) until the test closes it
    monkeypatch.setattr(LinkProtocol, "linger_s", 60.0)
    with RunningGateway(line_config()) as gw:
        old = Device(gw.ports["A"], hb_ms=HB_MS)
        old.hello()
        old_link = the_link(gw, old)
        send_good_and_bad(old, good=4, bad=3)
        counted(gw, "A", rx_frames=6, errors={"bad_crc": 3})
        new = Device(gw.ports["A"], hb_ms=HB_MS)
        new.hello()
        assert old.wait_for("CLOSE").message.reason == Close.REPLACED
        new_link = the_link(gw, new)
        # the device's numbering goes on after its last accepted frame
        send_good_and_bad(new, good=2, bad=0, first_seq=5)
        live = counted(gw, "A", rx_frames=4, errors={})
        assert live["peer"] == new_link.peer and live["links_opened"] == 2
        assert live["errors_total"] == 3 and live["rx_frames_total"] == 6 + 4

        # the new link goes down while the replaced one is still closing (the old device does not answer)
        new.close()
        gone(gw, new_link)
        assert old_link in gw.ctx.links_snapshot()
        down = net_entry(gw.status())
        assert (down["state"], down["peer"], down["rx_frames"], down["errors"]) == ("down", new_link.peer, 4, {})
        assert (down["links_opened"], down["rx_frames_total"], down["errors_total"]) == (2, 10, 3)

        # the replaced link closing last leaves the newer link's counters shown; its final ones join the totals
        old.close()
        gone(gw, old_link)
        down = net_entry(gw.status())
        assert (down["peer"], down["rx_frames"], down["errors"]) == (new_link.peer, 4, {})
        old_final = old_link.stats()
        assert down["rx_frames_total"] == old_final["rx_frames"] + 4
        assert down["errors_total"] == sum(old_final["errors"].values()) >= 3
