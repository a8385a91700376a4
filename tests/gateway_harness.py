"""Run a real gateway on loopback ports in a thread, and talk to it as devices and trains do."""
from __future__ import annotations

import copy
import itertools
import pathlib
import socket
import threading
import time

import yaml

from gateway.app import config
from railcodecs import (DEVICE_RX_TYPES, Frame, Hello, HelloAck, MacPolicy, SessionConfirm, StreamDecoder, encode,
                        session_key)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "config" / "demo-line.yaml").read_text())
KEY_257 = bytes.fromhex(DEMO["devices"][0]["mac_key"])
#: every test device's HELLO carries a new device nonce (distinct, not random: tests are reproducible)
_DEVICE_NONCES = itertools.count(0x5EED_0000_0000_0001)


def line_config(**gateway_overrides) -> config.Config:
    """The demo line on ephemeral loopback ports, with fast heartbeats."""
    d = copy.deepcopy(DEMO)
    gw = d["gateway"]
    gw["listen"] = {"net_a": {"host": "127.0.0.1", "port": 0}, "net_b": {"host": "127.0.0.1", "port": 0},
                    "udp": {"host": "127.0.0.1", "port": 0}}
    gw["admin"] = {"host": "127.0.0.1", "port": 0}
    gw.setdefault("io_threads", 2)
    gw["heartbeat_ms"] = 100
    gw["hello_timeout_ms"] = 1000
    gw.update(gateway_overrides)
    return config.parse(d, "test-line")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a gateway in another process, which cannot bind 0)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def process_line(state_dir: str, **gateway_overrides) -> tuple[dict, dict]:
    """``(raw line dict, ports)`` for a `gateway run` subprocess: the demo line with its state in
    ``state_dir`` on fixed free loopback ports; ``ports`` has keys A, B, udp and admin."""
    raw = line_config(state_dir=state_dir, **gateway_overrides).raw
    ports = {k: free_port() for k in ("A", "B", "udp", "admin")}
    raw["gateway"]["listen"] = {"net_a": {"host": "127.0.0.1", "port": ports["A"]},
                                "net_b": {"host": "127.0.0.1", "port": ports["B"]},
                                "udp": {"host": "127.0.0.1", "port": ports["udp"]}}
    raw["gateway"]["admin"] = {"host": "127.0.0.1", "port": ports["admin"]}
    return raw, ports


