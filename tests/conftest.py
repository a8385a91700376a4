"""Shared fixtures: ICD reference vectors and byte-chunking helpers."""
from __future__ import annotations

import json
import pathlib
import random

import pytest

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
