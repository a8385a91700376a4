"""The line as the gateway knows it, without IO: one object holding the parts built from the config.

::

    Line ── events    EventLog: facts and raised/cleared conditions (any thread)
         ├─ registry  Registry: devices' links by net, reachability, trains' liveness
         ├─ receiver  railcodecs.Receiver: EN 50159 checks per sender (sequence, age, source)
         ├─ objects   ObjectState: latest section, signal, switch and train values
         └─ mac       railcodecs.MacPolicy: keys and which senders must sign

The wiring object (``gateway.app.runtime.Gateway``) builds one ``Line`` and
hands it to the parts that need the line: the link context, the alarm stage,
status. Nothing here touches a socket; the clock is injected (tests pass a
fake one).

Threading: construct in one thread; each part documents its own contract.
"""
from __future__ import annotations

from railcodecs import MacPolicy, Receiver

from gateway.base.clock import wall_clock_ms  # noqa: F401 - the line's default clock, imported from here too
from gateway.line.devices import Registry
from gateway.line.events import EventLog
from gateway.line.object_state import ObjectState


class Line:
    """Events, reachability, receiver checks, object state and MAC policy of one configured line."""

    def __init__(self, cfg, clock_ms=None) -> None:
        """``cfg``: a loaded ``gateway.app.config.Config``; ``clock_ms``: epoch-ms clock (default: wall clock)."""
        g = cfg.gateway
        self.now_ms = clock_ms or wall_clock_ms
        self.events = EventLog()
        self.registry = Registry(cfg.devices, cfg.trains.ids, cfg.trains.heartbeat_ms, self.events)
        self.receiver = Receiver(g.id, cfg.senders(), max_age_ms=g.max_age_ms,
                                 train_reset_ms=3 * cfg.trains.heartbeat_ms)
        self.objects = ObjectState()
        self.mac_policy = MacPolicy(
            keys={d.id: d.mac_key for d in cfg.devices if d.mac_key is not None and d.mac != "off"},
            required_srcs=frozenset(d.id for d in cfg.devices if d.mac == "required"))
