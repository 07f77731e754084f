"""Start-up A/B: our worker against a reference worker on the official plugins (livekit-plugins-lemonslice /
-anam 1.8.9, used as LiveKit's examples use them), from the dispatch to the user's first decoded avatar
frame and to the first voiced audio from the avatar, with the lower bound measured in the same run.

    uv run --group bench python -m bench.startup_ab                  # 20 runs per arm, the whole report
    uv run --group bench python -m bench.startup_ab --runs 3 --providers lemonslice --first-audio-latency 0

One local livekit-server; the provider emulators with a per-call API latency and an avatar that boots
for a while after its create, then really joins; the same eSpeak NG voice in both workers, its first
audio held back by a configurable latency. Arms are dispatched in alternation (the order rotates each
run), one session at a time, each in a fresh room with a user in it; the next starts once the last
job's process has exited and the worker's idle pool is ready again.

The lower bound starts the avatar from the bench itself with the provider's shortest API chain (one
call) and streams the greeting to it the moment its video is up: API latency + boot + the media path,
with no agent pipeline in the way.

Figures, not assertions: the targets are printed as PASS / MISS.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
from livekit import api

from bench.emulation import PROVIDERS, Conditions, Provider, ProviderEmulation
from bench.measure import LowerBound, Measurement, measure_dispatch
from bench.stats import Summary, Target, ratio, seconds, table, times
from bench.voice import LOG_MESSAGE
from bench.workers import (
    log_to_file,
    machine_load,
    numeric_fields,
    our_worker,
    reference_worker,
    start_all,
    startup_trace,
    stop_all,
    voice_uses,
)
from tests.support.livekit_server import LiveKitServer, server_api, server_binary_path
from tests.support.worker import WorkerProcess

ANAM_FLOWS = ("direct", "two_step")
Role = Literal["ours", "today", "reference", "bound"]

Figure = Literal[
    "first_frame",
    "first_word",
    "first_voice",
    "handover_gap",
    "handover_overlap",
    "job_received",
    "provider_call",
    "avatar_joined",
]
# Our worker as it was before the first word at once: speech waits for the avatar's video.
SPEECH_HELD = {"AVATAR_SPEAK_BEFORE_VIDEO": "false"}


@dataclass
class Arm:
    label: str
    role: Role
    measure: Callable[[api.LiveKitAPI], Awaitable[Measurement]]
    worker: WorkerProcess | None = None
    results: list[Measurement] = field(default_factory=list)

    def summary(self, figure: Figure) -> Summary | None:
        values = [getattr(m, figure) for m in self.results]
        return Summary.of([v for v in values if v is not None])

    def median(self, figure: Figure) -> float | None:
        summary = self.summary(figure)
        return None if summary is None else summary.median

    @property
    def failures(self) -> int:
        return sum(1 for m in self.results if m.error is not None)


@dataclass
class ProviderResult:
    provider: Provider
    conditions: Conditions
    arms: list[Arm]
    traces: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def arm(self, role: Role) -> Arm | None:
        return next((a for a in self.arms if a.role == role), None)


async def run_provider(
    server: LiveKitServer,
    provider: Provider,
    conditions: Conditions,
    args: argparse.Namespace,
    workdir: Path,
) -> ProviderResult:
    async with (
        ProviderEmulation(provider, conditions) as emulation,
        aiohttp.ClientSession() as http,
        server_api(server) as lk,
    ):
        arms: list[Arm] = []
        flows: Sequence[str | None] = args.anam_flows if provider == "anam" else [None]
        for flow, settle in itertools.product(flows, args.handover_settle):
            extra = {"ANAM_SESSION_FLOW": flow} if flow else {}
            if settle:
                extra["AVATAR_HANDOVER_SETTLE"] = f"{settle:g}"
            name, worker = our_worker(
                server, provider, emulation.settings(), conditions, workdir, extra=extra
            )
            label = (
                "ours"
                + (f" ({flow})" if flow else "")
                + (f", settle {settle:g} s" if settle else "")
            )
            arms.append(Arm(label, "ours", _dispatcher(server, worker, name, emulation), worker))
        if args.today:
            flow = flows[0]
            extra = {**SPEECH_HELD, **({"ANAM_SESSION_FLOW": flow} if flow else {})}
            name, worker = our_worker(
                server, provider, emulation.settings(), conditions, workdir, extra=extra
            )
            arms.append(
                Arm("ours, held", "today", _dispatcher(server, worker, name, emulation), worker)
            )
        if emulation.has_reference and args.reference:
            name, worker = reference_worker(
                server, provider, emulation.settings(), conditions, workdir
            )
            arms.append(
                Arm(
                    "reference",
                    "reference",
                    _dispatcher(server, worker, name, emulation),
                    worker,
                )
            )
            bound = LowerBound(server, emulation, conditions, http)
            arms.append(Arm("lower bound", "bound", bound.measure))

        workers = [arm.worker for arm in arms if arm.worker is not None]
        result = ProviderResult(provider, conditions, arms)
        try:
            await start_all(workers)
            for arm in arms:
                for _ in range(args.warmup):
                    await arm.measure(lk)
            for run in range(args.runs):
                shift = run % len(arms)
                for arm in arms[shift:] + arms[:shift]:
                    measurement = await arm.measure(lk)
                    arm.results.append(measurement)
                    _check_voice(arm, measurement)
                    _collect_trace(result, arm, measurement, args.trace_marker)
                    print(_progress(provider, run, args.runs, arm, measurement), flush=True)
        finally:
            await stop_all(workers)
        return result


def _dispatcher(
    server: LiveKitServer, worker: WorkerProcess, agent_name: str, emulation: ProviderEmulation
) -> Callable[[api.LiveKitAPI], Awaitable[Measurement]]:
    async def measure(lk: api.LiveKitAPI) -> Measurement:
        return await measure_dispatch(
            server, lk, worker, agent_name, emulation.identity, emulator=emulation.emulator
        )

    return measure


def _check_voice(arm: Arm, measurement: Measurement) -> None:
    """A worker that spoke must have spoken with the bench's voice, else its latency is not in the figures."""
    spoke = measurement.first_word is not None
    if arm.worker is not None and spoke and voice_uses(arm.worker) == 0:
        raise SystemExit(
            f"{arm.label}: the worker spoke without the bench's voice (no {LOG_MESSAGE!r} record "
            "in its log): its first-word figures would not have the configured latency"
        )


