"""The recovery path's own faults, a second dispatch into a live room, and a rolling deploy, on the
cluster (tests/support/recovery_world.py) with the LemonSlice emulator (the kill rows run with both
providers in tests/test_recovery.py).

- a second dispatch into a room whose agent is alive is refused: no second agent, no provider call;
- webhooks duplicated (to both watchers, and again to each), early (the agent still listed) and
  late (after the agent is back): one dispatch;
- webhooks lost, the watchers down and restarted: their sweep finds the room;
- both workers dead, then one restarted: the room gets its agent from the one that comes back;
- rolling deploy: SIGTERM to one of two workers with 4 calls in progress: every call goes on to its
  natural end, new calls land on the survivor, nothing is dispatched again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api

from tests.support.livekit_cluster import LiveKitCluster
from tests.support.livekit_server import server_api
from tests.support.recovery_world import (
    Call,
    World,
    is_agent,
    open_call,
    open_world,
    signed_webhook,
)

pytestmark = pytest.mark.e2e

# The server drops a SIGKILLed agent after its ICE times out (about 20 s; see test_recovery.py).
AGENT_BACK_WITHIN = 60.0
# A job's start on a loaded 2-core machine (several calls, their avatars and users in one test).
GREETING_UNDER_LOAD = 90.0


@pytest.fixture(scope="module")
async def world(
    livekit_cluster: LiveKitCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    async with open_world(
        livekit_cluster, "lemonslice", tmp_path_factory.mktemp("recovery-faults")
    ) as world:
        yield world


@pytest.fixture
async def call(world: World) -> AsyncIterator[Call]:
    async with open_call(world) as this:
        yield this


@pytest.fixture(autouse=True)
async def every_worker_and_watcher_back(world: World) -> AsyncIterator[None]:
    """A row that killed or stopped something leaves the world whole for the next one."""
    yield
    for index in (0, 1):
        if world.watchers[index] is None:
            await world.start_watcher(index)
        if world.workers[index] is None:
            await world.start_worker(index)


async def deliver(world: World, index: int, event: api.WebhookEvent) -> int:
    """POST `event` to watcher `index`, signed as livekit-server signs it; the HTTP status."""
    node = world.node(0)
    body, token = signed_webhook(node, event)
    url = world.cluster.webhook_urls[index]
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers={"Authorization": token}) as reply,
    ):
        return reply.status


def agent_left(room: str, identity: str) -> api.WebhookEvent:
    return api.WebhookEvent(
        event="participant_left",
        room=api.Room(name=room),
        participant=api.ParticipantInfo(identity=identity, kind=api.ParticipantInfo.Kind.AGENT),
    )


def agents(call: Call) -> list[str]:
    return [p.identity for p in call.user.room.remote_participants.values() if is_agent(p)]


async def answered(
    call: Call, agent: str, text: str = "are you there", *, timeout: float = 20
) -> None:
    """The agent's avatar answers a typed message."""
    avatar = await call.avatar_of(agent, timeout=timeout)
    asked = time.monotonic()
    await call.user.send_chat(text)
    await call.ears.heard(avatar, after=asked, timeout=timeout)


async def kill_serving_worker(world: World, call: Call) -> tuple[str, str, float]:
    """SIGKILL the worker of `call`; its agent, its avatar, and when."""
    agent, avatar = await call.greeted()
    index = call.worker_index
    killed_at = time.monotonic()
    await call.worker.kill()
    world.workers[index] = None
    return agent, avatar, killed_at


async def test_a_second_dispatch_into_a_room_whose_agent_is_alive_is_refused(
    world: World, call: Call
) -> None:
    await call.dispatch()
    agent, _ = await call.greeted()
    sessions_before = len(world.emulator.sessions)

    # A duplicate: a frontend's retry, an operator's `lk dispatch create`.
    async with server_api(world.node(0)) as lk:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=world.agent_name, room=call.room)
        )
    waits = [
        asyncio.create_task(
            worker.wait_for_log(
                lambda r: r.get("recovery") == "refused" and r.get("room") == call.room,
                timeout=60,
            )
        )
        for worker in world.live_workers()
    ]
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    refused = done.pop().result()
    assert refused["alive_agents"] == [agent]
    assert len(world.emulator.sessions) == sessions_before  # the refused job called no provider
    await answered(call, agent)  # the first agent still answers, through its avatar
    assert agents(call) == [agent]  # and no other agent ever joined
    assert [i for i in call.user.joined_at if i.startswith("agent-")] == [agent]


async def test_duplicated_early_and_late_webhooks_make_one_dispatch(
    world: World, call: Call
) -> None:
    await call.dispatch()
    old_agent, _, _ = await kill_serving_worker(world, call)
    # Early: the agent is still listed (the server has not dropped it): nothing is done.
    for index in (0, 1, 0, 1):
        assert await deliver(world, index, agent_left(call.room, old_agent)) == 200
    await world.until(lambda: world.outcomes(call.room).count("agent alive") >= 2, timeout=15)
    assert await call.recovery_dispatches() == []

    agent = await call.user.wait_for_agent(not_identity=old_agent, timeout=AGENT_BACK_WITHIN)
    # Late: replayed after the agent is back, to both watchers, twice.
    checked = len(world.outcomes(call.room))
    for index in (0, 1, 0, 1):
        assert await deliver(world, index, agent_left(call.room, old_agent)) == 200
    await world.until(lambda: len(world.outcomes(call.room)) >= checked + 2, timeout=15)
    assert len(await call.recovery_dispatches()) == 1
    await answered(call, agent.identity)
    assert agents(call) == [agent.identity]


