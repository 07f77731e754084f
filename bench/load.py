"""Load: many dispatches at once on one worker (ours, or the reference with --worker reference).
Every avatar must come up; prints the first-frame median and p95 against the single-session median
measured just before on the same worker, and the peak memory (RSS) of the worker process and of a job
process.

    uv run --group bench python -m bench.load                     # 20 at once, lemonslice emulator
    uv run --group bench python -m bench.load --sessions 5 --provider anam
    uv run --group bench python -m bench.load --worker reference   # the same burst on the official plugins

The emulated avatars run in the bench process, not the worker's: they are the provider's cost. Their
video is smaller here by default (--avatar-video) so that twenty of them, and the twenty users decoding
them, leave the machine's two cores to the worker under test as far as they can.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
from livekit import api

from bench.emulation import (
    IDENTITIES,
    PROVIDERS,
    add_condition_options,
)
from bench.measure import Measurement, UserClock, measure_dispatch
from bench.stats import Summary, Target, ratio, seconds, table
from bench.workers import (
    emulated_world,
    machine_load,
    our_worker,
    reference_worker,
    start_all,
    stop_all,
    wait_job_ended,
)
from tests.support.dispatch import dispatch_to_workers
from tests.support.livekit_server import LiveKitServer
from tests.support.room_user import RoomUser
from tests.support.worker import LogRecord, WorkerProcess

MIB = 1024 * 1024


@dataclass
class MemoryPeaks:
    """Peak RSS per process of a process tree, and peak PSS of the whole tree, sampled while it runs.

    Job processes fork from livekit-agents' forkserver and share its pages: each one's RSS counts them
    in full, so the tree's total is its PSS (shared pages split between their users), not a sum of RSS.
    """

    root_pid: int
    per_process: dict[int, int] = field(default_factory=dict)
    whole_tree_pss: int = 0

    def sample(self, *, with_pss: bool = True) -> None:
        try:
            root = psutil.Process(self.root_pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total_pss = 0
        for process in family:
            try:
                if with_pss:
                    full = process.memory_full_info()
                    rss = int(full.rss)
                    total_pss += int(full.pss)
                else:
                    rss = int(process.memory_info().rss)
            except psutil.NoSuchProcess:
                continue
            self.per_process[process.pid] = max(self.per_process.get(process.pid, 0), rss)
        self.whole_tree_pss = max(self.whole_tree_pss, total_pss)

    async def run(self, interval: float = 0.1, pss_every: int = 5) -> None:
        """RSS every `interval`; PSS (slower to read) every `pss_every`-th sample."""
        count = 0
        while True:
            self.sample(with_pss=count % pss_every == 0)
            count += 1
            await asyncio.sleep(interval)


def tree_cpu_seconds(root_pid: int) -> dict[int, float]:
    """CPU time (user + system) of each live process of the tree rooted at `root_pid`."""
    try:
        root = psutil.Process(root_pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    seconds_by_pid: dict[int, float] = {}
    for process in family:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds_by_pid[process.pid] = times.user + times.system
    return seconds_by_pid


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two snapshots; a process born in between counts in full."""
    return sum(used - before.get(pid, 0.0) for pid, used in after.items())


@dataclass
class CpuShares:
    """CPU seconds spent during the burst, by whom: the worker under test, or the emulation."""

    worker_pid: int
    provider_pid: int | None
    wall: float = 0.0
    worker: float = 0.0
    provider: float = 0.0
    bench: float = 0.0
    machine: float = 0.0
    _start: dict[str, Any] = field(default_factory=dict, repr=False)

    def start(self) -> None:
        self._start = {
            "wall": time.monotonic(),
            "worker": tree_cpu_seconds(self.worker_pid),
            "provider": tree_cpu_seconds(self.provider_pid) if self.provider_pid else {},
            "bench": tree_cpu_seconds(os.getpid()),
            "machine": _busy_seconds(),
        }

    def stop(self) -> None:
        begun = self._start
        self.wall = time.monotonic() - begun["wall"]
        self.worker = cpu_used(begun["worker"], tree_cpu_seconds(self.worker_pid))
        if self.provider_pid:
            self.provider = cpu_used(begun["provider"], tree_cpu_seconds(self.provider_pid))
        bench_now = tree_cpu_seconds(os.getpid())
        self.bench = bench_now.get(os.getpid(), 0.0) - begun["bench"].get(os.getpid(), 0.0)
        self.machine = _busy_seconds() - begun["machine"]

    def line(self) -> str:
        available = self.wall * (os.cpu_count() or 1)
        return (
            f"CPU seconds over the burst's {self.wall:.1f} s ({available:.1f} available): worker "
            f"and its job processes {self.worker:.1f}, emulated provider and avatars "
            f"{self.provider:.1f}, users (bench) {self.bench:.1f}, whole machine {self.machine:.1f}"
        )


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


