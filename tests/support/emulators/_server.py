"""The HTTP server, request log, fault handling and session registry common to both emulators."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._checks import Rejected
from ._faults import (
    AssignSessionId,
    CloseConnection,
    Delay,
    Fault,
    FaultScript,
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
from ._sessions import (
    AvatarHandle,
    AvatarLaunch,
    AvatarLauncher,
    EmulatedSession,
    Provider,
    SessionStatus,
)

# Hangs and delays are released by the close event; this only bounds a handler stuck elsewhere.
_SHUTDOWN_TIMEOUT = 2.0
_RECORD = web.RequestKey("emulator_record", RecordedRequest)


@dataclass
class Reply:
    """A JSON answer. `success_field` names the key the fault model may strip from a 2xx body."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    success_field: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


Processor = Callable[[web.Request, RecordedRequest], Awaitable[Reply]]


class EmulatorServer(ABC):
    """An aiohttp server on 127.0.0.1 (a free port); use as an async context manager.

    `latency` (seconds) is added to every call to a route before it is looked at, as a real
    provider's network and processing time (the benchmark's "API latency"); `connect_latency` once
    more to the first call on each new connection, as DNS, TCP and TLS cost a client that does not
    keep its connections.
    """

    provider: Provider

    def __init__(
        self,
        *,
        routes: Iterable[str],
        avatar_launcher: AvatarLauncher | None,
        latency: float = 0.0,
        connect_latency: float = 0.0,
    ) -> None:
        if latency < 0 or connect_latency < 0:
            raise ValueError("latencies must be >= 0")
        self._latency = latency
        self._connect_latency = connect_latency
        self._connections: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._faults = FaultScript(routes)
        self._launcher = avatar_launcher
        self._requests: list[RecordedRequest] = []
        self._sessions: dict[str, EmulatedSession] = {}
        self._launch_tasks: set[asyncio.Task[None]] = set()
        self._length_caps: set[asyncio.Task[None]] = set()
        self._app = web.Application(middlewares=[self._record_middleware])
        self._runner: web.AppRunner | None = None
        self._url: URL | None = None
        self._closing = asyncio.Event()
        self._changed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        runner = web.AppRunner(
            self._app, handle_signals=False, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = URL.build(scheme="http", host=host, port=port)

    async def aclose(self) -> None:
        """Drop hanging requests, stop the server, cancel pending launches, close every avatar."""
        if self._runner is None or self._closing.is_set():
            return
        self._closing.set()
        await self._runner.cleanup()
        pending = [*self._launch_tasks, *self._length_caps]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(self._stop_avatar(s) for s in self._sessions.values()))
        self._notify()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("emulator not started")
        return str(self._url)

    # -- test-facing inspection and control -----------------------------------------------------

    @property
    def routes(self) -> tuple[str, ...]:
        return self._faults.routes

    @property
    def requests(self) -> tuple[RecordedRequest, ...]:
        """Every request received, in order of arrival (including ones to unknown paths)."""
        return tuple(self._requests)

    def requests_for(self, route: str) -> tuple[RecordedRequest, ...]:
        if route not in self._faults.routes:
            raise ValueError(f"unknown route {route!r}")
        return tuple(r for r in self._requests if r.route == route)

    @property
    def sessions(self) -> tuple[EmulatedSession, ...]:
        """Every session created, in order of creation."""
        return tuple(self._sessions.values())

    @property
    def active_sessions(self) -> tuple[EmulatedSession, ...]:
        """Sessions created and not terminated or ended: the ones the provider is billing."""
        return tuple(s for s in self._sessions.values() if s.active)

    def session(self, session_id: str) -> EmulatedSession:
        return self._sessions[session_id]

    def inject(self, route: str, *faults: Fault) -> None:
        """Append faults to `route`'s script; each request to the route consumes the next one."""
        self._faults.add(route, faults)

    def pending_faults(self, route: str) -> tuple[Fault, ...]:
        return self._faults.pending(route)

    def clear_faults(self) -> None:
        """Drop every fault not consumed yet (between tests sharing one emulator)."""
        self._faults.clear()

    async def end_session(self, session_id: str, status: SessionStatus = "COMPLETED") -> None:
        """End a session from the provider's side (idle timeout, avatar removed...)."""
        session = self._sessions[session_id]
        session.status = status
        self._mark_ended(session)
        await self._stop_avatar(session)

    def cap_length(self, session_id: str, seconds: float) -> None:
        """End the session `seconds` after now, as a provider does at its length cap (TIMED_OUT)."""

        async def end_at_cap() -> None:
            await asyncio.sleep(seconds)  # the provider's own clock: the cap is a duration
            if self._sessions[session_id].active:
                await self.end_session(session_id, "TIMED_OUT")

        task = asyncio.create_task(end_at_cap(), name=f"emulator-cap-{session_id}")
        self._length_caps.add(task)
        task.add_done_callback(self._length_caps.discard)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds; it is re-checked whenever requests or sessions change.

        Bound it with `asyncio.timeout(...)`.
        """
        while not predicate():
            await self._changed.wait()

    async def settle_launches(self) -> None:
        """Wait for every avatar launch started so far to finish (successfully or not)."""
        await asyncio.gather(*list(self._launch_tasks), return_exceptions=True)

    # -- for subclasses -------------------------------------------------------------------------

    @abstractmethod
    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """The provider's JSON error shape."""

    def add_route(self, method: str, path: str, route: str, process: Processor) -> None:
        if route not in self._faults.routes:
            raise ValueError(f"route {route!r} is not declared")

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, request[_RECORD], route, process)

        self._app.router.add_route(method, path, handle, name=route)

    def create_session(
        self,
        record: RecordedRequest,
        *,
        config: Mapping[str, Any],
        livekit_url: str,
        livekit_token: str,
        sample_rate: int,
    ) -> EmulatedSession:
        fault = record.fault
        session_id = fault.session_id if isinstance(fault, AssignSessionId) else str(uuid.uuid4())
        session = EmulatedSession(
            session_id=session_id,
            provider=self.provider,
            request=record,
            config=config,
            launch=AvatarLaunch(
                provider=self.provider,
                session_id=session_id,
                livekit_url=livekit_url,
                livekit_token=livekit_token,
                sample_rate=sample_rate,
                avatar_left=functools.partial(self._avatar_left, session_id),
            ),
        )
        self._sessions[session_id] = session
        if self._launcher is None:
            session.status = "ACTIVE"
        else:
            task = asyncio.create_task(
                self._launch_avatar(self._launcher, session), name=f"emulator-launch-{session_id}"
            )
            self._launch_tasks.add(task)
            task.add_done_callback(self._launch_tasks.discard)
        self._notify()
        return session

    async def terminate_session(self, session: EmulatedSession) -> None:
        session.terminated = True
        if session.status in ("QUEUED", "ACTIVE"):
            session.status = "COMPLETED"
        self._mark_ended(session)
        await self._stop_avatar(session)

    # -- internals ------------------------------------------------------------------------------

    @web.middleware
    async def _record_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        record = RecordedRequest(
            seq=len(self._requests),
            method=request.method,
            path=request.path,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            arrived_at=loop.time(),
        )
        if request.transport is not None and request.transport not in self._connections:
            self._connections.add(request.transport)
            record.new_connection = True
        self._requests.append(record)
        self._notify()
        record.body = await request.read()
        try:
            record.json = json.loads(record.body)
            record.is_json = True
        except ValueError:
            pass
        not_routed = request.match_info.http_exception
        if not_routed is not None:
            reply = Reply(not_routed.status, self.error_body(not_routed.status, not_routed.reason))
            if "Allow" in not_routed.headers:
                reply.headers["Allow"] = not_routed.headers["Allow"]
            return self._answer(record, reply)
        record.route = request.match_info.route.name
        request[_RECORD] = record
        return await handler(request)

    async def _serve(
        self, request: web.Request, record: RecordedRequest, route: str, process: Processor
    ) -> web.StreamResponse:
        delay = self._latency
        if record.new_connection:
            delay += self._connect_latency
        if delay:
            if not await self._pause(delay):
                return self._drop(request, record, "emulator closed during its latency")
            if request.transport is None or request.transport.is_closing():
                return self._drop(request, record, "client went away during the latency")
        fault = self._faults.pop(route)
        record.fault = fault
        if isinstance(fault, StatusFault):
            return self._answer_fault(record, fault)
        if isinstance(fault, Hang):
            await self._closing.wait()
            return self._drop(request, record, "hang released on close")
        if isinstance(fault, CloseConnection):
            return self._drop(request, record, "closed by fault")
        if isinstance(fault, Delay):
            if not await self._pause(fault.seconds):
                return self._drop(request, record, "emulator closed during delay")
            if request.transport is None or request.transport.is_closing():
                return self._drop(request, record, "client went away during delay")

        if self._closing.is_set():
            return self._drop(request, record, "emulator closing")
        try:
            reply = await process(request, record)
        except Rejected as rejected:
            reply = Reply(
                rejected.status,
                self.error_body(rejected.status, rejected.message),
                rejected.headers,
            )
        if not reply.ok:
            return self._answer(record, reply)

        if isinstance(fault, ProcessThenFail):
            status_fault = StatusFault(fault.status, fault.message, echo_request=fault.echo_request)
            return self._answer_fault(record, status_fault)
        if isinstance(fault, MalformedJson):
            text = json.dumps(reply.body)
            broken = fault.body if fault.body is not None else text[: len(text) // 2].encode()
            return self._answer_raw(record, reply.status, broken)
        if isinstance(fault, MissingSuccessField) and reply.success_field is not None:
            body = dict(reply.body)
            if fault.empty:
                body[reply.success_field] = ""
            else:
                body.pop(reply.success_field, None)
            return self._answer(record, Reply(reply.status, body, reply.headers))
        if isinstance(fault, SucceedSlow) and not await self._pause(fault.seconds):
            return self._drop(request, record, "emulator closed before the slow reply")
        if isinstance(fault, SucceedWhenReleased) and not await self._until_released(fault):
            return self._drop(request, record, "emulator closed before the held reply")
        if isinstance(fault, LoseReply):
            return self._drop(request, record, "reply lost by fault")
        return self._answer(record, reply)

    def _answer_fault(self, record: RecordedRequest, fault: StatusFault) -> web.Response:
        if fault.echo_request == "text":
            text = f"{HTTPStatus(fault.status).phrase}: could not process ".encode() + record.body
            return self._answer_raw(record, fault.status, text, "text/plain")
        if fault.echo_request == "json":
            echoed = record.body.decode("utf-8", "replace")
            return self._answer(record, Reply(fault.status, self.error_body(fault.status, echoed)))
        return self._answer(record, self._status_fault_reply(fault))

    def _status_fault_reply(self, fault: StatusFault) -> Reply:
        message = fault.message or HTTPStatus(fault.status).phrase
        body = (
            dict(fault.body) if fault.body is not None else self.error_body(fault.status, message)
        )
        reply = Reply(fault.status, body)
        if isinstance(fault.retry_after, datetime):
            stamp = fault.retry_after.astimezone(UTC)
            reply.headers["Retry-After"] = email.utils.format_datetime(stamp, usegmt=True)
        elif isinstance(fault.retry_after, int | float):
            reply.headers["Retry-After"] = str(round(fault.retry_after))
        elif fault.retry_after is not None:
            reply.headers["Retry-After"] = fault.retry_after
        return reply

    async def _pause(self, seconds: float | None) -> bool:
        """Wait `seconds` (None: forever). False if the emulator started closing meanwhile."""
        if seconds is None:
            await self._closing.wait()
            return False
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            return True
        return False

    async def _until_released(self, fault: SucceedWhenReleased) -> bool:
        """Wait for the test's release. False if the emulator started closing first."""
        released = asyncio.ensure_future(fault.released.wait())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({released, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            closing.cancel()
        return fault.released.is_set()

    def _answer(self, record: RecordedRequest, reply: Reply) -> web.Response:
        response = web.json_response(reply.body, status=reply.status, headers=reply.headers)
        self._mark_answered(record, reply.status)
        return response

    def _answer_raw(
        self,
        record: RecordedRequest,
        status: int,
        body: bytes,
        content_type: str = "application/json",
    ) -> web.Response:
        response = web.Response(status=status, body=body, content_type=content_type)
        self._mark_answered(record, status)
        return response

    def _mark_answered(self, record: RecordedRequest, status: int) -> None:
        record.status = status
        record.answered_at = record.finished_at = asyncio.get_running_loop().time()
        self._notify()

    def _drop(self, request: web.Request, record: RecordedRequest, why: str) -> web.Response:
        # Closing the transport makes aiohttp skip writing the response we return.
        if request.transport is not None:
            request.transport.close()
        record.dropped = why
        record.finished_at = asyncio.get_running_loop().time()
        self._notify()
        return web.Response(status=500)

    async def _launch_avatar(self, launcher: AvatarLauncher, session: EmulatedSession) -> None:
        try:
            handle = await launcher(session.launch)
        except Exception as error:
            session.avatar_error = error
            if session.status in ("QUEUED", "ACTIVE"):
                session.status = "FAILED"
            self._mark_ended(session)
            return
        session.avatar_launched = True
        session.avatar = handle
        if session.status == "QUEUED" and not session.terminated:
            session.status = "ACTIVE"
        self._notify()
        if not session.active:
            await self._stop_avatar(session)

    def _avatar_left(self, session_id: str) -> None:
        session = self._sessions[session_id]
        if session.status in ("QUEUED", "ACTIVE"):
            session.status = "COMPLETED"
            self._mark_ended(session)

    async def _stop_avatar(self, session: EmulatedSession) -> None:
        handle: AvatarHandle | None = session.avatar
        if handle is None:
            return
        session.avatar = None
        try:
            await handle.aclose()
        except Exception as error:
            session.avatar_error = error
        session.avatar_closed = True
        self._notify()

    def _mark_ended(self, session: EmulatedSession) -> None:
        if session.ended_at is None and not session.active:
            session.ended_at = asyncio.get_running_loop().time()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
