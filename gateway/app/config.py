"""Gateway configuration: YAML line files, validated at start, reloadable in part.

``load(path)`` reads a line file (see ``config/demo-line.yaml`` and the README's
configuration section) into frozen dataclasses. Every problem is reported at
once, each naming its key path and what was expected::

    config/x.yaml: 2 problems
      gateway.listen.net_a.port: expected an integer 1..65535, got 'abc'
      devices[1].kind: expected one of interlocking, zone_controller, platform_doors, got 'foo'

The file is strict: a key no section knows is a problem that names the closest
known key (``line.timezon: unknown key (did you mean 'timezone'?)``), a key
given twice in one mapping is a problem with its line number, and the parts are
checked against each other (ids and device names unique, a train in one
consist, no MAC key on a ``mac: off`` device). A retired key (``RETIRED``:
``gateway.udp_slabs``) is still accepted, so an old file loads, and named in a
WARNING. ``gateway check`` runs the same validation without starting anything.

Settings marked *live* (heartbeat, thresholds, log level) take effect on
SIGHUP; :func:`diff` says which changed settings need a restart.

Threading: :func:`current` / :func:`install` are the thread-safe singleton
accessor (a lock around one reference swap; readers get an immutable object).
"""
from __future__ import annotations

import difflib
import logging
import threading
from dataclasses import dataclass, field, fields
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from alarms.settings import SECTIONS as PIPELINE_SECTIONS
from alarms.settings import PipelineSettings, parse_pipeline
from alarms.sources import key_part

from gateway.coupling.settings import SECTION as COUPLING_SECTION
from gateway.coupling.settings import CouplingSettings, parse_coupling
from gateway.commands.routes import NoRoute, plan
from gateway.commands.settings import SECTION as CONTROL_SECTION
from gateway.commands.settings import ControlSettings, parse_control
from gateway.line.topology import SECTION as TRACK_SECTION
from gateway.line.topology import Topology, object_id, parse_track

_log = logging.getLogger("railgate.config")  # `log` is the gateway.log section in parse()

KINDS = {"interlocking": 1, "zone_controller": 2, "platform_doors": 3}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
LINK_PLACEMENTS = ("device", "round_robin")
TOP_LEVEL = "(top level)"
_ENDPOINT = ("host", "port")
#: Keys that once meant something and now mean nothing, by key path -> why: still accepted, so an old
#: line file loads, each named in a WARNING (its value is not read or checked).
RETIRED: dict[str, str] = {
    "gateway.udp_slabs": "the UDP endpoint receives into a fixed arena of 64 x 144 B",
}
#: The keys each mapping may hold, by key path ("devices[]": every device). The alarm pipeline's
#: sections and coupling's declare theirs in alarms/settings.py and gateway/coupling/settings.py.
#: Any other key is a problem: a misspelt key must never fall back to a default in silence
#: (``line.timezon`` would move the alarm topics to UTC).
KEYS: dict[str, tuple[str, ...]] = {
    TOP_LEVEL: ("gateway", "line", "devices", "trains", COUPLING_SECTION, *PIPELINE_SECTIONS, TRACK_SECTION,
                CONTROL_SECTION),
    "gateway": ("id", "name", "listen", "admin", "io_threads", "heartbeat_ms", "dead_after_heartbeats",
                "hello_timeout_ms", "max_age_ms", "max_links", "ring_bytes", "output_high_water_bytes",
                "error_rate_limit", "log", "state_dir", "pre_session", "identity_lease_ms", "udp_coalesce_ms",
                # udp_slabs: RETIRED, known only to be ignored with a warning
                "loop_coalesce_ms", "link_placement", "udp_slabs"),
    "gateway.listen": ("net_a", "net_b", "udp"),
    "gateway.listen.net_a": _ENDPOINT,
    "gateway.listen.net_b": _ENDPOINT,
    "gateway.listen.udp": _ENDPOINT,
    "gateway.admin": (*_ENDPOINT, "token_file", "max_connections", "max_connections_per_client",
                      "reserved_connections", "token"),  # token: known only to be refused with a reason
    "gateway.log": ("level", "file", "format"),
    "gateway.pre_session": ("max_connections", "max_connections_per_source"),
    "line": ("name", "timezone"),
    "devices[]": ("id", "name", "kind", "nets", "mac", "mac_key", "sections", "signals", "switches"),
    "trains": ("heartbeat_ms", "ids", "consists"),
}


