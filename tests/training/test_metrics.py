"""Known-answer tests for imbalens.training.metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from imbalens.training.metrics import performance, summary_frame

# Class A: positives score 0.35, 0.8; negatives 0.1, 0.4.
#   AUROC: of the 4 (pos, neg) pairs 3 are ordered right -> 3/4.
#   AP: ranking 0.8(+) 0.4(-) 0.35(+) 0.1(-): P=1 at R=1/2, P=2/3 at R=1 -> 1/2 + 1/3 = 5/6.
# Class B: positives 0.5, 0.9; negatives 0.5, 0.2 (a tie counts 1/2).
#   AUROC: (1/2 + 1 + 1 + 1)/4 = 7/8.  AP: threshold 0.9 P=1 R=1/2; 0.5 P=2/3 R=1 -> 5/6.
# Class C: no positives -> NaN.
PROBS = np.array(
    [
        [0.1, 0.5, 0.3],
        [0.4, 0.5, 0.1],
        [0.35, 0.2, 0.2],
        [0.8, 0.9, 0.2],
    ]
)
TARGETS = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0]])
NAMES = ["A", "B", "C"]


def run_quietly(*args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = performance(*args)
    return result, [str(w.message) for w in caught]


def test_hand_computed_values() -> None:
    m, messages = run_quietly(PROBS, TARGETS, NAMES)
    assert m["auroc"]["A"] == pytest.approx(3 / 4)
    assert m["auroc"]["B"] == pytest.approx(7 / 8)
    assert m["ap"]["A"] == pytest.approx(5 / 6)
    assert m["ap"]["B"] == pytest.approx(5 / 6)
    assert m["mean_prob"] == pytest.approx({"A": 0.4125, "B": 0.525, "C": 0.2})
    assert m["n_pos"] == {"A": 2, "B": 2, "C": 0}
    assert m["n_images"] == 4
    assert len(messages) == 1 and "'C'" in messages[0] and "no positives" in messages[0]


def test_nan_class_excluded_from_means() -> None:
    m, _ = run_quietly(PROBS, TARGETS, NAMES)
    assert math.isnan(m["auroc"]["C"]) and math.isnan(m["ap"]["C"])
    assert m["auroc_mean"] == pytest.approx((3 / 4 + 7 / 8) / 2)
    assert m["ap_mean"] == pytest.approx(5 / 6)
    assert m["mean_prob_mean"] == pytest.approx((0.4125 + 0.525 + 0.2) / 3)


def test_no_negatives_is_nan_with_warning() -> None:
    with pytest.warns(UserWarning, match="'Hernia' has no negatives"):
        m = performance(np.array([[0.2], [0.7]]), np.array([[1], [1]]), ["Hernia"])
    assert math.isnan(m["auroc"]["Hernia"]) and math.isnan(m["auroc_mean"])
    assert m["mean_prob_mean"] == pytest.approx(0.45)


def test_binary_one_output() -> None:
    probs = np.array([0.9, 0.2, 0.6, 0.4, 0.7])
    targets = np.array([1, 0, 0, 1, 1])
    # pairs (pos, neg): 0.9>0.2,0.6; 0.4>0.2 only; 0.7>0.2,0.6 -> 5/6
    # AP: 0.9(+) P1 R1/3; 0.7(+) P1 R2/3; 0.6(-); 0.4(+) P3/4 R1 -> (1 + 1 + 3/4)/3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = performance(probs, targets, ["Unhealthy"])
    assert m["auroc"] == {"Unhealthy": pytest.approx(5 / 6)}
    assert m["ap"]["Unhealthy"] == pytest.approx(11 / 12)
    assert m["auroc_mean"] == m["auroc"]["Unhealthy"]
    assert m["mean_prob"]["Unhealthy"] == pytest.approx(0.56)
    assert performance(probs[:, None], targets[:, None], ["Unhealthy"]) == m


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        performance(PROBS, TARGETS, ["A", "B"])
    with pytest.raises(ValueError, match="0 or 1"):
        performance(PROBS, TARGETS * 2, NAMES)
    with pytest.raises(ValueError, match="NaN"):
        performance(np.full((4, 3), np.nan), TARGETS, NAMES)
    with pytest.raises(ValueError, match="unique"):
        performance(PROBS, TARGETS, ["A", "A", "C"])


def test_summary_frame() -> None:
    m, _ = run_quietly(PROBS, TARGETS, NAMES)
    frame = summary_frame(m)
    assert list(frame.index) == ["A", "B", "C", "Average"]
    assert list(frame.columns) == ["auroc", "ap", "mean_prob", "n_pos"]
    assert frame.loc["Average", "auroc"] == pytest.approx(0.8125)
    assert frame.loc["B", "n_pos"] == 2 and pd.isna(frame.loc["Average", "n_pos"])
    assert math.isnan(frame.loc["C", "ap"])
