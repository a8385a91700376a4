"""Which implementation of the per-frame path runs: the compiled core or the pure-Python reference.

The compiled core (``railcodecs._core``, built from ``codecs/_core.pyx`` by ``pip install``)
gives a compiled :class:`SequenceWindow` and object table, a link's steady path in C
(:class:`FastLink`), and the trains' datagram step in C (:class:`TrainBatch`, with the train
senders and the train table it writes). The pure-Python modules (``sequence.py``, ``stream.py``, ``receiver.py``,
``gateway/line/object_state.py``) are the reference and the fallback: they run when the
extension is missing (no compiler at install time) or when ``RAILGATE_PURE=1`` is set in the
environment. :func:`implementation` names the one in use (``gateway status`` and ``/metrics``
show it).

Objects are built for the implementation active at their construction: :func:`use` switches it
for objects built afterwards (the tests run the codec, receiver and link suites once per
implementation this way; a gateway never switches).

Threading: read from any thread; :func:`use` only before the objects it concerns are built.
"""
from __future__ import annotations

import os

from .sequence import SequenceWindow as PureSequenceWindow

try:
    if os.environ.get("RAILGATE_PURE") == "1":
        raise ImportError("RAILGATE_PURE=1 is set")
    from . import _core
    UNAVAILABLE = ""
except ImportError as exc:  # not built (no compiler at install time) or forced off
    _core = None
    UNAVAILABLE = str(exc)

_active = _core


def implementation() -> str:
    """``"compiled"`` or ``"pure"``: what objects built now use."""
    return "compiled" if _active is not None else "pure"


def available() -> bool:
    """Whether the compiled core was built and is not forced off by RAILGATE_PURE=1."""
    return _core is not None


def use(name: str) -> None:
    """Build the next objects with ``"compiled"`` or ``"pure"`` (ValueError for an unknown name,
    RuntimeError when the compiled core is not available)."""
    global _active
    if name == "pure":
        _active = None
    elif name == "compiled":
        if _core is None:
            raise RuntimeError(f"the compiled core is not available: {UNAVAILABLE}")
        _active = _core
    else:
        raise ValueError(f"implementation must be 'compiled' or 'pure', got {name!r}")


#: the names of the hot-field bases (codecs/_fields.pxi) and their fields, for the pure twins
FIELDS = {
    "ReadableFields": ("_buf", "_read", "_write"),
    "DecoderFields": ("_offset", "_silent_until", "_garbage_start", "_events", "_abandon"),
    "ChecksFields": ("offset_ms", "hb_last", "rx_frames", "applied", "copies"),
    "LinkFields": ("alive", "fast", "_partial_since", "last_rx", "last_frame",
                   "ctx", "device_id", "heartbeat_ms", "outbox", "_acts", "_tx_key", "_hb_counter", "tx_frames"),
}


def fields_base(name: str) -> type:
    """The base class that holds a hot class's fields (``codecs/_fields.pxi``): the compiled core's,
    whose fields are C struct members the steady path reads without a lookup, when it is built and
    not forced off; else a plain class with those names as ``__slots__``. Chosen once, when the
    class using it is defined (both keep the same names and values, so ``use`` need not change it)."""
    if _core is not None:
        return getattr(_core, name)
    return pure_twin(name, FIELDS[name], __name__)


def pure_twin(name: str, fields: tuple, module: str) -> type:
    """A plain class named ``name`` with ``fields`` as ``__slots__``: the pure implementation's
    stand-in for a compiled hot-field base (here and ``gateway.net.compiled.conn_fields_base``)."""
    return type(name, (), {"__slots__": fields, "__module__": module,
                           "__doc__": f"The pure twin of the compiled {name}."})


def new_window(window: int = 1024):
    """A sender's sequence window in the active implementation."""
    return _active.SequenceWindow(window) if _active is not None else PureSequenceWindow(window)


def new_table():
    """An empty object table, ``(device, object) -> (value, applied_ms)``: a dict when pure."""
    return _active.ObjectTable() if _active is not None else {}


def sender_type():
    """The class of a sender's ``SenderState`` in the active implementation (the compiled ``Sender``
    keeps the counters in C fields and its lock is a ``CLock``, which ``FastLink`` and ``TrainBatch``
    use without Python operations), or None: the pure SenderState."""
    return _active.Sender if _active is not None else None


def new_train_table(state_type):
    """An empty train table, ``train id -> state_type(...)`` (``ObjectState.trains``): a dict when pure."""
    return _active.TrainTable(state_type) if _active is not None else {}


def train_batch(arena, slot_size, max_datagram, receiver, checks, policy, trains, seen, coupling, python_step):
    """The compiled per-batch step of the trains' UDP endpoint (``_core.TrainBatch``), or None when
    the pure step must run: pure, a part built pure (the train senders, the train table), a
    session-keyed MAC policy (a TCP link's), or a coupling hand-off without ``submit_batch``.

    ``coupling``: the coupling workers (``submit_batch``, ``worker_count``, ``paired_trains``) or None."""
    core = _active
    if core is None or not isinstance(trains, core.TrainTable) or policy.session_key is not None:
        return None
    if any(s.kind == 4 and not isinstance(s, core.Sender) for s in receiver.senders.values()):
        return None
    if coupling is not None and not hasattr(coupling, "submit_batch"):
        return None
    return core.TrainBatch(arena, slot_size, max_datagram, receiver, checks, policy, trains, seen,
                           None if coupling is None else coupling.submit_batch,
                           frozenset() if coupling is None else coupling.paired_trains(),
                           1 if coupling is None else coupling.worker_count, python_step)


def fast_link(decoder, checks, sender, receiver, objects, session_key, link=None):
    """The compiled steady path for one confirmed link, or None (pure, or a part built pure).
    ``link``: the link's protocol (a ``LinkFields``), whose times the compiled reader's calls
    (``READER_API``) record; None for a FastLink run from Python only."""
    core = _active
    if core is None or not isinstance(sender, core.Sender) or not isinstance(objects.sections, core.ObjectTable):
        return None
    return core.FastLink(decoder, checks, sender, receiver, objects, session_key, link)
