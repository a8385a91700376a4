"""Which identity a gateway holds, from its config: the locks of ``gateway/adapters/identity_lease.py``.

Two gateways must never write the same places (issue 13 item 5: two with one
Redis prefix or gateway id corrupted each other's live table and lost one
history). What a gateway writes, and the lock that keeps a second one out:

* its **state dir** (journal, SQLite history, broker files): the lock file
  ``<state_dir>/gateway.lock``, always;
* with ``redis:``, its **live table** ``<redis.prefix>:alarms:*``: the Redis
  lease ``<redis.prefix>:lease``, and its **gateway id**, which keys its
  messages on Kafka and its history rows in MySQL: ``railgate:gateway:<id>:lease``
  (a fixed namespace, not the prefix: two prefixes on one Redis must not run
  one id twice). Redis checks across hosts;
* without Redis, a gateway id is only checked on one host, and only when the
  gateway writes to a service it may share with another gateway (external
  Kafka: bootstrap servers and topic prefix; MySQL history: host, port,
  database): one lock file per such service in ``$XDG_RUNTIME_DIR`` (else
  ``/tmp``), ``railgate-gateway-<id>-<service>-<hash>.lock``. With the
  embedded broker and SQLite two gateways of one id share nothing (two lines on
  one host, or tests) and both run. Two hosts without Redis: not detected.

Threading: ``identity_lease`` is pure wiring, called in ``Gateway.__init__``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

from gateway.adapters.identity_lease import IdentityHeld, IdentityLease, LockFile

__all__ = ["IdentityHeld", "identity_lease", "LOCK_FILE"]

LOCK_FILE = "gateway.lock"               # in state_dir
ID_NAMESPACE = "railgate:gateway"        # Redis: railgate:gateway:<id>:lease
REDIS_TIMEOUT_S = 2.0


def runtime_dir() -> str:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return xdg if xdg and os.path.isdir(xdg) else tempfile.gettempdir()


def _shared_services(cfg) -> dict[str, str]:
    """Service kind -> its identity, for every outside service this gateway writes its id into."""
    p = cfg.pipeline
    out = {}
    if not p.kafka.embedded:
        out["kafka"] = f"kafka {','.join(sorted(p.kafka.bootstrap_servers))} topics {p.alarms.topic_prefix}.*"
    if p.history.mysql is not None:
        m = p.history.mysql
        out["mysql"] = f"mysql {m.host}:{m.port}/{m.database}"
    return out


def identity_lease(cfg, on_lost=None) -> IdentityLease:
    """The locks of ``cfg``'s identity (not yet taken: call ``acquire``)."""
    gid = cfg.gateway.id
    state_dir = os.path.abspath(cfg.gateway.state_dir)
    files = [LockFile(os.path.join(state_dir, LOCK_FILE), f"state dir {state_dir}")]
    ttl_ms = cfg.gateway.identity_lease_ms
    redis_cfg = cfg.pipeline.redis
    if redis_cfg is None:
        for kind, service in _shared_services(cfg).items():
            digest = hashlib.sha1(service.encode()).hexdigest()[:12]
            files.append(LockFile(os.path.join(runtime_dir(), f"railgate-gateway-{gid}-{kind}-{digest}.lock"),
                                  f"gateway id {gid} on {service}"))
        return IdentityLease(files, ttl_ms=ttl_ms, on_lost=on_lost)
    import redis
    client = redis.Redis.from_url(redis_cfg.url, socket_timeout=REDIS_TIMEOUT_S,
                                  socket_connect_timeout=REDIS_TIMEOUT_S)
    keys = {f"{redis_cfg.prefix}:lease": f"redis prefix {redis_cfg.prefix!r}",
            f"{ID_NAMESPACE}:{gid}:lease": f"gateway id {gid}"}
    return IdentityLease(files, redis_client=client, redis_keys=keys, ttl_ms=ttl_ms, on_lost=on_lost)
