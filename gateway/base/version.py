"""The running railgate's version, for `gateway --version`, ``/status`` and ``railgate_build_info``.

The version is the installed distribution's (``importlib.metadata``), so a
wheel, an editable install and the Docker image all report what pip installed.
Run from a source tree that was never installed, it falls back to the
``[project] version`` of the ``pyproject.toml`` beside the packages; failing
both it says ``unknown`` rather than raising: a version string must never be
why a gateway or a CLI fails to start.

Threading: pure functions, cached after the first call; any thread.
"""
from __future__ import annotations

import functools
import pathlib
import platform
import tomllib
from importlib import metadata

DISTRIBUTION = "railgate"
UNKNOWN = "unknown"
#: the hot path's implementation label when the caller does not know it (the running gateway's status
#: says ``compiled`` or ``pure``: railcodecs.speedups, which this layer does not import)
IMPLEMENTATION = "unknown"
_PYPROJECT = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"


@functools.cache
def version() -> str:
    """``X.Y.Z`` of the installed distribution, else of the source tree's pyproject.toml, else ``unknown``."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    try:
        with open(_PYPROJECT, "rb") as f:
            project = tomllib.load(f).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return UNKNOWN
    found = project.get("version") if project.get("name") == DISTRIBUTION else None
    return found if isinstance(found, str) and found else UNKNOWN


def version_line() -> str:
    """What ``--version`` prints: ``railgate X.Y.Z``."""
    return f"{DISTRIBUTION} {version()}"


def build_info(implementation: str | None = None) -> dict[str, str]:
    """The labels of ``railgate_build_info``: our version, the interpreter's, and the hot path's implementation
    (``compiled`` or ``pure``, as the running gateway reports it)."""
    return {"version": version(), "python": platform.python_version(),
            "implementation": implementation or IMPLEMENTATION}
