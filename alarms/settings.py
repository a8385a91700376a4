"""Settings of the alarm pipeline: the ``alarms:``, ``kafka:``, ``history:``, ``redis:`` sections.

``parse_pipeline(raw)`` takes the whole YAML document (a dict) and returns the
frozen settings with defaults filled in, plus every problem found, each as
``key.path: expected ..., got ...`` (the style of ``gateway/app/config.py``, whose
``parse`` calls this and raises its ConfigError when the list is not empty).
Unknown keys are problems too: a misspelt ``max_actve`` must not silently
fall back to the default. Each mapping's known keys are declared where it is
read; the caller may pass ``unknown`` to word those problems (the config module
passes its own, which names the closest known key).

Threading: pure function, immutable results.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alarms.sources import ThreatLimits, key_part

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,200}")
_HOSTPORT = re.compile(r"[A-Za-z0-9._-]+:\d{1,5}")
_MISSING = object()
#: the top-level sections this module reads
SECTIONS = ("alarms", "kafka", "history", "redis")
#: (mapping's key path, the unknown key, the known keys) -> the problem's text
UnknownKey = Callable[[str, Any, tuple[str, ...]], str]


def _unknown_key(path: str, key: Any, known: tuple[str, ...]) -> str:
    return f"{path}.{key}: unknown key (expected one of {', '.join(known)})"


@dataclass(frozen=True, slots=True)
class Chatter:
    cycles: int = 3
    window_s: float = 60
    #: an auto-shelved (chattering) alarm is unshelved after this long without a raise or clear
    quiet_s: float = 60


@dataclass(frozen=True, slots=True)
class Flood:
    alarms: int = 10
    window_s: float = 600


@dataclass(frozen=True, slots=True)
class AlarmSettings:
    topic_prefix: str = "railgate.alarms"
    partitions: int = 3
    replication_factor: int = 1
    snapshot_interval_s: float = 10
    max_active: int = 10_000
    chatter: Chatter = Chatter()
    flood: Flood = Flood()
    switch_lost_s: float = 5
    threat_rates: ThreatLimits = ThreatLimits()
    #: operator areas (EEMUA 191): area name -> device names; a device in none is in area ``line``
    areas: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: the journal keeps events this long (rows still needed are kept longer)
    journal_retention_days: float = 7

    def engine_options(self) -> dict:
        """Keyword arguments of AlarmEngine / AlarmService(engine_options=...)."""
        return {"max_active": self.max_active, "chatter_cycles": self.chatter.cycles,
                "chatter_window_s": self.chatter.window_s, "chatter_quiet_s": self.chatter.quiet_s,
                "flood_alarms": self.flood.alarms, "flood_window_s": self.flood.window_s,
                "areas": {key_part(dev): area for area, devs in self.areas.items() for dev in devs}}


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """``embedded`` (in-process broker) or an external cluster with librdkafka ``config``."""

    embedded: bool = True
    bootstrap_servers: tuple[str, ...] = ()
    config: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MysqlSettings:
    host: str
    port: int
    user: str
    password: str
    database: str
    pool_size: int


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """``sqlite`` (embedded, in the state dir) or ``mysql``."""

    kind: str = "sqlite"
    mysql: MysqlSettings | None = None
    #: history rows older than this are deleted
    retention_days: float = 90


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str
    prefix: str = "railgate"


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    alarms: AlarmSettings = AlarmSettings()
    kafka: KafkaSettings = KafkaSettings()
    history: HistorySettings = HistorySettings()
    redis: RedisSettings | None = None


class _Reader:
    """Collects problems while reading one mapping after another."""

    def __init__(self, unknown: UnknownKey = _unknown_key) -> None:
        self.problems: list[str] = []
        self.unknown = unknown

    def bad(self, path: str, expected: str, value: Any) -> None:
        self.problems.append(f"{path}: expected {expected}, got {value!r}")

    def mapping(self, obj: Any, path: str, known: tuple[str, ...]) -> dict:
        if obj is None:
            return {}
        if not isinstance(obj, dict):
            self.bad(path, "a mapping", obj)
            return {}
        self.problems += [self.unknown(path, k, known) for k in obj if k not in known]
        return obj

    def int(self, obj: dict, key: str, path: str, default: int, lo: int = 1, hi: int = 1 << 31) -> int:
        value = obj.get(key, default)
        if type(value) is not int or not lo <= value <= hi:
            self.bad(f"{path}.{key}", f"an integer {lo}..{hi}", value)
            return default
        return value

    def seconds(self, obj: dict, key: str, path: str, default: float) -> float:
        value = obj.get(key, default)
        if type(value) not in (int, float) or not 0 < value <= 86_400 * 365:
            self.bad(f"{path}.{key}", "a number of seconds > 0", value)
            return default
        return value

    def days(self, obj: dict, key: str, path: str, default: float) -> float:
        value = obj.get(key, default)
        if type(value) not in (int, float) or not 0 < value <= 36_500:
            self.bad(f"{path}.{key}", "a number of days > 0 (at most 36500)", value)
            return default
        return value

    def text(self, obj: dict, key: str, path: str, default: Any = _MISSING, pattern: re.Pattern | None = None,
             what: str = "a non-empty string") -> str:
        value = obj.get(key, default)
        if value is _MISSING:
            self.problems.append(f"{path}.{key}: missing (expected {what})")
            return ""
        if not isinstance(value, str) or not value or (pattern and not pattern.fullmatch(value)):
            self.bad(f"{path}.{key}", what, value)
            return default if isinstance(default, str) else ""
        return value


def _alarms(r: _Reader, raw: Any) -> AlarmSettings:
    d = AlarmSettings()
    sec = r.mapping(raw, "alarms", tuple(AlarmSettings.__dataclass_fields__))
    ch = r.mapping(sec.get("chatter"), "alarms.chatter", ("cycles", "window_s", "quiet_s"))
    fl = r.mapping(sec.get("flood"), "alarms.flood", ("alarms", "window_s"))
    tr = r.mapping(sec.get("threat_rates"), "alarms.threat_rates", tuple(ThreatLimits.__dataclass_fields__))
    limits = ThreatLimits(r.seconds(tr, "window_s", "alarms.threat_rates", d.threat_rates.window_s),
                          *(r.int(tr, name, "alarms.threat_rates", getattr(d.threat_rates, name), 1, 1_000_000)
                            for name in ("corruption", "frame_loss", "delayed_data", "repetition", "masquerade")))
    return AlarmSettings(
        topic_prefix=r.text(sec, "topic_prefix", "alarms", d.topic_prefix, _TOPIC,
                            "a Kafka topic prefix of letters, digits, '.', '_', '-'"),
        partitions=r.int(sec, "partitions", "alarms", d.partitions, 1, 1000),
        replication_factor=r.int(sec, "replication_factor", "alarms", d.replication_factor, 1, 32),
        snapshot_interval_s=r.seconds(sec, "snapshot_interval_s", "alarms", d.snapshot_interval_s),
        max_active=r.int(sec, "max_active", "alarms", d.max_active, 1, 10_000_000),
        chatter=Chatter(r.int(ch, "cycles", "alarms.chatter", d.chatter.cycles, 1, 1000),
                        r.seconds(ch, "window_s", "alarms.chatter", d.chatter.window_s),
                        r.seconds(ch, "quiet_s", "alarms.chatter", d.chatter.quiet_s)),
        flood=Flood(r.int(fl, "alarms", "alarms.flood", d.flood.alarms, 1, 1_000_000),
                    r.seconds(fl, "window_s", "alarms.flood", d.flood.window_s)),
        switch_lost_s=r.seconds(sec, "switch_lost_s", "alarms", d.switch_lost_s),
        threat_rates=limits, areas=_areas(r, sec.get("areas")),
        journal_retention_days=r.days(sec, "journal_retention_days", "alarms", d.journal_retention_days))


_AREA = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _areas(r: _Reader, raw: Any) -> dict[str, tuple[str, ...]]:
    """``{area: [device, ...]}``; a device in two areas is a problem (its alarms count in one area).
    Device names are checked against the line's devices by the gateway's config (it knows them)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.bad("alarms.areas", "a mapping of area name -> list of device names", raw)
        return {}
    out: dict[str, tuple[str, ...]] = {}
    seen: dict[str, str] = {}
    for area, devs in raw.items():
        path = f"alarms.areas.{area}"
        if not isinstance(area, str) or not _AREA.fullmatch(area):
            r.bad("alarms.areas", "area names of 1..64 letters, digits, '.', '_', '-'", area)
            continue
        if not isinstance(devs, list) or not devs or not all(isinstance(d, str) and d for d in devs):
            r.bad(path, "a non-empty list of device names", devs)
            continue
        for d in devs:
            if d in seen:
                r.problems.append(f"{path}: device {d!r} is already in area {seen[d]!r} (a device is in one area)")
            seen[d] = area
        out[area] = tuple(devs)
    return out


