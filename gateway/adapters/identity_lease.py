"""One gateway per identity: lock files and Redis leases that a second gateway with the same identity hits.

A gateway's identity is every place it writes that another gateway must not
write too (``gateway/app/identity.py`` says which, from the config). Two kinds
of lock hold them:

* **a lock file** — ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a file kept open
  while the gateway runs, with ``{"host", "pid", "started"}`` written inside
  for the refusal message. The kernel drops the lock when the process dies
  (even by SIGKILL), so a stale file from a dead gateway is free at once. The
  file is never unlinked: another process may already have it open, and
  unlinking it would let two holders lock two different inodes. The fd is not
  inherited across exec (relay child, broker), only across the daemon's fork.
* **a Redis lease** — keys set with ``PX ttl`` to ``{"host", "pid",
  "started", "token"}``. One Lua script takes or renews every key at once:
  if any key is held under another token nothing changes and the holder is
  returned, else every key is set (again) with a fresh TTL. The same script
  re-takes a key that expired (Redis restarted empty, or this gateway paused
  past the TTL and nobody took it meanwhile). Release is compare-and-delete
  by token (redis-py's ``redis/lock.py`` pattern). A holder that died leaves
  its keys until the TTL ends; the refusal says how long that is.

Renewal runs in a small thread of its own (``lease-renew``, every third of the
TTL): a Redis call may block up to its socket timeout, which must not stall
the base loop's timers nor, ever, an IO loop. A Redis that does not answer is
not a lost lease: the state becomes ``unverified`` (one warning per outage)
and the thread keeps trying. A lease found under another token is ``lost``:
logged at ERROR with the new holder, and ``on_lost`` is called once (the
gateway stops: the other holder was started because this one looked dead, and
two writers is what the lease exists to prevent).

Threading: ``acquire`` and ``release`` from the thread that builds and stops
the gateway (base loop thread); ``start`` once, after a daemon's fork;
``stats`` from any thread (it reads plain attributes).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

import redis

log = logging.getLogger("railgate.identity")

# KEYS: the lease keys.  ARGV: value (JSON with token), ttl_ms, token.
# Returns {0} (every key now ours) or {i, value, pttl} of the first key held under another token.
_TAKE = """
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v then
    local ok, d = pcall(cjson.decode, v)
    if not (ok and type(d) == 'table' and d['token'] == ARGV[3]) then
      return {i, v, redis.call('PTTL', k)}
    end
  end
end
for _, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1], 'PX', ARGV[2]) end
return {0}
"""
# KEYS: the lease keys.  ARGV: token.  Deletes the keys still ours; returns how many.
_RELEASE = """
local n = 0
for _, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v then
    local ok, d = pcall(cjson.decode, v)
    if ok and type(d) == 'table' and d['token'] == ARGV[1] then n = n + redis.call('DEL', k) end
  end
