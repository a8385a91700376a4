"""CommandEngine: select before operate with feedback, sans-IO. Requests and device news in, actions out.

Every method takes the time (``now_ms``, gateway wall clock, epoch ms) and returns
the list of actions for the caller to carry out, **in list order**:

* :class:`AcquireLock` / :class:`ExtendLock` / :class:`ReleaseLock` — zone-lock calls
  (network IO on Redis: the engine never makes them), keyed by zone: one lease per zone,
  shared by the selections of one operator at one workstation (``gateway/commands/zone_holds.py``).
  The caller answers an acquire with :meth:`CommandEngine.lock_granted` or
  :meth:`~CommandEngine.lock_refused`, an extend with :meth:`~CommandEngine.lock_extended` or
  :meth:`~CommandEngine.lock_lost`, each with the action's zone.
* :class:`Send` — a COMMAND for a device, sent sequenced on both nets (the device
  acts on the first copy).
* :class:`Audit` — a :class:`~gateway.commands.model.CommandEvent` to journal. An
  Audit always precedes the Send it describes: journal it (durably) first, and no
  COMMAND leaves without its audit row.
* :class:`Reply` — an answer to an operator's request (``request_id`` is the
  caller's). A select is answered when the lock is granted or refused (at once when it
  joins a lease its zone holds already); an operate
  is answered at once (``termination=False``: sent) and again when the command
  ends (``termination=True``: DONE, or FAILED with the outcome), as IEC 61850's
  operate response and CommandTermination.

Bad input raises a :class:`CommandError` subclass with a sentence for the operator
and changes nothing (no state, no action, no audit row): unknown kind or object, a
value the kind does not take, an unreachable device, an object already selected, a
zone held here by another operator or workstation, a switch whose section is not free
(interlocking), an unknown or ended selection, another operator's selection, an
expired selection, an operate of a command already sent, a cancel after operate.

Interlocking known to the gateway: a switch whose track section (``LineView
.section_of_switch``) is OCCUPIED, LOCKED (in a route) or FAULT, or whose state is not
known yet, is refused, at select and again at operate (a train may have entered the
section meanwhile). FAULT and unknown are refused because a track circuit that
cannot be read is treated as occupied (fail-safe). A switch without a section in the
view has no precondition the gateway knows.

Zone leases (``gateway/commands/zone_holds.py``): a select in a zone this gateway
holds (or is taking) for the same operator at the same workstation joins that zone's
lease instead of asking again: same fencing token, one ExtendLock per zone, one
ReleaseLock when the last selection of the zone ends; a select joining a pending
acquire waits for its answer. So ``gateway route set`` can take two switches of one
zone. Another operator or workstation is refused, naming the holder.

Timing (:meth:`tick`): a selection expires ``select_timeout_s`` after the select
(SELECTING or SELECTED -> EXPIRED); an operated command must have its result *and*
its feedback ``feedback_timeout_s[kind]`` after the operate (``result_timeout`` /
``feedback_timeout`` -> FAILED); a held zone lock is extended (to ``lock_ttl_ms``)
when half its validity has passed (Redlock's ``Lease.validity_ms``, else its TTL),
until the zone's last command ends. Call ``tick`` at least every quarter of the TTL
(:meth:`next_deadline_ms` says when the next deadline falls). An operate after the
lease's validity ended (the thread was paused past it) sends nothing and fails the
selection (``lock_expired``). The zone's last terminal state releases the lock; a
lock granted after every selection waiting for it ended is released at once.

Threading: not thread-safe; one owner thread (the gateway's command loop) calls every
method. The LineView it is given is read from that thread.
"""
from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from railcodecs import Command, CommandResult, TrackSections

from gateway.commands import model as m
# the refusals live with the model; imported here too, where callers of the engine look for them
from gateway.commands.model import (AlreadySelected, BadValue, CommandError, DeviceUnreachable,  # noqa: F401
                                    Interlocked, NotSelected, SelectionExpired, UnknownObject, WrongOperator,
                                    WrongState)
from gateway.commands.settings import ControlSettings
from gateway.commands.zone_holds import ZoneHold, half_life

