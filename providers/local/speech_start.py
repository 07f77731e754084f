"""When the local avatar starts a segment of speech, and where: after silence, in its place.

The avatar keeps a little audio queued on its track so that the track never runs dry between video
frames. Speech that arrives after silence would be heard that much later behind the queued silence;
instead it takes the silence's place, and the queue stays as deep as it was. A segment still
arriving starts once a frame's worth and more is here, so that it does not run dry right after its
first words. All counts are samples at the output rate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeechStart:
    """What the render loop does this frame with a segment that has not started yet.

    `wait`: send silence this frame; more of the segment is on its way. `lead`: drop the queued
    silence and send this many samples of silence, then the speech (None: queue the speech behind
    what is queued, as any later audio).
    """

    wait: bool = False
    lead: int | None = None


def plan_speech_start(
    *,
    arrived: int,
    queued: int,
    queued_is_silence: bool,
    frame: int,
    arrived_whole: bool,
    waited: int,
) -> SpeechStart:
    """Plan the start of a segment of which `arrived` samples are here (all of it if
    `arrived_whole`), with `queued` samples on the track (all silence if `queued_is_silence`),
    `frame` samples due this frame, and `waited` samples' worth of time spent waiting for more of it.

    A segment still arriving waits until it can fill this frame (and the queued silence's place),
    at most as long as the queue lasts: waiting adds silence between segments, while starting too
    soon would put it inside the speech. Speech the agent sends ahead of its playout arrives within
    a frame. After silence, speech enough to fill the silence's place starts at once; a segment that
    arrived whole but short, or one that trickles in no faster than it plays, starts with only as
    much silence before it as it cannot fill, so that its end stays where the queue's end was.
    """
    if min(arrived, queued, frame, waited) < 0:
        raise ValueError("sample counts cannot be negative")
    enough = frame + (queued if queued_is_silence else 0)
    if arrived < enough and not arrived_whole and waited < queued:
        return SpeechStart(wait=True)
    moved_forward = min(queued, max(0, arrived - frame)) if queued_is_silence else 0
    if moved_forward == 0:
        return SpeechStart()
    return SpeechStart(lead=queued - moved_forward)
