"""The ISA-18.2 table: every (state, transition) pair is either the expected move or refused."""
import itertools

import pytest

from alarms.lifecycle import MOVES, TABLE, IllegalTransition, step
from alarms.model import STATES

# the spec, written out independently of alarms/lifecycle.py: (state, transition) -> (if active, if not)
EXPECTED = {
    ("NORMAL", "raise"): ("UNACK", "UNACK"),
    ("UNACK", "clear"): ("RTN_UNACK", "RTN_UNACK"),
    ("UNACK", "ack"): ("ACKED", "ACKED"),
    ("UNACK", "shelve"): ("SHELVED", "SHELVED"),
    ("UNACK", "remove_from_service"): ("OUT_OF_SERVICE", "OUT_OF_SERVICE"),
    ("ACKED", "clear"): ("NORMAL", "NORMAL"),
    ("ACKED", "shelve"): ("SHELVED", "SHELVED"),
    ("ACKED", "remove_from_service"): ("OUT_OF_SERVICE", "OUT_OF_SERVICE"),
    ("RTN_UNACK", "raise"): ("UNACK", "UNACK"),
    ("RTN_UNACK", "ack"): ("NORMAL", "NORMAL"),
    ("RTN_UNACK", "shelve"): ("SHELVED", "SHELVED"),
    ("RTN_UNACK", "remove_from_service"): ("OUT_OF_SERVICE", "OUT_OF_SERVICE"),
    ("SHELVED", "raise"): ("SHELVED", "SHELVED"),
    ("SHELVED", "clear"): ("SHELVED", "SHELVED"),
    ("SHELVED", "shelve"): ("SHELVED", "SHELVED"),
    ("SHELVED", "unshelve"): ("UNACK", "NORMAL"),
    ("SHELVED", "shelve_expired"): ("UNACK", "NORMAL"),
    ("SHELVED", "remove_from_service"): ("OUT_OF_SERVICE", "OUT_OF_SERVICE"),
    ("OUT_OF_SERVICE", "raise"): ("OUT_OF_SERVICE", "OUT_OF_SERVICE"),
    ("OUT_OF_SERVICE", "clear"): ("OUT_OF_SERVICE", "OUT_OF_SERVICE"),
    ("OUT_OF_SERVICE", "return_to_service"): ("UNACK", "NORMAL"),
    # system transitions (issue 15): eviction from a full table, flood groups, shelving by rule
    ("RTN_UNACK", "evict"): ("NORMAL", "NORMAL"),
    ("NORMAL", "group"): ("NORMAL", "NORMAL"),
    ("UNACK", "group"): ("NORMAL", "NORMAL"),
    ("ACKED", "group"): ("NORMAL", "NORMAL"),
    ("SHELVED", "group"): ("NORMAL", "NORMAL"),
    ("NORMAL", "auto_shelve"): ("SHELVED", "SHELVED"),
    ("UNACK", "auto_shelve"): ("SHELVED", "SHELVED"),
    ("ACKED", "auto_shelve"): ("SHELVED", "SHELVED"),
    ("RTN_UNACK", "auto_shelve"): ("SHELVED", "SHELVED"),
    ("SHELVED", "auto_unshelve"): ("UNACK", "NORMAL"),
}
# the condition underneath a state before the move (SHELVED / OUT_OF_SERVICE: both are possible)
CONDITIONS = {"NORMAL": (False,), "UNACK": (True,), "ACKED": (True,), "RTN_UNACK": (False,),
              "SHELVED": (True, False), "OUT_OF_SERVICE": (True, False)}


def test_table_is_the_spec():
    assert set(TABLE) == set(EXPECTED)
    assert len(STATES) * len(MOVES) == 6 * 12


@pytest.mark.parametrize("state,transition", list(itertools.product(STATES, MOVES)))
def test_every_pair(state, transition):
    for active in CONDITIONS[state]:
        if (state, transition) in EXPECTED:
            new_state, new_active = step(state, active, transition, "CI-1/X/-")
            after = {"raise": True, "clear": False}.get(transition, active)
            assert new_active is after
            assert new_state == EXPECTED[(state, transition)][0 if after else 1]
        else:
            with pytest.raises(IllegalTransition) as err:
                step(state, active, transition, "CI-1/X/-")
            msg = str(err.value)
            assert state in msg and transition in msg and "CI-1/X/-" in msg
            assert (err.value.state, err.value.transition) == (state, transition)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown state 'BOGUS'"):
        step("BOGUS", False, "raise")
    with pytest.raises(ValueError, match="unknown transition 'info'"):
        step("NORMAL", False, "info")
