"""ObjectPool (a device link's buffers): bounds, reuse, a failing reset, acquire and release across threads."""
from __future__ import annotations

import threading

import pytest

from gateway.net.object_pool import ObjectPool


class Buffers:
    made = 0

    def __init__(self):
        Buffers.made += 1
        self.data = bytearray(16)
        self.resets = 0

    def reset(self):
        self.data[:] = bytes(16)
        self.resets += 1


def test_object_pool_bounds_and_reuse():
    Buffers.made = 0
    pool = ObjectPool(Buffers, 2)
    a, b = pool.acquire(), pool.acquire()
    assert a is not b and Buffers.made == 2
    assert pool.acquire() is None and pool.acquire() is None
    a.data[0] = 9
    pool.release(a)
    assert a.resets == 1 and a.data[0] == 0
    c = pool.acquire()
    assert c is a and Buffers.made == 2  # reused, not made again
    assert pool.stats() == {"in_use": 2, "free": 0, "created": 2, "high_water": 2, "refused": 2, "max_items": 2}
    with pytest.raises(ValueError):
        pool.release(Buffers())
    pool.release(b)
    with pytest.raises(ValueError):
        pool.release(b)


def test_object_pool_prealloc_and_failing_reset():
    class Bad(Buffers):
        def reset(self):
            raise RuntimeError("cannot reset")

    pool = ObjectPool(Bad, 1, prealloc=1)
    assert pool.stats()["created"] == 1
    obj = pool.acquire()
    with pytest.raises(RuntimeError):
        pool.release(obj)
    fresh = pool.acquire()  # the broken one is dropped, its slot refilled
    assert fresh is not None and fresh is not obj
    with pytest.raises(ValueError):
        ObjectPool(Buffers, 1, prealloc=2)


def test_object_pool_across_threads():
    pool = ObjectPool(Buffers, 4)
    errors: list = []

    def worker():
        try:
            for _ in range(2000):
                obj = pool.acquire()
                if obj is not None:
                    pool.release(obj)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    s = pool.stats()
    assert errors == [] and s["in_use"] == 0 and s["created"] <= 4 and s["high_water"] <= 4
