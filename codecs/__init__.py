"""railcodecs: sans-IO codecs and receiver checks for the ICD v1 device links.

The source folder is ``codecs/`` but it installs as ``railcodecs`` because
``codecs`` is a standard-library module (see pyproject.toml).

Nothing in this package touches a socket or reads a clock: feed it bytes and
timestamps, get frames, errors and decisions back.
"""
from .datagram import decode_datagram, expected_size
from .errors import FieldError, FrameError, PayloadError, Reason
from .frame import (ALL_TYPES, DEVICE_RX_TYPES, GATEWAY_RX_TYPES, HEADER_LEN, MAC_LEN, MAX_FRAME_LEN, MAX_PAYLOAD,
                    LINK_KEY_TYPES, NO_MAC, TCP_TYPES, UDP_TYPES, Frame, MacPolicy, compute_mac, encode, encode_frame,
                    session_key)
from .messages import (Close, Command, CommandResult, DeviceAlarm, Heartbeat, Hello, HelloAck, Message,
                       SessionConfirm, Signals, Switches, TrackSections)
from .receiver import LinkChecks, Receiver, SenderState
from .sequence import SequenceWindow, seq_distance, seq_next
from .stream import NEED_DATA, StreamDecoder
from .train_messages import TrainDiag, TrainHeartbeat, TrainStatus

__all__ = [
    "ALL_TYPES", "Close", "Command", "CommandResult", "DEVICE_RX_TYPES", "DeviceAlarm", "FieldError", "Frame",
    "FrameError", "GATEWAY_RX_TYPES", "HEADER_LEN", "Heartbeat", "Hello", "HelloAck", "MAC_LEN", "MAX_FRAME_LEN",
    "LINK_KEY_TYPES", "LinkChecks", "MAX_PAYLOAD", "MacPolicy", "Message", "NEED_DATA", "NO_MAC", "PayloadError",
    "Reason", "Receiver",
    "SenderState", "SequenceWindow", "SessionConfirm", "Signals", "seq_distance", "seq_next",
    "StreamDecoder", "Switches", "TCP_TYPES", "TrackSections", "TrainDiag", "TrainHeartbeat", "TrainStatus",
    "UDP_TYPES", "compute_mac", "decode_datagram", "encode", "encode_frame", "expected_size", "session_key",
]
