"""Simulated trains (VOBC): TRAIN_STATUS, TRAIN_HEARTBEAT and TRAIN_DIAG over UDP.

Every train is a :class:`SequencedSender` with one outlet, the shared UDP
socket (:class:`UdpOutlet`): each datagram is one frame, sequenced per train,
HEARTBEAT included. Position comes from the :class:`~simulators.line.LineModel`;
coupling fields from the consist's :class:`~simulators.consists.ConsistTimeline`
(a unit stands still while it couples, decouples or is decoupled).

Trains send no HELLO: the gateway takes their clocks as synchronised, so
``time_ms`` is the wall clock.

Runs in the simulator's one asyncio thread (``on_tick`` from the tick loop).
"""
from __future__ import annotations

import logging
import random
import socket

from railcodecs import TrainDiag, TrainHeartbeat, TrainStatus

from .consists import ConsistTimeline
from .sender import SequencedSender

log = logging.getLogger("railgate.simulators")
DIAG_PERIOD_MS = 5000
DIAG_CODES = ((0x0101, 3), (0x0102, 4), (0x0201, 2), (0x0305, 3), (0x0410, 1))   # (code, severity)
MODE_ATO = 0


class UdpOutlet:
    """The trains' one UDP socket toward the gateway (non-blocking; loopback never fills it in practice)."""

    where = "udp"
    after_corrupt = False     # datagrams are independent: garbage may follow anything

    def __init__(self, sim, host: str, port: int) -> None:
        self.sim = sim
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect((host, port))
        self.sender = ""
        self.send_errors = 0

    def write(self, data: bytes, type_name: str) -> None:
        try:
            self.sock.send(data)
        except (BlockingIOError, ConnectionRefusedError):
            self.send_errors += 1  # nobody listening yet (ICMP unreachable): a datagram lost, counted
            return
        self.sim.ledger.wrote(self.sender, "udp", type_name)

    def close(self) -> None:
        self.sock.close()


class _Outlet:
    """The UDP socket as seen by one train (books writes under the train's name)."""

    __slots__ = ("udp", "name", "after_corrupt")
    where = "udp"

    def __init__(self, udp: UdpOutlet, name: str) -> None:
        self.udp, self.name, self.after_corrupt = udp, name, False

    def write(self, data: bytes, type_name: str) -> None:
        self.udp.sender = self.name
        self.udp.write(data, type_name)


class TrainSim(SequencedSender):
    """One train; ``consist`` is its consist's timeline, or None for a lone train."""

    KIND = "train"

    def __init__(self, sim, train_id: int, index: int, udp: UdpOutlet, consist: ConsistTimeline | None) -> None:
        super().__init__(sim, str(train_id), train_id, None)
        self.id, self.index, self.consist = train_id, index, consist
        self._outs = [_Outlet(udp, self.name)]
        self.hb_counter = 0
        self.diag_rng = random.Random(f"{sim.plan.seed}:diag:{train_id}")   # apart from the fault draws

    def outlets(self) -> list:
        return self._outs

    def status(self, t: float) -> TrainStatus:
        sim = self.sim
        section, offset, speed, direction, doors = sim.model.train_position(self.id)
        consist_id = coupling = role = peer = 0
        if self.consist is not None:
            consist_id = self.consist.consist_id
            coupling, role, peer, standing = self.consist.report(self.id, t)
            if standing:
                sim.model.hold(self.id, 2 * sim.tick_ms / 1000)
        return TrainStatus(section, offset, max(-0x8000, min(0x7FFF, speed)), direction, MODE_ATO, consist_id,
                           coupling, role, peer, doors, 0)

    def on_tick(self, tick: int, t: float, step: int = 1) -> None:
        """What came due in the last ``step`` ticks: status at ``--rate``, heartbeat, diagnostics every 5 s."""
        sim = self.sim
        if sim.due(tick, sim.status_interval_ms, self.index, step):
            self.send_seq(self.status(t))
        if sim.due(tick, sim.train_heartbeat_ms, self.index, step):
            self.hb_counter = (self.hb_counter + 1) & 0xFFFF_FFFF
            self.send_seq(TrainHeartbeat(self.hb_counter))
        if sim.due(tick, DIAG_PERIOD_MS, self.index, step):
            self.send_seq(self.diag())

    def diag(self) -> TrainDiag:
        rng = self.diag_rng
        items = tuple((code, sev, rng.randrange(2)) for code, sev in rng.sample(DIAG_CODES, rng.randint(0, 3)))
        return TrainDiag(items)

    def final(self, t: float) -> None:
        """The never-faulted last datagram: makes every earlier drop visible as a gap."""
        self.send_seq(self.status(t), final=True)
