"""The compiled dispatch loads the events ahead into the cache (``_reactor.Poller._prefetch``, the
``READER_API.prefetch`` depths in ``codecs/_reader_api.pxi``).

At line load each readiness event is a link cold in the cache; while one event is handled, the
next six are loaded one level of pointers each. Prefetching has no observable effect but time, so
these tests check that it happens at all:

* over real links, a dispatch of several events asks for cache lines (``Poller.prefetches``), and
  so does the apply of a status frame's items (``ObjectTable.prefetch``, counted in
  ``FastLink.prefetches``);
* the built extension still holds the prefetch instructions. GCC 12 at -O2 deleted every call of
  the first version's helper (a void function whose only effect is ``__builtin_prefetch`` counts
  as free of side effects), and nothing but the machine code showed it
  (bench/results/prefetch-dropped-by-gcc-2026-11-30.txt).
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

from gateway_harness import KEY_257, Device, RunningGateway, line_config, wait_until
from railcodecs import TrackSections, speedups

pytestmark = pytest.mark.skipif(not speedups.available(), reason="the compiled core is not built or RAILGATE_PURE=1")


def _function_bodies(path: str, names: dict[str, str]) -> dict[str, list[str]]:
    """The disassembled instructions of the functions whose symbol matches each regex in ``names``."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True,
                         check=True).stdout
    bodies: dict[str, list[str]] = {key: [] for key in names}
    current = None
    for line in out.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = next((key for key, rx in names.items() if re.search(rx, head.group(1))), None)
        elif current is not None and line.strip():
            bodies[current].append(line)
    return bodies


def _prefetches(body: list[str]) -> int:
    """How many of the instructions are prefetches (prefetcht0, prefetchw, ...)."""
    return sum(bool(re.match(r"^\s*[0-9a-f]+:\s+prefetch", ins)) for ins in body)


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("objdump") is None,
                    reason="reads x86-64 machine code with binutils' objdump")
def test_the_built_extensions_hold_their_prefetch_instructions():
    from gateway.net import _reactor
    from railcodecs import _core
    reactor = _function_bodies(_reactor.__file__, {"dispatch": r"Poller_\d+dispatch$",
                                                   "helper": r"Poller__prefetch$"})
    core = _function_bodies(_core.__file__, {"prefetch": r"_reader_prefetch$", "table": r"ObjectTable_prefetch$"})
    assert reactor["dispatch"] and core["prefetch"] and core["table"], "the functions were not found in the extensions"
    # stages 0 to 2 are 8 prefetches (the slot, the reader's two lines, its connection, protocol and
    # buffer, the FastLink's first two lines): inlined into dispatch, or in the helper dispatch calls
    # should a compiler keep it out of line; the depths behind READER_API are in _core
    in_dispatch = _prefetches(reactor["dispatch"])
    calls_helper = any("call" in ins and "Poller__prefetch" in ins for ins in reactor["dispatch"])
    assert in_dispatch >= 8 or (calls_helper and _prefetches(reactor["helper"]) >= 8)
    assert _prefetches(core["prefetch"]) >= 15  # depths 1 to 3: 8 + 6 + 1
    assert _prefetches(core["table"]) >= 2


def test_a_dispatch_of_several_links_events_loads_the_ones_ahead():
    """Four UP links on one loop sending together: the dispatches that handle their events ask for
    cache lines for the events behind each one."""
    speedups.use("compiled")
    with RunningGateway(line_config(io_threads=1, heartbeat_ms=3000)) as gw:
        devs = [Device(gw.ports[net], dev_id=dev_id, net=i, hb_ms=3000, key=key)
                for dev_id, key in ((257, KEY_257), (258, None)) for i, net in enumerate("AB")]
        for dev in devs:
            dev.hello()
        wait_until(lambda: sum(lk.alive for lk in gw.ctx.links) == 4, what="four links up")
        loop = next(iter(gw.ctx.links)).loop
        poller = loop._poller
        senders = [gw.ctx.receiver.senders[257], gw.ctx.receiver.senders[258]]
        for dev in devs[::2]:  # the objects exist: every later frame is the FastLink's
            dev.send(TrackSections(((111, 0),)), seq=1)
        wait_until(lambda: all(s.applied == 1 for s in senders), what="the first frames")
        before = poller.prefetches
        # each round's four frames go out at once, so a poll finds several links readable
        for seq in range(2, 202):
            frames = [dev.encode(TrackSections(((111, seq % 2),)), seq=seq) for dev in devs]
            for dev, data in zip(devs, frames):
                dev.sock.sendall(data)
        wait_until(lambda: all(s.applied == 201 for s in senders), what="every frame applied")
        assert poller.prefetches > before
        for dev in devs:
            dev.close()


def test_a_status_frames_apply_loads_its_items_slots_and_entries_first():
    """A frame read on its own (the one-recv way, the FastLink's run with the GIL) asks for each
    item's index slot, then for the entry of each item the table holds (``ObjectTable.prefetch``)."""
    speedups.use("compiled")
    with RunningGateway(line_config(heartbeat_ms=3000)) as gw:
        dev = Device(gw.ports["A"], hb_ms=3000)
        dev.hello()
        (link,) = wait_until(lambda: [lk for lk in gw.ctx.links if lk.alive] or None, what="link up")
        sender = gw.ctx.receiver.senders[258]
        for seq in range(1, 21):
            dev.send(TrackSections(((111, seq % 2), (112, 0), (113, 1))), seq=seq)
            wait_until(lambda: sender.applied == seq, what=f"frame {seq} applied")
        fast = link.protocol.fast
        assert fast.frames == 20 and fast.frames_nogil == 0
        # the first frame's three objects are new (slots only); every later frame: three slots, three entries
        assert fast.prefetches == 3 + 19 * 6
        dev.close()
