"""A fault-free line raises no alarm at all (issue 13 item 2: no nuisance alarms).

The simulators run every device of the demo line (both nets, signed links, ICD 1.1 sessions) and
every train, with no injected faults and no field events (``--no-field-events``: the line model's
spontaneous track circuit faults and door alarms are true alarms), against the real gateway with its alarm stage for ``RAILGATE_SOAK_S`` seconds (20 in the
suite; the 10-minute run of the issue is ``RAILGATE_SOAK_S=600 pytest tests/test_clean_run_no_alarms.py``).
Before the simulators stop, the journal must hold no raise and the table no alarm: dual-net
copies are not repetitions, clean links are not threats. (When the simulators stop, their devices
leave: the communication alarms then are true ones, and not part of this test.)
"""
from __future__ import annotations

import os
import time

from gateway_harness import QuietRelay, RunningGateway, line_config
from test_simulators import SimThread
from test_simulators_vs_gateway import at_ports

from alarms.journal import Journal
from alarms.model import AlarmEvent
from simulators.runner import Options, Simulation

SOAK_S = float(os.environ.get("RAILGATE_SOAK_S", "20"))


def _journal(path: str) -> list[AlarmEvent]:
    journal = Journal(path)
    try:
        return [AlarmEvent.decode(row.value) for row in journal.read_after(0, 1_000_000)]
    finally:
        journal.close()


def test_a_fault_free_run_raises_no_alarm(tmp_path):
    cfg = line_config(state_dir=str(tmp_path / "state"))
    with RunningGateway(cfg, alarms=True, relay_factory=QuietRelay) as gw:
        sim = Simulation(at_ports(cfg, gw.ports), Options(seed=3, duration_s=SOAK_S + 3, heartbeat_ms=250,
                                                                 field_events=False))
        runner = SimThread(sim).start()
        time.sleep(SOAK_S)                      # the run under test: anything raised meanwhile counts
        events = _journal(str(tmp_path / "state" / "journal.db"))
        table = gw.alarms.service.snapshot().result(5)[1]
        status = gw.status()
        summary = runner.join(SOAK_S + 30)
    raised = [f"{e.alarm} {e.text}" for e in events if e.transition == "raise"]
    assert raised == [] and table == []
    applied = sum(d["applied"] for d in status["devices"]) + sum(t["applied"] for t in status["trains"])
    copies = sum(d["dual_net_copies"] for d in status["devices"])
    assert applied > 50 * SOAK_S and copies > 5 * SOAK_S              # the line really ran, on both nets
    assert all(not link["errors"].get("duplicate") for d in status["devices"] for link in d["links"])
    assert summary["expected"]["devices"]                              # the simulator's own account exists
