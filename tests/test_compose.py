"""docker-compose.yml: the production layout. No Docker engine runs here, so the
file's structure is checked (restart policies, health checks and the start order they
gate, Kafka's internal and external listeners, secrets kept out of the images), and
the gateway config it runs with must validate and point at the services the file
defines."""
from __future__ import annotations

import os
import pathlib
import re
from urllib.parse import urlparse

import yaml

from gateway.app import config

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KAFKA = {name: svc for name, svc in SERVICES.items() if svc.get("image", "").startswith("apache/kafka:")}
RAILGATE = ("gateway", "simulators")  # the services built from this repository's Dockerfile
LOCK_MASTERS = sorted(name for name in SERVICES if name.startswith("redis-lock-"))


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with the defaults (the variables unset)."""
    def sub(m: re.Match) -> str:
        assert m.group(2) is not None, f"{m.group(0)}: give a default so the file works as checked out"
        return m.group(3)
    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, value)


def _secret_file(name: str) -> pathlib.Path:
    return ROOT / _interpolate(COMPOSE["secrets"][name]["file"])


def _secret_mounts(service: str) -> dict[str, str]:
    """{path in the container: secret name} (long and short syntax)."""
    out = {}
    for item in SERVICES[service].get("secrets", ()):
        if isinstance(item, str):
            out[f"/run/secrets/{item}"] = item
        else:
            target = item.get("target", item["source"])
            out[target if target.startswith("/") else f"/run/secrets/{target}"] = item["source"]
    return out


def _config_path(service: str) -> pathlib.Path:
    """The line file the service runs with: a compose secret, i.e. a file of the host, not of the image."""
    cmd = SERVICES[service]["command"]
    path = cmd[cmd.index("-c") + 1]
    mounts = _secret_mounts(service)
    assert path in mounts, f"{service}: the line file (MAC keys, passwords) must be a mounted secret, not in the image"
    return _secret_file(mounts[path])


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


def test_three_independent_redis_masters_hold_the_zone_locks():
    """Issue 16: Redlock on N = 3 masters. Each a Redis 7 of its own (no replication, its own volume,
    fsync on every write so a restarted master keeps what it acknowledged); the gateway's
    ``control.locks`` names exactly those three and waits for them to be healthy."""
    assert LOCK_MASTERS == ["redis-lock-1", "redis-lock-2", "redis-lock-3"]
    volumes = set()
    for name in LOCK_MASTERS:
        svc = SERVICES[name]
        assert re.match(r"redis:7(\.|$)", svc["image"]), name
        cmd = svc["command"]
        assert cmd[0] == "redis-server" and not {"--replicaof", "--slaveof"} & set(cmd), f"{name}: a replica"
        assert cmd[cmd.index("--appendonly") + 1] == "yes" and cmd[cmd.index("--appendfsync") + 1] == "always"
        (volume,) = svc["volumes"]
        assert volume.endswith(":/data") and volume.split(":")[0] in COMPOSE["volumes"], name
        volumes.add(volume.split(":")[0])
        assert SERVICES["gateway"]["depends_on"][name] == {"condition": "service_healthy"}
    assert len(volumes) == 3 and "redis" not in volumes, "each master has a volume of its own"
    control = config.load(str(_config_path("gateway"))).control
    assert control.locks.kind == "redis"
    urls = [urlparse(u) for u in control.locks.urls]
    assert sorted(u.hostname for u in urls) == LOCK_MASTERS
    assert {u.port for u in urls} == {6379}
    assert urlparse(config.load(str(_config_path("gateway"))).pipeline.redis.url).hostname not in LOCK_MASTERS


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


def test_every_service_restarts_and_has_a_health_check():
    for name, svc in SERVICES.items():
        assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: no restart policy"
        check = svc.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name}: no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck.{key}"


def test_health_checks_use_each_image_s_own_client():
    for name in KAFKA:
        test = " ".join(SERVICES[name]["healthcheck"]["test"])
        assert "kafka-broker-api-versions.sh --bootstrap-server localhost:9092" in test, name
    assert SERVICES["mysql"]["healthcheck"]["test"][1:5] == ["mysqladmin", "ping", "-h", "127.0.0.1"]
    for name in ("redis", *LOCK_MASTERS):
        assert "redis-cli ping" in " ".join(SERVICES[name]["healthcheck"]["test"]), name
    gw_test = SERVICES["gateway"]["healthcheck"]["test"]
    assert gw_test[1] == "railgate-healthcheck"
    admin = config.load(str(_config_path("gateway"))).gateway.admin
    url = urlparse(gw_test[2])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", admin.port, "/status")
    assert SERVICES["simulators"]["healthcheck"]["test"][1:] == [
        "railgate-healthcheck", "--tcp-peer", str(config.load(str(_config_path("simulators"))).gateway.net_a.port)]


def test_start_order_waits_for_healthy_dependencies():
    for name, svc in SERVICES.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must say the condition (long syntax)"
        for dep, spec in deps.items():
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dep}"
            assert "healthcheck" in SERVICES[dep]
    assert set(SERVICES["gateway"]["depends_on"]) == {"mysql", "redis", *LOCK_MASTERS, *KAFKA}
    assert set(SERVICES["simulators"]["depends_on"]) == {"gateway"}
    controllers = {n for n, s in KAFKA.items() if "controller" in s["environment"]["KAFKA_PROCESS_ROLES"]}
    for name in controllers:  # the quorum members start together: none may wait for another
        assert not set(KAFKA[name].get("depends_on", {})) & set(KAFKA), name
    for name in set(KAFKA) - controllers:
        assert set(KAFKA[name]["depends_on"]) == controllers


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in _interpolate(value).split(","):
        m = re.fullmatch(r"(\w+)://([\w.-]*):(\d+)", item.strip())
        assert m, item
        out[m.group(1)] = (m.group(2), int(m.group(3)))
    return out


def test_kafka_has_an_external_listener_for_hmis_on_the_host():
    host_ports = set()
    for name, svc in KAFKA.items():
        env = svc["environment"]
        listeners, advertised = _listeners(env["KAFKA_LISTENERS"]), _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert set(listeners) <= set(protocols), name
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "PLAINTEXT" and advertised["PLAINTEXT"] == (name, 9092)
        assert "EXTERNAL" in listeners and "EXTERNAL" in advertised, name
        ext_host, ext_port = advertised["EXTERNAL"]
        assert ext_host == "localhost", "by default the host itself; KAFKA_EXTERNAL_HOST names it for other machines"
        assert "${KAFKA_EXTERNAL_HOST:-localhost}" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert listeners["EXTERNAL"][1] == ext_port
        published = {(int(p.split(":")[-2]), int(p.split(":")[-1])) for p in svc["ports"]}
        assert (ext_port, listeners["EXTERNAL"][1]) in published, f"{name}: EXTERNAL {ext_port} not published"
        host_ports.add(ext_port)
        assert "CONTROLLER" not in advertised and all(int(p.split(":")[-1]) != 9093 for p in svc["ports"])
    assert len(host_ports) == len(KAFKA), "each broker is advertised on a host port of its own"


def test_secrets_stay_out_of_the_images_and_of_this_file():
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY$", key) and not key.endswith("_FILE"):
                raise AssertionError(f"{name}.{key}: a secret in the compose file; use {key}_FILE and a secret")
    mysql = SERVICES["mysql"]
    mounts = _secret_mounts("mysql")
    for var in ("MYSQL_PASSWORD_FILE", "MYSQL_ROOT_PASSWORD_FILE"):
        assert mysql["environment"][var] in mounts, var
    for name in COMPOSE["secrets"]:
        assert _secret_file(name).is_file(), name
    for service in RAILGATE:
        assert _config_path(service).is_file()
        assert "config" not in str(SERVICES[service].get("volumes", "")), "the line file comes as a secret"


def test_the_gateway_and_mysql_share_one_password():
    pipe = config.load(str(_config_path("gateway"))).pipeline
    secret = _secret_mounts("mysql")[SERVICES["mysql"]["environment"]["MYSQL_PASSWORD_FILE"]]
    password = _secret_file(secret)  # the image's entrypoint drops trailing newlines, as strip() does
    assert pipe.history.mysql.password == password.read_text().strip()


def test_railgate_containers_are_unprivileged():
    for name in RAILGATE:
        svc = SERVICES[name]
        assert svc.get("user") in (None, "railgate", "10001"), "the image's railgate user"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in svc["security_opt"]
        assert svc["build"] == "."
    assert "gateway-state:/var/lib/railgate" in SERVICES["gateway"]["volumes"]
    state_dir = config.load(str(_config_path("gateway"))).gateway.state_dir
    assert os.path.normpath(state_dir) == "/var/lib/railgate"