def _collect_trace(result: ProviderResult, arm: Arm, measurement: Measurement, marker: str) -> None:
    if arm.worker is None:
        return
    record = startup_trace(arm.worker, measurement.room, marker)
    if record is not None:
        result.traces.setdefault(arm.label, []).append(numeric_fields(record))


def _progress(provider: str, run: int, runs: int, arm: Arm, measurement: Measurement) -> str:
    line = (
        f"{provider} run {run + 1}/{runs} {arm.label:<16} first frame "
        f"{seconds(measurement.first_frame)} s, first word {seconds(measurement.first_word)} s, "
        f"first voice {seconds(measurement.first_voice)} s, handover gap "
        f"{_ms(measurement.handover_gap)} ms, overlap {_ms(measurement.handover_overlap)} ms"
    )
    breakdown = measurement.handover_breakdown()
    if breakdown:
        steps = ", ".join(f"{name} {value * 1000:.0f}" for name, value in breakdown.items())
        line += f"\n    handover (ms): {steps}, natural pause {_ms(measurement.natural_pause)}"
    return line + (f"  FAILED: {measurement.error}" if measurement.error else "")


# -- the report ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def report(result: ProviderResult) -> str:
    reference, bound = result.arm("reference"), result.arm("bound")
    rows = []
    for arm in result.arms:
        frame, word = arm.summary("first_frame"), arm.summary("first_word")
        voice, gap = arm.summary("first_voice"), arm.summary("handover_gap")
        gaps = [m.handover_gap for m in arm.results if m.handover_gap is not None]
        overlaps = [m.handover_overlap for m in arm.results if m.handover_overlap is not None]
        received = arm.summary("job_received")
        call, joined = arm.summary("provider_call"), arm.summary("avatar_joined")
        rows.append(
            [
                arm.label,
                str(len(arm.results) - arm.failures),
                seconds(received.median if received else None),
                seconds(call.median if call else None),
                seconds(joined.median if joined else None),
                seconds(frame.median if frame else None),
                seconds(frame.p95 if frame else None),
                seconds(word.median if word else None),
                seconds(word.p95 if word else None),
                seconds(voice.median if voice else None),
                _voice_ratio(arm, reference),
                f"{len(gaps)}",
                _ms(gap.median if gap else None),
                _ms(max(gaps) if gaps else None),
                _ms(max(overlaps) if overlaps else None),
                _ratio(arm, reference, "first_frame") if arm.role == "ours" else "-",
                _ratio(arm, reference, "first_word") if arm.role == "ours" else "-",
                _ratio(arm, bound, "first_frame") if arm.role != "bound" else "-",
                _ratio(arm, bound, "first_word") if arm.role != "bound" else "-",
                str(arm.failures),
            ]
        )
    headers = [
        result.provider,
        "runs",
        "job recv",
        "api call",
        "joined",
        "frame med",
        "frame p95",
        "word med",
        "word p95",
        "voice med",
        "voice/ref word",
        "handovers",
        "gap med ms",
        "gap max ms",
        "overlap max ms",
        "frame/ref",
        "word/ref",
        "frame/bound",
        "word/bound",
        "failed",
    ]
    lines = [
        table(headers, rows),
        "(medians from the dispatch to: job recv, the worker logs the job request; api call, the "
        "provider gets the start's first call; joined, the avatar joins the room; frame, word: the "
        "user's first decoded avatar frame, first voiced audio from the avatar; voice: first voiced "
        "audio from the agent's own track or the avatar; gap: silence heard at the switch from the "
        "own voice to the avatar beyond the pause the speech has there, negative = shorter; "
        "overlap: own voice heard after the avatar's first word)",
    ]
    for label, traces in result.traces.items():
        lines.append(
            f"{label}: start-up trace from the worker's log, medians over {len(traces)} runs:"
        )
        names = sorted({name for trace in traces for name in trace})
        for name in names:
            values = [trace[name] for trace in traces if name in trace]
            lines.append(f"    {name}: {statistics.median(values):.3f}")
    for arm in result.arms:
        breakdowns = [m.handover_breakdown() for m in arm.results]
        breakdowns = [b for b in breakdowns if b]
        if breakdowns:
            lines.append(f"{arm.label}: the handover, medians over {len(breakdowns)} (ms):")
            for name in breakdowns[0]:
                values = [b[name] for b in breakdowns if name in b]
                lines.append(f"    {name}: {statistics.median(values) * 1000:.0f}")
    if not result.traces and any(arm.role == "ours" for arm in result.arms):
        lines.append("(our worker logged no start-up trace record)")
    return "\n".join(lines)


