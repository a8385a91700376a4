"""One simulation run: the line model, every device and train, the tick loop, the clean stop.

Everything shares one asyncio event loop in one thread, so thousands of
devices cost one thread: devices' sockets are asyncio transports, trains share
one UDP socket, and a single tick loop (every ``tick_ms``, 20 ms) steps the
:class:`~simulators.line.LineModel` and asks each sender what is due. Due
times are multiples of the tick in *logical* time (tick number x tick_ms,
staggered per sender), so how many frames a run sends, and which ones are
faulted, depends only on the seed and the options, not on how busy the
machine was: a late tick runs late, none is skipped.

Stop (duration reached, or :meth:`Simulation.request_stop` from a signal
handler in the loop's thread): each train sends a last datagram, each device a
last frame and CLOSE reason 0 on every link, waits up to ``grace_s`` for the
gateway's CLOSE, and the summary is built (``summary.py``).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

from gateway.app.config import Config

from .consists import ConsistTimeline, Scenario
from .devices import DeviceSim
from .faults import LINK_FAULTS, FaultPlan
from .interlocking import MOVE_S
from .line import LineModel, unconfigured_id
from .summary import Ledger
from .track import Track
from .trains import TrainSim, UdpOutlet

log = logging.getLogger("railgate.simulators")
TICK_MS = 20
MODEL_STEP = 5              # ticks per LineModel step (100 ms)
DEVICE_STEP = 5             # a device is looked at every 5 ticks (its heartbeats have 100 ms resolution)
READY_TIMEOUT_S = 5.0


@dataclass
class Options:
    seed: int = 1
    duration_s: float | None = None
    rate_hz: float = 5.0
    heartbeat_ms: int | None = None          # HELLO's heartbeat_ms (default: the line file's gateway.heartbeat_ms)
    status_period_ms: int = 1000             # full status snapshot per device
    plan: FaultPlan | None = None
    scenarios: list[Scenario] = field(default_factory=list)
    devices: tuple | None = None             # selected device configs (None: all)
    trains: tuple | None = None              # selected train ids (None: all)
    grace_s: float = 2.0
    faults_for_s: float | None = None        # rate faults only in the first S logical seconds
    field_events: bool = True                # spontaneous track faults and door alarms of the line model
    switch_move_s: tuple[float, float] = MOVE_S   # how long a switch takes to move (drawn per move)
    track: Track | None = None               # switch/signal places, zones, routes (None: from the line file)


class Simulation:
    """Built and run in one thread (the asyncio loop's); ``request_stop`` from that loop's signal handlers."""

    def __init__(self, cfg: Config, opts: Options) -> None:
        self.cfg, self.opts = cfg, opts
        s = cfg.gateway
        self.gateway_id, self.max_age_ms = s.id, s.max_age_ms
        self.heartbeat_ms = opts.heartbeat_ms or s.heartbeat_ms
        self.status_period_ms = opts.status_period_ms
        self.status_interval_ms = 1000.0 / opts.rate_hz
        self.train_heartbeat_ms = cfg.trains.heartbeat_ms
        self.tick_ms, self.tick = TICK_MS, 0
        # a train is looked at often enough for one status report per look at most
        self.train_step = max(1, int(self.status_interval_ms // TICK_MS))
        self.lag_ms = 0.0
        self.plan = opts.plan or FaultPlan(opts.seed)
        self.ledger = Ledger()
        self.model = LineModel(cfg, random.Random(opts.seed), opts.field_events, opts.track, opts.switch_move_s)
        self.stranger_id = unconfigured_id(cfg)
        self.stopping = False
        self._wake: asyncio.Event | None = None
        self.max_lag_ms = 0.0
        self.devices = [DeviceSim(self, d, i) for i, d in enumerate(opts.devices or cfg.devices)]
        self.udp = None
        self.trains: list[TrainSim] = []
        train_ids = cfg.trains.ids if opts.trains is None else opts.trains
        if train_ids:
            self.udp = UdpOutlet(self, s.udp.host, s.udp.port)
            timelines = self._timelines()
            self.trains = [TrainSim(self, tid, i, self.udp, timelines.get(tid)) for i, tid in enumerate(train_ids)]
        self.targets = {**{d.name: d for d in self.devices}, **{str(d.node_id): d for d in self.devices},
                        **{t.name: t for t in self.trains}}
        self._owners = {attr: {} for attr in ("sections", "signals", "switches")}
        for dev in self.devices:
            for attr, table in self._owners.items():
                for obj in getattr(dev.spec, attr):
                    table.setdefault(obj, []).append(dev)
        self.schedule = list(self.plan.schedule)
        for item in self.schedule:
            target = self.targets.get(item.target)
            if target is None:
                raise ValueError(f"--at {item.at_s:g}:{item.kind}:{item.target}: no simulated device or train "
                                 f"{item.target!r}")
            if item.kind in LINK_FAULTS and (not isinstance(target, DeviceSim) or item.net not in target.spec.nets):
                raise ValueError(f"--at {item.at_s:g}:{item.kind}:{item.target}:{item.net}: {item.target} has no "
                                 f"net {item.net} link")
        self.skipped: list[str] = []

    def _timelines(self) -> dict[int, ConsistTimeline]:
        by_consist: dict[int, list[Scenario]] = {}
        for sc in self.opts.scenarios:
            if sc.consist not in self.cfg.trains.consists:
                raise ValueError(f"--scenario {sc.consist}:{sc.kind}: consist {sc.consist} is not in "
                                 f"trains.consists of {self.cfg.source}")
            by_consist.setdefault(sc.consist, []).append(sc)
        out = {}
        for cid, members in self.cfg.trains.consists.items():
            tl = ConsistTimeline(cid, members, by_consist.get(cid, []), random.Random(f"{self.opts.seed}:consist:{cid}"),
                                 self.status_interval_ms / 1000)
            out.update(dict.fromkeys(members, tl))
        return out

    # -- what senders ask ---------------------------------------------------------------
    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    def faults_active(self) -> bool:
        limit = self.opts.faults_for_s
        return limit is None or self.tick * self.tick_ms < limit * 1000

    def endpoint(self, net: str) -> tuple[str, int]:
        ep = self.cfg.gateway.net_a if net == "A" else self.cfg.gateway.net_b
        return ep.host, ep.port

    def due(self, tick: int, period_ms: float, phase: int = 0, step: int = 1) -> bool:
        """True if a period of ``period_ms`` (staggered by ``phase``) came round in the last ``step`` ticks."""
        shift = (phase * 7 * self.tick_ms) % period_ms
        now = tick * self.tick_ms + shift
        return now // period_ms != (now - step * self.tick_ms) // period_ms

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the run stops."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def request_stop(self) -> None:
        """Stop at the next tick. Loop thread (signal handlers are installed with loop.add_signal_handler)."""
        self.stopping = True
        if self._wake is not None:
            self._wake.set()

    # -- the run ------------------------------------------------------------------------
    async def run(self) -> dict:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for dev in self.devices:
            dev.start()
        if self.devices:
            waiting = [asyncio.create_task(d.ready.wait()) for d in self.devices]
            done, pending = await asyncio.wait(waiting, timeout=READY_TIMEOUT_S)
            for t in pending:
                t.cancel()
            if pending:
                log.warning("%d device(s) not connected on every net after %.0f s; starting anyway",
                            len(pending), READY_TIMEOUT_S)
        ticks = None if self.opts.duration_s is None else round(self.opts.duration_s * 1000 / self.tick_ms)
        start = loop.time()
        while not self.stopping and (ticks is None or self.tick < ticks):
            self._one_tick(loop.time())
            self.tick += 1
            delay = start + self.tick * self.tick_ms / 1000 - loop.time()
            self.lag_ms = max(0.0, -delay * 1000)
            self.max_lag_ms = max(self.max_lag_ms, self.lag_ms)
            await asyncio.sleep(max(0.0, delay))
        await self._shutdown()
        return self.summary(loop.time() - start)

    def _one_tick(self, now: float) -> None:
        t = self.tick * self.tick_ms / 1000
        while self.schedule and self.schedule[0].at_s <= t:
            self._scheduled(self.schedule.pop(0))
        if self.tick % MODEL_STEP:
            self._senders_tick(now, t)
            return
        changes = self.model.step(MODEL_STEP * self.tick_ms / 1000)
        for attr in ("sections", "signals", "switches"):
            table = self._owners[attr]
            for obj in getattr(changes, attr):
                for dev in table.get(obj, ()):
                    dev.changed[attr].add(obj)
        for owners, alarm in changes.alarms:
            for dev in self.devices:
                if dev.spec.id in owners:
                    dev.alarms.append(alarm)
        self._senders_tick(now, t)

    def _senders_tick(self, now: float, t: float) -> None:
        """Each sender runs every ``step`` ticks (its own bucket), handling what came due meanwhile."""
        tick, dstep, tstep = self.tick, DEVICE_STEP, self.train_step
        behind = self.lag_ms
        for dev in self.devices[(-tick) % dstep::dstep]:
            dev.on_tick(tick, now, dstep, behind)
        for train in self.trains[(-tick) % tstep::tstep]:
            train.on_tick(tick, t, tstep)

    def _scheduled(self, item) -> None:
        target = self.targets[item.target]
        if item.kind in LINK_FAULTS:
            if target.link_fault(item.kind, item.net):
                self.ledger.inject(item.kind, target.name)
            else:
                self.skipped.append(f"{item.at_s:g}:{item.kind}:{item.target}:{item.net} (link not up)")
        else:
            target.faults.schedule(item.kind)

    async def _shutdown(self) -> None:
        self.stopping = True
        self._wake.set()
        t = self.tick * self.tick_ms / 1000
        for train in self.trains:
            train.final(t)
        await asyncio.gather(*(dev.stop(self.opts.grace_s) for dev in self.devices))
        if self.udp is not None:
            self.udp.close()

    def summary(self, wall_s: float) -> dict:
        plan = self.plan
        return self.ledger.to_json(
            seed=self.opts.seed, ticks=self.tick, tick_ms=self.tick_ms, logical_s=self.tick * self.tick_ms / 1000,
            rate_hz=self.opts.rate_hz, heartbeat_ms=self.heartbeat_ms, faults=dict(sorted(plan.rates.items())),
            scheduled=[f"{s.at_s:g}:{s.kind}:{s.target}" + (f":{s.net}" if s.net else "") for s in plan.schedule],
            scheduled_skipped=self.skipped,
            scenarios=[f"{s.consist}:{s.kind}@{s.start_s:g}" + (f"+{s.duration_s:g}" if s.duration_s else "")
                       for s in self.opts.scenarios],
            devices=[d.name for d in self.devices], trains=[t.id for t in self.trains],
            timing={"wall_s": round(wall_s, 3), "max_tick_lag_ms": round(self.max_lag_ms, 1),
                    "udp_send_errors": self.udp.send_errors if self.udp else 0})
