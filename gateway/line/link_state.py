"""The life of one device TCP link (ICD v1 revision 1.1, section 7), as one transition table.

::

    AWAIT_HELLO ──hello_ok──▶ AWAIT_CONFIRM ──confirmed──▶ UP ──(timeout, error, close...)──▶ CLOSING
         │          (HELLO_ACK sent)   │      (SESSION_CONFIRM)                                 │  ▲
         │                             └──(confirm timeout, bad session, error...)──────────────┼──┤
         └──(timeout, error)────────────────────────────────────────────────────────────────────┼──┘
                                                                                 peer EOF / linger
    any state but CLOSED ──(EOF, IO error, slow peer)──▶ CLOSED ◀─────────────────────────────────┘

Each entry maps ``(state, event)`` to ``(next state, CLOSE reason to send or
None)``. A pair not in the table is a bug in the caller and raises
:class:`IllegalTransition`. Only UP is alive and registered: a link waiting
for its SESSION_CONFIRM is not reachable, replaces nothing (rule 7) and so
cannot be REPLACED either. Leaving UP drops the link's liveness flag at once.
Issue 12: a link that fails inside its handler (INTERNAL_ERROR) closes with
CLOSE reason 2 from any state; a confirmed session finding no link buffers
(LINKS_FULL) is refused with reason 2; an UP link receiving bytes but accepting
no frame (STALLED) is dead (reason 1); an unconfirmed link giving its
pre-session place to another address (EVICTED) is aborted without a CLOSE.

Pure data; used by the link's loop thread only.
"""
from __future__ import annotations

from enum import Enum

from railcodecs import Close


