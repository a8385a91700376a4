"""The docs are true: every command in README.md's ``sh`` blocks is run as written or excused by name, and the
setup steps of docs/services.md (MySQL grants, Redis ACL) work for the gateway's own stores.

* README.md: each fenced ``sh`` block is split into commands (``\\`` continuations joined, comments and blank
  lines dropped). A command is RUN (in order, by bash with ``pipefail``, in a fresh directory per block that
  has ``config`` linked to the repo's, with the venv's ``bin`` first on PATH), part of the kcat RECIPE (run
  against an embedded broker with a state dir that is not the default, see
  :func:`test_readme_kcat_recipe_reads_the_day_topic_from_any_state_dir`), or EXCUSED with the reason. A
  command that is none of these fails :func:`test_every_readme_command_is_run_or_excused`: a new README
  command needs a test or an excuse here.
* docs/services.md: the SQL (CREATE DATABASE, CREATE USER, GRANT) and the ``redis-cli ACL SETUSER`` lines are
  run with their names replaced by unique ones; the history store migrates, inserts and queries through the
  granted user, and without any one of the granted privileges it fails; the live table and the zone locks
  work through the ACL user, which can touch no key outside its prefix, and the reader can only read.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import pymysql
import pytest
import redis

from kafka_fixtures import TZ, EventSource, broker, wait_for  # noqa: F401 (fixture)

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SERVICES = ROOT / "docs" / "services.md"
VENV_BIN = pathlib.Path(sys.executable).parent
KCAT = shutil.which("kcat")
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@dataclass
class Command:
    line: int          # 1-based line in the file where the command starts
    text: str          # as written (continuations joined), comment kept
    block: int         # index of its fenced block


def fenced_blocks(text: str, langs=("sh", "shell", "bash", "console")) -> list[tuple[int, str, list[str]]]:
    """``(first line, lang, lines)`` of every fenced block (indented fences too, the indent removed)."""
    out, cur = [], None
    for no, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^(\s*)```\s*([\w-]*)\s*$", line)
        if cur is None and m:
            cur = (no + 1, m.group(2), len(m.group(1)), [])
        elif cur is not None and m and not m.group(2):
            out.append((cur[0], cur[1], cur[3]))
            cur = None
        elif cur is not None:
            cur[3].append(line[cur[2]:] if line[:cur[2]].strip() == "" else line)
    assert cur is None, f"unclosed ``` fence at line {cur[0] - 1}"
    return [b for b in out if b[1] in langs]


def commands_of(text: str) -> list[Command]:
    cmds = []
    for i, (first, _, lines) in enumerate(fenced_blocks(text)):
        pending, start = "", 0
        for k, line in enumerate(lines):
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if not pending:
                start = first + k
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            cmds.append(Command(start, pending + line.strip(), i))
            pending = ""
    return cmds


def bare(cmd: str) -> str:
    """The command without its trailing comment (``#`` after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(cmd):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and i and cmd[i - 1] in " \t":
            return cmd[:i].rstrip()
    return cmd.strip()


#: run here, in order; the value names the check of the output
RUN = {r"^gateway decode\b": "decode", r"\| *gateway decode$": "decode", r"^gateway --version$": "version",
       r"^gateway check -c config/demo-line\.yaml$": "check",
       r"^echo [0-9a-f]+ \| xxd -r -p > [\w.]+$": "setup"}
#: the kcat recipe (README "Kafka topics"): one script, run against an embedded broker
RECIPE = [r"^d=\$\(mktemp -d\); ln -s ", r"^LD_LIBRARY_PATH=\$d kcat -C "]
#: not run, and why
EXCUSED = {
    r"^make demo$": "runs the gateway, the simulators and `gateway status --watch` until Ctrl-C; its parts run in "
                    "tests/test_simulators_vs_gateway.py and tests/test_gateway_process.py",
    r"^make test$": "the whole suite: this test is part of it",
    r"^\. \.venv/bin/activate$": "puts the venv's bin first on PATH, as this test does for the commands it runs",
    r"^make bench$": "every benchmark, up to 15 minutes (`make bench-smoke` is tests/test_bench_smoke.py)",
    r"^make bench-smoke$": "run by tests/test_bench_smoke.py",
    r"^docker compose ": "no Docker engine on the development machines; tests/test_compose.py and "
                         "tests/test_deploy.py check the compose file and the Dockerfile",
    r"^gateway alarms tail --bootstrap localhost:19092": "needs the compose stack's brokers; the tail command runs "
                                                         "against an embedded broker in its own tests",
    r"^systemctl ": "needs systemd as PID 1 and the installed unit; tests/test_deploy.py checks the unit",
    r"^journalctl ": "needs systemd's journal and the installed unit",
}


def classify(cmd: str) -> tuple[str, str]:
    """``(kind, detail)``: ("run", check) | ("recipe", "") | ("excused", reason) | ("unknown", "")."""
    b = bare(cmd)
    found = [("run", check) for pat, check in RUN.items() if re.search(pat, b)]
    found += [("recipe", "") for pat in RECIPE if re.search(pat, b)]
    found += [("excused", why) for pat, why in EXCUSED.items() if re.search(pat, b)]
    assert len(found) <= 1, f"{cmd!r} matches several rules: {found}"
    return found[0] if found else ("unknown", "")


README_CMDS = commands_of(README.read_text(encoding="utf-8"))


def test_every_readme_command_is_run_or_excused():
    unknown = [f"README.md:{c.line}: {c.text}" for c in README_CMDS if classify(c.text)[0] == "unknown"]
    assert not unknown, ("README commands that this test neither runs nor excuses (add them to RUN, RECIPE or "
                         "EXCUSED in tests/test_readme_commands.py):\n" + "\n".join(unknown))
    kinds = [classify(c.text) for c in README_CMDS]
    assert sum(k == ("run", "decode") for k in kinds) >= 3, "the `gateway decode` examples are missing"
    assert ("run", "version") in kinds and ("run", "check") in kinds
    assert sum(k[0] == "recipe" for k in kinds) == len(RECIPE), "the kcat recipe is missing or changed shape"


def test_commands_are_in_fences():
    """A command in an indented code block would escape this test: only usage synopses (with ``[``) may be
    indented."""
    text, inside, bad = README.read_text(encoding="utf-8"), False, []
    for no, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*```", line):
            inside = not inside
        elif not inside and re.match(r"^ {4,}(gateway|kcat|make|docker|systemctl|redis-cli|mysql|LD_LIBRARY_PATH=|"
                                     r"d=\$)", line) and "[" not in line:
            bad.append(f"README.md:{no}: {line.strip()}")
    assert not bad, "commands outside ```sh fences:\n" + "\n".join(bad)


def run_sh(cmd: str, cwd, env_extra: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env_extra or {})}
    env.pop("PYTHONPATH", None)
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def check_output(check: str, cmd: str, res: subprocess.CompletedProcess) -> None:
    where = f"{cmd!r}: exit {res.returncode}\nstdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-2000:]}"
    assert res.returncode == 0, where
    if check == "decode":
        lines = [json.loads(x) for x in res.stdout.splitlines()]
        assert lines, where
        assert all("type" in x and "error" not in x for x in lines), where
        if "--mac-key" in cmd:
            assert all(x["mac"] is True for x in lines), where    # present and verified (a bad one is an error)
    elif check == "version":
        assert re.fullmatch(r"railgate \d+\.\d+\.\d+\S*\n", res.stdout), where
    elif check == "check":
        assert res.stdout.strip(), where


