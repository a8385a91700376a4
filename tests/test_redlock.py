"""Redlock zone locks on three real, independent Redis masters (``redis-server`` processes the
fixture starts on loopback ports): majority semantics, masters dying and restarting empty, the
fencing token's single monotonic source, expiry, and two control servers racing for a zone."""
from __future__ import annotations

import multiprocessing
import re
import threading
import time

import pytest

from gateway.adapters.redlock import (MajorityTooSlow, MastersUnreachable, RedlockZoneLocks, drift_ms,
                                      zone_locks_from_urls)
from gateway.adapters.zone_locks import InProcessZoneLocks, LockHeld, LockNotOwned, RedisZoneLocks
from redis_masters import redis_masters  # noqa: F401

P = "railgate_t"
LOCK, FENCE = f"{P}:zone:Z1", f"{P}:fence:Z1"


def locks(masters, **kw) -> RedlockZoneLocks:
    """A client of its own (own connections), as one gateway or control server would have."""
    kw.setdefault("master_timeout_s", 2.0)        # generous: a loaded CI machine must not look like a dead master
    return RedlockZoneLocks([m.url for m in masters], P, retry_s=0.005, **kw)


def on_each(masters, key: str) -> list:
    """The key's value on every master that is running."""
    return [m.client().get(key) for m in masters if m.proc is not None]


def now_us() -> int:
    return time.time_ns() // 1000


def test_acquire_extend_release_and_holder(redis_masters):  # noqa: F811
    a, b = locks(redis_masters), locks(redis_masters)
    lease = a.acquire("Z1", "ws-a", ttl_ms=5000)
    assert lease.fencing_token > 0 and 0 < lease.validity_ms <= 5000 - drift_ms(5000)
    assert on_each(redis_masters, LOCK) == [f"{lease.token} ws-a".encode()] * 3      # on every master
    assert a.holder("Z1") == b.holder("Z1") == "ws-a"

    with pytest.raises(LockHeld) as info:
        b.acquire("Z1", "ws-b", blocking=False)
    assert info.value.zone == "Z1" and info.value.holder == "ws-a" and 4000 < info.value.ttl_ms <= 5000
    assert re.fullmatch(r"zone Z1: held by ws-a for \d{4} ms more", str(info.value))

    longer = a.extend(lease, 20_000)
    assert longer.fencing_token == lease.fencing_token and longer.ttl_ms == 20_000
    assert 19_000 < longer.validity_ms <= 20_000 - drift_ms(20_000)
    assert all(15_000 < m.client().pttl(LOCK) <= 20_000 for m in redis_masters)
    a.release(longer)
    assert a.holder("Z1") is None and on_each(redis_masters, LOCK) == [None] * 3
    with pytest.raises(LockNotOwned, match="zone Z1: release refused"):
        a.release(longer)                                   # twice: no longer owned
    assert b.acquire("Z1", "ws-b", blocking=False).fencing_token > lease.fencing_token


def test_a_copy_on_a_minority_names_nobody_and_blocks_nobody(redis_masters):  # noqa: F811
    redis_masters[0].client().set(LOCK, "f" * 32 + " ws-x", px=10_000)   # a lost round, a master's leftover
    a = locks(redis_masters)
    assert a.holder("Z1") is None
    lease = a.acquire("Z1", "ws-a", blocking=False)          # wins on the other two
    assert a.holder("Z1") == "ws-a"
    a.release(lease)


def test_blocking_acquire_gets_the_zone_when_released(redis_masters):  # noqa: F811
    a, b = locks(redis_masters), locks(redis_masters)
    lease = a.acquire("Z1", "ws-a", ttl_ms=10_000)
    with pytest.raises(LockHeld, match=r"zone Z1: held by ws-a for \d+ ms more after waiting 0\.\d\d s"):
        b.acquire("Z1", "ws-b", timeout_s=0.1)
    threading.Timer(0.1, a.release, args=(lease,)).start()
    got = b.acquire("Z1", "ws-b", timeout_s=5.0)
    assert got.holder == "ws-b" and got.fencing_token > lease.fencing_token


def test_one_master_down_at_acquire_still_acquires(redis_masters):  # noqa: F811
    redis_masters[2].kill()
    a, b = locks(redis_masters), locks(redis_masters)
    lease = a.acquire("Z1", "ws-a", ttl_ms=10_000, blocking=False)
    assert a.holder("Z1") == "ws-a"
    with pytest.raises(LockHeld, match="zone Z1: held by ws-a"):
        b.acquire("Z1", "ws-b", blocking=False)
    a.release(a.extend(lease))
    assert b.acquire("Z1", "ws-b", blocking=False).fencing_token > lease.fencing_token


