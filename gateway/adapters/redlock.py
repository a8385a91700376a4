"""Redlock: switch-zone locks across N independent Redis masters, one fencing token per zone.

:class:`RedlockZoneLocks` is the :class:`~gateway.adapters.zone_locks.ZoneLocks` of a control room
whose Redis tier is N masters that do not replicate (N = 3 in docker-compose and the tests; any
N >= 1). It follows the algorithm of redis.io, "Distributed Locks with Redis", section "The
Redlock Algorithm":

* **acquire** sends the same ``SET NX PX`` value (32 random hex, a blank, the holder) to every
  master at once (one round trip: all commands are written, then all replies read, each master
  bounded by its own short socket timeout) and holds the zone iff a majority (N//2 + 1) said yes
  and the time taken is under the TTL less the clock-drift allowance (``ttl * 0.01 + 2 ms``). The
  lease's ``validity_ms`` is ``ttl - elapsed - drift``: act only within it, or extend. Any other
  outcome deletes this value on every master (compare-and-delete, also on the masters that said
  no or did not answer), so a lost round leaves nothing half-held. A blocking acquire retries
  after a random delay (``retry_s`` x 0.5..1.5) so that racing clients fall out of step.
* **release / extend** are the compare-and-delete / compare-and-pexpire scripts of
  :class:`~gateway.adapters.zone_locks.RedisZoneLocks`, sent to every master. Extend succeeds on a
  majority within the new validity, else the lease is over (what is left of it is deleted and
  :class:`LockNotOwned` raised); release is best effort on every master and raises
  :class:`LockNotOwned` only when the answers rule out a majority.
* **holder** reads every master and names the holder whose value is on a majority.
* Fewer than a majority answering raises :class:`MastersUnreachable` naming each silent master and
  its error (at once, even for a blocking acquire: waiting would not bring a master back).

The keys are those of ``RedisZoneLocks`` on each master (``<prefix>:zone:<zone>``,
``<prefix>:fence:<zone>``), so a deployment that grows from one Redis to three keeps its fences.

Fencing token: one monotonic source per zone, read and written by majority
---------------------------------------------------------------------------
On a master where the acquire's ``SET NX`` wins, the same Lua script sets the zone's fence to
``max(stored + 1, floor, that master's TIME in µs)`` (floor: the highest token this client has
seen for the zone) and returns it. The lease's token is the largest answer of the winning
majority; before ``acquire`` returns, it is written back (``SETMAX``, never lowers) to every master
that answers, and the acquire fails unless that write-back reached a majority within the validity.

Why it only increases: acquisitions of a zone are serialised by the lock, and acquisition k
stores its token on a majority before it returns, so before the lock can pass to k+1. k+1 wins
``SET NX`` on a majority too; two majorities of the same N share a master, which answers at least
token k + 1, and k+1 takes the largest answer. A master that restarts empty counts as a failed
one: with N = 3, token k went to all three masters unless one was down, so one restart is covered
(the test restarts one for real); a master down at k's write-back plus another restarting empty
before k+1 are two failures, more than N = 3 tolerates. Then the µs floor still keeps tokens
rising as long as a zone is taken less than once per µs and no master's clock steps back. And if
even that fails, the device refuses a token lower than one it has seen (ICD COMMAND_RESULT 3): a
token out of order costs a refused command, never two holders commanding a zone.

Mutual exclusion itself survives one master failing (the others still hold a majority of copies)
but, as redis.io says, not a master that comes back *empty* while a lock it carried is live and
another master is down: keep a crashed master out for longer than the longest TTL (a delayed
restart), or persist it with ``appendfsync always``. Under the clock condition above the µs floor
still gives the second grant the higher token, so the device refuses the older holder's commands
once it has seen the newer one's.

Library or our own code
-----------------------
Looked at first (PyPI, redis.io's list of implementations): *pottery* 3.0.1 (maintained) has a
Redlock over masters, but no fencing token (its ``NextId`` is a separate quorum counter, two more
round trips not tied to the acquisition), its own key layout (``redlock:<key>`` holding a bare
uuid, so :class:`LockHeld` could not name the workstation holding a zone), extensions capped at 3
by default (a selection stays open as long as the operator needs) and Redis errors swallowed into
``False`` unless asked. *redlock-py* (SPSCommerce, last release 1.0.8 in 2016) and *redlock*
(glasslion, 1.2.0 in 2015) are unmaintained; *redlock-ng* is new and has no fencing; *aioredlock*
is asyncio-only. So the algorithm is written here from the redis.io text, over redis-py (already a
dependency), in one module.

Threading: every public method may be called from any thread; the masters' redis-py pools are
thread-safe, and a round takes one connection per master from them (a forked child gets new
sockets: redis-py's pools check the pid). A blocking acquire waits in the caller's thread.
"""
from __future__ import annotations

