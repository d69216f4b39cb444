"""Known-answer tests for imbalens.explain.dissect (planted activations, thresholds, wrapper)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imbalens.explain.dissect import count_concepts, dissect_model, streaming_quantile

Q = 0.02  # every channel has >= 8 of 192 cells at 1.0, so tau_c == 1.0 exactly


def _planted() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 images, 4 channels, 8x8 grid, blobs of 1.0 on 0.0; 2 findings (A: img 0-1, B: img 2)."""
    a = torch.zeros(3, 4, 8, 8)
    box = torch.zeros(3, 8, 8, dtype=torch.bool)
    # image 0: box rows 0-2, cols 0-2
    box[0, 0:3, 0:3] = True
    a[0, 0, 1:3, 1:3] = 1  # inside -> 1
    a[0, 0, 6:8, 6:8] = 1  # outside -> 0
    a[0, 1, 5:7, 0:2] = 1  # outside -> 0
    a[0, 2, 1, 1] = a[0, 2, 2, 2] = 1  # diagonal pair inside: 1 (8-conn) / 2 (4-conn)
    # image 1: box rows 4-7, cols 4-7
    box[1, 4:8, 4:8] = True
    a[1, 0, 4:6, 4:6] = 1  # inside -> 1
    a[1, 1, 4, 4:6] = 1  # two separate blobs inside -> 2
    a[1, 1, 7, 6:8] = 1
    a[1, 2, 0:2, 0:3] = 1  # outside -> 0
    a[1, 3, 3:5, 3:5] = 1  # overlaps the box by one cell -> 1
    # image 2: box = column 7
    box[2, :, 7] = True
    a[2, 3, 0:3, 6] = 1  # touches the box's side but shares no cell -> 0
    a[2, 3, 5:7, 7] = 1  # inside -> 1
    fm = torch.stack([box.clone(), box.clone()], 1)
    fm[2, 0] = False
    fm[:2, 1] = False
    return a, box, fm


def _batches(with_findings: bool = False) -> list[tuple[torch.Tensor, ...]]:
    a, box, fm = _planted()
    if with_findings:
        return [(a[:2], box[:2], fm[:2]), (a[2:], box[2:], fm[2:])]
    return [(a[:2], box[:2]), (a[2:], box[2:])]


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("connectivity,disjoint", [(2, 7), (1, 8)])
def test_planted_counts(exact, connectivity, disjoint):
    res = count_concepts(_batches(), Q, connectivity=connectivity, exact=exact)
    assert np.array_equal(res.thresholds, np.ones(4))
    assert res.n_images == 3
    assert res.total_components == disjoint and res.total_detectors == 6
    assert res.disjoint == pytest.approx(disjoint / 3) and res.unique == 2.0
    if connectivity == 2:
        assert res.per_channel["n_components"].tolist() == [2, 2, 1, 2]
        assert res.per_channel["n_images"].tolist() == [2, 1, 1, 2]
        assert res.per_channel["is_detector"].all()


def test_normalise_by_boxes_and_per_finding():
    res = count_concepts(_batches(True), Q, normalise="boxes", n_boxes=4, finding_names=["A", "B"])
    assert res.disjoint == 7 / 4 and res.unique == 6 / 4
    assert res.per_finding["A"] == {"disjoint": 3.0, "unique": 2.5, "n_images": 2}
    assert res.per_finding["B"] == {"disjoint": 1.0, "unique": 1.0, "n_images": 1}
    assert res.per_channel["components:A"].tolist() == [2, 2, 1, 1]
    assert res.per_channel["components:B"].tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="n_boxes"):
        count_concepts(_batches(), Q, normalise="boxes")


def test_grid_mode_marks_cells_by_covered_fraction():
    """upsample_to=None: a cell is box when >= box_cover (1/2) of it is covered."""
    a, box, _ = _planted()
    big = box.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 32x32, same boxes
    res = count_concepts([(a, big)], Q, exact=True, upsample_to=None)
    assert res.total_components == 7
    # one input pixel of cell (2, 2) covers 1/16 of it: no longer a box cell (max-pooling
    # made it one, and found 2 concepts there)
    tiny = torch.zeros(3, 32, 32, dtype=torch.bool)
    tiny[0, 11, 11] = True
    assert count_concepts([(a, tiny)], Q, exact=True, upsample_to=None).total_components == 0
    tiny[0, 8:10, 8:12] = True  # now 9/16 of cell (2, 2)
    assert count_concepts([(a, tiny)], Q, exact=True, upsample_to=None).total_components == 2


