"""Train datagrams: the compiled batch step against the pure per-datagram step, on the same bytes.

Two UDP endpoints of the demo line, one per implementation (``railcodecs.speedups``: the compiled
one receives by recvmmsg and judges each batch with ``railcodecs._core.TrainBatch``, the pure one
receives by recv_into and runs decode_datagram + Receiver.check_datagram + Context.train_applied
per datagram), are sent the same datagrams over loopback, batch by batch at the same gateway time,
and must end in the same state (:func:`digest`): the endpoint's counters and errors, the
LinkChecks, every train's sender counters, session and sequence window, the train table, the
registry's last-rx times and TRAIN_COMM conditions, and what reached coupling (every
``CouplingEngine.ingest`` call for a consist member, in order per train, and the engine's and
workers' counters, reports of trains in no consist included).

Cases: the ICD vectors, each threat (bad CRC, bad MAC, missing MAC, wrong destination, unknown
source, stale and future time, repetitions, oversize and truncated datagrams, wrong sizes, bad
payloads), sequence wrap and a session reset after ``train_reset_ms``, MAC policies with train keys,
required trains and a signed device (judged by the Python step), and random mutations (hypothesis).
"""
from __future__ import annotations

import copy
import os
import random
import socket
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.app import config
from gateway.app.context import Context
from gateway.coupling.engine import CouplingEngine
from gateway.coupling.workers import CouplingWorkers
from gateway.line.line import Line
from gateway.net.udp_endpoint import UdpEndpoint
from gateway_harness import DEMO, KEY_257
from railcodecs import MacPolicy, TrainDiag, TrainHeartbeat, TrainStatus, encode, speedups
from conftest import load_vectors

pytestmark = pytest.mark.skipif(not speedups.available() or os.environ.get("RAILGATE_PURE") == "1",
                                reason="the compiled core is not available: nothing to compare")

VECTORS = load_vectors()
T0 = VECTORS["time_base_ms"]
KEY_1025 = bytes(range(32, 64))
#: trains 1025-1030 in consists 9-11; 1031-1044 in none (their reports are counted, not paired)
CONSISTS = {9: [1025, 1026], 10: [1027, 1028], 11: [1029, 1030]}


class _NoLoop:
    def register(self, *a):
        pass


