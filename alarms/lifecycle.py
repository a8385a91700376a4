"""The ISA-18.2 alarm state machine: every legal move in one table.

An alarm has a *state* (what the operator sees) and a *condition* (is the
process abnormal right now: ``active``). ``raise`` sets the condition,
``clear`` resets it; operator transitions leave it alone. SHELVED and
OUT_OF_SERVICE hide the alarm but keep following the condition underneath, so
``unshelve`` / ``shelve_expired`` / ``return_to_service`` land in UNACK when
the condition is active (the alarm is annunciated again) and in NORMAL when it
is not.

::

    NORMAL --raise--> UNACK --ack--> ACKED --clear--> NORMAL
                        |                 \\
                      clear              (shelve / remove_from_service from
                        v                 UNACK, ACKED, RTN_UNACK)
                    RTN_UNACK --ack--> NORMAL
                        \\--raise--> UNACK

System transitions (the engine's, never an operator's; ``cause`` in the event says why):

* ``evict`` (cause ``table_full``): a returned-unacknowledged alarm leaves a
  full table (RTN_UNACK -> NORMAL); the oldest of the lowest priority goes first.
* ``group`` (cause ``table_full``): the alarm is represented by its source's
  flood group alarm ``<source>/FLOOD_<code>/-`` and leaves the table (-> NORMAL,
  ``active`` still the condition's); while grouped, each raise and clear of it
  is journaled as a ``group`` event NORMAL -> NORMAL with its ``active``.
* ``auto_shelve`` (cause ``chattering``): shelved by rule (ISA-18.2 "shelved";
  no end time: it ends after a quiet period); ``auto_unshelve`` ends it and,
  like ``unshelve``, lands in UNACK or NORMAL by the condition underneath.

Decisions where ISA-18.2 leaves room:

* NORMAL accepts only ``raise``: an alarm in NORMAL is not in the engine's
  table, so there is nothing to shelve or take out of service yet.
* ``shelve`` of a SHELVED alarm re-shelves it (the operator extends the time).
* ``remove_from_service`` of a SHELVED alarm is allowed (maintenance
  supersedes a shelve; the shelve time is dropped); OUT_OF_SERVICE accepts
  only ``raise``, ``clear`` and ``return_to_service``.
* A ``raise`` of an alarm whose condition is already active (or a ``clear`` of
  one already inactive) is not a transition: the engine ignores it before it
  gets here, so those pairs are illegal in the table.

Pure functions over immutable values; safe from any thread.
"""
from __future__ import annotations

from alarms.model import STATES

NORMAL, UNACK, ACKED, RTN_UNACK, SHELVED, OUT_OF_SERVICE = STATES
#: the table's transitions (``info`` events never enter the table)
MOVES = ("raise", "clear", "ack", "shelve", "unshelve", "shelve_expired", "remove_from_service",
         "return_to_service", "evict", "group", "auto_shelve", "auto_unshelve")
#: the state an unshelve / return lands in, by the condition underneath
_BACK = (UNACK, NORMAL)

#: (state, transition) -> next state, or (next if the condition is active, next if not)
TABLE: dict[tuple[str, str], str | tuple[str, str]] = {
    (NORMAL, "raise"): UNACK,
    (NORMAL, "group"): NORMAL,              # a grouped member's raise or clear (journaled, not in the table)
    (NORMAL, "auto_shelve"): SHELVED,       # an acked alarm that chattered back to NORMAL stays, shelved

    (UNACK, "clear"): RTN_UNACK,
    (UNACK, "ack"): ACKED,
    (UNACK, "shelve"): SHELVED,
    (UNACK, "remove_from_service"): OUT_OF_SERVICE,
    (UNACK, "group"): NORMAL,
    (UNACK, "auto_shelve"): SHELVED,

    (ACKED, "clear"): NORMAL,
    (ACKED, "shelve"): SHELVED,
    (ACKED, "remove_from_service"): OUT_OF_SERVICE,
    (ACKED, "group"): NORMAL,
    (ACKED, "auto_shelve"): SHELVED,

    (RTN_UNACK, "raise"): UNACK,
    (RTN_UNACK, "ack"): NORMAL,
    (RTN_UNACK, "shelve"): SHELVED,
    (RTN_UNACK, "remove_from_service"): OUT_OF_SERVICE,
    (RTN_UNACK, "evict"): NORMAL,
    (RTN_UNACK, "auto_shelve"): SHELVED,

    (SHELVED, "raise"): SHELVED,
    (SHELVED, "clear"): SHELVED,
    (SHELVED, "shelve"): SHELVED,
    (SHELVED, "unshelve"): _BACK,
    (SHELVED, "shelve_expired"): _BACK,
    (SHELVED, "remove_from_service"): OUT_OF_SERVICE,
    (SHELVED, "group"): NORMAL,             # only a shelve by rule (chattering) is grouped
    (SHELVED, "auto_unshelve"): _BACK,

    (OUT_OF_SERVICE, "raise"): OUT_OF_SERVICE,
    (OUT_OF_SERVICE, "clear"): OUT_OF_SERVICE,
    (OUT_OF_SERVICE, "return_to_service"): _BACK,
}

#: the condition each visible state implies (SHELVED / OUT_OF_SERVICE track it separately)
IMPLIED_ACTIVE = {NORMAL: False, UNACK: True, ACKED: True, RTN_UNACK: False}


class IllegalTransition(ValueError):
    """A transition the table does not allow from the alarm's state."""

    def __init__(self, state: str, transition: str, key: str = "") -> None:
        self.state, self.transition, self.key = state, transition, key
        allowed = ", ".join(t for s, t in TABLE if s == state) or "nothing"
        who = f"alarm {key}: " if key else ""
        super().__init__(f"{who}{transition} is not allowed in state {state} (allowed: {allowed})")


def step(state: str, active: bool, transition: str, key: str = "") -> tuple[str, bool]:
    """``(state, active)`` after ``transition``; raises :class:`IllegalTransition`.

    ``active`` is the process condition; ``raise`` / ``clear`` set it, the
    operator transitions keep it.
    """
    if state not in STATES:
        raise ValueError(f"alarm {key}: unknown state {state!r} (expected one of {', '.join(STATES)})")
    if transition not in MOVES:
        raise ValueError(f"alarm {key}: unknown transition {transition!r} (expected one of {', '.join(MOVES)})")
    target = TABLE.get((state, transition))
    if target is None:
        raise IllegalTransition(state, transition, key)
    if transition == "raise":
        active = True
    elif transition == "clear":
        active = False
    if isinstance(target, tuple):
        target = target[0] if active else target[1]
    return target, active


def is_legal(state: str, transition: str) -> bool:
    return (state, transition) in TABLE
