"""The servers under test, one per process: ``python bench/servers.py KIND JSON``.

KIND is one of:

* ``gateway``  the real gateway (``gateway.app.runtime.Gateway``, every ICD check
  and the state apply), io_threads from the config;
* ``limit``    the practical limit of a Python receiver: one edge-triggered
  epoll loop that reads big, unpacks each header and checks each CRC, nothing
  else;
* ``uvloop``   a uvloop ``BufferedProtocol`` server running the project's own
  ``StreamDecoder`` and ``Receiver`` checks and ``ObjectState.apply`` (and a
  datagram protocol for trains), i.e. the same work on a C event loop;
* ``asyncio``  a plain asyncio ``StreamReader`` server as a typical integrator
  writes it (``readexactly`` header, then body; CRC; the project's payload
  parser and Receiver checks);
* ``bare_udp`` a blocking ``recvfrom_into`` loop that only counts datagrams.

Protocol on stdin/stdout (JSON lines): the server prints ``{"ready": true}``
once listening; ``stats`` answers ``{"frames": N, "datagrams": M}``; ``quit``
stops it. A control thread reads stdin, so the serving thread never blocks on it.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.common import raise_nofile  # noqa: E402


def _say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _control(stats, stop) -> None:
    """Serve stdin commands until quit/EOF (runs in its own thread)."""
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            _say(stats())
        elif cmd == "quit":
            break
    stop()


async def _serve_until_quit(cfg, listen, stats) -> None:
    """Shared by the asyncio-style servers: listen on nets A and B, say ready, serve until quit."""
    import asyncio
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    servers = [await listen(loop, net, port) for net, port in ((0, cfg.gateway.net_a.port),
                                                                (1, cfg.gateway.net_b.port))]
    threading.Thread(target=_control, args=(stats, lambda: loop.call_soon_threadsafe(stop.set)),
                     daemon=True).start()
    _say({"ready": True})
    await stop.wait()
    for s in servers:
        s.close()


def _checks_setup(cfg):
    from gateway.line.object_state import ObjectState
    from railcodecs import Receiver
    receiver = Receiver(cfg.gateway.id, cfg.senders(), max_age_ms=cfg.gateway.max_age_ms,
                        train_reset_ms=3 * cfg.trains.heartbeat_ms)
    return receiver, ObjectState()


# -- (a) the gateway --------------------------------------------------------------------

def run_gateway(cfg) -> None:
    from gateway.app.runtime import Gateway
    gw = Gateway(cfg, admin=False, own_process=True)   # as `gateway run`
    gw.stop_grace_s = 0.2
    gw.start()

    def stats():
        links = gw.ctx.links_snapshot()
        errors: dict = {}
        for link in links:
            for k, v in link.checks.errors.items():
                errors[k] = errors.get(k, 0) + v
        return {"frames": sum(link.checks.rx_frames for link in links), "errors": errors,
                "datagrams": gw.udp.rx_datagrams if gw.udp is not None else 0,
                "trains": len(gw.ctx.objects.trains),   # trains whose state the gateway applied
                "udp_errors": dict(gw.udp_checks.errors),   # datagrams refused by the receiver, by reason
                "links": len(links), "alive": sum(1 for link in links if link.alive)}

    threading.Thread(target=_control, args=(stats, gw.stop), daemon=True).start()
    _say({"ready": True})
    prof_path = os.environ.get("BENCH_PROFILE")  # cProfile of the loop thread (set io_threads: 0)
    if prof_path:
        import cProfile
        prof = cProfile.Profile()
        prof.runcall(gw.run)
        prof.dump_stats(prof_path)
    else:
        gw.run()


# -- (b) the practical limit ----------------------------------------------------------

def run_limit(cfg) -> None:
    import select
    import socket
    import struct
    import zlib

    from railcodecs import HelloAck, encode

    head = struct.Struct(">HBBBBHHIQH")
    crc_s = struct.Struct(">I")
    # ICD 1.1 devices wait for a HELLO_ACK before their SESSION_CONFIRM: one canned answer (no checks here)
    hello_ack = encode(HelloAck(HelloAck.OK, 500, 0, 1), src=cfg.gateway.id, dst=0, seq=0, time_ms=0)
    ep = select.epoll()
    listeners = {}
    for port in (cfg.gateway.net_a.port, cfg.gateway.net_b.port):
        ls = socket.create_server(("127.0.0.1", port), backlog=4096)
        ls.setblocking(False)
        listeners[ls.fileno()] = ls
        ep.register(ls.fileno(), select.EPOLLIN | select.EPOLLET)
    conns: dict[int, list] = {}  # fd -> [sock, buf, mv, fill]
    count = [0]
    quit_flag = [False]

    def stats():
        return {"frames": count[0], "datagrams": 0}

    threading.Thread(target=_control, args=(stats, lambda: quit_flag.__setitem__(0, True)), daemon=True).start()
    _say({"ready": True})
    frames = 0
    while not quit_flag[0]:
        for fd, mask in ep.poll(0.2):
            ls = listeners.get(fd)
            if ls is not None:
                while True:
                    try:
                        s, _ = ls.accept()
                    except BlockingIOError:
                        break
                    s.setblocking(False)
                    buf = bytearray(256 << 10)
                    conns[s.fileno()] = [s, buf, memoryview(buf), 0]
                    ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
                continue
            c = conns.get(fd)
            if c is None:
                continue
            s, buf, mv, fill = c
            while True:
                want = len(buf) - fill
                try:
                    n = s.recv_into(mv[fill:])
                except BlockingIOError:
                    break
                if n == 0:
                    ep.unregister(fd)
                    s.close()
                    del conns[fd]
                    break
                fill += n
                pos = 0
                while fill - pos >= 24:
                    sync, _v, mtype, flags, _r, _s, _d, _q, _tm, length = head.unpack_from(buf, pos)
                    if sync != 0xA55A:
                        pos += 1
                        continue
                    total = 28 + length + (16 if flags & 1 else 0)
                    if fill - pos < total:
                        break
                    end = pos + total - 4
                    if zlib.crc32(mv[pos:end]) == crc_s.unpack_from(buf, end)[0]:
                        frames += 1
                        if mtype == 0x01:
                            s.send(hello_ack)
                    pos += total
                if pos:
                    buf[:fill - pos] = buf[pos:fill]
                    fill -= pos
                c[3] = fill
                count[0] = frames
                if n < want:
                    break
    os._exit(0)


def _session_nonce() -> int:
    """ICD 1.1: a HELLO_ACK's random session nonce (never 0)."""
    return int.from_bytes(os.urandom(8), "big") or 1


