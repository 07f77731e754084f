"""The start-up benchmark's options."""

from __future__ import annotations

import pytest

from bench.startup_ab import parse_args


def test_startup_ab_options() -> None:
    args = parse_args([])
    assert (args.runs, args.first_audio_latency, args.providers) == (
        20,
        [0.0, 0.8],
        ["lemonslice", "anam"],
    )
    assert (args.avatar_boot, args.today) == ([1.0, 3.0], True)
    args = parse_args(["--avatar-boot", "3", "--no-today"])
    assert (args.avatar_boot, args.today) == ([3.0], False)
    args = parse_args(
        ["--providers", "anam", "--first-audio-latency", "0.5", "--anam-flows", "direct"]
    )
    assert (args.providers, args.first_audio_latency, args.anam_flows) == (
        ["anam"],
        [0.5],
        ["direct"],
    )
    for bad in (["--providers", "heygen"], ["--first-audio-latency", "-1"], ["--runs", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
