"""Cold start: from starting the worker process to its registration with LiveKit (when it can take a
job; livekit-agents registers once its idle job processes are initialised). Ours (`python agent.py start`, unchanged) and
the reference (bench/reference_agent.py), in alternation.

    uv run --group bench python -m bench.cold_start              # 10 starts each
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.emulation import ROOT, Conditions, ProviderEmulation
from bench.stats import Summary, ratio, seconds, table, times
from bench.workers import log_to_file, logged_at, machine_load
from tests.support.livekit_server import LiveKitServer, server_binary_path
from tests.support.worker import WorkerProcess, worker_environment


async def start_once(worker: WorkerProcess) -> tuple[float, float | None]:
    """Seconds from spawning the process to registered (the bench's clock), and the part of it
    spent before the worker's first log line (interpreter start and imports, from its log)."""
    spawned_wall, started = time.time(), time.monotonic()
    try:
        await worker.start()
        registered = time.monotonic() - started
    finally:
        await worker.stop()
    first_line = logged_at(worker, "starting worker")
    return registered, None if first_line is None else first_line - spawned_wall


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="starts per worker (default 10)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-cold-start-"))
    log_to_file(workdir / "bench.log")
    print(f"logs in {workdir}; machine at start: {machine_load()}", flush=True)
    figures: dict[str, tuple[list[float], list[float]]] = {"ours": ([], []), "reference": ([], [])}
    with LiveKitServer(server_binary_path()) as server:
        # The reference reads its provider at job time; a configured one is enough to start.
        async with ProviderEmulation("lemonslice", Conditions()) as emulation:
            ours_env = worker_environment(server, "bench-cold-ours", {"AVATAR_PROVIDER": "local"})
            reference_env = worker_environment(
                server,
                "bench-cold-reference",
                {
                    "PYTHONPATH": str(ROOT),
                    "REFERENCE_PROVIDER": "lemonslice",
                    **emulation.settings(),
                },
            )
            for run in range(args.runs):
                order = ["ours", "reference"] if run % 2 == 0 else ["reference", "ours"]
                for label in order:
                    worker = (
                        WorkerProcess(ours_env, cwd=workdir)
                        if label == "ours"
                        else WorkerProcess(
                            reference_env,
                            cwd=workdir,
                            command=[sys.executable, "-m", "bench.reference_agent", "start"],
                        )
                    )
                    registered, imports = await start_once(worker)
                    figures[label][0].append(registered)
                    if imports is not None:
                        figures[label][1].append(imports)
                    print(
                        f"run {run + 1}/{args.runs} {label:<9} registered {registered:.2f} s "
                        f"(first log line after {seconds(imports)} s)",
                        flush=True,
                    )
    rows = []
    medians: dict[str, float | None] = {}
    for label, (registered_times, import_times) in figures.items():
        reg, rdy = Summary.of(registered_times), Summary.of(import_times)
        medians[label] = reg.median if reg else None
        rows.append(
            [
                label,
                seconds(reg.median if reg else None),
                seconds(reg.p95 if reg else None),
                seconds(rdy.median if rdy else None),
                seconds(rdy.p95 if rdy else None),
            ]
        )
    print(f"\n== cold start, {args.runs} starts each (seconds); machine: {machine_load()} ==")
    print(
        table(
            ["worker", "registered med", "p95", "of which before first log line med", "p95"], rows
        )
    )
    print(
        "(after the first log line: the forkserver's preloads and the idle job processes, which "
        "livekit-agents starts before it registers)"
    )
    print(f"ours/reference, registered: {times(ratio(medians['ours'], medians['reference']))}")


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
