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

from bench.emulation import PROVIDERS, ProviderEmulation, add_condition_options, conditions_from


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--provider", choices=PROVIDERS[1:], required=True)
    add_condition_options(parser, video="640x480@24")
    parser.add_argument("--log", type=Path, required=True)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    conditions = conditions_from(args)
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