#: section states that refuse a switch move (see the module doc); unknown (None) refuses too
_BLOCKING_SECTION = {TrackSections.OCCUPIED: "occupied", TrackSections.LOCKED: "locked in a route",
                     TrackSections.FAULT: "in fault"}
#: ended selections remembered for a clear error on a late operate or cancel
ENDED_KEPT = 1024


class LineView(Protocol):
    """What the engine reads of the line (the gateway's live state and the track topology)."""

    def device_of(self, kind: str, object_id: int) -> tuple[int, str] | None:
        """(device id, device name) of the device that commands the object; None: no such object."""

    def reachable(self, device_id: int) -> bool:
        """The device has a link up on at least one net."""

    def value(self, kind: str, object_id: int) -> int | None:
        """The object's current status value (model.FEEDBACK's domain); None: not known yet."""

    def section_state(self, section_id: int) -> int | None:
        """TRACK_SECTIONS state of a section; None: not known yet."""

    def section_of_switch(self, switch_id: int) -> int | None:
        """The track section the switch lies in; None: the line has no such relation."""

    def zone_of(self, kind: str, object_id: int) -> str:
        """The lock zone of the object: the one whose fencing tokens the device compares (its device's
        name without a track topology or when the object is in no zone)."""


# -- actions ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AcquireLock:
    """``ZoneLocks.acquire(zone, holder, ttl_ms, blocking=False)``, answered with lock_granted / lock_refused
    (the zone's, for every selection waiting on it)."""

    zone: str
    holder: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class ExtendLock:
    """``ZoneLocks.extend(lease, ttl_ms)``, answered with lock_extended / lock_lost (on LockNotOwned)."""

    zone: str
    lease: Any          # gateway.adapters.zone_locks.Lease
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class ReleaseLock:
    """``ZoneLocks.release(lease)``; not answered (a LockNotOwned only means the TTL ran out first)."""

    zone: str
    lease: Any


@dataclass(frozen=True, slots=True)
class Send:
    """The COMMAND to the device, sequenced, on every link it has up (net A and net B)."""

    device_id: int
    command: Command


@dataclass(frozen=True, slots=True)
class Audit:
    """Journal the event (``AuditJournal.append``; one transaction for the Audits of one call), then wake the
    relay that publishes it."""

    event: m.CommandEvent


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to the request ``request_id``: ``payload`` is the command's summary (selection_id,
    command_id, kind, object_id, value, device, zone, operator, workstation, state, fencing_token,
    expires_ms); ``error`` the sentence when not ``ok``; ``termination`` marks an operate's final answer."""

    request_id: Hashable
    ok: bool
    payload: dict
    error: str | None = None
    termination: bool = False


Action = AcquireLock | ExtendLock | ReleaseLock | Send | Audit | Reply


class _Command:
    """One command's mutable record (engine-private)."""

    __slots__ = ("command_id", "selection_id", "kind", "object_id", "device_id", "device", "value", "op",
                 "operator", "workstation", "zone", "state", "fencing_token", "select_request", "operate_request",
                 "expires_ms", "deadline_ms", "last_status", "target")

    def __init__(self, **kw) -> None:
        for name in self.__slots__:
            setattr(self, name, kw.get(name))

    def summary(self) -> dict:
        return {"selection_id": self.selection_id, "command_id": self.command_id, "kind": self.kind,
                "object_id": self.object_id, "value": self.value, "device": self.device, "zone": self.zone,
                "operator": self.operator, "workstation": self.workstation, "state": self.state,
                "fencing_token": self.fencing_token, "expires_ms": self.expires_ms}


