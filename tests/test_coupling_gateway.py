"""The coupling engine inside the running gateway: real UDP datagrams in, conditions in ctx.events, status."""
from __future__ import annotations

import copy
import json
import socket
import time

import pytest
from coupling_helpers import CPD, MASTER, SLAVE
from gateway_harness import RunningGateway, line_config, wait_until

from gateway.app import config
from gateway.coupling.engine import DOUBLE_MASTER
from gateway.cli.status_cmd import fetch_status, render_text
from railcodecs import TrainStatus, encode

SRC = "consist 9"


def status_datagram(train, seq, role, peer, time_ms):
    msg = TrainStatus(104, 1000, 0, 0, 0, 9, CPD, role, peer, 0, 0)
    return encode(msg, src=train, dst=1, seq=seq, time_ms=time_ms)


class Windows:
    """Sender times for successive 5 Hz rounds: each round in its own 200 ms pairing window, both trains
    in the same one (a real clock read per round could straddle a window edge between the two trains)."""

    def __init__(self):
        self.bucket = 0

    def next(self) -> int:
        self.bucket = max(self.bucket + 1, int(time.time() * 1000) // 200)  # at most a few windows ahead
        return self.bucket * 200 + 50


def test_double_master_over_udp_raised_once_cleared_once_and_in_status():
    with RunningGateway(line_config(), admin=True) as gw:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        addr = ("127.0.0.1", gw.ports["udp"])
        events = gw.ctx.events
        seq, windows = 0, Windows()
        for _ in range(3):  # both master: raised at the third pair
            seq, t = seq + 1, windows.next()
            tx.sendto(status_datagram(1025, seq, MASTER, 1026, t), addr)
            tx.sendto(status_datagram(1026, seq, MASTER, 1025, t + 30), addr)
        wait_until(lambda: events.is_active(DOUBLE_MASTER, SRC), what="COUPLING_DOUBLE_MASTER raised")
        status = fetch_status(f"http://127.0.0.1:{gw.ports['admin']}")  # the JSON document of /status
        c9 = next(c for c in status["consists"] if c["id"] == 9)
        assert c9["members"] == [1025, 1026] and c9["state"] == "coupled" and c9["roles"] == ["master", "master"]
        assert c9["alarms"] == [DOUBLE_MASTER] and c9["counters"]["double_master"] == 3
        assert len(status["consists"]) == len(gw.cfg.trains.consists)
        assert any(c["name"] == DOUBLE_MASTER and c["source"] == SRC for c in status["conditions"])
        text = render_text(status)
        assert "Consists (10)" in text and "1025+1026" in text and "master/master" in text
        assert "DOUBLE MASTER (evals)" in text and "queue" in text and "FOR (s)" in text
        for _ in range(3):  # master and slave: cleared at the third normal pair
            seq, t = seq + 1, windows.next()
            tx.sendto(status_datagram(1025, seq, MASTER, 1026, t), addr)
            tx.sendto(status_datagram(1026, seq, SLAVE, 1025, t + 30), addr)
        wait_until(lambda: not events.is_active(DOUBLE_MASTER, SRC), what="COUPLING_DOUBLE_MASTER cleared")
        time.sleep(0.1)  # anything late would show now
        assert events.counts[DOUBLE_MASTER] == 1 and events.counts[DOUBLE_MASTER + "_CLEARED"] == 1
        assert events.counts["CONSIST_COUPLED"] == 1
        st = gw.status()
        c9 = next(c for c in st["consists"] if c["id"] == 9)
        assert c9["alarms"] == [] and c9["counters"]["evaluations"] == 6 and c9["roles"] == ["master", "slave"]
        assert (c9["counters"]["unpaired"], c9["counters"]["late"], c9["counters"]["duplicate"]) == (0, 0, 0)
        assert st["coupling"]["raised"][DOUBLE_MASTER] == 1 and st["coupling"]["cleared"][DOUBLE_MASTER] == 1
        assert sum(w["reports"] for w in st["coupling"]["workers"]) == 12
        json.dumps(st)
        tx.close()


def test_coupling_section_read_through_the_parser():
    raw = copy.deepcopy(line_config().raw)
    raw["coupling"] = {"workers": 2, "raise_after": 5}
    with RunningGateway(config.parse(raw, "test-line")) as gw:
        assert len(gw.coupling_workers.stats()) == 2 and gw.coupling.settings.raise_after == 5
    raw["coupling"] = {"workers": 0}
    with pytest.raises(config.ConfigError, match=r"coupling.workers: expected an integer 1..64, got 0"):
        config.parse(raw, "test-line")
