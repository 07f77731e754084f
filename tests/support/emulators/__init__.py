"""Strict local HTTP emulators of the LemonSlice and Anam avatar APIs, for tests."""

from ._faults import (
    AssignSessionId,
    CloseConnection,
    Delay,
    Fault,
    Hang,
    LoseReply,
    MalformedJson,
    MissingSuccessField,
    ProcessThenFail,
    StatusFault,
    SucceedSlow,
    SucceedWhenReleased,
)
from ._records import RecordedRequest
from ._server import EmulatorServer
from ._sessions import AvatarHandle, AvatarLaunch, AvatarLauncher, EmulatedSession, SessionStatus
from .anam import AnamEmulator
from .lemonslice import LemonSliceEmulator

__all__ = [
    "AnamEmulator",
    "AssignSessionId",
    "AvatarHandle",
    "AvatarLaunch",
    "AvatarLauncher",
    "CloseConnection",
    "Delay",
    "EmulatedSession",
    "EmulatorServer",
    "Fault",
    "Hang",
    "LemonSliceEmulator",
    "LoseReply",
    "MalformedJson",
    "MissingSuccessField",
    "ProcessThenFail",
    "RecordedRequest",
    "SessionStatus",
    "StatusFault",
    "SucceedSlow",
    "SucceedWhenReleased",
]
