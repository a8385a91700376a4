"""systemd's notify protocol without libsystemd: READY=1, WATCHDOG=1, STOPPING=1.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: an AF_UNIX datagram
socket, a path, or a name in the abstract namespace when it starts with ``@``.
Each :func:`notify` sends one datagram of ``KEY=value`` lines there. Without
``$NOTIFY_SOCKET`` (a terminal, a container, the tests) it does nothing.

With ``WatchdogSec=`` systemd also passes ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``): :func:`watchdog_interval_s` is half that period, the
interval at which the gateway's base loop sends ``WATCHDOG=1``; a base loop
that stops turning stops the pings, and systemd restarts the service.

Never raises into the caller: a failure to send (socket gone, permission,
malformed address) is logged once, as a warning, and the call returns False.

Threading: any thread; each call opens, sends on and closes its own socket.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("railgate.sd_notify")

_failed_logged = False


def _address(value: str) -> str:
    """``@name`` is the abstract namespace (a leading NUL byte); anything else is a path."""
    return "\0" + value[1:] if value.startswith("@") else value


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"WATCHDOG=1"``, ``"STOPPING=1"``; lines joined by
    newlines) to ``$NOTIFY_SOCKET``. True when sent, False when unset or on failure (logged once)."""
    global _failed_logged
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    try:
        if target[0] not in "/@":
            raise OSError(f"NOTIFY_SOCKET is neither a path nor an abstract name: {target!r}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), _address(target))
        return True
    except Exception as exc:  # noqa: BLE001 - the notify channel must never take the gateway down
        if not _failed_logged:
            _failed_logged = True
            log.warning("sd_notify: cannot send %r to %s: %s (further failures not logged)",
                        state.split("\n", 1)[0], target, exc)
        return False


def watchdog_interval_s() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when systemd
    set no watchdog for this process (unset, not a positive integer, or ``$WATCHDOG_PID`` names
    another process)."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec) if usec else 0
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