class LinkState(str, Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_CONFIRM = "await_confirm"   # HELLO_ACK sent, waiting for the device's SESSION_CONFIRM
    UP = "up"
    CLOSING = "closing"
    CLOSED = "closed"


class LinkEvent(str, Enum):
    HELLO_OK = "hello_ok"                 # HELLO accepted, HELLO_ACK 0 sent
    CONFIRMED = "confirmed"               # a SESSION_CONFIRM with this link's nonces
    CONFIRM_TIMEOUT = "confirm_timeout"   # no valid SESSION_CONFIRM within the time after HELLO_ACK
    HELLO_REFUSED = "hello_refused"       # HELLO_ACK with an error result sent
    HELLO_TIMEOUT = "hello_timeout"       # no HELLO within hello_timeout_ms
    PROTOCOL_ERROR = "protocol_error"     # e.g. a frame before HELLO, a SESSION_CONFIRM with wrong nonces
    ERROR_RATE = "error_rate"             # decode/check errors over the configured rate
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    PEER_CLOSE = "peer_close"             # CLOSE frame received
    LOCAL_CLOSE = "local_close"           # gateway shutting down, or an operator
    REPLACED = "replaced"                 # a newer link of the same device and net
    SLOW_PEER = "slow_peer"               # output over the high-water mark
    EOF = "eof"                           # the peer shut its write side
    IO_ERROR = "io_error"                 # reset, broken pipe...
    LINGER_TIMEOUT = "linger_timeout"     # CLOSING waited long enough for the peer
    LINKS_FULL = "links_full"             # a valid SESSION_CONFIRM, but every device link's buffers are taken
    INTERNAL_ERROR = "internal_error"     # an unexpected exception in the link's handler (our bug)
    STALLED = "stalled"                   # bytes keep arriving but no frame is accepted (dead, ICD 7.3)
    EVICTED = "evicted"                   # an unconfirmed link made room for a source holding fewer


S, E = LinkState, LinkEvent
_CLOSING_ANYWAY = {E.HELLO_TIMEOUT: None, E.CONFIRM_TIMEOUT: None, E.HEARTBEAT_TIMEOUT: None, E.ERROR_RATE: None,
                   E.PROTOCOL_ERROR: None, E.LOCAL_CLOSE: None, E.REPLACED: None, E.PEER_CLOSE: None,
                   E.INTERNAL_ERROR: None, E.STALLED: None}

TRANSITIONS: dict[tuple[LinkState, LinkEvent], tuple[LinkState, int | None]] = {
    (S.AWAIT_HELLO, E.HELLO_OK): (S.AWAIT_CONFIRM, None),
    (S.AWAIT_HELLO, E.HELLO_REFUSED): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.AWAIT_HELLO, E.HELLO_TIMEOUT): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.AWAIT_HELLO, E.PROTOCOL_ERROR): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.AWAIT_HELLO, E.ERROR_RATE): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.AWAIT_HELLO, E.PEER_CLOSE): (S.CLOSING, Close.NORMAL),
    (S.AWAIT_HELLO, E.LOCAL_CLOSE): (S.CLOSING, Close.NORMAL),
    (S.AWAIT_HELLO, E.SLOW_PEER): (S.CLOSED, None),
    (S.AWAIT_HELLO, E.EOF): (S.CLOSED, None),
    (S.AWAIT_HELLO, E.IO_ERROR): (S.CLOSED, None),
    (S.AWAIT_HELLO, E.INTERNAL_ERROR): (S.CLOSING, Close.PROTOCOL_ERROR),
    # made room in the pre-session budget: aborted without a CLOSE (it never confirmed a session)
    (S.AWAIT_HELLO, E.EVICTED): (S.CLOSED, None),
    # heartbeats run from the HELLO_ACK on, but silence is judged only once UP: the confirm deadline
    # bounds this wait (so its CLOSE reason is the ICD's 2)
    (S.AWAIT_CONFIRM, E.CONFIRMED): (S.UP, None),
    (S.AWAIT_CONFIRM, E.CONFIRM_TIMEOUT): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.AWAIT_CONFIRM, E.PROTOCOL_ERROR): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.AWAIT_CONFIRM, E.ERROR_RATE): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.AWAIT_CONFIRM, E.PEER_CLOSE): (S.CLOSING, Close.NORMAL),
    (S.AWAIT_CONFIRM, E.LOCAL_CLOSE): (S.CLOSING, Close.NORMAL),
    (S.AWAIT_CONFIRM, E.SLOW_PEER): (S.CLOSED, None),
    (S.AWAIT_CONFIRM, E.EOF): (S.CLOSED, None),
    (S.AWAIT_CONFIRM, E.IO_ERROR): (S.CLOSED, None),
    (S.AWAIT_CONFIRM, E.LINKS_FULL): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.AWAIT_CONFIRM, E.INTERNAL_ERROR): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.AWAIT_CONFIRM, E.EVICTED): (S.CLOSED, None),
    (S.UP, E.HEARTBEAT_TIMEOUT): (S.CLOSING, Close.HEARTBEAT_TIMEOUT),
    (S.UP, E.PROTOCOL_ERROR): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.UP, E.ERROR_RATE): (S.CLOSING, Close.PROTOCOL_ERROR),
    (S.UP, E.PEER_CLOSE): (S.CLOSING, Close.NORMAL),
    (S.UP, E.LOCAL_CLOSE): (S.CLOSING, Close.NORMAL),
    (S.UP, E.REPLACED): (S.CLOSING, Close.REPLACED),
    # a peer that does not read cannot be sent a CLOSE: abort
    (S.UP, E.SLOW_PEER): (S.CLOSED, None),
    (S.UP, E.EOF): (S.CLOSED, None),
    (S.UP, E.IO_ERROR): (S.CLOSED, None),
    (S.UP, E.INTERNAL_ERROR): (S.CLOSING, Close.PROTOCOL_ERROR),
    # "nothing has arrived" counts accepted frames, not bytes (docs/icd-decisions.md): dead, CLOSE reason 1
    (S.UP, E.STALLED): (S.CLOSING, Close.HEARTBEAT_TIMEOUT),
    # CLOSING: our CLOSE is queued and the write side shut after it; wait for the peer
    **{(S.CLOSING, ev): (S.CLOSING, reason) for ev, reason in _CLOSING_ANYWAY.items()},
    (S.CLOSING, E.SLOW_PEER): (S.CLOSED, None),
    (S.CLOSING, E.EOF): (S.CLOSED, None),
    (S.CLOSING, E.IO_ERROR): (S.CLOSED, None),
    (S.CLOSING, E.LINGER_TIMEOUT): (S.CLOSED, None),
    (S.CLOSING, E.EVICTED): (S.CLOSED, None),
}


class IllegalTransition(RuntimeError):
    """A link was asked to make a move its state machine does not have (our bug)."""


def next_state(state: LinkState, event: LinkEvent) -> tuple[LinkState, int | None]:
    """Look up one move; raises IllegalTransition for a pair not in the table."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"link in state {state.value} cannot take event {event.value}") from None
