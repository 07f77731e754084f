"""Time from starting the worker to its registration with LiveKit: the container image vs this checkout.

The image's CMD runs from the mounted image as a container would run it (tests/support/image.py: its user,
working directory and environment, a read-only root); the checkout's worker is `python agent.py start` in
the project's environment. Both register with a real livekit-server on 127.0.0.1. Needs root and an image
built by scripts/build-image.sh.

    scripts/build-image.sh && uv run python -m bench.image_start --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.image import mounted_image
from tests.support.livekit_server import LiveKitServer, server_binary_path
from tests.support.worker import WorkerProcess, worker_environment, worker_settings


async def time_to_register(worker: WorkerProcess) -> float:
    started = time.monotonic()
    try:
        await worker.start(register_timeout=120)
        return time.monotonic() - started
    finally:
        await worker.stop()


async def main(runs: int, tag: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-image-start-"))
    print("worker logs in", workdir)
    results: dict[str, list[float]] = {"image": [], "checkout": []}
    with LiveKitServer(server_binary_path()) as server, mounted_image(tag) as image:
        for run in range(1, runs + 1):
            # alternated, so a change in the machine's load weighs on both alike
            for where in results:
                settings = worker_settings(server, f"bench-start-{uuid.uuid4().hex[:6]}")
                if where == "image":
                    env = image.environment(settings)
                    worker = WorkerProcess(env, cwd=workdir, command=image.command())
                else:
                    env = worker_environment(server, settings["AGENT_NAME"])
                    worker = WorkerProcess(env, cwd=workdir)
                results[where].append(await time_to_register(worker))
                print(f"{where} run {run}: {results[where][-1]:.2f}s", flush=True)
    baseline = statistics.median(results["checkout"])
    print(f"start -> registered worker, {runs} runs each (seconds)")
    print(f"{'worker':<9} {'median':>7} {'min':>7} {'max':>7}  ratio to checkout")
    for where, timings in results.items():
        median = statistics.median(timings)
        print(
            f"{where:<9} {median:7.2f} {min(timings):7.2f} {max(timings):7.2f}  "
            f"{median / baseline:.2f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tag", default="localhost/avatar-agent:latest")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.tag))
