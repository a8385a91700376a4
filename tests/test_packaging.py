"""The install builds the compiled fast path, and without a compiler falls back to the pure path.

These build real wheels of this checkout with pip (build isolation: Cython and setuptools come from
the package index, as in the Dockerfile's build stage and on a fresh machine), so they are slow.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPILED = ("railcodecs/_core", "gateway/net/_reactor", "gateway/net/_udp_batch")

pytestmark = pytest.mark.slow


def _wheel(tmp_path, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Build a wheel from what the Dockerfile's build stage copies (no build/, no built modules)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    junk = shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.pyc")
    for name in ("gateway", "codecs", "alarms", "simulators"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    out = tmp_path / "wheels"
    # -v: pip shows the build backend's output (the warning) only when asked
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir", "-w", str(out),
                          str(src)], env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    wheels = list(out.glob("railgate-*.whl"))
    return res, (zipfile.ZipFile(wheels[0]).namelist() if wheels else [])


def _compiled(names: list[str]) -> list[str]:
    return [m for m in COMPILED if any(n.startswith(m) and n.endswith(".so") for n in names)]


def test_the_wheel_carries_the_three_compiled_modules(tmp_path):
    res, names = _wheel(tmp_path, RAILGATE_REQUIRE_EXT="1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _compiled(names) == list(COMPILED), names
    assert "railcodecs/_core.pyx" in names and "railcodecs/include/icd_hash.h" in names  # the sources travel
    assert "railcodecs/_train_state.pxi" in names and "railcodecs/_train_batch.pxi" in names


def test_without_a_compiler_the_install_warns_and_ships_the_pure_path(tmp_path):
    res, names = _wheel(tmp_path, CC="false", RAILGATE_REQUIRE_EXT="0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "the pure-Python implementation will run" in res.stdout + res.stderr
    assert _compiled(names) == [] and "railcodecs/speedups.py" in names


def test_require_ext_turns_a_failed_compile_into_a_failed_install(tmp_path):
    res, names = _wheel(tmp_path, CC="false", RAILGATE_REQUIRE_EXT="1")
    assert res.returncode != 0 and names == []
