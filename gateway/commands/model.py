"""The command model: select before operate with feedback, every legal move in one table.

This is IEC 61850's "SBO with enhanced security" for the ICD's COMMAND (0x30) /
COMMAND_RESULT (0x31). One *command* is one operator's selection of one object
and, if operated, the COMMAND that follows it; it has one state at a time and
moves only along :data:`TABLE`::

    NEW --select--> SELECTING --lock_granted--> SELECTED --operate--> OPERATING
                        |                          |                     |
         lock_refused -> REFUSED       cancel -> CANCELLED     result_done v
         cancel -> CANCELLED           select_timeout -> EXPIRED    AWAIT_FEEDBACK --feedback--> DONE
         select_timeout -> EXPIRED     unreachable, lock_lost,       |
         unreachable -> FAILED         lock_expired -> FAILED        feedback_timeout, unreachable -> FAILED

    OPERATING: result_rejected / result_failed / result_stale / result_timeout / unreachable -> FAILED;
               result_done_no_feedback (a value no status shows, see FEEDBACK) -> DONE;
               feedback (the status showed the value before the result came) stays OPERATING

Terminal states: DONE, FAILED, CANCELLED, EXPIRED, REFUSED. ``abandon`` (the
gateway restarted while the command was open) takes every open state to FAILED.

Decisions where the issue leaves room:

* ``cancel`` is legal only before ``operate`` (IEC 61850: a sent operate cannot be
  cancelled); afterwards only the device's result, the feedback or a timeout ends it.
* ``lock_lost`` (an extend of the zone lock was refused) fails a selection, but a
  command already sent stays where it is (journaled as a self-move): the COMMAND is
  at the device with our fencing token, and the device's fencing check decides.
  The zone's lease is shared by the selections of one operator at one workstation
  (``gateway/commands/zone_holds.py``), so one loss moves each of them.
* ``lock_expired``: an operate found the zone lease's validity over (the gateway was
  paused past it, and another holder may have the zone now): nothing is sent and the
  selection fails. Only a SELECTED command meets it (the operate is the check).
* A ``result_done`` always passes through AWAIT_FEEDBACK (journaled), even when the
  status already shows the value: the audit trail shows the result and the
  feedback as two facts.

Objects and values (:data:`VALUES`): a switch ``normal`` / ``reverse`` (ops 1 / 2), a
route ``set`` / ``cancel`` (3 / 4), a section ``block`` / ``unblock`` (5 / 6).
:data:`FEEDBACK` is the status value that confirms each: a switch's SWITCHES
position; a route's derived state (:data:`ROUTE_SET` / :data:`ROUTE_CLEAR`, which
the gateway's line view computes, e.g. from the route's sections being LOCKED in
TRACK_SECTIONS); ``None`` for sections, because ICD v1's TRACK_SECTIONS has no
"blocked" state (free, occupied, fault, locked in a route): a block or unblock
ends on its COMMAND_RESULT alone (``result_done_no_feedback``) and its outcome says so.

Command ids (:func:`first_command_counter`, :func:`command_id_of`): COMMAND.command_id is
a u32 whose low 8 bits are the gateway's id (mod 256) and whose high 24 bits count
commands. Two gateways of a redundant pair (ids that differ mod 256) never send the
same id to a device, which answers each id once whatever net it came on. The counter
continues from the audit journal's last command id at start, floored at the minutes
since 2024-01-01 UTC, so a gateway whose journal was lost still starts above every id
it issued unless it averaged more than one command a minute since that start. It
wraps from 2^24-1 to 1 (in 2055 by the floor).

:class:`CommandEvent` is one transition of one command as the audit trail keeps
it: the journal row and the Kafka value are ``encode()`` of it.

Pure functions over immutable values; safe from any thread.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, fields
from datetime import datetime, tzinfo

import orjson

from railcodecs import Switches

SCHEMA_VERSION = 1

NEW, SELECTING, SELECTED, OPERATING, AWAIT_FEEDBACK = "NEW", "SELECTING", "SELECTED", "OPERATING", "AWAIT_FEEDBACK"
DONE, FAILED, CANCELLED, EXPIRED, REFUSED = "DONE", "FAILED", "CANCELLED", "EXPIRED", "REFUSED"
STATES = (NEW, SELECTING, SELECTED, OPERATING, AWAIT_FEEDBACK, DONE, FAILED, CANCELLED, EXPIRED, REFUSED)
TERMINAL = frozenset({DONE, FAILED, CANCELLED, EXPIRED, REFUSED})
#: states whose command holds (or waits for) the zone lock
OPEN = frozenset(STATES) - TERMINAL - {NEW}

EVENTS = ("select", "lock_granted", "lock_refused", "operate", "cancel", "select_timeout", "result_done",
          "result_done_no_feedback", "result_rejected", "result_failed", "result_stale", "result_timeout",
          "feedback", "feedback_timeout", "unreachable", "lock_lost", "lock_expired", "abandon")

#: (state, event) -> next state: the whole command model
TABLE: dict[tuple[str, str], str] = {
    (NEW, "select"): SELECTING,

    (SELECTING, "lock_granted"): SELECTED,
    (SELECTING, "lock_refused"): REFUSED,
    (SELECTING, "cancel"): CANCELLED,
    (SELECTING, "select_timeout"): EXPIRED,
    (SELECTING, "unreachable"): FAILED,
    (SELECTING, "abandon"): FAILED,

    (SELECTED, "operate"): OPERATING,
    (SELECTED, "cancel"): CANCELLED,
    (SELECTED, "select_timeout"): EXPIRED,
    (SELECTED, "unreachable"): FAILED,
    (SELECTED, "lock_lost"): FAILED,
    (SELECTED, "lock_expired"): FAILED,        # operate past the lease's validity: nothing sent
    (SELECTED, "abandon"): FAILED,

    (OPERATING, "result_done"): AWAIT_FEEDBACK,
    (OPERATING, "result_done_no_feedback"): DONE,   # no status shows the value (FEEDBACK is None)
    (OPERATING, "result_rejected"): FAILED,
    (OPERATING, "result_failed"): FAILED,
    (OPERATING, "result_stale"): FAILED,
    (OPERATING, "result_timeout"): FAILED,
    (OPERATING, "feedback"): OPERATING,        # status before the result: remembered
    (OPERATING, "unreachable"): FAILED,
    (OPERATING, "lock_lost"): OPERATING,       # the device's fencing check decides
    (OPERATING, "abandon"): FAILED,

    (AWAIT_FEEDBACK, "feedback"): DONE,
    (AWAIT_FEEDBACK, "feedback_timeout"): FAILED,
    (AWAIT_FEEDBACK, "unreachable"): FAILED,
    (AWAIT_FEEDBACK, "lock_lost"): AWAIT_FEEDBACK,
    (AWAIT_FEEDBACK, "abandon"): FAILED,
}

#: COMMAND_RESULT.result -> event
RESULT_DONE, RESULT_REJECTED, RESULT_FAILED, RESULT_STALE = 0, 1, 2, 3
RESULT_EVENTS = {RESULT_DONE: "result_done", RESULT_REJECTED: "result_rejected", RESULT_FAILED: "result_failed",
                 RESULT_STALE: "result_stale"}
#: the transition a COMMAND_RESULT makes -> its result code
RESULT_CODES = {"result_done": RESULT_DONE, "result_done_no_feedback": RESULT_DONE,
                "result_rejected": RESULT_REJECTED, "result_failed": RESULT_FAILED, "result_stale": RESULT_STALE}

KINDS = ("switch", "route", "section")
#: kind -> value name -> ICD op code
VALUES: dict[str, dict[str, int]] = {
    "switch": {"normal": 1, "reverse": 2},
    "route": {"set": 3, "cancel": 4},
    "section": {"block": 5, "unblock": 6},
}
OPS = {op: (kind, value) for kind, values in VALUES.items() for value, op in values.items()}
#: a route's state as the gateway's line view derives it (the ICD has no route status message)
ROUTE_CLEAR, ROUTE_SET = 0, 1
#: (kind, value) -> the status value that confirms it; None: ICD v1 shows no status for it (see module doc)
FEEDBACK: dict[tuple[str, str], int | None] = {
    ("switch", "normal"): Switches.NORMAL, ("switch", "reverse"): Switches.REVERSE,
    ("route", "set"): ROUTE_SET, ("route", "cancel"): ROUTE_CLEAR,
    ("section", "block"): None, ("section", "unblock"): None,
}

#: command ids: 24-bit counter << 8 | gateway id & 0xFF; the counter's floor counts minutes from here
COMMAND_ID_EPOCH_S = 1_704_067_200         # 2024-01-01T00:00:00Z
COUNTER_MAX = (1 << 24) - 1


def command_id_of(counter: int, gateway_id: int) -> int:
    """The u32 COMMAND.command_id of the ``counter``-th command of gateway ``gateway_id``."""
    return ((counter & COUNTER_MAX) << 8) | (gateway_id & 0xFF)


def first_command_counter(last_command_id: int, now_ms: int) -> int:
    """The counter of the first command after a start: after the journal's last id, and no lower than
    the minutes since :data:`COMMAND_ID_EPOCH_S` (see the module doc). Never 0."""
    floor = max(0, now_ms // 1000 - COMMAND_ID_EPOCH_S) // 60
    counter = max((last_command_id >> 8) + 1, floor)
    return (counter - 1) % COUNTER_MAX + 1


def next_command_counter(counter: int) -> int:
    return counter % COUNTER_MAX + 1


#: bounds of operator-typed text (as the alarm model's)
MAX_NAME_CHARS = 64
_EVENT_ID = re.compile(r"[0-9a-f]{32}")


class IllegalCommandTransition(ValueError):
    """An event the table does not allow from the command's state."""

    def __init__(self, state: str, event: str, who: str = "") -> None:
        self.state, self.event = state, event
        allowed = ", ".join(e for s, e in TABLE if s == state) or "nothing (terminal)"
        prefix = f"{who}: " if who else ""
        super().__init__(f"{prefix}{event} is not allowed in state {state} (allowed: {allowed})")


