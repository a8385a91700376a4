"""Load generators, one per process: ``python bench/load.py MODE JSON``.

Each mode prepares everything first (connections, HELLOs, pre-encoded frames
from ``railcodecs.encode``), prints ``{"ready": ...}`` and waits for ``go`` on
stdin, so the measured window contains sending only. Every loop is bounded
in count and in time (``max_s``).

* ``tcp_blast``  ``devices`` devices on nets A and B (2 links each); every link
  gets HELLO, then ``frames`` sequenced status frames (TRACK_SECTIONS, SIGNALS,
  SWITCHES in turn; the same seq on both nets, as ICD section 6 says) with a
  HEARTBEAT every ``hb_every`` frames. One thread per link, ``sendall``.
* ``tcp_bursts`` the same devices and bytes, on the links of several servers at
  once (``servers``: a list of ports), the stream cut into ``bursts`` equal
  parts: ``burst S J`` sends part J on server S's links (one waiting thread per
  link) and answers at once; the bench polls that server's count. Servers take
  turns in short bursts, so they are compared on the same machine a fraction of
  a second apart (bench/scaling_bench.py).
* ``line``       ``devices`` x 2 links at ``rate_hz`` frames/s each (every 5th a
  HEARTBEAT) plus ``trains`` trains at ``train_hz`` TRAIN_STATUS datagrams/s,
  for ``seconds``, paced on a 10 ms tick from one thread.
  ``faults``: see :func:`status_frame`. With ``turns``: no ``go``; it sends
  between ``resume`` and ``pause`` (each answered), its pacing clock stopped
  in between, until ``seconds`` of sending or ``max_s``; anything else ends it.
* ``udp_blast``  TRAIN_STATUS datagrams from ``trains`` trains round-robin as fast
  as one thread can send, seq and time patched into a template made by
  ``encode`` (CRC recomputed), until ``stop``/``quit``, ``count`` or ``max_s``. With ``turns``: no
  ``go``; it blasts between ``resume`` and ``pause`` (each answered) until ``max_s``; anything else ends it.

Status frames change every object in every frame (the gateway applies and
reports each change), within the values of a line at work: sections free,
occupied or locked, switches normal, reverse or moving, any aspect. With
``faults`` (``line`` mode only) sections also pass through FAULT and switches
through LOST, each object once every four frames: an alarm storm of ~50,000
raise/clear inputs a second at line scale, which the alarm bench runs on its
own (its "object churn" row). The ingest comparisons use the line at work:
their uvloop and asyncio servers have no alarm pipeline to feed.
"""
from __future__ import annotations

import json
import os
import queue
import select
import socket
import struct
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import GATEWAY_ID, DEVICE_BASE, TRAIN_BASE, handshake, raise_nofile  # noqa: E402
from railcodecs import Heartbeat, Signals, Switches, TrackSections, TrainStatus, encode  # noqa: E402


def _say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _wait_go() -> None:
    for line in sys.stdin:
        if line.strip() == "go":
            return
        if line.strip() == "quit":
            break
    sys.exit(0)


SECTIONS_AT_WORK, SWITCHES_AT_WORK = (0, 1, 3), (0, 1, 2)    # free/occupied/locked; normal/reverse/moving
SECTIONS_ALL, SWITCHES_ALL = (0, 1, 2, 3), (0, 1, 2, 3)         # with FAULT (2) and LOST (3)


def status_frame(dev: int, seq: int, time_ms: int, faults: bool = False) -> bytes:
    """One status frame (the type rotates with seq; see the module doc for the values)."""
    k = seq % 3
    sec, sw = (SECTIONS_ALL, SWITCHES_ALL) if faults else (SECTIONS_AT_WORK, SWITCHES_AT_WORK)
    if k == 0:
        msg = TrackSections(tuple((100 + i, sec[(seq + i) % len(sec)]) for i in range(10)))
    elif k == 1:
        msg = Signals(tuple((200 + i, (seq + i) % 6) for i in range(6)))
    else:
        msg = Switches(tuple((300 + i, sw[(seq + i) % len(sw)]) for i in range(3)))
    return encode(msg, src=dev, dst=GATEWAY_ID, seq=seq, time_ms=time_ms)


