"""Every ICD reference vector, whole, byte by byte and in random chunkings."""
from __future__ import annotations

import pytest

from codec_helpers import decode_chunks, summary
from conftest import chunkings, load_vectors
from railcodecs import ALL_TYPES, UDP_TYPES, Frame, FrameError, MacPolicy, decode_datagram, encode, session_key

VECTORS = load_vectors()
KEY = bytes.fromhex(VECTORS["mac_key_hex"])
NAMES = [v["name"] for v in VECTORS["vectors"]]


def key_of(vec) -> bytes:
    """The vector's own key (session frames: the session key), else the top-level link key."""
    own = vec["expect"].get("mac_key_hex", vec.get("mac_key_hex"))
    return bytes.fromhex(own) if own is not None else KEY


def test_session_key_of_the_hello_and_hello_ack_vectors():
    """K_s from the link key and the nonces of the hello / hello_ack vectors is the file's session key."""
    by_name = {v["name"]: v for v in VECTORS["vectors"]}
    device_nonce = by_name["hello"]["expect"]["fields"]["device_nonce"]
    session_nonce = by_name["hello_ack"]["expect"]["fields"]["session_nonce"]
    assert session_key(KEY, device_nonce, session_nonce).hex() == VECTORS["session_key_hex"]
    assert VECTORS["icd"] == "v1 revision 1.1"


def is_udp(vec) -> bool:
    return "size" in vec["expect"] or vec["expect"].get("udp", False)


def check_frame(frame, expect):
    assert isinstance(frame, Frame), frame
    assert frame.name == expect["type"]
    for key in ("src", "dst", "seq", "time_ms"):
        if key in expect:
            assert getattr(frame, key) == expect[key], key
    assert frame.mac == expect.get("mac", False)
    assert frame.message.to_fields() == expect["fields"]


@pytest.mark.parametrize("name", NAMES)
def test_vector_in_every_chunking(name):
    vec = next(v for v in VECTORS["vectors"] if v["name"] == name)
    data, expect = bytes.fromhex(vec["hex"]), vec["expect"]
    policy = MacPolicy(key=key_of(vec))
    if is_udp(vec):
        ev = decode_datagram(data, mac=policy)
        if "error" in expect:
            assert isinstance(ev, FrameError) and ev.reason.value == expect["error"]
        else:
            assert len(data) == expect["size"]
            check_frame(ev, expect)
        return
    reference = None
    for label, chunks in chunkings(data, seed=len(data)):
        events = decode_chunks(chunks, mac=policy)
        if reference is None:
            reference = summary(events)
        assert summary(events) == reference, label
        if expect.get("stream"):
            frames = [e.name for e in events if isinstance(e, Frame)]
            assert frames == expect["frames"], label
            for reason, n in expect["errors_at_least"].items():
                assert sum(1 for e in events if isinstance(e, FrameError) and e.reason.value == reason) >= n
        elif "error" in expect:
            assert [e.reason.value for e in events] == [expect["error"]], label
            assert events[0].offset == 0
        else:
            assert len(events) == 1, (label, events)
            check_frame(events[0], expect)


@pytest.mark.parametrize("name", [n for n in NAMES if "error" not in next(
    v for v in VECTORS["vectors"] if v["name"] == n)["expect"] and not next(
    v for v in VECTORS["vectors"] if v["name"] == n)["expect"].get("stream")])
def test_vector_reencodes_to_same_bytes(name):
    vec = next(v for v in VECTORS["vectors"] if v["name"] == name)
    data, key = bytes.fromhex(vec["hex"]), key_of(vec)
    ev = decode_datagram(data, mac=MacPolicy(key=key)) if is_udp(vec) else \
        decode_chunks([data], mac=MacPolicy(key=key))[0]
    again = encode(ev.message, src=ev.src, dst=ev.dst, seq=ev.seq, time_ms=ev.time_ms,
                   mac_key=key if ev.mac else None)
    assert again == data


def test_vectors_with_trailing_partial_frame():
    """A valid vector followed by half of the next frame: the frame comes out, then need-data."""
    for vec in VECTORS["vectors"]:
        if is_udp(vec) or "error" in vec["expect"] or vec["expect"].get("stream"):
            continue
        data = bytes.fromhex(vec["hex"])
        events = decode_chunks([data + data[:10]], mac=MacPolicy(key=key_of(vec)), eof=False)
        assert len(events) == 1 and isinstance(events[0], Frame)


def test_udp_types_are_not_accepted_in_a_tcp_gateway_stream():
    vec = next(v for v in VECTORS["vectors"] if v["name"] == "train_status")
    from railcodecs import GATEWAY_RX_TYPES
    events = decode_chunks([bytes.fromhex(vec["hex"])], types=GATEWAY_RX_TYPES)
    assert [e.reason.value for e in events] == ["unknown_type"]


def test_tcp_types_are_not_accepted_as_datagrams():
    vec = next(v for v in VECTORS["vectors"] if v["name"] == "heartbeat")
    ev = decode_datagram(bytes.fromhex(vec["hex"]), types=UDP_TYPES)
    assert isinstance(ev, FrameError) and ev.reason.value == "unknown_type"
    assert ALL_TYPES[0x02].NAME == "HEARTBEAT"


def test_session_vectors_verify_with_the_session_policy_only():
    """A link's policy after HELLO_ACK (with_session) verifies the session vectors; the link key alone
    finds them bad_mac: a frame of one session fails in any other."""
    k_s = bytes.fromhex(VECTORS["session_key_hex"])
    for name in ("session_confirm_with_mac", "signals_with_session_mac"):
        data = bytes.fromhex(next(v for v in VECTORS["vectors"] if v["name"] == name)["hex"])
        for label, chunks in chunkings(data, seed=3):
            ok = decode_chunks(chunks, mac=MacPolicy(keys={257: KEY}).with_session(k_s))
            assert [e.name for e in ok] == [name.split("_with")[0].upper()], label
            bad = decode_chunks(chunks, mac=MacPolicy(keys={257: KEY}))
            assert [e.reason.value for e in bad] == ["bad_mac"], label
        other = session_key(KEY, 1, 2)
        assert [e.reason.value for e in decode_chunks([data], mac=MacPolicy(key=KEY).with_session(other))] == \
            ["bad_mac"]