def step(state: str, event: str, who: str = "") -> str:
    """The state after ``event``; raises :class:`IllegalCommandTransition` (``who`` names the command)."""
    if state not in STATES:
        raise ValueError(f"{who}: unknown command state {state!r} (expected one of {', '.join(STATES)})")
    if event not in EVENTS:
        raise ValueError(f"{who}: unknown command event {event!r} (expected one of {', '.join(EVENTS)})")
    target = TABLE.get((state, event))
    if target is None:
        raise IllegalCommandTransition(state, event, who)
    return target


def is_legal(state: str, event: str) -> bool:
    return (state, event) in TABLE


def iso_time(time_ms: int, tz: tzinfo) -> str:
    """``2026-11-29T08:00:00.000+08:00``: the event's ``time`` in the line's zone (as alarm events)."""
    return datetime.fromtimestamp(time_ms / 1000, tz).isoformat(timespec="milliseconds")


def check_name(value, where: str) -> str | None:
    """The problem with an operator or workstation name (1..64 printable characters, no control or
    format characters: names are printed in tables and log lines), None when it is fine."""
    if not isinstance(value, str) or not value.strip():
        return f"{where}: expected 1..{MAX_NAME_CHARS} printable characters, got {value!r}"[:200]
    if len(value) > MAX_NAME_CHARS:
        return f"{where}: expected at most {MAX_NAME_CHARS} characters, got {len(value)}"
    bad = next((i for i, ch in enumerate(value) if not ch.isprintable() and unicodedata.category(ch) != "Zs"), None)
    if bad is not None:
        return f"{where}: expected printable characters, got U+{ord(value[bad]):04X} at position {bad + 1}"
    return None