def _ratio(arm: Arm, other: Arm | None, figure: Literal["first_frame", "first_word"]) -> str:
    return times(ratio(arm.median(figure), other.median(figure) if other else None))


def _voice_ratio(arm: Arm, reference: Arm | None) -> str:
    if arm.role not in ("ours", "today") or reference is None:
        return "-"
    return times(ratio(arm.median("first_voice"), reference.median("first_word")))


def targets(result: ProviderResult) -> list[Target]:
    reference, bound = result.arm("reference"), result.arm("bound")
    today = result.arm("today")
    latency = result.conditions.first_audio_latency
    voice = "instant voice" if latency == 0 else f"{latency * 1000:.0f} ms first-audio voice"
    voice += f", avatar boot {result.conditions.avatar_boot:g} s"
    found: list[Target] = []
    for arm in (a for a in result.arms if a.role in ("ours", "today")):
        where = f"{result.provider} {arm.label}, {voice}"
        if arm.role == "ours":
            found += _first_word_at_once_targets(arm, where, reference, today)
        if reference is not None:
            word_ratio = ratio(arm.median("first_word"), reference.median("first_word"))
            if latency == 0:
                frame_ratio = ratio(arm.median("first_frame"), reference.median("first_frame"))
                found.append(Target(f"{where}: first frame ours/reference", frame_ratio, 0.90))
            # The avatar's first word, when speech waits for it (speaking before the video, the
            # avatar's first word comes at a sentence's end: the first voice is the figure then).
            if arm.role == "today":
                limit = 0.90 if latency == 0 else 0.75
                found.append(Target(f"{where}: first word ours/reference", word_ratio, limit))
        if bound is not None:
            frame, received = arm.median("first_frame"), arm.median("job_received")
            bound_frame = bound.median("first_frame")
            note = None
            if frame is not None and received is not None:
                from_job = ratio(frame - received, bound_frame)
                note = (
                    f"(of which dispatch -> job received {received:.2f} s, which no agent can "
                    f"shorten; counted from the job's receipt: {times(from_job)})"
                )
            bound_ratio = ratio(frame, bound_frame)
            found.append(Target(f"{where}: first frame ours/lower bound", bound_ratio, 1.10, note))
    return found


