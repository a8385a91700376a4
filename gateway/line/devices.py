"""Device and train reachability (ICD v1 section 7, points 4 and 5).

A device is reachable while at least one of its links is up. One configured
net down raises ``LINK_REDUNDANCY_LOST``; every net down raises
``DEVICE_COMM_LOST``; each clears with its ``*_RESTORED`` event when the link
comes back. A train is reachable while its datagrams keep arriving within
``3 x trains.heartbeat_ms``; else ``TRAIN_COMM_LOST``.

A device that never connects is also lost: :meth:`Registry.check_startup`
raises ``DEVICE_COMM_LOST`` for every device still unreachable after the
start-up grace time (the gateway's timer calls it once).

A link that leaves the registry (gone down, or replaced by a newer link of
the device on that net) leaves its figures behind (issue 15 item 7): each
device's net keeps a :class:`NetHistory`, with a frozen :class:`ClosedLink`
copy of its newest departed link's counters (what /status shows for a net
that is down) and totals over all its links. The copy is taken when the link
leaves UP and taken again, final, when its socket is closed
(:meth:`Registry.link_closed`): a link's last frames, our CLOSE and the peer's
tail are counted between the two.

Threading: link_up/link_down/link_closed are called from the IO loop that owns
the link (link_up also moves the link it replaces, which may be another
loop's); net A and net B may be on different loops, so each device's link
table and its nets' histories are changed under the device's lock, and the
conditions are decided inside it. A link's ``stats()`` is safe from any
thread and takes no lock, so it is called under the device's lock: the table
and the figures then move together. The status path reads with
:meth:`Registry.links_of` and :meth:`Registry.nets_of` (any thread).
Train methods are called from the UDP loop and the liveness timer (any thread).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from gateway.line.events import EventLog

NETS = ("A", "B")


@dataclass(frozen=True, slots=True)
class ClosedLink:
    """The counters of a link that left the registry, frozen; times in the gateway's wall ms.

    Built from the link's ``stats()`` by :meth:`from_stats`; ``closed_ms`` and
    ``closed_reason`` say when and why it left (kept when a later copy of the
    same link replaces this one). Ages are computed when shown (:meth:`status`)."""

    net: str
    peer: str | None
    rx_frames: int
    tx_frames: int
    rx_bytes: int
    tx_bytes: int
    errors: tuple[tuple[str, int], ...]   # (reason, frames), sorted by reason
    dual_net_copies: int
    refused_sends: int
    output_high_water_bytes: int
    last_rx_ms: int | None                # when the link last received bytes
    last_frame_ms: int | None             # when it last accepted a frame
    closed_ms: int                        # when it left the registry
    closed_reason: str

    def __post_init__(self) -> None:
        if min(self.rx_frames, self.tx_frames, self.rx_bytes, self.tx_bytes) < 0:
            raise ValueError(f"net {self.net}: negative link counters in {self!r}")

    @classmethod
    def from_stats(cls, stats: dict, now_ms: int, closed_ms: int, why: str) -> ClosedLink:
        """``stats``: the link's ``stats()`` read at ``now_ms``; its ages become wall times."""
        def at(age_key: str) -> int | None:
            age = stats.get(age_key)
            return None if age is None else now_ms - age
        return cls(net=stats["net"], peer=stats.get("peer"), rx_frames=stats["rx_frames"],
                   tx_frames=stats["tx_frames"], rx_bytes=stats["rx_bytes"], tx_bytes=stats["tx_bytes"],
                   errors=tuple(sorted((stats.get("errors") or {}).items())),
                   dual_net_copies=stats.get("dual_net_copies", 0), refused_sends=stats.get("refused_sends", 0),
                   output_high_water_bytes=stats.get("output_high_water_bytes", 0),
                   last_rx_ms=at("last_rx_age_ms"), last_frame_ms=at("last_frame_age_ms"), closed_ms=closed_ms,
                   closed_reason=why)

    @property
    def errors_total(self) -> int:
        return sum(n for _, n in self.errors)

    def status(self, now_ms: int) -> dict:
        """The link's entry in /status (the keys of a live link's ``stats()``, state down), ages at ``now_ms``."""
        def age(t: int | None) -> int | None:
            return None if t is None else now_ms - t
        return {"net": self.net, "alive": False, "state": "down", "peer": self.peer, "loop": None,
                "rx_frames": self.rx_frames, "tx_frames": self.tx_frames, "rx_bytes": self.rx_bytes,
                "tx_bytes": self.tx_bytes, "last_rx_age_ms": age(self.last_rx_ms),
                "last_frame_age_ms": age(self.last_frame_ms), "errors": dict(self.errors),
                "dual_net_copies": self.dual_net_copies, "refused_sends": self.refused_sends,
                "output_queued_bytes": 0, "output_high_water_bytes": self.output_high_water_bytes,
                "closed_ms": self.closed_ms, "closed_age_ms": age(self.closed_ms), "closed_reason": self.closed_reason}