def device_stream(dev: int, frames: int, hb_every: int, time_ms: int, first: int = 1) -> bytes:
    """The bytes after the handshake (HELLO, HELLO_ACK, SESSION_CONFIRM), identical on net A and net B
    (bench devices are unsigned: no session key): status frames ``first`` .. ``first + frames - 1``,
    each ``hb_every``-th followed by a HEARTBEAT (numbered on from the stream's start)."""
    out = []
    for seq in range(first, first + frames):
        out.append(status_frame(dev, seq, time_ms))
        if seq % hb_every == 0:
            out.append(encode(Heartbeat(seq // hb_every), src=dev, dst=GATEWAY_ID, seq=0, time_ms=time_ms))
    return b"".join(out)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def tcp_blast(p: dict) -> None:
    now = int(time.time() * 1000)
    bodies = [device_stream(DEVICE_BASE + d, p["frames"], p.get("hb_every", 50), now) for d in range(p["devices"])]
    per_link = 2 + p["frames"] + p["frames"] // p.get("hb_every", 50)  # HELLO and SESSION_CONFIRM too
    links = []
    for d in range(p["devices"]):
        for net, port in ((0, p["ports"]["A"]), (1, p["ports"]["B"])):
            sock = connect(port)
            handshake(sock, DEVICE_BASE + d, net, p.get("hb_ms", 500))
            links.append((sock, bodies[d]))
    _say({"ready": True, "frames_total": per_link * len(links), "bytes_total": sum(len(b) for _, b in links)})
    _wait_go()

    def send(sock, data):
        try:
            sock.sendall(data)
        except OSError:
            pass

    threads = [threading.Thread(target=send, args=link) for link in links]
    for t in threads:
        t.start()
    for t in threads:
        t.join(p.get("max_s", 120))
    _say({"sent": True})
    _wait_go()  # hold the links open until told (quit/EOF ends the process)


def tcp_bursts(p: dict) -> None:
    now = int(time.time() * 1000)
    hb_every, per = p.get("hb_every", 50), p["frames"] // p["bursts"]
    if per % hb_every:
        raise SystemExit(f"tcp_bursts: frames per burst ({per}) must be a multiple of hb_every ({hb_every})")
    parts = [[device_stream(DEVICE_BASE + d, per, hb_every, now, first=1 + j * per) for j in range(p["bursts"])]
             for d in range(p["devices"])]
    servers = []   # per server: one (queue, thread) per link
    for prt in p["servers"]:
        links = []
        for d in range(p["devices"]):
            for net, port in ((0, prt["A"]), (1, prt["B"])):
                sock = connect(port)
                handshake(sock, DEVICE_BASE + d, net, p.get("hb_ms", 500))
                q = queue.SimpleQueue()
                threading.Thread(target=_send_parts, args=(sock, q, d), daemon=True).start()
                links.append(q)
        servers.append(links)
    per_link = per + per // hb_every
    _say({"ready": True, "frames_per_burst": per_link * 2 * p["devices"], "handshake_frames": 2 * 2 * p["devices"]})
    deadline = time.monotonic() + p.get("max_s", 600)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit" or time.monotonic() > deadline:
            break
        if cmd[0] == "burst":
            s, j = int(cmd[1]), int(cmd[2])
            for q in servers[s]:
                q.put((parts, j))
            _say({"burst": j, "server": s})
    sys.exit(0)


def _send_parts(sock: socket.socket, q, d: int) -> None:
    """A tcp_bursts link's thread: send device ``d``'s part of each burst put on ``q``."""
    while True:
        parts, j = q.get()
        try:
            sock.sendall(parts[d][j])
        except OSError:
            return


def line(p: dict) -> None:
    devices, trains, seconds = p["devices"], p["trains"], p["seconds"]
    rate, train_hz = p.get("rate_hz", 10), p.get("train_hz", 5)
    hb_ms = p.get("hb_ms", 500)
    n_frames = int(seconds * rate) + rate
    now = int(time.time() * 1000)
    # per device: frames k = 0..n-1, every 5th a HEARTBEAT (2/s at 10 frames/s: the 500 ms heartbeat)
    streams = []
    for d in range(devices):
        dev, seq, hb, frames = DEVICE_BASE + d, 0, 0, []
        for k in range(n_frames):
            if k % 5 == 4:
                hb += 1
                frames.append(encode(Heartbeat(hb), src=dev, dst=GATEWAY_ID, seq=0, time_ms=now))
            else:
                seq += 1
                frames.append(status_frame(dev, seq, now, faults=p.get("faults", False)))
        streams.append(frames)
    socks = []
    for d in range(devices):
        pair = []
        for net, port in ((0, p["ports"]["A"]), (1, p["ports"]["B"])):
            s = connect(port)
            handshake(s, DEVICE_BASE + d, net, hb_ms)
            s.setblocking(False)
            pair.append(s)
        socks.append(pair)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", p["ports"]["udp"]))
    tmpl = [bytearray(encode(TrainStatus(1, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0), src=TRAIN_BASE + j, dst=GATEWAY_ID,
                             seq=1, time_ms=now)) for j in range(trains)]
    _say({"ready": True, "links": 2 * devices, "trains": trains})
    turns = p.get("turns", False)
    if not turns:
        _wait_go()
    tick = 0.01
    ticks_per_period = round(1 / (rate * tick))        # a device sends once every 10 ticks at 10 Hz
    train_ticks = round(1 / (train_hz * tick))          # a train sends once every 20 ticks at 5 Hz
    t0 = time.monotonic()
    end = t0 + seconds
    sent = dropped = dgrams = 0
    train_seq = [0] * trains
    step = 0
    paused = turns    # with turns: sending only between "resume" and "pause", the pacing's clock stopped between
    deadline = t0 + p.get("max_s", seconds + 60)
    stdin = sys.stdin
    while turns or time.monotonic() < end:
        if turns:
            if select.select([stdin], [], [], tick if paused else 0)[0]:
                cmd = stdin.readline().strip()
                if cmd == "pause":
                    paused = True
                    _say({"paused": sent, "datagrams": dgrams})
                elif cmd == "resume":
                    paused = False
                    t0 = time.monotonic() - step * tick   # on from here, no catching up
                    _say({"resumed": sent})
                else:
                    break
            if time.monotonic() > deadline or step * tick >= seconds:
                break
            if paused:
                continue
        slot = step % ticks_per_period
        k = step // ticks_per_period
        if k >= n_frames:
            break
        for d in range(slot, devices, ticks_per_period):
            data = streams[d][k]
            for s in socks[d]:
                try:
                    s.send(data)
                    sent += 1
                except (BlockingIOError, InterruptedError):
                    dropped += 1
                except OSError:
                    dropped += 1
        tslot = step % train_ticks
        now_ms = int(time.time() * 1000)
        for j in range(tslot, trains, train_ticks):
            train_seq[j] += 1
            buf = tmpl[j]
            struct.pack_into(">IQ", buf, 10, train_seq[j], now_ms)
            struct.pack_into(">I", buf, len(buf) - 4, zlib.crc32(memoryview(buf)[:-4]))
            try:
                udp.send(buf)
                dgrams += 1
            except OSError:
                pass
        step += 1
        delay = t0 + step * tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    _say({"sent_frames": sent, "send_dropped": dropped, "datagrams": dgrams, "seconds": time.monotonic() - t0})
    if turns:
        sys.exit(0)
    _wait_go()


def udp_blast(p: dict) -> None:
    trains = p["trains"]
    now = int(time.time() * 1000)
    tmpl = [bytearray(encode(TrainStatus(1, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0), src=TRAIN_BASE + j, dst=GATEWAY_ID,
                             seq=1, time_ms=now)) for j in range(trains)]
    if p.get("native"):
        _exec_native_blaster(p, tmpl)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", p["port"]))
    _say({"ready": True})
    turns = p.get("turns", False)
    if not turns:
        _wait_go()
    limit, deadline = p.get("count", 10**12), time.monotonic() + p.get("max_s", 60)
    seq = [0] * trains
    sent = 0
    pack, crc32, send = struct.pack_into, zlib.crc32, udp.send
    views = [memoryview(b)[:-4] for b in tmpl]
    stdin = sys.stdin.fileno()
    now_ms = int(time.time() * 1000)
    paused = turns      # with turns: blasting only between "resume" and "pause" (each answered)
    while sent < limit:
        if turns:
            if select.select([stdin], [], [], 0.05 if paused else 0)[0]:
                cmd = sys.stdin.readline().strip()
                if cmd in ("pause", "resume"):
                    paused = cmd == "pause"
                    _say({cmd + "d": sent})
                else:           # "stop", or EOF: the bench is done with this sender
                    break
            if time.monotonic() > deadline:
                break
            if paused:
                continue
            now_ms = int(time.time() * 1000)
        for j in range(trains):
            s = seq[j] = seq[j] + 1
            buf = tmpl[j]
            pack(">IQ", buf, 10, s, now_ms)
            pack(">I", buf, 60, crc32(views[j]))
            try:
                send(buf)
            except OSError:
                pass
        sent += trains
        if turns:
            continue
        now_ms = int(time.time() * 1000)
        if time.monotonic() > deadline or select.select([stdin], [], [], 0)[0]:
            break
    _say({"sent": sent})
    _wait_go()


def _exec_native_blaster(p: dict, tmpl: list[bytearray]) -> None:
    """Become ``bench/udp_blaster.c`` (turns mode only): the same datagrams, sent with sendmmsg at a pace
    neither receiver keeps up with. Built with the machine's gcc on first use, kept in the temp directory
    under the source's hash."""
    if not p.get("turns"):
        raise SystemExit("udp_blast: native is for turns mode only")
    if {len(t) for t in tmpl} != {64}:
        raise SystemExit(f"udp_blast: the native sender takes 64-byte frames, not {sorted({len(t) for t in tmpl})}")
    import hashlib
    import subprocess
    import tempfile
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "udp_blaster.c")
    with open(src, "rb") as f:
        tag = hashlib.sha256(f.read()).hexdigest()[:12]
    binary = os.path.join(tempfile.gettempdir(), f"railgate-udp-blaster-{tag}")
    if not os.access(binary, os.X_OK):
        tmp = f"{binary}.{os.getpid()}"
        subprocess.run(["gcc", "-O2", "-Wall", "-o", tmp, src], check=True)
        os.replace(tmp, binary)
    fd, frames = tempfile.mkstemp(prefix="railgate-udp-frames-")
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(tmpl))
    sys.stdout.flush()
    os.execv(binary, [binary, str(p["port"]), frames, str(len(tmpl)), str(p.get("max_s", 60))])


def main() -> None:
    raise_nofile()
    from bench.common import read_arg
    mode, params = sys.argv[1], read_arg(sys.argv[2])
    {"tcp_blast": tcp_blast, "tcp_bursts": tcp_bursts, "line": line, "udp_blast": udp_blast}[mode](params)


if __name__ == "__main__":
    main()
