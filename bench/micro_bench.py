"""Runs the pytest-benchmark microbenchmarks (bench/test_micro.py) and folds their medians into rows.

Decoder figures are per frame (the benchmark decodes 1,000 frames per call).
"""
from __future__ import annotations

import json
import subprocess
import tempfile

from bench.common import PY, ROOT, row

NAMES = {
    "test_decoder_1000_frames[recv]": ("Micro: stream decoder from a link's receive buffer, per frame", 1000),
    "test_decoder_1000_frames[feed]": ("Micro: stream decoder with feed(), per frame", 1000),
    "test_recv_buffer_write_peek_consume": ("Micro: receive buffer write + peek + consume (60 bytes)", 1),
}


def run(smoke: bool = False) -> list[dict]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        args = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "bench" / "test_micro.py"),
                "--benchmark-enable", f"--benchmark-json={out.name}"]
        if smoke:
            args += ["--benchmark-min-rounds=1", "--benchmark-max-time=0.001", "--benchmark-warmup=off"]
        else:
            args += ["--benchmark-max-time=1.0"]
        subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
        data = json.load(open(out.name))
    rows = []
    for b in data["benchmarks"]:
        name, per = NAMES.get(b["name"], (f"Micro: {b['name']}", 1))
        rows.append(row(name, round(b["stats"]["median"] / per * 1e6, 3), "µs",
                        note=f"median of {b['stats']['rounds']} rounds"))
    return rows


if __name__ == "__main__":
    print(json.dumps(run(smoke=True), indent=1))