import hashlib
import inspect
import random
import secrets
import threading
import time
from collections import Counter
from typing import Callable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from gateway.adapters.zone_locks import (_EXTEND, _RELEASE, InProcessZoneLocks, Lease, LockHeld, LockNotOwned,
                                         RedisZoneLocks, ZoneLockError, ZoneLocks, _check_zone, _token_value)

CLOCK_DRIFT_FACTOR = 0.01          # redis.io: the drift allowance is ttl * 0.01 + 2 ms
CLOCK_DRIFT_MS = 2.0
SINGLE_REDIS_TIMEOUT_S = 2.0       # zone_locks_from_urls, one URL: no other master to move on to


def drift_ms(ttl_ms: int) -> float:
    """The clock-drift allowance (ms) taken off a lease of ``ttl_ms``."""
    return ttl_ms * CLOCK_DRIFT_FACTOR + CLOCK_DRIFT_MS


class MastersUnreachable(ZoneLockError):
    """Fewer than a majority of the masters answered. ``failures``: master (host:port) -> error."""

    def __init__(self, zone: str, op: str, quorum: int, total: int, failures: dict[str, str]) -> None:
        self.failures = dict(failures)
        named = "; ".join(f"{name} ({why})" for name, why in failures.items())
        super().__init__(zone, f"{op} needs {quorum} of {total} redis masters, {total - len(failures)} answered;"
                               f" unreachable: {named}")


class MajorityTooSlow(ZoneLockError):
    """A majority said yes, but too late: the lease would already be past its validity."""

    def __init__(self, zone: str, op: str, elapsed_ms: float, ttl_ms: int) -> None:
        self.elapsed_ms = elapsed_ms
        super().__init__(zone, f"{op} took {elapsed_ms:.1f} ms to reach a majority, past the"
                               f" {ttl_ms - drift_ms(ttl_ms):.1f} ms a {ttl_ms} ms lease allows after clock drift;"
                               f" nothing is held")


class _Script:
    """A Lua body and its SHA1: sent as EVALSHA, as EVAL after NOSCRIPT (a master restarted)."""

    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body, self.sha = body, hashlib.sha1(body.encode()).hexdigest()


# KEYS: lock, fence.  ARGV: value, ttl_ms, floor.  Returns {1, fence} or {0, value, pttl}.
_ACQUIRE = _Script("""
local held = redis.call('GET', KEYS[1])
if held then return {0, held, redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TIME')
local fence = math.max((tonumber(redis.call('GET', KEYS[2])) or 0) + 1, tonumber(ARGV[3]),
                       tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('SET', KEYS[2], string.format('%d', fence))
return {1, fence}
""")
# KEYS: fence.  ARGV: fence.  Raise the stored fence to ARGV, never lower it; returns what is stored.
_SETMAX = _Script("""
local cur = tonumber(redis.call('GET', KEYS[1])) or 0
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]); return tonumber(ARGV[1]) end
return cur
""")
_GET = _Script("return redis.call('GET', KEYS[1])")
_DELETE = _Script(_RELEASE)        # compare-and-delete: 1 deleted, 0 not ours
_PEXPIRE = _Script(_EXTEND)        # compare-and-pexpire: 1 extended, 0 not ours

