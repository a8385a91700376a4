"""The run's ledger: what was sent, what was injected, and the counters the receiver must show.

Every simulated sender records here as it writes, so the expected counters
are derived from what actually went on the wire (a frame written on one link
only, because the other was down, has no duplicate copy). The mapping from
faults to counters is in ``simulators/faults.py``.

JSON written at exit (``--summary FILE``, and printed)::

    {"seed": 7, "ticks": 500, "tick_ms": 20, ...,
     "sent":     {"CI-1": {"A": {"HELLO": 1, "HEARTBEAT": 40, "TRACK_SECTIONS": 12}, "B": {...}},
                  "1025": {"udp": {"TRAIN_STATUS": 50, ...}}},
     "injected": {"drop": {"CI-1": 2, "1025": 1}, ...},
     "expected": {"devices": {"CI-1": {"applied": 30, "duplicates": 31, "stale": 0, "gap": 2,
                                       "links": {"A": {"bad_crc": 1}, "B": {}}}},
                  "trains": {"1025": {"applied": 70, "duplicates": 0, "stale": 0, "gap": 1}},
                  "udp": {"bad_crc": 1}},
     "links": {"CI-1": {"A": {"connects": 1, "lost": 0, "hello_refused": 0}}},
     "received": {...}}

``received`` (what the gateway sent the devices) depends on the gateway's
timing, everything else only on the seed, the options and the links' ups
and downs.

Used from the simulator's one asyncio thread; ``to_json`` from any thread
after the run.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict

SENDER_COUNTERS = ("applied", "duplicates", "stale", "gap")


class Ledger:
    """Counts by sender name (device name, or the train id as text)."""

    def __init__(self) -> None:
        self.sent: dict = defaultdict(lambda: defaultdict(Counter))        # sender -> net|udp -> type
        self.received: dict = defaultdict(lambda: defaultdict(Counter))    # sender -> net -> type
        self.injected: dict = defaultdict(Counter)                          # fault -> sender
        self.senders: dict = defaultdict(Counter)                           # sender -> applied/duplicates/...
        self.link_errors: dict = defaultdict(lambda: defaultdict(Counter))  # device -> net -> reason
        self.udp_errors: Counter = Counter()
        self.links: dict = defaultdict(lambda: defaultdict(Counter))       # device -> net -> connects/lost
        self.kinds: dict[str, str] = {}                                     # sender -> "device" | "train"

    # -- writers ---------------------------------------------------------------------
    def register(self, sender: str, kind: str) -> None:
        self.kinds[sender] = kind
        self.senders[sender].update(dict.fromkeys(SENDER_COUNTERS, 0))

    def wrote(self, sender: str, where: str, type_name: str, n: int = 1) -> None:
        self.sent[sender][where][type_name] += n

    def got(self, sender: str, net: str, type_name: str) -> None:
        self.received[sender][net][type_name] += 1

    def inject(self, fault: str, sender: str) -> None:
        self.injected[fault][sender] += 1

    def expect(self, sender: str, **counts: int) -> None:
        """Add to the sender's expected applied/duplicates/stale/gap."""
        self.senders[sender].update(counts)

    def expect_link_error(self, sender: str, where: str, reason: str) -> None:
        """A decoder/source error on a device link (``where`` = A/B) or the UDP endpoint (``udp``)."""
        if where == "udp":
            self.udp_errors[reason] += 1
        else:
            self.link_errors[sender][where][reason] += 1

    def link_event(self, sender: str, net: str, event: str) -> None:
        self.links[sender][net][event] += 1

    def frame_copies(self, sender: str, copies: int) -> None:
        """One sequenced frame that reached ``copies`` valid copies on the wire, in order."""
        if copies:
            self.expect(sender, applied=1, duplicates=copies - 1)
        else:
            self.expect(sender, gap=1)

    # -- readers ---------------------------------------------------------------------
    def expected(self) -> dict:
        devices, trains = {}, {}
        for sender, kind in sorted(self.kinds.items()):
            counts = {k: self.senders[sender][k] for k in SENDER_COUNTERS}
            if kind == "device":
                links = self.link_errors.get(sender, {})
                counts["links"] = {net: dict(sorted(links[net].items())) for net in sorted(links)}
                devices[sender] = counts
            else:
                trains[sender] = counts
        return {"devices": devices, "trains": trains, "udp": dict(sorted(self.udp_errors.items()))}

    def to_json(self, **header) -> dict:
        return {**header,
                "sent": _plain(self.sent), "injected": _plain(self.injected), "expected": self.expected(),
                "links": _plain(self.links), "received": _plain(self.received)}


def _plain(tree) -> dict:
    """Nested Counters/defaultdicts as sorted plain dicts (stable JSON for comparisons)."""
    if isinstance(tree, dict):
        return {str(k): _plain(v) for k, v in sorted(tree.items(), key=lambda kv: str(kv[0]))}
    return tree


def write(summary: dict, path: str | None) -> str:
    """The summary as indented JSON text; also written to ``path`` when given."""
    text = json.dumps(summary, indent=2, sort_keys=False) + "\n"
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text