async def burst(
    server: LiveKitServer,
    lk: api.LiveKitAPI,
    worker: WorkerProcess,
    agent_name: str,
    identity: str,
    sessions: int,
    *,
    cpu: CpuShares,
) -> list[Measurement]:
    """`sessions` users, each alone in a room; then every dispatch at the same moment."""
    rooms = [f"load-{uuid.uuid4().hex[:8]}" for _ in range(sessions)]
    users = await asyncio.gather(*(RoomUser.join(server, room) for room in rooms))
    measurements = [Measurement(room) for room in rooms]
    clocks = [UserClock(user, identity, want_word=False, of_job=True) for user in users]
    try:
        cpu.start()
        started = time.monotonic()
        for clock in clocks:
            clock.started = started
        dispatched = await asyncio.gather(
            *(dispatch_to_workers(lk, agent_name, room, [worker]) for room in rooms),
            return_exceptions=True,
        )
        for measurement, outcome in zip(measurements, dispatched, strict=True):
            if isinstance(outcome, BaseException):
                measurement.error = f"dispatch: {outcome}"
        await asyncio.gather(
            *(
                watch_until_first_frame(clock, user, measurement)
                for clock, user, measurement in zip(clocks, users, measurements, strict=True)
            )
        )
        cpu.stop()
    finally:
        await asyncio.gather(*(clock.aclose() for clock in clocks))
        await asyncio.gather(*(user.leave() for user in users), return_exceptions=True)
        for room in rooms:
            with contextlib.suppress(api.TwirpError):
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    await asyncio.gather(
        *(wait_job_ended(worker, m.room) for m in measurements if not m.error),
        return_exceptions=True,
    )
    return measurements


async def watch_until_first_frame(
    clock: UserClock, user: RoomUser, measurement: Measurement
) -> None:
    """The user's clock; then the user stops receiving media. Real users are not on the worker's
    machine: once a user has seen the avatar, decoding its video here would only take the cores
    from the jobs still starting."""
    await clock.until_seen(measurement)
    for participant in list(user.room.remote_participants.values()):
        for publication in list(participant.track_publications.values()):
            if publication.subscribed:
                publication.set_subscribed(False)


def job_pids(records: Sequence[LogRecord], rooms: set[str], *, worker_pid: int) -> set[int]:
    """The job processes that served these rooms (the worker logs each job's pid with its room)."""
    pids = {
        int(record["pid"])
        for record in records
        if record.get("room") in rooms and isinstance(record.get("pid"), int)
    }
    return pids - {worker_pid}  # the worker logs the job requests it receives, with its own pid


def worker_extra(args: argparse.Namespace) -> dict[str, str]:
    extra = {"AGENT_MAX_JOBS": str(max(args.sessions, 8))}
    if args.avatar_join_timeout is not None:
        extra["AVATAR_JOIN_TIMEOUT"] = f"{args.avatar_join_timeout:g}"
    return extra


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=20, help="dispatches at once (default 20)")
    parser.add_argument(
        "--baseline-runs", type=int, default=5, help="single sessions first, one at a time"
    )
    parser.add_argument("--provider", choices=PROVIDERS[1:], default="lemonslice")
    parser.add_argument(
        "--avatar-join-timeout",
        type=float,
        default=None,
        help="our worker's AVATAR_JOIN_TIMEOUT (its own default: 30 s, then it speaks without the "
        "avatar); 60 waits as long as the bench does, as the reference always waits",
    )
    parser.add_argument(
        "--worker",
        choices=("ours", "reference"),
        default="ours",
        help="whose worker takes the load: ours (agent.py) or the reference on the official plugins",
    )
    add_condition_options(parser, video="320x240@12")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.baseline_runs < 1:
        parser.error("--sessions and --baseline-runs must be >= 1")
    return args


