"""ICD v1 frames: the 24-byte common header, MAC, CRC, encode and the one-frame parser.

::

    0      2   3    4     5     6    8    10       14        22     24        24+L      end-4  end
    | A55A | 1 |type|flags| 0x00 | src | dst | seq | time_ms | len  | payload | [mac 16] | crc32 |

``parse_at`` is the shared core of the stream decoder (TCP) and the datagram
decoder (UDP): it looks at one contiguous buffer, never copies the payload
before the CRC has passed, and says either "need N bytes", "a frame of N
bytes", or "an error, resume at offset X". It is buffer-agnostic so the
gateway's receive buffer can hand it a view straight into its memory.

Pure functions and frozen data, no IO; safe from any thread.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from dataclasses import dataclass

from .errors import FieldError, FrameError, PayloadError, Reason
from .messages import (Close, Command, CommandResult, DeviceAlarm, Heartbeat, Hello, HelloAck, Message,
                       SessionConfirm, Signals, Switches, TrackSections, check_uint)
from .train_messages import TrainDiag, TrainHeartbeat, TrainStatus

SYNC = 0xA55A
SYNC_BYTES = b"\xa5\x5a"
VERSION = 1
HEADER_LEN = 24
MAC_LEN = 16
CRC_LEN = 4
MAX_PAYLOAD = 4096
FLAG_MAC = 0x01
#: the largest frame on the wire; also the cap on bytes buffered for one frame
MAX_FRAME_LEN = HEADER_LEN + MAX_PAYLOAD + MAC_LEN + CRC_LEN

HEADER = struct.Struct(">HBBBBHHIQH")
_CRC = struct.Struct(">I")
#: the header without sync, version and reserved (checked before finish() runs)
_FINISH_FIELDS = struct.Struct(">3xBB1xHHIQH")

#: every message type of the ICD, by type code
ALL_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, HelloAck, SessionConfirm, Heartbeat, TrackSections, Signals, Switches,
                              DeviceAlarm, Command, CommandResult, Close, TrainStatus, TrainHeartbeat, TrainDiag)
}
#: what a gateway accepts on a device's TCP link (device -> gateway and both-way messages)
GATEWAY_RX_TYPES = {t: ALL_TYPES[t] for t in (0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x20, 0x31, 0x7E)}
#: what a device accepts from the gateway
DEVICE_RX_TYPES = {t: ALL_TYPES[t] for t in (0x81, 0x02, 0x30, 0x7E)}
#: TCP messages (section 4) and UDP messages (section 5)
TCP_TYPES = {t: c for t, c in ALL_TYPES.items() if c.FIXED_PAYLOAD is None}
UDP_TYPES = {t: c for t, c in ALL_TYPES.items() if c.FIXED_PAYLOAD is not None}


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded (or to-be-encoded) frame: header fields plus its message."""

    src: int
    dst: int
    seq: int
    time_ms: int
    message: Message
    mac: bool = False

    def __post_init__(self) -> None:
        check_uint("frame", "src", self.src, 16)
        check_uint("frame", "dst", self.dst, 16)
        check_uint("frame", "seq", self.seq, 32)
        check_uint("frame", "time_ms", self.time_ms, 64)
        if not isinstance(self.message, Message):
            raise FieldError(f"frame.message: expected an ICD message, got {self.message!r}")

    @property
    def type(self) -> int:
        return self.message.TYPE

    @property
    def name(self) -> str:
        return self.message.NAME

    def to_json(self) -> dict:
        """The `gateway decode` view: header fields and the ICD field names."""
        return {"type": self.message.NAME, "src": self.src, "dst": self.dst, "seq": self.seq,
                "time_ms": self.time_ms, "mac": self.mac, "fields": self.message.to_fields()}


