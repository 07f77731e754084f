"""An emulated provider in a process of its own: its HTTP emulator and the avatars it sends into rooms.

    python -m bench.provider_process --provider lemonslice --api-latency 0.3 --avatar-boot 1 \
        --avatar-video 320x240@12 --log FILE

Prints one JSON line, {"settings": {...}} (the worker's provider variables), then serves until its
standard input closes. The load benchmark runs its twenty avatars here, so that they neither share
the event loop of the users who time them nor stand in for the worker's own load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.emulation import PROVIDERS, Conditions, ProviderEmulation, avatar_video


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--provider", choices=PROVIDERS[1:], required=True)
    parser.add_argument("--api-latency", type=float, default=0.3)
    parser.add_argument("--connect-latency", type=float, default=0.0)
    parser.add_argument("--avatar-boot", type=float, default=1.0)
    parser.add_argument("--avatar-video", type=avatar_video, default="640x480@24")
    parser.add_argument("--log", type=Path, required=True)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    conditions = Conditions(
        api_latency=args.api_latency,
        connect_latency=args.connect_latency,
        avatar_boot=args.avatar_boot,
        avatar_video=args.avatar_video,
    )
    async with ProviderEmulation(args.provider, conditions) as emulation:
        print(json.dumps({"settings": emulation.settings()}), flush=True)
        loop = asyncio.get_running_loop()
        # Until the parent closes our standard input (or goes away).
        await loop.run_in_executor(None, sys.stdin.read)


def main() -> None:
    args = parse_args()
    logging.basicConfig(
        filename=args.log,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
