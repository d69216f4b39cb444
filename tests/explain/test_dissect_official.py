"""The official dissection mode against a literal re-implementation of the official code.

``literal_official`` follows CAMP-eXplain-AI/imba-explain ``ConceptDetector.detect`` line
by line (upsample, per-batch ``torch.quantile``, ``>=``, times the union box mask, count
``cv2.findContours(RETR_TREE)`` per channel, append the image's count once per box
label, mean over all entries). OpenCV is not installed; ``literal_contours`` counts
RETR_TREE's contours independently of the package (plain-Python flood fills, no
skimage/scipy): every 8-connected foreground component has one outer border, every
4-connected background component that does not touch the image border is a hole with
one border.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imbalens.explain.dissect import OFFICIAL, count_concepts, count_contours

N8 = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
N4 = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def _flood(grid: np.ndarray, value: bool, steps) -> list[list[tuple[int, int]]]:
    h, w = grid.shape
    seen = np.zeros_like(grid, dtype=bool)
    parts = []
    for y in range(h):
        for x in range(w):
            if grid[y, x] != value or seen[y, x]:
                continue
            part, todo = [], deque([(y, x)])
            seen[y, x] = True
            while todo:
                cy, cx = todo.popleft()
                part.append((cy, cx))
                for dy, dx in steps:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and grid[ny, nx] == value:
                        seen[ny, nx] = True
                        todo.append((ny, nx))
            parts.append(part)
    return parts


def literal_contours(mask: np.ndarray) -> int:
    """len(cv2.findContours(mask, RETR_TREE, ...)[0]) for a binary 2-D mask."""
    mask = np.asarray(mask) > 0
    h, w = mask.shape
    outer = len(_flood(mask, True, N8))
    holes = sum(
        1
        for part in _flood(mask, False, N4)
        if not any(y in (0, h - 1) or x in (0, w - 1) for y, x in part)
    )
    return outer + holes


def literal_official(batches, q: float, size: int) -> tuple[float, float]:
    """The official ``detect`` loop: (mean disjoint, mean unique) over box entries."""
    disjoint, unique = [], []
    for acts, boxes, labels in batches:
        n, c = acts.shape[:2]
        fm = F.interpolate(acts, size=(size, size), mode="bilinear")
        fm = torch.permute(fm, [1, 0, 2, 3]).reshape(c, n * size * size)
        thr = torch.quantile(fm, q=1.0 - q, dim=1, keepdim=True)
        bm = (fm >= thr).to(torch.float32).reshape(c, n, size, size)
        bm = (torch.permute(bm, [1, 0, 2, 3]).numpy() * 255.0).astype(np.uint8)
        bm *= boxes[:, None].astype(np.uint8)
        for sample, sample_labels in zip(bm, labels, strict=True):
            d = u = 0
            for channel in sample:
                k = literal_contours(channel)
                d += k
                u += k > 0
            for _ in sample_labels:
                disjoint.append(d)
                unique.append(u)
    return float(np.mean(disjoint)), float(np.mean(unique))


# ----------------------------------------------------------------------------- shapes

S = 32


def _u_shape() -> np.ndarray:
    m = np.zeros((S, S), dtype=bool)
    m[4:14, 4:6] = m[4:14, 10:12] = True  # two arms, rows 4-13
    m[12:14, 4:12] = True  # the base, rows 12-13
    return m


def _ring() -> np.ndarray:
    m = np.zeros((S, S), dtype=bool)
    m[18:28, 18:28] = True
    m[20:26, 20:26] = False
    return m


def test_contour_counter_on_planted_maps() -> None:
    box_a = np.zeros((S, S), dtype=bool)
    box_a[2:9, 2:14] = True  # covers the U's arm tips, not its base
    box_b = np.zeros((S, S), dtype=bool)
    box_b[16:30, 16:30] = True  # around the ring
    u, ring = _u_shape(), _ring()
    sparse = np.zeros((S, S), dtype=bool)
    sparse[[3, 3, 7, 20], [3, 9, 30, 5]] = True  # four isolated pixels
    diag_ring = np.zeros((6, 6), dtype=bool)  # 8-connected ring with diagonal corners
    diag_ring[[1, 1, 2, 2, 3, 3, 4, 4], [2, 3, 1, 4, 1, 4, 2, 3]] = True
    cases = {
        "U clipped to box A": (u & box_a, 2),  # enters the box twice: two contours
        "U whole": (u, 1),
        "ring": (ring, 2),  # outer border + hole
        "ring clipped to box B": (ring & box_b, 2),
        "ring half clipped": (ring & (np.arange(S)[None, :] < 23), 1),  # a C: no hole
        "sparse": (sparse, 4),
        "diagonal ring": (diag_ring, 2),  # background is 4-connected: the hole is closed
        "empty": (np.zeros((S, S), dtype=bool), 0),
        "full": (np.ones((S, S), dtype=bool), 1),
    }
    maps = np.stack(
        [np.pad(m, ((0, S - m.shape[0]), (0, S - m.shape[1]))) for m, _ in cases.values()]
    )
    got = count_contours(maps)
    for (name, (m, expected)), k, mp in zip(cases.items(), got, maps, strict=True):
        assert literal_contours(m) == expected, name
        assert k == expected == literal_contours(mp), name


def test_contour_counter_matches_literal_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((60, 17, 13)) < rng.uniform(0.2, 0.8, size=(60, 1, 1))
    np.testing.assert_array_equal(count_contours(maps), [literal_contours(m) for m in maps])


def _planted_batches() -> list[tuple[torch.Tensor, np.ndarray, list[list[int]]]]:
    """Two batches at input resolution 32 (the second at an 8x8 grid, upsampled)."""
    g = torch.Generator().manual_seed(3)
    acts = torch.rand(3, 4, S, S, generator=g) * 0.5
    acts[0, 0][torch.from_numpy(_u_shape())] = 2.0
    acts[0, 1][torch.from_numpy(_ring())] = 2.0
    acts[1, 1][torch.from_numpy(_ring())] = 2.0
    acts[2, 3] = 0.0
    acts[2, 3, [3, 3, 20], [3, 9, 5]] = 1.0  # a sparse channel: 3 active pixels
    boxes = np.zeros((3, S, S), dtype=bool)
    boxes[0, 2:9, 2:14] = True  # image 0: two boxes (Atelectasis, Nodule)
    boxes[0, 16:30, 16:30] = True
    boxes[1, 16:30, 16:24] = True  # image 1: one box over half the ring
    boxes[2, 0:24, 0:12] = True  # image 2: two Mass boxes, overlapping
    boxes[2, 10:30, 4:10] = True
    labels = [[0, 7], [1], [6, 6]]
    small = torch.rand(2, 4, 8, 8, generator=g)
    small[0, 2] = 0.0
    small[0, 2, 2, 2] = 3.0  # sparse
    boxes2 = np.zeros((2, S, S), dtype=bool)
    boxes2[0, 4:20, 4:20] = True
    boxes2[1, 10:32, 0:32] = True
    return [(acts, boxes, labels), (small, boxes2, [[2], [3, 4, 5]])]


def _entries(labels: list[list[int]]) -> np.ndarray:
    out = np.zeros((len(labels), 8), dtype=np.int64)
    for i, lab in enumerate(labels):
        for f in lab:
            out[i, f] += 1
    return out


@pytest.mark.parametrize("q", [0.04, 0.1])
def test_official_mode_equals_literal_official_code(q: float) -> None:
    planted = _planted_batches()
    batches = [(a, torch.from_numpy(b), None, _entries(lab)) for a, b, lab in planted]
    res = count_concepts(batches, q, **OFFICIAL)
    disjoint, unique = literal_official(planted, q, S)
    assert (res.disjoint, res.unique) == pytest.approx((disjoint, unique), abs=1e-12)
    assert res.n_entries == 9
    # the earlier "official settings" (components overlapping the box, total / boxes,
    # floor rule) give other numbers on the same input
    old = count_concepts(
        [(a, torch.from_numpy(b)) for a, b, _ in planted],
        q, threshold="batch", normalise="boxes", n_boxes=9,
    )  # fmt: skip
    print(
        f"q={q}: official mode {res.disjoint:.3f}/{res.unique:.3f}, literal "
        f"{disjoint:.3f}/{unique:.3f}, old settings {old.disjoint:.3f}/{old.unique:.3f}"
    )
    assert (old.disjoint, old.unique) != pytest.approx((disjoint, unique))


def test_entries_normalise_needs_entries() -> None:
    planted = _planted_batches()
    with pytest.raises(ValueError, match="entries"):
        count_concepts([(a, torch.from_numpy(b)) for a, b, _ in planted], 0.04, **OFFICIAL)


def test_per_image_terms_weigh_an_image_by_its_box_entries() -> None:
    """Official averaging (an image once per box entry): weight = norm = its entries."""
    planted = _planted_batches()
    batches = [(a, torch.from_numpy(b), None, _entries(lab)) for a, b, lab in planted]
    res = count_concepts(batches, 0.04, **OFFICIAL)
    t = res.per_image
    entries = np.concatenate([_entries(lab) for _, _, lab in planted]).sum(1)
    assert t["weight"].tolist() == entries.tolist() == t["norm"].tolist()
    assert float((t["weight"] * t["disjoint"]).sum() / t["norm"].sum()) == pytest.approx(
        res.disjoint, abs=1e-12
    )
    assert float((t["weight"] * t["unique"]).sum() / t["norm"].sum()) == pytest.approx(
        res.unique, abs=1e-12
    )
