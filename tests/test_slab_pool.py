"""SlabPool and ObjectPool: bounds, stats, no steady-state allocation, thread safety."""
from __future__ import annotations

import gc
import threading
import tracemalloc

import pytest

from gateway.net.slab_pool import ObjectPool, SlabPool

ICD_CLASSES = {32: 4, 48: 4, 64: 4, 80: 4, 128: 4, 144: 8}


def test_acquire_gives_distinct_fixed_size_slabs_until_exhausted():
    pool = SlabPool({32: 3, 144: 2})
    got = [pool.acquire(32) for _ in range(3)]
    assert [i for i, _ in got] == [0, 1, 2]
    assert all(len(v) == 32 for _, v in got)
    got[0][1][:] = b"\x01" * 32
    assert bytes(got[1][1]) == bytes(32)  # slabs do not overlap
    assert pool.acquire(32) is None
    assert pool.acquire(32) is None
    s = pool.stats()["classes"][32]
    assert s == {"size": 32, "count": 3, "in_use": 3, "free": 0, "high_water": 3, "exhausted": 2}
    assert pool.stats()["classes"][144]["exhausted"] == 0


def test_release_makes_the_slab_available_again():
    pool = SlabPool({48: 2})
    i, view = pool.acquire(48)
    pool.release(48, i)
    j, view2 = pool.acquire(48)
    assert j == i and view2 is view  # the same preallocated view, handed out again
    s = pool.stats()["classes"][48]
    assert (s["in_use"], s["free"], s["high_water"]) == (1, 1, 1)


def test_double_release_and_unknown_class_are_errors():
    pool = SlabPool({64: 1})
    i, _ = pool.acquire(64)
    pool.release(64, i)
    with pytest.raises(ValueError):
        pool.release(64, i)
    with pytest.raises(KeyError):
        pool.acquire(65)
    with pytest.raises(ValueError):
        SlabPool({})
    with pytest.raises(ValueError):
        SlabPool({0: 3})


def test_acquire_for_recv_uses_the_largest_class():
    pool = SlabPool(ICD_CLASSES)
    assert pool.largest == 144 and pool.size_classes == (32, 48, 64, 80, 128, 144)
    held = []
    for _ in range(8):
        size_class, index, view = pool.acquire_for_recv()
        assert size_class == 144 and len(view) == 144
        held.append((size_class, index))
    assert pool.acquire_for_recv() is None
    assert pool.stats()["classes"][144]["exhausted"] == 1
    assert pool.acquire(32) is not None  # the small classes are separate
    for size_class, index in held:
        pool.release(size_class, index)
    assert pool.stats()["classes"][144]["in_use"] == 0


def test_recv_into_a_slab():
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        pool = SlabPool({32: 1, 144: 1})
        a.send(b"\xa5\x5a" + bytes(30))
        size_class, index, view = pool.acquire_for_recv()
        n = b.recv_into(view)
        assert n == 32 and bytes(view[:2]) == b"\xa5\x5a"
        pool.release(size_class, index)


def test_totals():
    pool = SlabPool(ICD_CLASSES)
    pool.acquire(32)
    pool.acquire(144)
    pool.acquire(144)
    total = pool.stats()["total"]
    assert total["count"] == 28 and total["in_use"] == 3 and total["free"] == 25
    assert total["high_water"] == 3 and total["exhausted"] == 0
    assert total["bytes"] == 4 * (32 + 48 + 64 + 80 + 128) + 8 * 144


def test_no_allocation_per_acquire_release_in_steady_state():
    pool = SlabPool(ICD_CLASSES)
    acquire, release, recv = pool.acquire, pool.release, pool.acquire_for_recv

    def cycles(n):
        for _ in range(n):
            i, _ = acquire(64)
            size_class, j, _ = recv()
            release(size_class, j)
            release(64, i)

    cycles(1000)  # warm-up: method caches, the loop's own objects
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cycles(100_000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 2048, f"{after - before} bytes allocated over 100k cycles"


def test_release_from_other_threads_never_duplicates_a_slab():
    pool = SlabPool({144: 16})
    handed: list = []
    lock = threading.Lock()
    stop = threading.Event()

    def releaser():
        while not stop.is_set() or handed:
            with lock:
                item = handed.pop() if handed else None
            if item is not None:
                pool.release(144, item)

    workers = [threading.Thread(target=releaser) for _ in range(3)]
    for w in workers:
        w.start()
    seen_out: set = set()
    for _ in range(20_000):
        slab = pool.acquire_for_recv()
        if slab is None:
            continue
        _, index, _ = slab
        with lock:
            assert index not in handed  # never handed out twice while held
            handed.append(index)
        seen_out.add(index)
    stop.set()
    for w in workers:
        w.join(10)
    s = pool.stats()["classes"][144]
    assert s["in_use"] == 0 and s["free"] == 16 and len(seen_out) <= 16


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
