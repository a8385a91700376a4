"""`gateway alarms history` on a real SQLite history and a real MariaDB one."""
from __future__ import annotations

import json

import pytest
import yaml

from alarms.history.store import SqliteHistory
from gateway.cli.alarms_history_cmd import main, parse_time
from test_history_fixtures import MYSQL, T0, event, mixed_events, mysql_db, mysql_store, rows_of  # noqa: F401
from zoneinfo import ZoneInfo


def write_config(tmp_path, history=None) -> str:
    cfg = {"gateway": {"id": 1, "state_dir": str(tmp_path / "state"),
                       "listen": {"net_a": {"port": 0}, "net_b": {"port": 0}, "udp": {"port": 0}}},
           "line": {"name": "demo-line-1", "timezone": "Asia/Shanghai"}}
    if history is not None:
        cfg["history"] = history
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture
def sqlite_config(tmp_path):
    (tmp_path / "state").mkdir()
    store = SqliteHistory(str(tmp_path / "state" / "history.db"))
    store.insert_batch(rows_of(mixed_events(40)))
    store.close()
    return write_config(tmp_path)


def test_text_rows_newest_first_in_the_line_zone(sqlite_config, capsys):
    assert main(["-c", sqlite_config, "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert [int(line.split("#")[1].split()[0]) for line in lines] == [40, 39, 38]
    first = lines[0]
    assert first.startswith("2026-11-23T17:26:54.859+08:00  #40")       # T0 + 40 s in Asia/Shanghai
    assert "CI-1/DEVICE_COMM_LOST/-" in first and "->" in first


def test_filters_and_json_lines(sqlite_config, capsys):
    since = "2026-11-23T17:26:24.859"          # naive: the line's zone; = T0 + 10 s
    assert main(["-c", sqlite_config, "--since", since, "--until", "2026-11-23T17:26:34.859+08:00",
                 "--source", "CI-3", "--json", "--oldest-first"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["event_seq"] for d in docs] == [10, 14, 18]
    assert all(d["alarm"]["source"] == "CI-3" and d["kind"] == "event" for d in docs)
    assert main(["-c", sqlite_config, "--code", "SWITCH_LOST", "--json", "--limit", "1000"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 20


def test_relative_times():
    tz = ZoneInfo("Asia/Shanghai")
    assert parse_time("-1h", tz, 10_000_000) == 10_000_000 - 3_600_000
    assert parse_time("-90s", tz, 100_000) == 10_000
    assert parse_time("2026-11-23T17:26:14.859+08:00", tz, 0) == T0
    assert parse_time("2026-11-23T17:26:14.859", tz, 0) == T0


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "neither an ISO 8601 time"),
    (["--limit", "0"], "--limit must be 1..100000"),
    (["--since", "-1h", "--until", "-2h"], "must be before --until"),
])
def test_bad_arguments_exit_2(sqlite_config, capsys, args, message):
    assert main(["-c", sqlite_config, *args]) == 2
    assert message in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["--since", "-1h"]) == 2                      # -c missing
    assert "-c/--config" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "--oldest-first" in capsys.readouterr().out
    assert main(["-c", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["-c", write_config(tmp_path, history="postgres")]) == 2
    assert "history: expected 'sqlite'" in capsys.readouterr().err


def test_no_history_file_yet_exits_1(tmp_path, capsys):
    assert main(["-c", write_config(tmp_path)]) == 1
    assert "history.db does not exist" in capsys.readouterr().err


def test_mysql_store_from_config(tmp_path, mysql_db, capsys):  # noqa: F811
    store = mysql_store(mysql_db)
    store.insert_batch(rows_of([event(1), event(2, source="CI-2")]))
    store.close()
    cfg = write_config(tmp_path, history={"mysql": {**MYSQL, "database": mysql_db, "pool_size": 1}})
    assert main(["-c", cfg, "--source", "CI-2", "--json"]) == 0
    assert [json.loads(line)["event_seq"] for line in capsys.readouterr().out.splitlines()] == [2]
    down = write_config(tmp_path, history={"mysql": {"host": "127.0.0.1", "port": 1, "user": "root",
                                                     "database": "x"}})
    assert main(["-c", down]) == 1
    assert "root@127.0.0.1:1/x" in capsys.readouterr().err