# median box (w, h) per finding as a fraction of the image side (study.md, NIH)
MEDIAN_BOXES = {
    "Atelectasis": (0.17, 0.12),
    "Effusion": (0.20, 0.27),
    "Cardiomegaly": (0.47, 0.37),
    "Infiltrate": (0.22, 0.26),
    "Pneumonia": (0.22, 0.27),
    "Pneumothorax": (0.20, 0.20),
    "Mass": (0.12, 0.14),
    "Nodule": (0.07, 0.07),
}


@pytest.mark.parametrize("grid", [3, 5, 10])
@pytest.mark.parametrize("finding", sorted(MEDIAN_BOXES))
def test_marked_box_area_matches_true_area(finding: str, grid: int) -> None:
    """80 px input, a centred median box: the area that counts as box is the box's own.

    Default (activations upsampled to the mask): exactly the box pixels. The old
    max-pooled grid marked Nodule 0.5% -> 15% (3x3) / 6% (5x5), Atelectasis 2% -> 19%.
    Tolerance: the default is exact (0); the grid mode (box_cover 1/2) rounds each side
    to the nearest cell border, so it errs by at most half a cell per side.
    """
    from imbalens.explain.dissect import _prepared

    size = 80
    w, h = (round(f * size) for f in MEDIAN_BOXES[finding])
    box = torch.zeros(1, size, size, dtype=torch.bool)
    y0, x0 = (size - h) // 2, (size - w) // 2
    box[0, y0 : y0 + h, x0 : x0 + w] = True
    true = float(box.float().mean())
    acts = torch.rand(1, 2, grid, grid)
    ((_, marked, _, _),) = list(_prepared([(acts, box)], "mask"))
    assert marked.shape[-1] == size
    assert float(marked.float().mean()) == pytest.approx(true, abs=1e-12)
    ((_, cells, _, _),) = list(_prepared([(acts, box)], None))
    cell = 1.0 / grid
    band = cell * (w + h) / size + cell * cell  # half a cell on each of the four sides
    assert abs(float(cells.float().mean()) - true) <= band + 1e-9


@pytest.mark.parametrize("relu", [False, True])
def test_streaming_quantile_within_stated_error(relu):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 997, generator=g) * (1 + i) for i in range(5)]
    if relu:  # 90% ties at 0 (the quantile itself is a tie) in row 0
        xs = [torch.where(x[0:1] < 1.3, 0.0, x[0:1]).expand(3, -1).clone() for x in xs]
    allv = torch.cat(xs, 1).numpy()
    for p in (0.5, 0.96, 0.99):
        est, err, n = streaming_quantile(xs, p, bins=64)
        exact = np.quantile(allv, p, axis=1)
        assert n == 5 * 997
        span = allv.max(1) - allv.min(1)
        assert np.all(err <= span / 64**2 + 1e-6)
        assert np.all(np.abs(est - exact) <= err + 1e-5)
    if relu:
        est, err, _ = streaming_quantile(xs, 0.5, bins=64)
        assert np.all(est == 0) and np.all(err == 0)


def test_batch_threshold_is_torch_quantile_per_batch():
    g = torch.Generator().manual_seed(1)
    acts = [torch.rand(2, 3, 4, 4, generator=g) for _ in range(3)]
    box = torch.ones(2, 8, 8, dtype=torch.bool)  # masks at the upsampled grid
    res = count_concepts([(a, box) for a in acts], 0.1, threshold="batch", upsample_to=8)
    for a, t in zip(acts, res.batch_thresholds, strict=True):
        up = torch.nn.functional.interpolate(a, size=(8, 8), mode="bilinear", align_corners=False)
        expect = torch.quantile(up.transpose(0, 1).reshape(3, -1), 0.9, dim=1)
        np.testing.assert_allclose(t, expect.numpy(), rtol=0, atol=0)
    # each channel-map with any cell >= tau overlaps the all-ones box: one detector each
    assert res.n_images == 6
    np.testing.assert_allclose(res.thresholds, res.batch_thresholds.mean(0))


class _Identity(nn.Module):
    dissect_layers = ("features",)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class _Boxed(torch.utils.data.Dataset):
    def __init__(self):
        self.a, box, _ = _planted()
        self.masks = torch.zeros(3, 8, 8, 8, dtype=torch.bool)
        self.masks[:, 0] = box  # union of findings == box

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"image": self.a[i], "box_mask": self.masks[i], "index": i}


@pytest.mark.parametrize("cache", [False, True])
def test_dissect_model_matches_core(cache):
    res = dissect_model(_Identity(), _Boxed(), q=Q, batch_size=2, exact=False, cache=cache)
    assert res.total_components == 7 and res.unique == 2.0
    assert res.per_finding["Atelectasis"]["disjoint"] == 7 / 3
    with pytest.raises(ValueError, match="q="):
        dissect_model(_Identity(), _Boxed())