@pytest.mark.parametrize("block", sorted({c.block for c in README_CMDS
                                          if classify(c.text)[0] == "run"}), ids=lambda b: f"block{b}")
def test_readme_commands_run_as_written(block, tmp_path):
    (tmp_path / "config").symlink_to(ROOT / "config")
    for c in README_CMDS:
        kind, check = classify(c.text)
        if c.block == block and kind == "run":
            check_output(check, c.text, run_sh(c.text, tmp_path))


def test_the_old_decode_example_would_fail(tmp_path):
    """The check above catches a frame one byte short (the README's example before issue 13 item 11)."""
    res = run_sh("gateway decode a55a0102000001010001000000000001a1ee565ff40004000000075493b43e", tmp_path)
    with pytest.raises(AssertionError):
        check_output("decode", "gateway decode ...", res)


@pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt install kcat; .ci/run installs it)")
def test_readme_kcat_recipe_reads_the_day_topic_from_any_state_dir(broker, tmp_path):  # noqa: F811
    state = tmp_path / "line 1 state"            # not the default `state`, and a blank to test the quoting
    state.mkdir()
    (state / "kafka.bootstrap").write_text(broker.bootstrap + "\n")
    from alarms.kafka.relay import KafkaRelay
    src = EventSource(str(tmp_path / "j.db"), start_ms=int(time.time() * 1000), seed=3)
    evs = src.journal_events(40)
    relay = KafkaRelay(str(tmp_path / "j.db"), broker.bootstrap, topic_prefix="railgate.alarms", tz=TZ,
                       gateway_id=1, line="demo-line-1", clock_ms=lambda: src.now_ms).start()
    wait_for(lambda: relay.stats()["delivered"] == len(evs), 20, "40 deliveries")
    relay.stop()
    script = "\n".join(c.text for c in README_CMDS if classify(c.text)[0] == "recipe")
    elsewhere = tmp_path / "elsewhere"           # not the repo root
    elsewhere.mkdir()
    res = run_sh(script, elsewhere, {"STATE_DIR": str(state), "TZ": "UTC"})
    assert res.returncode == 0, res.stderr
    got = sorted((k, json.loads(v)["event_id"]) for k, v in (x.split(" ", 1) for x in res.stdout.splitlines()))
    assert got == sorted((e.key, e.event_id) for e in evs)
    src.close()