# redis-py < 5.3 needs a command name for get_connection; later ones warn if given one
_NAME_PARAM = inspect.signature(redis.ConnectionPool.get_connection).parameters.get("command_name")
_POOL_WANTS_NAME = _NAME_PARAM is not None and _NAME_PARAM.default is inspect.Parameter.empty


def master_client(url: str, timeout_s: float = 0.1) -> redis.Redis:
    """A client for one Redlock master: ``timeout_s`` to connect and per reply, no retries (a
    master that does not answer at once is skipped, as redis.io asks)."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry=Retry(NoBackoff(), 0))


def _name(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return kw["path"] if "path" in kw else f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


class RedlockZoneLocks(ZoneLocks):
    """Zone locks over N independent Redis masters: URLs (turned into :func:`master_client`, whose
    timeout is ``master_timeout_s``; :meth:`close` closes them) or redis-py clients (give them short
    socket timeouts and no retries, as master_client does). Every gateway and workstation using the
    same masters and ``prefix`` shares the locks. ``clock`` (monotonic seconds) times each round;
    injected in tests."""

    def __init__(self, masters: Sequence[redis.Redis | str], prefix: str = "railgate", *, retry_s: float = 0.02,
                 master_timeout_s: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        masters = list(masters)
        if not masters:
            raise ValueError("redlock: at least one redis master is needed")
        self._own = [isinstance(m, str) for m in masters]     # built here from a URL: close() closes it
        self._clients = [master_client(m, master_timeout_s) if isinstance(m, str) else m for m in masters]
        self.names = [_name(c) for c in self._clients]
        twice = sorted({n for n in self.names if self.names.count(n) > 1})
        if twice:
            raise ValueError(f"redlock: the same redis master twice ({', '.join(twice)}):"
                             " a majority needs N distinct ones")
        self.quorum = len(self._clients) // 2 + 1
        self.prefix, self.retry_s, self._clock = prefix, retry_s, clock
        self._seen: dict[str, int] = {}             # zone -> highest fencing token this object has handed out
        self._seen_lock = threading.Lock()

    def close(self) -> None:
        """Close the connections of the clients built here from URLs. Any thread, once, at the end."""
        for client, own in zip(self._clients, self._own):
            if own:
                client.connection_pool.disconnect()

    def _keys(self, zone: str) -> tuple[str, str]:
        return f"{self.prefix}:zone:{zone}", f"{self.prefix}:fence:{zone}"

    # -- one round on every master ------------------------------------------------------------------

    def _fan_out(self, script: _Script, keys: Sequence[str], args: Sequence) -> list:
        """Send ``script`` to every master, then read every reply: one round trip for all of them
        (redis.io: "multiplexing"). Returns, per master, its reply or the exception it raised. A
        connection goes back to its pool whatever happens; one whose reply is still in flight is
        closed first, so no later command reads a stale reply."""
        n = len(self._clients)
        replies: list = [None] * n
        conns: list = [None] * n
        pending = [False] * n
        try:
            for i, client in enumerate(self._clients):
                try:
                    pool = client.connection_pool
                    conns[i] = pool.get_connection("EVALSHA") if _POOL_WANTS_NAME else pool.get_connection()
                    conns[i].send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                    pending[i] = True
                except (redis.RedisError, OSError) as exc:   # refused, timed out: this master is out of the round
                    replies[i] = exc
            for i, conn in enumerate(conns):
                if not pending[i]:
                    continue
                try:
                    try:
                        replies[i] = conn.read_response()
                    except NoScriptError:                      # restarted or flushed since we last ran it
                        conn.send_command("EVAL", script.body, len(keys), *keys, *args)
                        replies[i] = conn.read_response()
                except (redis.RedisError, OSError) as exc:
                    replies[i] = exc
                pending[i] = False
        finally:
            for i, conn in enumerate(conns):
                if conn is not None:
                    if pending[i]:
                        conn.disconnect()
                    self._clients[i].connection_pool.release(conn)
        return replies

    def _failures(self, replies: list) -> dict[str, str]:
        return {name: _why(r) for name, r in zip(self.names, replies) if isinstance(r, Exception)}

    def _unreachable(self, zone: str, op: str, replies: list) -> MastersUnreachable:
        return MastersUnreachable(zone, op, self.quorum, len(self._clients), self._failures(replies))

    # -- acquire ------------------------------------------------------------------------------------

    def acquire(self, zone: str, holder: str, ttl_ms: int = 30_000, blocking: bool = True,
                timeout_s: float | None = None) -> Lease:
        """Take the zone for ``ttl_ms`` on a majority. Not blocking: LockHeld at once if another holder
        has it (or a contended round had no winner), MajorityTooSlow if the majority came too late;
        blocking: retry after random delays, forever or up to ``timeout_s``, then raise the last of
        those. MastersUnreachable at once, blocking or not. Any thread."""
        _check_zone(zone, holder, ttl_ms)
        start = time.monotonic()
        while True:
            try:
                lease, held_by, ttl_left = self._try(zone, holder, ttl_ms)
                if lease is not None:
                    return lease
                slow = None
            except MajorityTooSlow as exc:
                slow = exc
            waited = time.monotonic() - start
            if not blocking or (timeout_s is not None and waited >= timeout_s):
                if slow is not None:
                    raise slow
                raise LockHeld(zone, held_by, ttl_left, waited if blocking else None)
            pause = self.retry_s * random.uniform(0.5, 1.5)   # redis.io: a random delay desynchronises racers
            self._wait(pause if timeout_s is None else max(0.0, min(pause, timeout_s - waited)))

    def _try(self, zone: str, holder: str, ttl_ms: int) -> tuple[Lease | None, str | None, int]:
        """One Redlock round: (lease, None, 0), or (None, holder, ms until a majority can be free).
        Raises MastersUnreachable, MajorityTooSlow; in every failure our value is deleted everywhere."""
        token = secrets.token_hex(16)
        value = _token_value(token, holder)
        lock_key, fence_key = self._keys(zone)
        with self._seen_lock:
            floor = self._seen.get(zone, 0)
        start = self._clock()
        replies = self._fan_out(_ACQUIRE, (lock_key, fence_key), (value, ttl_ms, floor))
        won = [int(r[1]) for r in replies if isinstance(r, list) and r[0] == 1]
        held = [(_text(r[1]), int(r[2])) for r in replies if isinstance(r, list) and r[0] == 0]
        if len(won) >= self.quorum:
            fence = max(won)
            written = self._fan_out(_SETMAX, (fence_key,), (fence,))
            elapsed_ms = (self._clock() - start) * 1000
            validity_ms = ttl_ms - elapsed_ms - drift_ms(ttl_ms)
            reached = sum(isinstance(r, int) for r in written)
            if reached >= self.quorum and validity_ms > 0:
                with self._seen_lock:
                    self._seen[zone] = max(fence, self._seen.get(zone, 0))
                return Lease(zone, holder, token, fence, ttl_ms, int(validity_ms)), None, 0
            self._fan_out(_DELETE, (lock_key,), (value,))
            if reached < self.quorum:
                raise self._unreachable(zone, "acquire (fencing token write-back)", written)
            raise MajorityTooSlow(zone, "acquire", elapsed_ms, ttl_ms)
        if won or any(isinstance(r, Exception) for r in replies):
            # redis.io step 5: unlock every master, also those that timed out (their SET may have landed)
            self._fan_out(_DELETE, (lock_key,), (value,))
        if len(won) + len(held) < self.quorum:
            raise self._unreachable(zone, "acquire", replies)
        # won + held >= quorum > won, so someone else holds some masters: name the most common value
        other, _ = Counter(v for v, _ in held).most_common(1)[0]
        pttls = sorted((p for v, p in held if v == other), reverse=True)
        free_after = len(self._clients) - self.quorum       # the zone is free once this many masters or fewer hold it
        ttl_left = max(0, pttls[free_after]) if len(pttls) > free_after else 0
        return None, other.partition(" ")[2] or None, ttl_left

    # -- release, extend, holder ----------------------------------------------------------------------

    def release(self, lease: Lease) -> None:
        """Delete the lease's value on every master that answers (the rest expire with the TTL).
        LockNotOwned if the answers rule out a majority (expired, taken over, released twice);
        MastersUnreachable if fewer than a majority answered. Any thread."""
        replies = self._fan_out(_DELETE, self._keys(lease.zone)[:1], (_token_value(lease.token, lease.holder),))
        answered = [r for r in replies if isinstance(r, int)]
        if len(answered) < self.quorum:
            raise self._unreachable(lease.zone, "release", replies)
        if answered.count(0) > len(self._clients) - self.quorum:
            raise LockNotOwned(lease.zone, lease.holder, "release")

    def extend(self, lease: Lease, ttl_ms: int | None = None) -> Lease:
        """Reset the lease's TTL to ``ttl_ms`` (default: its own) on every master; the new lease holds
        iff a majority extended it within the new validity. Otherwise the lease is over: what is left
        of it is deleted and LockNotOwned (or MastersUnreachable / MajorityTooSlow) raised. Any thread."""
        ttl = lease.ttl_ms if ttl_ms is None else ttl_ms
        _check_zone(lease.zone, lease.holder, ttl)
        lock_key = self._keys(lease.zone)[0]
        value = _token_value(lease.token, lease.holder)
        start = self._clock()
        replies = self._fan_out(_PEXPIRE, (lock_key,), (value, ttl))
        elapsed_ms = (self._clock() - start) * 1000
        validity_ms = ttl - elapsed_ms - drift_ms(ttl)
        extended = sum(r == 1 for r in replies if isinstance(r, int))
        if extended >= self.quorum and validity_ms > 0:
            return Lease(lease.zone, lease.holder, lease.token, lease.fencing_token, ttl, int(validity_ms))
        self._fan_out(_DELETE, (lock_key,), (value,))
        if sum(isinstance(r, int) for r in replies) < self.quorum:
            raise self._unreachable(lease.zone, "extend", replies)
        if extended >= self.quorum:
            raise MajorityTooSlow(lease.zone, "extend", elapsed_ms, ttl)
        raise LockNotOwned(lease.zone, lease.holder, "extend")

    def holder(self, zone: str) -> str | None:
        """The holder whose value is on a majority of the masters (None: nobody's is). Any thread."""
        replies = self._fan_out(_GET, self._keys(zone)[:1], ())
        if sum(not isinstance(r, Exception) for r in replies) < self.quorum:
            raise self._unreachable(zone, "holder", replies)
        values = Counter(_text(r) for r in replies if r is not None and not isinstance(r, Exception))
        for value, count in values.items():
            if count >= self.quorum:
                return value.partition(" ")[2]
        return None


def zone_locks_from_urls(urls: Sequence[str], prefix: str = "railgate", *, retry_s: float = 0.02,
                         master_timeout_s: float = 0.1, clock: Callable[[], float] = time.monotonic) -> ZoneLocks:
    """The zone locks a ``control:`` setting names. No URL: the embedded in-process locks. One URL:
    :class:`RedisZoneLocks` (one atomic script per operation; a Redlock of one master would add the
    fence write-back round trip and nothing else; same keys, so a later move to three masters keeps
    the fences rising). Several: :class:`RedlockZoneLocks` over them (``master_timeout_s`` per
    master, ``retry_s`` between blocking attempts). Call from any thread, usually at start-up."""
    urls = list(urls)
    if not urls:
        return InProcessZoneLocks()
    if len(urls) == 1:
        client = redis.Redis.from_url(urls[0], socket_timeout=SINGLE_REDIS_TIMEOUT_S,
                                      socket_connect_timeout=SINGLE_REDIS_TIMEOUT_S)
        return RedisZoneLocks(client, prefix, retry_s=retry_s)
    return RedlockZoneLocks(urls, prefix, retry_s=retry_s, master_timeout_s=master_timeout_s, clock=clock)
