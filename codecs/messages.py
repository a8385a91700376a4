"""The ICD v1 messages (sections 4 and 5) as frozen, checked dataclasses.

Each message class knows its type code, name, payload layout, how to pack
itself and how to parse a payload. Field names are exactly the ICD's, so the
JSON the tools print matches the ICD tables. Constructors reject out-of-range
values with :class:`FieldError` (our fault); ``unpack`` raises
:class:`PayloadError`, and nothing else, for payloads that do not parse (the
peer's fault, which decoders report as ``bad_payload``).

``unpack`` is defined once, in :class:`Message`: it runs the type's
``_parse`` and turns whatever a payload can provoke there (a field check's
:class:`FieldError` from the constructor, ``struct.error``,
``UnicodeDecodeError``, ``IndexError``, ``ValueError``) into
:class:`PayloadError`. So an enumerated field out of range on the wire (ICD
section 3) is ``bad_payload`` for every type, today's and future ones.

UDP messages (0x50-0x52) have one fixed payload size each, zero padding
included; padding and unused diagnostic entries must be zero on the wire
(a non-zero padding byte is ``bad_payload``: we never guess at unknown bits).

Pure data, no IO; safe from any thread.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import ClassVar

from .errors import FieldError, PayloadError

#: what parsing hostile bytes can raise besides PayloadError (UnicodeDecodeError and
#: FieldError are ValueErrors); unpack() reports all of them as bad_payload
_PAYLOAD_FAULTS = (ValueError, struct.error, IndexError)

# --- field checks (shared by every constructor) ---------------------------

_UMAX = {8: 0xFF, 16: 0xFFFF, 32: 0xFFFF_FFFF, 64: 0xFFFF_FFFF_FFFF_FFFF}


def check_uint(msg: str, name: str, value: object, bits: int) -> None:
    if type(value) is not int or not 0 <= value <= _UMAX[bits]:
        raise FieldError(f"{msg}.{name}: expected an integer 0..{_UMAX[bits]} (u{bits}), got {value!r}")


def check_choice(msg: str, name: str, value: object, allowed: range | frozenset) -> None:
    if type(value) is not int or value not in allowed:
        shown = f"{allowed.start}..{allowed.stop - 1}" if isinstance(allowed, range) else sorted(allowed)
        raise FieldError(f"{msg}.{name}: expected one of {shown}, got {value!r}")


class Message:
    """Base of all messages: ``TYPE``, ``NAME``, ``pack()`` and ``unpack()``."""

    __slots__ = ()
    TYPE: ClassVar[int]
    NAME: ClassVar[str]
    #: per-link messages carry seq 0 and are not sequenced (ICD section 6)
    PER_LINK: ClassVar[bool] = False
    #: fixed payload size for UDP messages, None for TCP messages
    FIXED_PAYLOAD: ClassVar[int | None] = None

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if "unpack" in cls.__dict__:  # it would bypass the error mapping below
            raise TypeError(f"{cls.__name__}: override _parse(), not unpack()")

    def pack(self) -> bytes:
        raise NotImplementedError  # every concrete message overrides it

    @classmethod
    def unpack(cls, payload: bytes | memoryview) -> "Message":
        """Parse a payload; raises :class:`PayloadError` (and only that) if it does not parse."""
        try:
            return cls._parse(payload)
        except PayloadError:
            raise
        except FieldError as exc:  # a field out of its range: the text names message and field
            raise PayloadError(str(exc)) from None
        except _PAYLOAD_FAULTS as exc:
            raise PayloadError(f"{cls.NAME}: {type(exc).__name__}: {exc}") from None

    @classmethod
    def _parse(cls, payload: bytes | memoryview) -> "Message":
        """The type's parser (what each message overrides). It may build the message
        with its constructor, whose field checks then reject values out of range."""
        raise NotImplementedError  # every concrete message overrides it

    def to_fields(self) -> dict:
        """Field values under their ICD names (JSON-ready)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


# --- per-link messages -----------------------------------------------------