# -- docs/services.md -------------------------------------------------------------------------------------

def services_text() -> str:
    return SERVICES.read_text(encoding="utf-8")


def sql_statements() -> list[str]:
    blocks = fenced_blocks(services_text(), langs=("sql",))
    assert len(blocks) == 1, "docs/services.md: one ```sql block (database, user, grant)"
    return [s.strip() for s in "\n".join(blocks[0][2]).split(";") if s.strip()]


def test_services_sql_is_the_grant_the_doc_lists():
    stmts = sql_statements()
    assert [s.split()[0].upper() for s in stmts] == ["CREATE", "CREATE", "GRANT"]
    privs = re.match(r"GRANT (.+) ON railgate\.\* TO", stmts[2]).group(1)
    assert "privileges it needs (CREATE, ALTER, SELECT, INSERT, UPDATE" in README.read_text(encoding="utf-8")
    assert [p.strip() for p in privs.split(",")] == ["CREATE", "ALTER", "SELECT", "INSERT", "UPDATE"]


def _mysql_setup(name: str, password: str, drop: str | None = None) -> None:
    conn = pymysql.connect(**MYSQL)
    try:
        with conn.cursor() as cur:
            for stmt in sql_statements():
                stmt = stmt.replace("'10.0.0.5'", "'%'").replace("railgate", name).replace("change-me", password)
                if drop and stmt.startswith("GRANT"):
                    privs = [p.strip() for p in re.match(r"GRANT (.+?) ON", stmt).group(1).split(",")]
                    stmt = stmt.replace(", ".join(privs), ", ".join(p for p in privs if p != drop))
                cur.execute(stmt)
    finally:
        conn.close()


def _mysql_drop(name: str) -> None:
    conn = pymysql.connect(**MYSQL)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def _history_cycle(name: str, password: str) -> None:
    """What the gateway does with its history: migrate, insert (twice: the catch-up repeats rows), query."""
    from alarms.history.store import MysqlHistory
    from alarms.journal import JournalRow
    from test_history_fixtures import mixed_events
    evs = mixed_events(30)
    rows = [JournalRow(e.event_seq, e.event_id, e.key, e.time_ms, e.encode()) for e in evs]
    store = MysqlHistory(host=MYSQL["host"], port=MYSQL["port"], user=name, password=password, database=name,
                         pool_size=2)
    try:
        assert store.schema_version() == 2
        assert store.insert_batch(rows) == 30
        assert store.insert_batch(rows[10:]) == 0
        assert store.max_event_seq(1) == 30 and len(store.query(limit=100)) == 30
    finally:
        store.close()


