"""One dispatcher for the command groups (`gateway alarms|command|route SUBCOMMAND`).

A group names its subcommands as ``name -> (target, help)``, where the target is
``"module:function"`` (imported only when that subcommand runs, so a group's
other tools do not slow it down) or the function itself. Caller's thread.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from gateway.cli.terminal_text import safe_text

Target = str | Callable[[list[str]], int]


def dispatch(group: str, subcommands: dict[str, tuple[Target, str]], argv: list[str] | None) -> int:
    """Run ``gateway GROUP SUBCOMMAND ARGS``: the subcommand's exit status; the group's usage on
    stdout for -h/--help (0) and on stderr, naming the problem, without or with an unknown subcommand (2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    asked = bool(argv) and argv[0] in ("-h", "--help")
    if asked or not argv or argv[0] not in subcommands:
        width = max(len(n) for n in subcommands) + 2
        rows = "\n".join(f"  {n:<{width}}{h}" for n, (_, h) in subcommands.items())
        stream = sys.stdout if asked else sys.stderr
        if argv and not asked:
            stream.write(f"gateway {group}: unknown subcommand '{safe_text(argv[0])}'\n")
        stream.write(f"usage: gateway {group} SUBCOMMAND [ARGS]\n\nsubcommands:\n{rows}\n")
        return 0 if asked else 2
    target = subcommands[argv[0]][0]
    if isinstance(target, str):
        module_name, func = target.split(":")
        target = getattr(__import__(module_name, fromlist=[func]), func)
    return target(argv[1:])