_HELLO = struct.Struct(">BBH16sQ")


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE: ClassVar[int] = 0x01
    NAME: ClassVar[str] = "HELLO"
    PER_LINK: ClassVar[bool] = True
    device_kind: int
    net: int
    heartbeat_ms: int
    version: str
    #: random, new for every HELLO (ICD 1.1); with the HELLO_ACK's session_nonce it makes the session key
    device_nonce: int

    def __post_init__(self) -> None:
        check_choice("HELLO", "device_kind", self.device_kind, range(1, 5))
        check_choice("HELLO", "net", self.net, range(0, 2))
        check_uint("HELLO", "heartbeat_ms", self.heartbeat_ms, 16)
        if not isinstance(self.version, str) or not self.version.isascii() or len(self.version) > 16 \
                or "\0" in self.version:
            raise FieldError(f"HELLO.version: expected ASCII text of at most 16 characters, got {self.version!r}")
        check_uint("HELLO", "device_nonce", self.device_nonce, 64)

    def pack(self) -> bytes:
        return _HELLO.pack(self.device_kind, self.net, self.heartbeat_ms, self.version.encode("ascii"),
                           self.device_nonce)

    @classmethod
    def _parse(cls, payload):
        if len(payload) != _HELLO.size:
            raise PayloadError(f"HELLO payload is {len(payload)} bytes, expected {_HELLO.size}")
        kind, net, hb, raw, nonce = _HELLO.unpack(payload)
        text = raw.rstrip(b"\0")
        if b"\0" in text:
            raise PayloadError("HELLO.version has a NUL inside the text")
        try:
            version = text.decode("ascii")
        except UnicodeDecodeError:
            raise PayloadError("HELLO.version is not ASCII") from None
        return cls(kind, net, hb, version, nonce)


_HELLO_ACK = struct.Struct(">BHQQ")


@dataclass(frozen=True, slots=True)
class HelloAck(Message):
    TYPE: ClassVar[int] = 0x81
    NAME: ClassVar[str] = "HELLO_ACK"
    PER_LINK: ClassVar[bool] = True
    OK: ClassVar[int] = 0
    UNKNOWN_DEVICE: ClassVar[int] = 1
    BAD_VERSION: ClassVar[int] = 2
    MAC_REQUIRED: ClassVar[int] = 3
    result: int
    heartbeat_ms: int
    gateway_time_ms: int
    #: random, new for every HELLO_ACK (ICD 1.1); 0 when result is not 0
    session_nonce: int

    def __post_init__(self) -> None:
        check_choice("HELLO_ACK", "result", self.result, range(0, 4))
        check_uint("HELLO_ACK", "heartbeat_ms", self.heartbeat_ms, 16)
        check_uint("HELLO_ACK", "gateway_time_ms", self.gateway_time_ms, 64)
        check_uint("HELLO_ACK", "session_nonce", self.session_nonce, 64)
        if self.result != self.OK and self.session_nonce != 0:
            # a refusal opens no session: a nonce there is an unknown meaning, never guessed at
            raise FieldError(f"HELLO_ACK.session_nonce: must be 0 when result is {self.result}, "
                             f"got {self.session_nonce}")

    def pack(self) -> bytes:
        return _HELLO_ACK.pack(self.result, self.heartbeat_ms, self.gateway_time_ms, self.session_nonce)

    @classmethod
    def _parse(cls, payload):
        if len(payload) != _HELLO_ACK.size:
            raise PayloadError(f"HELLO_ACK payload is {len(payload)} bytes, expected {_HELLO_ACK.size}")
        return cls(*_HELLO_ACK.unpack(payload))


_NONCES = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True)
class SessionConfirm(Message):
    """Device -> gateway after HELLO_ACK (ICD 1.1): both nonces echoed; its MAC uses the session key."""

    TYPE: ClassVar[int] = 0x03
    NAME: ClassVar[str] = "SESSION_CONFIRM"
    PER_LINK: ClassVar[bool] = True
    device_nonce: int
    session_nonce: int

    def __post_init__(self) -> None:
        check_uint("SESSION_CONFIRM", "device_nonce", self.device_nonce, 64)
        check_uint("SESSION_CONFIRM", "session_nonce", self.session_nonce, 64)

    def pack(self) -> bytes:
        return _NONCES.pack(self.device_nonce, self.session_nonce)

    @classmethod
    def _parse(cls, payload):
        if len(payload) != _NONCES.size:
            raise PayloadError(f"SESSION_CONFIRM payload is {len(payload)} bytes, expected {_NONCES.size}")
        return cls(*_NONCES.unpack(payload))


