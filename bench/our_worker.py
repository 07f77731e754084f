"""Our worker, unchanged (agent.py), with the benchmark's voice.

    BENCH_FIRST_AUDIO_LATENCY=0.8 python -m bench.our_worker start

Only the voice differs from `python agent.py start`: the bench's first-audio latency (bench/voice.py).
"""

from __future__ import annotations

import sys

from bench.voice import install_from_environment

# At import, so that it also runs in every job process (see bench/voice.py).
install_from_environment()

import agent  # noqa: E402 - after the voice is installed

if __name__ == "__main__":
    agent.main(sys.argv)