@dataclass(frozen=True, slots=True)
class NetRecord:
    """One device net as the status path reads it (:meth:`Registry.nets_of`): the registered link (None
    when down), the newest departed link's frozen counters, and totals over the departed links."""

    link: object | None
    last: ClosedLink | None
    links_opened: int        # links that came UP on this net since the gateway started
    rx_frames: int           # summed over the links that left (the registered one's are its own)
    errors: int              # frames rejected, summed likewise


class NetHistory:
    """What one device's net keeps of its links across closes. Changed and read under the device's lock.

    A departed link stays in ``_leaving`` (with its opening number and its latest copy) until its socket
    is closed and the final copy replaces the one taken as it left: the totals count each departed link
    once, by its latest copy, and ``last`` is always the copy of the newest opened link that departed
    (a replaced link closing late does not hide the newer link that went down meanwhile)."""

    __slots__ = ("links_opened", "current_seq", "last", "last_seq", "rx_frames", "errors", "_leaving")

    def __init__(self) -> None:
        self.links_opened = 0
        self.current_seq = 0       # the registered link's opening number
        self.last: ClosedLink | None = None
        self.last_seq = 0
        self.rx_frames = 0         # summed over the departed links' latest copies
        self.errors = 0
        self._leaving: dict[object, tuple[int, ClosedLink | None]] = {}

    def opened(self) -> None:
        """A new link is registered on this net."""
        self.links_opened += 1
        self.current_seq = self.links_opened

    def left(self, link, stats: dict | None, now_ms: int, why: str) -> None:
        """The registered ``link`` left the registry at ``now_ms`` because ``why``; ``stats``: its
        ``stats()`` read now (None: it has none)."""
        copy = None if stats is None else ClosedLink.from_stats(stats, now_ms, now_ms, why)
        self._record(link, self.current_seq, None, copy)

    def departing(self, link) -> bool:
        """Whether ``link`` left the registry and its socket is not closed yet."""
        return link in self._leaving

    def refresh(self, link, stats: dict | None, now_ms: int, final: bool) -> None:
        """A later reading of a departed ``link``'s ``stats()`` (when it is one); ``final``: its socket is
        closed, these are its last counters, and it is forgotten."""
        entry = self._leaving.pop(link, None) if final else self._leaving.get(link)
        if entry is None:
            return
        seq, old = entry
        if stats is None or old is None:
            if not final:
                self._leaving[link] = entry
            return
        self._record(link, seq, old, ClosedLink.from_stats(stats, now_ms, old.closed_ms, old.closed_reason),
                     keep=not final)

    def _record(self, link, seq: int, old: ClosedLink | None, copy: ClosedLink | None, keep: bool = True) -> None:
        if keep:
            self._leaving[link] = (seq, copy)
        if copy is None:
            return
        if old is not None:
            self.rx_frames -= old.rx_frames
            self.errors -= old.errors_total
        self.rx_frames += copy.rx_frames
        self.errors += copy.errors_total
        if seq >= self.last_seq:
            self.last, self.last_seq = copy, seq


