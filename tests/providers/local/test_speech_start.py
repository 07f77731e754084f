"""Where the local avatar starts speech that follows silence (the plan alone; on a server in
test_participant.py)."""

from __future__ import annotations

import itertools

import pytest

from providers.local.speech_start import SpeechStart, plan_speech_start

# 24 kHz output at 24 fps, with the avatar's 80 ms of silence queued.
FRAME = 1000
QUEUED = 1920


def plan(
    arrived: int,
    *,
    whole: bool = False,
    waited: int = 0,
    queued: int = QUEUED,
    silence: bool = True,
) -> SpeechStart:
    return plan_speech_start(
        arrived=arrived,
        queued=queued,
        queued_is_silence=silence,
        frame=FRAME,
        arrived_whole=whole,
        waited=waited,
    )


def test_speech_sent_ahead_takes_the_place_of_the_queued_silence() -> None:
    assert plan(5 * FRAME) == SpeechStart(lead=0)


def test_the_first_words_wait_for_more_while_the_queued_silence_would_last() -> None:
    assert plan(FRAME // 2) == SpeechStart(wait=True)
    assert plan(FRAME // 2, waited=QUEUED - 1) == SpeechStart(wait=True)


def test_speech_that_trickles_in_starts_once_it_has_waited_as_long_as_the_silence() -> None:
    # Less than a frame: it queues behind the silence, as it did before it waited.
    assert plan(FRAME // 2, waited=QUEUED) == SpeechStart()
    # Two frames: the second one's worth moves forward into the silence, no further.
    assert plan(2 * FRAME, waited=QUEUED) == SpeechStart(lead=QUEUED - FRAME)


def test_a_short_whole_segment_ends_where_the_queue_would_have_ended() -> None:
    arrived = FRAME + 500
    start = plan(arrived, whole=True)
    assert start.lead is not None and not start.wait
    assert start.lead + arrived == QUEUED + FRAME


def test_a_whole_segment_within_a_frame_and_an_empty_queue_change_nothing() -> None:
    assert plan(FRAME // 2, whole=True) == SpeechStart()
    assert plan(5 * FRAME, queued=0) == SpeechStart()


def test_behind_queued_speech_a_segment_waits_only_until_it_fills_a_frame() -> None:
    """The last segment's words are still queued: the next one goes behind them, never in their
    place, and starts once it can fill a frame (so its first words are not followed by a hole)."""
    assert plan(FRAME // 2, silence=False) == SpeechStart(wait=True)
    assert plan(FRAME, silence=False) == SpeechStart()
    assert plan(5 * FRAME, silence=False) == SpeechStart()
    assert plan(FRAME // 2, silence=False, whole=True) == SpeechStart()
    assert plan(FRAME // 2, silence=False, waited=QUEUED) == SpeechStart()


def test_the_speech_fills_the_frame_after_its_lead_and_never_moves_past_the_queue() -> None:
    """Over every shape: no silence is left inside the speech, none of it is dropped to make
    room, and the track's queue is as deep after the frame as it would have been."""
    counts = (0, 1, 499, 1000, 1001, 1919, 1920, 2920, 2921, 10_000)
    for arrived, queued, silence, whole, waited in itertools.product(
        counts[1:], counts, (False, True), (False, True), (0, 1000, 1920, 5000)
    ):
        start = plan(arrived, whole=whole, waited=waited, queued=queued, silence=silence)
        if start.wait:
            assert not whole and arrived < queued + FRAME and waited < queued
            continue
        if start.lead is None:
            continue
        assert silence, "queued speech is never replaced"
        assert 0 <= start.lead < queued
        # The chunk replacing the silence is queued + FRAME long; speech fills it from the lead.
        assert arrived >= queued + FRAME - start.lead


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        plan(1, queued=-1)