end
return n
"""


class IdentityHeld(Exception):
    """Another live gateway holds this identity. ``what``: the identity in words; ``holder``: its
    ``{"host", "pid", "started"}`` (None if unreadable); ``ttl_ms``: a Redis lease's time left (None for a
    lock file); ``where``: the lock file or Redis key."""

    def __init__(self, what: str, holder: dict | None, ttl_ms: int | None, where: str) -> None:
        self.what, self.holder, self.ttl_ms, self.where = what, holder, ttl_ms, where
        super().__init__(f"{what} is held by {describe_holder(holder)}"
                         + (f", expires in {max(0, ttl_ms) / 1000:.0f} s unless renewed" if ttl_ms is not None else "")
                         + f" ({where})")


def describe_holder(holder: dict | None) -> str:
    if not isinstance(holder, dict):
        return "another gateway"
    return f"{holder.get('host', '?')}:{holder.get('pid', '?')} since {holder.get('started', '?')}"


def _holder_of(raw: bytes | str | None) -> dict | None:
    try:
        d = json.loads(raw) if raw else None
    except ValueError:
        return None
    return {k: d.get(k) for k in ("host", "pid", "started")} if isinstance(d, dict) else None


class LockFile:
    """One flock'ed file (see the module doc). ``what``: the identity it stands for, in words."""

    def __init__(self, path: str, what: str) -> None:
        self.path, self.what = path, what
        self._fd: int | None = None

    def acquire(self, me: dict) -> None:
        """Lock it or raise IdentityHeld; OSError if it cannot be created."""
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(os.pread(fd, 4096, 0))
            os.close(fd)
            raise IdentityHeld(self.what, holder, None, f"lock file {self.path}") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.write(me)

    def write(self, me: dict) -> None:
        """The holder's details into the file (again after a daemon's fork: the pid changed)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(me) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)           # nobody holds it: no stale holder to describe
            os.close(self._fd)                  # closing drops the flock
            self._fd = None


class IdentityLease:
    """Every lock of one gateway identity: lock files first, then the Redis keys. See the module doc."""

    def __init__(self, lock_files: list[LockFile], *, redis_client: redis.Redis | None = None,
                 redis_keys: dict[str, str] | None = None, ttl_ms: int = 10_000,
                 on_lost: Callable[[str], None] | None = None) -> None:
        """``redis_keys``: key -> the identity it stands for, in words."""
        self.lock_files, self.client = lock_files, redis_client
        self.redis_keys = dict(redis_keys or {})
        self.ttl_ms, self.on_lost = ttl_ms, on_lost
        self.token = secrets.token_hex(16)
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.state = "released"       # released | held | unverified (Redis not answering) | lost
        self.lost_to: str | None = None
        self.last_renewed_mono: float | None = None
        self.renewals = self.failures = 0
        self.last_error: str | None = None
        self._take = redis_client.register_script(_TAKE) if redis_client is not None else None
        self._release = redis_client.register_script(_RELEASE) if redis_client is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _me(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": self.started}

    # -- life ---------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take every lock, or raise IdentityHeld (nothing held then). Redis not answering is no
        refusal: the lease is ``unverified`` and the renewal thread keeps trying to take it."""
        taken: list[LockFile] = []
        try:
            for lf in self.lock_files:
                lf.acquire(self._me())
                taken.append(lf)
            self.state = "held"
            if self._take is not None:
                self._try_redis(raise_held=True)
        except BaseException:
            for lf in taken:
                lf.release()
            self.state = "released"
            raise

    def start(self) -> None:
        """Write this process's pid again (a daemon forked since acquire) and start renewing."""
        for lf in self.lock_files:
            lf.write(self._me())
        if self._take is not None and self._thread is None:
            self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
            self._thread.start()

    def release(self) -> None:
        """Stop renewing and give every lock back (only keys still ours are deleted)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        if self._release is not None and self.state != "lost":
            try:
                self._release(keys=list(self.redis_keys), args=[self.token])
            except redis.RedisError as exc:   # it expires after the TTL anyway
                log.warning("identity lease not released on redis (%s); it expires in %d ms", exc, self.ttl_ms)
        for lf in self.lock_files:
            lf.release()
        if self.state != "lost":
            self.state = "released"

    # -- internals ----------------------------------------------------------------------------
    def _try_redis(self, raise_held: bool) -> bool:
        """One take-or-renew. True: every key is ours for ttl_ms more. Raises IdentityHeld when
        ``raise_held``; otherwise a held key makes the lease lost."""
        value = json.dumps({**self._me(), "token": self.token})
        try:
            got = self._take(keys=list(self.redis_keys), args=[value, self.ttl_ms, self.token])
        except redis.RedisError as exc:
            self.failures += 1
            if self.state != "unverified":
                log.warning("identity lease unverified: redis does not answer (%s); retrying every %.1f s",
                            exc, self.ttl_ms / 3000)
            self.state, self.last_error = "unverified", f"{type(exc).__name__}: {exc}"
            return False
        if int(got[0]) == 0:
            if self.state == "unverified":
                log.warning("identity lease held again on redis after %d failed attempts", self.failures)
            self.state, self.last_error = "held", None
            self.renewals += 1
            self.last_renewed_mono = time.monotonic()
            return True
        key = list(self.redis_keys)[int(got[0]) - 1]
        held = IdentityHeld(self.redis_keys[key], _holder_of(got[1]), int(got[2]), f"redis key {key}")
        if raise_held:
            raise held
        self.state, self.lost_to = "lost", str(held)
        log.error("IDENTITY LEASE LOST: %s; this gateway stops (two gateways with one identity corrupt "
                  "each other's live table and history)", held)
        if self.on_lost is not None:
            self.on_lost(str(held))
        return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            if not self._try_redis(raise_held=False) and self.state == "lost":
                return

    # -- status (any thread) ------------------------------------------------------------------
    def stats(self) -> dict:
        age = None if self.last_renewed_mono is None else round(time.monotonic() - self.last_renewed_mono, 3)
        return {"state": self.state, "lock_files": [lf.path for lf in self.lock_files],
                "redis_keys": list(self.redis_keys), "ttl_ms": self.ttl_ms, "renewals": self.renewals,
                "failures": self.failures, "last_renewed_age_s": age, "last_error": self.last_error,
                "lost_to": self.lost_to}
