"""Uncertainty of the study's numbers: paired, hierarchical bootstrap CIs and t over seeds.

Every claim compares a weighted loss :math:`\\ell` with plain BCE on the *same* items:
the test images (AUROC, AP, mean predicted probability) or the boxed images with their
(image, finding) maps (soft IoBB, IoR and any other per-map column of ``alignment.csv``).

**Paired bootstrap** (Efron & Tibshirani 1993, ch. 13). Draw :math:`B` (default 1,000)
index vectors :math:`I_b` of :math:`n` items with replacement, kept as a multiplicity
matrix :math:`W \\in \\mathbb{N}^{B \\times n}` (:func:`resample_weights`). Every run of a
(model, task, seed) is scored on the same :math:`I_b`, so the difference

$$ \\Delta_b = m_\\ell(I_b) - m_\\mathrm{BCE}(I_b) $$

keeps the pairing, and the 95% percentile interval is
:math:`[\\Delta_{(0.025)}, \\Delta_{(0.975)}]`. Statistics are vectorised over the
:math:`B` rows: AUROC is the weighted Mann-Whitney statistic
:math:`\\sum_{i \\in +} \\sum_{j \\in -} w_i w_j ([s_i > s_j] + \\tfrac12 [s_i = s_j]) / (W_+ W_-)`
and AP the weighted step sum :math:`\\sum_k P_k \\,\\Delta R_k` over distinct thresholds,
both equal to ``sklearn.metrics.roc_auc_score`` / ``average_precision_score`` on the
resampled arrays (tested); a class left without positives in a resample is NaN and
dropped from the class average, as in :func:`imbalens.training.metrics.performance`.
Alignment metrics resample *boxed images* (clusters: every map of a drawn image comes
along) and take the map mean :math:`\\sum_i w_i S_i / \\sum_i w_i m_i`, with :math:`S_i`
the image's sum over its maps and :math:`m_i` their number (maps NaN for any loss are
dropped for every loss, keeping the pairs).

**Seeds** (hierarchical bootstrap, Davison & Hinkley 1997, Sec. 3.8; Saravanan et al.
2020). With :math:`S` values of ``train.seed``, resample :math:`b` first draws :math:`S`
seeds with replacement, then for each drawn seed an independent item resample, and
averages over the drawn seeds; with :math:`S = 1` this is the plain paired bootstrap.
Beside it, the per-seed point differences :math:`d_s` give the t-interval
:math:`\\bar d \\pm t_{0.975, S-1}\\, s_d / \\sqrt{S}` (shown with its :math:`S`).
Metrics without per-item values (Disjoint, Unique: channel totals) get only the
t-interval, hence no CI at all with one seed.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from imbalens import runfolder as rf
from imbalens.data.findings import BOXED_FINDINGS
from imbalens.study.labels import LOSS_ORDER, ordered
from imbalens.study.results import GridResults, summary_class

log = logging.getLogger(__name__)

N_BOOT = 1000
"""Default number of bootstrap resamples."""
LEVEL = 0.95
"""Default confidence level."""
ALL = "all"
"""Label of the mean over every boxed map (and of a concept count)."""


# ----------------------------------------------------------------------------- resampling
def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of ``n_boot`` resamples of ``n`` items with replacement.

    Row ``b`` counts how often each item was drawn in :math:`I_b` (rows sum to ``n``);
    weighting by row ``b`` equals scoring the resampled arrays ``x[I_b]``.
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 items and n_boot >= 1 resamples, got {n}, {n_boot}")
    idx = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _tie_groups(scores: np.ndarray, labels: np.ndarray, w: np.ndarray) -> tuple[Any, Any]:
    """Positive and negative weight per distinct score, ascending: two (G, B) arrays.

    Works on the transposed (n, B) weights, so that gathering and summing tied rows run
    over contiguous memory; without ties (continuous scores) no summing is needed.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    y = labels[order].astype(bool)[:, None]
    wt = np.ascontiguousarray(w.T)[order]
    pos, neg = np.where(y, wt, 0.0), np.where(y, 0.0, wt)
    distinct = np.r_[True, s[1:] != s[:-1]]
    if not distinct.all():
        starts = np.flatnonzero(distinct)
        pos, neg = np.add.reduceat(pos, starts, axis=0), np.add.reduceat(neg, starts, axis=0)
    return pos, neg


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` vs 0/1 ``labels`` under each weight row of ``w`` (B, n) -> (B,).

    $$ \\mathrm{AUROC} = \\frac{\\sum_g P_g (N_{<g} + \\tfrac12 N_g)}{P\\,N} $$

    over distinct scores :math:`g` (ascending), :math:`P_g, N_g` the positive and
    negative weight at :math:`g` (ties count 1/2). NaN where a row has no positive or
    no negative weight.
    """
    pos, neg = _tie_groups(np.asarray(scores), np.asarray(labels), np.atleast_2d(w))
    below = np.cumsum(neg, axis=0) - 0.5 * neg
    num = (pos * below).sum(0)
    den = pos.sum(0) * neg.sum(0)
    return np.divide(num, den, out=np.full(len(num), np.nan), where=den > 0)


def weighted_ap(scores: np.ndarray, labels: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision under each weight row of ``w`` (B, n) -> (B,).

    $$ \\mathrm{AP} = \\sum_k \\frac{P_k}{P}\\, \\frac{TP_k}{TP_k + FP_k} $$

    over distinct thresholds in decreasing order (no interpolation, as sklearn); NaN
    where a row has no positive or no negative weight.
    """
    pos, neg = _tie_groups(np.asarray(scores), np.asarray(labels), np.atleast_2d(w))
    pos, neg = pos[::-1], neg[::-1]
    tp = np.cumsum(pos, axis=0)
    seen = tp + np.cumsum(neg, axis=0)
    prec = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    total, n_neg = pos.sum(0), neg.sum(0)
    ap = np.divide((pos * prec).sum(0), total, out=np.full(len(total), np.nan), where=total > 0)
    return np.where(n_neg > 0, ap, np.nan)


# ----------------------------------------------------------------------------- items
@dataclass
class Items:
    """One run's per-item values, aligned with the other runs of its (model, task, seed).

    Attributes:
        arrays: named (n, ...) arrays, row i = item i (``probs``/``targets`` (n, K); or
            ``sums``/``counts`` (n, F), a boxed image's sum and number of maps by finding).
        labels: the J labels of a statistic's columns (classes + summary, or findings + all).
    """

    arrays: dict[str, np.ndarray]
    labels: list[str]

    @property
    def n(self) -> int:
        return len(next(iter(self.arrays.values())))


Statistic = Callable[[Items, np.ndarray], np.ndarray]
"""(items, weights (B, n)) -> (B, J) values, one column per ``items.labels``."""


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=1)


def _per_class(fn: Callable[..., np.ndarray]) -> Statistic:
    def stat(items: Items, w: np.ndarray) -> np.ndarray:
        p, y = items.arrays["probs"], items.arrays["targets"]
        cols = np.stack([fn(p[:, k], y[:, k], w) for k in range(p.shape[1])], axis=1)
        if len(items.labels) == p.shape[1]:  # binary: the class is the summary
            return cols
        return np.column_stack([cols, _nanmean_rows(cols)])

    return stat


def _mean_prob(items: Items, w: np.ndarray) -> np.ndarray:
    p = items.arrays["probs"]
    cols = (w @ p) / w.sum(1, keepdims=True)
    return cols if len(items.labels) == p.shape[1] else np.column_stack([cols, cols.mean(1)])


def map_mean(column: str) -> Statistic:
    """Mean of ``alignment.csv``'s ``column`` over maps, by finding and over all maps."""

    def stat(items: Items, w: np.ndarray) -> np.ndarray:
        s, m = items.arrays[f"sums:{column}"], items.arrays[f"counts:{column}"]
        num, den = w @ s, w @ m
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.column_stack([num / den, num.sum(1) / den.sum(1)])

    return stat


def concept_ratio(column: str) -> Statistic:
    """Disjoint or Unique from ``concepts_images.csv``'s terms: ``sum w d / sum z`` (all).

    See :func:`imbalens.explain.dissect.image_terms`; one column, the label ``all``.
    """

    def stat(items: Items, w: np.ndarray) -> np.ndarray:
        num, den = w @ items.arrays[f"num:{column}"], w @ items.arrays["den"]
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / den

    return stat


@dataclass(frozen=True)
class Metric:
    """How to get one metric's uncertainty.

    Attributes:
        source: ``"predictions"`` (test images), ``"alignment"`` (boxed images, maps) or
            ``"concepts"`` (boxed images, from ``concepts_images.csv``; runs without
            that file get the t-interval over seeds only).
        statistic: the vectorised statistic.
        column: the file column it reads (alignment, concepts).
    """

    source: str
    statistic: Statistic | None = None
    column: str | None = None


def map_metric(column: str) -> Metric:
    """A per-map column of ``alignment.csv`` (one line in :data:`METRICS` adds one)."""
    return Metric("alignment", map_mean(column), column)


METRICS: dict[str, Metric] = {
    "auroc": Metric("predictions", _per_class(weighted_auroc)),
    "ap": Metric("predictions", _per_class(weighted_ap)),
    "mean_prob": Metric("predictions", _mean_prob),
    "iobb": map_metric("iobb"),
    "ior": map_metric("ior"),
    "disjoint": Metric("concepts", concept_ratio("disjoint"), "disjoint"),
    "unique": Metric("concepts", concept_ratio("unique"), "unique"),
}
"""The registry: metric name -> how to resample it. New ``alignment.csv`` columns
(``pointing``, ``topk_iou``, ...) are one line: ``"pointing": map_metric("pointing")``."""


def summary_label(metric: str, task: str, metrics: Mapping[str, Metric] = METRICS) -> str:
    """The label a claim uses: ``Average``/``Unhealthy`` (performance) or ``all``."""
    return summary_class(task) if metrics[metric].source == "predictions" else ALL


# ----------------------------------------------------------------------------- core
def bootstrap_draws(
    stat: Statistic, items: Sequence[Sequence[Items]], n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical bootstrap draws of ``stat`` for L runs over S seeds.

    Args:
        stat: a :data:`Statistic`.
        items: ``items[s][l]``: run l of seed s; the L runs of one seed share their n_s
            items (the same resample is applied to all of them: pairing).
        n_boot: resamples B.
        rng: the generator (seeded by the caller).

    Returns:
        ``(draws, points)``: draws (L, B, J), the seed mean of each resample (seeds
        drawn with replacement, then items; S = 1: plain bootstrap), and points (S, L, J),
        each seed's value on its full item set.
    """
    n_s, n_l = len(items), len(items[0])
    points = np.stack(
        [np.stack([stat(it, np.ones((1, it.n)))[0] for it in seed]) for seed in items]
    )
    draws = np.zeros((n_l, n_boot, points.shape[2]))
    picks = rng.integers(0, n_s, size=(n_boot, n_s)) if n_s > 1 else np.zeros((n_boot, 1), int)
    for s, seed in enumerate(items):
        rows = np.nonzero(picks == s)[0]  # one row per (resample, slot) that drew seed s
        if rows.size == 0:
            continue
        w = resample_weights(seed[0].n, rows.size, rng)
        for j, it in enumerate(seed):
            np.add.at(draws[j], rows, stat(it, w))
    return draws / picks.shape[1], points


def percentile_ci(draws: np.ndarray, level: float = LEVEL, axis: int = 0) -> np.ndarray:
    """The percentile interval ``[q_(1-level)/2, q_(1+level)/2]`` along ``axis`` (NaN skipped)."""
    a = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(draws, [100 * a, 100 * (1 - a)], axis=axis)


def t_interval(values: np.ndarray, level: float = LEVEL, axis: int = 0) -> np.ndarray:
    """Mean ± t_{(1+level)/2, n-1} sd/sqrt(n) along ``axis`` (Student 1908); NaN for n < 2."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    mean = values.mean(axis)
    if n < 2:
        return np.stack([np.full_like(mean, np.nan), np.full_like(mean, np.nan)])
    half = sps.t.ppf((1 + level) / 2, n - 1) * values.std(axis, ddof=1) / math.sqrt(n)
    return np.stack([mean - half, mean + half])


def paired_difference_ci(
    stat: Statistic,
    a: Sequence[Items],
    b: Sequence[Items],
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[np.ndarray, np.ndarray]:
    """Point difference ``m(b) - m(a)`` (seed mean) and its percentile CI, per label.

    ``a[s]`` and ``b[s]`` are the two runs of seed s on the same items. Returns
    ``(diff (J,), ci (2, J))``.
    """
    draws, points = bootstrap_draws(
        stat, [[x, y] for x, y in zip(a, b, strict=True)], n_boot, np.random.default_rng(seed)
    )
    diff = points[:, 1] - points[:, 0]
    return diff.mean(0), percentile_ci(draws[1] - draws[0], level)


# ----------------------------------------------------------------------------- grid
@dataclass
class _Cache:
    frames: dict[tuple[str, str], pd.DataFrame | None] = field(default_factory=dict)

    def read(self, path: str, source: str) -> pd.DataFrame | None:
        key = (path, source)
        if key not in self.frames:
            folder = rf.RunFolder(Path(path))
            file = {
                "predictions": folder.predictions("test"),
                "alignment": folder.alignment,
                "concepts": folder.concepts_images,
            }[source]
            try:
                self.frames[key] = pd.read_csv(file) if file.is_file() else None
            except (OSError, ValueError, pd.errors.ParserError) as err:
                raise ValueError(f"{file} is unreadable ({err}); rerun its stage") from err
        return self.frames[key]


def _prediction_items(frames: list[pd.DataFrame], task: str) -> list[Items]:
    common = sorted(set.intersection(*(set(f["image"]) for f in frames)))
    classes = [c[len("prob:") :] for c in frames[0].columns if c.startswith("prob:")]
    labels = classes if task == "binary" else [*classes, summary_class(task)]
    out = []
    for f in frames:
        f = f.set_index("image").loc[common]
        try:
            probs = f[[f"prob:{c}" for c in classes]].to_numpy(float)
            targets = f[[f"target:{c}" for c in classes]].to_numpy(float)
        except KeyError as err:
            raise ValueError(f"predictions_test.csv lacks column {err}: rerun `train`") from err
        out.append(Items({"probs": probs, "targets": targets}, labels))
    return out


def _alignment_items(frames: list[pd.DataFrame], columns: list[str]) -> list[Items]:
    key = ["image", "finding"]
    for f in frames:
        if missing := {*key, *columns} - set(f.columns):
            raise ValueError(f"alignment.csv lacks columns {sorted(missing)}: rerun `analyse`")
    idx = [f.assign(finding=f["finding"].astype(str)).set_index(key) for f in frames]
    findings = ordered({k[1] for f in idx for k in f.index}, BOXED_FINDINGS)
    arrays: list[dict[str, np.ndarray]] = [{} for _ in frames]
    images: list[str] | None = None
    for col in columns:
        # maps scored (non-NaN) for every run: the pairs
        both = pd.concat([f[col] for f in idx], axis=1, join="inner").dropna()
        if images is None:
            images = sorted(set(both.index.get_level_values("image")))
        for i, arr in enumerate(arrays):
            wide = both.iloc[:, i].unstack("finding").reindex(index=images, columns=findings)
            arr[f"sums:{col}"] = wide.fillna(0).to_numpy(float)
            arr[f"counts:{col}"] = wide.notna().to_numpy(float)
    return [Items(a, [*findings, ALL]) for a in arrays]


def _concept_items(frames: list[pd.DataFrame], columns: list[str]) -> list[Items]:
    """The primary layer's per-image terms, on the boxed images every run has."""
    need = {"primary", "image", "weight", "norm", *columns}
    for f in frames:
        if missing := need - set(f.columns):
            raise ValueError(f"concepts_images.csv lacks {sorted(missing)}: rerun `concepts`")
    idx = [f[f["primary"].astype(bool)].set_index("image") for f in frames]
    images = sorted(set.intersection(*(set(f.index) for f in idx)))
    out = []
    for f in idx:
        f = f.loc[images]
        arrays = {"den": f[["norm"]].to_numpy(float)}
        for col in columns:
            arrays[f"num:{col}"] = (f["weight"] * f[col]).to_numpy(float)[:, None]
        out.append(Items(arrays, [ALL]))
    return out


ITEMS: dict[str, Callable[[list[pd.DataFrame], list[str]], list[Items]]] = {
    "alignment": _alignment_items,
    "concepts": _concept_items,
}
"""Item builders by source (predictions, which need the task, are built apart)."""


def _ci_rows(
    draws: np.ndarray, points: np.ndarray, losses: list[str], labels: list[str], level: float
) -> list[dict[str, Any]]:
    value_ci = percentile_ci(draws, level, axis=1)  # (2, L, J)
    value_t = t_interval(points, level)  # (2, L, J)
    b = losses.index("bce") if "bce" in losses else None
    rows = []
    for j, loss in enumerate(losses):
        for k, label in enumerate(labels):
            row = {
                "loss": loss,
                "label": label,
                "value": float(points[:, j, k].mean()),
                "lo": value_ci[0, j, k],
                "hi": value_ci[1, j, k],
                "t_lo": value_t[0, j, k],
                "t_hi": value_t[1, j, k],
            }
            if b is not None and j != b:
                d_ci = percentile_ci(draws[j, :, k] - draws[b, :, k], level)
                d_t = t_interval(points[:, j, k] - points[:, b, k], level)
                row |= {
                    "diff": float((points[:, j, k] - points[:, b, k]).mean()),
                    "diff_lo": d_ci[0],
                    "diff_hi": d_ci[1],
                    "diff_t_lo": d_t[0],
                    "diff_t_hi": d_t[1],
                }
            rows.append(row)
    return rows


UNCERTAINTY_COLUMNS = [
    "model", "task", "metric", "label", "loss", "n_seeds", "n_items", "n_maps", "method",
    "value", "lo", "hi", "t_lo", "t_hi",
    "diff", "diff_lo", "diff_hi", "diff_t_lo", "diff_t_hi", "ci_lo", "ci_hi",
]  # fmt: skip
"""Columns of :func:`grid_uncertainty`."""


def _source_rows(
    results: GridResults, sub: pd.DataFrame, source: str, names: list[str], cache: _Cache,
    metrics: Mapping[str, Metric], n_boot: int, rng: np.random.Generator, level: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """Rows of one (model, task) and one item source (predictions or alignment)."""
    task = str(sub["task"].iloc[0])
    have = {
        (int(r.seed), str(r.loss)): frame
        for r in sub.itertuples()
        if (frame := cache.read(str(r.path), source)) is not None
    }
    losses = ordered({loss for _, loss in have}, LOSS_ORDER)
    seeds = sorted(s for s in set(sub["seed"]) if all((s, x) in have for x in losses))
    if not seeds or len(losses) < 1:
        return []
    per_seed = []
    for s in seeds:
        frames = [have[(s, x)] for x in losses]
        if source == "predictions":
            per_seed.append(_prediction_items(frames, task))
        else:
            cols = [str(metrics[m].column) for m in names]
            per_seed.append(ITEMS[source](frames, cols))
    empty = [s for s, seed in zip(seeds, per_seed, strict=True) if seed[0].n == 0]
    if empty:
        log.warning(
            "%s, %s: no %s items shared by every loss in seed(s) %s: left out",
            sub["model"].iloc[0], task, source, empty,
        )  # fmt: skip
        per_seed = [seed for seed in per_seed if seed[0].n > 0]
        if not per_seed:
            return []
        seeds = [s for s in seeds if s not in empty]
    n_items = int(np.mean([seed[0].n for seed in per_seed]))
    method = (
        f"paired bootstrap over {n_items} {'test' if source == 'predictions' else 'boxed'} images"
        + (f", seeds resampled first ({len(seeds)} seeds)" if len(seeds) > 1 else ", 1 seed")
    )
    rows = []
    for name in names:
        stat = metrics[name].statistic
        assert stat is not None
        draws, points = bootstrap_draws(stat, per_seed, n_boot, rng)
        n_maps = _maps_per_label(per_seed[0][0], metrics[name])
        for row in _ci_rows(draws, points, losses, per_seed[0][0].labels, level):
            rows.append({"metric": name, "n_seeds": len(seeds), "n_items": n_items} | row)
            rows[-1] |= {
                "n_maps": n_maps.get(row["label"], np.nan),
                "method": method,
                "ci_lo": row.get("diff_lo"),
                "ci_hi": row.get("diff_hi"),
            }
    return rows


def _maps_per_label(items: Items, metric: Metric) -> dict[str, float]:
    """Maps behind each label of an alignment metric (seed 0): by finding and all."""
    counts = items.arrays.get(f"counts:{metric.column}")
    if metric.source != "alignment" or counts is None:
        return {}
    per = counts.sum(0)
    return dict(zip(items.labels, [*per.tolist(), float(per.sum())], strict=True))


def _concept_rows(
    results: GridResults, model: str, task: str, names: list[str], level: float,
    metrics: Mapping[str, Metric],
) -> list[dict[str, Any]]:  # fmt: skip
    conc = results.concepts
    conc = conc[(conc["model"] == model) & (conc["task"] == task)]
    if conc.empty:
        return []
    losses = ordered(conc["loss"], LOSS_ORDER)
    rows = []
    for name in names:
        wide = conc.pivot_table(index="seed", columns="loss", values=metrics[name].column)
        wide = wide.reindex(columns=losses).dropna()
        if wide.empty:
            continue
        points = wide.to_numpy()[:, :, None]  # (S, L, 1)
        nan = np.full((len(losses), 1, 1), np.nan)
        method = (
            f"t-interval over {len(wide)} seeds"
            if len(wide) > 1
            else "no CI: one seed and no per-image counts"
        )
        for row in _ci_rows(nan, points, losses, [ALL], level):
            rows.append({"metric": name, "n_seeds": len(wide), "n_items": np.nan} | row)
            rows[-1] |= {
                "method": method,
                "ci_lo": row.get("diff_t_lo"),
                "ci_hi": row.get("diff_t_hi"),
            }
    return rows


def grid_uncertainty(
    results: GridResults,
    metrics: Mapping[str, Metric] = METRICS,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Every metric's value and difference to BCE, with CIs, for each (model, task, loss).

    Reads each run's ``predictions_test.csv``, ``alignment.csv`` and
    ``concepts_images.csv`` (runs without the last get the concepts' t-interval over
    seeds from ``results.concepts``). Runs of a (model, task) are paired within a seed; seeds with
    a loss missing for a source are left out of that source.

    Args:
        results: a loaded grid (:func:`imbalens.study.results.load_grid`).
        metrics: the registry (default :data:`METRICS`).
        n_boot: bootstrap resamples (>= 1,000 recommended).
        seed: seed of the resampling (the same seed gives the same CIs).
        level: confidence level.

    Returns:
        One row per (model, task, metric, label, loss), columns :data:`UNCERTAINTY_COLUMNS`:
        value (seed mean) with its bootstrap CI lo/hi and t-interval t_lo/t_hi; diff
        (loss - BCE; NaN for BCE) with diff_lo/diff_hi (bootstrap) and diff_t_lo/
        diff_t_hi (t over seeds); ci_lo/ci_hi, the interval the verdicts use (bootstrap,
        else t); method says which, with n; n_items (test or boxed images) and, for
        alignment metrics, n_maps (the maps behind the label, seed 0).
    """
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    rng = np.random.default_rng(seed)
    cache = _Cache()
    rows: list[dict[str, Any]] = []
    for (model, task), sub in results.runs.groupby(["model", "task"], sort=False):
        key = {"model": model, "task": task}
        for source in ("predictions", "alignment", "concepts"):
            names = [m for m, spec in metrics.items() if spec.source == source]
            if names:
                found = _source_rows(
                    results, sub, source, names, cache, metrics, n_boot, rng, level
                )
                if source == "concepts" and not found:  # runs from before concepts_images.csv
                    found = _concept_rows(results, model, task, names, level, metrics)
                rows += [key | r for r in found]
    return pd.DataFrame(rows).reindex(columns=UNCERTAINTY_COLUMNS)


def summary_rows(unc: pd.DataFrame, metrics: Mapping[str, Metric] = METRICS) -> pd.DataFrame:
    """The rows claims use: each metric's summary label (Average/Unhealthy, or all)."""
    if unc.empty:
        return unc
    want = [
        summary_label(m, t, metrics) if m in metrics else ALL
        for m, t in zip(unc["metric"], unc["task"], strict=True)
    ]
    return unc[unc["label"] == pd.Series(want, index=unc.index)]


def concept_ci(
    terms: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> pd.DataFrame:
    """One run's Disjoint and Unique with a bootstrap CI over its boxed images.

    ``terms``: the primary layer's rows of ``concepts_images.csv``
    (:func:`imbalens.explain.dissect.image_terms`). Rows: disjoint, unique; columns value,
    lo, hi, n_images (percentile interval of :data:`N_BOOT` resamples, seeded).
    """
    cols = ["disjoint", "unique"]
    items = _concept_items([terms.assign(primary=True)], cols)
    rng = np.random.default_rng(seed)
    rows = {}
    for col in cols:
        draws, points = bootstrap_draws(concept_ratio(col), [items], n_boot, rng)
        lo, hi = percentile_ci(draws[0, :, 0], level)
        rows[col] = {"value": points[0, 0, 0], "lo": lo, "hi": hi, "n_images": items[0].n}
    return pd.DataFrame(rows).T


def format_ci(value: float, lo: float, hi: float, digits: int = 3, signed: bool = False) -> str:
    """``0.312 [0.290, 0.334]``; without a CI just the value (``—`` for NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if max(abs(v) for v in (value, lo, hi) if v is not None and not math.isnan(v)) < 0.01:
        digits += 2  # tiny numbers (e.g. an untrained model's IoR) keep 1-3 significant digits
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f.format(value) + " (no CI)"
    return f"{f.format(value)} [{f.format(lo)}, {f.format(hi)}]"
