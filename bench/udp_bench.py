"""UDP ingest: the gateway's datagram path beside a bare ``recvfrom_into`` loop; memory per datagram.

Three figures:

* **datagrams/s**: 500 trains' TRAIN_STATUS datagrams (seq and time patched
  into a template made by ``railcodecs.encode``, CRC recomputed) blasted by a
  sender process (``bench/load.py udp_blast``, which execs the C sender
  ``bench/udp_blaster.c``: ``sendmmsg``, 64 datagrams a call) against the
  gateway (decode, every receiver check, apply) and against a bare blocking
  ``recvfrom_into`` loop that only counts. The C sender sends more than either
  receiver takes (the rest is dropped at the receiver's socket buffer), so a
  window's rate is the receiver's capacity, not the sender's pace. The two
  servers run side by side, each with its own sender, and take turns
  (``in_turns``): one sender blasts for ``TURN_WARMUP_S`` + a ``RATE_S`` window
  while the other is paused, ``PAIRS`` pairs. Received/s over each window, and
  the receiver's CPU-µs per datagram; each pair is judged on the lower of the
  wall ratio and the capacity ratio (datagrams per CPU-second), and the row is
  the median of the pairs. History: until 2026-11-30 the windows came one after
  the other, each with a fresh server and a Python sender: the same code gave
  1.233 and 0.950 x on the wall rate in two full runs
  (bench/results/full-run-65c4261-2026-11-30.txt and the run at 15990a1); in
  turns with the Python sender the pairs' wall ratios still spanned 0.72-1.34 x,
  because neither receiver was near a full core and the rate was the Python
  sender's pace, which moves by up to 1.5 x from one turn to the next
  (bench/results/udp-turns-2026-11-30.txt). The trains' heartbeat is 10 s here, so that a paused sender's trains
  stay alive and in session through the other's turn.
* **RSS** of the gateway process before and after ``N`` datagrams (after a
  warm-up that has every train's state in place), from /proc/PID/statm.
* **retained allocations**: the gateway in this process
  (``tests/gateway_harness`` style), the same ``TRAINS`` trains, tracemalloc
  (every thread, full tracebacks). After a warm-up of ``WARMUP_S``, two equal
  windows of ``ALLOC_N`` datagrams back to back, a snapshot before, between and
  after them; each window's net blocks (signed, over every allocation site: a
  value replaced by one allocated elsewhere nets to 0). The figure is the growth
  common to both windows: the smaller of the two when both grew, the larger when
  both shrank, else 0. What the datagram path retains per datagram or per batch
  grows every window by about as much (a deliberate leak of one tuple per batch
  in ``Registry.trains_seen`` read as +1 block per batch in each); bounded state
  that is merely different at one snapshot (a counter's first step past
  CPython's small-int cache, a deque holding one block more as it turns) moves
  one window, not both. The transient objects of the hot path, freed per
  datagram, never count.
  Every snapshot is taken at an equivalent point: each train's last datagram
  alone in its batch (the gateway keeps each train's last receive time, one int
  per batch, so the number alive would otherwise follow the batching), every
  queue the datagram path feeds drained and its consumer idle (``quiesce``: the
  loops' functors, ``CouplingWorkers.pending()``, ``AlarmService.pending()`` and
  a pass of the alarm thread that took only the benchmark's own call), then a
  full collection (which empties the free lists, whose blocks tracemalloc counts)
  and the snapshot with no other thread running in between (switch interval
  raised). Not counted: the threads of ``OFF_PATH_THREADS`` (history writer,
  retention pruner, command audit relay, commands thread, lease renewal, relay
  supervisor), named by their entry frame and each justified there as running no
  datagram-path code (their SQLite readers alone move by tens of blocks a window:
  dead-cursor weakrefs, pruned every 200 cursors); and the threat sampling
  (``_off_path_functions``: a 1 s timer's copy of the UDP error counters and the
  threat monitor's window of them, by the clock, not per datagram). The row's
  note gives both windows' raw figures, the off-path ones and the batches.

Every figure runs ``TRAINS`` (500) trains; the gateway rows say how many of
them the gateway applied (its train table at the end).

Targets: gateway >= 1.0 x bare; zero retained allocations (met only at exactly
0 net blocks); RSS growth < 2 MB.
"""
from __future__ import annotations