def test_two_masters_down_fails_naming_them_and_holds_nothing(redis_masters):  # noqa: F811
    up, down1, down2 = redis_masters
    down1.kill()
    down2.kill()
    a = locks(redis_masters)
    t0 = time.monotonic()
    with pytest.raises(MastersUnreachable) as info:
        a.acquire("Z1", "ws-a", timeout_s=10)               # blocking, yet it fails at once
    assert time.monotonic() - t0 < 0.5                      # refused at once: no retries, no waiting
    message = str(info.value)
    assert message.startswith("zone Z1: acquire needs 2 of 3 redis masters, 1 answered; unreachable: ")
    assert down1.name in message and down2.name in message and up.name not in message
    assert set(info.value.failures) == {down1.name, down2.name}
    assert "Connection refused" in info.value.failures[down1.name]
    assert up.client().get(LOCK) is None                    # the one SET that landed was taken back
    with pytest.raises(MastersUnreachable, match="zone Z1: holder needs 2 of 3"):
        a.holder("Z1")

    down1.restart_empty()                                   # a majority again: locks work again
    assert a.acquire("Z1", "ws-a", blocking=False).holder == "ws-a"


def test_a_hung_master_costs_only_its_socket_timeout(redis_masters):  # noqa: F811
    hung = redis_masters[2]
    a = locks(redis_masters, master_timeout_s=0.2)
    assert a.holder("Z1") is None                           # connections open before the hang
    hung.pause()
    valve = threading.Timer(5.0, hung.resume)               # a broken timeout shows as a slow acquire, not a hang
    valve.start()
    try:
        t0 = time.monotonic()
        lease = a.acquire("Z1", "ws-a", ttl_ms=10_000, blocking=False)
        took_ms = (time.monotonic() - t0) * 1000
        assert 200 <= took_ms < 2000                        # acquire and fence write-back: one timeout each
        assert lease.validity_ms <= 10_000 - drift_ms(10_000) - 200
        assert a.holder("Z1") == "ws-a"
    finally:
        valve.cancel()
        hung.resume()
    a.release(lease)


def test_master_killed_mid_hold_keeps_the_lock_on_the_majority(redis_masters):  # noqa: F811
    a, b = locks(redis_masters), locks(redis_masters)
    lease = a.acquire("Z1", "ws-a", ttl_ms=10_000)
    redis_masters[0].kill()
    with pytest.raises(LockHeld) as info:
        b.acquire("Z1", "ws-b", blocking=False)
    assert info.value.holder == "ws-a" and info.value.ttl_ms > 5000
    assert b.holder("Z1") == "ws-a"

    redis_masters[0].restart_empty()                        # back, without the lock: still a minority
    with pytest.raises(LockHeld, match="held by ws-a"):
        b.acquire("Z1", "ws-b", blocking=False)
    assert redis_masters[0].client().get(LOCK) is None      # b's lost round left nothing there
    assert b.holder("Z1") == "ws-a"

    lease = a.extend(lease, 10_000)                         # the holder keeps working...
    a.release(lease)                                        # ...and gives the zone back
    assert b.acquire("Z1", "ws-b", blocking=False).fencing_token > lease.fencing_token


def test_fencing_token_rises_after_a_master_restarts_empty(redis_masters):  # noqa: F811
    # a long history: the fence far past any clock, so the µs floor cannot hide a lost counter
    ahead = now_us() + 10**12
    for m in redis_masters:
        m.client().set(FENCE, ahead)
    first = locks(redis_masters).acquire("Z1", "ws-a")
    assert first.fencing_token == ahead + 1
    locks(redis_masters).release(first)

    redis_masters[0].restart_empty()                        # the first master's counter is gone
    assert redis_masters[0].client().get(FENCE) is None
    second = locks(redis_masters).acquire("Z1", "ws-b")     # a new client: no floor of its own
    assert second.fencing_token > first.fencing_token
    assert int(redis_masters[0].client().get(FENCE)) == second.fencing_token   # and the counter is repaired


def test_fencing_token_is_written_back_to_every_master(redis_masters):  # noqa: F811
    ahead = now_us() + 10**12
    redis_masters[0].client().set(FENCE, ahead)             # only this master saw the high tokens
    a = locks(redis_masters)
    first = a.acquire("Z1", "ws-a")
    assert first.fencing_token == ahead + 1
    assert on_each(redis_masters, FENCE) == [str(ahead + 1).encode()] * 3
    a.release(first)

    redis_masters[0].restart_empty()                        # the one that had it loses it
    second = locks(redis_masters).acquire("Z1", "ws-b")
    assert second.fencing_token > first.fencing_token


def test_a_holder_that_does_not_extend_loses_the_zone(redis_masters):  # noqa: F811
    a, b = locks(redis_masters), locks(redis_masters)
    old = a.acquire("Z3", "ws-a", ttl_ms=150)
    time.sleep(0.2)
    assert a.holder("Z3") is None
    new = b.acquire("Z3", "ws-b", ttl_ms=10_000, blocking=False)
    assert new.fencing_token > old.fencing_token
    with pytest.raises(LockNotOwned, match="zone Z3: release refused: ws-a's lease no longer owns the lock"):
        a.release(old)                                      # a stale lease
    with pytest.raises(LockNotOwned, match="zone Z3: extend refused"):
        a.extend(old)
    assert b.holder("Z3") == "ws-b"                         # the stale holder touched nothing of ws-b's
    b.release(new)


