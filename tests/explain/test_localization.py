"""Pointing game, hard IoU/IoBB at a budget, Otsu: hand-drawn maps with known answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from imbalens.explain.localization import (
    alignment_columns,
    budget_mask,
    gaussian_map,
    localization_metrics,
    otsu_mask,
    pointing_game,
    power_transform_table,
    summarise_localization,
)


def _box(size: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pointing_game_hit_miss_ties_and_empty() -> None:
    box = _box(10, 2, 2, 5, 5)
    inside = torch.zeros(10, 10)
    inside[3, 3] = 1.0
    outside = torch.zeros(10, 10)
    outside[8, 8] = 1.0
    tie = torch.zeros(10, 10)
    tie[3, 3] = tie[8, 8] = 1.0  # two maxima, one inside: expected hit 1/2
    uniform = torch.ones(10, 10)  # every pixel maximal: hit = box fraction 9/100
    maps = torch.stack([inside, outside, tie, uniform])
    got = pointing_game(maps, box).tolist()
    assert got == [1.0, 0.0, 0.5, pytest.approx(0.09)]
    assert math.isnan(float(pointing_game(inside, torch.zeros(10, 10, dtype=torch.bool))))


def test_topk_budget_iou_iobb_known_answer() -> None:
    # map = column index on a 10 x 10 image: the top 20 % are columns 8 and 9
    s = torch.arange(10.0).expand(10, 10).clone()
    b = budget_mask(s, 20)
    assert b.sum() == 20 and (b[:, 8:] == 1).all()
    # a tie at the threshold: 15 pixels needed, columns 9 (10 px) above, column 8 tied
    half = budget_mask(s, 15)
    assert half.sum() == pytest.approx(15) and (half[:, 8] == 0.5).all()
    box = _box(10, 7, 0, 10, 10)  # columns 7..9: 30 pixels
    m = localization_metrics(s[None], box[None], k=20.0)
    assert m["topk_iou"].item() == pytest.approx(20 / 30)  # B in M, |M| = 30
    assert m["topk_iobb"].item() == pytest.approx(20 / 30)
    # box-area budget: the top 30 pixels are exactly the box
    assert m["area_iou"].item() == pytest.approx(1.0)
    assert m["pointing"].item() == 1.0  # the maximum (column 9) is inside


def test_otsu_two_level_map_and_constant_map() -> None:
    # four grey levels: {0.1, 0.2} background, {0.8, 0.9} foreground (a 4 x 6 block)
    s = torch.full((8, 8), 0.1)
    s[:4, :4], s[:4, 4:6], s[6:, :] = 0.9, 0.8, 0.2
    b, ok = otsu_mask(s[None])
    assert ok.all() and torch.equal(b[0], _box(8, 0, 0, 6, 4))
    m = localization_metrics(s[None], _box(8, 0, 0, 2, 4)[None])
    assert m["otsu_iou"].item() == pytest.approx(8 / 24)
    assert m["otsu_iobb"].item() == pytest.approx(1.0)
    flat = localization_metrics(torch.ones(1, 8, 8), _box(8, 0, 0, 2, 4)[None])
    assert math.isnan(flat["otsu_iou"].item())
    # ties share the budget: n = ceil(5% of 64) = 4 pixels spread over all 64, so
    # |B & M| = 4 * 8 / 64 = 0.5, |B | M| = 4 + 8 - 0.5, IoBB = 4 / 64 (not 1)
    assert flat["topk_iou"].item() == pytest.approx(0.5 / 11.5)
    assert flat["topk_iobb"].item() == pytest.approx(4 / 64)


def test_power_transform_moves_soft_metrics_not_pointing_or_topk() -> None:
    t = power_transform_table((1.0, 0.5, 0.25)).set_index("gamma")
    # the numbers: IoBB 0.59 -> 0.87, IoR 0.67 -> 0.29 (here 0.30)
    assert t.loc[1.0, "soft_iobb"] == pytest.approx(0.59, abs=0.01)
    assert t.loc[0.25, "soft_iobb"] == pytest.approx(0.87, abs=0.01)
    assert t.loc[1.0, "soft_ior"] == pytest.approx(0.67, abs=0.01)
    assert t.loc[0.25, "soft_ior"] == pytest.approx(0.29, abs=0.015)
    for col in ("pointing", "topk_iou", "topk_iobb", "area_iou"):
        assert t[col].nunique() == 1, (col, t[col].tolist())
    assert t.loc[1.0, "pointing"] == 1.0


def test_power_transform_off_centre_map_keeps_ranking_metrics() -> None:
    g = gaussian_map(64, 6.0, centre=(20.0, 44.0))
    box = _box(64, 30, 10, 50, 30)
    ref = localization_metrics(g[None], box[None])
    for gamma in (0.5, 0.1):
        got = localization_metrics((g**gamma)[None], box[None])
        for col in ("pointing", "topk_iou", "topk_iobb", "area_iou"):
            assert got[col].item() == ref[col].item(), col


def test_alignment_columns_with_exact_mask_and_summary() -> None:
    s = torch.zeros(2, 10, 10)
    s[0, 3, 3] = 1.0
    s[1, 9, 9] = 1.0
    boxes = _box(10, 2, 2, 6, 6).expand(2, 10, 10)
    exact = torch.zeros(2, 10, 10, dtype=torch.bool)
    exact[0, 3, 3] = True  # second row: empty exact mask -> NaN
    cols = alignment_columns(s, boxes, exact)
    assert cols["pointing"] == [1.0, 0.0]
    assert cols["pointing_mask"][0] == 1.0 and math.isnan(cols["pointing_mask"][1])
    assert cols["iobb_mask"][0] == 1.0 and cols["ior_mask"][0] == 1.0
    df = pd.DataFrame({"finding": ["Nodule", "Mass"], **cols})
    summ = summarise_localization(df).set_index("finding")
    assert summ.loc["all", "pointing_mean"] == 0.5 and summ.loc["all", "pointing_n"] == 2
    assert summ.loc["all", "pointing_mask_n"] == 1
    assert list(summ.index) == ["Mass", "Nodule", "all"]


def test_bad_input_named() -> None:
    with pytest.raises(ValueError, match="upsample"):
        pointing_game(torch.zeros(4, 4), torch.zeros(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="percentage"):
        localization_metrics(torch.zeros(1, 4, 4), torch.ones(1, 4, 4), k=0.0)
    got = localization_metrics(torch.rand(3, 6, 6), torch.ones(3, 6, 6))["pointing"]
    assert torch.isfinite(got).all()