class ConfigError(ValueError):
    """The configuration is invalid; ``problems`` lists ``key.path: what was expected``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}\n  " + "\n  ".join(problems))


def unknown_key(path: str, key: object, known: tuple[str, ...]) -> str:
    """The problem of one unknown ``key`` in the mapping at ``path``: the closest known key, if one is close.

    The one wording of unknown keys for every section: the pipeline's and coupling's parsers are
    handed this function by :func:`parse`.
    """
    where = f"{path}.{key}" if path and path != TOP_LEVEL else str(key)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(known)}"
    return f"{where}: unknown key ({hint})"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class AdminSettings:
    """``gateway.admin``: where the admin API listens, its token file and its connection limits (the
    defaults are the server's, ``gateway/adapters/admin_http.py``; the rules are in its docstring)."""

    host: str
    port: int
    token_file: str | None = None        # None: <state_dir>/admin.token, created at the first start
    max_connections: int = 128
    max_connections_per_client: int = 16
    reserved_connections: int = 4        # of max_connections, for an address holding none

    def server_limits(self) -> dict:
        """The keyword arguments ``AdminServer`` takes for these limits."""
        return {"max_connections": self.max_connections, "max_per_client": self.max_connections_per_client,
                "reserved": self.reserved_connections}



@dataclass(frozen=True)
class PreSessionSettings:
    """``gateway.pre_session``: connections that have not confirmed a session (gateway/net/acceptor.py
    ``PreSessionBudget``); they take no device link buffers, and wait at most ``hello_timeout_ms`` for
    the HELLO and again for the SESSION_CONFIRM."""

    max_connections: int = 64
    max_connections_per_source: int = 8   # per source address


def parse_key(value: object) -> tuple[bytes | None, str | None]:
    """A MAC key from its hex text: ``(key, None)`` or ``(None, what is wrong)``.

    The problem names the shape of the value (its length, a non-hex character's position), never
    the value itself: config errors go to stderr, to logs on SIGHUP, and into tickets.
    """
    if not isinstance(value, str):
        return None, f"expected hex text, got a {type(value).__name__} (value not shown)"
    text = value.strip()
    bad = next((i for i, ch in enumerate(text) if ch not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        return None, f"character {bad + 1} of {len(text)} is not a hex digit (value not shown)"
    if len(text) % 2 or len(text) < 32:
        return None, (f"{len(text)} hex digits, need an even number and at least 32 (16 bytes) "
                      "(value not shown)")
    return bytes.fromhex(text), None

@dataclass(frozen=True)
class Device:
    id: int
    name: str
    kind: int
    nets: tuple[str, ...]
    mac: str                      # required | optional | off
    mac_key: bytes | None = field(repr=False)  # a secret: never in a repr, a log line or an error
    sections: tuple[int, ...]
    signals: tuple[int, ...]
    switches: tuple[int, ...]


@dataclass(frozen=True)
class Trains:
    heartbeat_ms: int
    ids: tuple[int, ...]
    consists: dict[int, tuple[int, int]]


@dataclass(frozen=True)
class Settings:
    """The gateway: section. ``LIVE`` names what SIGHUP may change."""

    LIVE = ("heartbeat_ms", "dead_after", "max_age_ms", "log_level", "output_high_water", "error_rate_limit",
            "hello_timeout_ms")
    id: int
    name: str
    net_a: Endpoint
    net_b: Endpoint
    udp: Endpoint
    admin: AdminSettings
    io_threads: int
    heartbeat_ms: int
    dead_after: int
    hello_timeout_ms: int
    max_age_ms: int
    max_links: int
    ring_bytes: int
    output_high_water: int
    error_rate_limit: int
    log_level: str
    log_file: str | None
    state_dir: str
    log_format: str = "text"        # text | json: one record per line either way
    pre_session: PreSessionSettings = field(default_factory=PreSessionSettings)
    identity_lease_ms: int = 10_000  # TTL of the Redis identity lease (gateway/app/identity.py)
    udp_coalesce_ms: int = 1         # the UDP endpoint's polling interval under load (udp_endpoint.py, "Wake-ups")
    loop_coalesce_ms: int = 1        # an IO loop's wake-up coalescing under load (event_loop.py, "Coalescing")
    link_placement: str = "device"   # device: a device's links share its home IO loop (loop_pool.py); round_robin


@dataclass(frozen=True)
class Config:
    source: str
    gateway: Settings
    line_name: str
    timezone: str
    devices: tuple[Device, ...]
    trains: Trains
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    #: alarms:, kafka:, history:, redis: (alarms/settings.py)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    #: coupling: (gateway/coupling/settings.py)
    coupling: CouplingSettings = field(default_factory=CouplingSettings)
    #: track: (gateway/line/topology.py); None without one
    track: Topology | None = None
    #: control: (gateway/commands/settings.py): the command path
    control: ControlSettings = field(default_factory=ControlSettings)

    def device(self, device_id: int) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def senders(self) -> dict[int, int]:
        """Every configured sender id -> kind code (4 for trains)."""
        out = {d.id: d.kind for d in self.devices}
        out.update({t: 4 for t in self.trains.ids})
        return out


class _Reader:
    """Walks the YAML tree collecting problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, path: str, expected: str, value: Any) -> None:
        self.problems.append(f"{path}: expected {expected}, got {value!r}")

    def known(self, obj: dict, path: str, keys: tuple[str, ...]) -> None:
        """Every key of ``obj`` that is not in ``keys`` is a problem."""
        self.problems += [unknown_key(path, k, keys) for k in obj if k not in keys]

    def section(self, obj: dict, key: str, path: str, required: bool = True) -> dict:
        """The mapping at ``obj[key]`` ({} if absent or not a mapping), its keys checked against ``KEYS[path]``."""
        value = obj.get(key) if isinstance(obj, dict) else None
        if value is None:
            if required:
                self.problems.append(f"{path}: missing (expected a mapping)")
            return {}
        if not isinstance(value, dict):
            self.bad(path, "a mapping", value)
            return {}
        if path in KEYS:
            self.known(value, path, KEYS[path])
        return value

    def int(self, obj: dict, key: str, path: str, lo: int, hi: int, default: int | None = None) -> int:
        value = obj.get(key, default)
        if type(value) is not int or not lo <= value <= hi:
            self.bad(path, f"an integer {lo}..{hi}" if value is not None else f"an integer {lo}..{hi} (required)",
                     value)
            return lo
        return value

    def str(self, obj: dict, key: str, path: str, default: str | None = None, choices=None) -> str:
        value = obj.get(key, default)
        if not isinstance(value, str) or not value or (choices and value not in choices):
            self.bad(path, f"one of {', '.join(choices)}" if choices else "a non-empty string", value)
            return (choices or [""])[0]
        return value

    def ids(self, obj: dict, key: str, path: str) -> tuple[int, ...]:
        value = obj.get(key, [])
        if not isinstance(value, list) or any(type(v) is not int or not 1 <= v <= 0xFFFF for v in value):
            self.bad(path, "a list of ids 1..65535", value)
            return ()
        return tuple(value)

    def endpoint(self, obj: dict, key: str, path: str, default_port: int | None = None) -> Endpoint:
        sec = self.section(obj, key, path, required=default_port is None)
        host = self.str(sec, "host", f"{path}.host", default="127.0.0.1")
        # port 0: the OS picks a free port (tests, or a gateway that reports its ports in status)
        port = self.int(sec, "port", f"{path}.port", 0, 65535, default=default_port)
        return Endpoint(host, port)


def parse(data: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    r = _Reader()
    if data is None:
        raise ConfigError(source, [f"{TOP_LEVEL}: the file is empty (expected a mapping with gateway:, line:, "
                                   "devices:, trains:)"])
    if not isinstance(data, dict):
        raise ConfigError(source, [f"{TOP_LEVEL}: expected a mapping, got {type(data).__name__}"])
    r.known(data, TOP_LEVEL, KEYS[TOP_LEVEL])
    gw = r.section(data, "gateway", "gateway")
    listen = r.section(gw, "listen", "gateway.listen")
    log = r.section(gw, "log", "gateway.log", required=False)
    _retired(gw, "gateway")
    settings = Settings(
        id=r.int(gw, "id", "gateway.id", 1, 0xFFFF, default=1),
        name=r.str(gw, "name", "gateway.name", default="railgate"),
        net_a=r.endpoint(listen, "net_a", "gateway.listen.net_a"),
        net_b=r.endpoint(listen, "net_b", "gateway.listen.net_b"),
        udp=r.endpoint(listen, "udp", "gateway.listen.udp"),
        admin=_admin(r, gw),
        io_threads=r.int(gw, "io_threads", "gateway.io_threads", 0, 64, default=1),
        heartbeat_ms=r.int(gw, "heartbeat_ms", "gateway.heartbeat_ms", 50, 60_000, default=500),
        dead_after=r.int(gw, "dead_after_heartbeats", "gateway.dead_after_heartbeats", 2, 20, default=3),
        hello_timeout_ms=r.int(gw, "hello_timeout_ms", "gateway.hello_timeout_ms", 100, 60_000, default=5000),
        max_age_ms=r.int(gw, "max_age_ms", "gateway.max_age_ms", 10, 600_000, default=2000),
        max_links=r.int(gw, "max_links", "gateway.max_links", 1, 100_000, default=4096),
        ring_bytes=r.int(gw, "ring_bytes", "gateway.ring_bytes", 8192, 64 << 20, default=64 << 10),
        output_high_water=r.int(gw, "output_high_water_bytes", "gateway.output_high_water_bytes", 4096,
                                1 << 30, default=1 << 20),
        error_rate_limit=r.int(gw, "error_rate_limit", "gateway.error_rate_limit", 1, 1_000_000, default=50),
        log_level=r.str(log, "level", "gateway.log.level", default="INFO", choices=LEVELS),
        log_file=log.get("file"),
        log_format=r.str(log, "format", "gateway.log.format", default="text", choices=LOG_FORMATS),
        state_dir=r.str(gw, "state_dir", "gateway.state_dir", default="state"),
        pre_session=_pre_session(r, gw),
        identity_lease_ms=r.int(gw, "identity_lease_ms", "gateway.identity_lease_ms", 500, 600_000,
                                default=10_000),
        udp_coalesce_ms=r.int(gw, "udp_coalesce_ms", "gateway.udp_coalesce_ms", 0, 100, default=1),
        loop_coalesce_ms=r.int(gw, "loop_coalesce_ms", "gateway.loop_coalesce_ms", 0, 100, default=1),
        link_placement=r.str(gw, "link_placement", "gateway.link_placement", default="device",
                             choices=LINK_PLACEMENTS),
    )
    line = r.section(data, "line", "line", required=False)
    line_name = r.str(line, "name", "line.name", default="line")
    tz = r.str(line, "timezone", "line.timezone", default="UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        r.bad("line.timezone", "an IANA time zone such as Asia/Shanghai", tz)
    devices = _devices(r, data.get("devices", []))
    trains = _trains(r, r.section(data, "trains", "trains", required=False))
    _cross_checks(r, settings, devices, trains)
    pipeline, problems = parse_pipeline(data, unknown=unknown_key)
    r.problems += problems
    names = {d.name for d in devices}
    for area, members in pipeline.alarms.areas.items():
        r.problems += [f"alarms.areas.{area}: {m!r} is not a configured device"
                       + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(m, names, 1)) else "")
                       for m in members if m not in names]
    coupling, problems = parse_coupling(data.get(COUPLING_SECTION), unknown=unknown_key)
    r.problems += problems
    track, problems = parse_track(data.get(TRACK_SECTION), unknown=unknown_key)
    r.problems += problems
    _track_checks(r, data.get(TRACK_SECTION), devices, track)
    control, problems = parse_control(data.get(CONTROL_SECTION), unknown=unknown_key, gateway_name=settings.name)
    r.problems += problems
    if r.problems:
        raise ConfigError(source, r.problems)
    return Config(source, settings, line_name, tz, devices, trains, data, pipeline, coupling, track, control)


def _retired(obj: dict, path: str) -> None:
    """Log a WARNING for each retired key present in the mapping at ``path`` (its value is not read)."""
    for key in obj if isinstance(obj, dict) else ():
        why = RETIRED.get(f"{path}.{key}")
        if why is not None:
            _log.warning("%s.%s is no longer used: %s; remove it", path, key, why)


def _pre_session(r: _Reader, gw: dict) -> PreSessionSettings:
    sec = r.section(gw, "pre_session", "gateway.pre_session", required=False)
    most = r.int(sec, "max_connections", "gateway.pre_session.max_connections", 1, 100_000, default=64)
    per_source = r.int(sec, "max_connections_per_source", "gateway.pre_session.max_connections_per_source", 1,
                       most, default=min(8, most))
    return PreSessionSettings(most, per_source)


def _admin(r: _Reader, gw: dict) -> AdminSettings:
    where = r.endpoint(gw, "admin", "gateway.admin", default_port=17080)
    sec = gw.get("admin") if isinstance(gw, dict) and isinstance(gw.get("admin"), dict) else {}
    token_file = sec.get("token_file")
    if token_file is not None and (not isinstance(token_file, str) or not token_file.strip()):
        r.bad("gateway.admin.token_file", "the path of a file holding the admin token", token_file)
        token_file = None
    if "token" in sec:  # a secret does not belong in a line file that is copied, diffed and printed
        r.problems.append("gateway.admin.token: not supported (value not shown): put the token in a file "
                          "readable only by the gateway's user and name it with gateway.admin.token_file")
    most = r.int(sec, "max_connections", "gateway.admin.max_connections", 2, 65536, default=128)
    reserved = r.int(sec, "reserved_connections", "gateway.admin.reserved_connections", 0, most - 1, default=4)
    per_client = r.int(sec, "max_connections_per_client", "gateway.admin.max_connections_per_client", 1,
                       max(1, most - reserved), default=min(16, max(1, most - reserved)))
    return AdminSettings(where.host, where.port, token_file, most, per_client, reserved)


def _devices(r: _Reader, items: Any) -> tuple[Device, ...]:
    if not isinstance(items, list):
        r.bad("devices", "a list", items)
        return ()
    out = []
    for i, d in enumerate(items):
        p = f"devices[{i}]"
        if not isinstance(d, dict):
            r.bad(p, "a mapping", d)
            continue
        r.known(d, p, KEYS["devices[]"])
        kind = r.str(d, "kind", f"{p}.kind", choices=tuple(KINDS))
        nets = d.get("nets", ["A", "B"])
        if not isinstance(nets, list) or not nets or len(set(nets)) != len(nets) or any(
                n not in ("A", "B") for n in nets):
            r.bad(f"{p}.nets", "[A], [B] or [A, B]", nets)
            nets = ["A"]
        mac = r.str(d, "mac", f"{p}.mac", default="off", choices=("required", "optional", "off"))
        key = None
        key_given = d.get("mac_key") is not None
        if key_given:
            key, problem = parse_key(d["mac_key"])
            if problem:
                r.problems.append(f"{p}.mac_key: {problem}")
        if mac == "required" and not key_given:
            r.problems.append(f"{p}.mac_key: missing (required when mac is 'required')")
        if mac == "off" and key_given:  # a key that is never used looks like protection that is not there
            r.problems.append(f"{p}.mac_key: given, but mac is 'off' (set mac: optional or required, "
                              "or remove the key)")
        out.append(Device(id=r.int(d, "id", f"{p}.id", 1, 0xFFFF), name=r.str(d, "name", f"{p}.name"),
                          kind=KINDS.get(kind, 1), nets=tuple(nets), mac=mac, mac_key=key,
                          sections=r.ids(d, "sections", f"{p}.sections"),
                          signals=r.ids(d, "signals", f"{p}.signals"),
                          switches=r.ids(d, "switches", f"{p}.switches")))
    return tuple(out)


def _trains(r: _Reader, t: dict) -> Trains:
    ids = r.ids(t, "ids", "trains.ids")
    consists: dict[int, tuple[int, int]] = {}
    consist_of: dict[int, int] = {}  # train -> its consist: a train couples with one other train only
    raw = t.get("consists", {}) or {}
    if not isinstance(raw, dict):
        r.bad("trains.consists", "a mapping consist_id: [train, train]", raw)
        raw = {}
    for cid, members in raw.items():
        p = f"trains.consists.{cid}"
        if isinstance(cid, str) and cid.isdigit():
            cid = int(cid)  # a quoted key ("10") is still the consist 10
        if type(cid) is not int or not 1 <= cid <= 0xFFFF:
            r.bad(p, "a consist id 1..65535 as key", cid)
        elif not isinstance(members, list) or len(members) != 2 or any(m not in ids for m in members) \
                or members[0] == members[1]:
            r.bad(p, "two different train ids listed in trains.ids", members)
        elif cid in consists:
            r.problems.append(f"{p}: consist {cid} is listed twice (as {cid} and as {str(cid)!r})")
        elif taken := [m for m in members if m in consist_of]:
            r.problems.append(f"{p}: train {taken[0]} is already in consist {consist_of[taken[0]]} "
                              "(a train belongs to one consist)")
        else:
            consists[cid] = (members[0], members[1])
            consist_of.update(dict.fromkeys(members, cid))
    return Trains(r.int(t, "heartbeat_ms", "trains.heartbeat_ms", 50, 60_000, default=1000), ids, consists)


def _cross_checks(r: _Reader, s: Settings, devices, trains: Trains) -> None:
    seen: dict[int, str] = {s.id: "gateway.id"}
    for i, d in enumerate(devices):
        if d.id in seen:
            r.problems.append(f"devices[{i}].id: {d.id} is already used by {seen[d.id]}")
        seen[d.id] = f"devices[{i}]"
    for t in trains.ids:
        if t in seen:
            r.problems.append(f"trains.ids: {t} is already used by {seen[t]}")
        seen[t] = "trains.ids"
    # a device's name is its alarms' source in the alarm key (alarms/sources.py key_part): two devices
    # with one name would raise, acknowledge and clear each other's alarms
    named: dict[str, int] = {}
    for i, d in enumerate(devices):
        first = named.setdefault(key_part(d.name), i)
        if first != i:
            same = "is already the name of" if devices[first].name == d.name else \
                f"gives the same alarm key as {devices[first].name!r} of"
            r.problems.append(f"devices[{i}].name: {d.name!r} {same} devices[{first}] (alarm keys would collide)")
    ports = [(s.net_a, "gateway.listen.net_a"), (s.net_b, "gateway.listen.net_b")]
    if s.net_a.port and (s.net_a.host, s.net_a.port) == (s.net_b.host, s.net_b.port):
        r.problems.append(f"{ports[1][1]}: same address as {ports[0][1]} (net A and net B must differ)")


def _track_checks(r: _Reader, raw: Any, devices, track: Topology | None) -> None:
    """Every section, switch and signal of ``track:`` (zones too) is an object of a configured device
    (ids read from the file, so they are checked even when the topology has problems of its own), and
    every named route has a way on the free line."""
    if not isinstance(raw, dict):
        return
    owned = {key: {i for d in devices for i in getattr(d, key)} for key in ("sections", "switches", "signals")}
    for key in owned:
        table = raw.get(key)
        for k in table if isinstance(table, dict) else ():
            if (oid := object_id(k)) is not None and oid not in owned[key]:
                r.problems.append(f"{TRACK_SECTION}.{key}.{k}: {oid} is not an object of a configured device "
                                  f"(in no devices[].{key})")
    zones = raw.get("zones")
    for name, zone in zones.items() if isinstance(zones, dict) else ():
        for key in ("sections", "switches"):
            ids = zone.get(key) if isinstance(zone, dict) else None
            stray = [oid for i in ids if (oid := object_id(i)) is not None and oid not in owned[key]] \
                if isinstance(ids, list) else []
            if stray:
                r.problems.append(f"{TRACK_SECTION}.zones.{name}.{key}: {', '.join(map(str, stray))} "
                                  f"{'is not an object' if len(stray) == 1 else 'are not objects'} of a configured "
                                  f"device (in no devices[].{key})")
    for route in track.routes.values() if track is not None else ():
        try:
            plan(track, route.from_signal, route.to_signal)
        except NoRoute as exc:
            r.problems.append(f"{TRACK_SECTION}.routes.{route.id}: {exc} (on the free line)")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every key given twice in one mapping (PyYAML keeps the last in silence)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: list[tuple[int, str]] = []  # (line, problem): mappings are built inner ones last

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges a mapping; a key beside it overrides on purpose
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                earlier = first.get(key)
            except TypeError:
                continue  # an unhashable key: the constructor below says so
            if earlier is None:
                first[key] = line
            else:  # on any line, the same one too: {port: 1, port: 2}
                self.repeated.append((line, f"line {line}: key {key!r} appears twice in this mapping "
                                            f"(first on line {earlier})"))
        return super().construct_mapping(node, deep)


def load(path: str) -> Config:
    """Read and validate a YAML line file; raise ConfigError naming the file and every problem.

    A file that is not UTF-8, is not YAML or repeats a key stops here, with the line of the problem:
    validating a guess of what an ambiguous file meant would report problems of a file nobody wrote.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(path, [f"(file): cannot read: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, [f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start});"
                                 " save the file as UTF-8"]) from None
    try:
        loader = _StrictLoader(text)  # checks for control characters at once
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_problem(exc, text)]) from None
    if loader.repeated:
        raise ConfigError(path, [problem for _, problem in sorted(loader.repeated)])
    return parse(data, path)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """A YAML error as one line: where (line, column) and what."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        where = f"line {mark.line + 1}, column {mark.column + 1}"
    elif isinstance(exc, yaml.reader.ReaderError):  # a control character: PyYAML gives only its offset
        where = f"line {text.count(chr(10), 0, exc.position) + 1}"
    else:
        where = "(file)"
    what = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    if getattr(exc, "context", None):
        what = f"{what} ({exc.context})"
    if isinstance(exc, yaml.reader.ReaderError):
        what = f"character #x{exc.character:04x}: {what}" if isinstance(exc.character, int) else what
    return f"{where}: not valid YAML: {' '.join(str(what).split())}"


def diff(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Compare two configs: (live settings that changed, changes that need a restart)."""
    live, restart = [], []
    for f in fields(Settings):
        a, b = getattr(old.gateway, f.name), getattr(new.gateway, f.name)
        if a != b:
            (live if f.name in Settings.LIVE else restart).append(f"gateway.{f.name}")
    for name in ("devices", "trains", "timezone", "line_name", "pipeline", "coupling", "track", "control"):
        if getattr(old, name) != getattr(new, name):
            restart.append(name)
    return live, restart


_lock = threading.Lock()
_current: Config | None = None


def install(cfg: Config) -> Config | None:
    """Make ``cfg`` the process-wide configuration; returns the previous one. Any thread."""
    global _current
    with _lock:
        old, _current = _current, cfg
    return old


def current() -> Config:
    """The process-wide configuration. Any thread; raises if none was installed."""
    cfg = _current  # one reference read: atomic, and Config is immutable
    if cfg is None:
        raise RuntimeError("no configuration installed: call gateway.app.config.install(load(path)) first")
    return cfg
