"""The import arrows between the project's packages point one way (STYLE.md, "Layers you can see").

Every ``.py`` under ``gateway/``, ``alarms/``, ``codecs/`` (imported as
``railcodecs``) and ``simulators/`` is parsed with ``ast``; every import in it
counts, at module level or inside a function, relative ones resolved, and
string imports through ``importlib.import_module`` / ``__import__`` when the
name is a literal. ``from pkg import name`` counts as an import of
``pkg.name`` when that is a module of the project.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: source folder -> import name
FOLDERS = {"gateway": "gateway", "alarms": "alarms", "codecs": "railcodecs", "simulators": "simulators"}
PROJECT = frozenset(FOLDERS.values())


class Only(tuple):
    """The importing package may import, of the project, only these (and their submodules)."""


class Never(tuple):
    """The importing package must not import these (or their submodules)."""


#: importing package -> its rule; the longest matching package decides (gateway.cli and the
#: gateway package's own __init__/__main__ have none)
RULES = {
    "railcodecs": Only(("railcodecs",)),
    "alarms": Never(("gateway", "simulators")),
    "gateway.base": Only(("gateway.base",)),
    "gateway.net": Only(("gateway.base", "gateway.net", "railcodecs")),
    "gateway.line": Only(("gateway.base", "gateway.line", "railcodecs", "alarms.observations")),
    "gateway.coupling": Only(("gateway.base", "gateway.line", "gateway.coupling", "railcodecs",
                              "alarms.observations")),
    "gateway.adapters": Only(("gateway.base", "gateway.net", "gateway.adapters", "railcodecs")),
    "gateway.commands": Only(("gateway.base", "gateway.line", "gateway.adapters", "gateway.commands", "railcodecs",
                              "alarms.kafka.topics", "alarms.kafka.delivery", "alarms.kafka.relay_thread")),
    "gateway.app": Never(("gateway.cli",)),
    # the devices set their routes with the gateway's own planner (one path rule on both sides)
    "simulators": Only(("railcodecs", "simulators", "gateway.app.config", "gateway.base", "gateway.commands.routes",
                        "gateway.line.topology")),
}


def module_of(path: pathlib.Path) -> tuple[str, bool]:
    """(dotted module name, is a package __init__) of a source file."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = FOLDERS[parts[0]]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def source_files() -> list[pathlib.Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


MODULES = frozenset(module_of(p)[0] for p in source_files())


def imports_in(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source``, the file of ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else target))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def rule_for(module: str):
    matches = [pkg for pkg in RULES if under(module, pkg)]
    return (max(matches, key=len), RULES[max(matches, key=len)]) if matches else (None, None)


def violations(module: str, imports) -> list[str]:
    pkg, rule = rule_for(module)
    out = []
    for line, target in imports:
        if target.split(".")[0] not in PROJECT:
            continue  # the standard library and third parties (``codecs`` is the stdlib's)
        if isinstance(rule, Only) and not any(under(target, ok) for ok in rule):
            out.append(f"{line}: imports {target} ({pkg} may import only {', '.join(rule)})")
        elif isinstance(rule, Never) and any(under(target, bad) for bad in rule):
            out.append(f"{line}: imports {target} ({pkg} must not import {', '.join(rule)})")
    return out


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    module, is_package = module_of(path)
    bad = violations(module, imports_in(path.read_text(encoding="utf-8"), module, is_package))
    assert not bad, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(bad)


def test_every_folder_is_walked_and_every_layer_has_files():
    assert {m.split(".")[0] for m in MODULES} == PROJECT
    for pkg in RULES:
        assert any(under(m, pkg) for m in MODULES), pkg


@pytest.mark.parametrize("module, is_package, source, target", [
    ("gateway.net.x", False, "def f():\n    from ..app import config\n", "gateway.app.config"),
    ("gateway.net.x", False, "from . import event_loop\n", "gateway.net.event_loop"),
    ("gateway.net", True, "from .event_loop import EventLoop\n", "gateway.net.event_loop"),
    ("railcodecs.stream", False, "from .frame import Frame\n", "railcodecs.frame"),
    ("gateway.line.x", False, "import importlib\nimportlib.import_module('gateway.app.context')\n",
     "gateway.app.context"),
    ("gateway.line.x", False, "class A:\n    def m(self):\n        import gateway.app.config as c\n",
     "gateway.app.config"),
])
def test_the_walker_sees_nested_relative_and_string_imports(module, is_package, source, target):
    assert target in [t for _, t in imports_in(source, module, is_package)]


def test_a_forbidden_arrow_is_reported():
    assert violations("gateway.net.connection", [(3, "gateway.line.link_state")]) == [
        "3: imports gateway.line.link_state (gateway.net may import only gateway.base, gateway.net, railcodecs)"]
    assert violations("gateway.app.runtime", [(1, "gateway.cli.run_cmd")])
    assert violations("alarms.engine", [(1, "simulators.line")])
    assert not violations("gateway.cli.run_cmd", [(1, "gateway.app.runtime")])
    assert not violations("railcodecs.frame", [(1, "codecs"), (2, "zlib")])
