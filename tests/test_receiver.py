"""EN 50159 threats against the receiver checks (ICD section 6): each is injected,
not applied, and moves the right counter. The clock is passed in; nothing sleeps."""
from __future__ import annotations

import threading

import pytest

from railcodecs import (Frame, FrameError, Heartbeat, Hello, HelloAck, MacPolicy, Receiver, SequenceWindow,
                        SessionConfirm, StreamDecoder, TrackSections, TrainHeartbeat, decode_datagram, encode,
                        seq_distance, seq_next)

GW, CI, CI2, TRAIN = 1, 257, 258, 1025
T0 = 1_795_000_000_000
KEY = bytes(range(32))


def make_receiver(**kw):
    return Receiver(GW, {CI: 1, CI2: 1, TRAIN: 4}, **kw)


class Link:
    """A TCP link as the gateway sees it: bytes in, decoder, receiver checks, applied frames out."""

    DEVICE_NONCE, SESSION_NONCE = 0x1111, 0x2222

    def __init__(self, rx, net=0, mac=MacPolicy(), device=CI, device_clock_offset=0, now=T0, confirm=True):
        self.rx, self.dev, self.off, self.key = rx, device, device_clock_offset, mac.key
        self.checks = rx.new_link(f"link-{net}", net)
        self.decoder = StreamDecoder(mac=mac)
        self.applied = []
        self.confirms = []
        hello = encode(Hello(1, net, 500, "T", self.DEVICE_NONCE), src=device, dst=GW, seq=0,
                       time_ms=now + device_clock_offset, mac_key=mac.key)
        self.hello_result = self.feed(hello, now)
        if self.hello_result == HelloAck.OK:
            self.checks.session_nonce = self.SESSION_NONCE  # what the HELLO_ACK carried
            if confirm:
                self.feed(self.confirm_frame(now=now), now)

    def confirm_frame(self, device_nonce=None, session_nonce=None, now=T0):
        msg = SessionConfirm(self.DEVICE_NONCE if device_nonce is None else device_nonce,
                             self.SESSION_NONCE if session_nonce is None else session_nonce)
        return encode(msg, src=self.dev, dst=GW, seq=0, time_ms=now + self.off, mac_key=self.key)

    def frame(self, seq, value=0, *, time_ms=None, src=None, dst=GW, key=None, now=T0):
        msg = TrackSections(((101, value),))
        return encode(msg, src=src or self.dev, dst=dst, seq=seq, mac_key=key,
                      time_ms=(now + self.off) if time_ms is None else time_ms)

    def feed(self, data, now=T0):
        result = None
        self.decoder.feed(data)
        for ev in self.decoder.events():
            if isinstance(ev, FrameError):
                self.checks.count(ev.reason)
            elif isinstance(ev.message, Hello):
                result = self.rx.hello(self.checks, ev, now)
            elif isinstance(ev.message, SessionConfirm):
                self.confirms.append(self.rx.confirm(self.checks, ev, now))
            elif self.rx.check(self.checks, ev, now) is None:
                self.applied.append(ev)
        return result

    def errors(self):
        return dict(self.checks.errors)


def test_repetition_is_dropped_as_duplicate():
    rx = make_receiver()
    link = Link(rx)
    f = link.frame(1)
    link.feed(f)
    link.feed(f)  # replayed verbatim
    assert [x.seq for x in link.applied] == [1]
    assert link.errors() == {"duplicate": 1} and rx.senders[CI].duplicates == 1


def test_deletion_is_counted_as_gap_and_later_frames_apply():
    rx = make_receiver()
    link = Link(rx)
    for seq in (1, 2, 5):  # 3 and 4 deleted
        link.feed(link.frame(seq))
    assert [x.seq for x in link.applied] == [1, 2, 5]
    assert link.errors() == {"gap": 2} and rx.senders[CI].gap == 2


def test_insertion_from_an_unconfigured_or_foreign_source_is_not_applied():
    rx = make_receiver()
    link = Link(rx)
    link.feed(link.frame(1, src=999))       # nobody we know
    link.feed(link.frame(1, src=CI2))       # configured, but this link's HELLO named CI
    link.feed(link.frame(2, dst=7))         # not for us
    assert link.applied == []
    assert link.errors() == {"unknown_source": 2, "wrong_destination": 1}


def test_resequencing_drops_the_late_frame_as_stale():
    rx = make_receiver()
    link = Link(rx)
    for seq in (1, 3, 2, 4):
        link.feed(link.frame(seq))
    assert [x.seq for x in link.applied] == [1, 3, 4]
    assert link.errors() == {"gap": 1, "stale": 1} and rx.senders[CI].stale == 1


def test_corruption_is_caught_by_the_crc_and_never_applied():
    rx = make_receiver()
    link = Link(rx)
    link.feed(link.frame(1))
    bad = bytearray(link.frame(2, value=1))
    bad[26] ^= 0x02  # state 1 -> 3: a plausible value, only the CRC can tell
    link.feed(bytes(bad) + link.frame(3))
    assert [x.seq for x in link.applied] == [1, 3]
    assert link.errors() == {"bad_crc": 1, "gap": 1}


