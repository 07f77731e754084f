"""Small real images to upload as an avatar's face, encoded by PyAV (already locked through livekit)."""

from __future__ import annotations

from functools import cache

import av
import numpy as np


def _encode(codec: str, pixel_format: str) -> bytes:
    context = av.CodecContext.create(codec, "w")
    assert isinstance(context, av.VideoCodecContext)
    context.width, context.height, context.pix_fmt = 16, 24, pixel_format
    pixels = np.zeros((24, 16, 3), np.uint8)
    pixels[6:18, 4:12] = (230, 190, 160)  # a face-coloured block, so the image is not blank
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format=pixel_format)
    return b"".join(bytes(packet) for packet in [*context.encode(frame), *context.encode(None)])


@cache
def png_face() -> bytes:
    return _encode("png", "rgb24")


@cache
def jpeg_face() -> bytes:
    return _encode("mjpeg", "yuvj420p")
