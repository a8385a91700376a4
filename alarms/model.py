"""Alarm identity and the alarm event record: the message of docs/alarm-pipeline.md.

:class:`AlarmKey` names an alarm (``source/code/object``); :class:`AlarmEvent`
is one transition of one alarm (or an info event) exactly as it travels: the
Kafka value, the journal row and the history row are all ``encode()`` /
``to_json()`` of it. Both are frozen and checked: a bad field fails in the
constructor with the field's name, so a malformed event never reaches the
journal.

Threading: immutable values, safe to share between threads.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, tzinfo

import orjson

SCHEMA_VERSION = 1
STATES = ("NORMAL", "UNACK", "ACKED", "RTN_UNACK", "SHELVED", "OUT_OF_SERVICE")
TRANSITIONS = ("raise", "clear", "ack", "shelve", "unshelve", "shelve_expired", "remove_from_service",
               "return_to_service", "evict", "group", "auto_shelve", "auto_unshelve", "info")
#: why the engine made a system transition (``cause``): the table's bound, or chattering
CAUSES = ("table_full", "chattering")
#: transitions an operator makes; their events carry the operator's name (audit)
OPERATOR_TRANSITIONS = frozenset({"ack", "shelve", "unshelve", "remove_from_service", "return_to_service"})
#: ICD severity codes 1-4 by name; ``info`` only for info events
SEVERITIES = ("critical", "major", "minor", "warning", "info")
SEVERITY_BY_ICD = {1: "critical", 2: "major", 3: "minor", 4: "warning"}

_PART = re.compile(r"[^/\s](?:[^/]*[^/\s])?")      # no slash, no surrounding blanks ("train 1025" is fine)
_CODE = re.compile(r"[A-Z][A-Z0-9_]*")
_EVENT_ID = re.compile(r"[0-9a-f]{32}")
#: bounds of what an operator types or the admin API records with an action (in characters)
MAX_OPERATOR_CHARS = 64
MAX_REASON_CHARS = 500
MAX_CLIENT_CHARS = 64
#: optional event fields, present only when set (older messages lack them): an operator action's client and
#: reason; a system transition's cause; a flood group's members (on the group) or the group (on a member)
OPTIONAL_EVENT_FIELDS = ("client", "reason", "cause", "group")


class ModelError(ValueError):
    """A field of an alarm key or event has a value the message format does not allow."""


def _check(ok: bool, where: str, expected: str, value) -> None:
    if not ok:
        raise ModelError(f"{where}: expected {expected}, got {value!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unprintable(text: str) -> int | None:
    """The index of the first character a terminal or a log line must not get raw: Unicode categories C*
    (controls such as ESC and newline, format characters such as U+202E, surrogates, unassigned) and the
    line and paragraph separators; None when there is none. Spaces of any script are fine."""
    if text.isprintable():
        return None
    return next((i for i, ch in enumerate(text) if not ch.isprintable() and unicodedata.category(ch) != "Zs"),
                None)


def _check_text(value, where: str, max_chars: int, *, required: bool) -> None:
    """A bounded, printable, single-line text field. The message names the field and the problem, not the
    whole value: an oversized one would otherwise come back in every error."""
    if value is None and not required:
        return
    if not isinstance(value, str) or not value.strip():
        raise ModelError(f"{where}: expected 1..{max_chars} printable characters, got {value!r}"[:200])
    if len(value) > max_chars:
        raise ModelError(f"{where}: expected at most {max_chars} characters, got {len(value)}")
    bad = _unprintable(value)
    if bad is not None:
        raise ModelError(f"{where}: expected printable characters, got U+{ord(value[bad]):04X} "
                         f"({unicodedata.name(value[bad], unicodedata.category(value[bad]))}) at position {bad + 1}")


def iso_time(time_ms: int, tz: tzinfo) -> str:
    """``2026-11-24T01:26:14.859+08:00``: the message's ``time`` in the line's zone, millisecond precision."""
    return datetime.fromtimestamp(time_ms / 1000, tz).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class AlarmKey:
    """``source/code/object``; ``object`` is ``-`` when the alarm is about the source as a whole."""

    source: str
    code: str
    object: str = "-"

    def __post_init__(self) -> None:
        _check(isinstance(self.source, str) and _PART.fullmatch(self.source) is not None, "alarm.source",
               "non-empty text without '/'", self.source)
        _check(isinstance(self.code, str) and _CODE.fullmatch(self.code) is not None, "alarm.code",
               "an upper-case code [A-Z][A-Z0-9_]*", self.code)
        _check(isinstance(self.object, str) and _PART.fullmatch(self.object) is not None, "alarm.object",
               "non-empty text without '/' ('-' for none)", self.object)

    def __str__(self) -> str:
        return f"{self.source}/{self.code}/{self.object}"

    @classmethod
    def parse(cls, text: str) -> AlarmKey:
        parts = text.split("/") if isinstance(text, str) else []
        _check(len(parts) == 3, "alarm.key", "'source/code/object'", text)
        return cls(*parts)

    def to_json(self) -> dict:
        return {"key": str(self), "source": self.source, "code": self.code, "object": self.object}

    @classmethod
    def from_json(cls, d: dict) -> AlarmKey:
        _check(isinstance(d, dict), "alarm", "a mapping", d)
        key = cls(d.get("source"), d.get("code"), d.get("object"))
        _check(d.get("key") == str(key), "alarm.key", f"{str(key)!r} (source/code/object)", d.get("key"))
        return key


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One transition of one alarm, as published (``kind: event`` of the message schema)."""

    event_id: str
    event_seq: int
    gateway_id: int
    line: str
    alarm: AlarmKey
    severity: str
    text: str
    transition: str
    previous_state: str
    state: str
    active: bool
    chattering: bool
    operator: str | None
    shelved_until_ms: int | None
    raised_ms: int
    time_ms: int
    time: str
    #: operator actions through the admin API: the client's address (``ip:port``) and the reason given
    client: str | None = None
    reason: str | None = None
    #: ``table_full`` (evict, group) or ``chattering`` (auto_shelve, auto_unshelve, and the group events of a
    #: chattering member); None otherwise
    cause: str | None = None
    #: a flood group alarm's ``{"key", "members", "active", "first", "last"}``; a grouped member's ``{"key"}``
    group: dict | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.event_id, str) and _EVENT_ID.fullmatch(self.event_id) is not None, "event_id",
               "32 lower-case hex digits", self.event_id)
        _check(_is_int(self.event_seq) and self.event_seq >= 1, "event_seq", "an integer >= 1", self.event_seq)
        _check(_is_int(self.gateway_id) and self.gateway_id >= 0, "gateway_id", "an integer >= 0", self.gateway_id)
        _check(isinstance(self.line, str) and self.line != "", "line", "a non-empty line name", self.line)
        _check(isinstance(self.alarm, AlarmKey), "alarm", "an AlarmKey", self.alarm)
        _check(self.severity in SEVERITIES, "severity", f"one of {', '.join(SEVERITIES)}", self.severity)
        _check(isinstance(self.text, str), "text", "text", self.text)
        _check(self.transition in TRANSITIONS, "transition", f"one of {', '.join(TRANSITIONS)}", self.transition)
        _check(self.previous_state in STATES, "previous_state", f"one of {', '.join(STATES)}", self.previous_state)
        _check(self.state in STATES, "state", f"one of {', '.join(STATES)}", self.state)
        _check(isinstance(self.active, bool), "active", "true or false", self.active)
        _check(isinstance(self.chattering, bool), "chattering", "true or false", self.chattering)
        if self.transition in OPERATOR_TRANSITIONS:
            _check(isinstance(self.operator, str) and self.operator.strip() != "", "operator",
                   f"the operator's name (required for {self.transition})", self.operator)
        else:
            _check(self.operator is None or (isinstance(self.operator, str) and self.operator.strip() != ""),
                   "operator", "null or a non-empty name", self.operator)
        _check((self.severity == "info") == (self.transition == "info"), "severity",
               "'info' exactly for info events", self.severity)
        _check(self.shelved_until_ms is None or _is_int(self.shelved_until_ms), "shelved_until_ms",
               "null or epoch ms", self.shelved_until_ms)
        _check(_is_int(self.raised_ms) and self.raised_ms >= 0, "raised_ms", "epoch ms", self.raised_ms)
        _check(_is_int(self.time_ms) and self.time_ms >= 0, "time_ms", "epoch ms", self.time_ms)
        _check(isinstance(self.time, str) and self.time != "", "time", "an ISO 8601 time", self.time)
        if self.client is not None or self.reason is not None:
            _check(self.transition in OPERATOR_TRANSITIONS, "client, reason", "null except for operator actions",
                   self.client if self.client is not None else self.reason)
            _check_text(self.client, "client", MAX_CLIENT_CHARS, required=False)
            _check_text(self.reason, "reason", MAX_REASON_CHARS, required=False)
        _check(self.cause is None or self.cause in CAUSES, "cause", f"null or one of {', '.join(CAUSES)}", self.cause)
        _check(self.transition not in ("evict", "group", "auto_shelve", "auto_unshelve") or self.cause is not None,
               "cause", f"the cause of the system transition {self.transition}", self.cause)
        _check(self.group is None or (isinstance(self.group, dict) and isinstance(self.group.get("key"), str)),
               "group", "null or a mapping with the group alarm's key", self.group)
        _check((self.transition == "group") <= (self.group is not None), "group",
               "the group alarm of a group event", self.group)

    @property
    def key(self) -> str:
        return str(self.alarm)

    def to_json(self) -> dict:
        """The message; ``client`` and ``reason`` only when set, so every other message keeps its shape."""
        out = {"schema_version": SCHEMA_VERSION, "kind": "event", "event_id": self.event_id,
               "event_seq": self.event_seq, "gateway_id": self.gateway_id, "line": self.line,
               "alarm": self.alarm.to_json(), "severity": self.severity, "text": self.text,
               "transition": self.transition, "previous_state": self.previous_state, "state": self.state,
               "active": self.active, "chattering": self.chattering, "operator": self.operator,
               "shelved_until_ms": self.shelved_until_ms, "raised_ms": self.raised_ms,
               "time_ms": self.time_ms, "time": self.time}
        if self.client is not None:
            out["client"] = self.client
        if self.reason is not None:
            out["reason"] = self.reason
        if self.cause is not None:
            out["cause"] = self.cause
        if self.group is not None:
            out["group"] = self.group
        return out

    def encode(self) -> bytes:
        """The Kafka value / journal blob: compact UTF-8 JSON.

        orjson writes the same bytes as ``json.dumps(..., ensure_ascii=False,
        separators=(",", ":")).encode()`` (tested) in a fraction of the time:
        this runs once per event on the alarm thread.
        """
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, d: dict) -> AlarmEvent:
        """Inverse of :meth:`to_json`; raises :class:`ModelError` naming the first bad field."""
        _check(isinstance(d, dict), "(event)", "a mapping", type(d).__name__)
        _check(d.get("schema_version") == SCHEMA_VERSION, "schema_version", str(SCHEMA_VERSION),
               d.get("schema_version"))
        _check(d.get("kind") == "event", "kind", "'event'", d.get("kind"))
        names = cls.__dataclass_fields__
        missing = [n for n in names if n not in d and n not in OPTIONAL_EVENT_FIELDS]
        _check(not missing, "(event)", "every field present", f"missing {', '.join(missing)}")
        args = {n: d[n] for n in names if n in d}
        args["alarm"] = AlarmKey.from_json(d["alarm"])
        return cls(**args)

    @classmethod
    def decode(cls, value: bytes) -> AlarmEvent:
        return cls.from_json(orjson.loads(value))


