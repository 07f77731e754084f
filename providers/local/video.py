"""Drawing the local avatar: a cartoon face whose mouth follows the speech level.

Only the eyes, the mouth and the level bar change between frames, so each frame is a copy
of a pre-drawn background with those small regions painted over it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from livekit import rtc

from .gestures import FaceGeometry, Gesture, draw_gesture, gesture_region

RGBA = tuple[int, int, int, int]
Image = npt.NDArray[np.uint8]

_BACKGROUND_TOP: RGBA = (18, 24, 38, 255)
_BACKGROUND_BOTTOM: RGBA = (36, 48, 78, 255)
_FACE: RGBA = (246, 201, 152, 255)
_EYE_WHITE: RGBA = (250, 250, 250, 255)
_PUPIL: RGBA = (40, 44, 60, 255)
_MOUTH: RGBA = (150, 36, 52, 255)
_LEVEL_BAR: RGBA = (90, 200, 160, 255)

_BLINK_PERIOD_S = 4.0
_BLINK_DURATION_S = 0.15
_BREATH_PERIOD_S = 3.0


def speech_level(samples: npt.NDArray[np.int16]) -> float:
    """Loudness of int16 samples mapped to 0..1 (a full-scale sine is about 1)."""
    if samples.size == 0:
        return 0.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return min(1.0, rms / (0.5 * 32768.0))


class FaceRenderer:
    """Renders RGBA frames of a face; `level` (0..1) opens the mouth, time drives blinks."""

    def __init__(self, width: int, height: int) -> None:
        if width < 32 or height < 32:
            raise ValueError("the avatar video must be at least 32x32 pixels")
        self.width = width
        self.height = height
        self._cx = width / 2.0
        self._cy = height * 0.47
        self._radius = 0.36 * min(width, height)
        self._background = self._draw_background()

    def _draw_background(self) -> Image:
        top = np.array(_BACKGROUND_TOP, dtype=np.float32)
        bottom = np.array(_BACKGROUND_BOTTOM, dtype=np.float32)
        ramp = np.linspace(0.0, 1.0, self.height, dtype=np.float32)[:, None]
        column = (top + (bottom - top) * ramp).astype(np.uint8)
        image = np.ascontiguousarray(
            np.broadcast_to(column[:, None, :], (self.height, self.width, 4))
        )
        _fill_ellipse(image, self._cx, self._cy, self._radius, self._radius * 1.08, _FACE)
        return image

    @property
    def face(self) -> FaceGeometry:
        return FaceGeometry(self._cx, self._cy, self._radius)

    def render(self, level: float, t: float, gesture: Gesture | None = None) -> rtc.VideoFrame:
        """The frame at time `t` seconds with speech loudness `level`, and `gesture` if it is on."""
        image = self.render_array(level, t, gesture)
        # A flat view: the frame then wraps the array's buffer instead of copying it.
        return rtc.VideoFrame(
            self.width, self.height, rtc.VideoBufferType.RGBA, image.reshape(-1).data
        )

    def render_array(self, level: float, t: float, gesture: Gesture | None = None) -> Image:
        level = min(1.0, max(0.0, level))
        image = self._background.copy()
        self._draw_eyes(image, t)
        self._draw_mouth(image, level, t)
        if gesture is not None:
            draw_gesture(image, gesture, t, self.face)
        self._draw_level_bar(image, level)
        return image

    def _draw_eyes(self, image: Image, t: float) -> None:
        r = self._radius
        eye_rx = 0.15 * r
        blinking = (t % _BLINK_PERIOD_S) < _BLINK_DURATION_S
        eye_ry = 0.02 * r if blinking else 0.17 * r
        # Idle gaze: the pupils wander slowly so a silent avatar still looks alive.
        gaze_x = 0.05 * r * math.sin(t * 0.7)
        gaze_y = 0.03 * r * math.sin(t * 0.45 + 1.0)
        for side in (-1.0, 1.0):
            ex = self._cx + side * 0.38 * r
            ey = self._cy - 0.22 * r
            _fill_ellipse(image, ex, ey, eye_rx, eye_ry, _EYE_WHITE)
            if not blinking:
                _fill_ellipse(image, ex + gaze_x, ey + gaze_y, 0.07 * r, 0.08 * r, _PUPIL)

    def _draw_mouth(self, image: Image, level: float, t: float) -> None:
        r = self._radius
        breathing = 0.5 + 0.5 * math.sin(2.0 * math.pi * t / _BREATH_PERIOD_S)
        rx = 0.30 * r * (1.0 + 0.25 * level)
        ry = 0.03 * r + 0.01 * r * breathing + 0.26 * r * level
        _fill_ellipse(image, self._cx, self._cy + 0.45 * r, rx, ry, _MOUTH)

    def _draw_level_bar(self, image: Image, level: float) -> None:
        bar_height = max(2, self.height // 60)
        bar_width = round(self.width * level)
        if bar_width > 0:
            image[self.height - bar_height :, :bar_width] = _LEVEL_BAR

    def gesture_region(self, name: str) -> tuple[slice, slice]:
        """Rows and columns that `name` draws in (for tests and diagnostics)."""
        return gesture_region(name, self.face, self.width, self.height)

    def mouth_region(self) -> tuple[slice, slice]:
        """Rows and columns that hold the mouth at any level (for tests and diagnostics)."""
        r = self._radius
        top = int(self._cy + 0.45 * r - 0.31 * r)
        bottom = math.ceil(self._cy + 0.45 * r + 0.31 * r)
        left = int(self._cx - 0.38 * r)
        right = math.ceil(self._cx + 0.38 * r)
        return slice(max(0, top), bottom), slice(max(0, left), right)


def _fill_ellipse(image: Image, cx: float, cy: float, rx: float, ry: float, color: RGBA) -> None:
    height, width = image.shape[:2]
    x0, x1 = max(0, int(cx - rx)), min(width, math.ceil(cx + rx) + 1)
    y0, y1 = max(0, int(cy - ry)), min(height, math.ceil(cy + ry) + 1)
    if x0 >= x1 or y0 >= y1 or rx <= 0 or ry <= 0:
        return
    ys, xs = np.ogrid[y0:y1, x0:x1]
    inside = ((xs + 0.5 - cx) / rx) ** 2 + ((ys + 0.5 - cy) / ry) ** 2 <= 1.0
    image[y0:y1, x0:x1][inside] = color