async def test_a_webhook_that_fails_verification_is_refused(world: World, call: Call) -> None:
    event = agent_left(call.room, "agent-AJ_forged")
    body = MessageToJson(event)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            world.cluster.webhook_urls[0], data=body, headers={"Authorization": "not-a-token"}
        ) as reply,
    ):
        assert reply.status == 401


async def test_lost_webhooks_and_restarted_watchers_still_recover_the_room(
    world: World, call: Call
) -> None:
    await call.dispatch()
    for index in (0, 1):
        await world.stop_watcher(index)  # their webhooks are lost from now on
    old_agent, _, _ = await kill_serving_worker(world, call)
    await call.user.wait_until_gone(old_agent, timeout=AGENT_BACK_WITHIN)
    restarted = time.monotonic()
    for index in (0, 1):
        await world.start_watcher(index)
    agent = await call.user.wait_for_agent(not_identity=old_agent, timeout=AGENT_BACK_WITHIN)
    print(f"\nagent back {time.monotonic() - restarted:.1f} s after the watchers restarted")
    assert len(await call.recovery_dispatches()) == 1
    await answered(call, agent.identity)


async def test_both_workers_dead_then_one_restarted_the_room_gets_its_agent(
    world: World, call: Call
) -> None:
    await call.dispatch()
    other = 1 - call.worker_index
    old_agent, _, _ = await kill_serving_worker(world, call)
    other_worker = world.workers[other]
    assert other_worker is not None
    await other_worker.kill()
    world.workers[other] = None
    # The room is recovered into a cluster with no worker: that dispatch finds nobody.
    await world.until(lambda: "dispatched" in world.outcomes(call.room), timeout=AGENT_BACK_WITHIN)
    restarted_at = time.monotonic()
    await world.start_worker(other)
    agent = await call.user.wait_for_agent(not_identity=old_agent, timeout=AGENT_BACK_WITHIN)
    print(f"\nagent back {time.monotonic() - restarted_at:.1f} s after a worker registered")
    await answered(call, agent.identity)
    assert agents(call) == [agent.identity]


@contextlib.asynccontextmanager
async def calls(world: World, count: int) -> AsyncIterator[list[Call]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_call(world)) for _ in range(count)]


async def test_a_rolling_deploy_drops_no_call_and_loses_no_dispatch(world: World) -> None:
    async with calls(world, 10) as all_calls:
        # At least 4 calls in progress, at least one on each worker: livekit-server picks a worker
        # at random, weighted by load, so calls are added (one at a time, as users come) until both
        # serve one.
        before: list[Call] = []
        greeted: list[tuple[str, str]] = []
        for call in all_calls[:8]:
            if len(before) >= 4 and {c.worker_index for c in before} == {0, 1}:
                break
            await call.dispatch()
            greeted.append(await call.greeted(timeout=GREETING_UNDER_LOAD))
            before.append(call)
        assert {c.worker_index for c in before} == {0, 1}, [c.worker_index for c in before]
        after = all_calls[len(before) : len(before) + 2]
        leaving = 0
        draining = world.workers[leaving]
        assert draining is not None
        stopping = asyncio.create_task(draining.stop(timeout=120))
        await draining.wait_for_log(lambda r: r.get("message") == "draining worker", timeout=10)

        # Calls in progress go on, on both workers; new calls land on the survivor.
        await asyncio.gather(
            *(
                answered(c, agent, timeout=GREETING_UNDER_LOAD)
                for c, (agent, _) in zip(before, greeted, strict=True)
            )
        )
        for call in after:
            await call.dispatch()
            assert call.worker_index == 1 - leaving, "a new call went to the draining worker"
        # (their agent is enough: their avatars are not what this row is about)
        await asyncio.gather(*(c.agent(timeout=GREETING_UNDER_LOAD) for c in after))

        # No call lost its agent: every agent is still there, none ever left.
        dropped = [
            c.room
            for c, (agent, _) in zip(before, greeted, strict=True)
            if agent in c.user.left_at or agent not in c.user.room.remote_participants
        ]
        assert dropped == []
        # The calls end naturally: each user leaves; the draining worker then exits, cleanly.
        for call in [*before, *after]:
            await call.ears.aclose()
            await call.user.leave()
        assert await stopping == 0
        world.workers[leaving] = None
        rooms = {c.room for c in [*before, *after]}
        # Every job ended on purpose: no watcher dispatched any of these rooms again.
        assert [d for d in world.dispatches() if d[0] in rooms and d[1]] == []
        # A dispatch no worker took (the server drops it) was made again by a watcher: count it.
        rescued = [d for d in world.dispatches() if d[0] in rooms and not d[1]]
        print(
            f"\nrolling deploy: {len(before) + len(after)} calls ({len(before)} in progress at the"
            f" SIGTERM: {[c.worker_index for c in before]}),"
            f" {len(dropped)} dropped, 0 dispatches lost (each reached a worker;"
            f" {len(rescued)} only after a watcher made it again)"
        )
