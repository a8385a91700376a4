"""`gateway decode`: the protocol debugging tool.

Decodes ICD v1 frames given as hex (arguments, or one input per line on
stdin) or as a raw binary file, and prints one JSON object per line: a frame
as ``{"type", "src", "dst", "seq", "time_ms", "mac", "size", "fields"}`` with the
ICD's field names, an error as ``{"error": reason, "offset": N}``. With several
inputs each line also carries ``"input"`` (0-based). Each input is one TCP
byte stream, or with ``--udp`` one datagram.

MACs: ``--mac-key`` is the link key (HELLO, HELLO_ACK, UDP datagrams). The
frames of a session after its HELLO_ACK are signed with the session key (ICD
1.1): give it with ``--session-key HEX``, or give the session's two nonces
with ``--session DEVICE_NONCE:SESSION_NONCE`` (hex, as HELLO and HELLO_ACK
carry them) together with ``--mac-key``, and it is derived.

Exit status: 0 everything decoded, 1 any error found, 2 bad usage.
Runs in the caller's thread; reads only what it is given.
"""
from __future__ import annotations

import argparse
import json
import string
import sys

from railcodecs import (ALL_TYPES, HEADER_LEN, MAC_LEN, UDP_TYPES, FrameError, MacPolicy, StreamDecoder,
                        decode_datagram, session_key)

_HEX = set(string.hexdigits)


class UsageError(Exception):
    """Bad command-line input; the message says which input and what is wrong."""


def parse_hex(text: str, where: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "")
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    bad = next((c for c in cleaned if c not in _HEX), None)
    if bad is not None:
        raise UsageError(f"{where}: not hex: character {bad!r}")
    if len(cleaned) % 2:
        raise UsageError(f"{where}: not hex: odd number of digits ({len(cleaned)})")
    if not cleaned:
        raise UsageError(f"{where}: empty")
    return bytes.fromhex(cleaned)


def parse_nonces(text: str) -> tuple[int, int]:
    """``DEVICE_NONCE:SESSION_NONCE``, each hex (0x optional) of at most 64 bits."""
    parts = text.split(":")
    if len(parts) != 2:
        raise UsageError(f"--session: expected DEVICE_NONCE:SESSION_NONCE (hex), got {text!r}")
    out = []
    for name, part in zip(("device nonce", "session nonce"), parts):
        digits = part.strip()
        digits = digits[2:] if digits[:2].lower() == "0x" else digits
        if not digits or any(c not in _HEX for c in digits) or int(digits, 16) >> 64:
            raise UsageError(f"--session: {name} {part!r} is not hex of at most 64 bits")
        out.append(int(digits, 16))
    return out[0], out[1]


def session_key_of(args) -> bytes | None:
    """The session key ``--session-key`` gives, or the one ``--session`` and ``--mac-key`` derive."""
    if args.session_key is not None and args.session is not None:
        raise UsageError("give --session or --session-key, not both")
    if args.session_key is not None:
        return parse_hex(args.session_key, "--session-key")
    if args.session is not None:
        if args.mac_key is None:
            raise UsageError("--session needs --mac-key (the link key the session key is derived from)")
        device_nonce, session_nonce = parse_nonces(args.session)
        return session_key(parse_hex(args.mac_key, "--mac-key"), device_nonce, session_nonce)
    return None


def decode_input(data: bytes, *, udp: bool, policy: MacPolicy) -> list[dict]:
    """Decode one input into JSON-ready dicts (frames and errors, in order)."""
    if udp:
        events = [decode_datagram(data, types=UDP_TYPES, mac=policy)]
    else:
        decoder = StreamDecoder(types=ALL_TYPES, mac=policy)
        decoder.feed(data)
        decoder.end_of_stream()
        events = list(decoder.events())
    out = []
    for ev in events:
        obj = ev.to_json()
        if not isinstance(ev, FrameError):
            obj["size"] = frame_size(ev)
        out.append(obj)
    return out


def frame_size(frame) -> int:
    """Bytes the frame took on the wire (header, payload, MAC, CRC)."""
    return HEADER_LEN + len(frame.message.pack()) + (MAC_LEN if frame.mac else 0) + 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway decode",
        description="Decode ICD v1 frames (hex arguments, hex lines on stdin, or --raw FILE) to JSON lines.")
    p.add_argument("hex", nargs="*", help="frames or streams as hex (spaces and colons allowed)")
    p.add_argument("--raw", metavar="FILE", help="decode a binary file (one stream, or one datagram with --udp)")
    p.add_argument("--udp", action="store_true", help="each input is one UDP datagram (fixed sizes enforced)")
    p.add_argument("--mac-key", metavar="HEX", help="link key: verify MACs (without it a MAC is shown, unchecked)")
    p.add_argument("--session", metavar="DEVICE_NONCE:SESSION_NONCE",
                   help="the session's nonces (hex): with --mac-key, verify the frames after HELLO_ACK with its "
                        "session key")
    p.add_argument("--session-key", metavar="HEX",
                   help="session key: verify every frame but HELLO and HELLO_ACK with it")
    p.add_argument("--require-mac", action="store_true", help="report frames without a MAC as missing_mac")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        inputs = _collect_inputs(args)
        key = parse_hex(args.mac_key, "--mac-key") if args.mac_key is not None else None
        k_s = session_key_of(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"gateway decode: error: {exc}", file=sys.stderr)
        return 2
    # without a link key, HELLO / HELLO_ACK MACs are shown unchecked; with a session key, the other frames' are checked
    policy = MacPolicy(key=key, required=args.require_mac, accept_unverified=key is None).with_session(k_s)
    failed = False
    many = len(inputs) > 1
    for i, data in enumerate(inputs):
        for obj in decode_input(data, udp=args.udp, policy=policy):
            failed |= "error" in obj
            if many:
                obj["input"] = i
            print(json.dumps(obj, ensure_ascii=False))
    return 1 if failed else 0


def _collect_inputs(args) -> list[bytes]:
    if args.raw is not None:
        if args.hex:
            raise UsageError("give hex arguments or --raw FILE, not both")
        try:
            with open(args.raw, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise UsageError(f"--raw {args.raw}: {exc.strerror}") from None
        if not data:
            raise UsageError(f"--raw {args.raw}: file is empty")
        return [data]
    if args.hex:
        return [parse_hex(h, f"argument {n}") for n, h in enumerate(args.hex, 1)]
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("no input: give hex frames as arguments, on stdin, or --raw FILE")
    lines = [(n, line) for n, line in enumerate(sys.stdin, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise UsageError("no input on stdin")
    return [parse_hex(line, f"stdin line {n}") for n, line in lines]
