"""CPU per job: our worker against the reference on the official plugins, one job at a time.

    uv run --group bench python -m bench.job_cpu                 # 10 jobs each, lemonslice emulator
    uv run --group bench python -m bench.job_cpu --runs 5 --provider anam --hold 20

Both workers run side by side; jobs are dispatched to them in alternation, one at a time, each to a
fresh room with a user in it. For each job the bench reads the CPU time (user + system) of the
worker's whole process tree at the dispatch, when the user sees the avatar's first frame, after the
user has stayed `--hold` seconds (the greeting is spoken in that time), and once the job has ended and
the worker's idle pool is ready again. The job process itself is also counted on its own (from the
dispatch to the end of the hold). The emulated provider and its avatars run in a process of their own
and are not counted.

This is where the load benchmark's CPU goes: with twenty jobs at once on two cores, every CPU-second a
job spends is a second another job's avatar waits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from livekit import api

from bench.emulation import (
    IDENTITIES,
    PROVIDERS,
    add_condition_options,
)
from bench.load import cpu_used, job_pids, tree_cpu_seconds
from bench.measure import Measurement, UserClock, user_in_new_room
from bench.stats import ratio, table, times
from bench.workers import (
    emulated_world,
    machine_load,
    our_worker,
    reference_worker,
    start_all,
    stop_all,
    wait_job_ended,
    wait_pool_ready,
)
from tests.support.dispatch import dispatch_to_workers
from tests.support.livekit_server import LiveKitServer
from tests.support.worker import WorkerProcess

PHASES = ("to first frame", "through the hold", "whole job", "job process")


@dataclass
class JobCpu:
    """CPU seconds one job cost its worker, by phase (cumulative from the dispatch)."""

    to_first_frame: float
    through_hold: float
    whole_job: float
    job_process: float

    def figures(self) -> tuple[float, float, float, float]:
        return (self.to_first_frame, self.through_hold, self.whole_job, self.job_process)


@dataclass
class Arm:
    label: str
    agent_name: str
    worker: WorkerProcess
    jobs: list[JobCpu]


async def one_job(
    server: LiveKitServer, lk: api.LiveKitAPI, arm: Arm, identity: str, hold: float
) -> JobCpu | str:
    """Dispatch one job, read the worker tree's CPU at each phase; an error text if it failed."""
    worker = arm.worker
    async with user_in_new_room(server, lk, "cpu") as user:
        measurement = Measurement(user.room.name)
        clock = UserClock(user, identity, want_word=False, of_job=True)
        at_dispatch = tree_cpu_seconds(worker.pid)
        try:
            await dispatch_to_workers(lk, arm.agent_name, user.room.name, [worker])
        except AssertionError as dropped:
            await clock.aclose()
            return f"dispatch dropped: {dropped}"
        await clock.until_seen(measurement)
        if measurement.error:
            return measurement.error
        at_frame = tree_cpu_seconds(worker.pid)
        # A fixed window of the conversation (the greeting and what follows it), not a wait for an event.
        await asyncio.sleep(hold)
        after_hold = tree_cpu_seconds(worker.pid)
    await wait_job_ended(worker, measurement.room)
    await wait_pool_ready(worker)
    at_end = tree_cpu_seconds(worker.pid)
    job = job_pids(worker.records, {measurement.room}, worker_pid=worker.pid)
    job_process = sum(after_hold.get(pid, 0.0) - at_dispatch.get(pid, 0.0) for pid in job)
    return JobCpu(
        to_first_frame=cpu_used(at_dispatch, at_frame),
        through_hold=cpu_used(at_dispatch, after_hold),
        whole_job=cpu_used(at_dispatch, at_end),
        job_process=job_process,
    )


def idle_rate(worker: WorkerProcess, before: dict[int, float], seconds: float) -> float:
    return cpu_used(before, tree_cpu_seconds(worker.pid)) / seconds


def report(arms: Sequence[Arm], hold: float, idle: dict[str, float]) -> str:
    rows = []
    medians: dict[str, list[float]] = {}
    for arm in arms:
        if not arm.jobs:
            rows.append([arm.label, "0", *(["-"] * len(PHASES)), "-"])
            continue
        columns = list(zip(*(job.figures() for job in arm.jobs), strict=True))
        medians[arm.label] = [statistics.median(column) for column in columns]
        rows.append(
            [
                arm.label,
                str(len(arm.jobs)),
                *(f"{value:.2f}" for value in medians[arm.label]),
                f"{idle[arm.label]:.3f}",
            ]
        )
    lines = [
        "",
        f"== CPU seconds per job (median; cumulative from the dispatch; hold {hold:g} s) ==",
        table(["worker", "jobs", *PHASES, "idle CPU-s/s"], rows),
    ]
    if "ours" in medians and "reference" in medians:
        ratios = [
            times(ratio(ours, reference))
            for ours, reference in zip(medians["ours"], medians["reference"], strict=True)
        ]
        lines.append(
            "ours / reference: "
            + ", ".join(f"{p} {r}" for p, r in zip(PHASES, ratios, strict=True))
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="jobs per worker (default 10)")
    parser.add_argument("--provider", choices=PROVIDERS[1:], default="lemonslice")
    parser.add_argument(
        "--hold", type=float, default=10.0, help="seconds the user stays after the first frame"
    )
    add_condition_options(parser, video="640x480@24")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.hold < 0:
        parser.error("--runs must be >= 1 and --hold >= 0")
    return args


async def main(args: argparse.Namespace) -> None:
    identity = IDENTITIES[args.provider]
    async with emulated_world("cpu", args) as world:
        arms = []
        for label, make in (("ours", our_worker), ("reference", reference_worker)):
            agent_name, worker = make(
                world.server,
                args.provider,
                world.provider.settings,
                world.conditions,
                world.workdir,
                extra={},
            )
            arms.append(Arm(label, agent_name, worker, []))
        workers = [arm.worker for arm in arms]
        try:
            await start_all(workers)
            idle_window = 5.0
            before = {arm.label: tree_cpu_seconds(arm.worker.pid) for arm in arms}
            started = time.monotonic()
            await asyncio.sleep(idle_window)  # the idle workers' own CPU, for scale
            idle = {
                arm.label: idle_rate(arm.worker, before[arm.label], time.monotonic() - started)
                for arm in arms
            }
            for run in range(args.runs):
                for arm in arms if run % 2 == 0 else reversed(arms):
                    outcome = await one_job(world.server, world.lk, arm, identity, args.hold)
                    if isinstance(outcome, str):
                        print(f"{arm.label}: run {run + 1} failed: {outcome}", flush=True)
                        continue
                    arm.jobs.append(outcome)
                    print(
                        f"{arm.label:9} run {run + 1}: "
                        + ", ".join(
                            f"{phase} {value:.2f}"
                            for phase, value in zip(PHASES, outcome.figures(), strict=True)
                        ),
                        flush=True,
                    )
            load_now = machine_load()
        finally:
            with contextlib.suppress(Exception):
                await stop_all(workers)
        print(report(arms, args.hold, idle))
        print(f"machine at the end: {load_now}")


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
