"""Shared fixtures: ICD reference vectors, byte-chunking helpers, and one run per implementation.

The codec, receiver and link test modules named in ``PER_IMPLEMENTATION`` run once with the
compiled core and once with the pure-Python reference (``railcodecs.speedups``): their test ids
end in ``[compiled]`` / ``[pure]``. Every other test runs with the implementation the process
would use (compiled when built, pure with ``RAILGATE_PURE=1``).
"""
from __future__ import annotations

import json
import pathlib
import random

import pytest

from railcodecs import speedups

PER_IMPLEMENTATION = frozenset((
    "test_link_protocol", "test_link_faults", "test_link_state_and_events", "test_pre_session", "test_receiver",
    "test_stream_decoder", "test_icd_vectors", "test_codec_never_raises", "test_codec_properties",
    "test_fuzz_mutation", "test_fuzz_regressions", "test_gateway_links", "test_gateway_sessions",
    "test_gateway_hostile", "test_gateway_udp", "test_udp_batch", "test_event_loop", "test_link_counters_after_close",
    "test_hot_fields",
    "test_link_placement"))
DEFAULT_IMPLEMENTATION = speedups.implementation()
IMPLEMENTATIONS = ("compiled", "pure") if speedups.available() else ("pure",)


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rpartition(".")[2] in PER_IMPLEMENTATION:
        metafunc.parametrize("implementation", IMPLEMENTATIONS, indirect=True)


@pytest.fixture(autouse=True)
def implementation(request):
    """The implementation objects built in this test use (see the module doc)."""
    name = getattr(request, "param", DEFAULT_IMPLEMENTATION)
    speedups.use(name)
    yield name
    speedups.use(DEFAULT_IMPLEMENTATION)

DATA = pathlib.Path(__file__).parent / "data"


def load_vectors() -> dict:
    return json.loads((DATA / "icd-vectors.json").read_text())


@pytest.fixture(scope="session")
def icd() -> dict:
    return load_vectors()


def chunkings(data: bytes, seed: int = 0, randoms: int = 5):
    """Yield (label, chunks): whole, byte by byte, and random pieces (h11's `tr` idea)."""
    yield "whole", [data]
    yield "bytewise", [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    for r in range(randoms):
        chunks, i = [], 0
        while i < len(data):
            n = rng.randint(1, 40)
            chunks.append(data[i:i + n])
            i += n
        yield f"random{r}", chunks
