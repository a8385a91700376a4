"""One simulated device's side of COMMAND: once per command_id, fencing per zone, results when due.

:class:`CommandDesk` is sans-IO: :meth:`CommandDesk.receive` takes a decoded
``Command`` and returns the ``CommandResult`` to send now, or None (a second
copy of a command already seen, or a result not due yet);
:meth:`CommandDesk.poll` returns the results that came due since (a switch
arrived, a route was set). ``DeviceSim`` (devices.py) sends them; tests drive
the desk directly.

In order, for each command:

1. **Once.** The gateway may send a COMMAND on net A and net B; the first copy
   acts and is answered, a later copy of the same ``command_id`` gets nothing.
   The last :data:`SEEN_IDS` ids are remembered (oldest forgotten first).
2. **Whose object.** A switch, section or route (by its start signal) this
   device does not have: rejected, unknown object. Op 3/4 without a
   ``track:`` section in the line file: rejected, no track.
3. **Fencing, per zone.** The zone of the command's object
   (:meth:`Track.zone <simulators.track.Track.zone>`): a token lower than the
   highest one this device has seen for that zone is answered *stale fencing
   token* (3) and nothing is done; an equal or higher one is remembered and the
   command goes on. Zones are independent: a high token in one zone makes no
   other zone's tokens stale.
4. **The operation** (:mod:`simulators.interlocking`); the ``arg`` field is not
   used by any op.

Used from the simulator's one asyncio thread.
"""
from __future__ import annotations

from collections import OrderedDict

from gateway.app.config import Device
from railcodecs import Command, CommandResult, Switches

from .interlocking import RESULT_REJECTED, RESULT_STALE_TOKEN, Answer, Detail, Interlocking, Pending

SEEN_IDS = 4096
SWITCH_OPS = {1: Switches.NORMAL, 2: Switches.REVERSE}
SET_ROUTE, CANCEL_ROUTE, BLOCK, UNBLOCK = 3, 4, 5, 6


class CommandDesk:
    """The commands of one device (``spec``) over the line's :class:`Interlocking`."""

    def __init__(self, spec: Device, ixl: Interlocking, seen_ids: int = SEEN_IDS) -> None:
        self.name, self.ixl, self.track = spec.name, ixl, ixl.track
        self.switches, self.sections, self.signals = set(spec.switches), set(spec.sections), set(spec.signals)
        self.seen: OrderedDict[int, None] = OrderedDict()
        self.seen_ids = seen_ids
        self.fence: dict[str, int] = {}                   # zone -> highest fencing token seen
        self.pending: list[tuple[int, Pending]] = []      # (command_id, its operation)

    def receive(self, cmd: Command) -> CommandResult | None:
        """The result to send now, or None (a copy already seen, or the result comes from :meth:`poll`)."""
        if cmd.command_id in self.seen:
            return None
        self.seen[cmd.command_id] = None
        if len(self.seen) > self.seen_ids:
            self.seen.popitem(last=False)
        zone = self._zone(cmd)
        if isinstance(zone, Detail):
            return _result(cmd.command_id, (RESULT_REJECTED, zone))
        if cmd.fencing_token < self.fence.get(zone, 0):
            return _result(cmd.command_id, (RESULT_STALE_TOKEN, Detail.NONE))
        self.fence[zone] = cmd.fencing_token
        outcome = self._execute(cmd)
        if isinstance(outcome, Pending):
            answer = outcome.poll()
            if answer is None:
                self.pending.append((cmd.command_id, outcome))
                return None
            outcome = answer
        return _result(cmd.command_id, outcome)

    def poll(self) -> list[CommandResult]:
        """Results that came due (call after each model step, after the status frames went out)."""
        if not self.pending:
            return []
        due, waiting = [], []
        for command_id, op in self.pending:
            answer = op.poll()
            if answer is None:
                waiting.append((command_id, op))
            else:
                due.append(_result(command_id, answer))
        self.pending = waiting
        return due

    def _zone(self, cmd: Command) -> str | Detail:
        """The fencing zone of the command's object, or why the command is not this device's."""
        obj = cmd.object_id
        if cmd.op in SWITCH_OPS:
            return self.track.zone("switch", obj, self.name) if obj in self.switches else Detail.UNKNOWN_OBJECT
        if cmd.op in (BLOCK, UNBLOCK):
            return self.track.zone("section", obj, self.name) if obj in self.sections else Detail.UNKNOWN_OBJECT
        if not self.track.has_routes:
            return Detail.NO_TRACK
        ends = self.track.routes.get(obj)
        if ends is None or ends[0] not in self.signals:
            return Detail.UNKNOWN_OBJECT
        return self.track.zone("route", obj, self.name)

    def _execute(self, cmd: Command) -> Answer | Pending:
        ixl = self.ixl
        if cmd.op in SWITCH_OPS:
            return ixl.move_switch(cmd.object_id, SWITCH_OPS[cmd.op])
        if cmd.op == SET_ROUTE:
            return ixl.set_route(cmd.object_id)
        if cmd.op == CANCEL_ROUTE:
            return ixl.cancel_route(cmd.object_id)
        return ixl.block(cmd.object_id, cmd.op == BLOCK)


def _result(command_id: int, answer: Answer) -> CommandResult:
    result, detail = answer
    return CommandResult(command_id, int(result), int(detail))
