"""Every input the fuzzer kept (tests/data/fuzz-corpus/<target>/) or crashed on (tests/data/fuzz-crashes/)
is replayed through the decoders and the receiver: no exception, and the targets' own checks of sane output
(events of the right kinds, accepted frames byte-exact, same events in every chunking, every byte consumed).

The fuzzer itself: ``python -m tests.fuzz.fuzz_codecs --target stream --minutes 5`` (``make fuzz``).
"""
from __future__ import annotations

import pathlib

import pytest

from conftest import load_vectors
from fuzz.targets import TARGETS, decode_stream, pieces

DATA = pathlib.Path(__file__).parent / "data"
CORPUS = DATA / "fuzz-corpus"
CRASHES = DATA / "fuzz-crashes"
#: the corpus the harness keeps per target (``--minimize`` brings it back under this)
MAX_FILES, MAX_BYTES = 250, 250_000


def files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) \
        if folder.is_dir() else []


def replay(target: str, paths) -> list[str]:
    failures = []
    for path in paths:
        try:
            TARGETS[target](path.read_bytes())
        except Exception as exc:  # noqa: BLE001  (every failure is listed, not just the first)
            failures.append(f"{path.relative_to(DATA)}: {type(exc).__name__}: {exc}"[:400])
    return failures


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays_cleanly(target):
    kept = files(CORPUS / target)
    assert kept, f"no corpus for {target}: run python -m tests.fuzz.fuzz_codecs --target {target} --minutes 1"
    assert replay(target, kept) == []


def test_crash_inputs_replay_cleanly_through_every_target():
    """A crash file is named ``<target>-crash-<sha1>``; it is replayed through all three targets anyway."""
    crashes = files(CRASHES)
    assert crashes, "the crash found before issue 12's fix is kept as a regression input"
    for path in crashes:
        assert path.name.split("-")[0] in TARGETS, path.name
    assert [f for target in sorted(TARGETS) for f in replay(target, crashes)] == []


def test_stream_inputs_give_the_same_events_in_every_chunking():
    """The stream target already compares whole and one chunking; here every corpus input gets several."""
    for path in files(CORPUS / "stream") + files(CORPUS / "receiver"):
        body = path.read_bytes()[1:]
        whole = decode_stream(body, [body])
        for selector in (1, 2, 5, 6):  # byte by byte, 1-2, 1-7 and 1-200 byte pieces
            assert decode_stream(body, pieces(body, selector)) == whole, (path.name, selector)


def test_corpus_is_seeded_with_the_icd_vectors_and_stays_small():
    datagrams = {p.read_bytes() for p in files(CORPUS / "datagram")}
    vectors = [bytes.fromhex(v["hex"]) for v in load_vectors()["vectors"]]
    assert [v.hex() for v in vectors if v not in datagrams] == []
    for target in TARGETS:
        kept = files(CORPUS / target)
        size = sum(p.stat().st_size for p in kept)
        assert len(kept) <= MAX_FILES and size <= MAX_BYTES, \
            f"{target}: {len(kept)} files, {size} bytes: python -m tests.fuzz.fuzz_codecs --target {target} --minimize"
