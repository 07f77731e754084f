"""The local avatar's gestures, as drawn: each shows in its region for its time, then is gone."""

from __future__ import annotations

import numpy as np
import pytest

from providers.local.gestures import GESTURE_SECONDS, LOCAL_GESTURES, Gesture
from providers.local.video import FaceRenderer


@pytest.mark.parametrize("name", LOCAL_GESTURES)
def test_a_gesture_changes_its_region_while_it_plays_and_only_then(name: str) -> None:
    renderer = FaceRenderer(640, 480)
    rows, cols = renderer.gesture_region(name)
    gesture = Gesture(name, started_at=10.0)
    changed = []
    for t in np.arange(10.0, 10.0 + GESTURE_SECONDS, 0.1):
        idle = renderer.render_array(0.0, float(t))
        playing = renderer.render_array(0.0, float(t), gesture)
        changed.append(not np.array_equal(idle[rows, cols], playing[rows, cols]))
    assert all(changed)
    after = 10.0 + GESTURE_SECONDS + 0.01
    assert np.array_equal(
        renderer.render_array(0.0, after), renderer.render_array(0.0, after, gesture)
    )
