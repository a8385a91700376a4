"""The ICD v1 UDP messages (section 5): fixed-size train datagrams.

Each type has one payload size; with the 24-byte header and the 4-byte CRC
that gives the datagram sizes of the ICD (32, 64, 128; 16 more with a MAC).
Padding and the unused TRAIN_DIAG entries must be zero on the wire: a
non-zero byte there is ``bad_payload``, since unknown bits are never guessed at.

Pure data, no IO; safe from any thread.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from .errors import FieldError, PayloadError
from .messages import Message, check_choice, check_uint

_U32 = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class TrainHeartbeat(Message):
    TYPE: ClassVar[int] = 0x51
    NAME: ClassVar[str] = "TRAIN_HEARTBEAT"
    FIXED_PAYLOAD: ClassVar[int] = 4
    counter: int

    def __post_init__(self) -> None:
        check_uint("TRAIN_HEARTBEAT", "counter", self.counter, 32)

    def pack(self) -> bytes:
        return _U32.pack(self.counter)

    @classmethod
    def _parse(cls, payload):
        if len(payload) != 4:
            raise PayloadError(f"TRAIN_HEARTBEAT payload is {len(payload)} bytes, expected 4")
        return cls(_U32.unpack(payload)[0])


# u16 section, u32 offset, i16 speed, u8 direction, u8 mode, u16 consist,
# u8 coupling, u8 role, u16 peer, u8 doors, u8 fault_flags, 18 x pad
_STATUS = struct.Struct(">HIhBBHBBHBB18s")
_ZERO18 = bytes(18)


@dataclass(frozen=True, slots=True)
class TrainStatus(Message):
    TYPE: ClassVar[int] = 0x50
    NAME: ClassVar[str] = "TRAIN_STATUS"
    FIXED_PAYLOAD: ClassVar[int] = 36
    # coupling
    DECOUPLED: ClassVar[int] = 0
    COUPLING: ClassVar[int] = 1
    COUPLED: ClassVar[int] = 2
    DECOUPLING: ClassVar[int] = 3
    # role
    ROLE_NONE: ClassVar[int] = 0
    MASTER: ClassVar[int] = 1
    SLAVE: ClassVar[int] = 2
    section_id: int
    offset_cm: int
    speed_cm_s: int
    direction: int
    mode: int
    consist_id: int
    coupling: int
    role: int
    peer_train: int
    doors: int
    fault_flags: int

    def __post_init__(self) -> None:
        n = "TRAIN_STATUS"
        check_uint(n, "section_id", self.section_id, 16)
        check_uint(n, "offset_cm", self.offset_cm, 32)
        if type(self.speed_cm_s) is not int or not -32768 <= self.speed_cm_s <= 32767:
            raise FieldError(f"TRAIN_STATUS.speed_cm_s: expected an integer -32768..32767 (i16), got {self.speed_cm_s!r}")
        check_choice(n, "direction", self.direction, range(0, 2))
        check_choice(n, "mode", self.mode, range(0, 4))
        check_uint(n, "consist_id", self.consist_id, 16)
        check_choice(n, "coupling", self.coupling, range(0, 4))
        check_choice(n, "role", self.role, range(0, 3))
        check_uint(n, "peer_train", self.peer_train, 16)
        check_choice(n, "doors", self.doors, range(0, 3))
        check_uint(n, "fault_flags", self.fault_flags, 8)

    def pack(self) -> bytes:
        return _STATUS.pack(self.section_id, self.offset_cm, self.speed_cm_s, self.direction, self.mode,
                            self.consist_id, self.coupling, self.role, self.peer_train, self.doors,
                            self.fault_flags, _ZERO18)

    @classmethod
    def _parse(cls, payload):
        if len(payload) != _STATUS.size:
            raise PayloadError(f"TRAIN_STATUS payload is {len(payload)} bytes, expected {_STATUS.size}")
        *values, pad = _STATUS.unpack(payload)
        if pad != _ZERO18:
            raise PayloadError("TRAIN_STATUS padding is not zero")
        return cls(*values)


_DIAG_ENTRY = struct.Struct(">HBB")
DIAG_SLOTS = 24


@dataclass(frozen=True, slots=True)
class TrainDiag(Message):
    """Up to 24 diagnostic entries ``(code, severity 1..4, active 0/1)``."""

    TYPE: ClassVar[int] = 0x52
    NAME: ClassVar[str] = "TRAIN_DIAG"
    FIXED_PAYLOAD: ClassVar[int] = 2 + DIAG_SLOTS * 4 + 2
    items: tuple

    def __post_init__(self) -> None:
        items = self.items
        if not isinstance(items, tuple):
            items = tuple(tuple(i) for i in items)
            object.__setattr__(self, "items", items)
        if len(items) > DIAG_SLOTS:
            raise FieldError(f"TRAIN_DIAG.items: at most {DIAG_SLOTS} entries, got {len(items)}")
        for entry in items:
            if len(entry) != 3:
                raise FieldError(f"TRAIN_DIAG.items: each entry is (code, severity, active), got {entry!r}")
            check_uint("TRAIN_DIAG", "items[].code", entry[0], 16)
            check_choice("TRAIN_DIAG", "items[].severity", entry[1], range(1, 5))
            check_choice("TRAIN_DIAG", "items[].active", entry[2], range(0, 2))

    def pack(self) -> bytes:
        body = b"".join(_DIAG_ENTRY.pack(*e) for e in self.items)
        return struct.pack(">H", len(self.items)) + body + bytes(self.FIXED_PAYLOAD - 2 - len(body))

    @classmethod
    def _parse(cls, payload):
        if len(payload) != cls.FIXED_PAYLOAD:
            raise PayloadError(f"TRAIN_DIAG payload is {len(payload)} bytes, expected {cls.FIXED_PAYLOAD}")
        n = (payload[0] << 8) | payload[1]
        if n > DIAG_SLOTS:
            raise PayloadError(f"TRAIN_DIAG says {n} entries, at most {DIAG_SLOTS} fit")
        used = 2 + 4 * n
        if any(payload[used:]):
            raise PayloadError("TRAIN_DIAG entries past n (or the padding) are not zero")
        return cls(tuple(_DIAG_ENTRY.iter_unpack(payload[2:used])))
