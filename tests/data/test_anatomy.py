"""imbalens.data.anatomy: the phantom's renderer (lesions inside their boxes, lesion masks),
support boxes and the soft-mask primitives."""

from __future__ import annotations

import numpy as np
import pytest

from imbalens.data.anatomy import (
    render,
    render_with_masks,
    ridges,
    rng_for,
    smooth_inside,
    support_box,
)
from imbalens.data.findings import BOXED_FINDINGS, FINDINGS


@pytest.mark.parametrize("finding", BOXED_FINDINGS)
def test_box_sits_on_its_lesion(finding: str) -> None:
    for index in range(3):
        with_, boxes = render(64, 0, index, index, [finding])
        without, none = render(64, 0, index, index, [])
        assert none == {} and set(boxes) == {finding}
        x0, y0, x1, y1 = boxes[finding]
        diff = np.abs(with_.astype(float) - without.astype(float))
        inside = diff[y0:y1, x0:x1].sum()
        assert diff.sum() > 0
        assert inside / diff.sum() > 0.9, (finding, index, inside / diff.sum())
        # and the box is not the whole image
        assert (x1 - x0) * (y1 - y0) < 0.3 * 64 * 64


def test_unboxed_findings_change_the_image_without_boxes() -> None:
    base, _ = render(48, 3, 7, 7, [])
    for f in sorted(set(FINDINGS) - set(BOXED_FINDINGS)):
        img, boxes = render(48, 3, 7, 7, [f])
        assert boxes == {}
        assert np.abs(img.astype(int) - base.astype(int)).sum() > 100, f


def test_support_box_known_answer() -> None:
    f = np.zeros((10, 12))
    f[2:5, 3:9] = 1.0
    f[0, 0] = 0.01  # below 2 % of the maximum: not part of the lesion
    assert support_box(f) == (3, 2, 9, 5)
    assert support_box(np.zeros((4, 4))) is None


@pytest.mark.parametrize("finding", BOXED_FINDINGS)
def test_lesion_mask_inside_box_and_covers_changed_pixels(finding: str) -> None:
    for index in range(3):
        with_, boxes, masks = render_with_masks(64, 0, index, index, [finding])
        without, _, _ = render_with_masks(64, 0, index, index, [])
        assert np.array_equal(render(64, 0, index, index, [finding])[0], with_)
        mask = masks[finding]
        x0, y0, x1, y1 = boxes[finding]
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert mask.any() and not (mask & ~inside).any()
        # the box is the mask's bounding box
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == (x0, y0, x1, y1)
        changed = with_ != without
        missed = (changed & ~mask).sum() / changed.sum()
        if finding == "Cardiomegaly":
            # the enlarged heart also shifts, uncovering a rim of the normal heart's
            # outline outside its silhouette (measured: 4-5 % of the changed pixels)
            assert missed < 0.1, missed
        else:
            assert missed == 0.0, (finding, index, missed)
            assert mask.sum() < 1.1 * changed.sum() + 10  # tight, not the whole box


def test_rng_for_is_the_seed_sequence_with_its_spawn_key() -> None:
    a = rng_for(7, 2, 5).random(4)
    expected = np.random.default_rng(np.random.SeedSequence(7, spawn_key=(2, 5))).random(4)
    assert np.array_equal(a, expected)
    assert not np.array_equal(a, rng_for(7, 2, 6).random(4))
    assert not np.array_equal(a, rng_for(8, 2, 5).random(4))


def test_smooth_inside_known_answers() -> None:
    # t = clip(1/2 - sd/e, 0, 1), s = t^2 (3 - 2t): 1 deep inside, 0 outside, 1/2 on the edge
    sd = np.array([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0])
    s = smooth_inside(sd, 1.0)
    np.testing.assert_allclose(s, [1.0, 1.0, 0.84375, 0.5, 0.15625, 0.0, 0.0])


def test_ridges_known_answers() -> None:
    n = np.array([-0.2, -0.05, 0.0, 0.05, 0.1, 0.3])
    np.testing.assert_allclose(ridges(n, 0.1), [0.0, 0.5, 1.0, 0.5, 0.0, 0.0])


def test_render_is_deterministic_and_uint8() -> None:
    a, boxes_a = render(32, 1, 2, 3, ["Nodule"])
    b, boxes_b = render(32, 1, 2, 3, ["Nodule"])
    assert a.dtype == np.uint8 and a.shape == (32, 32)
    assert np.array_equal(a, b) and boxes_a == boxes_b
    other, _ = render(32, 1, 3, 3, ["Nodule"])  # another image index: another pose
    assert not np.array_equal(a, other)