import contextlib
import time

from bench.common import line_config, load, median, ports, row, server, wait_count, cpu_s

TRAINS = 500
RATE_S = 3.0
PAIRS, TURN_WARMUP_S = 7, 0.5
RSS_N = 10_000_000     # the full run's datagram count for the RSS figure (bounded by RSS_MAX_S)
RSS_MAX_S = 240.0
ALLOC_N = 200_000
WARMUP_S = 30.0       # > the threat monitor's 10 s window, and the base loop's counters past 256 (retained_allocations)


def in_turns(seconds: float, pairs: int, warmup: float) -> list[tuple[dict, dict]]:
    """The gateway and the bare loop side by side, each with its own sender, in turns (module doc):
    [(gateway, bare)] window by window, a pair's two windows one after the other."""
    kinds = ("gateway", "bare_udp")
    cfgs = {k: line_config(0, TRAINS, train_hb_ms=10_000) for k in kinds}
    with contextlib.ExitStack() as stack:
        srvs = {k: stack.enter_context(server(k, cfgs[k])) for k in kinds}
        lds = {k: stack.enter_context(load("udp_blast", port=ports(cfgs[k])["udp"], trains=TRAINS, turns=True,
                                           native=True, max_s=pairs * 2 * (seconds + warmup) + 60))
               for k in kinds}
        out = []
        for _ in range(pairs):
            got = {k: _turn(srvs[k], lds[k], seconds, warmup) for k in kinds}
            out.append((got["gateway"], got["bare_udp"]))
        return out


def _turn(srv, ld, seconds: float, warmup: float) -> dict:
    """One server's turn: its sender resumed, ``warmup``, a window of ``seconds``, paused."""
    ld.ask("resume")
    time.sleep(warmup)
    n0, c0, t0 = srv.ask("stats")["datagrams"], cpu_s(srv.pid), time.monotonic()
    time.sleep(seconds)
    st = srv.ask("stats")
    n1, c1, t1 = st["datagrams"], cpu_s(srv.pid), time.monotonic()
    ld.ask("pause")
    n = n1 - n0
    return {"dps": n / (t1 - t0), "cpu_us": (c1 - c0) / max(n, 1) * 1e6, "trains_applied": st.get("trains")}


def rss_growth(n: int, max_s: float) -> dict:
    cfg = line_config(0, TRAINS)
    with server("gateway", cfg) as srv, load("udp_blast", port=ports(cfg)["udp"], trains=TRAINS,
                                             max_s=max_s + 60) as ld:
        ld.proc.stdin.write("go\n")
        ld.proc.stdin.flush()
        warm, _ = wait_count(srv, "datagrams", 200_000 if n > 100_000 else 2_000, 60, poll_s=0.05)
        rss0, t0 = srv.rss(), time.monotonic()
        got, t1 = wait_count(srv, "datagrams", warm + n, max_s, poll_s=0.5)
        rss1 = srv.rss()
        ld.proc.stdin.write("stop\n")
        ld.proc.stdin.flush()
    return {"n": got - warm, "rss0": rss0, "rss1": rss1, "seconds": t1 - t0}