def _kafka(r: _Reader, raw: Any) -> KafkaSettings:
    if raw is None or raw == "embedded":
        return KafkaSettings()
    if not isinstance(raw, dict):
        r.bad("kafka", "'embedded' or a mapping with bootstrap_servers", raw)
        return KafkaSettings()
    sec = r.mapping(raw, "kafka", ("bootstrap_servers", "config"))
    servers = r.text(sec, "bootstrap_servers", "kafka", what="a comma-separated list of host:port")
    hosts = tuple(s.strip() for s in servers.split(",")) if servers else ()
    if servers and not all(_HOSTPORT.fullmatch(h) and 0 < int(h.rsplit(":", 1)[1]) < 65536 for h in hosts):
        r.bad("kafka.bootstrap_servers", "a comma-separated list of host:port (port 1..65535)", servers)
    config = sec.get("config", {})
    if not isinstance(config, dict):
        r.bad("kafka.config", "a mapping of librdkafka settings", config)
        config = {}
    for k, v in config.items():
        if not isinstance(k, str) or type(v) not in (str, int, float, bool):
            r.bad(f"kafka.config.{k}", "a string, number or boolean", v)
    return KafkaSettings(False, hosts, dict(config))


def _history(r: _Reader, raw: Any) -> HistorySettings:
    """``sqlite`` (the default), or a mapping: ``{mysql: {...}}`` and/or ``{retention_days: N}``."""
    if raw is None or raw == "sqlite":
        return HistorySettings()
    if not isinstance(raw, dict) or not raw:
        r.bad("history", "'sqlite' or a mapping {mysql: {...}, retention_days: N}", raw)
        return HistorySettings()
    r.mapping(raw, "history", ("mysql", "retention_days"))
    days = r.days(raw, "retention_days", "history", HistorySettings().retention_days)
    if "mysql" not in raw:  # sqlite with a retention (unknown keys are each a problem already)
        return HistorySettings(retention_days=days)
    if not isinstance(raw["mysql"], dict):
        r.bad("history.mysql", "a mapping {host, port, user, password, database, pool_size}", raw["mysql"])
        return HistorySettings(retention_days=days)
    p, sec = "history.mysql", r.mapping(raw["mysql"], "history.mysql",
                                       ("host", "port", "user", "password", "database", "pool_size"))
    password = sec.get("password", "")
    if not isinstance(password, str):
        r.bad(f"{p}.password", "a string", "<hidden>")    # never echo a secret into a log
        password = ""
    return HistorySettings("mysql", MysqlSettings(
        r.text(sec, "host", p), r.int(sec, "port", p, 3306, 1, 65535), r.text(sec, "user", p), password,
        r.text(sec, "database", p), r.int(sec, "pool_size", p, 4, 1, 256)), days)


