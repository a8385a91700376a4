"""`gateway check`: validate a line file without starting anything, and show what the gateway would run with.

    gateway check -c FILE [--json]

Runs the validation `gateway run` runs (``gateway.app.config.load``: unknown
keys, keys given twice, types and ranges, the cross-checks) and opens no socket,
file or broker beyond reading FILE. A valid file prints its *effective*
configuration: every default filled in, in the file's own layout, so the output
is itself a line file. Secrets never reach the output: a device's ``mac_key``,
any key named like a password, secret or token (``history.mysql.password``,
librdkafka's ``sasl.password``, an admin token) and the password of a URL
(``redis://:pw@host``) are shown as ``***``.

Exit status: 0 valid (the effective config on stdout), 2 invalid (every problem,
each naming its key path or line, on stderr; with ``--json`` the same as a JSON
document on stdout) or bad usage. Runs in the caller's thread.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from typing import Any

import yaml

from gateway.app.config import KINDS, Config, ConfigError, load

MASK = "***"
#: a key whose value is a secret: the whole value is masked (``token_file``, a path, is not)
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|mac_key|key\.pem|private[._]key|credentials?)$", re.I)
#: the password of a URL's userinfo: scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)[^/@\s]*(?=@)")
#: Settings field -> its key path under ``gateway:`` where the two differ (gateway/app/config.py parse);
#: besides these, ``log_X`` is ``log.X``
_GATEWAY_PLACES = {"net_a": ("listen", "net_a"), "net_b": ("listen", "net_b"), "udp": ("listen", "udp"),
                   "dead_after": ("dead_after_heartbeats",), "output_high_water": ("output_high_water_bytes",)}
_KIND_NAMES = {code: name for name, code in KINDS.items()}


def effective(cfg: Config, *, mask: bool = True) -> dict:
    """The configuration ``cfg`` as a line-file document with every default filled in; secrets masked.

    With ``mask=False`` (tests only) keys are shown in hex and the document parses back to ``cfg``.
    """
    plain = _Plain(mask)
    gateway: dict = {}
    for f in dataclasses.fields(cfg.gateway):
        place = ("log", f.name[4:]) if f.name.startswith("log_") else (f.name,)
        *parents, last = _GATEWAY_PLACES.get(f.name, place)
        node = gateway
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = plain(getattr(cfg.gateway, f.name), last)
    p = cfg.pipeline
    doc = {
        "gateway": gateway,
        "line": {"name": cfg.line_name, "timezone": cfg.timezone},
        "devices": [{**plain(d, "device"), "kind": _KIND_NAMES.get(d.kind, d.kind)} for d in cfg.devices],
        "trains": plain(cfg.trains, "trains"),
        "alarms": plain(p.alarms, "alarms"),
        "kafka": "embedded" if p.kafka.embedded else {"bootstrap_servers": ",".join(p.kafka.bootstrap_servers),
                                                      "config": plain(p.kafka.config, "config")},
        "history": ({"retention_days": p.history.retention_days} if p.history.mysql is None else
                    {"mysql": plain(p.history.mysql, "mysql"), "retention_days": p.history.retention_days}),
        "coupling": plain(cfg.coupling, "coupling"),
        "control": plain(cfg.control, "control"),
    }
    if cfg.track is not None:
        doc["track"] = cfg.track.to_raw()
    if p.redis is not None:  # absent means none (in-process locks); the parser has no "none" value
        doc["redis"] = plain(p.redis, "redis")
    return doc


class _Plain:
    """Settings objects to YAML/JSON values, masking by key name (secrets) and inside URLs (passwords)."""

    def __init__(self, mask: bool) -> None:
        self.mask = mask

    def __call__(self, value: Any, key: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: self(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: self(v, k) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(v, key) for v in value]
        if isinstance(value, bytes):  # the only bytes in a config are MAC keys
            return MASK if self.mask else value.hex()
        if self.mask and value not in (None, "") and _SECRET_KEY.search(str(key)):
            return MASK
        if self.mask and isinstance(value, str):
            return _URL_PASSWORD.sub(lambda m: m["head"] + MASK, value)
        return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway check",
                                description="Validate a line file without starting; print the effective config.")
    p.add_argument("-c", "--config", required=True, help="YAML line file (see config/)")
    p.add_argument("--json", action="store_true",
                   help='print {"source", "valid", "config"} or {"source", "valid", "problems"} as JSON')
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse has printed the usage problem (2) or --help (0)
        return int(exc.code or 0)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        if args.json:
            sys.stdout.write(json.dumps({"source": exc.source, "valid": False, "problems": exc.problems},
                                        indent=2) + "\n")
        else:
            sys.stderr.write(f"gateway check: invalid configuration\n{exc}\n")
        return 2
    doc = effective(cfg)
    if args.json:
        sys.stdout.write(json.dumps({"source": cfg.source, "valid": True, "config": doc}, indent=2) + "\n")
    else:
        sys.stdout.write(f"# {cfg.source}: valid. Effective configuration: defaults filled in, "
                         f"secrets shown as {MASK}.\n")
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120))
    return 0