#: tracemalloc frames kept per allocation: enough that every traceback reaches its thread's entry frame
TRACE_FRAMES = 128
#: Threads whose allocations are not counted, by the file of their entry frame (the thread's target, the
#: oldest frame after threading.py's). None of them runs datagram-path code (gateway/net, codecs,
#: gateway/line, gateway/coupling) or takes an input from it; each works on its own clock, and the SQLite
#: readers among them hold up to 200 dead-cursor weakrefs per connection (CPython's sqlite3 prunes them
#: every 200 cursors: +1 block per query, then a drop), a sawtooth that follows their poll clock, not the
#: datagrams. The match is on the entry frame only: a function of these files called from a counted
#: thread is counted, and a traceback too deep to reach its entry frame is counted.
OFF_PATH_THREADS = {
    # HistoryWriter._run (history and live-table writers): alarm journal rows into SQLite/MySQL/Redis,
    # every poll_s or when the alarm thread has appended (the alarm thread itself is counted)
    "alarms/history_writer.py",
    # RetentionPruner._run: deletes journal and history rows past their retention, on its own timer
    "alarms/retention.py",
    # AuditRelay._run (command-audit-relay): the command audit journal to Kafka, polled every 0.5 s
    "gateway/commands/audit.py",
    # CommandStage._run (commands): operator commands, device results over TCP and DEVICE_COMM_LOST;
    # ticks every 0.5 s. Train datagrams never reach it
    "gateway/app/command_stage.py",
    # IdentityLease._renew_loop (lease-renew): renews the gateway's identity lock
    "gateway/adapters/identity_lease.py",
    # RelaySupervisor._supervise: watches the alarm relay child process (which is not traced)
    "alarms/kafka/relay_process.py",
}


def _off_path_functions() -> list[tuple[str, int, int]]:
    """(file, first line, last line) of the functions whose allocations, and their callees', are not counted.

    The threat sampling: ``AlarmStage.sample_threats`` (a base loop timer, once a second: a copy of the
    UDP endpoint's error counters, queued to the alarm thread) and what ``ThreatMonitor.sample`` keeps
    of it there (the samples of one threat window: 11 or 12 of them, by a millisecond of the timer's
    jitter against the 10 s window, in one or two deque blocks as the deque turns). It runs by the
    clock, not per datagram, and is bounded by the window; only its position in that cycle differs
    between snapshots, by up to 4 blocks. Anything it leads to outside these functions (an alarm
    raised and journaled) is counted.
    """
    from alarms.sources import ThreatMonitor
    from gateway.app.alarm_stage import AlarmStage
    out = []
    for fn in (AlarmStage.sample_threats, ThreatMonitor.sample):
        code = fn.__code__
        lines = [line for _, _, line in code.co_lines() if line is not None]
        out.append((code.co_filename, code.co_firstlineno, max(lines)))
    return out


def _entry_file(tb) -> str | None:
    """The file of the thread's entry frame of a traceback (oldest first), None when it may be cut off."""
    if len(tb) >= TRACE_FRAMES:
        return None
    for fr in tb:
        if not fr.filename.endswith("/threading.py"):
            return fr.filename
    return None


def _off_path(tb, functions) -> bool:
    """Allocated by a thread of :data:`OFF_PATH_THREADS` or under one of ``functions`` (_off_path_functions)."""
    entry = _entry_file(tb)
    if entry is not None and any(entry.endswith("/" + f) for f in OFF_PATH_THREADS):
        return True
    return any(fr.filename == file and first <= fr.lineno <= last for fr in tb for file, first, last in functions)


def _common(a: int, b: int) -> int:
    """The growth two windows share: the smaller when both grew, the larger when both shrank, else 0."""
    if a > 0 and b > 0:
        return min(a, b)
    if a < 0 and b < 0:
        return max(a, b)
    return 0


def _site(tb) -> str:
    """``file:line`` of a traceback's innermost frame in this repository (else its innermost frame)."""
    from bench.common import ROOT
    root = str(ROOT) + "/"
    fr = next((f for f in reversed(tb) if f.filename.startswith(root)), tb[-1])
    return f"{fr.filename.rsplit('/', 1)[-1]}:{fr.lineno}"