@pytest.mark.parametrize("skew_ms", [-2001, +2001])
def test_delay_by_more_than_max_age_is_stale(skew_ms):
    rx = make_receiver(max_age_ms=2000)
    link = Link(rx, device_clock_offset=3_600_000)  # device clock one hour ahead: offset learned at HELLO
    link.feed(link.frame(1))                         # on time by the device's clock
    link.feed(link.frame(2, time_ms=T0 + 3_600_000 + skew_ms))
    link.feed(link.frame(3, time_ms=T0 + 3_600_000 - 1999))  # old but within max_age
    assert [x.seq for x in link.applied] == [1, 3]
    assert link.errors() == {"stale": 1, "gap": 1}


def test_masquerade_wrong_key_missing_mac_and_wrong_kind():
    rx = make_receiver()
    link = Link(rx, mac=MacPolicy(key=KEY, required=True))
    assert link.hello_result == HelloAck.OK
    link.feed(link.frame(1, key=KEY))
    link.feed(link.frame(2, key=b"not the key" * 3))
    link.feed(link.frame(3))  # unsigned
    link.feed(link.frame(4, key=KEY))
    assert [x.seq for x in link.applied] == [1, 4]
    assert link.errors() == {"bad_mac": 1, "missing_mac": 1, "gap": 2}
    # a train id claiming to be an interlocking, and an unknown id, are refused at HELLO
    assert Link(rx, device=TRAIN).hello_result == HelloAck.UNKNOWN_DEVICE
    liar = Link(rx, device=4242)
    assert liar.hello_result == HelloAck.UNKNOWN_DEVICE and liar.errors() == {"unknown_source": 1}
    liar.feed(liar.frame(1))
    assert liar.applied == []