def _stats(link) -> dict | None:
    """``link.stats()``, or None for an object without it (tests' stand-ins). Any thread, takes no lock."""
    stats = getattr(link, "stats", None)
    return None if stats is None else stats()


class DeviceLinks:
    """The links of one configured device, by net, and what each net keeps of its departed links."""

    def __init__(self, device) -> None:
        """``device``: a configured device (``gateway.app.config.Device``: id, name, nets)."""
        self.device = device
        self.links: dict[str, object | None] = {net: None for net in device.nets}
        self.history: dict[str, NetHistory] = {net: NetHistory() for net in device.nets}
        self.lock = threading.Lock()
        self.ever_up = False

    @property
    def reachable(self) -> bool:
        return any(link is not None for link in self.links.values())


class Registry:
    """Configured devices and trains, their links and reachability conditions."""

    def __init__(self, devices, train_ids, train_heartbeat_ms: int, events: EventLog) -> None:
        """``devices``: the configured devices; ``train_ids`` and ``train_heartbeat_ms`` from ``trains:``."""
        self.events = events
        self.devices = {d.id: DeviceLinks(d) for d in devices}
        self.train_heartbeat_ms = train_heartbeat_ms
        self.train_ids = train_ids
        self._train_last_rx: dict[int, int] = {}
        self._trains_lost: set[int] = set()
        #: set by a planned stop: links closed by the gateway itself are not lost communication
        self.stopping = False

    def begin_shutdown(self) -> None:
        """A planned stop begins: from now on links that go down and trains that fall silent raise
        nothing (the gateway closes them itself); LINK_DOWN events are still recorded. Any thread."""
        self.stopping = True

    # -- devices -----------------------------------------------------------------
    def link_up(self, device_id: int, net: str, link, now_ms: int):
        """Record a link that completed HELLO. Returns the link it replaces (to be closed), if any; that
        one's counters are kept as it leaves. Loop thread of ``link`` (the old one may be another loop's:
        its ``stats()`` is safe from any thread)."""
        dev = self.devices[device_id]
        name = dev.device.name
        with dev.lock:
            old = dev.links.get(net)
            dev.links[net] = link
            if old is not link:
                hist = dev.history[net]
                if old is not None:
                    hist.left(old, _stats(old), now_ms, "replaced by a newer link")
                hist.opened()
            dev.ever_up = True
            all_up = all(v is not None for v in dev.links.values())
        self.events.emit("LINK_UP", name, now_ms, f"net {net}")
        self.events.clear_condition("DEVICE_COMM_LOST", name, now_ms, f"net {net} up")
        if all_up:
            self.events.clear_condition("LINK_REDUNDANCY_LOST", name, now_ms, f"net {net} up")
        return old if old is not link else None

    def link_down(self, device_id: int, net: str, link, now_ms: int, why: str) -> None:
        """Record a link that left UP (only if it is still the device's link on that net), keeping a
        copy of its counters as it leaves. Loop thread of ``link``."""
        dev = self.devices[device_id]
        name = dev.device.name
        with dev.lock:
            hist = dev.history[net]
            if dev.links.get(net) is not link:
                hist.refresh(link, _stats(link), now_ms, final=False)  # already replaced by a newer link
                return
            dev.links[net] = None
            hist.left(link, _stats(link), now_ms, why)
            reachable = dev.reachable
            redundant = len(dev.links) > 1
        self.events.emit("LINK_DOWN", name, now_ms, f"net {net}: {why}")
        if self.stopping:
            return
        if reachable:
            self.events.raise_condition("LINK_REDUNDANCY_LOST", name, now_ms, f"net {net}: {why}")
        else:
            if redundant:
                self.events.raise_condition("LINK_REDUNDANCY_LOST", name, now_ms, f"net {net}: {why}")
            self.events.raise_condition("DEVICE_COMM_LOST", name, now_ms, f"no link up ({why})")

    def check_startup(self, now_ms: int) -> None:
        """Raise DEVICE_COMM_LOST / LINK_REDUNDANCY_LOST for what has not connected by now."""
        if self.stopping:
            return
        for dev in self.devices.values():
            with dev.lock:
                missing = [net for net, link in dev.links.items() if link is None]
                reachable = dev.reachable
            name = dev.device.name
            if not reachable:
                self.events.raise_condition("DEVICE_COMM_LOST", name, now_ms, "never connected")
            elif missing and len(dev.links) > 1:
                self.events.raise_condition("LINK_REDUNDANCY_LOST", name, now_ms,
                                            f"net {'/'.join(missing)} never connected")

    def link_closed(self, link, now_ms: int) -> None:
        """``link``'s socket is closed: if it was registered, its copy is taken again with its final
        counters (those counted after it left UP: its last frames, our CLOSE) and the link is forgotten.
        Any other link (never UP, or of no configured device) is ignored. Loop thread of ``link``."""
        device_id = getattr(link, "device_id", None)
        dev = self.devices.get(device_id) if device_id is not None else None
        hist = dev.history.get(getattr(link, "net", None)) if dev is not None else None
        if hist is None:
            return
        with dev.lock:
            if hist.departing(link):
                hist.refresh(link, _stats(link), now_ms, final=True)

    def links_of(self, device_id: int) -> dict:
        """The device's registered links by net (None: down). Any thread."""
        dev = self.devices[device_id]
        with dev.lock:
            return dict(dev.links)

    def nets_of(self, device_id: int) -> dict[str, NetRecord]:
        """Each net of the device: its registered link and what it keeps of the departed ones, read
        together (a link is never both registered and counted as departed). Any thread."""
        dev = self.devices[device_id]
        with dev.lock:
            return {net: NetRecord(link, h.last, h.links_opened, h.rx_frames, h.errors)
                    for net, h in dev.history.items() for link in (dev.links.get(net),)}

    # -- trains ------------------------------------------------------------------
    def train_seen(self, train_id: int, now_ms: int) -> None:
        """A datagram from this train was accepted. UDP loop thread."""
        self._train_last_rx[train_id] = now_ms
        if train_id in self._trains_lost:
            self._trains_lost.discard(train_id)
            self.events.clear_condition("TRAIN_COMM_LOST", f"train {train_id}", now_ms, "datagrams again")

    def trains_seen(self, train_ids, now_ms: int) -> None:
        """Datagrams from these trains were accepted at ``now_ms`` (one recvmmsg batch, each train listed
        once: what :meth:`train_seen` does for each, in one call). UDP loop thread."""
        self._train_last_rx.update(dict.fromkeys(train_ids, now_ms))
        lost = self._trains_lost
        if lost:
            for train_id in train_ids:  # in the order the batch first accepted them, as train_seen one by one
                if train_id in lost:
                    lost.discard(train_id)
                    self.events.clear_condition("TRAIN_COMM_LOST", f"train {train_id}", now_ms, "datagrams again")

    def check_trains(self, now_ms: int, started_ms: int) -> None:
        """Liveness pass over the trains (timer, any thread)."""
        if self.stopping:
            return
        limit = 3 * self.train_heartbeat_ms
        for tid in self.train_ids:
            last = self._train_last_rx.get(tid, started_ms)
            if now_ms - last > limit and tid not in self._trains_lost:
                self._trains_lost.add(tid)
                self.events.raise_condition("TRAIN_COMM_LOST", f"train {tid}", now_ms,
                                            f"no datagram for {now_ms - last} ms")

    def train_reachable(self, train_id: int) -> bool:
        return train_id in self._train_last_rx and train_id not in self._trains_lost

    def train_last_rx(self, train_id: int) -> int | None:
        return self._train_last_rx.get(train_id)