@pytest.mark.parametrize("drop", [None, "CREATE", "ALTER", "SELECT", "INSERT", "UPDATE"])
def test_services_mysql_grant_is_enough_and_each_privilege_is_needed(drop):
    name, password = f"rgdoc_{secrets.token_hex(4)}", secrets.token_hex(8)
    try:
        _mysql_setup(name, password, drop)
        if drop is None:
            _history_cycle(name, password)
        else:
            # MariaDB error 1142; the store reports it as HistoryUnavailable (an OperationalError)
            with pytest.raises(Exception, match=f"{drop} command denied"):
                _history_cycle(name, password)
    finally:
        _mysql_drop(name)


def acl_lines() -> list[list[str]]:
    cmds = [c.text for c in commands_of(services_text()) if c.text.startswith("redis-cli ACL SETUSER")]
    assert len(cmds) == 2, "docs/services.md: the gateway's and the reader's ACL SETUSER"
    return [shlex.split(c)[1:] for c in cmds]


def test_services_redis_acl_is_enough_and_confined():
    from alarms.live.live_table import _APPLY, LiveTable, read_active, redis_client
    from gateway.adapters.zone_locks import RedisZoneLocks
    from test_history_fixtures import event
    prefix, gid = f"rgdoc{secrets.token_hex(4)}", str(900_000 + secrets.randbelow(99_999))
    admin = redis.Redis(host="127.0.0.1", port=6379)
    users = []
    for args in acl_lines():
        args = [a.replace("line1", prefix).replace("gateway:1:lease", f"gateway:{gid}:lease") for a in args]
        users.append(args[2])
        assert admin.execute_command(*args) in (b"OK", "OK", True)
    gw_user, reader = users
    try:
        gw = redis_client(f"redis://{gw_user}:change-me@127.0.0.1:6379/0")
        table = LiveTable(gw, prefix, lambda: (0, []))
        assert table.resync() == 0
        evs = [event(1).to_json(), event(2, source="CI-2", code="SWITCH_LOST").to_json(),
               event(3, transition="ack", previous="UNACK", state="ACKED", operator="op1").to_json()]
        assert table.apply_events(evs) == 3 and table.applied_seq() == 3
        gw.script_load(_APPLY)                    # what redis-py does when Redis does not know the script
        locks = RedisZoneLocks(gw, prefix)
        lease = locks.acquire("Z1", "ws-a", ttl_ms=5000)
        assert locks.holder("Z1") == "ws-a" and lease.fencing_token > 0
        locks.release(locks.extend(lease))
        gw.set(f"railgate:gateway:{gid}:lease", "x", px=1000)   # the identity lease's fixed namespace
        gw.delete(f"railgate:gateway:{gid}:lease")
        with pytest.raises(redis.exceptions.NoPermissionError):
            gw.set(f"not{prefix}:x", "1")           # nothing outside the prefix
        with pytest.raises(redis.exceptions.NoPermissionError):
            gw.keys("*")
        rd = redis.Redis.from_url(f"redis://{reader}:reader-change-me@127.0.0.1:6379/0")
        assert set(read_active(rd, prefix)) == {"CI-1/DEVICE_COMM_LOST/-", "CI-2/SWITCH_LOST/-"}
        with pytest.raises(redis.exceptions.NoPermissionError):
            rd.hset(f"{prefix}:alarms:active", "x", "y")
        table.clear()
    finally:
        for u in users:
            admin.execute_command("ACL", "DELUSER", u)
        keys = list(admin.scan_iter(f"{prefix}:*"))
        if keys:
            admin.delete(*keys)
        admin.close()
