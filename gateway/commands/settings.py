"""The ``control:`` section of the line config: select before operate, zone locks, audit topics.

``parse_control(raw)`` validates the section and returns the settings and a list
of problems in the config module's style (``control.key: expected ..., got ...``),
like ``gateway/coupling/settings.py``; the caller decides whether problems are
fatal. A missing section means every default::

    control:
      select_timeout_s: 30          # a selection not operated within this expires (lock released)
      feedback_timeout_s:           # per kind, from the operate: the result and the status must both come
        switch: 10
        route: 20
        section: 5
      lock_ttl_ms: 10000            # zone lock TTL; extended every half TTL while the command is open
      workstation: <gateway.name>   # the lock holder named to others when a request names no workstation
      locks:
        kind: in_process            # in_process (one gateway process) | redis
        urls: [redis://127.0.0.1:6379/0]   # redis: one URL, or N masters (Redlock)
        prefix: railgate            # key prefix of the locks and fencing counters
      topic_prefix: railgate        # audit topics <topic_prefix>.commands.<YYYYMMDD> (line's local date)

``topic_prefix`` is the prefix *before* ``.commands``: the issue names the topics
``<prefix>.commands.<YYYYMMDD>``, so the default gives ``railgate.commands.20261129``
beside the alarms' ``railgate.alarms.20261129`` (their prefix, ``alarms.topic_prefix``,
already ends in ``.alarms`` and is not reused here).

:func:`zone_locks` builds the configured lock back end. It is the only function
here that does IO (a Redis client) and the only one importing ``gateway.adapters``;
the Redlock factory (``gateway/adapters/redlock.py``) is imported when called.

Threading: pure functions and immutable results, except :func:`zone_locks` (call it
once, from the thread that builds the gateway).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.commands.model import KINDS, check_name

SECTION = "control"
LOCK_KINDS = ("in_process", "redis")
_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,100}")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,100}")
_URL = re.compile(r"(redis|rediss|unix)://\S+")
_KEYS = ("select_timeout_s", "feedback_timeout_s", "lock_ttl_ms", "workstation", "locks", "topic_prefix")
_LOCK_KEYS = ("kind", "urls", "prefix")


@dataclass(frozen=True, slots=True)
class LockSettings:
    kind: str = "in_process"
    urls: tuple[str, ...] = ()
    prefix: str = "railgate"


@dataclass(frozen=True, slots=True)
class ControlSettings:
    select_timeout_s: float = 30.0
    #: kind -> seconds from the operate until the result and the feedback must have come
    feedback_timeout_s: dict[str, float] = field(default_factory=lambda: {"switch": 10.0, "route": 20.0,
                                                                          "section": 5.0})
    lock_ttl_ms: int = 10_000
    workstation: str = "railgate"
    locks: LockSettings = LockSettings()
    topic_prefix: str = "railgate"

    @property
    def audit_topic_prefix(self) -> str:
        """``<topic_prefix>.commands``: the day topics are ``<this>.<YYYYMMDD>``."""
        return f"{self.topic_prefix}.commands"


def _unknown_key(path: str, key: Any, known: tuple[str, ...]) -> str:
    return f"{path}.{key}: expected one of {', '.join(known)}, got an unknown key"


def _number(value: Any, lo: float, hi: float, whole: bool) -> bool:
    ok = type(value) is int or (not whole and type(value) is float)
    return ok and lo <= value <= hi


def parse_control(raw: Any, unknown: Callable[[str, Any, tuple[str, ...]], str] = _unknown_key, *,
                  gateway_name: str = "railgate") -> tuple[ControlSettings, list[str]]:
    """Validate a ``control:`` mapping (None or {} for defaults); return (settings, problems).

    ``unknown(path, key, known)`` words the problem of an unknown key (the config module passes
    its own); ``gateway_name`` is the default ``workstation``.
    """
    defaults = ControlSettings(workstation=gateway_name)
    if raw is None:
        return defaults, []
    if not isinstance(raw, dict):
        return defaults, [f"{SECTION}: expected a mapping, got {raw!r}"]
    problems = [unknown(SECTION, key, _KEYS) for key in raw if key not in _KEYS]
    values: dict[str, Any] = {}
    if "select_timeout_s" in raw:
        v = raw["select_timeout_s"]
        if _number(v, 1, 3600, False):
            values["select_timeout_s"] = float(v)
        else:
            problems.append(f"{SECTION}.select_timeout_s: expected a number of seconds 1..3600, got {v!r}")
    if "feedback_timeout_s" in raw:
        fb = raw["feedback_timeout_s"]
        if not isinstance(fb, dict):
            problems.append(f"{SECTION}.feedback_timeout_s: expected a mapping of {', '.join(KINDS)} to seconds, "
                            f"got {fb!r}")
        else:
            timeouts = dict(defaults.feedback_timeout_s)
            problems += [unknown(f"{SECTION}.feedback_timeout_s", k, KINDS) for k in fb if k not in KINDS]
            for kind in KINDS:
                if kind not in fb:
                    continue
                if _number(fb[kind], 0.1, 3600, False):
                    timeouts[kind] = float(fb[kind])
                else:
                    problems.append(f"{SECTION}.feedback_timeout_s.{kind}: expected a number of seconds 0.1..3600, "
                                    f"got {fb[kind]!r}")
            values["feedback_timeout_s"] = timeouts
    if "lock_ttl_ms" in raw:
        v = raw["lock_ttl_ms"]
        if _number(v, 500, 600_000, True):
            values["lock_ttl_ms"] = v
        else:
            problems.append(f"{SECTION}.lock_ttl_ms: expected an integer 500..600000, got {v!r}")
    if "workstation" in raw:
        problem = check_name(raw["workstation"], f"{SECTION}.workstation")
        if problem:
            problems.append(problem)
        else:
            values["workstation"] = raw["workstation"]
    if "topic_prefix" in raw:
        v = raw["topic_prefix"]
        if isinstance(v, str) and _PREFIX.fullmatch(v) and not v.endswith("."):
            values["topic_prefix"] = v
        else:
            problems.append(f"{SECTION}.topic_prefix: expected 1..100 of A-Z a-z 0-9 . _ - (topics "
                            f"<prefix>.commands.<YYYYMMDD>), got {v!r}")
    if "locks" in raw:
        locks, more = _parse_locks(raw["locks"], unknown)
        problems += more
        values["locks"] = locks
    return ControlSettings(**{"workstation": gateway_name, **values}), problems


def _parse_locks(raw: Any, unknown) -> tuple[LockSettings, list[str]]:
    path = f"{SECTION}.locks"
    if not isinstance(raw, dict):
        return LockSettings(), [f"{path}: expected a mapping with kind, urls, prefix, got {raw!r}"]
    problems = [unknown(path, k, _LOCK_KEYS) for k in raw if k not in _LOCK_KEYS]
    kind = raw.get("kind", "in_process")
    if kind not in LOCK_KINDS:
        problems.append(f"{path}.kind: expected one of {', '.join(LOCK_KINDS)}, got {kind!r}")
        kind = "in_process"
    urls = raw.get("urls", [])
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not all(isinstance(u, str) and _URL.fullmatch(u) for u in urls):
        problems.append(f"{path}.urls: expected a list of redis://host:port/db URLs, got {urls!r}")
        urls = []
    if kind == "redis" and not urls and not any(p.startswith(f"{path}.urls") for p in problems):
        problems.append(f"{path}.urls: expected at least one redis:// URL for kind redis, got none")
    if kind == "in_process" and urls:
        problems.append(f"{path}.urls: only for kind redis (kind is in_process), got {urls!r}")
    if len(set(urls)) != len(urls):
        problems.append(f"{path}.urls: expected each Redis master once, got {urls!r}")
    prefix = raw.get("prefix", "railgate")
    if not isinstance(prefix, str) or not _KEY_PREFIX.fullmatch(prefix):
        problems.append(f"{path}.prefix: expected 1..100 of A-Z a-z 0-9 . _ -, got {prefix!r}")
        prefix = "railgate"
    return LockSettings(kind, tuple(urls), prefix), problems


def zone_locks(settings: ControlSettings | LockSettings):
    """The configured :class:`~gateway.adapters.zone_locks.ZoneLocks`: in process, or on Redis.

    ``redis`` goes through ``gateway.adapters.redlock.zone_locks_from_urls(urls, prefix)`` (Redlock
    over N masters; one URL is one master). While that module does not exist, one URL falls back to
    :class:`~gateway.adapters.zone_locks.RedisZoneLocks` and several are refused with a ValueError
    (a quorum cannot be had from one of them). Builder thread, once.
    """
    locks = settings.locks if isinstance(settings, ControlSettings) else settings
    from gateway.adapters import zone_locks as zl
    if locks.kind == "in_process":
        return zl.InProcessZoneLocks()
    try:
        from gateway.adapters.redlock import zone_locks_from_urls
    except ModuleNotFoundError as exc:
        if exc.name != "gateway.adapters.redlock":
            raise
        if len(locks.urls) != 1:
            raise ValueError(f"{SECTION}.locks.urls: {len(locks.urls)} Redis masters need the Redlock back end "
                             "(gateway/adapters/redlock.py), which this build lacks; give one URL") from None
        import redis
        return zl.RedisZoneLocks(redis.Redis.from_url(locks.urls[0], socket_timeout=2.0,
                                                      socket_connect_timeout=2.0), locks.prefix)
    return zone_locks_from_urls(list(locks.urls), locks.prefix)
