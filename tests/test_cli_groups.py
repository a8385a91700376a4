"""`gateway alarms|command|route`: one dispatcher (gateway/cli/subcommands.py) for the command groups."""
from __future__ import annotations

import pytest

from gateway.cli import alarms_cmd, command_cmd, route_cmd
from gateway.cli.subcommands import dispatch

GROUPS = [("alarms", alarms_cmd), ("command", command_cmd), ("route", route_cmd)]


@pytest.mark.parametrize("group,module", GROUPS)
def test_help_lists_every_subcommand_on_stdout(group, module, capsys):
    assert module.main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: gateway {group} SUBCOMMAND [ARGS]") and not err
    for name, (_, help_) in module.SUBCOMMANDS.items():
        assert f"  {name}" in out and help_ in out


@pytest.mark.parametrize("group,module", GROUPS)
def test_unknown_or_missing_subcommand_exits_2_naming_it(group, module, capsys):
    assert module.main(["nope\x1b[2J"]) == 2
    out, err = capsys.readouterr()
    # the name is quoted with the terminal control escaped, never written raw
    assert not out and f"gateway {group}: unknown subcommand 'nope\\x1b[2J'" in err and "\x1b" not in err
    assert module.main([]) == 2
    out, err = capsys.readouterr()
    assert not out and err.startswith(f"usage: gateway {group}")


def test_targets_are_functions_or_lazily_imported_module_functions():
    seen = []
    subs = {"direct": (lambda argv: seen.append(argv) or 3, "a function"),
            "lazy": ("gateway.cli.terminal_text:safe_text", "module:function, imported when run")}
    assert dispatch("demo", subs, ["direct", "a", "b"]) == 3 and seen == [["a", "b"]]
    assert dispatch("demo", subs, ["lazy", "x"]) == "['x']"       # safe_text(["x"]): the call went through
