"""End to end: the simulators' coupling scenarios, as real UDP datagrams, through the gateway's
coupling engine and alarm stage to the embedded Kafka broker. Each abnormal episode gives exactly
one raise and one clear of its alarm on the day's topic, a normal consist none, and the decouple /
couple cycle its info events."""
from __future__ import annotations

import collections

import pytest
from gateway_harness import RunningGateway, line_config, read_alarm_events
from test_simulators import SimThread
from test_simulators_vs_gateway import at_ports

from gateway.app import config
from simulators.consists import parse_scenario
from simulators.runner import Options, Simulation

TRAINS = (1025, 1026, 1027, 1028, 1029, 1030, 1031, 1032)   # consists 9, 10, 11, 12
EXPECTED = {"consist 10": "COUPLING_DOUBLE_MASTER", "consist 11": "COUPLING_DOUBLE_SLAVE",
            "consist 12": "COUPLING_MISMATCH"}


@pytest.mark.slow
def test_coupling_scenarios_give_exactly_the_expected_alarms_on_kafka(tmp_path):
    raw = line_config(state_dir=str(tmp_path / "state")).raw
    cfg = config.parse(raw, "coupling-e2e")
    with RunningGateway(cfg, alarms=True) as gw:
        scenarios = [parse_scenario(s) for s in ("9:decouple@2+3", "10:double_master@2+3",
                                                 "11:double_slave@2+3", "12:mismatch@2+3")]
        sim = Simulation(at_ports(cfg, gw.ports), Options(seed=5, duration_s=8.0, devices=(), trains=TRAINS,
                                                          scenarios=scenarios))
        SimThread(sim).start().join(30)

        def settled(events):  # every journaled event (of any source) read back: nothing still in flight
            journaled = gw.alarms.status()["engine"]["event_seq"]
            return {e["event_seq"] for e in events} >= set(range(1, journaled + 1))
        events = [e for e in read_alarm_events(cfg, lambda e: True, settled,
                                               what="every journaled event delivered and read back")
                  if e["alarm"]["source"].startswith("consist ")]

    alarms = collections.Counter((e["alarm"]["source"], e["alarm"]["code"], e["transition"])
                                 for e in events if e["transition"] != "info")
    want = collections.Counter()
    for source, code in EXPECTED.items():
        want[(source, code, "raise")] = 1
        want[(source, code, "clear")] = 1
    assert alarms == want
    for source, code in EXPECTED.items():  # raised before cleared
        seqs = {e["transition"]: e["event_seq"] for e in events if e["alarm"]["source"] == source}
        assert seqs["raise"] < seqs["clear"], code
    info = collections.Counter((e["alarm"]["source"], e["alarm"]["code"]) for e in events
                               if e["transition"] == "info")
    assert info[("consist 9", "CONSIST_DECOUPLED")] == 1       # the decouple episode ...
    assert info[("consist 9", "CONSIST_COUPLED")] == 2         # ... between the first coupling and the recoupling
