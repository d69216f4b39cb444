"""imbalens.study.stats: bootstrap CIs with known answers (planted differences, coverage)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from imbalens import runfolder as rf
from imbalens.study.results import load_grid
from imbalens.study.stats import (
    METRICS,
    Items,
    bootstrap_draws,
    concept_ci,
    format_ci,
    grid_uncertainty,
    map_mean,
    map_metric,
    paired_difference_ci,
    resample_weights,
    summary_rows,
    t_interval,
    weighted_ap,
    weighted_auroc,
)


def test_resample_weights_are_index_draws() -> None:
    w = resample_weights(7, 500, np.random.default_rng(3))
    assert w.shape == (500, 7)
    assert (w.sum(1) == 7).all()
    # each item is drawn Binomial(7, 1/7) times: mean 1
    assert w.mean() == pytest.approx(1.0)
    assert np.array_equal(w, resample_weights(7, 500, np.random.default_rng(3)))
    with pytest.raises(ValueError, match="n >= 1"):
        resample_weights(0, 5, np.random.default_rng(0))


def test_weighted_auroc_ap_equal_sklearn_on_resampled_arrays() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(int)
    s = np.round(rng.random(300) + 0.6 * y, 1)  # coarse scores: many ties
    w = resample_weights(300, 40, rng)
    auroc, ap = weighted_auroc(s, y, w), weighted_ap(s, y, w)
    for b in range(40):
        idx = np.repeat(np.arange(300), w[b].astype(int))
        assert auroc[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y[idx], s[idx]), abs=1e-12)
    # a resample without positives: undefined
    assert np.isnan(weighted_auroc(s, y, (1 - y)[None, :].astype(float)))[0]
    assert np.isnan(weighted_ap(s, y, (1 - y)[None, :].astype(float)))[0]


def pred_items(p: np.ndarray, y: np.ndarray, labels: list[str] | None = None) -> Items:
    p, y = np.atleast_2d(p.T).T, np.atleast_2d(y.T).T
    return Items({"probs": p, "targets": y}, labels or ["Unhealthy"])


def test_identical_runs_give_ci_zero_zero() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.3).astype(float)
    p = rng.random(200) * 0.5 + 0.3 * y
    a = pred_items(p, y)
    for name in ("auroc", "ap", "mean_prob"):
        diff, ci = paired_difference_ci(METRICS[name].statistic, [a], [a], n_boot=1000)
        assert diff[0] == 0.0 and ci[:, 0].tolist() == [0.0, 0.0], name
    maps = Items(
        {"sums:iobb": rng.random((50, 2)), "counts:iobb": np.ones((50, 2))}, ["A", "B", "all"]
    )
    diff, ci = paired_difference_ci(map_mean("iobb"), [maps], [maps])
    assert np.all(ci == 0.0) and np.all(diff == 0.0)


def test_planted_difference_is_covered_and_excludes_zero() -> None:
    rng = np.random.default_rng(2)
    n = 150
    base = rng.normal(0.4, 0.15, (n, 1))
    sums = {"a": base, "b": base + 0.05 + rng.normal(0, 0.1, (n, 1))}  # planted +0.05
    items = [
        Items({"sums:iobb": v, "counts:iobb": np.ones((n, 1))}, ["Mass", "all"])
        for v in sums.values()
    ]
    diff, ci = paired_difference_ci(map_mean("iobb"), [items[0]], [items[1]], n_boot=2000, seed=5)
    lo, hi = ci[:, -1]
    assert lo < 0.05 < hi and lo > 0
    assert diff[-1] == pytest.approx(float((sums["b"] - sums["a"]).mean()))
    # a better ranker: its AUROC gain is positive and the CI excludes 0
    y = (rng.random(400) < 0.3).astype(float)
    weak, strong = rng.random(400) + 0.3 * y, rng.random(400) + 1.5 * y
    diff, ci = paired_difference_ci(
        METRICS["auroc"].statistic, [pred_items(weak, y)], [pred_items(strong, y)]
    )
    true = roc_auc_score(y, strong) - roc_auc_score(y, weak)
    assert diff[0] == pytest.approx(true) and ci[0, 0] > 0 and ci[0, 0] < true < ci[1, 0]


def test_coverage_of_95_percent_ci_over_200_draws() -> None:
    """A paired mean difference of 0.1 (n = 40): the 95% percentile CI covers it 90-99%."""
    rng = np.random.default_rng(11)
    stat = METRICS["mean_prob"].statistic
    hits = 0
    for _ in range(200):
        p = rng.normal(0.3, 0.1, 40)
        q = p + 0.1 + rng.normal(0, 0.05, 40)
        y = np.zeros(40)
        draws, _ = bootstrap_draws(stat, [[pred_items(p, y), pred_items(q, y)]], 1000, rng)
        lo, hi = np.percentile(draws[1, :, 0] - draws[0, :, 0], [2.5, 97.5])
        hits += lo <= 0.1 <= hi
    assert 0.90 <= hits / 200 <= 0.99


def test_t_interval_and_hierarchical_seeds() -> None:
    lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))
    assert (lo, hi) == pytest.approx((2 - 4.302653 / 3**0.5, 2 + 4.302653 / 3**0.5), rel=1e-6)
    assert np.isnan(t_interval(np.array([1.0]))).all()
    # three seeds whose differences disagree (+0.1, 0, -0.1): one seed alone is sure, the
    # hierarchical CI over seeds is not
    rng = np.random.default_rng(4)
    y = np.zeros(300)
    seeds = []
    for shift in (0.1, 0.0, -0.1):
        p = rng.normal(0.3, 0.05, 300)
        seeds.append([pred_items(p, y), pred_items(p + shift + rng.normal(0, 0.01, 300), y)])
    stat = METRICS["mean_prob"].statistic
    one, _ = bootstrap_draws(stat, seeds[:1], 1000, np.random.default_rng(0))
    lo1, _ = np.percentile(one[1] - one[0], [2.5, 97.5])
    assert lo1 > 0.09
    many, points = bootstrap_draws(stat, seeds, 1000, np.random.default_rng(0))
    assert points.shape == (3, 2, 1)
    lo3, hi3 = np.percentile(many[1] - many[0], [2.5, 97.5])
    assert lo3 < 0 < hi3 and hi3 - lo3 > 0.1


def write_run(grid: Path, loss: str, seed: int, probs: np.ndarray, y: np.ndarray, maps: pd.DataFrame,
              disjoint: float = 2.0, extra: dict | None = None) -> Path:  # fmt: skip
    run = rf.RunFolder(grid / f"resnet50-{loss}-binary-s{seed}")
    run.path.mkdir(parents=True)
    cfg = {"data": {"root": "x", "task": "binary"}, "model": {"name": "resnet50"},
           "loss": {"name": loss}, "train": {"seed": seed}}  # fmt: skip
    run.config.write_text(yaml.safe_dump(cfg))
    images = [f"{i:04d}.png" for i in range(len(y))]
    pd.DataFrame({"image": images, "prob:Unhealthy": probs, "target:Unhealthy": y}).to_csv(
        run.predictions("test"), index=False
    )
    m = {"auroc": {"Unhealthy": roc_auc_score(y, probs)}, "ap": {"Unhealthy": 0.5},
         "mean_prob": {"Unhealthy": float(probs.mean())}}  # fmt: skip
    run.metrics.write_text(json.dumps(m))
    maps.assign(**(extra or {})).to_csv(run.alignment, index=False)
    run.concepts.write_text(json.dumps({"disjoint": disjoint, "unique": disjoint / 2}))
    return run.path


def fake_grid(tmp_path: Path, seeds: tuple[int, ...] = (0,)) -> Path:
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(int)
    imgs = [f"{i:04d}.png" for i in range(60)]
    for seed in seeds:
        p = np.clip(rng.random(300) * 0.6 + 0.3 * y, 0, 1)
        iobb = rng.random(90) * 0.5
        maps = pd.DataFrame({"image": imgs + imgs[:30], "finding": ["Mass"] * 60 + ["Nodule"] * 30,
                             "output": "Unhealthy", "iobb": iobb, "ior": 0.3})  # fmt: skip
        maps.loc[5, "iobb"] = np.nan  # an undefined map: dropped for both losses
        write_run(tmp_path, "bce", seed, p, y, maps, 2.0 + seed, {"pointing": 0.5})
        better = maps.assign(iobb=maps["iobb"] + 0.1, ior=0.2)
        write_run(tmp_path, "wbce", seed, np.clip(p + 0.1, 0, 1), y, better, 3.0 + seed,
                  {"pointing": 0.5})  # fmt: skip
    return tmp_path


def test_grid_uncertainty_one_seed(tmp_path: Path) -> None:
    res = load_grid(fake_grid(tmp_path))
    metrics = dict(METRICS) | {"pointing": map_metric("pointing")}  # a new column: one line
    unc = grid_uncertainty(res, metrics=metrics, n_boot=1000, seed=0)
    summ = summary_rows(unc, metrics).set_index(["metric", "loss"])
    pred = pd.read_csv(tmp_path / "resnet50-bce-binary-s0" / "predictions_test.csv")
    assert summ.loc[("auroc", "bce"), "value"] == pytest.approx(
        roc_auc_score(pred["target:Unhealthy"], pred["prob:Unhealthy"])
    )
    assert summ.loc[("auroc", "bce"), "lo"] < summ.loc[("auroc", "bce"), "value"]
    iobb = summ.loc[("iobb", "wbce")]
    assert iobb["diff"] == pytest.approx(0.1) and iobb["ci_lo"] == pytest.approx(0.1)
    assert iobb["n_items"] == 60 and "1 seed" in iobb["method"]
    assert summ.loc[("ior", "wbce"), "ci_hi"] == pytest.approx(-0.1)
    assert summ.loc[("pointing", "wbce"), "ci_lo"] == 0 == summ.loc[("pointing", "wbce"), "ci_hi"]
    conc = summ.loc[("disjoint", "wbce")]
    assert conc["diff"] == 1.0 and np.isnan(conc["ci_lo"]) and "no CI" in conc["method"]
    # per finding rows too, and the same seed gives the same CIs
    assert set(unc.loc[unc["metric"] == "iobb", "label"]) == {"Mass", "Nodule", "all"}
    n_maps = unc[(unc["metric"] == "iobb") & (unc["loss"] == "bce")].set_index("label")["n_maps"]
    assert n_maps.to_dict() == {"Mass": 59, "Nodule": 30, "all": 89}  # one NaN map dropped
    again = grid_uncertainty(res, metrics=metrics, n_boot=1000, seed=0)
    pd.testing.assert_frame_equal(unc, again)


def test_grid_uncertainty_three_seeds(tmp_path: Path) -> None:
    res = load_grid(fake_grid(tmp_path, seeds=(0, 1, 2)))
    summ = summary_rows(grid_uncertainty(res, n_boot=1000)).set_index(["metric", "loss"])
    row = summ.loc[("auroc", "wbce")]
    assert row["n_seeds"] == 3 and "3 seeds" in row["method"]
    assert row["ci_lo"] <= row["diff"] <= row["ci_hi"] and not np.isnan(row["diff_t_lo"])
    conc = summ.loc[("disjoint", "wbce")]  # +1 in every seed: t-interval [1, 1]
    assert conc["ci_lo"] == pytest.approx(1.0) and conc["ci_hi"] == pytest.approx(1.0)
    assert "t-interval over 3 seeds" in conc["method"]


def test_concept_counts_bootstrap_over_boxed_images(tmp_path: Path) -> None:
    """With concepts_images.csv, Disjoint/Unique get a paired bootstrap over images."""
    grid = fake_grid(tmp_path)
    rng = np.random.default_rng(1)
    d = rng.poisson(3.0, 60).astype(float)
    for loss, plus in (("bce", 0.0), ("wbce", 1.0)):  # every image: one concept more
        run = rf.RunFolder(grid / f"resnet50-{loss}-binary-s0")
        terms = pd.DataFrame({"layer": "layer4", "primary": True,
                              "image": [f"{i:04d}.png" for i in range(60)],
                              "disjoint": d + plus, "unique": np.minimum(d + plus, 2),
                              "weight": 1.0, "norm": 1.0})  # fmt: skip
        other = terms.assign(layer="layer3", primary=False, disjoint=100.0)  # not reported
        pd.concat([terms, other]).to_csv(run.concepts_images, index=False)
    summ = summary_rows(grid_uncertainty(load_grid(grid), n_boot=1000)).set_index(
        ["metric", "loss"]
    )
    conc = summ.loc[("disjoint", "wbce")]
    assert conc["diff"] == pytest.approx(1.0)
    assert conc["ci_lo"] == pytest.approx(1.0) and conc["ci_hi"] == pytest.approx(1.0)
    assert summ.loc[("disjoint", "bce"), "value"] == pytest.approx(d.mean())
    assert "paired bootstrap over 60 boxed images" in conc["method"]
    uniq = summ.loc[("unique", "wbce")]  # min(d+1, 2) - min(d, 2): 1 where d < 2, else 0
    assert uniq["ci_lo"] < uniq["diff"] < uniq["ci_hi"]
    assert uniq["diff"] == pytest.approx(float((d < 2).mean()))


def test_format_ci() -> None:
    assert format_ci(0.3123, 0.29, 0.334) == "0.312 [0.290, 0.334]"
    assert format_ci(0.02, -0.01, 0.05, signed=True) == "+0.020 [-0.010, +0.050]"
    assert format_ci(0.2836, np.nan, np.nan, digits=4) == "0.2836 (no CI)"
    assert format_ci(np.nan, 0, 1) == "—"


def test_runs_without_shared_items_are_left_out(tmp_path: Path) -> None:
    grid = fake_grid(tmp_path)
    wbce = rf.RunFolder(grid / "resnet50-wbce-binary-s0")
    maps = pd.read_csv(wbce.alignment)
    maps.assign(image="other-" + maps["image"]).to_csv(wbce.alignment, index=False)
    unc = grid_uncertainty(load_grid(grid), n_boot=200)
    assert "iobb" not in set(unc["metric"])  # no (image, finding) pair in common
    assert {"auroc", "ap", "mean_prob", "disjoint"} <= set(unc["metric"])


def test_concept_ci_of_one_run() -> None:
    """A run whose images all have 3 concepts: value 3, CI [3, 3]; spread widens it."""
    flat = pd.DataFrame({"image": [f"{i}" for i in range(40)], "disjoint": 3.0,
                         "unique": 2.0, "weight": 1.0, "norm": 1.0})  # fmt: skip
    ci = concept_ci(flat, n_boot=500)
    assert ci.loc["disjoint", ["value", "lo", "hi"]].tolist() == [3.0, 3.0, 3.0]
    assert ci.loc["unique", "n_images"] == 40
    spread = flat.assign(disjoint=np.arange(40, dtype=float))
    ci = concept_ci(spread, n_boot=500).loc["disjoint"]
    assert ci["value"] == pytest.approx(19.5) and ci["lo"] < 19.5 < ci["hi"]