#: COMMAND_RESULT.detail of a rejected (1) or failed (2) command, as the simulated devices send it
#: (docs/icd-decisions.md, 40: the ICD gives the field only); another value is shown as its number
DETAILS = {1: "a section is occupied", 2: "a section is locked in a route or the switch is held by one",
           3: "the device has no such object", 4: "the switch is moving", 5: "a section is blocked",
           6: "a section shows a fault", 7: "the line has no track, so no route is known",
           8: "no path joins the route's signals", 9: "the route was cancelled before it was set"}


# -- refusals of a request (CommandEngine raises them; nothing changes) ---------------------------

class CommandError(ValueError):
    """A request the engine refuses; nothing changed. ``code`` names the reason for the API."""

    code = "bad_request"


class UnknownObject(CommandError):
    code = "unknown_object"


class BadValue(CommandError):
    code = "bad_value"


class DeviceUnreachable(CommandError):
    code = "unreachable"


class AlreadySelected(CommandError):
    code = "already_selected"


class Interlocked(CommandError):
    code = "interlocked"


class NotSelected(CommandError):
    code = "not_selected"


class WrongOperator(CommandError):
    code = "wrong_operator"


class SelectionExpired(CommandError):
    code = "expired"


class WrongState(CommandError):
    code = "wrong_state"


class ModelError(ValueError):
    """A field of a command event has a value the audit record does not allow."""


def _check(ok: bool, where: str, expected: str, value) -> None:
    if not ok:
        raise ModelError(f"command event {where}: expected {expected}, got {value!r}")


def _uint(v, bits: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << bits)