_U32 = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    TYPE: ClassVar[int] = 0x02
    NAME: ClassVar[str] = "HEARTBEAT"
    PER_LINK: ClassVar[bool] = True
    counter: int

    def __post_init__(self) -> None:
        check_uint("HEARTBEAT", "counter", self.counter, 32)

    def pack(self) -> bytes:
        return _U32.pack(self.counter)

    @classmethod
    def _parse(cls, payload):
        if len(payload) != 4:
            raise PayloadError(f"HEARTBEAT payload is {len(payload)} bytes, expected 4")
        return cls(_U32.unpack(payload)[0])


@dataclass(frozen=True, slots=True)
class Close(Message):
    TYPE: ClassVar[int] = 0x7E
    NAME: ClassVar[str] = "CLOSE"
    PER_LINK: ClassVar[bool] = True
    NORMAL: ClassVar[int] = 0
    HEARTBEAT_TIMEOUT: ClassVar[int] = 1
    PROTOCOL_ERROR: ClassVar[int] = 2
    REPLACED: ClassVar[int] = 3
    reason: int

    def __post_init__(self) -> None:
        check_choice("CLOSE", "reason", self.reason, range(0, 4))

    def pack(self) -> bytes:
        return bytes((self.reason,))

    @classmethod
    def _parse(cls, payload):
        if len(payload) != 1:
            raise PayloadError(f"CLOSE payload is {len(payload)} bytes, expected 1")
        return cls(payload[0])


# --- status lists: u16 n, then n x (u16 id, u8 value) ----------------------

_ITEM = struct.Struct(">HB")
_U16 = struct.Struct(">H")


class _StatusList(Message):
    """Shared layout of TRACK_SECTIONS, SIGNALS and SWITCHES."""

    __slots__ = ()
    VALUE_NAME: ClassVar[str]
    VALUES: ClassVar[range]
    items: tuple

    def __post_init__(self) -> None:
        items = self.items
        if not isinstance(items, tuple):
            items = tuple(tuple(i) for i in items)
            object.__setattr__(self, "items", items)
        if len(items) > 0xFFFF or 2 + 3 * len(items) > 4096:
            raise FieldError(f"{self.NAME}.items: at most 1364 entries fit in one frame, got {len(items)}")
        for entry in items:
            if len(entry) != 2:
                raise FieldError(f"{self.NAME}.items: each entry is (id, {self.VALUE_NAME}), got {entry!r}")
            check_uint(self.NAME, "items[].id", entry[0], 16)
            check_choice(self.NAME, f"items[].{self.VALUE_NAME}", entry[1], self.VALUES)

    def pack(self) -> bytes:
        return _U16.pack(len(self.items)) + b"".join(_ITEM.pack(i, v) for i, v in self.items)

    @classmethod
    def _parse(cls, payload):
        if len(payload) < 2:
            raise PayloadError(f"{cls.NAME} payload is {len(payload)} bytes, too short for its count")
        (n,) = _U16.unpack_from(payload, 0)
        if len(payload) != 2 + 3 * n:
            raise PayloadError(f"{cls.NAME} says {n} entries ({2 + 3 * n} bytes) but the payload is {len(payload)} bytes")
        items = tuple(_ITEM.iter_unpack(payload[2:]))
        values = cls.VALUES
        for _, v in items:
            if v not in values:
                raise PayloadError(f"{cls.NAME}: {cls.VALUE_NAME} {v} is not defined")
        obj = cls.__new__(cls)  # fields already checked above: skip the constructor's second pass
        object.__setattr__(obj, "items", items)
        return obj


@dataclass(frozen=True, slots=True)
class TrackSections(_StatusList):
    TYPE: ClassVar[int] = 0x10
    NAME: ClassVar[str] = "TRACK_SECTIONS"
    VALUE_NAME: ClassVar[str] = "state"
    VALUES: ClassVar[range] = range(0, 4)  # free, occupied, fault, locked in a route
    FREE: ClassVar[int] = 0
    OCCUPIED: ClassVar[int] = 1
    FAULT: ClassVar[int] = 2
    LOCKED: ClassVar[int] = 3
    items: tuple


@dataclass(frozen=True, slots=True)
class Signals(_StatusList):
    TYPE: ClassVar[int] = 0x11
    NAME: ClassVar[str] = "SIGNALS"
    VALUE_NAME: ClassVar[str] = "aspect"
    VALUES: ClassVar[range] = range(0, 6)  # red, yellow, green, double yellow, shunt white, dark/fault
    RED: ClassVar[int] = 0
    YELLOW: ClassVar[int] = 1
    GREEN: ClassVar[int] = 2
    items: tuple