# -- inputs to the engine (what AlarmService.submit carries) -------------------------------------------------

@dataclass(frozen=True, slots=True)
class RaiseAlarm:
    key: AlarmKey
    severity: str
    text: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class ClearAlarm:
    key: AlarmKey
    time_ms: int


@dataclass(frozen=True, slots=True)
class InfoEvent:
    key: AlarmKey
    text: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """``action`` is one of OPERATOR_TRANSITIONS; ``minutes`` only for ``shelve``.

    Checked here, before it is queued for the alarm thread, so a malformed action is the caller's
    error (the admin API's 400) and never reaches the journal: ``key`` is parsed (a text key becomes
    an :class:`AlarmKey`); ``operator`` is 1..64 printable characters, ``reason`` (optional) up to
    500, neither with control characters (a name is printed in CLI tables and history lines);
    ``client`` is the address the action came from (the admin API's peer), recorded in its events.
    """

    action: str
    key: AlarmKey | str
    operator: str
    time_ms: int
    minutes: float | None = None
    reason: str | None = None
    client: str | None = None

    def __post_init__(self) -> None:
        _check(self.action in OPERATOR_TRANSITIONS, "action", f"one of {', '.join(sorted(OPERATOR_TRANSITIONS))}",
               self.action)
        if not isinstance(self.key, AlarmKey):
            _check(isinstance(self.key, str) and len(self.key) <= 1024, "key", "'source/code/object'",
                   self.key if not isinstance(self.key, str) else f"{len(self.key)} characters")
            object.__setattr__(self, "key", AlarmKey.parse(self.key))
        _check_text(self.operator, "operator", MAX_OPERATOR_CHARS, required=True)
        _check((self.minutes is not None) == (self.action == "shelve"), "minutes",
               "a number for shelve and nothing otherwise", self.minutes)
        _check_text(self.reason, "reason", MAX_REASON_CHARS, required=False)
        _check_text(self.client, "client", MAX_CLIENT_CHARS, required=False)


AlarmInput = RaiseAlarm | ClearAlarm | InfoEvent | OperatorAction