def _first_word_at_once_targets(
    arm: Arm, where: str, reference: Arm | None, today: Arm | None
) -> list[Target]:
    """The agent's own voice from the first word: sooner than the reference's first word, a clean
    switch to the avatar, and the avatar's first frame no later than when speech waited for it."""
    found: list[Target] = []
    if reference is not None:
        first_voice = ratio(arm.median("first_voice"), reference.median("first_word"))
        found.append(Target(f"{where}: first voice ours/reference first word", first_voice, 0.35))
    gaps = [m.handover_gap for m in arm.results if m.handover_gap is not None]
    overlaps = [m.handover_overlap for m in arm.results if m.handover_overlap is not None]
    if gaps:
        note = f"({len(gaps)} handovers; gap = silence beyond the speech's own pause, seconds)"
        found.append(Target(f"{where}: largest handover gap, s", max(gaps), 0.150, note))
    if overlaps:
        # any overlap misses: the bound is a millisecond, the resolution of a 10 ms frame's arrival
        found.append(Target(f"{where}: largest handover overlap, s", max(overlaps), 0.001))
    if today is not None:
        frame = ratio(arm.median("first_frame"), today.median("first_frame"))
        found.append(Target(f"{where}: first frame ours/speech held", frame, 1.10))
    return found


# -- command line -------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of seconds: {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"need one or more seconds >= 0: {text!r}")
    return values


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [c for c in chosen if c not in allowed]
        if not chosen or unknown:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return chosen

    return parse


def _non_negative(text: str) -> float:
    return _floats(text)[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="measured runs per arm (default 20)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per arm first")
    parser.add_argument(
        "--providers",
        type=_choices(PROVIDERS),
        default=["lemonslice", "anam"],
        help="comma-separated: lemonslice, anam, local (ours only; default lemonslice,anam)",
    )
    parser.add_argument(
        "--api-latency", type=_non_negative, default=0.3, help="seconds per API call"
    )
    parser.add_argument(
        "--connect-latency",
        type=_non_negative,
        default=0.0,
        help="seconds more on each new connection to the provider (DNS, TCP, TLS; default 0)",
    )
    parser.add_argument(
        "--avatar-boot",
        type=_floats,
        default=[1.0, 3.0],
        help="seconds from create to joining; a comma list runs each (default 1,3)",
    )
    parser.add_argument(
        "--no-today",
        dest="today",
        action="store_false",
        help="leave out our worker with speech held for the avatar (AVATAR_SPEAK_BEFORE_VIDEO=false)",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="leave out the reference worker and the lower bound (our arms only: a quick look)",
    )
    parser.add_argument(
        "--first-audio-latency",
        type=_floats,
        default=[0.0, 0.8],
        help="voice time to first audio, seconds; a comma list runs each (default 0,0.8)",
    )
    parser.add_argument(
        "--handover-settle",
        type=_floats,
        default=[0.0],
        help="our worker's AVATAR_HANDOVER_SETTLE values, an arm each (default 0)",
    )
    parser.add_argument(
        "--anam-flows",
        type=_choices(ANAM_FLOWS),
        default=list(ANAM_FLOWS),
        help="our worker's ANAM_SESSION_FLOW values to measure (default direct,two_step)",
    )
    parser.add_argument(
        "--trace-marker",
        default="start-up",
        help="text in the message of our worker's per-job start-up trace record (a record with "
        "avatar_event=startup is taken too)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return args


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    log_to_file(workdir / "bench.log")
    print(f"logs (workers, bench) in {workdir}")
    print(f"machine at start: {machine_load()}", flush=True)
    all_targets: list[Target] = []
    with LiveKitServer(server_binary_path()) as server:
        for boot, latency in itertools.product(args.avatar_boot, args.first_audio_latency):
            conditions = Conditions(
                api_latency=args.api_latency,
                connect_latency=args.connect_latency,
                avatar_boot=boot,
                first_audio_latency=latency,
            )
            results = []
            for provider in args.providers:
                results.append(await run_provider(server, provider, conditions, args, workdir))
            print(f"\n== {conditions.describe()}; {args.runs} runs per arm (seconds) ==")
            print(f"machine now: {machine_load()}")
            for result in results:
                print()
                print(report(result))
                all_targets += targets(result)
    print("\n== targets (medians) ==")
    for target in all_targets:
        print(target.line())
    print(f"machine at end: {machine_load()}")


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
