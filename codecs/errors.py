"""Error reasons of ICD v1 section 3, the error event, and whose-fault exceptions.

Two kinds of failure are kept apart (the h11 split):

* the *peer* broke the protocol: decoders never raise for that; they return a
  :class:`FrameError` event carrying the ICD reason and the stream offset, and
  the receiver counts it per link;
* *we* broke it: building a message with an out-of-range field raises
  :class:`FieldError` in the constructor, before a byte is encoded.

Pure data, no IO; safe to use from any thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Reason(str, Enum):
    """The reasons a receiver must tell apart and count (ICD section 3).

    The string value is the ICD's own spelling, used in counters, JSON and logs.
    """

    BAD_SYNC = "bad_sync"
    BAD_VERSION = "bad_version"
    BAD_FLAGS = "bad_flags"
    OVERSIZE = "oversize"
    BAD_CRC = "bad_crc"
    BAD_MAC = "bad_mac"
    MISSING_MAC = "missing_mac"
    UNKNOWN_TYPE = "unknown_type"
    BAD_PAYLOAD = "bad_payload"
    BAD_SIZE = "bad_size"
    UNKNOWN_SOURCE = "unknown_source"
    WRONG_DESTINATION = "wrong_destination"
    DUPLICATE = "duplicate"
    STALE = "stale"
    GAP = "gap"
    # A partial frame abandoned (no progress for one heartbeat period), or a
    # stream that ends inside a frame (e.g. the input of `gateway decode`).
    TRUNCATED = "truncated"
    # ICD 1.1: a frame other than SESSION_CONFIRM, HEARTBEAT or CLOSE before the
    # session is confirmed; a SESSION_CONFIRM whose nonces do not match.
    NO_SESSION = "no_session"
    BAD_SESSION = "bad_session"

    def __str__(self) -> str:  # json.dumps and f-strings show the ICD name
        return self.value


#: Reasons found by the frame decoders (the rest come from the receiver checks).
DECODE_REASONS = (
    Reason.BAD_SYNC, Reason.BAD_VERSION, Reason.BAD_FLAGS, Reason.OVERSIZE,
    Reason.BAD_CRC, Reason.BAD_MAC, Reason.MISSING_MAC, Reason.UNKNOWN_TYPE,
    Reason.BAD_PAYLOAD, Reason.BAD_SIZE, Reason.TRUNCATED,
)


@dataclass(frozen=True, slots=True)
class FrameError:
    """A decode error event: the peer sent something that is not a valid frame.

    ``offset`` is the byte offset in the stream (or datagram) where the bad
    frame, or the run of garbage, begins; ``length`` how many bytes it covered
    when known (garbage runs), else 0; ``detail`` a human-readable hint.
    """

    reason: Reason
    offset: int
    length: int = 0
    detail: str = ""

    def to_json(self) -> dict:
        out: dict = {"error": self.reason.value, "offset": self.offset}
        if self.length:
            out["length"] = self.length
        if self.detail:
            out["detail"] = self.detail
        return out


class FieldError(ValueError):
    """Local error: a message or frame was built with a field out of range.

    Raised by the frozen dataclasses' constructors; it names the message, the
    field and what was expected, so the caller knows which value was wrong.
    """


class PayloadError(ValueError):
    """The one exception ``Message.unpack`` raises for a payload that does not parse
    (a field out of range included); decoders turn it into ``bad_payload``."""