def quiesce(gw, timeout_s: float = 30.0) -> None:
    """Wait until the cross-thread queues the datagram path feeds are empty and their consumers idle.

    The base loop and the IO loops (the UDP endpoint's among them): a functor queued now runs after
    the pass in progress (a batch counted in ``rx_datagrams`` is judged in the same handler call)
    and after every functor queued before it. The coupling workers: ``CouplingWorkers.pending()`` 0,
    every report submitted has been ingested. The alarm thread (threat samples of the UDP counters
    from a base loop timer, train events): ``AlarmService.pending()`` 0, then a ``call`` whose pass
    took nothing else (``stats``: one more pass, one more input), so what that thread holds between
    passes is the same at every snapshot. Repeated until one round finds all of it so: a timer of
    one may have fed another meanwhile. Run it with the switch interval raised (see ``snapshot`` in
    :func:`retained_allocations`): each thread then runs until it blocks, never stopped mid-pass.
    """
    import threading

    deadline = time.monotonic() + timeout_s
    loops = [gw.base] + [lp for lp in gw.pool.all_loops() if lp is not gw.base]
    service = gw.alarms.service if gw.alarms is not None else None

    def until(ok) -> None:
        while not ok():
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway's queues did not drain: no quiescent point to measure at")
            time.sleep(0.002)

    while True:
        for loop in loops:
            passed = threading.Event()
            loop.queue_in_loop(passed.set)
            until(passed.is_set)
        until(lambda: gw.coupling_workers.pending() == 0)
        alone = True
        if service is not None:
            until(lambda: service.pending() == 0)
            before = (service.stats["batches"], service.stats["inputs"])
            service.call(lambda engine: None).result(max(0.1, deadline - time.monotonic()))
            alone = (service.stats["batches"], service.stats["inputs"]) == (before[0] + 1, before[1] + 1)
        if (alone and all(lp.stats()["pending_functors"] == 0 for lp in loops)
                and gw.coupling_workers.pending() == 0 and (service is None or service.pending() == 0)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway's queues did not drain: no quiescent point to measure at")


def retained_allocations(n: int, warmup_s: float = WARMUP_S, trains: int = TRAINS) -> dict:
    """Blocks retained per ``n`` datagrams from ``trains`` trains through a gateway in this process.

    Two windows of ``n`` datagrams each (and ``trains`` more before each snapshot, one by one), back
    to back after the warm-up; a snapshot at an equivalent, quiescent point (:func:`quiesce`) before,
    between and after them. ``net_blocks``: the growth common to the two windows' net blocks over the
    counted threads (:func:`_common`: what grows with the datagrams grows in both). Returns
    ``{"net_blocks", "datagrams", "per_window", "batches", "windows", "off_path", "trains_applied",
    "top"}``: ``windows`` the two windows' raw net blocks, ``batches`` their recvmmsg batches,
    ``off_path`` the net blocks of the threads of :data:`OFF_PATH_THREADS` (not counted), ``top``
    when ``net_blocks`` is not 0 the sites that grew most in both windows (else in the second), for
    the note: where to look when the target is not met.
    """
    import gc
    import socket
    import struct
    import sys
    import threading
    import tracemalloc
    import zlib

    from gateway.app import config
    from gateway.app.runtime import Gateway
    from railcodecs import TrainStatus, encode
    from bench.common import GATEWAY_ID, TRAIN_BASE

    cfg = config.parse(line_config(0, trains), "bench")
    ready = threading.Event()
    holder = {}

    def main():
        gw = holder["gw"] = Gateway(cfg, admin=False)
        gw.stop_grace_s = 0.1
        gw.start()
        ready.set()
        gw.run()

    # Tracing starts before the gateway is built, and a full collection (which empties the free lists)
    # follows: a block allocated before the tracing is not traced, and one on a free list (floats,
    # tuples, lists, dicts) is reused for new objects, so a long-lived value replaced now and then (a
    # timer's deadline, a threat sample) would otherwise turn from untraced to traced (+1) or back (-1)
    # for as long as such blocks circulate.
    tracemalloc.start(TRACE_FRAMES)
    gc.collect()
    th = threading.Thread(target=main, daemon=True)
    th.start()
    ready.wait(30)
    gw = holder.get("gw")
    if gw is None:
        tracemalloc.stop()
        raise RuntimeError("the gateway did not start within 30 s")
    port = gw.ports["udp"]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(("127.0.0.1", port))
    now = int(time.time() * 1000)
    tmpl = [bytearray(encode(TrainStatus(1, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0), src=TRAIN_BASE + j, dst=GATEWAY_ID,
                             seq=1, time_ms=now)) for j in range(trains)]
    seq = [0] * trains

    def datagram(j):
        seq[j] += 1
        buf = tmpl[j]
        struct.pack_into(">IQ", buf, 10, seq[j], int(time.time() * 1000))
        struct.pack_into(">I", buf, 60, zlib.crc32(memoryview(buf)[:-4]))
        tx.send(buf)

    def send(count):
        target = gw.udp.rx_datagrams + count
        deadline = time.monotonic() + 120
        sent = 0
        while sent < count and time.monotonic() < deadline:
            datagram(sent % trains)
            sent += 1
            if sent % 200 == 0:  # stay behind the receiver: no kernel drops, every datagram counted
                while gw.udp.rx_datagrams < target - count + sent - 100 and time.monotonic() < deadline:
                    time.sleep(0.0005)
        while gw.udp.rx_datagrams < target and time.monotonic() < deadline:
            time.sleep(0.01)
        return gw.udp.rx_datagrams - (target - count)

    def one_by_one():
        # each train's last datagram alone in its batch: the gateway keeps, per train, objects of the batch
        # that last brought it (the receive time in Registry.trains_seen: one int per batch), so how many
        # are alive depends on how the last datagrams were batched; this makes it one per train at every
        # snapshot (an equivalent point), not a figure that varies with the receiver's timing
        deadline = time.monotonic() + 60
        for j in range(trains):
            target = gw.udp.rx_datagrams + 1
            datagram(j)
            while gw.udp.rx_datagrams < target and time.monotonic() < deadline:
                time.sleep(0.0001)

    def snapshot():
        one_by_one()
        # With the switch interval raised, a thread runs until it blocks (it is never stopped mid-pass
        # holding a pass's objects), and none runs while this one does not block: from the end of
        # quiesce() through the collection (a full one also empties CPython's free lists, whose blocks
        # tracemalloc counts as allocated) to the snapshot, every thread stays where quiesce() left it.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(60.0)
        try:
            quiesce(gw)
            gc.collect()
            return tracemalloc.take_snapshot()
        finally:
            sys.setswitchinterval(interval)

    try:
        started = time.monotonic()
        send(5_000)  # warm-up: trains' state, counters and caches in place
        # per-train values replaced on every datagram (the train's state tuple, its seq bitmap) are then
        # traced in every snapshot, not counted as new; the warm-up lasts one threat window
        # (alarms.sources.ThreatLimits.window_s, one sample a second per link), whose bounded history
        # would otherwise count as growth, and the base loop's counters (about ten steps a second) are
        # past CPython's small-int cache (256), one block each, once; a full collection between the
        # steps (see above: free lists) ends the circulation of blocks made before the tracing
        while time.monotonic() - started < warmup_s:
            gc.collect()
            send(2_000)
        # Each window's datagrams as send() counts them (and one_by_one()'s), its recvmmsg batches as
        # differences: ints made in this file's frames, filtered out below. ``mark`` (an int the UDP
        # step made) is held across every snapshot, one in each: the same count in all three.
        snaps, got, batches = [], [], []
        mark = gw.udp.rx_batches
        for k in range(3):  # one call site: what the snapshots' own calls leave has one traceback
            if k:
                got.append(send(n))
            snaps.append(snapshot())
            if k:
                got[-1] += trains  # the one_by_one() datagrams before the snapshot
                batches.append(gw.udp.rx_batches - mark)
            mark = gw.udp.rx_batches
        tracemalloc.stop()
        flt = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "*/threading.py"),
               tracemalloc.Filter(False, __file__)]        # the sender's own seq counters
        snaps = [s.filter_traces(flt) for s in snaps]
        windows, off_path, sites = [0, 0], [0, 0], [{}, {}]
        functions = _off_path_functions()
        for k in range(2):
            for d in snaps[k + 1].compare_to(snaps[k], "traceback"):
                if not d.count_diff:
                    continue
                if _off_path(d.traceback, functions):
                    off_path[k] += d.count_diff
                else:
                    windows[k] += d.count_diff
                    sites[k][d.traceback] = d.count_diff
        net = _common(*windows)
        top = []
        if net:  # where: the sites that grew (or shrank) in both windows, else those of the second window
            by_site: dict[str, int] = {}
            for tb in sites[0].keys() & sites[1].keys():
                by_site[_site(tb)] = by_site.get(_site(tb), 0) + _common(sites[0][tb], sites[1][tb])
            if not any(by_site.values()):
                for tb, c in sites[1].items():
                    by_site[_site(tb)] = by_site.get(_site(tb), 0) + c
            top = sorted(((k, v) for k, v in by_site.items() if v), key=lambda kv: -abs(kv[1]))[:3]
        return {"net_blocks": net, "datagrams": sum(got), "per_window": min(got), "batches": batches,
                "windows": windows, "off_path": off_path, "trains_applied": len(gw.ctx.objects.trains),
                "top": "; ".join(f"{site} {c:+d}" for site, c in top)}
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        gw.stop()
        th.join(10)
        tx.close()