# Decoders build a Frame from fields they have just unpacked with HEADER, whose formats already
# bound every integer to its ICD width, and from a message the type's own unpack() built: the
# constructor's checks could never fail there, and they cost more than the rest of finish().
# So decoded frames are filled through the slot descriptors directly (same object, same fields).
_FRAME_NEW = object.__new__
_SET_SRC, _SET_DST, _SET_SEQ, _SET_TIME, _SET_MESSAGE, _SET_MAC = (
    Frame.__dict__[name].__set__ for name in ("src", "dst", "seq", "time_ms", "message", "mac"))


def _decoded(src: int, dst: int, seq: int, time_ms: int, message: Message, mac: bool) -> Frame:
    frame = _FRAME_NEW(Frame)
    _SET_SRC(frame, src)
    _SET_DST(frame, dst)
    _SET_SEQ(frame, seq)
    _SET_TIME(frame, time_ms)
    _SET_MESSAGE(frame, message)
    _SET_MAC(frame, mac)
    return frame


#: the TCP types whose MAC is always made with the link key; every other TCP frame of a session uses the
#: session key (ICD 1.1 sections 2 and 7). UDP datagrams have no session and keep the link key too.
LINK_KEY_TYPES = frozenset((Hello.TYPE, HelloAck.TYPE))
_SESSION_LABEL = b"ICD1 session"
_NONCE = struct.Struct(">QQ")