@dataclass(frozen=True, slots=True)
class Switches(_StatusList):
    TYPE: ClassVar[int] = 0x12
    NAME: ClassVar[str] = "SWITCHES"
    VALUE_NAME: ClassVar[str] = "position"
    VALUES: ClassVar[range] = range(0, 4)  # normal, reverse, moving, lost
    NORMAL: ClassVar[int] = 0
    REVERSE: ClassVar[int] = 1
    MOVING: ClassVar[int] = 2
    LOST: ClassVar[int] = 3
    items: tuple


# --- device alarm, commands --------------------------------------------------

_ALARM = struct.Struct(">HBBHB")


@dataclass(frozen=True, slots=True)
class DeviceAlarm(Message):
    TYPE: ClassVar[int] = 0x20
    NAME: ClassVar[str] = "DEVICE_ALARM"
    RAISE: ClassVar[int] = 1
    CLEAR: ClassVar[int] = 0
    code: int
    severity: int
    action: int
    object_id: int
    text: str

    def __post_init__(self) -> None:
        check_uint("DEVICE_ALARM", "code", self.code, 16)
        check_choice("DEVICE_ALARM", "severity", self.severity, range(1, 5))
        check_choice("DEVICE_ALARM", "action", self.action, range(0, 2))
        check_uint("DEVICE_ALARM", "object_id", self.object_id, 16)
        if not isinstance(self.text, str) or len(self.text.encode("utf-8")) > 255:
            raise FieldError(f"DEVICE_ALARM.text: expected text of at most 255 UTF-8 bytes, got {self.text!r}")

    def pack(self) -> bytes:
        raw = self.text.encode("utf-8")
        return _ALARM.pack(self.code, self.severity, self.action, self.object_id, len(raw)) + raw

    @classmethod
    def _parse(cls, payload):
        if len(payload) < _ALARM.size:
            raise PayloadError(f"DEVICE_ALARM payload is {len(payload)} bytes, shorter than its {_ALARM.size}-byte head")
        code, sev, action, obj, n = _ALARM.unpack_from(payload, 0)
        if len(payload) != _ALARM.size + n:
            raise PayloadError(f"DEVICE_ALARM text_len is {n} but {len(payload) - _ALARM.size} text bytes follow")
        try:
            text = bytes(payload[_ALARM.size:]).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("DEVICE_ALARM.text is not valid UTF-8") from None
        return cls(code, sev, action, obj, text)


_COMMAND = struct.Struct(">IBHHQ")


@dataclass(frozen=True, slots=True)
class Command(Message):
    TYPE: ClassVar[int] = 0x30
    NAME: ClassVar[str] = "COMMAND"
    command_id: int
    op: int
    object_id: int
    arg: int
    fencing_token: int

    def __post_init__(self) -> None:
        check_uint("COMMAND", "command_id", self.command_id, 32)
        check_choice("COMMAND", "op", self.op, range(1, 7))
        check_uint("COMMAND", "object_id", self.object_id, 16)
        check_uint("COMMAND", "arg", self.arg, 16)
        check_uint("COMMAND", "fencing_token", self.fencing_token, 64)

    def pack(self) -> bytes:
        return _COMMAND.pack(self.command_id, self.op, self.object_id, self.arg, self.fencing_token)

    @classmethod
    def _parse(cls, payload):
        if len(payload) != _COMMAND.size:
            raise PayloadError(f"COMMAND payload is {len(payload)} bytes, expected {_COMMAND.size}")
        return cls(*_COMMAND.unpack(payload))


_COMMAND_RESULT = struct.Struct(">IBH")


@dataclass(frozen=True, slots=True)
class CommandResult(Message):
    TYPE: ClassVar[int] = 0x31
    NAME: ClassVar[str] = "COMMAND_RESULT"
    command_id: int
    result: int
    detail: int

    def __post_init__(self) -> None:
        check_uint("COMMAND_RESULT", "command_id", self.command_id, 32)
        check_choice("COMMAND_RESULT", "result", self.result, range(0, 4))
        check_uint("COMMAND_RESULT", "detail", self.detail, 16)

    def pack(self) -> bytes:
        return _COMMAND_RESULT.pack(self.command_id, self.result, self.detail)

    @classmethod
    def _parse(cls, payload):
        if len(payload) != _COMMAND_RESULT.size:
            raise PayloadError(f"COMMAND_RESULT payload is {len(payload)} bytes, expected {_COMMAND_RESULT.size}")
        return cls(*_COMMAND_RESULT.unpack(payload))