@dataclass(frozen=True, slots=True)
class CommandEvent:
    """One transition of one command: who, what, where, with which fencing token, and how it ended.

    ``transition`` is the table's event; ``previous_state`` -> ``state`` its move.
    ``fencing_token`` is None until the zone lock is granted; ``result`` / ``detail``
    only on the COMMAND_RESULT events; ``outcome`` is a sentence for the operator on
    every terminal event (and on refusals, feedback, lock loss).
    """

    event_id: str
    seq: int
    gateway_id: int
    line: str
    command_id: int
    selection_id: str
    kind: str
    object_id: int
    device_id: int
    device: str
    value: str
    op: int
    operator: str
    workstation: str
    zone: str
    fencing_token: int | None
    transition: str
    previous_state: str
    state: str
    result: int | None
    detail: int | None
    outcome: str | None
    time_ms: int
    time: str

    def __post_init__(self) -> None:
        _check(isinstance(self.event_id, str) and _EVENT_ID.fullmatch(self.event_id) is not None, "event_id",
               "32 lower-case hex digits", self.event_id)
        _check(_uint(self.seq, 63) and self.seq >= 1, "seq", "an integer >= 1", self.seq)
        _check(_uint(self.gateway_id, 16), "gateway_id", "0..65535", self.gateway_id)
        _check(isinstance(self.line, str) and self.line != "", "line", "a line name", self.line)
        _check(_uint(self.command_id, 32) and self.command_id > 0, "command_id", "1..2^32-1 (u32)", self.command_id)
        _check(isinstance(self.selection_id, str) and self.selection_id != "", "selection_id", "an id",
               self.selection_id)
        _check(self.kind in VALUES, "kind", f"one of {', '.join(KINDS)}", self.kind)
        _check(_uint(self.object_id, 16), "object_id", "0..65535 (u16)", self.object_id)
        _check(_uint(self.device_id, 16), "device_id", "0..65535 (u16)", self.device_id)
        _check(isinstance(self.device, str) and self.device != "", "device", "the device's name", self.device)
        _check(self.value in VALUES.get(self.kind, {}), "value",
               f"one of {', '.join(VALUES.get(self.kind, {}))} for a {self.kind}", self.value)
        _check(self.op == VALUES[self.kind][self.value], "op", f"{VALUES[self.kind][self.value]} "
               f"({self.kind} {self.value})", self.op)
        for name in ("operator", "workstation"):
            problem = check_name(getattr(self, name), name)
            _check(problem is None, name, "a printable name", problem)
        _check(isinstance(self.zone, str) and self.zone != "", "zone", "a zone name", self.zone)
        _check(self.fencing_token is None or _uint(self.fencing_token, 64), "fencing_token", "null or u64",
               self.fencing_token)
        _check(self.transition in EVENTS, "transition", f"one of {', '.join(EVENTS)}", self.transition)
        _check(self.previous_state in STATES, "previous_state", f"one of {', '.join(STATES)}", self.previous_state)
        _check(TABLE.get((self.previous_state, self.transition)) == self.state, "state",
               f"{TABLE.get((self.previous_state, self.transition))} ({self.previous_state} --{self.transition}-->)",
               self.state)
        _check(self.result == RESULT_CODES.get(self.transition), "result",
               f"{RESULT_CODES.get(self.transition)} on a {self.transition} event", self.result)
        _check(self.detail is None or _uint(self.detail, 16), "detail", "null or u16", self.detail)
        _check(self.outcome is None or isinstance(self.outcome, str), "outcome", "null or text", self.outcome)
        _check(self.state not in TERMINAL or bool(self.outcome), "outcome", f"a sentence on the {self.state} event",
               self.outcome)
        _check(_uint(self.time_ms, 63), "time_ms", "epoch ms", self.time_ms)
        _check(isinstance(self.time, str) and self.time != "", "time", "an ISO 8601 time", self.time)

    @property
    def object_key(self) -> str:
        """``switch/12``: the Kafka key (every event of one object lands in one partition, in order)."""
        return f"{self.kind}/{self.object_id}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_json(self) -> dict:
        out = {"schema_version": SCHEMA_VERSION, "kind": "command_event"}
        for f in fields(self):
            out["object_kind" if f.name == "kind" else f.name] = getattr(self, f.name)
        out["object"] = self.object_key
        return out

    def encode(self) -> bytes:
        """The journal blob / Kafka value: compact UTF-8 JSON (orjson, as alarm events)."""
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, d: dict) -> CommandEvent:
        """Inverse of :meth:`to_json`; raises :class:`ModelError` naming the first bad field."""
        _check(isinstance(d, dict), "(event)", "a mapping", type(d).__name__)
        _check(d.get("schema_version") == SCHEMA_VERSION, "schema_version", str(SCHEMA_VERSION),
               d.get("schema_version"))
        _check(d.get("kind") == "command_event", "kind", "'command_event'", d.get("kind"))
        args = {}
        for f in fields(cls):
            src = "object_kind" if f.name == "kind" else f.name
            _check(src in d, src, "present", None)
            args[f.name] = d[src]
        return cls(**args)

    @classmethod
    def decode(cls, value: bytes) -> CommandEvent:
        return cls.from_json(orjson.loads(value))