def compute_mac(key: bytes, signed: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over header+payload, first 16 bytes (ICD section 2)."""
    return hmac.new(key, signed, hashlib.sha256).digest()[:MAC_LEN]


def session_key(link_key: bytes, device_nonce: int, session_nonce: int) -> bytes:
    """``K_s = HMAC-SHA256(link key, "ICD1 session" || device_nonce || session_nonce)``, all 32 bytes,
    nonces as big-endian u64 (ICD 1.1 section 7)."""
    return hmac.new(link_key, _SESSION_LABEL + _NONCE.pack(device_nonce, session_nonce), hashlib.sha256).digest()


def encode(message: Message, *, src: int, dst: int, seq: int, time_ms: int, mac_key: bytes | None = None) -> bytes:
    """Encode one frame. With ``mac_key`` the MAC flag is set and the MAC appended."""
    payload = message.pack()
    if len(payload) > MAX_PAYLOAD:
        raise FieldError(f"{message.NAME}: payload of {len(payload)} bytes is over the ICD's {MAX_PAYLOAD}")
    for name, value, bits in (("src", src, 16), ("dst", dst, 16), ("seq", seq, 32), ("time_ms", time_ms, 64)):
        check_uint("frame", name, value, bits)
    flags = FLAG_MAC if mac_key is not None else 0
    head = HEADER.pack(SYNC, VERSION, message.TYPE, flags, 0, src, dst, seq, time_ms, len(payload))
    body = head + payload
    if mac_key is not None:
        body += compute_mac(mac_key, body)
    return body + _CRC.pack(zlib.crc32(body))


def encode_frame(frame: Frame, mac_key: bytes | None = None) -> bytes:
    return encode(frame.message, src=frame.src, dst=frame.dst, seq=frame.seq, time_ms=frame.time_ms,
                  mac_key=mac_key)


@dataclass(frozen=True, slots=True)
class MacPolicy:
    """How a receiver treats the MAC on one link.

    ``key``: the link's key, or None. ``required``: frames without a MAC are
    ``missing_mac``. ``accept_unverified``: a MAC present but no key to check it
    with is let through (only for offline debugging, e.g. `gateway decode`
    without ``--mac-key``); otherwise such a frame is ``bad_mac``.

    ``keys`` / ``required_srcs``: per-sender keys and MAC requirements, looked
    up by the frame's ``src`` (the gateway's links, which learn their device
    only from the HELLO, which itself may be signed). The source is checked
    against the link later, by the receiver; a key found here only proves the
    frame was signed by the holder of that device's key.

    ``session_key``: once a link's HELLO_ACK is on the wire, the key for every
    frame of that link except HELLO and HELLO_ACK (ICD 1.1: ``K_s``, see
    :func:`session_key`), whatever its ``src``; set with :meth:`with_session`
    on the one link's copy of the policy.
    """

    key: bytes | None = None
    required: bool = False
    accept_unverified: bool = False
    keys: dict | None = None
    required_srcs: frozenset = frozenset()
    session_key: bytes | None = None

    def key_for(self, src: int, mtype: int | None = None) -> bytes | None:
        """The key that verifies a frame of type ``mtype`` from ``src`` (None: no key)."""
        if self.session_key is not None and mtype not in LINK_KEY_TYPES:
            return self.session_key
        return self.key if self.keys is None else self.keys.get(src)

    def with_session(self, key: bytes | None) -> "MacPolicy":
        """This policy for one link whose session key is ``key`` (None: back to the link keys)."""
        return MacPolicy(self.key, self.required, self.accept_unverified, self.keys, self.required_srcs, key)

    def requires(self, src: int) -> bool:
        return self.required or src in self.required_srcs


NO_MAC = MacPolicy()


def check_header(buf, pos: int) -> tuple[Reason | None, int]:
    """Check the fixed header fields at ``pos`` (sync already matched).

    Returns ``(reason, 0)`` for a bad header, else ``(None, frame_length)``.
    The reserved byte shares ``bad_flags`` with the flag bits: both are
    "header bits that must be zero" and the ICD names no reason of their own.
    """
    if buf[pos + 2] != VERSION:
        return Reason.BAD_VERSION, 0
    flags = buf[pos + 4]
    if flags & ~FLAG_MAC or buf[pos + 5]:
        return Reason.BAD_FLAGS, 0
    length = (buf[pos + 22] << 8) | buf[pos + 23]
    if length > MAX_PAYLOAD:
        return Reason.OVERSIZE, 0
    return None, HEADER_LEN + length + (MAC_LEN if flags else 0) + CRC_LEN


def crc_ok(view: memoryview, pos: int, total: int) -> bool:
    end = pos + total - CRC_LEN
    return zlib.crc32(view[pos:end]) == _CRC.unpack_from(view, end)[0]


def finish(view: memoryview, pos: int, total: int, policy: MacPolicy,
           types: dict[int, type[Message]]) -> Frame | tuple[Reason, str]:
    """Checks after the CRC passed: MAC, type, payload. Returns a Frame or (reason, detail).

    Never raises on the bytes: ``unpack`` reports every payload that does not
    parse (a field out of range included) as PayloadError, which is ``bad_payload``.
    """
    mtype, flags, src, dst, seq, time_ms, length = _FINISH_FIELDS.unpack_from(view, pos)
    body_end = pos + HEADER_LEN + length
    if flags & FLAG_MAC:
        key = policy.key_for(src, mtype)
        if key is not None:
            mac = compute_mac(key, view[pos:body_end])
            if not hmac.compare_digest(mac, view[body_end:body_end + MAC_LEN]):
                return Reason.BAD_MAC, ("MAC does not match the session key" if key is policy.session_key
                                        else "MAC does not match the link key")
        elif not policy.accept_unverified:
            return Reason.BAD_MAC, "frame carries a MAC but the link has no key to verify it"
    elif policy.required or src in policy.required_srcs:  # policy.requires(src), inlined: once per frame
        return Reason.MISSING_MAC, "link requires a MAC"
    cls = types.get(mtype)
    if cls is None:
        return Reason.UNKNOWN_TYPE, f"type 0x{mtype:02x} not accepted here"
    try:
        message = cls.unpack(view[pos + HEADER_LEN:body_end])
    except PayloadError as exc:
        return Reason.BAD_PAYLOAD, str(exc)
    return _decoded(src, dst, seq, time_ms, message, bool(flags & FLAG_MAC))


def error(reason: Reason, offset: int, detail: str = "", length: int = 0) -> FrameError:
    return FrameError(reason, offset, length, detail)
