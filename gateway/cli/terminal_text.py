"""Text from the network or the store, made safe for one line of a terminal or a log reader.

Device names, alarm texts, operator names and history rows arrive from peers and operators; a
newline, ESC or a bidi override in them must not forge lines or drive the terminal. Every CLI
printer goes through :func:`safe_text` (plain text) or :func:`json_line` (JSON lines).
"""
from __future__ import annotations

import json
import unicodedata


def _unsafe(ch: str) -> bool:
    """Categories C* (controls, format characters such as U+202E, surrogates, private use, unassigned) and
    the line/paragraph separators; a space of any script is fine."""
    return not ch.isprintable() and unicodedata.category(ch) != "Zs"


def _escape(ch: str) -> str:
    code = ord(ch)
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
    return named or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def safe_text(value) -> str:
    """``str(value)`` fit for one line of a terminal: each character a terminal or a line-oriented reader
    would act on (newline, ESC, C1 controls, bidi overrides...) as a Python-style escape (``\\n``,
    ``\\x1b``, ``\\u202e``). Printable text, also CJK and other scripts, is unchanged."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in text)


def json_line(doc, **kwargs) -> str:
    """``json.dumps(doc, ensure_ascii=False)`` on one line (no ``indent``) with the characters of
    :func:`safe_text` as JSON escapes: JSON escapes only U+0000..U+001F itself, which leaves DEL, C1
    controls and U+202E raw (and a lone surrogate would not even encode to UTF-8)."""
    text = json.dumps(doc, ensure_ascii=False, **kwargs)
    if text.isprintable():
        return text

    def escape(ch: str) -> str:
        code = ord(ch)
        if code < 0x10000:
            return f"\\u{code:04x}"
        code -= 0x10000
        return f"\\u{0xd800 + (code >> 10):04x}\\u{0xdc00 + (code & 0x3ff):04x}"
    return "".join(escape(ch) if _unsafe(ch) else ch for ch in text)