def test_extend_after_losing_the_majority_gives_the_zone_up(redis_masters):  # noqa: F811
    a = locks(redis_masters)
    lease = a.acquire("Z1", "ws-a", ttl_ms=10_000)
    for m in redis_masters[:2]:                             # ws-b holds a majority now (say both restarted empty)
        m.client().set(LOCK, "f" * 32 + " ws-b", px=10_000)
    with pytest.raises(LockNotOwned, match="zone Z1: extend refused: ws-a's lease"):
        a.extend(lease)
    assert redis_masters[2].client().get(LOCK) is None      # ws-a's last copy is gone, not left to block
    assert a.holder("Z1") == "ws-b"


class JumpingClock:
    """Each reading is ``step`` seconds after the last: every round looks that slow."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_majority_reached_too_late_is_no_lock(redis_masters):  # noqa: F811
    a = locks(redis_masters, clock=JumpingClock(1.0))
    with pytest.raises(MajorityTooSlow, match=r"zone Z1: acquire took 1000\.0 ms to reach a majority, past the"
                                              r" 493\.0 ms a 500 ms lease allows after clock drift; nothing is held"):
        a.acquire("Z1", "ws-a", ttl_ms=500, blocking=False)
    assert on_each(redis_masters, LOCK) == [None] * 3
    with pytest.raises(MajorityTooSlow):
        a.acquire("Z1", "ws-a", ttl_ms=500, timeout_s=0.05)  # blocking: retried until the timeout
    assert on_each(redis_masters, LOCK) == [None] * 3
    assert locks(redis_masters).acquire("Z1", "ws-b", ttl_ms=500, blocking=False).holder == "ws-b"


def test_zone_locks_from_urls(redis_masters):  # noqa: F811
    assert isinstance(zone_locks_from_urls([], P), InProcessZoneLocks)
    single = zone_locks_from_urls([redis_masters[0].url], P)
    assert isinstance(single, RedisZoneLocks)
    lease = single.acquire("Z1", "ws-a")
    single.release(lease)

    multi = zone_locks_from_urls([m.url for m in redis_masters], P)
    assert isinstance(multi, RedlockZoneLocks) and multi.quorum == 2
    later = multi.acquire("Z1", "ws-b")                     # same keys: the fence goes on from the single Redis
    assert later.fencing_token > lease.fencing_token
    assert int(redis_masters[0].client().get(FENCE)) == later.fencing_token
    multi.release(later)
    multi.close()

    one = RedlockZoneLocks([redis_masters[1].url], P)       # N = 1 is allowed: a majority of one
    assert one.quorum == 1 and one.acquire("Z2", "ws-c").holder == "ws-c"
    with pytest.raises(ValueError, match="the same redis master twice"):
        zone_locks_from_urls([redis_masters[0].url, redis_masters[0].url, redis_masters[1].url], P)


# -- two control servers racing ---------------------------------------------------------------------

ROUNDS = 1000


def race_worker(name: str, urls: list[str], rounds: int, barrier, results) -> None:
    """One control server (its own process and connections): each round, a non-blocking acquire
    at the barrier; the winner records (round, fencing token) and releases after both tried."""
    wins, errors = [], []
    try:
        zl = RedlockZoneLocks(urls, P, master_timeout_s=2.0)
        for r in range(rounds):
            barrier.wait(30)
            lease = None
            try:
                lease = zl.acquire("Z1", name, ttl_ms=10_000, blocking=False)
                wins.append((r, lease.fencing_token))
            except LockHeld:
                pass
            barrier.wait(30)           # both attempts are over: two winners now would be two holders at once
            if lease is not None:
                zl.release(lease)
        zl.close()
    except Exception as exc:           # noqa: BLE001 - reported to the test, which fails on it
        errors.append(repr(exc))
        barrier.abort()
    results.put((name, wins, errors))


def test_two_control_servers_race_for_one_zone_1000_times(redis_masters):  # noqa: F811
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    urls = [m.url for m in redis_masters]
    procs = [ctx.Process(target=race_worker, args=(name, urls, ROUNDS, barrier, results)) for name in ("cs-1", "cs-2")]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert [errors for _, _, errors in got] == [[], []]
    wins = sorted(win for _, server_wins, _ in got for win in server_wins)
    assert [r for r, _ in wins] == list(range(ROUNDS))      # exactly one winner in every round
    tokens = [token for _, token in wins]
    assert all(x < y for x, y in zip(tokens, tokens[1:]))   # strictly increasing across rounds and servers
    assert on_each(redis_masters, LOCK) == [None] * 3       # no lost round left anything behind
