"""Simulated interlockings, zone controllers and platform doors: TCP links on net A and net B.

Per device, per configured net, one :class:`Link` (an ``asyncio.Protocol``)
lives through: connect -> HELLO (a fresh ``device_nonce``) -> HELLO_ACK (the
gateway's ``session_nonce``) -> SESSION_CONFIRM -> up (heartbeats both ways)
-> lost or closed -> reconnect after a pause. From the HELLO_ACK on, a device
with a key signs every frame of that link with the link's session key ``K_s``
(ICD 1.1), so net A and net B copies of one frame differ in their MAC. The device (:class:`DeviceSim`)
sends every sequenced frame on each link that is up with the same seq
(``sender.py``); HELLO, HEARTBEAT and CLOSE carry seq 0 and a per-link
heartbeat counter. It answers HELLO_ACK refusals by retrying later, COMMAND
with COMMAND_RESULT (its :class:`~simulators.commands.CommandDesk`: the first
copy of a command_id acts, fencing tokens per zone; a result that waits for a
switch or a route goes out after the status frames of the tick that shows it),
and the gateway's CLOSE with CLOSE reason 0.

A link is declared dead by the device, like by the gateway, when nothing has
arrived for 3 x the agreed heartbeat: it sends CLOSE reason 1 and reconnects.

Each link records its session as it goes out (HELLO, SESSION_CONFIRM and the
first frames after it); the ``replay`` fault plays a recorded session back on
a new connection (:class:`ReplayLink`), as an attacker with a wire recording
would. The gateway must refuse it: a new session nonce in its HELLO_ACK, the
recorded SESSION_CONFIRM does not confirm it (``bad_mac`` under the new key,
or ``bad_session`` without a key), nothing recorded is applied, and the
device's real links are not touched.

Everything here runs in the simulator's one asyncio thread; :meth:`DeviceSim.on_tick`
is called by the runner's tick loop, protocol callbacks by asyncio.
"""
from __future__ import annotations

import asyncio
import logging
import secrets

from gateway.app.config import Device
from railcodecs import (DEVICE_RX_TYPES, Close, Command, FrameError, Heartbeat, Hello, HelloAck, MacPolicy,
                        SessionConfirm, Signals, StreamDecoder, Switches, TrackSections, session_key)

from .commands import CommandDesk
from .line import signing_key
from .sender import SequencedSender

log = logging.getLogger("railgate.simulators")
NETS = ("A", "B")
VERSION = "railgate-sim/1"
RECONNECT_S = 1.0
REFUSED_RETRY_S = 2.0
SILENT_GIVE_UP = 10        # heartbeats: a silenced link the peer never closes is dropped by us
STATUS_CLASSES = ((TrackSections, "sections"), (Signals, "signals"), (Switches, "switches"))
RECORD_FRAMES = 6          # frames after SESSION_CONFIRM a link records for the replay fault
REPLAY_GIVE_UP_S = 8.0     # a replaying connection the gateway has not closed by then is closed by us
UNSENT_RESULTS = 256       # COMMAND_RESULTs kept while no link is up (the oldest are dropped)


