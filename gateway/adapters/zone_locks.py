"""Switch-zone locks: one control-room workstation at a time may command a zone.

``acquire(zone, holder)`` returns a :class:`Lease`: a random token (only its owner can release
or extend the lock) and a **fencing token**, strictly increasing per zone across holders. A
COMMAND frame carries it as ``fencing_token`` (ICD, uint64); the receiving side refuses a
command whose fencing token is lower than one it has already seen for that zone, which stops a
holder that paused past its TTL (GC, network) from acting after the lock moved on.

Two implementations, same semantics:

* :class:`RedisZoneLocks` — ``<prefix>:zone:<zone>`` set with ``SET NX PX`` and the fencing counter
  ``<prefix>:fence:<zone>`` incremented in the same Lua script (atomic: the order of fencing
  tokens is the order of acquisitions). Release and extend are compare-and-delete and
  compare-and-pexpire scripts, as redis-py's ``redis/lock.py``. The fence is floored at Redis's
  clock in µs, so it keeps increasing even if Redis restarts without its data (as long as a zone
  is taken less than once per µs on average and the clock does not step back; persist Redis to
  drop the second condition).
* :class:`InProcessZoneLocks` — the embedded default (one gateway process): a dict under a
  Condition, TTL measured by an injected clock, the same µs floor on the fence.

Threading: every method may be called from any thread. Blocking acquires wait in the caller's
thread (Redis: polling every ``retry_s``; in-process: on the Condition).
"""
from __future__ import annotations

import secrets
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import redis


class ZoneLockError(Exception):
    """A zone-lock operation failed; ``zone`` names the switch zone."""

    def __init__(self, zone: str, message: str) -> None:
        self.zone = zone
        super().__init__(f"zone {zone}: {message}")


class LockHeld(ZoneLockError):
    """Someone else holds the zone: ``holder`` (workstation name) and ``ttl_ms`` left (-1 unknown)."""

    def __init__(self, zone: str, holder: str | None, ttl_ms: int, waited_s: float | None = None) -> None:
        self.holder, self.ttl_ms = holder, ttl_ms
        wait = f" after waiting {waited_s:.2f} s" if waited_s is not None else ""
        super().__init__(zone, f"held by {holder or '?'} for {ttl_ms} ms more{wait}")


class LockNotOwned(ZoneLockError):
    """Release/extend with a lease that no longer owns the zone (expired, or taken over)."""

    def __init__(self, zone: str, holder: str, op: str) -> None:
        self.holder = holder
        super().__init__(zone, f"{op} refused: {holder}'s lease no longer owns the lock (expired or taken over)")


@dataclass(frozen=True, slots=True)
class Lease:
    zone: str
    holder: str
    token: str                 # secret of this acquisition: release/extend compare it
    fencing_token: int         # COMMAND.fencing_token; strictly increasing per zone
    ttl_ms: int
    # ms from the acquire/extend's return during which the lease surely holds (Redlock: ttl less the
    # time the majority took and the clock drift); None: not measured, take ttl_ms (one Redis, in process)
    validity_ms: int | None = None


def _check_zone(zone: str, holder: str, ttl_ms: int) -> None:
    if not zone or any(c.isspace() for c in zone) or ":" in zone:
        raise ValueError(f"zone lock: zone name must be non-empty, without blanks or ':', got {zone!r}")
    if not holder or "\n" in holder:
        raise ValueError(f"zone {zone}: holder must be a non-empty name, got {holder!r}")
    if not 1 <= ttl_ms <= 86_400_000:
        raise ValueError(f"zone {zone}: ttl_ms must be 1..86400000, got {ttl_ms}")


class ZoneLocks(ABC):
    """acquire / release / extend / holder; see the module doc."""

    retry_s = 0.02

    def acquire(self, zone: str, holder: str, ttl_ms: int = 30_000, blocking: bool = True,
                timeout_s: float | None = None) -> Lease:
        """Take the zone for ``ttl_ms``. Not blocking: raise LockHeld at once if taken; blocking: wait
        (forever, or up to ``timeout_s``, then LockHeld). Any thread."""
        _check_zone(zone, holder, ttl_ms)
        start = time.monotonic()
        while True:
            lease, held_by, ttl_left = self._try(zone, holder, ttl_ms)
            if lease is not None:
                return lease
            waited = time.monotonic() - start
            if not blocking or (timeout_s is not None and waited >= timeout_s):
                raise LockHeld(zone, held_by, ttl_left, waited if blocking else None)
            pause = self.retry_s if timeout_s is None else min(self.retry_s, timeout_s - waited)
            self._wait(max(pause, 0.0))

    @abstractmethod
    def _try(self, zone: str, holder: str, ttl_ms: int) -> tuple[Lease | None, str | None, int]:
        """One attempt: (lease, None, 0) or (None, current holder, its ttl ms left)."""

    def _wait(self, seconds: float) -> None:
        time.sleep(seconds)

    @abstractmethod
    def release(self, lease: Lease) -> None:
        """Give the zone back; LockNotOwned if the lease expired or another holder has it. Any thread."""

    @abstractmethod
    def extend(self, lease: Lease, ttl_ms: int | None = None) -> Lease:
        """Reset the lease's TTL to ``ttl_ms`` (default: its own) from now; LockNotOwned as release."""

    @abstractmethod
    def holder(self, zone: str) -> str | None:
        """Who holds the zone now (None: free). Any thread."""


