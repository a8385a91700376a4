"""One gateway per identity (issue 13 item 5): the state-dir lock file, the Redis leases of the prefix and
the gateway id, the one-line refusal of `gateway run`, release at stop, a SIGKILLed holder's lease expiring,
and a lease lost to another holder while running. Real Redis (a random prefix per test), real lock files."""
from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
import yaml
from gateway_harness import DEMO, QuietRelay, RunningGateway, free_port, line_config, wait_until
from test_gateway_process import fetch_status

from gateway.app import config
from gateway.app.identity import IdentityHeld

GATEWAY = os.path.join(os.path.dirname(sys.executable), "gateway")
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def rds():
    client = redis.Redis(host="127.0.0.1", port=6379)
    made: list[str] = []
    yield client, made
    for pattern in made:
        for k in client.scan_iter(pattern):
            client.delete(k)
    client.close()


def _raw(state_dir, *, redis_prefix=None, gateway_id=None, kafka_port=None, **gateway) -> dict:
    raw = copy.deepcopy(line_config(state_dir=str(state_dir), **gateway).raw)
    # a Kafka nobody answers: the relay (QuietRelay in-process) never matters here, and no broker starts
    raw["kafka"] = {"bootstrap_servers": f"127.0.0.1:{kafka_port or free_port()}"}
    if redis_prefix is not None:
        raw["redis"] = {"url": REDIS_URL, "prefix": redis_prefix}
    if gateway_id is not None:
        raw["gateway"]["id"] = gateway_id
    return raw


def _free_id(client) -> int:
    """A gateway id whose Redis lease nobody holds (other test runs share this Redis)."""
    while True:
        gid = 40000 + secrets.randbelow(20000)
        if not client.exists(f"railgate:gateway:{gid}:lease"):
            return gid


def _construct(cfg) -> BaseException | None:
    """Build a second Gateway in a thread of its own (one event loop per thread); its error, if any."""
    from gateway.app.runtime import Gateway
    box: list = [None]

    def main():
        try:
            gw = Gateway(cfg, admin=False)
        except BaseException as exc:       # noqa: BLE001 - the test looks at it
            box[0] = exc
            return
        gw.identity.release()
        gw.base.close()
    t = threading.Thread(target=main)
    t.start()
    t.join(30)
    return box[0]


def test_same_state_dir_refused_then_free_after_stop(tmp_path):
    cfg = config.parse(_raw(tmp_path / "state"), "t")
    with RunningGateway(cfg, alarms=True, relay_factory=QuietRelay) as gw:
        err = _construct(cfg)
        assert isinstance(err, IdentityHeld), err
        assert f"state dir {tmp_path / 'state'} is held by" in str(err) and f":{os.getpid()} since" in str(err)
        assert "gateway.lock" in str(err) and gw.status()["identity"]["state"] == "held"
    assert _construct(cfg) is None            # released at stop: a restart works


def test_redis_prefix_and_gateway_id_refused_across_state_dirs(tmp_path, rds):
    client, made = rds
    prefix = f"rgtest-id-{secrets.token_hex(4)}"
    gid = _free_id(client)
    made += [f"{prefix}:*", f"railgate:gateway:{gid}:lease"]
    first = config.parse(_raw(tmp_path / "a", redis_prefix=prefix, gateway_id=gid), "a")
    with RunningGateway(first, alarms=True, relay_factory=QuietRelay) as gw:
        held = json.loads(client.get(f"{prefix}:lease"))
        assert held["pid"] == os.getpid() and len(held["token"]) == 32
        same_prefix = config.parse(_raw(tmp_path / "b", redis_prefix=prefix, gateway_id=_free_id(client)), "b")
        err = _construct(same_prefix)
        assert isinstance(err, IdentityHeld) and f"redis prefix '{prefix}' is held by" in str(err)
        assert "expires in" in str(err) and f"redis key {prefix}:lease" in str(err)
        same_id = config.parse(_raw(tmp_path / "c", redis_prefix=prefix + "-other", gateway_id=gid), "c")
        made.append(f"{prefix}-other:*")
        err = _construct(same_id)
        assert isinstance(err, IdentityHeld) and f"gateway id {gid} is held by" in str(err)
        assert client.get(f"{prefix}-other:lease") is None     # a refused gateway holds nothing
        ttl = first.gateway.identity_lease_ms
        time.sleep(ttl / 1000 * 1.5)                          # renewed by the lease thread meanwhile
        assert client.exists(f"{prefix}:lease") and gw.status()["identity"]["renewals"] >= 2
    assert not client.exists(f"{prefix}:lease") and not client.exists(f"railgate:gateway:{gid}:lease")
    assert _construct(same_id) is None


