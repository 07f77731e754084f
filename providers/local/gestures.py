"""The local avatar's gestures: their names, the RPC that asks for one, and how each is drawn.

The agent asks the avatar participant for a gesture with an RPC (`avatar.play_gesture`, the
gesture's name as payload), the way livekit-agents already talks to avatar workers
(`lk.clear_buffer`): the request reaches the avatar wherever it runs, and its answer (or error)
comes back to the agent's tool call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RPC_PLAY_GESTURE = "avatar.play_gesture"
WAVE = "wave"
NOD = "nod"
LOCAL_GESTURES: tuple[str, ...] = (WAVE, NOD)
GESTURE_SECONDS = 2.5

Image = npt.NDArray[np.uint8]
_HAND = (246, 201, 152, 255)
_HAND_OUTLINE = (120, 80, 60, 255)
_BROW = (60, 40, 30, 255)


@dataclass(frozen=True)
class FaceGeometry:
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class Gesture:
    name: str
    started_at: float  # animation time

    def progress(self, t: float) -> float | None:
        """0..1 through the gesture at animation time `t`, None once it is over."""
        elapsed = t - self.started_at
        return elapsed / GESTURE_SECONDS if 0.0 <= elapsed < GESTURE_SECONDS else None


def gesture_region(name: str, face: FaceGeometry, width: int, height: int) -> tuple[slice, slice]:
    """Rows and columns a gesture draws in (for tests and diagnostics)."""
    r = face.radius
    if name == WAVE:
        top, bottom = face.cy - 0.9 * r, face.cy + 0.3 * r
        left, right = face.cx + 1.0 * r, face.cx + 1.75 * r
    else:  # NOD: the eyebrows, raised and lowered
        top, bottom = face.cy - 0.75 * r, face.cy - 0.35 * r
        left, right = face.cx - 0.6 * r, face.cx + 0.6 * r
    return (
        slice(max(0, int(top)), min(height, math.ceil(bottom))),
        slice(max(0, int(left)), min(width, math.ceil(right))),
    )


def draw_gesture(image: Image, gesture: Gesture, t: float, face: FaceGeometry) -> None:
    progress = gesture.progress(t)
    if progress is None:
        return
    r = face.radius
    swing = math.sin(progress * 6.0 * math.pi)  # three waves, or three nods
    if gesture.name == WAVE:
        hand_x = face.cx + 1.35 * r + 0.2 * r * swing
        hand_y = face.cy - 0.45 * r
        _ellipse(image, hand_x, hand_y, 0.24 * r, 0.32 * r, _HAND_OUTLINE)
        _ellipse(image, hand_x, hand_y, 0.2 * r, 0.28 * r, _HAND)
    elif gesture.name == NOD:
        lift = 0.08 * r * swing
        for side in (-1.0, 1.0):
            x = face.cx + side * 0.38 * r
            _ellipse(image, x, face.cy - 0.5 * r - lift, 0.17 * r, 0.04 * r, _BROW)


def _ellipse(
    image: Image, cx: float, cy: float, rx: float, ry: float, color: tuple[int, int, int, int]
) -> None:
    height, width = image.shape[:2]
    x0, x1 = max(0, int(cx - rx)), min(width, math.ceil(cx + rx) + 1)
    y0, y1 = max(0, int(cy - ry)), min(height, math.ceil(cy + ry) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.ogrid[y0:y1, x0:x1]
    inside = ((xs + 0.5 - cx) / rx) ** 2 + ((ys + 0.5 - cy) / ry) ** 2 <= 1.0
    image[y0:y1, x0:x1][inside] = color