def _token_value(token: str, holder: str) -> str:
    return f"{token} {holder}"       # 32 hex, a blank, the holder: the value is unique per acquisition


# KEYS: lock, fence.  ARGV: value, ttl_ms.  Returns {1, fence} or {0, value, pttl}.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if fence < now_us then fence = now_us; redis.call('SET', KEYS[2], string.format('%d', fence)) end
  return {1, fence}
end
return {0, redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1])}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RedisZoneLocks(ZoneLocks):
    """Locks shared by every gateway and workstation using the same Redis and ``prefix``."""

    def __init__(self, client: redis.Redis, prefix: str = "railgate", retry_s: float = 0.02) -> None:
        self.client, self.prefix, self.retry_s = client, prefix, retry_s
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)

    def _keys(self, zone: str) -> list[str]:
        return [f"{self.prefix}:zone:{zone}", f"{self.prefix}:fence:{zone}"]

    def _call(self, zone: str, op: str, script, keys: list[str], args: list):
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise ZoneLockError(zone, f"{op} failed on redis: {exc}") from exc

    def _try(self, zone: str, holder: str, ttl_ms: int) -> tuple[Lease | None, str | None, int]:
        token = secrets.token_hex(16)
        got = self._call(zone, "acquire", self._acquire, self._keys(zone), [_token_value(token, holder), ttl_ms])
        if got[0] == 1:
            return Lease(zone, holder, token, int(got[1]), ttl_ms), None, 0
        value = got[1].decode() if isinstance(got[1], bytes) else got[1]
        return None, value.partition(" ")[2] or None, int(got[2])

    def release(self, lease: Lease) -> None:
        if not self._call(lease.zone, "release", self._release, self._keys(lease.zone)[:1],
                          [_token_value(lease.token, lease.holder)]):
            raise LockNotOwned(lease.zone, lease.holder, "release")

    def extend(self, lease: Lease, ttl_ms: int | None = None) -> Lease:
        ttl = lease.ttl_ms if ttl_ms is None else ttl_ms
        _check_zone(lease.zone, lease.holder, ttl)
        if not self._call(lease.zone, "extend", self._extend, self._keys(lease.zone)[:1],
                          [_token_value(lease.token, lease.holder), ttl]):
            raise LockNotOwned(lease.zone, lease.holder, "extend")
        return Lease(lease.zone, lease.holder, lease.token, lease.fencing_token, ttl)

    def holder(self, zone: str) -> str | None:
        value = self.client.get(self._keys(zone)[0])
        return value.decode().partition(" ")[2] if value else None


class InProcessZoneLocks(ZoneLocks):
    """The embedded default: same semantics inside one process. ``clock`` returns seconds
    (monotonic; injected in tests to expire leases without sleeping)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._held: dict[str, tuple[str, str, float]] = {}     # zone -> (token, holder, expires_at)
        self._fence: dict[str, int] = {}

    def _live(self, zone: str) -> tuple[str, str, float] | None:
        held = self._held.get(zone)
        if held is not None and held[2] <= self._clock():
            del self._held[zone]                                 # expired
            return None
        return held

    def _try(self, zone: str, holder: str, ttl_ms: int) -> tuple[Lease | None, str | None, int]:
        with self._cond:
            held = self._live(zone)
            if held is not None:
                return None, held[1], max(0, int((held[2] - self._clock()) * 1000))
            token = secrets.token_hex(16)
            # floored at wall-clock µs like the Redis fence: still increasing after a restart
            fence = max(self._fence.get(zone, 0) + 1, time.time_ns() // 1000)
            self._fence[zone] = fence
            self._held[zone] = (token, holder, self._clock() + ttl_ms / 1000)
            return Lease(zone, holder, token, fence, ttl_ms), None, 0

    def _wait(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait(seconds)   # woken early by a release

    def _owned(self, lease: Lease, op: str) -> None:
        held = self._live(lease.zone)
        if held is None or held[0] != lease.token:
            raise LockNotOwned(lease.zone, lease.holder, op)

    def release(self, lease: Lease) -> None:
        with self._cond:
            self._owned(lease, "release")
            del self._held[lease.zone]
            self._cond.notify_all()

    def extend(self, lease: Lease, ttl_ms: int | None = None) -> Lease:
        ttl = lease.ttl_ms if ttl_ms is None else ttl_ms
        _check_zone(lease.zone, lease.holder, ttl)
        with self._cond:
            self._owned(lease, "extend")
            self._held[lease.zone] = (lease.token, lease.holder, self._clock() + ttl / 1000)
        return Lease(lease.zone, lease.holder, lease.token, lease.fencing_token, ttl)

    def holder(self, zone: str) -> str | None:
        with self._cond:
            held = self._live(zone)
            return held[1] if held else None