def test_same_id_on_one_shared_kafka_refused_without_redis(tmp_path):
    port = free_port()
    gid = 60000 + secrets.randbelow(5000)
    first = config.parse(_raw(tmp_path / "a", gateway_id=gid, kafka_port=port), "a")
    with RunningGateway(first, alarms=True, relay_factory=QuietRelay):
        err = _construct(config.parse(_raw(tmp_path / "b", gateway_id=gid, kafka_port=port), "b"))
        assert isinstance(err, IdentityHeld) and f"gateway id {gid} on kafka 127.0.0.1:{port}" in str(err)
        # the embedded broker and SQLite: two gateways of one id share nothing and both run
        other = _raw(tmp_path / "c", gateway_id=gid)
        other["kafka"] = {"bootstrap_servers": f"127.0.0.1:{free_port()}"}
        assert _construct(config.parse(other, "c")) is None


def test_lease_lost_to_another_holder_stops_the_gateway(tmp_path, rds):
    client, made = rds
    prefix = f"rgtest-id-{secrets.token_hex(4)}"
    gid = _free_id(client)
    made += [f"{prefix}:*", f"railgate:gateway:{gid}:lease"]
    cfg = config.parse(_raw(tmp_path / "s", redis_prefix=prefix, gateway_id=gid, identity_lease_ms=600), "t")
    run = RunningGateway(cfg, alarms=True, relay_factory=QuietRelay)
    gw = run.__enter__()
    try:
        usurper = json.dumps({"host": "elsewhere", "pid": 4242, "started": "2026-01-01T00:00:00+00:00",
                              "token": "f" * 32})
        client.set(f"railgate:gateway:{gid}:lease", usurper, px=60_000)   # as after a pause past the TTL
        assert gw.wait_stopped(10), "a gateway that lost its identity lease must stop"
        ident = gw.status()["identity"]
        assert ident["state"] == "lost" and "elsewhere:4242" in ident["lost_to"]
        assert json.loads(client.get(f"railgate:gateway:{gid}:lease"))["host"] == "elsewhere"  # not deleted
    finally:
        run._thread.join(10)


def _up(port: int) -> bool:
    try:
        return fetch_status(port)["gateway_id"] is not None
    except OSError:
        return False


def _write_config(tmp_path, prefix: str, gid: int) -> str:
    d = copy.deepcopy(DEMO)
    d["gateway"]["listen"] = {name: {"host": "127.0.0.1", "port": free_port()} for name in ("net_a", "net_b", "udp")}
    d["gateway"].update(admin={"host": "127.0.0.1", "port": free_port()}, state_dir=str(tmp_path / "state"),
                        id=gid, identity_lease_ms=1500)
    d["redis"] = {"url": REDIS_URL, "prefix": prefix}
    d["kafka"] = {"bootstrap_servers": f"127.0.0.1:{free_port()}"}
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path), d["gateway"]["admin"]["port"]


def test_gateway_run_refused_one_line_and_sigkilled_holder_expires(tmp_path, rds):
    client, made = rds
    prefix = f"rgtest-id-{secrets.token_hex(4)}"
    gid = _free_id(client)
    made += [f"{prefix}:*", f"railgate:gateway:{gid}:lease"]
    path, admin_port = _write_config(tmp_path, prefix, gid)
    key = f"railgate:gateway:{gid}:lease"
    first = subprocess.Popen([GATEWAY, "run", "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        wait_until(lambda: client.exists(key) and json.loads(client.get(key))["pid"] == first.pid, timeout=30,
                   what="the first gateway's lease")
        res = subprocess.run([GATEWAY, "run", "-c", path], capture_output=True, text=True, timeout=30)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1, res.stderr
        assert lines[0].startswith("gateway run: another gateway holds this identity: ")
        assert f":{first.pid} since" in lines[0] and "Traceback" not in res.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed = time.monotonic()
        # the lock file died with the process; the Redis lease lives on until its TTL
        res = subprocess.run([GATEWAY, "run", "-c", path], capture_output=True, text=True, timeout=30)
        assert res.returncode == 1 and "expires in" in res.stderr and f":{first.pid} since" in res.stderr
        wait_until(lambda: not client.exists(key), timeout=5, what="the dead holder's lease to expire")
        assert time.monotonic() - killed <= 1.5 + 0.5
        second = subprocess.Popen([GATEWAY, "run", "-c", path], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        wait_until(lambda: client.exists(key) and json.loads(client.get(key))["pid"] == second.pid, timeout=30,
                   what="the restarted gateway's lease")
        wait_until(lambda: _up(admin_port), timeout=30, what="the restarted gateway up")
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
        assert not client.exists(key) and not client.exists(f"{prefix}:lease")   # released at a graceful stop
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
