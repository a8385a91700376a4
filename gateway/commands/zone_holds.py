"""Zone holds: one zone-lock lease per zone, shared by the open selections of one operator at one workstation.

The :class:`~gateway.commands.engine.CommandEngine` keeps a :class:`ZoneHold` for each zone in
which it has an open selection (the engine's thread only; nothing here does IO)::

    zone Z1 ── ZoneHold(alice at WS1) ── lease: fencing token 17, renew at, valid until
                  members: switch 301 SELECTED, switch 302 OPERATING        (reference count: 2)

The rules the engine applies with it:

* **Who joins.** A select in a zone that has a hold joins it when it comes from the hold's
  operator at the hold's workstation (:meth:`ZoneHold.admits`): one lease, one fencing token for
  every member (a device accepts a token equal to the highest it has seen). Anyone else is refused
  (``AlreadySelected``, naming the holder), as before holds were shared.
* **One acquire at a time.** The first select asks for the lock (``AcquireLock``); a select that
  joins while that answer is pending waits for it (``acquiring``), and the answer is every waiting
  member's: granted, each is SELECTED with the lease's token; refused, each is REFUSED with the
  same sentence. A hold whose members all ended while its acquire was pending stays until the
  answer, which is then released at once.
* **Extended while any member is open**, once per zone (not per selection), when half its
  validity has passed (:func:`half_life`); **released when the last member ends**.
* **Lost** (an extend refused): the lease is not ours any more and is never released; each
  SELECTED member fails, a sent command goes on (the device's fencing check decides). A later
  select of the holder's joins the hold and asks for the lock again.
* **Validity** (:meth:`ZoneHold.late_ms`): from each grant or extension the lease surely holds
  for its ``validity_ms`` (Redlock: its TTL less the time the majority took and the clock drift;
  one Redis or in process: its TTL). An operate past it sends nothing (the commands thread may
  have been paused past the TTL, and another holder may have the zone now).

Threading: engine-private; used only by the engine's owner thread.
"""
from __future__ import annotations

from typing import Any


def validity(lease) -> int:
    """How long (ms) the lease surely holds from its grant or extension: Redlock's ``validity_ms`` when
    measured, else its TTL."""
    return lease.validity_ms or lease.ttl_ms


def half_life(lease) -> int:
    """When an extension is due, counted from the grant or the last extension."""
    return validity(lease) // 2


class ZoneHold:
    """One zone's lease and the open selections sharing it (see the module doc)."""

    __slots__ = ("zone", "operator", "workstation", "members", "lease", "acquiring", "renew_ms", "valid_until_ms")

    def __init__(self, zone: str, operator: str, workstation: str) -> None:
        self.zone, self.operator, self.workstation = zone, operator, workstation
        self.members: dict[str, Any] = {}      # selection_id -> the engine's command record, in join order
        self.lease = None                      # gateway.adapters.zone_locks.Lease while ours
        self.acquiring = False                 # an AcquireLock is out, not answered yet
        self.renew_ms = 0                      # the next ExtendLock is due then
        self.valid_until_ms = 0                # the lease surely holds until then

    def admits(self, operator: str, workstation: str) -> bool:
        """A select by ``operator`` at ``workstation`` may share this hold."""
        return (operator, workstation) == (self.operator, self.workstation)

    def granted(self, lease, now_ms: int) -> None:
        """The lease was acquired or extended (its validity counts from ``now_ms``)."""
        self.lease, self.acquiring = lease, False
        self.renew_ms = now_ms + half_life(lease)
        self.valid_until_ms = now_ms + validity(lease)

    def extension_due(self, now_ms: int) -> bool:
        return self.lease is not None and bool(self.members) and now_ms >= self.renew_ms

    def late_ms(self, now_ms: int) -> int | None:
        """How many ms ago the lease's validity ended (0: it ends now); None while it surely holds."""
        return None if now_ms < self.valid_until_ms else now_ms - self.valid_until_ms

    def describe(self) -> str:
        """Who holds the zone, for a refusal: "the selection(s) of switch 5, switch 6 by bob at WS2 (SELECTED)"."""
        if not self.members:
            return f"{self.operator} at {self.workstation} (its lock is being taken for a selection that ended)"
        objects = ", ".join(f"{c.kind} {c.object_id}" for c in self.members.values())
        states = ", ".join(dict.fromkeys(c.state for c in self.members.values()))
        plural = "s" if len(self.members) > 1 else ""
        return f"the selection{plural} of {objects} by {self.operator} at {self.workstation} ({states})"
