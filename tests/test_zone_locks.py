"""Switch-zone locks on the real Redis and in process: the same cases on both back ends."""
from __future__ import annotations

import threading
import time

import pytest

from gateway.adapters.zone_locks import InProcessZoneLocks, LockHeld, LockNotOwned, RedisZoneLocks
from test_history_fixtures import redis_prefix  # noqa: F401


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["redis", "inprocess"])
def locks(request):
    """(locks, expire(lease)): expire makes a lease's TTL run out (Redis: real wait; in process: clock)."""
    if request.param == "redis":
        client, prefix = request.getfixturevalue("redis_prefix")
        yield RedisZoneLocks(client, prefix, retry_s=0.005), lambda lease: time.sleep(lease.ttl_ms / 1000 + 0.05)
    else:
        clock = FakeClock()

        def expire(lease):
            clock.now += lease.ttl_ms / 1000 + 0.001
        yield InProcessZoneLocks(clock), expire


def test_acquire_release_and_holder(locks):
    zl, _ = locks
    lease = zl.acquire("Z1", "ws-a", ttl_ms=5000)
    assert zl.holder("Z1") == "ws-a" and lease.zone == "Z1" and lease.fencing_token > 0
    with pytest.raises(LockHeld) as info:
        zl.acquire("Z1", "ws-b", blocking=False)
    assert info.value.zone == "Z1" and info.value.holder == "ws-a" and 0 < info.value.ttl_ms <= 5000
    assert "zone Z1: held by ws-a" in str(info.value)
    assert zl.acquire("Z2", "ws-b").zone == "Z2"          # other zones are independent
    zl.release(lease)
    assert zl.holder("Z1") is None
    with pytest.raises(LockNotOwned, match="zone Z1: release refused"):
        zl.release(lease)                                   # twice: no longer owned


def test_blocking_acquire_times_out_naming_the_holder(locks):
    zl, _ = locks
    zl.acquire("Z1", "ws-a", ttl_ms=10_000)
    t0 = time.monotonic()
    with pytest.raises(LockHeld, match=r"zone Z1: held by ws-a .* after waiting 0\.[12]"):
        zl.acquire("Z1", "ws-b", timeout_s=0.15)
    assert 0.15 <= time.monotonic() - t0 < 1.0


def test_blocking_acquire_gets_the_zone_when_released(locks):
    zl, _ = locks
    lease = zl.acquire("Z1", "ws-a")
    threading.Timer(0.1, zl.release, args=(lease,)).start()
    got = zl.acquire("Z1", "ws-b", timeout_s=5.0)
    assert got.holder == "ws-b" and got.fencing_token > lease.fencing_token


def test_mutual_exclusion_under_8_threads(locks):
    zl, _ = locks
    inside, overlaps, fences, lock = [0], [0], [], threading.Lock()

    def workstation(name: str) -> None:
        for _ in range(15):
            lease = zl.acquire("Z7", name, ttl_ms=10_000, timeout_s=30)
            with lock:
                inside[0] += 1
                overlaps[0] += inside[0] > 1
                fences.append(lease.fencing_token)
            time.sleep(0.001)                               # "command the zone"
            with lock:
                inside[0] -= 1
            zl.release(lease)

    threads = [threading.Thread(target=workstation, args=(f"ws-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert overlaps[0] == 0 and len(fences) == 120
    assert fences == sorted(fences) and len(set(fences)) == 120   # in acquisition order, strictly increasing


def test_expiry_and_an_expired_holder_cannot_touch_the_new_lock(locks):
    zl, expire = locks
    old = zl.acquire("Z3", "ws-a", ttl_ms=100)
    expire(old)
    assert zl.holder("Z3") is None
    new = zl.acquire("Z3", "ws-b", ttl_ms=10_000, blocking=False)
    assert new.fencing_token > old.fencing_token
    with pytest.raises(LockNotOwned, match="zone Z3: release refused: ws-a's lease"):
        zl.release(old)
    with pytest.raises(LockNotOwned, match="zone Z3: extend refused"):
        zl.extend(old)
    assert zl.holder("Z3") == "ws-b"
    zl.release(new)


def test_extend_keeps_the_lock_past_its_first_ttl(locks):
    zl, expire = locks
    lease = zl.acquire("Z4", "ws-a", ttl_ms=200)
    longer = zl.extend(lease, 10_000)
    assert longer.ttl_ms == 10_000 and longer.fencing_token == lease.fencing_token
    expire(lease)                                           # the first 200 ms have passed
    assert zl.holder("Z4") == "ws-a"
    zl.release(longer)


def test_fencing_tokens_increase_across_instances_sharing_redis(redis_prefix):  # noqa: F811
    client, prefix = redis_prefix
    a, b = RedisZoneLocks(client, prefix), RedisZoneLocks(client, prefix)
    tokens = []
    for zl in (a, b, a, b):
        lease = zl.acquire("Z9", "ws")
        tokens.append(lease.fencing_token)
        zl.release(lease)
    assert tokens == sorted(tokens) and len(set(tokens)) == 4
    client.delete(f"{prefix}:fence:Z9")                     # Redis lost its data: still no step back
    lease = a.acquire("Z9", "ws")
    assert lease.fencing_token > tokens[-1]


def test_bad_arguments_name_the_zone(locks):
    zl, _ = locks
    with pytest.raises(ValueError, match="zone name"):
        zl.acquire("", "ws")
    with pytest.raises(ValueError, match="zone Z1: ttl_ms"):
        zl.acquire("Z1", "ws", ttl_ms=0)