class Link(asyncio.Protocol):
    """One TCP link of a device on one net (an outlet for :class:`SequencedSender`)."""

    def __init__(self, dev: "DeviceSim", net: str) -> None:
        self.dev, self.net, self.where = dev, net, net
        self.transport: asyncio.Transport | None = None
        self.decoder = StreamDecoder(types=DEVICE_RX_TYPES, mac=MacPolicy(key=dev.key))
        self.up = False
        self.silent = False        # hb_stop: nothing more is written on this link
        self.closing = False
        self.after_corrupt = False
        self.hb_ms = dev.hb_ms
        self.hb_counter = 0
        self.peer_hb: int | None = None
        self.last_rx = self.opened = asyncio.get_running_loop().time()
        self.closed = asyncio.get_running_loop().create_future()
        self.device_nonce = secrets.randbits(64)   # new for every HELLO (ICD 1.1)
        self.session_nonce: int | None = None
        self.mac_key = dev.key                     # the link key until the HELLO_ACK, then K_s
        self.recording: list[bytes] | None = []    # this session as written, until RECORD_FRAMES more

    # -- asyncio callbacks -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.write_raw(self.encode_link(Hello(self.dev.spec.kind, NETS.index(self.net), self.dev.hb_ms,
                                              VERSION, self.device_nonce)), "HELLO")

    def data_received(self, data: bytes) -> None:
        self.last_rx = asyncio.get_running_loop().time()
        self.decoder.feed(data)
        for ev in self.decoder.events():
            if isinstance(ev, FrameError):
                self.dev.sim.ledger.got(self.dev.name, self.net, f"error:{ev.reason.value}")
            else:
                self.dev.sim.ledger.got(self.dev.name, self.net, ev.name)
                self._on_frame(ev)

    def connection_lost(self, exc) -> None:
        was_up, self.up = self.up, False
        if was_up and not self.closing:
            self.dev.sim.ledger.link_event(self.dev.name, self.net, "lost")
        if not self.closed.done():
            self.closed.set_result(None)

    # -- frames from the gateway -------------------------------------------------------
    def _on_frame(self, frame) -> None:
        msg = frame.message
        if isinstance(msg, HelloAck):
            if msg.result != HelloAck.OK:
                log.warning("%s net %s: HELLO refused (result %d)", self.dev.name, self.net, msg.result)
                self.dev.sim.ledger.link_event(self.dev.name, self.net, "hello_refused")
                self.dev.refused = True
                self.abort_quietly()
                return
            self.session_nonce = msg.session_nonce
            if self.dev.key is not None:
                # from here on, both ways: the session key (the next event is decoded with it)
                self.mac_key = session_key(self.dev.key, self.device_nonce, msg.session_nonce)
                self.decoder.set_session_key(self.mac_key)
            self.write_raw(self.encode_link(SessionConfirm(self.device_nonce, msg.session_nonce)), "SESSION_CONFIRM")
            self.up, self.hb_ms = True, msg.heartbeat_ms or self.dev.hb_ms
            self.dev.sim.ledger.link_event(self.dev.name, self.net, "connects")
            self.dev.link_ready()
        elif isinstance(msg, Heartbeat):
            self.peer_hb = msg.counter
        elif isinstance(msg, Close):
            if not self.closing:
                self.closing = True
                self.up = False
                self.write_raw(self.encode_link(Close(Close.NORMAL)), "CLOSE")
            self.transport.close()
        elif isinstance(msg, Command):
            self.dev.on_command(msg)

    # -- writing -----------------------------------------------------------------------
    def write(self, data: bytes, type_name: str) -> None:
        """Outlet interface: a sequenced frame (or an injected one) on this link."""
        self.after_corrupt = False
        self.write_raw(data, type_name)

    def write_raw(self, data: bytes, type_name: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.dev.sim.ledger.wrote(self.dev.name, self.net, type_name)
            self._record(data)

    def _record(self, data: bytes) -> None:
        rec = self.recording
        if rec is None:
            return
        rec.append(data)
        if len(rec) >= 2 + RECORD_FRAMES:  # HELLO, SESSION_CONFIRM and the frames after it
            self.dev.recorded_session = rec
            self.recording = None

    def encode_link(self, message) -> bytes:
        """A per-link message (seq 0), signed with this link's key (HELLO: the link key, else K_s)."""
        return self.dev._encode(message, 0, key=self.dev.key if isinstance(message, Hello) else self.mac_key)

    def heartbeat(self) -> None:
        self.hb_counter = (self.hb_counter + 1) & 0xFFFF_FFFF
        self.write(self.encode_link(Heartbeat(self.hb_counter)), "HEARTBEAT")

    def abort_quietly(self) -> None:
        """Close without CLOSE (a refused HELLO, a killed link): what was written is flushed first."""
        self.closing, self.up = True, False
        if self.transport is not None:
            self.transport.close()

    def close_gracefully(self, reason: int) -> None:
        """Send CLOSE ``reason``; the transport closes when the peer answers or at stop."""
        if self.transport is None or self.closing:
            return
        self.closing, self.up = True, False
        self.write_raw(self.encode_link(Close(reason)), "CLOSE")


class ReplayLink(asyncio.Protocol):
    """The ``replay`` fault: a recorded session (HELLO, SESSION_CONFIRM, frames) written again, blind, on
    a new connection. What comes back is booked under the net ``replay-A`` / ``replay-B``."""

    def __init__(self, dev: "DeviceSim", net: str, recording: list[bytes]) -> None:
        self.dev, self.net, self.recording = dev, net, recording
        self.where = f"replay-{net}"
        self.transport: asyncio.Transport | None = None
        # observing only: the replayer cannot make the new session's key, but the simulator can read it
        self.decoder = StreamDecoder(types=DEVICE_RX_TYPES, mac=MacPolicy(key=dev.key))
        self.recorded_nonce = Hello.unpack(recording[0][24:24 + 28]).device_nonce
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"".join(self.recording))

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        ledger = self.dev.sim.ledger
        for ev in self.decoder.events():
            if isinstance(ev, FrameError):
                ledger.got(self.dev.name, self.where, f"error:{ev.reason.value}")
                continue
            ledger.got(self.dev.name, self.where, ev.name)
            msg = ev.message
            if isinstance(msg, HelloAck) and msg.result == HelloAck.OK and self.dev.key is not None:
                self.decoder.set_session_key(session_key(self.dev.key, self.recorded_nonce, msg.session_nonce))
            elif isinstance(msg, Close):
                ledger.link_event(self.dev.name, self.where, f"closed_by_gateway_{msg.reason}")
                self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class DeviceSim(SequencedSender):
    """One interlocking, zone controller or platform-door controller."""

    KIND = "device"

    def __init__(self, sim, spec: Device, index: int) -> None:
        super().__init__(sim, spec.name, spec.id, signing_key(spec))
        self.spec, self.index = spec, index
        self.hb_ms = sim.heartbeat_ms
        self.links: dict[str, Link | None] = dict.fromkeys(spec.nets)
        self.changed: dict[str, set] = {"sections": set(), "signals": set(), "switches": set()}
        self.alarms: list = []
        self.desk = CommandDesk(spec, sim.model.ixl)
        self.unsent: list = []          # COMMAND_RESULTs due while no link was up to carry them
        self.refused = False
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.recorded_session: list[bytes] | None = None   # an earlier session's bytes (see ReplayLink)
        self._replays: list[ReplayLink] = []

    # -- life ----------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._maintain(net), name=f"{self.name}-{net}") for net in self.spec.nets]

    async def _maintain(self, net: str) -> None:
        """Keep the link on ``net`` connected until the run stops."""
        loop = asyncio.get_running_loop()
        host, port = self.sim.endpoint(net)
        while not self.sim.stopping:
            self.refused = False
            try:
                _, link = await loop.create_connection(lambda: Link(self, net), host, port)
            except OSError as exc:
                log.debug("%s net %s: connect failed: %s", self.name, net, exc)
                await self.sim.sleep(RECONNECT_S)
                continue
            self.links[net] = link
            await link.closed
            self.links[net] = None
            await self.sim.sleep(REFUSED_RETRY_S if self.refused else RECONNECT_S)

    def link_ready(self) -> None:
        if all(link is not None and link.up for link in self.links.values()):
            self.ready.set()

    async def stop(self, grace_s: float) -> None:
        """Final frame (never faulted), CLOSE 0 on every link, wait for the answers, close."""
        self.send_seq(TrackSections(self.sim.model.items(TrackSections, self.spec.sections)), final=True)
        links = [link for link in self.links.values() if link is not None]
        for link in links:
            if link.after_corrupt and link.up:
                link.heartbeat()  # settles the corrupted frame's resync before the close
            link.close_gracefully(Close.NORMAL)
        if links:
            await asyncio.wait([link.closed for link in links], timeout=grace_s)
        for link in links + self._replays:
            if link.transport is not None:
                link.transport.close()
        for t in self._tasks:
            t.cancel()

    # -- the sender's outlets --------------------------------------------------------------
    def outlets(self) -> list:
        return [link for link in self.links.values()
                if link is not None and link.up and not link.silent and not link.closing]

    def replay_session(self, target) -> bool:
        """The ``replay`` fault: an earlier session of this device played back on a new connection to
        ``target``'s net. False (no fault) until a session has been recorded."""
        recording = self.recorded_session
        if recording is None or self.sim.stopping:
            return False
        self._tasks.append(asyncio.create_task(self._replay(target.net, recording), name=f"{self.name}-replay"))
        self.sim.ledger.link_event(self.name, f"replay-{target.net}", "replayed")
        return True

    async def _replay(self, net: str, recording: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.sim.endpoint(net)
        try:
            _, link = await loop.create_connection(lambda: ReplayLink(self, net, recording), host, port)
        except OSError as exc:
            log.debug("%s net %s: replay connect failed: %s", self.name, net, exc)
            return
        self._replays.append(link)
        try:
            await asyncio.wait_for(asyncio.shield(link.closed), REPLAY_GIVE_UP_S)
        except asyncio.TimeoutError:
            link.transport.close()

    # -- ticks -----------------------------------------------------------------------------
    def on_tick(self, tick: int, now: float, step: int = 1, behind_ms: float = 0.0) -> None:
        """Heartbeats, liveness, status and alarms due in the last ``step`` ticks (runner's tick loop).

        ``behind_ms``: how late the tick loop runs; while it is late by a good part of a heartbeat,
        the gateway's frames may be waiting unread, so silence is not judged.
        """
        sim = self.sim
        for link in list(self.links.values()):
            if link is None or not link.up:
                continue
            if link.silent:
                if now - link.last_rx > SILENT_GIVE_UP * link.hb_ms / 1000:
                    link.abort_quietly()
                continue
            if now - link.last_rx > 3 * link.hb_ms / 1000 and behind_ms < link.hb_ms / 2:
                log.info("%s net %s: nothing from the gateway for %.1f s", self.name, link.net, now - link.last_rx)
                link.close_gracefully(Close.HEARTBEAT_TIMEOUT)
                link.transport.close()
                continue
            if sim.due(tick, link.hb_ms, self.index, step):
                link.heartbeat()
        full = sim.due(tick, sim.status_period_ms, self.index, step)
        for cls, attr in STATUS_CLASSES:
            ids = getattr(self.spec, attr)
            if not ids:
                continue
            changed = self.changed[attr]
            chosen = ids if full else [i for i in ids if i in changed]
            changed.clear()
            if chosen:
                self.send_seq(cls(sim.model.items(cls, chosen)))
        for alarm in self.alarms:
            self.send_seq(alarm)
        self.alarms.clear()
        self._send_results(self.desk.poll())

    # -- commands --------------------------------------------------------------------------
    def on_command(self, cmd: Command) -> None:
        """A COMMAND from either link: the first copy acts; answered now or when done (``on_tick``)."""
        result = self.desk.receive(cmd)
        if result is not None:
            self._send_results([result])

    def _send_results(self, results: list) -> None:
        """COMMAND_RESULTs, after any kept back for want of a link; kept back again if no link is up."""
        if self.unsent:
            results, self.unsent = self.unsent + results, []
        for i, result in enumerate(results):
            if not self.send_seq(result):
                self.unsent = results[i:][-UNSENT_RESULTS:]
                return

    # -- scheduled link faults ------------------------------------------------------------
    def link_fault(self, kind: str, net: str) -> bool:
        """``hb_stop`` or ``kill_link`` on ``net``; False if that link is not up now."""
        link = self.links.get(net)
        if link is None or not link.up or link.silent:
            return False
        if kind == "hb_stop":
            link.silent = True
        else:
            if link.after_corrupt:
                link.heartbeat()  # settles the corrupted frame's resync before the stream ends
            link.abort_quietly()
        return True
