"""Per-sender sequence window (ICD v1 section 6): repetition, deletion, resequencing.

Sequence numbers run 1..0xFFFFFFFF and then 1 again, so comparisons are made
on the circle of ``M = 2**32 - 1`` values: ``d = (seq - last) mod M``. A frame
is *newer* when ``0 < d < M/2`` (applied; ``d - 1`` numbers were skipped and
go to ``gap``), otherwise it is older or equal and is dropped: ``duplicate``
when that number was already seen, else ``stale`` (it was skipped and came
late: resequenced or delayed).

"Seen" is a bitmap of the last ``window`` numbers (default 1024) behind the
newest one::

    bit k set  <=>  seq (last - k) arrived before        k = 0 .. window-1
    last ────────▶ bit 0

A number older than the window cannot be told apart and is ``stale``.

Dual nets: a device sends every sequenced frame on net A and net B with the
same seq, so the second copy of every frame is expected. Two more bitmaps of
the same shape tell it from a repetition: ``on_b`` (the first copy of that
number came on net B) and ``copied`` (its other-net copy has arrived). The
first copy from the *other* net is ``COPY`` (dropped, as the ICD says, but not
a threat); any further copy, or a second copy on the same net, is
``DUPLICATE``. Trains (no net) never get ``COPY``.

Threading: not thread-safe by itself; the receiver holds a per-sender lock
around :meth:`check` so that two IO loops racing with the net A and net B
copies of one frame apply it exactly once.
"""
from __future__ import annotations

SEQ_MOD = 0xFFFF_FFFF  # numbers 1..2**32-1: 2**32 - 1 values on the circle
HALF = SEQ_MOD // 2

APPLY = 0
DUPLICATE = 1
STALE = 2
COPY = 3      # the other net's copy of a number already seen: dropped, expected


def seq_distance(seq: int, last: int) -> int:
    """Signed distance from ``last`` to ``seq`` on the wrap-around circle."""
    d = (seq - last) % SEQ_MOD
    return d if d <= HALF else d - SEQ_MOD


def seq_next(seq: int) -> int:
    """The number after ``seq`` (0xFFFFFFFF is followed by 1, never 0)."""
    return 1 if seq >= SEQ_MOD else seq + 1


class SequenceWindow:
    """Last applied seq of one sender and which recent numbers were seen."""

    __slots__ = ("last", "seen", "on_b", "copied", "window", "_mask")

    def __init__(self, window: int = 1024) -> None:
        if window < 1:
            raise ValueError(f"sequence window must be at least 1, got {window}")
        self.window = window
        self._mask = (1 << window) - 1
        self.last = 0  # 0: nothing applied yet
        self.seen = self.on_b = self.copied = 0

    def reset(self) -> None:
        """Forget the sender's history (a new session, see receiver.py)."""
        self.last = 0
        self.seen = self.on_b = self.copied = 0

    def applies(self, seq: int) -> bool:
        """Whether :meth:`check` of ``seq`` would now say APPLY (on either net), changing nothing."""
        return seq != 0 and (self.last == 0 or seq_distance(seq, self.last) > 0)

    def check(self, seq: int, net: int | None = None) -> tuple[int, int]:
        """Classify ``seq`` arriving on ``net`` (0 A, 1 B, None: no dual net) and, if newer, apply it.

        Returns ``(APPLY, skipped)``, ``(COPY, 0)``, ``(DUPLICATE, 0)`` or ``(STALE, 0)``.
        Seq 0 is never valid for a sequenced frame: it is ``stale``.
        """
        if seq == 0:
            return STALE, 0
        b = 1 if net == 1 else 0
        if self.last == 0:
            self.last, self.seen, self.on_b, self.copied = seq, 1, b, 0
            return APPLY, 0
        d = seq_distance(seq, self.last)
        if d > 0:
            if d < self.window:
                mask = self._mask
                self.seen = ((self.seen << d) | 1) & mask
                self.on_b = ((self.on_b << d) | b) & mask
                self.copied = (self.copied << d) & mask
            else:
                self.seen, self.on_b, self.copied = 1, b, 0
            self.last = seq
            return APPLY, d - 1
        back = -d
        if back >= self.window:
            return STALE, 0
        bit = 1 << back
        if self.seen & bit:
            if net is not None and not self.copied & bit and bool(self.on_b & bit) != bool(b):
                self.copied |= bit
                return COPY, 0
            return DUPLICATE, 0
        # it was skipped and comes late: remember it (and its net), so a later copy is told apart
        self.seen |= bit
        if b:
            self.on_b |= bit
        return STALE, 0
