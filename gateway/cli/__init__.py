"""The `gateway` command: one entry point, one module per subcommand.

Subcommands are imported lazily so `gateway decode` starts fast and does not
pull in the reactor or the Kafka client.
"""
from __future__ import annotations

import sys

_COMMANDS = {
    "run": ("gateway.cli.run_cmd:run_main", "run the gateway (-c config/demo-line.yaml; --daemon --pidfile F)"),
    "check": ("gateway.cli.check_cmd:main", "validate a line file without starting; print the effective config"),
    "stop": ("gateway.cli.run_cmd:stop_main", "stop a daemon gateway gracefully (--pidfile F)"),
    "status": ("gateway.cli.status_cmd:main", "show devices, links, trains, loops and pools (--json, --watch)"),
    "decode": ("gateway.cli.decode_cmd:main", "decode ICD frames (hex or raw) to JSON lines"),
    "simulate": ("simulators.cli:main", "run device and train simulators against a gateway"),
    "alarms": ("gateway.cli.alarms_cmd:main", "alarm tools: tail, history, list, ack, shelve, unshelve"),
    "command": ("gateway.cli.command_cmd:main", "select, operate, cancel, list commands (--operator NAME)"),
    "route": ("gateway.cli.route_cmd:main", "plan a route between two signals (plan), or set it on the line (set)"),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in _COMMANDS.items())
    return (f"usage: gateway COMMAND [ARGS]\n       gateway --version\n\ncommands:\n{rows}\n\n"
            "`gateway COMMAND --help` for each.\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS and name != "--version":
        sys.stderr.write(f"gateway: unknown command {name!r}\n" + _usage())
        return 2
    # `gateway --version` and `gateway CMD --version` alike: no subcommand has a --version of its own
    # (after `--` it is an argument, not the flag)
    if "--version" in argv[:argv.index("--") if "--" in argv else len(argv)]:
        from gateway.base.version import version_line
        sys.stdout.write(version_line() + "\n")
        return 0
    module_name, func = _COMMANDS[name][0].split(":")
    module = __import__(module_name, fromlist=[func])
    return getattr(module, func)(rest)


if __name__ == "__main__":
    sys.exit(main())