def test_dual_net_first_copy_wins_across_threads():
    """Net A and net B links on two threads race with both copies of 20,000 frames: each applied once."""
    rx = make_receiver()
    a, b = Link(rx, net=0), Link(rx, net=1)
    frames = [a.frame(seq) for seq in range(1, 20_001)]
    start = threading.Barrier(2)

    def run(link):
        start.wait()
        for f in frames:
            link.feed(f)

    threads = [threading.Thread(target=run, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sender = rx.senders[CI]
    assert len(a.applied) + len(b.applied) == 20_000 == sender.applied
    assert sender.duplicates + sender.stale == 20_000
    assert sender.gap == a.checks.errors["gap"] + b.checks.errors["gap"]
    # every seq applied exactly once, whichever net carried it
    assert sorted(x.seq for x in a.applied + b.applied) == list(range(1, 20_001))


def test_sequence_window_wraps_after_0xffffffff():
    w = SequenceWindow()
    assert [w.check(s) for s in (0xFFFF_FFFE, 0xFFFF_FFFF, 1, 3)] == [(0, 0), (0, 0), (0, 0), (0, 1)]
    assert w.check(0xFFFF_FFFF) == (1, 0)   # seen before the wrap: duplicate
    assert w.check(2) == (2, 0)             # skipped, arrives late: stale
    assert w.check(2) == (1, 0)             # and a second late copy is a duplicate
    assert w.check(0) == (2, 0)
    assert seq_next(0xFFFF_FFFF) == 1 and seq_distance(1, 0xFFFF_FFFF) == 1 and seq_distance(0xFFFF_FFFF, 1) == -1


def test_heartbeat_counters_per_link():
    rx = make_receiver()
    link = Link(rx)
    for counter in (7, 8, 8, 6, 11):
        link.feed(encode(Heartbeat(counter), src=CI, dst=GW, seq=0, time_ms=T0))
    assert link.errors() == {"duplicate": 1, "stale": 1, "gap": 2}
    assert rx.senders[CI].applied == 0  # heartbeats do not move the sequence


def test_new_session_resets_the_window_only_when_no_other_link_is_open():
    rx = make_receiver()
    a = Link(rx, net=0)
    a.feed(a.frame(500))
    b = Link(rx, net=1)           # joins the running session
    b.feed(b.frame(1))
    assert b.errors() == {"stale": 1}
    rx.link_closed(a.checks)
    rx.link_closed(b.checks)
    again = Link(rx, net=0)       # device restarted: counts from 1 again
    again.feed(again.frame(1))
    assert [x.seq for x in again.applied] == [1] and rx.senders[CI].sessions == 2


def test_trains_synchronised_clock_and_session_after_silence():
    rx = make_receiver(max_age_ms=2000, train_reset_ms=3000)
    udp = rx.new_link("udp")

    def dgram(seq, t):
        return decode_datagram(encode(TrainHeartbeat(seq), src=TRAIN, dst=GW, seq=seq, time_ms=t))

    assert rx.check_datagram(udp, dgram(10, T0), T0) is None
    assert rx.check_datagram(udp, dgram(10, T0), T0 + 10).value == "duplicate"
    assert rx.check_datagram(udp, dgram(11, T0 - 2500), T0 + 20).value == "stale"   # delayed
    assert rx.check_datagram(udp, dgram(1, T0 + 100), T0 + 100).value == "stale"    # not a new session yet
    later = T0 + 10_000
    assert rx.check_datagram(udp, dgram(1, later - 5000), later).value == "stale"   # old recording: no restart
    assert rx.check_datagram(udp, dgram(1, later), later) is None                    # train restarted
    assert rx.check_datagram(udp, decode_datagram(encode(TrainHeartbeat(1), src=CI, dst=GW, seq=2,
                                                         time_ms=later)), later).value == "unknown_source"
    assert rx.senders[TRAIN].sessions == 2


def test_first_frame_of_a_session_sets_the_window_without_a_gap():
    """The gateway may start while a device is at seq 5000: that is not 4999 lost frames."""
    rx = make_receiver()
    link = Link(rx)
    link.feed(link.frame(5000))
    assert [x.seq for x in link.applied] == [5000] and link.errors() == {}


# --- sessions (ICD 1.1) ------------------------------------------------------------------------
def test_nothing_is_applied_before_the_session_is_confirmed():
    rx = make_receiver()
    link = Link(rx, confirm=False)
    assert link.hello_result == HelloAck.OK and not link.checks.confirmed
    link.feed(link.frame(1))
    link.feed(encode(Heartbeat(5), src=CI, dst=GW, seq=0, time_ms=T0))  # let through, nothing applied
    assert link.applied[0].message == Heartbeat(5) and len(link.applied) == 1
    assert link.errors() == {"no_session": 1}
    assert rx.senders[CI].applied == 0 and rx.senders[CI].sessions == 0 and rx.senders[CI].open_links == 0
    link.feed(link.confirm_frame())
    assert link.confirms == [None] and link.checks.confirmed and rx.senders[CI].sessions == 1
    link.feed(link.frame(2))
    assert [x.seq for x in link.applied[1:]] == [2] and rx.senders[CI].applied == 1


def test_session_confirm_with_wrong_nonces_is_bad_session_and_confirms_nothing():
    rx = make_receiver()
    link = Link(rx, confirm=False)
    link.feed(link.confirm_frame(device_nonce=Link.DEVICE_NONCE + 1))
    link.feed(link.confirm_frame(session_nonce=Link.SESSION_NONCE ^ 1))
    assert link.confirms == ["bad_session", "bad_session"] and not link.checks.confirmed
    assert link.errors() == {"bad_session": 2}
    link.feed(link.confirm_frame())
    link.feed(link.confirm_frame())  # a repeat on a confirmed link
    assert link.confirms[2:] == [None, "duplicate"] and link.checks.confirmed


def test_clock_offset_of_the_hello_takes_effect_only_at_confirmation():
    rx = make_receiver()
    old = Link(rx, device_clock_offset=0)
    assert old.checks.offset_ms == 0
    link = Link(rx, net=1, device_clock_offset=60_000, confirm=False)
    assert link.checks.offset_ms == 0 and link.checks.pending_offset_ms == 60_000
    link.feed(link.confirm_frame())
    assert link.checks.offset_ms == 60_000
    link.feed(link.frame(1))
    assert [x.seq for x in link.applied] == [1]


def test_an_unconfirmed_link_neither_starts_nor_holds_a_session():
    rx = make_receiver()
    a = Link(rx, net=0)
    a.feed(a.frame(7))
    replayer = Link(rx, net=1, confirm=False)  # a HELLO that never confirms
    rx.link_closed(a.checks)
    assert rx.senders[CI].open_links == 0
    rx.link_closed(replayer.checks)
    assert rx.senders[CI].open_links == 0  # it never joined
    b = Link(rx, net=0)  # the device reconnects: a new session, window reset
    b.feed(b.frame(1))
    assert [x.seq for x in b.applied] == [1] and rx.senders[CI].sessions == 2


def test_sequence_window_tells_the_dual_net_copy_from_a_repetition():
    from railcodecs.sequence import APPLY, COPY, DUPLICATE, STALE
    w = SequenceWindow(window=64)
    assert w.check(10, net=0) == (APPLY, 0)
    assert w.check(10, net=1) == (COPY, 0)          # the other net's copy: expected
    assert w.check(10, net=1) == (DUPLICATE, 0)     # a third copy
    assert w.check(10, net=0) == (DUPLICATE, 0)
    assert w.check(11, net=1) == (APPLY, 0)
    assert w.check(11, net=1) == (DUPLICATE, 0)     # a second copy on the same net is a repeat
    assert w.check(11, net=0) == (COPY, 0)          # ...and the other net's copy still an expected one
    assert w.check(14, net=0) == (APPLY, 2)         # 12 and 13 skipped
    assert w.check(12, net=1) == (STALE, 0)         # late first copy, on net B
    assert w.check(12, net=0) == (COPY, 0)          # its net A copy
    assert w.check(12, net=1) == (DUPLICATE, 0)
    assert w.check(14 + 64, net=0)[0] == APPLY      # the window moves past everything above
    assert w.check(14, net=1) == (STALE, 0)         # out of the window: nothing to tell
    trains = SequenceWindow()
    assert trains.check(5) == (APPLY, 0) and trains.check(5) == (DUPLICATE, 0)   # no nets: no copies