# -- (c) uvloop BufferedProtocol --------------------------------------------------------

def run_uvloop(cfg) -> None:
    import asyncio

    import uvloop

    from railcodecs import (GATEWAY_RX_TYPES, UDP_TYPES, FrameError, Hello, HelloAck, NO_MAC, SessionConfirm,
                            StreamDecoder, decode_datagram, encode)
    receiver, objects = _checks_setup(cfg)
    apply = objects.apply
    gw_id = cfg.gateway.id
    count = [0, 0]

    class Link(asyncio.BufferedProtocol):
        def __init__(self, net: int) -> None:
            self.net = net
            self.buf = bytearray(64 << 10)
            self.mv = memoryview(self.buf)
            self.dec = StreamDecoder(types=GATEWAY_RX_TYPES)
            self.checks = receiver.new_link("uv", net)
            self.transport = None

        def connection_made(self, transport) -> None:
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.mv

        def buffer_updated(self, nbytes: int) -> None:
            dec, checks = self.dec, self.checks
            dec.feed(self.mv[:nbytes])
            now_ms = int(time.time() * 1000)
            n = 0
            for ev in dec.events():
                n += 1
                if isinstance(ev, FrameError):
                    checks.count(ev.reason)
                elif isinstance(ev.message, Hello):
                    result = receiver.hello(checks, ev, now_ms)
                    nonce = checks.session_nonce = _session_nonce() if result == HelloAck.OK else 0
                    self.transport.write(encode(HelloAck(result, ev.message.heartbeat_ms, now_ms, nonce),
                                                src=gw_id, dst=ev.src, seq=0, time_ms=now_ms))
                elif isinstance(ev.message, SessionConfirm):
                    receiver.confirm(checks, ev, now_ms)
                else:
                    receiver.check(checks, ev, now_ms, apply=apply)
            count[0] += n

        def connection_lost(self, exc) -> None:
            receiver.link_closed(self.checks)

    class Trains(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.checks = receiver.new_link("udp")

        def datagram_received(self, data, addr) -> None:
            count[1] += 1
            ev = decode_datagram(data, types=UDP_TYPES, mac=NO_MAC)
            if isinstance(ev, FrameError):
                self.checks.count(ev.reason)
            else:
                receiver.check_datagram(self.checks, ev, int(time.time() * 1000), apply=apply)

    async def listen(loop, net: int, port: int):
        return await loop.create_server(lambda: Link(net), "127.0.0.1", port, backlog=4096)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Trains, local_addr=("127.0.0.1", cfg.gateway.udp.port))
        await _serve_until_quit(cfg, listen, lambda: {"frames": count[0], "datagrams": count[1]})

    uvloop.run(main())
    os._exit(0)


