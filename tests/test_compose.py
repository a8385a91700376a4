"""docker-compose.yml: the production layout. No Docker engine runs here, so the
file's structure is checked, and the gateway config it runs with must validate
and point at the services the file defines."""
from __future__ import annotations

import pathlib
import re
from urllib.parse import urlparse

import yaml

from gateway.app import config

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KAFKA = {name: svc for name, svc in SERVICES.items() if svc.get("image", "").startswith("apache/kafka:")}


def _config_path(service: str) -> pathlib.Path:
    cmd = SERVICES[service]["command"]
    path = cmd[cmd.index("-c") + 1]
    assert path.startswith("/app/"), f"{service}: config must come from the image's /app"
    return ROOT / path[len("/app/"):]


def test_four_kraft_brokers_with_a_consistent_quorum():
    assert len(KAFKA) == 4
    env = {name: svc["environment"] for name, svc in KAFKA.items()}
    node_ids = {e["KAFKA_NODE_ID"] for e in env.values()}
    assert len(node_ids) == 4
    assert all("ZOOKEEPER" not in key for e in env.values() for key in e)
    controllers = {name for name, e in env.items() if "controller" in e["KAFKA_PROCESS_ROLES"]}
    assert len(controllers) % 2 == 1, "an odd controller quorum"
    voters = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in env.values()}
    assert len(voters) == 1, "every node must name the same voters"
    named = dict(re.findall(r"(\d+)@([\w-]+):\d+", voters.pop()))
    assert {named[str(env[c]["KAFKA_NODE_ID"])] for c in controllers} == controllers
    assert len({e["CLUSTER_ID"] for e in env.values()}) == 1
    for name, e in env.items():
        assert all(role in ("broker", "controller") for role in e["KAFKA_PROCESS_ROLES"].split(","))
        assert f"//{name}:" in e["KAFKA_ADVERTISED_LISTENERS"]


def test_replication_and_min_insync_replicas_are_sensible():
    for e in (svc["environment"] for svc in KAFKA.values()):
        assert e["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 4
        assert 2 <= e["KAFKA_MIN_INSYNC_REPLICAS"] < e["KAFKA_DEFAULT_REPLICATION_FACTOR"]
        assert e["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_mysql_8_and_redis_7():
    assert re.match(r"mysql:8(\.|$)", SERVICES["mysql"]["image"])
    assert re.match(r"redis:7(\.|$)", SERVICES["redis"]["image"])


def test_gateway_and_simulators_run_a_config_that_validates():
    for service in ("gateway", "simulators"):
        path = _config_path(service)
        cfg = config.load(str(path))
        assert cfg.devices and cfg.trains.ids
    assert SERVICES["simulators"]["command"][:2] == ["gateway", "simulate"]
    assert SERVICES["gateway"]["command"][:2] == ["gateway", "run"]


def test_gateway_config_points_at_the_compose_services():
    cfg = config.load(str(_config_path("gateway")))
    pipe = cfg.pipeline
    assert not pipe.kafka.embedded
    assert sorted(hp.split(":")[0] for hp in pipe.kafka.bootstrap_servers) == sorted(KAFKA)
    assert pipe.alarms.replication_factor == 4
    mysql_env = SERVICES["mysql"]["environment"]
    assert pipe.history.kind == "mysql" and pipe.history.mysql.host == "mysql"
    assert (pipe.history.mysql.user, pipe.history.mysql.database) == (mysql_env["MYSQL_USER"],
                                                                      mysql_env["MYSQL_DATABASE"])
    assert urlparse(pipe.redis.url).hostname == "redis"
    ports = {p.split(":")[-1].split("/")[0] for p in SERVICES["gateway"]["ports"]}
    gw = cfg.gateway
    assert {str(gw.net_a.port), str(gw.net_b.port), str(gw.udp.port), str(gw.admin.port)} <= ports
    assert (ROOT / SERVICES["gateway"]["build"] / "Dockerfile").exists()
