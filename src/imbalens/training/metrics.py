"""Analysis 1 of the study: per-class AUROC, average precision and mean predicted probability.

For output $k$ with scores $s_{ik}$ (sigmoid probabilities) and labels $y_{ik}$ over the $N$
images of a split (Khakzar, Li et al. 2022, Sec. 4.1 and Fig. 2):

- AUROC: the area under the ROC curve, i.e. the probability that a random positive
  scores higher than a random negative (ties count 1/2),
  ``sklearn.metrics.roc_auc_score``;
- AP: $\\mathrm{AP} = \\sum_n (R_n - R_{n-1}) P_n$ over decreasing thresholds, without
  interpolation, ``sklearn.metrics.average_precision_score``;
- mean predicted probability: $\\bar p_k = \\frac{1}{N} \\sum_i s_{ik}$ (the paper's
  evidence that cost-sensitive losses raise the predicted probabilities).

A class without positives, or without negatives, in the split has no defined AUROC (and
no informative AP): both are NaN, a ``UserWarning`` names the class, and the class is left
out of ``auroc_mean`` / ``ap_mean`` (the class averages are means over the classes where
the metric is defined; NaN if there is none). ``mean_prob`` is always defined.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

METRICS = ("auroc", "ap", "mean_prob")
"""Per-class metrics returned by :func:`performance`, in table order."""


def _as_matrix(values: Any, what: str, n_classes: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1 and n_classes == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] != n_classes:
        raise ValueError(
            f"{what} must have shape (N, {n_classes}) for {n_classes} class names, "
            f"got {array.shape}"
        )
    return array


def _nan_mean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def performance(probs: Any, targets: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class AUROC, AP and mean predicted probability, and their class averages.

    Args:
        probs: (N, K) predicted probabilities (sigmoid outputs); (N,) when K = 1.
        targets: (N, K) binary labels (1 = finding present / unhealthy).
        class_names: K names, in output order.

    Returns:
        ``{"auroc": {class: float}, "ap": {...}, "mean_prob": {...}, "auroc_mean": float,
        "ap_mean": float, "mean_prob_mean": float, "n_pos": {class: int},
        "n_images": int}``; undefined values are NaN and excluded from the means.

    Raises:
        ValueError: wrong shapes, no images, non-finite probabilities or labels other
            than 0/1.
    """
    names = [str(name) for name in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    p = _as_matrix(probs, "probs", len(names))
    y = _as_matrix(targets, "targets", len(names))
    if p.shape != y.shape:
        raise ValueError(f"probs {p.shape} and targets {y.shape} differ in shape")
    if p.shape[0] == 0:
        raise ValueError("no images: probs and targets are empty")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contain NaN or infinite values")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("targets must be 0 or 1")
    result: dict[str, Any] = {key: {} for key in METRICS}
    result["n_pos"] = {}
    for k, name in enumerate(names):
        n_pos = int(y[:, k].sum())
        result["n_pos"][name] = n_pos
        result["mean_prob"][name] = float(p[:, k].mean())
        if n_pos in (0, len(y)):
            missing = "positives" if n_pos == 0 else "negatives"
            warnings.warn(
                f"class {name!r} has no {missing} among the {len(y)} images of this split: "
                "its AUROC and AP are NaN and left out of the class averages",
                stacklevel=2,
            )
            result["auroc"][name] = math.nan
            result["ap"][name] = math.nan
            continue
        result["auroc"][name] = float(roc_auc_score(y[:, k], p[:, k]))
        result["ap"][name] = float(average_precision_score(y[:, k], p[:, k]))
    for key in METRICS:
        result[f"{key}_mean"] = _nan_mean(list(result[key].values()))
    result["n_images"] = int(len(y))
    return result


def summary_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """A table of :func:`performance` output: one row per class plus ``"Average"``.

    Columns ``auroc``, ``ap``, ``mean_prob`` (float) and ``n_pos`` (nullable integer, NA
    on the ``Average`` row); the ``Average`` row holds the NaN-excluding class means.
    """
    names = list(metrics["auroc"])
    frame = pd.DataFrame({key: [metrics[key][n] for n in names] for key in METRICS}, index=names)
    frame.loc["Average"] = [metrics[f"{key}_mean"] for key in METRICS]
    frame["n_pos"] = pd.array([metrics["n_pos"][n] for n in names] + [None], dtype="Int64")
    frame.index.name = "class"
    return frame
