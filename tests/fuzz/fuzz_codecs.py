"""Coverage-guided fuzzing of the codecs with atheris (libFuzzer for CPython).

::

    python -m tests.fuzz.fuzz_codecs --target stream --minutes 5      # or: make fuzz TARGET=stream MINUTES=5
    python -m tests.fuzz.fuzz_codecs --target datagram --minimize     # shrink the kept corpus (libFuzzer -merge)

Targets (``targets.py``): ``stream`` (a TCP stream, byte 0 picks the chunking),
``datagram`` (one UDP datagram) and ``receiver`` (decoded frames through the
Receiver checks with a small sender config). Any exception is a crash; the
input is written to ``tests/data/fuzz-crashes/<target>-crash-<sha1>`` and
``tests/test_fuzz_regressions.py`` replays it from then on.

The corpus lives in ``tests/data/fuzz-corpus/<target>/`` and is seeded with the
ICD reference vectors and a valid frame of every type. The custom mutator runs
libFuzzer's own mutations (``atheris.Mutate``), then recomputes the CRC-32 of
every frame candidate (and, every other time, its MAC with the fuzz key), so
mutations reach the header checks and the payload parsers instead of dying as
``bad_crc``; one mutation in four is left unfixed so the CRC paths are still fuzzed.
After a run a corpus over ~200 files / 200 KB is minimised (``--minimize``).

Needs ``pip install -e ".[fuzz]"``. Not a pytest module (no ``test_`` prefix).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CORPUS = DATA / "fuzz-corpus"
CRASHES = DATA / "fuzz-crashes"
VECTORS = DATA / "icd-vectors.json"
#: inputs longer than this are not generated: one maximum frame (4,140 bytes) and change
MAX_LEN = {"stream": 4400, "receiver": 4400, "datagram": 4200}
#: what --minimize keeps at most per target
CAP_FILES, CAP_BYTES = 200, 200_000


def vector_frames(paths) -> list[bytes]:
    """The frames of every vector in these ICD reference vector files."""
    out: list[bytes] = []
    for path in paths:
        for vec in json.loads(pathlib.Path(path).read_text())["vectors"]:
            frame = bytes.fromhex(vec["hex"])
            if frame not in out:
                out.append(frame)
    return out


def seed_corpus(target: str, corpus: pathlib.Path, vectors) -> set[str]:
    """Write the seed inputs into ``corpus`` (named by SHA-1, as libFuzzer names its files); returns their names."""
    from tests.fuzz.targets import seed_inputs
    corpus.mkdir(parents=True, exist_ok=True)
    names = set()
    for data in seed_inputs(target, vector_frames(vectors)):
        name = hashlib.sha1(data).hexdigest()
        names.add(name)
        if not (corpus / name).exists():
            (corpus / name).write_bytes(data)
    return names


def corpus_size(corpus: pathlib.Path) -> tuple[int, int]:
    files = [p for p in corpus.iterdir() if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def run_libfuzzer(target: str, libfuzzer_args: list[str]) -> int:
    """Run this module's fuzzer in a child process with these libFuzzer arguments.

    The child is started through a small launcher script, which libFuzzer also
    gets as its argv[0]: for ``-merge`` it re-runs argv[0] in grandchildren,
    and a ``python -m`` module cannot be re-run from its file path.
    """
    with tempfile.TemporaryDirectory() as tmp:
        launcher = pathlib.Path(tmp) / f"fuzz-{target}"
        launcher.write_text(f"#!/bin/sh\ncd {shlex.quote(str(ROOT))}\nexec {shlex.quote(sys.executable)} -m "
                            f"tests.fuzz.fuzz_codecs --target {target} --raw --argv0 \"$0\" \"$@\"\n")
        launcher.chmod(0o755)
        return subprocess.run([str(launcher), *libfuzzer_args]).returncode


def minimize(target: str, vectors) -> None:
    """libFuzzer -merge=1 of the corpus into a fresh folder: only inputs that add coverage are kept,
    at most CAP_FILES files and CAP_BYTES bytes with the seeds, which are always kept (the ICD vectors)."""
    corpus = CORPUS / target
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp) / "corpus"
        fresh.mkdir()
        rc = run_libfuzzer(target, ["-merge=1", f"-max_len={MAX_LEN[target]}", str(fresh), str(corpus)])
        if rc != 0 or not any(fresh.iterdir()):
            raise SystemExit(f"{target}: the merge failed (exit {rc}); corpus left as it was")
        shutil.rmtree(corpus)
        shutil.copytree(fresh, corpus)
    seeds = seed_corpus(target, corpus, vectors)
    extra = sorted((p for p in corpus.iterdir() if p.name not in seeds), key=lambda p: p.stat().st_size)
    budget = CAP_BYTES - sum((corpus / name).stat().st_size for name in seeds)
    for i, path in enumerate(extra):  # over the cap: the smallest inputs stay
        budget -= path.stat().st_size
        if i >= CAP_FILES - len(seeds) or budget < 0:
            path.unlink()
    files, size = corpus_size(corpus)
    print(f"{target}: corpus minimised to {files} files, {size} bytes ({len(seeds)} seeds)", file=sys.stderr)


def instrumented_codecs():
    """Import atheris, then the codecs with atheris' coverage instrumentation (before anything
    else imports them: a module imported uninstrumented gives the fuzzer no guidance)."""
    if "railcodecs" in sys.modules:
        raise RuntimeError("railcodecs was imported before atheris could instrument it")
    import atheris

    with atheris.instrument_imports(include=["railcodecs"]):
        import railcodecs  # noqa: F401
    return atheris


def fuzz(target: str, libfuzzer_args: list[str], argv0: str) -> None:
    """The child: run atheris in this process (libFuzzer exits it when done, non-zero on a crash)."""
    atheris = instrumented_codecs()
    from tests.fuzz import targets

    run = targets.TARGETS[target]
    head = 0 if target == "datagram" else 1  # the stream and receiver targets start with a selector byte

    def one_input(data: bytes) -> None:
        run(data)

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        data = atheris.Mutate(data, max_size)
        if seed % 4 == 0:
            return data  # unfixed: a bad CRC must be found too
        buf = bytearray(data)
        fixed = targets.fix_frames(buf[head:], key=targets.KEY if seed & 1 else None)
        return bytes(buf[:head] + fixed)[:max_size]

    atheris.Setup([argv0, *libfuzzer_args], one_input, custom_mutator=mutate)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.fuzz_codecs", description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=("stream", "datagram", "receiver"), required=True)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (default 5)")
    parser.add_argument("--minimize", action="store_true", help="only shrink the corpus with libFuzzer -merge")
    parser.add_argument("--vectors", action="append", type=pathlib.Path, default=[VECTORS], metavar="JSON",
                        help="ICD vector file to seed from (repeatable; tests/data/icd-vectors.json always)")
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # the child: libFuzzer's argv
    parser.add_argument("--argv0", default=sys.argv[0], help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    if args.raw:
        fuzz(args.target, extra, args.argv0)
        return 0
    if args.minimize:
        minimize(args.target, args.vectors)
        return 0
    corpus = CORPUS / args.target
    CRASHES.mkdir(parents=True, exist_ok=True)
    seed_corpus(args.target, corpus, args.vectors)
    before = set(CRASHES.iterdir())
    rc = run_libfuzzer(args.target, [
        f"-max_total_time={max(1, round(args.minutes * 60))}", f"-max_len={MAX_LEN[args.target]}",
        "-len_control=100", "-timeout=10", "-print_final_stats=1", f"-artifact_prefix={CRASHES}/{args.target}-",
        *extra, str(corpus)])
    files, size = corpus_size(corpus)
    if files > CAP_FILES or size > CAP_BYTES:
        minimize(args.target, args.vectors)
    for path in sorted(set(CRASHES.iterdir()) - before):
        print(f"{args.target}: CRASH input kept as {path.relative_to(ROOT)} (replayed by "
              f"tests/test_fuzz_regressions.py)", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
