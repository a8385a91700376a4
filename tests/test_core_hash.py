"""The compiled hashes (railcodecs._core over codecs/_core/icd_hash.h) against the stdlib.

``crc32`` must equal ``zlib.crc32`` (start value and chaining included), ``sha256`` must equal
``hashlib.sha256`` and ``hmac_sha256`` must equal ``hmac.new(key, msg, hashlib.sha256)``:
published answers, every length 0..300 and the padding edges of SHA-256 (55/56, 63/64/65,
119/120, 128, ...), keys on both sides of the 64-byte block (longer keys are hashed first),
buffers starting at every alignment, then hypothesis over random data.

Without the extension built these tests fail (the import below raises), unless RAILGATE_PURE=1,
where a missing extension is a skip.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import random
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if os.environ.get("RAILGATE_PURE") == "1":
    _core = pytest.importorskip("railcodecs._core")
else:
    import railcodecs._core as _core

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# every length 0..300, then the SHA-256 padding edges again a block further on and some large ones
LENGTHS = sorted(set(range(301)) | {311, 312, 319, 320, 321, 447, 448, 449, 511, 512, 513, 1000, 1024,
                                    4095, 4096, 4097, 65536 + 7})
# HMAC keys: empty, short, one under / exactly / one over the block size (65+ is hashed first)
KEY_LENGTHS = [0, 1, 20, 32, 63, 64, 65, 100, 131, 200]

u32 = st.integers(min_value=0, max_value=0xFFFF_FFFF)


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(n * 7919 + seed).randbytes(n)


def _ref_hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


# --- published answers ---------------------------------------------------------------------------

def test_crc32_known_answers():
    assert _core.crc32(b"") == 0
    assert _core.crc32(b"123456789") == 0xCBF43926
    assert _core.crc32(b"The quick brown fox jumps over the lazy dog") == 0x414FA339
    assert _core.crc32(b"", 0xDEADBEEF) == 0xDEADBEEF          # nothing to absorb: the start comes back
    assert _core.crc32(b"\x00" * 32) == 0x190A55AD
    assert _core.crc32(b"\xff" * 32) == 0xFF6CAB0B


def test_sha256_known_answers():
    vectors = {
        b"": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        b"abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        # FIPS 180-2 two-block message (56 bytes: the length no longer fits the first block)
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq":
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        b"a" * 1_000_000: "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
    }
    for msg, digest in vectors.items():
        out = _core.sha256(msg)
        assert isinstance(out, bytes) and len(out) == 32
        assert out.hex() == digest, len(msg)


def test_hmac_sha256_rfc4231():
    cases = [
        (b"\x0b" * 20, b"Hi There",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe", b"what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (b"\xaa" * 20, b"\xdd" * 50,
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        (bytes(range(1, 26)), b"\xcd" * 50,
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than block-size data."
                        b" The key needs to be hashed before being used by the HMAC algorithm.",
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
    ]
    for key, msg, mac in cases:
        out = _core.hmac_sha256(key, msg)
        assert isinstance(out, bytes) and len(out) == 32
        assert out.hex() == mac, (len(key), len(msg))
    assert _core.hmac_sha256(b"", b"") == _ref_hmac(b"", b"")


# --- every length and the edges ------------------------------------------------------------------

def test_crc32_every_length():
    for n in LENGTHS:
        data = _data(n)
        assert _core.crc32(data) == zlib.crc32(data), n
        assert _core.crc32(data, 0x12345678) == zlib.crc32(data, 0x12345678), n


def test_crc32_every_alignment_and_end():
    """The slicing-by-8 loop, the byte-wise head (unaligned start) and tail (n % 8) all agree.

    Bytes objects always start 8-aligned, so the unaligned starts go through memoryview slices
    (the wrapper takes any contiguous byte buffer, as the frame scanner reads at any offset).
    """
    base = _data(700, seed=1)
    view = memoryview(base)
    for start in range(16):
        for n in list(range(0, 80)) + [255, 256, 257, 600]:
            chunk = view[start:start + n]
            assert _core.crc32(chunk) == zlib.crc32(chunk), (start, n)


def test_sha256_every_length():
    for n in LENGTHS:
        data = _data(n)
        assert _core.sha256(data) == hashlib.sha256(data).digest(), n


def test_sha256_lengths_differ_by_one_byte():
    """A wrong length field or a dropped/extra padding byte shows up as equal digests here."""
    digests = {_core.sha256(b"\x00" * n) for n in range(0, 200)}
    assert len(digests) == 200
    for n in (55, 56, 63, 64, 65, 119, 120, 128):
        assert _core.sha256(b"\x00" * n) == hashlib.sha256(b"\x00" * n).digest(), n
        assert _core.sha256(b"\x80" + b"\x00" * (n - 1)) == hashlib.sha256(b"\x80" + b"\x00" * (n - 1)).digest(), n


def test_hmac_every_length_and_key_size():
    for n in LENGTHS:
        msg = _data(n, seed=2)
        for kl in KEY_LENGTHS:
            key = _data(kl, seed=3 + n)
            assert _core.hmac_sha256(key, msg) == _ref_hmac(key, msg), (kl, n)


def test_hmac_key_block_edges():
    """Keys of 63/64 bytes are zero-padded, 65+ are hashed first; a key is not its zero-padded twin
    once it is longer than the block."""
    msg = b"heartbeat"
    for kl in range(0, 200):
        key = _data(kl, seed=4)
        assert _core.hmac_sha256(key, msg) == _ref_hmac(key, msg), kl
    # RFC 2104: a short key and the same key padded with zeros to 64 bytes give the same MAC ...
    assert _core.hmac_sha256(b"k" * 10, msg) == _core.hmac_sha256(b"k" * 10 + b"\x00" * 54, msg)
    # ... but a 65-byte key is hashed, so adding a zero byte to a 64-byte key changes the MAC
    assert _core.hmac_sha256(b"k" * 64, msg) != _core.hmac_sha256(b"k" * 64 + b"\x00", msg)


def test_results_do_not_depend_on_earlier_calls():
    """No state survives a call: the same input after other inputs gives the same output."""
    key, msg = b"session-key", _data(100, seed=5)
    first = (_core.crc32(msg), _core.sha256(msg), _core.hmac_sha256(key, msg))
    for n in (1, 63, 64, 65, 1000):
        _core.crc32(_data(n)), _core.sha256(_data(n)), _core.hmac_sha256(_data(n), _data(n))
    assert (_core.crc32(msg), _core.sha256(msg), _core.hmac_sha256(key, msg)) == first


# --- properties ----------------------------------------------------------------------------------

@SETTINGS
@given(data=st.binary(max_size=5000), crc=u32)
def test_crc32_matches_zlib(data, crc):
    assert _core.crc32(data) == zlib.crc32(data)
    assert _core.crc32(data, crc) == zlib.crc32(data, crc)


@SETTINGS
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=6))
def test_crc32_chains_over_any_split(data, cuts):
    bounds = [0] + sorted(min(c, len(data)) for c in cuts) + [len(data)]
    crc = 0
    for a, b in zip(bounds, bounds[1:]):
        crc = _core.crc32(data[a:b], crc)
    assert crc == zlib.crc32(data)


@SETTINGS
@given(data=st.binary(max_size=5000))
def test_sha256_matches_hashlib(data):
    assert _core.sha256(data) == hashlib.sha256(data).digest()


@SETTINGS
@given(key=st.binary(max_size=200), msg=st.binary(max_size=5000))
def test_hmac_sha256_matches_hmac(key, msg):
    assert _core.hmac_sha256(key, msg) == _ref_hmac(key, msg)