class CommandEngine:
    """The open commands of one gateway (see the module doc)."""

    def __init__(self, gateway_id: int, line: str, tz: tzinfo | str, settings: ControlSettings, view: LineView, *,
                 last_seq: int = 0, last_command_id: int = 0, start_ms: int = 0,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        """``last_seq`` / ``last_command_id``: the audit journal's (``AuditJournal.last_seq()`` /
        ``last_command_id()``), so event seqs and command ids continue across restarts; ``start_ms``
        floors the command counter (model.first_command_counter)."""
        self.gateway_id, self.line = gateway_id, line
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.settings, self.view, self._new_id = settings, view, new_id
        self._seq = last_seq
        self._counter = m.first_command_counter(last_command_id, start_ms)
        self._open: dict[str, _Command] = {}                 # selection_id -> command
        self._by_object: dict[tuple[str, int], _Command] = {}
        self._holds: dict[str, ZoneHold] = {}               # zone -> its lease and the selections sharing it
        self._by_command_id: dict[int, _Command] = {}
        self._ended: OrderedDict[str, tuple[str, str, str]] = OrderedDict()   # sel -> (state, operator, outcome)
        self.counters = {"selects": 0, "refused_requests": 0, "operates": 0, "done": 0, "failed": 0,
                         "unknown_results": 0, "foreign_results": 0, "late_results": 0}

    # -- operator requests -------------------------------------------------------------------
    def select(self, request_id: Hashable, kind: str, object_id: int, value: str, operator: str,
               workstation: str | None, now_ms: int) -> list[Action]:
        """Check the object is operable and ask for its zone lock (AcquireLock), or join the zone's lease
        when the same operator at the same workstation holds or is taking it here; raises CommandError."""
        try:
            device_id, device, zone = self._check_select(kind, object_id, value, operator, workstation)
        except CommandError:
            self.counters["refused_requests"] += 1
            raise
        workstation = workstation or self.settings.workstation
        expires_ms = now_ms + int(self.settings.select_timeout_s * 1000)
        c = _Command(command_id=m.command_id_of(self._counter, self.gateway_id), selection_id=self._new_id(),
                     kind=kind, object_id=object_id, device_id=device_id, device=device, value=value,
                     op=m.VALUES[kind][value], operator=operator, workstation=workstation, zone=zone,
                     state=m.NEW, select_request=request_id, expires_ms=expires_ms, target=m.FEEDBACK[(kind, value)])
        self._counter = m.next_command_counter(self._counter)
        self._open[c.selection_id] = c
        self._by_object[(kind, object_id)] = c
        self._by_command_id[c.command_id] = c
        self.counters["selects"] += 1
        hold = self._holds.get(zone)
        if hold is None:
            hold = self._holds[zone] = ZoneHold(zone, operator, workstation)
        hold.members[c.selection_id] = c
        out: list[Action] = [self._move(c, "select", now_ms)]
        if hold.lease is not None:              # the zone is ours already: selected at once, with its token
            return out + self._granted(c, hold.lease, now_ms)
        if not hold.acquiring:                  # a new hold, or one whose lease was lost (sent commands run on)
            hold.acquiring = True
            out.append(AcquireLock(zone, workstation, self.settings.lock_ttl_ms))
        return out                              # else: waits for the pending acquire's answer

    def operate(self, request_id: Hashable, selection_id: str, operator: str, now_ms: int) -> list[Action]:
        """Send the selected command with the zone's fencing token; raises CommandError. Past the zone
        lease's validity nothing is sent: the selection fails (``lock_expired``) and the request is
        answered with the reason (a Reply, not an exception: the state changed)."""
        c = self._own(selection_id, operator, "operate")
        if c.state == m.SELECTING:
            raise WrongState(f"selection {selection_id}: still waiting for the lock of zone {c.zone}; operate "
                             "after the select is answered")
        if c.state != m.SELECTED:
            raise WrongState(f"selection {selection_id}: already operated (command {c.command_id} is {c.state})")
        if now_ms >= c.expires_ms:
            raise SelectionExpired(f"selection {selection_id} of {c.kind} {c.object_id} expired "
                                   f"{now_ms - c.expires_ms} ms ago (select timeout "
                                   f"{self.settings.select_timeout_s:g} s); select again")
        late = self._holds[c.zone].late_ms(now_ms)
        if late is not None:
            return self._lease_expired(request_id, c, late, now_ms)
        if not self.view.reachable(c.device_id):
            raise DeviceUnreachable(f"{c.kind} {c.object_id}: device {c.device} is unreachable (no link up on "
                                    "either net); nothing sent")
        self._check_interlocking(c.kind, c.object_id)
        c.operate_request = request_id
        c.deadline_ms = now_ms + int(self.settings.feedback_timeout_s[c.kind] * 1000)
        self.counters["operates"] += 1
        cmd = Command(c.command_id, c.op, c.object_id, 0, c.fencing_token)
        return [self._move(c, "operate", now_ms), Send(c.device_id, cmd),
                Reply(request_id, True, c.summary())]

    def cancel(self, request_id: Hashable, selection_id: str, operator: str, now_ms: int) -> list[Action]:
        """Drop a selection not yet operated (the zone's last releases the zone); raises CommandError."""
        c = self._own(selection_id, operator, "cancel")
        if c.state in (m.OPERATING, m.AWAIT_FEEDBACK):
            raise WrongState(f"selection {selection_id}: command {c.command_id} was sent and cannot be cancelled "
                             f"(it is {c.state}; it ends on the device's result, the feedback or a timeout)")
        out = self._end(c, "cancel", now_ms, f"cancelled by {operator}")
        return out + [Reply(request_id, True, c.summary())]

    # -- zone-lock answers (each for a zone: every selection sharing its lease) ------------------
    def lock_granted(self, zone: str, lease, now_ms: int) -> list[Action]:
        """The AcquireLock of ``zone`` succeeded with ``lease``: every selection waiting on it is SELECTED."""
        if lease.zone != zone:
            raise ValueError(f"zone {zone}: granted a lease of zone {lease.zone}")
        hold = self._holds.get(zone)
        if hold is None or not hold.acquiring:
            return [ReleaseLock(zone, lease)]                   # nobody asked (any more)
        hold.granted(lease, now_ms)
        waiting = [c for c in hold.members.values() if c.state == m.SELECTING]
        if not waiting:                                         # they all ended meanwhile
            hold.lease = None
            if not hold.members:
                del self._holds[zone]
            return [ReleaseLock(zone, lease)]
        out: list[Action] = []
        for c in waiting:
            out += self._granted(c, lease, now_ms)
        return out

    def lock_refused(self, zone: str, error_text: str, now_ms: int) -> list[Action]:
        """The AcquireLock failed (``LockHeld``: "zone Z: held by WS2 for 2000 ms more", or a Redis error):
        every selection waiting on it is REFUSED with that sentence."""
        hold = self._holds.get(zone)
        if hold is None or not hold.acquiring:
            return []
        hold.acquiring = False
        out: list[Action] = []
        for c in [c for c in hold.members.values() if c.state == m.SELECTING]:
            out += self._end(c, "lock_refused", now_ms, f"{c.kind} {c.object_id} not selected: {error_text}")
        if not hold.members:
            self._holds.pop(zone, None)
        return out

    def lock_extended(self, zone: str, lease, now_ms: int) -> list[Action]:
        """The ExtendLock succeeded with ``lease`` (its validity counts from ``now_ms``)."""
        hold = self._holds.get(zone)
        if hold is None or hold.lease is None or hold.lease.token != lease.token:
            return [ReleaseLock(zone, lease)]                   # the zone's selections ended meanwhile
        hold.granted(lease, now_ms)
        return []

    def lock_lost(self, zone: str, error_text: str, now_ms: int) -> list[Action]:
        """An ExtendLock was refused (``LockNotOwned``): the zone's selections fail; its sent commands go on."""
        hold = self._holds.get(zone)
        if hold is None or hold.lease is None:
            return []
        hold.lease = None                                       # not ours any more: never released
        text = f"zone lock of {zone} lost: {error_text}"
        out: list[Action] = []
        for c in list(hold.members.values()):
            if c.state == m.SELECTED:
                out += self._end(c, "lock_lost", now_ms, text)
            else:                                               # sent: the device's fencing check decides
                out.append(self._move(c, "lock_lost", now_ms, outcome=text + " (the device's fencing check decides)"))
        return out

    # -- device news -------------------------------------------------------------------------
    def on_result(self, device_id: int, result: CommandResult, now_ms: int) -> list[Action]:
        """A COMMAND_RESULT from ``device_id`` (the first copy; the receiver drops the second)."""
        c = self._by_command_id.get(result.command_id)
        if c is None:
            self.counters["unknown_results"] += 1
            return []
        if c.device_id != device_id:
            self.counters["foreign_results"] += 1
            return []
        if c.state != m.OPERATING:
            self.counters["late_results"] += 1
            return []
        event = m.RESULT_EVENTS[result.result]
        kw = {"result": result.result, "detail": result.detail}
        if result.result in (m.RESULT_REJECTED, m.RESULT_FAILED):
            why = m.DETAILS.get(result.detail)
            verb = f"rejected by {c.device}" if result.result == m.RESULT_REJECTED else f"failed at {c.device}"
            text = f"{verb}: {why} (detail {result.detail})" if why else f"{verb} (detail {result.detail})"
            return self._end(c, event, now_ms, text, **kw)
        if result.result == m.RESULT_STALE:
            return self._end(c, event, now_ms, f"stale fencing token: the device has seen a newer holder of zone "
                                               f"{c.zone} (ours {c.fencing_token}); the command was not executed",
                             **kw)
        if c.target is None:
            return self._end(c, "result_done_no_feedback", now_ms,
                             f"done: {c.device} executed {c.kind} {c.object_id} {c.value} (ICD v1 has no status "
                             "that shows it: confirmed by the result alone)", **kw)
        out = [self._move(c, event, now_ms, **kw)]
        observed = c.last_status if c.last_status is not None else self.view.value(c.kind, c.object_id)
        if observed == c.target:
            out += self._end(c, "feedback", now_ms, self._done_text(c))
        return out

    def on_status(self, kind: str, object_id: int, value: int, now_ms: int) -> list[Action]:
        """The object's status changed to ``value`` (the feedback of a sent command)."""
        c = self._by_object.get((kind, object_id))
        if c is None or c.target is None or c.state not in (m.OPERATING, m.AWAIT_FEEDBACK):
            return []
        seen_before = c.last_status == c.target
        c.last_status = value
        if value != c.target:
            return []
        if c.state == m.AWAIT_FEEDBACK:
            return self._end(c, "feedback", now_ms, self._done_text(c))
        if seen_before:
            return []
        return [self._move(c, "feedback", now_ms, outcome=f"status shows {c.value} before the result")]

    def on_unreachable(self, device_id: int, now_ms: int) -> list[Action]:
        """The device has no link up on any net: its open commands fail."""
        out: list[Action] = []
        for c in [c for c in self._open.values() if c.device_id == device_id]:
            out += self._end(c, "unreachable", now_ms, f"device {c.device} became unreachable (no link up on "
                                                       f"either net) while the command was {c.state}")
        return out

    # -- time ---------------------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[Action]:
        """Timeouts and lock extensions due at ``now_ms``."""
        out: list[Action] = []
        for c in list(self._open.values()):
            if c.state in (m.SELECTING, m.SELECTED) and now_ms >= c.expires_ms:
                out += self._end(c, "select_timeout", now_ms, f"selection expired: not operated within "
                                                              f"{self.settings.select_timeout_s:g} s")
            elif c.state == m.OPERATING and now_ms >= c.deadline_ms:
                out += self._end(c, "result_timeout", now_ms, f"no COMMAND_RESULT from {c.device} within "
                                 f"{self.settings.feedback_timeout_s[c.kind]:g} s")
            elif c.state == m.AWAIT_FEEDBACK and now_ms >= c.deadline_ms:
                shown = "no status" if c.last_status is None else f"status {c.last_status}"
                out += self._end(c, "feedback_timeout", now_ms, f"{c.device} reported done but the status did not "
                                 f"show {c.value} within {self.settings.feedback_timeout_s[c.kind]:g} s ({shown})")
        for hold in self._holds.values():                       # one extension per zone, not per selection
            if hold.extension_due(now_ms):
                hold.renew_ms = now_ms + half_life(hold.lease)  # not again while this one runs
                out.append(ExtendLock(hold.zone, hold.lease, self.settings.lock_ttl_ms))
        return out

    def next_deadline_ms(self) -> int | None:
        """The earliest time :meth:`tick` has something to do; None when no command is open."""
        due = [c.expires_ms if c.state in (m.SELECTING, m.SELECTED) else c.deadline_ms for c in self._open.values()]
        due += [h.renew_ms for h in self._holds.values() if h.lease is not None and h.members]
        return min(due) if due else None

    def abandon(self, open_events: Iterable[m.CommandEvent], now_ms: int) -> list[Action]:
        """At start: journal FAILED for each command the journal left open (``AuditJournal.open_commands()``).

        Their leases' tokens were not kept, so their zone locks expire by TTL."""
        out: list[Action] = []
        for ev in open_events:
            c = _Command(**{name: getattr(ev, name) for name in _Command.__slots__ if hasattr(ev, name)})
            c.state = ev.state
            out.append(self._move(c, "abandon", now_ms, outcome=f"the gateway restarted while the command was "
                                                                f"{ev.state}; its zone lock expires by its TTL"))
        return out

    # -- views ---------------------------------------------------------------------------------
    def selections(self) -> list[dict]:
        """Every open command, oldest first (status / admin API)."""
        return [c.summary() for c in self._open.values()]

    def state_of(self, selection_id: str) -> str | None:
        """The state of an open or recently ended selection; None if unknown."""
        c = self._open.get(selection_id)
        if c is not None:
            return c.state
        ended = self._ended.get(selection_id)
        return ended[0] if ended else None

    def stats(self) -> dict:
        return {"open": len(self._open), "event_seq": self._seq, **self.counters}

    # -- inside ---------------------------------------------------------------------------------
    def _check_select(self, kind, object_id, value, operator, workstation) -> tuple[int, str, str]:
        if kind not in m.VALUES:
            raise UnknownObject(f"{kind!r} objects are not commanded (kinds: {', '.join(m.KINDS)})")
        if type(object_id) is not int or not 0 <= object_id <= 0xFFFF:
            raise UnknownObject(f"{kind} id: expected an integer 0..65535, got {object_id!r}")
        if value not in m.VALUES[kind]:
            raise BadValue(f"{kind} {object_id}: value {value!r} is out of range (a {kind} takes "
                           f"{' or '.join(m.VALUES[kind])})")
        for name, text in (("operator", operator), ("workstation", workstation)):
            if name == "operator" or text is not None:
                problem = m.check_name(text, name)
                if problem:
                    raise BadValue(problem)
        where = self.view.device_of(kind, object_id)
        if where is None:
            raise UnknownObject(f"no {kind} {object_id} on line {self.line}")
        device_id, device = where
        if not self.view.reachable(device_id):
            raise DeviceUnreachable(f"{kind} {object_id}: device {device} is unreachable (no link up on either net)")
        other = self._by_object.get((kind, object_id))
        if other is not None:
            raise AlreadySelected(f"{kind} {object_id} is already selected by {other.operator} at "
                                  f"{other.workstation} (command {other.command_id}, {other.state})")
        zone = self.view.zone_of(kind, object_id)
        if not zone or any(ch.isspace() for ch in zone) or ":" in zone:
            raise UnknownObject(f"{kind} {object_id}: its zone name {zone!r} cannot name a lock (blanks or ':')")
        hold = self._holds.get(zone)
        if hold is not None and not hold.admits(operator, workstation or self.settings.workstation):
            raise AlreadySelected(f"{kind} {object_id}: zone {zone} is held by {hold.describe()}")
        self._check_interlocking(kind, object_id)
        return device_id, device, zone

    def _check_interlocking(self, kind: str, object_id: int) -> None:
        if kind != "switch":
            return
        section = self.view.section_of_switch(object_id)
        if section is None:
            return
        state = self.view.section_state(section)
        if state is None:
            raise Interlocked(f"switch {object_id}: the state of its section {section} is not known yet "
                              "(interlocking: refused)")
        if state in _BLOCKING_SECTION:
            raise Interlocked(f"switch {object_id}: its section {section} is {_BLOCKING_SECTION[state]} "
                              "(interlocking: refused)")

    def _own(self, selection_id: str, operator: str, what: str) -> _Command:
        c = self._open.get(selection_id)
        if c is None:
            ended = self._ended.get(selection_id)
            if ended is None:
                raise NotSelected(f"{what}: no selection {selection_id!r} (select the object first)")
            state, _, outcome = ended
            cls = SelectionExpired if state == m.EXPIRED else WrongState
            raise cls(f"{what}: selection {selection_id} has ended: {state} ({outcome})")
        if operator != c.operator:
            raise WrongOperator(f"{what}: selection {selection_id} of {c.kind} {c.object_id} belongs to "
                                f"{c.operator} at {c.workstation}, not to {operator!r}")
        return c

    def _done_text(self, c: _Command) -> str:
        return f"done: {c.device} executed it and the status shows {c.kind} {c.object_id} {c.value}"

    def _granted(self, c: _Command, lease, now_ms: int) -> list[Action]:
        """A waiting (SELECTING) selection gets the zone's lease: SELECTED, and its select answered."""
        c.fencing_token = lease.fencing_token
        request, c.select_request = c.select_request, None
        return [self._move(c, "lock_granted", now_ms), Reply(request, True, c.summary())]

    def _lease_expired(self, request_id: Hashable, c: _Command, late_ms: int, now_ms: int) -> list[Action]:
        """An operate after the zone lease's validity ended: nothing sent, the selection FAILED. The lease is
        presumably not ours any more: the zone's last selection drops it unreleased; with others still
        open, the next extension (overdue already) tells whether it still is."""
        hold = self._holds[c.zone]
        if len(hold.members) == 1:
            hold.lease = None
        text = f"zone {c.zone}: our lock's validity ended {late_ms} ms ago; nothing sent; select again"
        return self._end(c, "lock_expired", now_ms, text) + [Reply(request_id, False, c.summary(), text)]

    def _leave(self, c: _Command) -> list[Action]:
        """``c`` ended: it leaves its zone's hold; the last one out releases the lease."""
        hold = self._holds[c.zone]
        del hold.members[c.selection_id]
        if hold.members:
            return []
        out: list[Action] = []
        if hold.lease is not None:
            out.append(ReleaseLock(hold.zone, hold.lease))
            hold.lease = None
        if not hold.acquiring:              # else kept until the acquire's answer, which is then released
            del self._holds[hold.zone]
        return out

    def _end(self, c: _Command, event: str, now_ms: int, outcome: str, **kw) -> list[Action]:
        """A move into a terminal state: audit, leave the zone's hold (its last selection releases the lock),
        answer the open request."""
        out: list[Action] = [self._move(c, event, now_ms, outcome=outcome, **kw)]
        out += self._leave(c)
        ok = c.state == m.DONE
        if c.state in (m.DONE, m.FAILED):
            self.counters["done" if ok else "failed"] += 1
        if c.operate_request is not None:
            out.append(Reply(c.operate_request, ok, c.summary(), None if ok else outcome, termination=True))
        elif c.select_request is not None:                  # ended before the lock came: the select's answer
            out.append(Reply(c.select_request, False, c.summary(), outcome))
        del self._open[c.selection_id]
        self._by_object.pop((c.kind, c.object_id), None)
        self._by_command_id.pop(c.command_id, None)
        self._ended[c.selection_id] = (c.state, c.operator, outcome)
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)
        return out

    def _move(self, c: _Command, event: str, now_ms: int, *, outcome: str | None = None,
              result: int | None = None, detail: int | None = None) -> Audit:
        who = f"command {c.command_id} ({c.kind} {c.object_id})"
        prev, c.state = c.state, m.step(c.state, event, who)
        self._seq += 1
        return Audit(m.CommandEvent(
            self._new_id_hex(), self._seq, self.gateway_id, self.line, c.command_id, c.selection_id, c.kind,
            c.object_id, c.device_id, c.device, c.value, c.op, c.operator, c.workstation, c.zone, c.fencing_token,
            event, prev, c.state, result, detail, outcome, now_ms, m.iso_time(now_ms, self.tz)))

    def _new_id_hex(self) -> str:
        return uuid.uuid4().hex
