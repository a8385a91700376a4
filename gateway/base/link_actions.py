"""The action bits a link protocol returns to its connection: the seam between line and net.

``gateway/line/link_protocol.py`` decides (no IO); ``gateway/net/connection.py``
performs (IO only). Neither layer may import the other, so the few words they
share live here, below both. Every protocol entry point returns an ``int``
OR-ing these bits (0: nothing to do); output frames travel separately, in the
protocol's ``outbox``. The connection performs the bits in the order below
(ARM_CONFIRM right after ARM_HEARTBEAT, which would cancel it).
See the protocol's module docstring for what each asks and when.

Plain ints, not an ``IntFlag``: they are tested on every protocol call, and an
enum's ``&`` builds a new member each time.
"""

ARM_HELLO = 1        # one-shot timer after protocol.hello_timeout_s -> protocol.hello_timeout()
ARM_HEARTBEAT = 2    # cancel the link's timers; periodic timer every protocol.heartbeat_s -> heartbeat_tick()
ARM_DEAD = 4         # (re)arm the one-shot timer at protocol.dead_at -> dead_deadline()
BEGIN_CLOSE = 8      # queue protocol.send_close() behind queued sends; linger timer -> linger_timeout()
SHUTDOWN_WRITE = 16  # shut the write side once every queued byte is flushed
DESTROY = 32         # unregister and close the socket, then protocol.connection_lost()
READ_FIRST = 64      # read what the kernel holds, then call the same timer method again with fresh=True
ARM_CONFIRM = 128    # one-shot timer after protocol.confirm_timeout_s -> protocol.confirm_timeout()
