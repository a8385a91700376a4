"""The ``coupling:`` section of the line config (docs/configuration.md).

``parse_coupling(raw)`` validates the section and returns the settings and a
list of problems in the config module's style (``coupling.key: expected ...,
got ...``); the caller decides whether problems are fatal (``gateway.app.config``
raises ConfigError listing them with every other problem). A missing section
means every default. Pure function; any thread.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SECTION = "coupling"


@dataclass(frozen=True, slots=True)
class CouplingSettings:
    workers: int = 1                    # coupling worker threads (trains hashed to workers by id)
    confirm_evaluations: int = 3        # consecutive coupled evaluations that confirm a consist coupled
    raise_after: int = 3                # consecutive abnormal evaluations that raise a coupling alarm
    clear_after: int = 3                # consecutive normal evaluations that clear it
    transition_timeout_s: float = 30.0  # coupling/decoupling longer than this raises COUPLING_TIMEOUT
    pair_window_ms: int = 200           # reports pair when their sender time_ms falls in the same window


#: key -> (lowest, highest, integers only)
_LIMITS = {
    "workers": (1, 64, True),
    "confirm_evaluations": (1, 1000, True),
    "raise_after": (1, 1000, True),
    "clear_after": (1, 1000, True),
    "transition_timeout_s": (0.1, 86_400, False),
    "pair_window_ms": (10, 10_000, True),
}


def _unknown_key(path: str, key: Any, known: tuple[str, ...]) -> str:
    return f"{path}.{key}: expected one of {', '.join(known)}, got an unknown key"


def parse_coupling(raw: Any, unknown: Callable[[str, Any, tuple[str, ...]], str] = _unknown_key,
                   ) -> tuple[CouplingSettings, list[str]]:
    """Validate a ``coupling:`` mapping (None or {} for defaults); return (settings, problems).

    ``unknown(path, key, known)`` words the problem of a key not in the table (the config module
    passes its own, which names the closest known key).
    """
    defaults = CouplingSettings()
    if raw is None:
        return defaults, []
    if not isinstance(raw, dict):
        return defaults, [f"{SECTION}: expected a mapping, got {raw!r}"]
    problems = [unknown(SECTION, key, tuple(_LIMITS)) for key in raw if key not in _LIMITS]
    values: dict[str, Any] = {}
    for key, (lo, hi, whole) in _LIMITS.items():
        if key not in raw:
            continue
        value = raw[key]
        number = type(value) is int or (not whole and type(value) is float)
        if not number or not lo <= value <= hi:
            kind = "an integer" if whole else "a number of seconds"
            problems.append(f"{SECTION}.{key}: expected {kind} {lo}..{hi}, got {value!r}")
        else:
            values[key] = float(value) if not whole else value
    return CouplingSettings(**values), problems