def run(smoke: bool = False) -> list[dict]:
    secs = 0.5 if smoke else RATE_S
    turns = in_turns(secs, 1 if smoke else PAIRS, 0.2 if smoke else TURN_WARMUP_S)
    gw_runs, bare_runs = [g for g, _ in turns], [b for _, b in turns]
    gw = {k: median([r[k] for r in gw_runs]) for k in ("dps", "cpu_us")}
    bare = {k: median([r[k] for r in bare_runs]) for k in ("dps", "cpu_us")}
    pair = [(g["dps"] / b["dps"], b["cpu_us"] / g["cpu_us"]) for g, b in turns]
    judged = median([min(w, c) for w, c in pair])
    wall, capacity = median([w for w, _ in pair]), median([c for _, c in pair])
    rss = rss_growth(10_000 if smoke else RSS_N, 20 if smoke else RSS_MAX_S)
    growth_mb = (rss["rss1"] - rss["rss0"]) / 2**20
    allocs = retained_allocations(1_000, 0.0) if smoke else retained_allocations(ALLOC_N)
    applied = min(r["trains_applied"] or 0 for r in gw_runs)
    net = allocs["net_blocks"]
    return [
        row("UDP ingest: gateway", round(gw["dps"]), "datagrams/s",
            note=f"{TRAINS} trains ({applied} applied by the gateway), median of {len(gw_runs)} windows of {secs:g} s "
                 f"in turns with the bare loop's"),
        row("UDP ingest: gateway CPU", round(gw["cpu_us"], 2), "CPU-µs/datagram"),
        row("UDP ingest: bare recvfrom_into loop", round(bare["dps"]), "datagrams/s"),
        row("UDP ingest: bare loop CPU", round(bare["cpu_us"], 2), "CPU-µs/datagram"),
        row("UDP ingest ratio gateway / bare", round(judged, 3), "x", ">= 1.0", judged >= 1.0,
            note=f"median of the pairs' lower of wall and CPU capacity (medians: wall {wall:.3f} x, capacity "
                 f"{capacity:.3f} x); pairs " + ", ".join(f"{min(w, c):.3f}" for w, c in pair)),
        row("UDP gateway RSS growth", round(growth_mb, 2), "MB", "< 2", growth_mb < 2,
            note=f"{TRAINS} trains, over {rss['n']:,} datagrams in {rss['seconds']:.0f} s; "
                 f"RSS {rss['rss0'] / 2**20:.1f} -> {rss['rss1'] / 2**20:.1f} MB"),
        row("UDP gateway retained allocations", net, "net blocks", "0", net == 0,
            note=f"tracemalloc, every thread but the off-path ones: net blocks retained per window of "
                 f"{allocs['per_window']:,} datagrams from {TRAINS} trains ({allocs['trains_applied']} applied), "
                 f"the growth common to two windows back to back (raw {allocs['windows'][0]:+d} / "
                 f"{allocs['windows'][1]:+d} over {allocs['batches'][0]:,} / {allocs['batches'][1]:,} batches; "
                 f"off-path threads {allocs['off_path'][0]:+d} / {allocs['off_path'][1]:+d}, not counted), "
                 f"{net / max(allocs['per_window'], 1):.2g} per datagram"
                 + (f"; most: {allocs['top']}" if allocs["top"] else "")),
    ]


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(smoke="--smoke" in sys.argv), indent=1))