# -- (d) plain asyncio StreamReader -----------------------------------------------------

def run_asyncio(cfg) -> None:
    import asyncio
    import struct
    import zlib

    from railcodecs import GATEWAY_RX_TYPES, NO_MAC, Hello, HelloAck, Reason, SessionConfirm, encode
    from railcodecs.frame import finish
    receiver, objects = _checks_setup(cfg)
    apply = objects.apply
    gw_id = cfg.gateway.id
    count = [0]
    head_s = struct.Struct(">HBBBBHHIQH")

    async def handle(reader, writer, net: int) -> None:
        checks = receiver.new_link("aio", net)
        try:
            while True:
                head = await reader.readexactly(24)
                sync, version, _t, flags, reserved, *_rest, length = head_s.unpack(head)
                if sync != 0xA55A or version != 1 or reserved or flags & ~1 or length > 4096:
                    checks.count(Reason.BAD_SYNC)  # an integrator's resync: drop the connection
                    break
                rest = await reader.readexactly(length + (16 if flags & 1 else 0) + 4)
                frame_bytes = head + rest
                count[0] += 1
                if zlib.crc32(frame_bytes[:-4]) != int.from_bytes(frame_bytes[-4:], "big"):
                    continue
                now_ms = int(time.time() * 1000)
                ev = finish(memoryview(frame_bytes), 0, len(frame_bytes), NO_MAC, GATEWAY_RX_TYPES)
                if isinstance(ev, tuple):
                    continue
                if isinstance(ev.message, Hello):
                    result = receiver.hello(checks, ev, now_ms)
                    nonce = checks.session_nonce = _session_nonce() if result == HelloAck.OK else 0
                    writer.write(encode(HelloAck(result, ev.message.heartbeat_ms, now_ms, nonce), src=gw_id,
                                        dst=ev.src, seq=0, time_ms=now_ms))
                elif isinstance(ev.message, SessionConfirm):
                    receiver.confirm(checks, ev, now_ms)
                else:
                    receiver.check(checks, ev, now_ms, apply=apply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            receiver.link_closed(checks)
            writer.close()

    async def listen(loop, net: int, port: int):
        return await asyncio.start_server(lambda r, w: handle(r, w, net), "127.0.0.1", port, backlog=4096)

    asyncio.run(_serve_until_quit(cfg, listen, lambda: {"frames": count[0], "datagrams": 0}))
    os._exit(0)


# -- bare UDP ------------------------------------------------------------------------

def run_bare_udp(cfg) -> None:
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as the gateway's udp_socket()
    sock.bind(("127.0.0.1", cfg.gateway.udp.port))
    buf = bytearray(144)
    count = [0]
    threading.Thread(target=_control, args=(lambda: {"frames": 0, "datagrams": count[0]},
                                            lambda: os._exit(0)), daemon=True).start()
    _say({"ready": True})
    recv = sock.recvfrom_into
    n = 0
    while True:  # blocking: one syscall per datagram; quit ends the process from the control thread
        recv(buf)
        n += 1
        if not n & 0x3F:
            count[0] = n


KINDS = {"gateway": run_gateway, "limit": run_limit, "uvloop": run_uvloop, "asyncio": run_asyncio,
         "bare_udp": run_bare_udp}


def main() -> None:
    raise_nofile()
    from gateway.app import config
    from bench.common import read_arg
    kind, arg = sys.argv[1], read_arg(sys.argv[2])
    cfg = config.parse(arg["cfg"], "bench")
    import logging
    logging.basicConfig(level=logging.WARNING)
    KINDS[kind](cfg)


if __name__ == "__main__":
    main()