class _Engine(CouplingEngine):
    """The real engine, recording each ingest call (train, report, time_ms, now_ms)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls: list = []

    def ingest(self, train_id, report, time_ms, now_ms):
        self.calls.append((train_id, report, time_ms, now_ms))
        return super().ingest(train_id, report, time_ms, now_ms)


def line_cfg(train_hb_ms: int = 1000):
    raw = copy.deepcopy(DEMO)
    raw["gateway"]["listen"] = {"net_a": {"host": "127.0.0.1", "port": 0}, "net_b": {"host": "127.0.0.1", "port": 0},
                                "udp": {"host": "127.0.0.1", "port": 0}}
    raw["trains"]["consists"] = copy.deepcopy(CONSISTS)
    raw["trains"]["heartbeat_ms"] = train_hb_ms
    return config.parse(raw, "udp-differential")


class Side:
    """One endpoint of the demo line in one implementation, fed over loopback."""

    def __init__(self, implementation: str, policy: MacPolicy | None = None, workers: int = 2) -> None:
        speedups.use(implementation)
        try:
            cfg = line_cfg()
            self.clock = T0
            self.line = Line(cfg, lambda: self.clock)
            if policy is not None:
                self.line.mac_policy = policy
            self.engine = _Engine(cfg.trains.consists, self.line.events, cfg.coupling)
            self.workers = CouplingWorkers(self.engine, workers)
            ctx = Context(cfg, self.line, link_pool=None, coupling=self.workers)
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.rx.bind(("127.0.0.1", 0))
            self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.ep = UdpEndpoint(ctx, _NoLoop(), self.rx, self.line.receiver.new_link("udp"),
                                  batch=implementation == "compiled")
            self.ep.start()
            assert self.ep.datagram_step == ("compiled" if implementation == "compiled" else "python")
        finally:
            speedups.use(conftest_default())
        self.sent = 0

    def feed(self, clock_ms: int, datagrams: list[bytes]) -> None:
        """Send ``datagrams`` and handle them all at gateway time ``clock_ms`` (one readiness event)."""
        self.clock = clock_ms
        addr = self.rx.getsockname()
        for k in range(0, len(datagrams), 200):  # well inside the socket buffer
            for d in datagrams[k:k + 200]:
                self.tx.sendto(d, addr)
            self.sent += len(datagrams[k:k + 200])
            for _ in range(1000):
                self.ep._on_events(0)
                if self.ep.rx_datagrams >= self.sent:
                    break
            assert self.ep.rx_datagrams == self.sent, "loopback lost a datagram"

    def digest(self) -> dict:
        """Everything the two implementations must agree on (drains coupling: call once, at the end)."""
        self.workers.stop()
        for w in self.workers._workers:  # never started: ingest what was queued, here, in order
            self.workers._run(w)
        rx, line = self.line.receiver, self.line
        trains = sorted(t for t, s in rx.senders.items() if s.kind == 4)
        st = self.ep.stats()
        del st["recv"], st["rx_batches"]
        checks = self.ep.checks
        return {
            "endpoint": st,
            "checks": (checks.rx_frames, checks.applied, checks.copies, dict(checks.errors)),
            "senders": {t: (rx.senders[t].counters(), rx.senders[t].last_applied_ms, rx.senders[t].window.last,
                            rx.senders[t].window.seen) for t in trains},
            "train_table": dict(line.objects.trains.copy()),
            "registry": {t: (line.registry.train_last_rx(t), line.registry.train_reachable(t)) for t in trains},
            "events": dict(line.events.counts),
            # reports of trains in no consist are only counted (the totals' unconfigured_reports): the
            # compiled hand-off counts them without an ingest call
            "coupling_calls": {t: [c for c in self.engine.calls if c[0] == t] for t in self.engine.paired_trains()},
            "coupling": (self.engine.totals(), self.engine.snapshot(self.clock),
                         [{k: v for k, v in w.items() if k != "queue_depth"} for w in self.workers.stats()]),
        }

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


def conftest_default() -> str:
    from conftest import DEFAULT_IMPLEMENTATION
    return DEFAULT_IMPLEMENTATION


def run_both(batches, policy: MacPolicy | None = None, workers: int = 2):
    """Feed ``batches`` ([(clock_ms, [datagram, ...]), ...]) to both implementations; their digests."""
    out = []
    for impl in ("compiled", "pure"):
        side = Side(impl, policy, workers)
        try:
            for clock, datagrams in batches:
                side.feed(clock, datagrams)
            out.append(side.digest())
        finally:
            side.close()
    return out


def assert_same(batches, policy=None, workers: int = 2) -> dict:
    compiled, pure = run_both(batches, policy, workers)
    for key in pure:
        assert compiled[key] == pure[key], key
    return pure


# ------------------------------------------------------------------------------ datagrams

def status(section=104, speed=1500, consist=9, coupling=2, role=1, peer=1026, direction=0, doors=0):
    return TrainStatus(section, 1000, speed, direction, 0, consist, coupling, role, peer, doors, 0)


def dg(msg, train=1025, seq=1, time_ms=T0, dst=1, key=None) -> bytes:
    return encode(msg, src=train, dst=dst, seq=seq, time_ms=time_ms, mac_key=key)


def recrc(buf) -> bytes:
    buf = bytearray(buf)
    struct.pack_into(">I", buf, len(buf) - 4, zlib.crc32(bytes(buf[:-4])))
    return bytes(buf)


def patched(data: bytes, at: int, value: int) -> bytes:
    buf = bytearray(data)
    buf[at] = value
    return recrc(buf)


def threats(t: int) -> list[bytes]:
    """One of each way a datagram is judged, around trains 1025/1026 (consist 9) and 1031 (none)."""
    good = dg(status(), seq=1, time_ms=t)
    diag = dg(TrainDiag(((7, 2, 1), (9, 4, 0))), seq=2, time_ms=t)
    return [
        good, dg(TrainHeartbeat(1), train=1026, seq=1, time_ms=t), diag,
        dg(status(role=2, peer=1025), train=1026, seq=2, time_ms=t),
        dg(status(consist=0, peer=0), train=1031, seq=1, time_ms=t),
        good,                                                              # repetition: duplicate
        dg(status(speed=1), seq=1, time_ms=t),                             # same seq, other bytes: duplicate
        bytes(bytearray(good[:-1]) + bytes([good[-1] ^ 1])),               # bad_crc
        dg(status(), seq=3, time_ms=t, key=os.urandom(32)),                # a MAC no key checks: bad_mac
        dg(status(), seq=4, time_ms=t, dst=2),                             # wrong_destination
        dg(status(), train=4242, seq=1, time_ms=t),                        # unknown_source
        dg(status(), train=258, seq=1, time_ms=t),                         # a device, not a train
        dg(status(), seq=5, time_ms=t - 2001),                             # stale
        dg(status(), seq=6, time_ms=t + 2001),                             # from the future
        dg(status(), seq=7, time_ms=t - 2000),                             # just in time: applied
        dg(status(), seq=8, time_ms=2**63 + 5),                            # far future
        dg(status(), seq=9, time_ms=0),                                    # far past
        dg(status(), seq=10, time_ms=t) + bytes(300),                      # oversize: bad_size
        b"\x5a" * 200, bytes(145),                                         # oversize: bad_sync
        patched(dg(status(), seq=11, time_ms=t) + bytes(200), 2, 2)[:-4] + bytes(4),  # oversize: bad_version
        dg(status(), seq=12, time_ms=t)[:-1],                              # truncated: bad_size
        dg(status(), seq=13, time_ms=t)[:27], b"\xa5", b"",                # too short
        patched(dg(TrainHeartbeat(5), seq=14, time_ms=t), 3, 0x50),        # a heartbeat's size as STATUS
        patched(dg(TrainHeartbeat(5), seq=15, time_ms=t), 3, 0x53),        # unknown_type
        patched(dg(TrainHeartbeat(5), seq=16, time_ms=t), 3, 0x02),        # a TCP type: unknown_type
        patched(dg(status(), seq=17, time_ms=t), 24 + 8, 2),               # direction 2: bad_payload
        patched(dg(status(), seq=18, time_ms=t), 24 + 13, 3),              # role 3
        patched(dg(status(), seq=19, time_ms=t), 24 + 16, 3),              # doors 3
        patched(dg(status(), seq=20, time_ms=t), 63 - 4, 1),               # padding not zero
        patched(diag, 25, 25),                                             # diag n 25
        patched(diag, 24 + 2 + 2, 0),                                      # severity 0
        patched(diag, 24 + 2 + 3, 2),                                      # active 2
        patched(diag, 24 + 2 + 4 * 2 + 1, 1),                              # entry past n not zero
        patched(good, 4, 2), patched(good, 5, 1), patched(good, 2, 0),     # bad_flags, bad_flags, bad_version
        patched(dg(status(), seq=21, time_ms=t), 22, 0x20),                # length 8192: oversize
        dg(status(), seq=0, time_ms=t),                                    # seq 0: stale
        dg(status(), seq=40, time_ms=t),                                   # a gap of 19
        dg(status(), seq=30, time_ms=t),                                   # late, not seen: stale
        dg(TrainHeartbeat(2), train=1026, seq=3, time_ms=t),
    ]


def test_threats_one_batch_each_and_together():
    t = T0
    items = threats(t)
    digest = assert_same([(t, items)])
    errors = digest["checks"][3]
    for reason in ("bad_crc", "bad_mac", "wrong_destination", "unknown_source", "stale", "bad_size", "bad_sync",
                   "bad_version", "bad_flags", "oversize", "unknown_type", "bad_payload", "duplicate", "gap"):
        assert errors.get(reason), reason
    assert digest["coupling_calls"][1025] and digest["coupling"][0]["unconfigured_reports"] == 1
    # and each datagram alone in its batch
    assert_same([(t + k, [d]) for k, d in enumerate(items)])


def test_icd_vectors_as_datagrams():
    data = [bytes.fromhex(v["hex"]) for v in VECTORS["vectors"]]
    digest = assert_same([(T0 + 20, data), (T0 + 40, data)])
    assert digest["senders"][1025][0]["applied"] == 3  # the three train vectors, once


def test_sequence_wrap_and_session_reset_after_train_reset_ms():
    reset = 3 * 1000  # 3 x trains.heartbeat_ms
    t1 = T0 + 100
    batches = [
        (T0, [dg(status(), seq=0xFFFF_FFFE, time_ms=T0), dg(TrainHeartbeat(1), train=1026, seq=0xFFFF_FFFF)]),
        (t1, [dg(status(), seq=0xFFFF_FFFF, time_ms=t1), dg(status(), seq=1, time_ms=t1),
              dg(status(), seq=2, time_ms=t1), dg(status(), seq=0xFFFF_FFFE, time_ms=t1),
              dg(TrainHeartbeat(2), train=1026, seq=2, time_ms=t1)]),
        # silent for exactly train_reset_ms: the same session (seq 1 again is a duplicate)
        (t1 + reset, [dg(status(), seq=1, time_ms=t1 + reset)]),
        # silent for longer: a new session, seq 1 applies; an old recording does not restart one
        (t1 + 2 * reset + 1, [dg(status(), seq=1, time_ms=t1 - 5000), dg(TrainHeartbeat(3), train=1026, seq=5,
                                                                          time_ms=t1 + 2 * reset + 1)]),
        (t1 + 3 * reset + 2, [dg(status(speed=-5), seq=1, time_ms=t1 + 3 * reset + 2),
                              dg(status(speed=-6), seq=1, time_ms=t1 + 3 * reset + 2)]),
    ]
    digest = assert_same(batches)
    assert digest["senders"][1025][0]["sessions"] == 2  # the first datagram, then after the long silence
    assert digest["train_table"][1025].speed_cm_s == -5


def test_many_trains_and_batches():
    rnd = random.Random(14)
    seqs = {t: 0 for t in range(1025, 1045)}
    batches = []
    for b in range(30):
        clock = T0 + 70 * b
        items = []
        for _ in range(rnd.randint(1, 150)):
            t = rnd.choice(list(seqs))
            seqs[t] += rnd.choice((1, 1, 1, 2, 0))
            msg = rnd.choice((status(speed=rnd.randint(-300, 300), coupling=rnd.randint(0, 3),
                                     role=rnd.randint(0, 2), consist=rnd.choice((0, 9, 10))),
                              TrainHeartbeat(b), TrainDiag(((b, 1, 1),))))
            items.append(dg(msg, train=t, seq=max(seqs[t], 1), time_ms=clock - rnd.randint(-50, 50)))
        batches.append((clock, items))
    digest = assert_same(batches)
    assert digest["coupling"][0]["evaluations"] > 0


@pytest.mark.parametrize("workers", [1, 3])
def test_coupling_hand_off_per_worker(workers):
    items = [dg(status(role=1 + k % 2, peer=1026 if t == 1025 else 1025), train=t, seq=k + 1, time_ms=T0 + 200 * k)
             for k in range(10) for t in (1025, 1026, 1031, 1032, 1027)]
    digest = assert_same([(T0 + 1000, items[:25]), (T0 + 1500, items[25:])], workers=workers)
    assert digest["coupling"][0]["evaluations"] == 10 and digest["coupling"][0]["unconfigured_reports"] == 20


@pytest.mark.parametrize("policy", [
    MacPolicy(keys={1025: KEY_1025, 257: KEY_257}, required_srcs=frozenset({1026, 257})),
    MacPolicy(key=KEY_1025),
    MacPolicy(accept_unverified=True),
    MacPolicy(required=True, keys={1026: KEY_257}),
], ids=["train-keys", "one-key", "accept-unverified", "all-required"])
def test_mac_policies(policy):
    t = T0
    items = [
        dg(status(), seq=1, key=KEY_1025), dg(status(), seq=2, key=KEY_257), dg(status(), seq=3),
        dg(TrainHeartbeat(1), train=1026, seq=1), dg(TrainHeartbeat(2), train=1026, seq=2, key=KEY_257),
        dg(TrainHeartbeat(3), train=1026, seq=3, key=KEY_1025),
        dg(status(), train=257, seq=1, key=KEY_257), dg(status(), train=257, seq=2),
        dg(status(), train=257, seq=3, key=KEY_1025), dg(status(), train=4242, seq=1, key=KEY_1025),
        dg(status(), train=4242, seq=2), dg(status(), train=1031, seq=1, key=KEY_1025),
        dg(status(), train=1031, seq=2),
    ]
    assert_same([(t, items), (t + 1, items)], policy=policy)


def _base() -> list[bytes]:
    return [dg(status(), seq=5), dg(TrainHeartbeat(7), train=1026, seq=3), dg(TrainDiag(((1, 1, 0),)), seq=6),
            bytes.fromhex(VECTORS["vectors"][13]["hex"]), dg(status(consist=0), train=1033, seq=2)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4), st.lists(st.tuples(st.integers(0, 143), st.integers(0, 255)),
                                                       max_size=3),
                          st.booleans(), st.integers(-3, 3), st.integers(-2, 2)), min_size=1, max_size=40))
def test_random_mutations(cases):
    base = _base()
    out = []
    for which, flips, fix_crc, resize, age_s in cases:
        buf = bytearray(base[which])
        struct.pack_into(">Q", buf, 14, T0 + 1500 * age_s)
        for at, value in flips:
            if at < len(buf):
                buf[at] = value
        data = recrc(buf) if fix_crc else bytes(buf)
        if resize > 0:
            data += bytes(resize * 40)
        elif resize < 0:
            data = data[:resize * 7]
        out.append(data)
    assert_same([(T0, out), (T0 + 10, out[::-1])])