@pytest.mark.parametrize(
    "cache,exact,passes", [(False, False, 4), (False, True, 3), (True, False, 1)]
)
def test_activation_stream_passes(cache, exact, passes):
    from imbalens.explain.dissect import ActivationStream

    stream = ActivationStream(_Identity(), _Boxed(), "features", batch_size=2, cache=cache)
    res = count_concepts(stream, Q, exact=exact)
    stream.close()
    assert stream.passes == passes and res.total_components == 7


@pytest.mark.parametrize("threshold", ["dataset", "batch"])
def test_floor_ties_silent_cells_never_form_a_concept(threshold: str) -> None:
    """tau_c = 0 for a mostly silent ReLU channel: only firing cells may be concepts."""
    a = torch.zeros(2, 2, 8, 8)
    box = torch.zeros(2, 8, 8, dtype=torch.bool)
    box[:, 0:4, 0:4] = True  # both images have a box
    a[0, 0, 1, 1:3] = 0.5  # channel 0 fires on 2 cells inside image 0's box; channel 1 silent
    strict = count_concepts([(a, box)], q=0.25, threshold=threshold, exact=True)
    assert strict.thresholds[0] == 0.0
    assert strict.disjoint == pytest.approx(0.5)  # one component in one of two images
    assert strict.unique == pytest.approx(0.5)
    assert strict.per_channel["is_detector"].tolist() == [True, False]
    literal = count_concepts([(a, box)], q=0.25, threshold=threshold, exact=True, floor_ties=False)
    # A >= 0 switches on every cell: each map is one component touching the box
    assert literal.disjoint == pytest.approx(2.0)
    assert literal.unique == pytest.approx(2.0)


def _random_batches(seed: int, relu: bool) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(3):
        acts = torch.randn(6, 32, 4, 4, generator=g)
        if relu:
            acts = acts.clamp(min=0)
        fm = torch.zeros(6, 8, 64, 64, dtype=torch.bool)
        for i in range(6):
            r = torch.randint(0, 40, (2,), generator=g)
            fm[i, (i + b) % 8, r[0] : r[0] + 20, r[1] : r[1] + 12] = True
            if i % 2:
                fm[i, (i + 3) % 8, 5:15, 40:60] = True
        out.append((acts, fm.any(1), fm))
    return out


def test_bilinear_matrix_equals_interpolate() -> None:
    from imbalens.explain.dissect import bilinear_matrix

    a = torch.randn(2, 3, 4, 5)
    up = F.interpolate(a, size=(37, 29), mode="bilinear", align_corners=False)
    mine = torch.einsum("yh,nchw,xw->ncyx", bilinear_matrix(37, 4), a, bilinear_matrix(29, 5))
    assert (up - mine).abs().max() < 1e-5


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("q", [0.005, 0.04, 0.7])
@pytest.mark.parametrize("floor_ties", [False, True])
def test_box_crop_fast_path_equals_whole_map_upsampling(
    relu: bool, q: float, floor_ties: bool
) -> None:
    """upsample_to="mask" upsamples only candidate maps; an explicit size upsamples all."""
    fast = count_concepts(_random_batches(1, relu), q=q, upsample_to="mask", floor_ties=floor_ties)
    ref = count_concepts(_random_batches(1, relu), q=q, upsample_to=64, floor_ties=floor_ties)
    assert (fast.disjoint, fast.unique) == (ref.disjoint, ref.unique)
    assert fast.per_finding == ref.per_finding
    pd.testing.assert_frame_equal(fast.per_channel, ref.per_channel)
    assert fast.total_components > 0


def _ratio(res, col: str) -> float:
    t = res.per_image
    return float((t["weight"] * t[col]).sum() / t["norm"].sum())


def test_per_image_terms_reproduce_the_counts():
    """The bootstrap's per-image terms give back Disjoint and Unique on the full set."""
    res = count_concepts(_batches(), Q)  # per image: (d_i, u_i), weight = norm = 1
    assert res.per_image["disjoint"].sum() == 7 and len(res.per_image) == 3
    assert (res.per_image["weight"] == 1).all() and (res.per_image["norm"] == 1).all()
    assert (_ratio(res, "disjoint"), _ratio(res, "unique")) == pytest.approx((7 / 3, 2.0))
    boxes = count_concepts(_batches(), Q, normalise="boxes", n_boxes=4)  # entries unknown
    assert boxes.per_image["norm"].tolist() == pytest.approx([4 / 3] * 3)
    assert (_ratio(boxes, "disjoint"), _ratio(boxes, "unique")) == pytest.approx((7 / 4, 6 / 4))
