"""Sans-IO decoder for one UDP datagram (ICD v1 section 5).

A datagram holds exactly one frame, and each UDP type has one fixed size
(16 more with the MAC flag). Check order, and why:

1. sync, version, flag bits, reserved byte, length <= 4096 (the header);
2. the datagram is exactly as long as its own header says, else ``bad_size``;
3. CRC, then MAC: nothing inside is trusted before these pass, so a
   corrupted type byte reads as ``bad_crc``, not as ``unknown_type``;
4. type accepted here (``unknown_type``), then the type's fixed size
   (``bad_size``), then the payload (``bad_payload``).

Pure function; safe from any thread. It reads the buffer it is given and
keeps no reference to it, so the caller may receive into it again at once.
"""
from __future__ import annotations

from .errors import FrameError, Reason
from .frame import CRC_LEN, HEADER_LEN, MAC_LEN, NO_MAC, UDP_TYPES, Frame, MacPolicy, check_header, crc_ok, finish
from .messages import Message


def expected_size(cls: type[Message], mac: bool) -> int:
    """The datagram size of a UDP type (with or without the MAC)."""
    return HEADER_LEN + cls.FIXED_PAYLOAD + CRC_LEN + (MAC_LEN if mac else 0)


def decode_datagram(data: bytes | bytearray | memoryview, *, types: dict[int, type[Message]] = UDP_TYPES,
                    mac: MacPolicy = NO_MAC) -> Frame | FrameError:
    """Decode one datagram into a Frame, or a FrameError saying why not."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    n = len(view)
    if n < 2 or view[0] != 0xA5 or view[1] != 0x5A:
        return FrameError(Reason.BAD_SYNC, 0, n, "datagram does not start with A5 5A")
    if n < HEADER_LEN + CRC_LEN:
        return FrameError(Reason.BAD_SIZE, 0, n, f"datagram of {n} bytes is shorter than a header and CRC")
    reason, total = check_header(view, 0)
    if reason is not None:
        return FrameError(reason, 0, n)
    if total != n:
        return FrameError(Reason.BAD_SIZE, 0, n, f"header says {total} bytes, datagram has {n}")
    if not crc_ok(view, 0, total):
        return FrameError(Reason.BAD_CRC, 0, n)
    mtype = view[3]
    cls = types.get(mtype)
    if cls is not None and cls.FIXED_PAYLOAD is not None:
        want = expected_size(cls, bool(view[4] & 1))
        if n != want:
            return FrameError(Reason.BAD_SIZE, 0, n, f"{cls.NAME} datagrams are {want} bytes, got {n}")
    result = finish(view, 0, total, mac, types)
    if isinstance(result, Frame):
        return result
    return FrameError(result[0], 0, n, result[1])
