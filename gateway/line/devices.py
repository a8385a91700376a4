"""Device and train reachability (ICD v1 section 7, points 4 and 5).

A device is reachable while at least one of its links is up. One configured
net down raises ``LINK_REDUNDANCY_LOST``; every net down raises
``DEVICE_COMM_LOST``; each clears with its ``*_RESTORED`` event when the link
comes back. A train is reachable while its datagrams keep arriving within
``3 x trains.heartbeat_ms``; else ``TRAIN_COMM_LOST``.

A device that never connects is also lost: :meth:`Registry.check_startup`
raises ``DEVICE_COMM_LOST`` for every device still unreachable after the
start-up grace time (the gateway's timer calls it once).

Threading: link_up/link_down are called from the IO loop that owns the link;
net A and net B may be on different loops, so each device's link table is
changed under the device's lock and the conditions are decided inside it.
Train methods are called from the UDP loop and the liveness timer (any thread).
"""
from __future__ import annotations

import threading

from gateway.line.events import EventLog

NETS = ("A", "B")


class DeviceLinks:
    """The links of one configured device, by net."""

    def __init__(self, device) -> None:
        """``device``: a configured device (``gateway.app.config.Device``: id, name, nets)."""
        self.device = device
        self.links: dict[str, object | None] = {net: None for net in device.nets}
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
        """Record a link that completed HELLO. Returns the link it replaces (to be closed), if any."""
        dev = self.devices[device_id]
        name = dev.device.name
        with dev.lock:
            old = dev.links.get(net)
            dev.links[net] = link
            dev.ever_up = True
            all_up = all(v is not None for v in dev.links.values())
        self.events.emit("LINK_UP", name, now_ms, f"net {net}")
        self.events.clear_condition("DEVICE_COMM_LOST", name, now_ms, f"net {net} up")
        if all_up:
            self.events.clear_condition("LINK_REDUNDANCY_LOST", name, now_ms, f"net {net} up")
        return old if old is not link else None

    def link_down(self, device_id: int, net: str, link, now_ms: int, why: str) -> None:
        """Record a link that left UP (only if it is still the device's link on that net)."""
        dev = self.devices[device_id]
        name = dev.device.name
        with dev.lock:
            if dev.links.get(net) is not link:
                return  # already replaced by a newer link
            dev.links[net] = None
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

    def links_of(self, device_id: int) -> dict:
        dev = self.devices[device_id]
        with dev.lock:
            return dict(dev.links)

    # -- trains ------------------------------------------------------------------
    def train_seen(self, train_id: int, now_ms: int) -> None:
        """A datagram from this train was accepted. UDP loop thread."""
        self._train_last_rx[train_id] = now_ms
        if train_id in self._trains_lost:
            self._trains_lost.discard(train_id)
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
