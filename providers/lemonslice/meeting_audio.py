"""The meeting's audio as the agent's audio input, in place of the room's."""

from __future__ import annotations

import asyncio

import numpy as np
from livekit import rtc
from livekit.agents.voice.io import AudioInput

# What RoomIO gives the agent from a participant's track by default.
INPUT_SAMPLE_RATE = 24000
# About two seconds of 10 ms frames: a stalled reader loses the oldest speech, not the newest.
MAX_QUEUED_FRAMES = 200


class MeetingAudioInput(AudioInput):
    """Frames from the meeting relay, as mono `INPUT_SAMPLE_RATE` audio for the agent's STT."""

    def __init__(self, *, sample_rate: int = INPUT_SAMPLE_RATE) -> None:
        super().__init__(label="lemonslice-meeting")
        self._sample_rate = sample_rate
        self._frames: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue(maxsize=MAX_QUEUED_FRAMES)
        self._resampler: rtc.AudioResampler | None = None
        self._resampling_from: int | None = None

    def push(self, frame: rtc.AudioFrame) -> None:
        for out in self._resample(_mono(frame)):
            if self._frames.full():
                self._frames.get_nowait()
            self._frames.put_nowait(out)

    def _resample(self, frame: rtc.AudioFrame) -> list[rtc.AudioFrame]:
        if frame.sample_rate == self._sample_rate:
            return [frame]
        if self._resampler is None or self._resampling_from != frame.sample_rate:
            self._resampler = rtc.AudioResampler(frame.sample_rate, self._sample_rate)
            self._resampling_from = frame.sample_rate
        return self._resampler.push(frame)

    async def __anext__(self) -> rtc.AudioFrame:
        return await self._frames.get()


def _mono(frame: rtc.AudioFrame) -> rtc.AudioFrame:
    if frame.num_channels == 1:
        return frame
    samples = np.frombuffer(frame.data, dtype=np.int16).reshape(-1, frame.num_channels)
    mono = samples.mean(axis=1).astype(np.int16)
    return rtc.AudioFrame(
        data=mono.tobytes(),
        sample_rate=frame.sample_rate,
        num_channels=1,
        samples_per_channel=frame.samples_per_channel,
    )