def _redis(r: _Reader, raw: Any) -> RedisSettings | None:
    if raw is None:
        return None
    sec = r.mapping(raw, "redis", ("url", "prefix"))
    if not sec:
        return None
    url = r.text(sec, "url", "redis", pattern=re.compile(r"(rediss?|unix)://\S+"),
                 what="a redis://, rediss:// or unix:// URL")
    return RedisSettings(url, r.text(sec, "prefix", "redis", "railgate", re.compile(r"[A-Za-z0-9._:-]+"),
                                     "a key prefix of letters, digits, '.', '_', ':', '-'"))


def parse_pipeline(raw: dict, unknown: UnknownKey = _unknown_key) -> tuple[PipelineSettings, list[str]]:
    """Read the pipeline sections of the YAML document; ``(settings, problems)``, problems empty if valid.

    ``unknown(path, key, known)`` words the problem of a key no mapping here knows.
    """
    r = _Reader(unknown)
    if not isinstance(raw, dict):
        r.bad("(top level)", "a mapping", raw)
        return PipelineSettings(), r.problems
    out = PipelineSettings(_alarms(r, raw.get("alarms")), _kafka(r, raw.get("kafka")),
                           _history(r, raw.get("history")), _redis(r, raw.get("redis")))
    return out, r.problems
