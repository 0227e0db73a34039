"""Main-object selection rules over (n, 6) detections: x1, y1, x2, y2, score, class."""

import numpy as np
import pytest

from imgfeat.crop import select_main

DETS = np.array([
    [0, 0, 10, 10, 0.80, 0],    # small, best score
    [0, 0, 40, 40, 0.74, 1],    # large, within 0.1 of the best
    [0, 0, 100, 100, 0.45, 2],  # huge, weak
], np.float32)


@pytest.mark.parametrize("mode, expected", [("score", 0), ("stable", 1), ("score_area", 2)])
def test_rules_pick_as_documented(mode, expected):
    assert select_main(DETS, 0.3, mode) == expected


def test_stable_ignores_boxes_below_the_threshold_and_far_from_the_best():
    assert select_main(DETS, 0.78, "stable") == 0  # the large one is under the threshold
    dets = DETS.copy()
    dets[1, 4] = 0.6  # no longer a near-tie
    assert select_main(dets, 0.3, "stable") == 0
    assert select_main(DETS, 0.9, "stable") is None
    assert select_main(np.zeros((0, 6), np.float32), 0.3, "stable") is None
