"""Gateway: build the loops, listeners, UDP endpoint and admin API; run; stop gracefully.

Threads (who owns what):

* the thread calling :meth:`Gateway.run` owns the **base loop**: the two
  acceptors, the trains' liveness timer, the start-up check, and signals
  (SIGHUP reload, SIGTERM/SIGINT stop, installed only in the main thread);
* ``io_threads`` **IO loops** (``io-0``...): each owns the TCP links handed to
  it round-robin; ``io-0`` also owns the UDP endpoint (with ``io_threads: 0``
  the base loop does everything);
* the **admin** thread serves HTTP from status snapshots.

``stop()`` is safe from any thread: every link is closed with CLOSE reason 0,
the loops get a moment to flush, then the threads are joined.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

from gateway.app.alarm_stage import AlarmStage
from gateway.app.config import Config, load
from gateway.app.command_stage import CommandStage
from gateway.app.context import Context, new_link
from gateway.app.gc_policy import freeze_long_lived
from gateway.app.identity import identity_lease
from gateway.app.status import build_status
from gateway.base import sd_notify
from gateway.coupling.engine import CouplingEngine
from gateway.coupling.workers import CouplingWorkers
from gateway.line.line import Line
from gateway.line.link_state import LinkEvent
from gateway.net.acceptor import Acceptor, PreSessionBudget, listen_socket
from gateway.net.event_loop import EventLoop
from gateway.net.loop_pool import EventLoopThreadPool
from gateway.net.link_buffers import LinkBuffers
from gateway.net.object_pool import ObjectPool
from gateway.net.udp_endpoint import UdpEndpoint, udp_socket
from railcodecs import speedups

log = logging.getLogger("railgate.gateway")

STOP_GRACE_S = 2.0


class Gateway:
    """One gateway process. Construct in the thread that will call run()."""

    def __init__(self, cfg: Config, *, clock_ms=None, admin: bool = True, alarms: bool = True,
                 relay_factory=None, own_process: bool = False) -> None:
        """``alarms=False`` runs without the alarm stage (tests of the link layer); ``relay_factory``
        replaces the supervised relay process (tests). ``own_process``: the gateway is its process's
        reason to be (`gateway run`): after the start-up grace it freezes what lives then out of the
        garbage collector's reach (:func:`gateway.app.gc_policy.freeze_long_lived`); a gateway embedded
        in another program (tests) leaves that program's collector alone.

        The one place the gateway is assembled: each part gets what it needs here, in dependency
        order (line state, pools, alarm stage and coupling, then the link context the IO side
        calls into, then the IO side); nothing is attached to a part after it is built."""
        self.cfg = cfg
        self.own_process = own_process
        s = cfg.gateway
        # one gateway per identity (gateway/app/identity.py): IdentityHeld here, before anything binds or
        # journals; renewed from start(), given back in _shutdown(); lost to another holder: stop
        self.identity = identity_lease(cfg, on_lost=lambda why: self.stop()) if alarms else None
        if self.identity is not None:
            self.identity.acquire()
        self.line = Line(cfg, clock_ms)
        self.started_ms = self.line.now_ms()
        self.started_mono = time.monotonic()
        #: the per-frame path's implementation, fixed when the line's objects are built (railcodecs.speedups)
        self.implementation = speedups.implementation()
        self.udp_checks = self.line.receiver.new_link("udp")
        # device links only: a connection takes its buffers at its session's confirmation; before it, it
        # lives in the small pre-session budget (gateway/net/acceptor.py)
        self.link_pool = ObjectPool(lambda: LinkBuffers(s.ring_bytes), s.max_links)
        self.pre_session = PreSessionBudget(s.pre_session.max_connections, s.pre_session.max_connections_per_source)
        self.alarms = AlarmStage(cfg, self.line, udp_checks=self.udp_checks,
                                 relay_factory=relay_factory) if alarms else None
        self.coupling = CouplingEngine.from_config(cfg, self.line.events, cfg.coupling)
        self.coupling_workers = CouplingWorkers(self.coupling, cfg.coupling.workers)
        # the command path (gateway/app/command_stage.py): with the gateway's state (its audit journal), the
        # alarm stage's Kafka, and the context's send path (the lambda: the context is built next)
        self.commands = CommandStage(cfg, self.line, lambda dev, msg, now: self.ctx.send_to_device(dev, msg, now),
                                     bootstrap=lambda: getattr(self.alarms, "bootstrap", None)) if alarms else None
        self.ctx = Context(cfg, self.line, link_pool=self.link_pool, alarm_sink=self.alarms,
                           coupling=self.coupling_workers, command_sink=self.commands)
        self.base = EventLoop(name="base")
        self.pool = EventLoopThreadPool(self.base, s.io_threads, coalesce_ms=s.loop_coalesce_ms)
        # A busy or forbidden address is the operator's to fix: the OSError names it ("cannot listen on
        # 127.0.0.1:7001: Address already in use", `gateway run` prints that line); what was bound is closed.
        bound: list = []
        try:
            for ep in (s.net_a, s.net_b):
                bound.append(listen_socket(ep.host, ep.port))
            self.udp_sock = udp_socket(s.udp.host, s.udp.port)
        except OSError:
            for sock in bound:
                sock.close()
            if self.identity is not None:
                self.identity.release()
            raise
        # a device's two links on its home loop (gateway/net/loop_pool.py): with two IO loops or more
        home = self.pool.home_loop if s.io_threads > 1 and s.link_placement == "device" else None
        self.acceptors = [Acceptor(self.ctx, self.base, self.pool, sock, net, self.pre_session,
                                   lambda *args: new_link(self.ctx, *args, home=home))
                          for net, sock in zip(("A", "B"), bound)]
        self.udp: UdpEndpoint | None = None
        self.admin = None
        self._want_admin = admin
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._config_path: str | None = None
        self.last_reload: dict | None = None
        self.stop_grace_s = STOP_GRACE_S  # how long stop() waits for peers to answer CLOSE

    # -- addresses (tests bind port 0) ---------------------------------------------
    @property
    def ports(self) -> dict:
        out = {"A": self.acceptors[0].port, "B": self.acceptors[1].port,
               "udp": self.udp_sock.getsockname()[1]}
        if self.admin is not None:
            out["admin"] = self.admin.port
        return out

    def status(self) -> dict:
        """JSON-ready status snapshot. Any thread."""
        return build_status(self)

    # -- life --------------------------------------------------------------------------
    def start(self, config_path: str | None = None) -> None:
        """Start the IO threads, listeners, UDP and admin API (base loop thread, before run()).

        Signal handlers come first (main thread only): a SIGTERM that arrives while the gateway is
        starting, e.g. a `gateway stop` right after the pidfile appears, is a graceful stop that
        run() carries out, not the default action that kills the process."""
        self._config_path = config_path
        if self.identity is not None:  # renewal thread, and this pid in the locks (a daemon forked since)
            self.identity.start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
            signal.signal(signal.SIGHUP, lambda *_: self.base.queue_in_loop(self.reload))
        if self.alarms is not None:  # before any link: no condition may be raised before the stage listens
            self.alarms.start()
            self.base.call_every(1.0, self.alarms.sample_threats)
        if self.commands is not None:
            self.commands.start()
        self.pool.start()
        udp_loop = self.pool.next_loop()
        self.udp = UdpEndpoint(self.ctx, udp_loop, self.udp_sock, self.udp_checks,
                               coalesce_ms=self.cfg.gateway.udp_coalesce_ms)
        udp_loop.run_in_loop(self.udp.start)
        for acc in self.acceptors:
            acc.start()
        s = self.cfg.gateway
        self.base.call_every(0.1, self._check_trains)
        self.coupling_workers.start()
        self.base.call_every(1.0, lambda: self.coupling.check_timeouts(self.line.now_ms()))
        grace_s = (s.hello_timeout_ms + s.dead_after * s.heartbeat_ms) / 1000
        self.base.call_later(grace_s, self._after_startup_grace)
        if self._want_admin:  # its own loop thread; the routing table is gateway/app/admin_routes.py's
            from gateway.adapters.admin_http import AdminServer
            from gateway.app.admin_routes import gateway_routes
            self.admin = AdminServer(s.admin.host, s.admin.port, gateway_routes(self), **s.admin.server_limits())
            self.admin.start()
        ports = self.ports
        log.info("gateway %s up: net A %s, net B %s, udp %s, admin %s, %d IO threads", s.name, ports["A"],
                 ports["B"], ports["udp"], ports.get("admin", "off"), s.io_threads)
        sd_notify.notify("READY=1")  # systemd Type=notify (no-op without $NOTIFY_SOCKET); WatchdogSec= pings:
        if (watchdog_s := sd_notify.watchdog_interval_s()) is not None:  # a stuck base loop stops them
            self.base.call_every(watchdog_s, lambda: sd_notify.notify("WATCHDOG=1"))

    def run(self) -> None:
        """Run the base loop until stop() (signal handlers are installed by start())."""
        try:
            self.base.run()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Graceful stop. Safe from any thread (and from a signal handler)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        sd_notify.notify("STOPPING=1")  # systemd: the stop is under way (no-op without $NOTIFY_SOCKET)
        self.base.queue_in_loop(self._begin_stop)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def reload(self) -> None:
        """SIGHUP: re-read the config file; apply live settings, report the rest. Base loop."""
        if not self._config_path:
            log.warning("SIGHUP: no config file to reload")
            return
        try:
            new = load(self._config_path)
        except Exception as exc:  # a bad file must not take the running gateway down
            log.error("SIGHUP: config not reloaded: %s", exc)
            self.ctx.counters["reload_errors"] += 1
            return
        live, restart = self.ctx.reload(new)
        self.ctx.counters["reloads"] += 1
        log.warning("SIGHUP: applied %s; need a restart: %s", ", ".join(live) or "nothing",
                    ", ".join(restart) or "nothing")
        self.last_reload = {"applied": live, "restart_needed": restart}

    # -- internals ---------------------------------------------------------------------
    def _check_trains(self) -> None:
        self.line.registry.check_trains(self.line.now_ms(), self.started_ms)

    def _after_startup_grace(self) -> None:
        """Every device has had its time to connect: raise what is still missing, then clear what was
        restored from the journal and is no longer true (alarms true across restarts)."""
        self.line.registry.check_startup(self.line.now_ms())
        if self.alarms is not None:
            self.alarms.reconcile()
        if self.own_process:
            frozen = freeze_long_lived()
            log.info("start-up grace over: %d objects frozen out of the garbage collector's scans", frozen)

    def _begin_stop(self) -> None:
        # a planned stop is not lost communication: one GATEWAY_STOPPING event instead of a
        # DEVICE_COMM_LOST / LINK_REDUNDANCY_LOST per device that would outlive the restart
        self.line.registry.begin_shutdown()
        self.line.events.emit("GATEWAY_STOPPING", self.cfg.gateway.name, self.line.now_ms(),
                              "planned stop: every link closed with CLOSE reason 0")
        for acc in self.acceptors:
            acc.stop()
        for link in self.ctx.links_snapshot():
            link.close(LinkEvent.LOCAL_CLOSE, "gateway stopping")
        deadline = time.monotonic() + self.stop_grace_s

        def wait_links():
            if not self.ctx.links:
                self.base.stop()
            elif time.monotonic() < deadline:
                self.base.call_later(0.02, wait_links)
            else:
                for link in self.ctx.links_snapshot():  # peers that did not answer CLOSE in time: close our end
                    link.close(LinkEvent.LINGER_TIMEOUT, "no answer to CLOSE before shutdown")
                self.base.call_later(0.05, self.base.stop)

        wait_links()

    def _shutdown(self) -> None:
        if self.udp is not None:
            self.udp.loop.run_in_loop(self.udp.stop)
        self.pool.stop()
        self.coupling_workers.stop()  # after the UDP loop: nothing submits any more; drains the queues
        if self.commands is not None:  # no link sends any more: open commands end at the next start (abandon)
            self.commands.stop()
        if self.alarms is not None:  # last: every condition raised above is journaled and flushed
            self.alarms.stop()
        if self.admin is not None:
            self.admin.stop()
        self.base.close()
        if self.identity is not None:  # after the writers: nothing of this gateway writes any more
            self.identity.release()
        self._stopped.set()
        log.info("gateway stopped")