async def main(args: argparse.Namespace) -> None:
    identity = IDENTITIES[args.provider]
    async with emulated_world("load", args) as world:
        server, provider, lk = world.server, world.provider, world.lk
        make_worker = our_worker if args.worker == "ours" else reference_worker
        agent_name, worker = make_worker(
            server,
            args.provider,
            provider.settings,
            world.conditions,
            world.workdir,
            extra=worker_extra(args),
        )
        try:
            await start_all([worker])
            peaks = MemoryPeaks(worker.pid)
            sampler = asyncio.create_task(peaks.run())
            baseline: list[Measurement] = []
            for _ in range(args.baseline_runs):
                baseline.append(
                    await measure_dispatch(
                        server, lk, worker, agent_name, identity, want_word=False
                    )
                )
                print(f"single session: first frame {seconds(baseline[-1].first_frame)} s")
            single_job_peak = max(
                (
                    peaks.per_process.get(pid, 0)
                    for pid in job_pids(
                        worker.records, {m.room for m in baseline}, worker_pid=worker.pid
                    )
                ),
                default=0,
            )
            print(f"{args.sessions} dispatches at once ...", flush=True)
            cpu = CpuShares(worker.pid, provider.pid)
            loaded = await burst(server, lk, worker, agent_name, identity, args.sessions, cpu=cpu)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            load_now = machine_load()
        finally:
            await stop_all([worker])
        print(report(args, baseline, loaded, peaks, worker, single_job_peak, load_now))
        print(cpu.line())


def report(
    args: argparse.Namespace,
    baseline: list[Measurement],
    loaded: list[Measurement],
    peaks: MemoryPeaks,
    worker: WorkerProcess,
    single_job_peak: int,
    load_now: str,
) -> str:
    single = Summary.of([m.first_frame for m in baseline if m.first_frame is not None])
    burst_frames = Summary.of([m.first_frame for m in loaded if m.first_frame is not None])
    up = sum(1 for m in loaded if m.first_frame is not None)
    rows = []
    for label, summary, count in (
        ("single session", single, len(baseline)),
        (f"{args.sessions} at once", burst_frames, len(loaded)),
    ):
        rows.append(
            [
                label,
                f"{summary.count if summary else 0}/{count}",
                seconds(summary.median if summary else None),
                seconds(summary.p95 if summary else None),
                seconds(summary.maximum if summary else None),
            ]
        )
    jobs = job_pids(worker.records, {m.room for m in loaded}, worker_pid=worker.pid)
    joining = (
        f" (AVATAR_JOIN_TIMEOUT {args.avatar_join_timeout:g} s)"
        if args.avatar_join_timeout is not None
        else ""
    )
    job_peaks = sorted(peaks.per_process.get(pid, 0) for pid in jobs)
    lines = [
        "",
        f"== load: {args.worker} worker{joining}, {args.provider}, dispatch -> first avatar frame (seconds); machine: {load_now} ==",
        table(["", "avatars up", "median", "p95", "max"], rows),
        "",
        "peak RSS (MiB):",
        f"  worker process:             {peaks.per_process.get(worker.pid, 0) / MIB:7.1f}",
        f"  one job process, alone:     {single_job_peak / MIB:7.1f}",
        f"  one job process, under load (max of {len(job_peaks)}): "
        f"{(job_peaks[-1] if job_peaks else 0) / MIB:7.1f}",
        f"  worker and all its processes together (PSS): {peaks.whole_tree_pss / MIB:7.1f}",
        "",
        Target(
            f"every avatar up ({up}/{len(loaded)}): sessions missing",
            float(len(loaded) - up),
            0.0,
        ).line(),
        Target(
            f"{args.sessions} at once: p95 first frame / single-session median",
            ratio(burst_frames.p95 if burst_frames else None, single.median if single else None),
            1.5,
        ).line(),
    ]
    failures = [m.error for m in [*baseline, *loaded] if m.error]
    if failures:
        lines.append(f"failures: {failures[:5]}{' ...' if len(failures) > 5 else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
