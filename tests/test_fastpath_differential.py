"""The compiled core against the pure-Python reference: same bytes in, same everything out.

* the sequence window: random arrivals (nets, repeats, late numbers, the wrap) give the same
  verdicts and the same bitmaps, for window sizes around the 64-bit word edges;
* the object table: the same puts give the same mapping as a dict;
* a whole gateway context (tests/differential.py): thousands of frames over a dual-net device and
  a signed device, good, repeated, late, stale, corrupted, garbage, in random pieces: after every
  event both implementations have the same counters, actions, output bytes, windows, object
  tables and listener calls.

The long run (``python -m tests.fuzz.differential``) does the same over a million frames.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from railcodecs import speedups
from railcodecs.sequence import APPLY, SequenceWindow as PureWindow

import differential

pytestmark = pytest.mark.skipif(os.environ.get("RAILGATE_PURE") == "1", reason="RAILGATE_PURE=1: only the pure path runs")


def test_the_compiled_core_is_built_unless_pure_is_forced():
    """A checkout that was installed without the extension must not pass for one that has it."""
    assert speedups.available() or os.environ.get("RAILGATE_PURE") == "1", speedups.UNAVAILABLE


arrivals = st.lists(st.tuples(st.one_of(st.integers(0, 40), st.integers(0xFFFF_FFF0, 0xFFFF_FFFF),
                                        st.integers(0, 0xFFFF_FFFF)),
                              st.sampled_from([None, 0, 1])), max_size=200)


@settings(max_examples=300, deadline=None)
@given(window=st.sampled_from([1, 2, 63, 64, 65, 127, 128, 1024]), seq=arrivals,
       walk=st.lists(st.tuples(st.integers(-70, 70), st.sampled_from([None, 0, 1])), max_size=200))
def test_sequence_window_same_verdicts_and_bitmaps(window, seq, walk):
    pure, fast = PureWindow(window), speedups._core.SequenceWindow(window)
    last = 1000
    events = list(seq) + [((last + d) % 0xFFFF_FFFF, net) for d, net in walk]
    for s, net in events:
        # applies() is check()'s APPLY verdict told in advance (the GIL-free run looks up a frame's
        # objects only when it holds)
        will = pure.applies(s)
        assert fast.applies(s) == will, (s, net)
        verdict = pure.check(s, net)
        assert fast.check(s, net) == verdict, (s, net)
        assert will == (verdict[0] == APPLY), (s, net, verdict)
        assert (fast.last, fast.seen, fast.on_b, fast.copied) == (pure.last, pure.seen, pure.on_b, pure.copied)
    fast.reset()
    pure.reset()
    assert (fast.last, fast.seen) == (pure.last, pure.seen) == (0, 0)


@settings(max_examples=300, deadline=None)
@given(window=st.sampled_from([1, 2, 3, 63, 64, 65, 130]),
       steps=st.lists(st.tuples(st.integers(1, 70), st.sampled_from([0, 1]), st.booleans(),
                                st.integers(0, 140), st.sampled_from([None, 0, 1])), max_size=150))
def test_sequence_window_same_bitmaps_as_the_ring_wraps(window, steps):
    """A sender moving on (dual-net copies, late arrivals) for many times the window: the compiled
    window's ring wraps round and round, and must read as the pure window's bitmaps throughout."""
    pure, fast = PureWindow(window), speedups._core.SequenceWindow(window)
    seq = 0xFFFF_FF00  # the numbers wrap too
    for step, net, copy, back, late_net in steps:
        seq = (seq + step - 1) % 0xFFFF_FFFF + 1
        events = [(seq, net)] + ([(seq, 1 - net)] if copy else [])
        events.append(((seq - back - 1) % 0xFFFF_FFFF + 1, late_net))
        for s, n in events:
            assert fast.check(s, n) == pure.check(s, n), (s, n)
            assert (fast.last, fast.seen, fast.on_b, fast.copied) == (pure.last, pure.seen, pure.on_b, pure.copied)


def test_sequence_window_refuses_a_window_under_one():
    with pytest.raises(ValueError, match="at least 1"):
        speedups._core.SequenceWindow(0)


@settings(max_examples=200, deadline=None)
@given(puts=st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 5),
                               st.integers(0, 2**62)), max_size=400))
def test_object_table_is_a_dict(puts):
    table, ref = speedups._core.ObjectTable(), {}
    for dev, obj, value, ms in puts:
        table[(dev, obj)] = (value, ms)
        ref[(dev, obj)] = (value, ms)
    assert table.copy() == ref and list(table.copy()) == list(ref) and len(table) == len(ref)
    for dev, obj, _, _ in puts[:20]:
        assert (dev, obj) in table and table[(dev, obj)] == ref[(dev, obj)] == table.get((dev, obj))
    assert table.get((70000, 1)) is None and (1, "x") not in table and table.get("nope", 5) == 5
    with pytest.raises(KeyError):
        table[(0x1_0000, 0)]


@pytest.mark.parametrize("seed", range(6))
def test_link_path_same_state_after_every_event(seed):
    assert differential.compare(seed, 700) >= 700


@pytest.mark.parametrize("seed", range(4))
def test_the_gil_free_run_leaves_the_same_state_after_every_event(seed):
    """FastLink._run_nogil on every run (threshold 0), beside only a watching listener (the alarm
    stage's kind): the same frames, counters, table, watched changes and window as the pure path."""
    assert differential.compare(seed, 700, gil_free=True) >= 700


def test_the_fast_path_really_runs():
    """The differential test proves nothing if the compiled side never takes a frame."""
    line = differential.DualLine("compiled")
    feeder = differential.Feeder(line, 1)
    for name, dev, data in differential.scenario(1, 300):
        feeder.event(name, dev, data, 1)
    taken = sum(p.fast.frames for p in line.links.values())
    rx = sum(p.checks.rx_frames for p in line.links.values())
    assert taken > rx // 2, (taken, rx)
    speedups.use("compiled")



def test_a_listener_that_raises_leaves_the_same_counts_and_state_in_both():
    """A listener's exception propagates out of the apply with the frame counted and consumed the
    same way by the compiled path (which holds the sender's lock over a batch and adds the sender's
    counters once) and the Python path: the frames before it applied, the rest of its frame not."""
    from railcodecs import TrackSections, encode

    digests, errors = {}, {}
    for impl in ("compiled", "pure"):
        line = differential.DualLine(impl)
        calls = []

        def listener(kind, dev, obj, value, ms):
            calls.append((obj, value))
            if len(calls) == 5:
                raise RuntimeError("listener failed")

        line.ctx.objects.subscribe(listener)
        burst = b"".join(encode(TrackSections(((10 + seq, 1), (20 + seq, 2))), src=258, dst=1, seq=seq,
                                time_ms=line.now_ms) for seq in range(1, 6))
        try:
            line.feed("A258", [burst])
        except RuntimeError as exc:
            errors[impl] = str(exc)
        digests[impl] = (line.digest(), list(calls))
    assert errors == {"compiled": "listener failed", "pure": "listener failed"}
    (compiled, c_calls), (pure, p_calls) = digests["compiled"], digests["pure"]
    assert c_calls == p_calls == [(11, 1), (21, 2), (12, 1), (22, 2), (13, 1)]
    assert compiled == pure
    assert pure[258][0]["applied"] == 3 and pure["A258"][10] == 2  # the sender: 3 applied; the link: 2
    speedups.use("compiled")


def test_gil_free_runs_on_three_threads_apply_each_frame_once():
    """Net A and net B of device 258 on two threads (each seq applied once, its copy counted once),
    while device 257 stores new objects on a third (the tables grow under the GIL-free runs) and a
    fourth reads the tables: the sender's lock and the tables' read/write locks at work."""
    import threading

    from railcodecs import Signals, TrackSections, encode
    from railcodecs.messages import Switches

    line = differential.DualLine("compiled", watch_only=True)
    old = speedups._core.set_nogil_bytes(0)
    n = 6000
    try:
        now = line.now_ms
        kinds = (TrackSections, Signals, Switches)
        dual = [encode(kinds[seq % 3](tuple((10 + i, (seq + i) % 2) for i in range(6))), src=258, dst=1, seq=seq,
                       time_ms=now) for seq in range(1, n + 1)]
        key = line.keys["A257"]
        growing = [encode(TrackSections(tuple((1000 + 8 * seq + i, 1) for i in range(8))), src=257, dst=1, seq=seq,
                          time_ms=now, mac_key=key) for seq in range(1, n // 4 + 1)]
        errors, done = [], threading.Event()

        def feed(name, frames):
            try:
                for k in range(0, len(frames), 400):  # long GIL-free runs, so the two nets' overlap
                    line.links[name].source.append(b"".join(frames[k:k + 400]))
                    line.links[name].data_received(line.now, now)
            except Exception as exc:  # surfaced below
                errors.append(repr(exc))

        def read():
            while not done.is_set():
                line.ctx.objects.sections.copy()
                len(line.ctx.objects.signals)

        threads = [threading.Thread(target=feed, args=("A258", dual)), threading.Thread(target=feed, args=("B258", dual)),
                   threading.Thread(target=feed, args=("A257", growing))]
        reader = threading.Thread(target=read)
        reader.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        done.set()
        reader.join(10)
    finally:
        speedups._core.set_nogil_bytes(old)
    assert errors == []
    s = line.ctx.receiver.senders[258]
    # every seq applied once; its other copy is the other net's expected copy, or stale when one
    # thread ran more than the window (1,024) ahead of the other
    assert s.applied == n and s.dual_net_copies == s.duplicates and s.dual_net_copies + s.stale == n
    checks = [line.links[name].checks for name in ("A258", "B258")]
    assert sum(c.applied for c in checks) == n and sum(c.copies for c in checks) == s.dual_net_copies
    assert sum(p.fast.frames_nogil for p in line.links.values()) > n  # the GIL-free path took most
    assert line.ctx.receiver.senders[257].applied == n // 4
    last = {kinds[seq % 3]: seq for seq in range(n - 2, n + 1)}
    tables = {TrackSections: line.ctx.objects.sections, Signals: line.ctx.objects.signals,
              Switches: line.ctx.objects.switches}
    for kind, seq in last.items():
        assert [tables[kind][(258, 10 + i)][0] for i in range(6)] == [(seq + i) % 2 for i in range(6)]
    assert len([k for k in line.ctx.objects.sections.copy() if k[0] == 257 and k[1] >= 1000]) == 8 * (n // 4)