class QuietRelay:
    """Stands in for the Kafka relay process (``relay_factory=QuietRelay``): for tests about what
    reaches the journal, the history or the admin API, not Kafka."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def stats(self) -> dict:
        return {"delivered": 0}


class RunningGateway:
    """``with RunningGateway(cfg) as gw:`` — the gateway runs in its own thread meanwhile."""

    def __init__(self, cfg: config.Config, admin: bool = False, clock_ms=None, alarms: bool = False,
                 relay_factory=None) -> None:
        """``alarms=True`` runs the alarm stage too (set ``gateway.state_dir`` to a temporary folder)."""
        self.cfg, self.admin, self.clock_ms, self.alarms = cfg, admin, clock_ms, alarms
        self.relay_factory = relay_factory
        self.gw = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="gateway-main", daemon=True)

    def _main(self) -> None:
        from gateway.app.runtime import Gateway
        try:
            self.gw = Gateway(self.cfg, admin=self.admin, clock_ms=self.clock_ms, alarms=self.alarms,
                              relay_factory=self.relay_factory)
            self.gw.stop_grace_s = 0.3  # test devices do not answer CLOSE while the test is not reading
            self.gw.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        self.gw.run()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        return self.gw

    def __exit__(self, *exc) -> None:
        self.gw.stop()
        self._thread.join(10)
        assert not self._thread.is_alive(), "gateway did not stop"


class Device:
    """A blocking test device on one net speaking ICD 1.1: HELLO, HELLO_ACK, SESSION_CONFIRM, frames
    (signed with the session key once it has one), and what the gateway sends back."""

    def __init__(self, port: int, dev_id: int = 258, kind: int = 1, net: int = 0, hb_ms: int = 100,
                 key: bytes | None = None) -> None:
        self.id, self.kind, self.net, self.hb_ms, self.key = dev_id, kind, net, hb_ms, key
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.decoder = StreamDecoder(types=DEVICE_RX_TYPES, mac=MacPolicy(key=key))
        self.received: list = []
        self._cursor = 0
        self.hb = 0
        self.device_nonce = next(_DEVICE_NONCES)
        self.session_nonce: int | None = None   # from the gateway's HELLO_ACK
        self.session_key: bytes | None = None   # K_s, on a keyed link, from the HELLO_ACK on
        self.sent: list[bytes] = []             # every frame sent, as on the wire (for replay tests)

    def send(self, message, seq: int = 0, time_ms: int | None = None, src: int | None = None) -> None:
        data = self.encode(message, seq, time_ms, src)
        self.sent.append(data)
        self.sock.sendall(data)

    def encode(self, message, seq: int = 0, time_ms: int | None = None, src: int | None = None) -> bytes:
        key = self.key if self.session_key is None or isinstance(message, Hello) else self.session_key
        return encode(message, src=self.id if src is None else src, dst=1, seq=seq,
                      time_ms=int(time.time() * 1000) if time_ms is None else time_ms, mac_key=key)

    def hello(self, confirm: bool = True) -> Frame:
        """HELLO, wait for the HELLO_ACK and (``confirm``, when it says OK) answer SESSION_CONFIRM."""
        self.send(Hello(self.kind, self.net, self.hb_ms, "TEST-1", self.device_nonce))
        ack = self.wait_for("HELLO_ACK")
        if confirm and ack.message.result == HelloAck.OK:
            self.confirm()
        return ack

    def confirm(self, device_nonce: int | None = None, session_nonce: int | None = None) -> None:
        """SESSION_CONFIRM, with this link's nonces unless told otherwise."""
        self.send(SessionConfirm(self.device_nonce if device_nonce is None else device_nonce,
                                 self.session_nonce if session_nonce is None else session_nonce))

    def _learn_session(self, ack) -> None:
        if ack.message.result != HelloAck.OK:
            return
        self.session_nonce = ack.message.session_nonce
        if self.key is not None:
            self.session_key = session_key(self.key, self.device_nonce, self.session_nonce)
            self.decoder.set_session_key(self.session_key)

    def heartbeat(self) -> None:
        from railcodecs import Heartbeat
        self.hb += 1
        self.send(Heartbeat(self.hb))

    def read(self, timeout: float = 0.5) -> list:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return []
        except ConnectionResetError:
            data = b""
        if not data:
            self.decoder.end_of_stream()
            self.received.append("EOF")
            return ["EOF"]
        self.decoder.feed(data)
        got = []
        for ev in self.decoder.events():  # one at a time: the HELLO_ACK switches the key for the next
            got.append(ev)
            if getattr(ev, "name", None) == "HELLO_ACK":
                self._learn_session(ev)
        self.received.extend(got)
        return got

    def wait_for(self, name: str, timeout: float = 5.0):
        """The next event called ``name`` after the last one returned (reading more as needed)."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self._cursor, len(self.received)):
                ev = self.received[i]
                if ev == name or getattr(ev, "name", None) == name:
                    self._cursor = i + 1
                    return ev
            if "EOF" in self.received or time.monotonic() > deadline:
                break
            self.read(0.1)
        raise AssertionError(f"no {name} within {timeout} s; got {[getattr(e, 'name', e) for e in self.received]}")

    def close(self) -> None:
        self.sock.close()


def wait_until(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{what} not reached within {timeout} s")


def read_alarm_events(cfg: config.Config, keep, done, *, timeout: float = 60, what: str = "alarm events") -> list:
    """Follow the day's alarm topic on the gateway's embedded broker (address from its state_dir),
    collecting the decoded event messages for which ``keep(event)`` holds, until ``done(events)``."""
    from alarms.kafka.consumer import AlarmTableConsumer
    bootstrap = (pathlib.Path(cfg.gateway.state_dir) / "kafka.bootstrap").read_text().strip()
    consumer = AlarmTableConsumer(bootstrap, cfg.pipeline.alarms.topic_prefix, cfg.timezone,
                                  gateway_id=cfg.gateway.id, replay=True)
    events: list = []
    try:
        def collected():
            events.extend(c.event for c in consumer.poll(0.5) if c.kind == "event" and keep(c.event))
            return done(events)
        wait_until(collected, timeout=timeout, what=what)
    finally:
        consumer.close()
    return events
