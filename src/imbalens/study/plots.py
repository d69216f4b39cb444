"""The book's figures: CAM overlays with boxes, Figure 1 and 2 of the paper, run plots.

All functions return a :class:`matplotlib.figure.Figure` (or draw on a given axes) and
never call ``plt.show``. Losses always appear in the paper's order BCE, WBCE, Focal,
CB-Focal with the Okabe-Ito colour-blind-safe palette (Okabe & Ito 2008); CAMs use the
perceptually uniform ``inferno`` map; boxes are drawn in sky blue with a black edge so
that they stay visible on any background.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from imbalens.explain.samples import CamSample
from imbalens.study.labels import (
    LOSS_ORDER,
    METRIC_LABELS,
    loss_label,
    metric_label,
    model_label,
    ordered,
    task_label,
)

if TYPE_CHECKING:
    from imbalens.study.results import GridResults

LOSS_COLORS: dict[str, str] = {
    "bce": "#0072B2",  # blue
    "wbce": "#E69F00",  # orange
    "focal": "#009E73",  # bluish green
    "cbfocal": "#CC79A7",  # reddish purple
}
"""Okabe-Ito colours per loss, fixed across every figure of the book."""
BOX_COLOR = "#56B4E9"  # Okabe-Ito sky blue
CAM_CMAP = "inferno"

_OUTLINE = [patheffects.withStroke(linewidth=3.5, foreground="black")]


def draw_boxes(
    ax: Axes,
    boxes: Iterable[Sequence[float]] | pd.DataFrame,
    color: str = BOX_COLOR,
    linewidth: float = 1.8,
) -> list[Rectangle]:
    """Draw (x0, y0, x1, y1) pixel boxes on ``ax`` as unfilled rectangles.

    ``boxes`` is an iterable of 4-tuples or a frame with columns x0, y0, x1, y1
    (:func:`imbalens.data.nih.load_boxes`). Returns the patches added.
    """
    if isinstance(boxes, pd.DataFrame):
        boxes = boxes[["x0", "y0", "x1", "y1"]].to_numpy()
    patches = []
    for x0, y0, x1, y1 in boxes:
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box ({x0}, {y0}, {x1}, {y1}) has x1 < x0 or y1 < y0")
        rect = Rectangle(
            (x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=linewidth
        )
        rect.set_path_effects(_OUTLINE)
        ax.add_patch(rect)
        patches.append(rect)
    return patches


def draw_mask_outline(ax: Axes, mask: np.ndarray, color: str = BOX_COLOR) -> None:
    """Outline a boolean (H, W) box mask (a union of boxes) on ``ax`` at pixel edges."""
    mask = np.asarray(mask, dtype=float)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if mask.any():
        padded = np.pad(mask, 1)
        # contour of the padded mask at 0.5 on a grid shifted by half a pixel: pixel edges
        ys = np.arange(padded.shape[0]) - 1.0
        xs = np.arange(padded.shape[1]) - 1.0
        ax.contour(xs, ys, padded, levels=[0.5], colors=[color], linewidths=1.8).set(
            path_effects=_OUTLINE
        )


def cam_overlay(
    ax: Axes,
    image: np.ndarray,
    cam: np.ndarray | None = None,
    boxes: Iterable[Sequence[float]] | pd.DataFrame | None = None,
    mask: np.ndarray | None = None,
    alpha: float = 0.5,
    title: str | None = None,
) -> Axes:
    """Show ``image`` (grey (H, W) or RGB (H, W, 3), in [0, 1] or uint8) with a CAM on top.

    ``cam`` is an (H, W) map in [0, 1] drawn with ``inferno`` at ``alpha``; ``boxes``
    (pixel x0, y0, x1, y1) or a box ``mask`` are outlined. Axis ticks are hidden.
    """
    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img / 255.0
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if cam is not None:
        cam = np.asarray(cam)
        if cam.shape != img.shape[:2]:
            raise ValueError(f"cam shape {cam.shape} differs from image shape {img.shape[:2]}")
        ax.imshow(cam, cmap=CAM_CMAP, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
    if boxes is not None:
        draw_boxes(ax, boxes)
    if mask is not None:
        draw_mask_outline(ax, mask)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def figure1(
    samples: Sequence[CamSample],
    columns: Sequence[str] | None = None,
    title: str | None = None,
    panel: float = 1.8,
) -> Figure:
    """The paper's Figure 1: rows = boxed samples, columns = the input then one CAM per loss.

    Args:
        samples: one :class:`imbalens.explain.samples.CamSample` per row.
        columns: CAM keys in column order (default: the losses present, paper order).
        title: figure title.
        panel: size of one panel in inches.

    Returns:
        A figure with ``len(samples) * (1 + len(columns))`` image axes and a colour bar.
    """
    if not samples:
        raise ValueError("figure1 needs at least one sample")
    if columns is None:
        columns = ordered({k for s in samples for k in s.cams}, LOSS_ORDER)
    ncol = 1 + len(columns)
    fig, axes = plt.subplots(
        len(samples),
        ncol,
        figsize=(panel * ncol + 0.8, panel * len(samples) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for r, sample in enumerate(samples):
        cam_overlay(axes[r, 0], sample.image, mask=sample.mask)
        axes[r, 0].set_ylabel(sample.finding, fontsize=10)
        for c, key in enumerate(columns, start=1):
            cam = sample.cams.get(key)
            cam_overlay(axes[r, c], sample.image, cam, mask=sample.mask)
            if cam is None:
                axes[r, c].text(
                    0.5,
                    0.5,
                    "not run",
                    ha="center",
                    va="center",
                    transform=axes[r, c].transAxes,
                    color="white",
                )
        if r == 0:
            axes[0, 0].set_title("input + box", fontsize=10)
            for c, key in enumerate(columns, start=1):
                axes[0, c].set_title(loss_label(key), fontsize=10, color=LOSS_COLORS.get(key, "k"))
    mappable = plt.cm.ScalarMappable(cmap=CAM_CMAP, norm=plt.Normalize(0, 1))
    fig.colorbar(mappable, ax=axes[:, -1], shrink=0.6, label="CAM (min-max)")
    if title:
        fig.suptitle(title)
    return fig


def grid_figure1(
    results: GridResults, which: str = "best", source: str = ""
) -> Iterator[Figure | str]:
    """Figure 1 for each (task, model) of a grid, or a Markdown note saying why there is none.

    The runs of a (task, model) that have the checkpoint ``which``, lowest seed per loss
    (:meth:`imbalens.study.results.GridResults.trained_run_dirs`), give the CAMs of one
    boxed test image per finding (:func:`imbalens.explain.samples.cam_samples`), drawn
    by :func:`figure1` with ``source`` (the grid's label) under the title. A generator: each
    figure is made when the caller asks for the next one, so it can be shown and closed
    first.
    """
    from imbalens.explain.samples import cam_samples

    for task in results.tasks:
        for model in results.models:
            trained = results.trained_run_dirs(model, task, which)
            label = f"{model_label(model)}, {task_label(task)}"
            if not trained:
                yield f"*{label}: no trained checkpoint, no Figure 1.*"
                continue
            try:
                samples = cam_samples(trained, which=which)
            except (OSError, RuntimeError, KeyError, ValueError) as err:
                yield f"*{label}: Figure 1 could not be drawn: `{err}`*"
                continue
            if samples:
                yield figure1(samples, title=f"Figure 1 ({label}): CAMs with boxes\n{source}")


Intervals = dict[tuple[str, str], tuple[float, float]]
"""{(category, group): (lo, hi)}: a confidence interval per bar."""


def ci_intervals(uncertainty: pd.DataFrame, metric: str, category_col: str = "label") -> Intervals:
    """``{(category, loss): (lo, hi)}`` of ``metric`` from :func:`imbalens.study.stats.grid_uncertainty`.

    The value's bootstrap CI (``lo``/``hi``), else its t-interval over seeds; rows
    without either are left out (their bars get no error bar).
    """
    sub = uncertainty[uncertainty["metric"] == metric]
    out: Intervals = {}
    for row in sub.itertuples():
        lo, hi = (row.lo, row.hi) if pd.notna(row.lo) else (row.t_lo, row.t_hi)
        if pd.notna(lo) and pd.notna(hi):
            out[(str(getattr(row, category_col)), str(row.loss))] = (float(lo), float(hi))
    return out


def _bar_stats(frame: pd.DataFrame, metric: str, cats: Sequence[str], group: str,
               category_col: str, group_col: str, intervals: Intervals | None) -> tuple[Any, Any]:  # fmt: skip
    """Bar heights (seed means) and (2, n) error lengths: CI, else sd over seeds."""
    stats = frame.groupby([category_col, group_col])[metric].agg(["mean", "std", "count"])
    vals, low, high = [], [], []
    for cat in cats:
        v = stats.loc[(cat, group), "mean"] if (cat, group) in stats.index else np.nan
        vals.append(v)
        if intervals is not None:
            lo, hi = intervals.get((cat, group), (np.nan, np.nan))
            low.append(v - lo)
            high.append(hi - v)
        else:
            sd = np.nan
            if (cat, group) in stats.index and stats.loc[(cat, group), "count"] > 1:
                sd = stats.loc[(cat, group), "std"]
            low.append(sd)
            high.append(sd)
    return np.array(vals, dtype=float), np.array([low, high], dtype=float)


def grouped_bars(
    ax: Axes,
    frame: pd.DataFrame,
    metric: str,
    categories: Sequence[str],
    groups: Sequence[str],
    group_col: str = "loss",
    category_col: str = "class",
    intervals: Intervals | None = None,
) -> int:
    """Grouped bars on ``ax``: one group per category, one bar per ``groups`` entry.

    Values are the mean of ``metric`` over rows with the same (category, group) (e.g.
    seeds). Error bars: the 95% CI ``intervals[(category, group)]`` when given (see
    :func:`ci_intervals`), else, with several rows, the standard deviation. Returns the
    number of bars drawn (missing combinations draw none).
    """
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(categories))
    drawn = 0
    for j, group in enumerate(groups):
        vals_a, errs = _bar_stats(
            frame, metric, categories, group, category_col, group_col, intervals
        )
        keep = ~np.isnan(vals_a)
        if not keep.any():
            continue
        err = errs[:, keep]
        container = ax.bar(
            x[keep] + (j - (len(groups) - 1) / 2) * width,
            vals_a[keep],
            width,
            yerr=np.nan_to_num(np.clip(err, 0, None)) if np.isfinite(err).any() else None,
            capsize=2 if intervals is not None else 0,
            error_kw={"linewidth": 0.8},
            color=LOSS_COLORS.get(group, f"C{j}"),
            label=loss_label(group),
            edgecolor="black",
            linewidth=0.4,
        )
        drawn += int(keep.sum())
        if len(categories) <= 3:
            ax.bar_label(container, fmt="%.3g", fontsize=8, padding=2)
    ax.set_xticks(x, categories, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(metric_label(metric))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return drawn


def figure2(
    performance: pd.DataFrame,
    metrics: Sequence[str] = ("auroc", "ap", "mean_prob"),
    title: str | None = None,
    uncertainty: pd.DataFrame | None = None,
) -> Figure:
    """The paper's Figure 2 for one (model, task): per-class bars of each metric by loss.

    Args:
        performance: :attr:`imbalens.study.results.GridResults.performance` rows of one model
            and task (all seeds; bars show their mean).
        metrics: one panel per metric.
        title: figure title.
        uncertainty: :func:`imbalens.study.stats.grid_uncertainty` rows of the same model
            and task: error bars are their 95% CIs (else the sd over seeds, if several).

    Returns:
        A figure with ``len(metrics)`` axes, classes in the given row order (the average
        or "Unhealthy" last), bars per loss in the paper's order.
    """
    if performance.empty:
        raise ValueError("figure2 got an empty performance table")
    classes = list(dict.fromkeys(performance["class"]))
    if "Average" in classes:
        classes = [c for c in classes if c != "Average"] + ["Average"]
    losses = ordered(performance["loss"], LOSS_ORDER)
    width = max(6.0, 0.35 * len(classes) * max(len(losses), 2) / 2 + 2)
    fig, axes = plt.subplots(
        len(metrics),
        1,
        figsize=(width, 2.4 * len(metrics) + 0.8),
        layout="constrained",
        squeeze=False,
    )
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        intervals = None if uncertainty is None else ci_intervals(uncertainty, metric)
        grouped_bars(ax, performance, metric, classes, losses, intervals=intervals)
        if metric in ("auroc", "ap", "mean_prob"):
            ax.set_ylim(0, 1)
        if metric == "auroc":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    for ax in axes[:-1, 0]:
        ax.tick_params(labelbottom=False)
    axes[0, 0].legend(
        ncol=len(losses), fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False
    )
    if title:
        fig.suptitle(title)
    return fig


def grid_figure2(
    results: GridResults, uncertainty: pd.DataFrame, source: str = ""
) -> Iterator[Figure]:
    """:func:`figure2` for each (task, model) of a grid that has performance rows.

    ``uncertainty`` is :func:`imbalens.study.stats.grid_uncertainty` of the grid; each
    figure gets the rows of its (model, task) as error bars and ``source`` under the title.
    A generator, like :func:`grid_figure1`.
    """
    perf = results.performance
    for task in results.tasks:
        for model in results.models:
            sub = perf[(perf["model"] == model) & (perf["task"] == task)]
            if sub.empty:
                continue
            label = f"{model_label(model)}, {task_label(task)}"
            unc = uncertainty[(uncertainty["model"] == model) & (uncertainty["task"] == task)]
            yield figure2(sub, title=f"Figure 2 ({label}, 95% CI)\n{source}", uncertainty=unc)


def performance_bars(metrics: pd.DataFrame, title: str | None = None) -> Figure:
    """Per-class AUROC, AP and mean predicted probability of one run (three panels).

    ``metrics`` has columns class, auroc, ap, mean_prob (e.g.
    :func:`imbalens.study.results.performance_rows`); an ``"Average"`` row is hatched.
    """
    metric_cols = ("auroc", "ap", "mean_prob")
    missing = set(metric_cols) - set(metrics.columns) | ({"class"} - set(metrics.columns))
    if missing:
        raise ValueError(f"performance_bars needs columns {sorted(missing)}")
    fig, axes = plt.subplots(
        3,
        1,
        figsize=(max(6.0, 0.45 * len(metrics) + 1.5), 7.0),
        layout="constrained",
        sharex=True,
    )
    names = list(metrics["class"])
    for ax, col in zip(axes, metric_cols, strict=True):
        bars = ax.bar(names, metrics[col], color="#0072B2", edgecolor="black", linewidth=0.4)
        for bar, name in zip(bars, names, strict=True):
            if name == "Average":
                bar.set_hatch("//")
                bar.set_facecolor("#E69F00")
        ax.set_ylim(0, 1)
        ax.set_ylabel(METRIC_LABELS[col])
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        if col == "auroc":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    axes[-1].tick_params(axis="x", rotation=40)
    for label in axes[-1].get_xticklabels():
        label.set_horizontalalignment("right")
    if title:
        fig.suptitle(title)
    return fig


def history_curves(history: pd.DataFrame, title: str | None = None) -> Figure:
    """Training curves: train/val loss and validation mean AUROC per epoch (two panels).

    ``history`` is a run's ``history.csv`` (epoch, train_loss, val_loss, val_auroc_mean,
    ...); rows of the same epoch are averaged.
    """
    need = {"epoch", "train_loss", "val_loss", "val_auroc_mean"}
    if need - set(history.columns):
        raise ValueError(f"history lacks columns {sorted(need - set(history.columns))}")
    per_epoch = history.groupby("epoch", as_index=False)[sorted(need - {"epoch"})].mean()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    left.plot(per_epoch["epoch"], per_epoch["train_loss"], "o-", color="#0072B2", label="train")
    left.plot(per_epoch["epoch"], per_epoch["val_loss"], "s--", color="#E69F00", label="validation")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_title("loss")
    left.legend()
    right.plot(per_epoch["epoch"], per_epoch["val_auroc_mean"], "o-", color="#009E73")
    best = per_epoch["val_auroc_mean"].idxmax()
    if pd.notna(best):
        right.plot(
            per_epoch["epoch"][best],
            per_epoch["val_auroc_mean"][best],
            "*",
            ms=14,
            color="#D55E00",
            label="best (checkpoint)",
        )
        right.legend()
    right.set_xlabel("epoch")
    right.set_ylabel("mean AUROC")
    right.set_title("validation mean AUROC")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return fig


def alignment_bars(summary: pd.DataFrame, title: str | None = None) -> Figure:
    """Soft IoBB and IoR by finding (and "all") of one run, side by side.

    ``summary`` has columns finding, iobb, ior (``iobb_mean``/``ior_mean`` accepted; with
    ``iobb_std``/``ior_std`` error bars show the standard deviation over maps). The y
    axis ends a little above the largest bar (at most 1).
    """
    frame = summary.rename(columns={"iobb_mean": "iobb", "ior_mean": "ior"})
    if {"finding", "iobb", "ior"} - set(frame.columns):
        raise ValueError("alignment_bars needs columns finding, iobb, ior")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(frame) + 1), 3.4), layout="constrained")
    x = np.arange(len(frame))
    top = 0.0
    for offset, col, label, colour in (
        (-0.2, "iobb", "IoBB (box covered)", "#0072B2"),
        (0.2, "ior", "IoR (saliency inside)", "#E69F00"),
    ):
        err = frame[f"{col}_std"].fillna(0) if f"{col}_std" in frame else None
        ax.bar(
            x + offset,
            frame[col],
            0.4,
            yerr=err,
            label=label,
            color=colour,
            edgecolor="black",
            linewidth=0.4,
            capsize=2,
            error_kw={"linewidth": 0.8},
        )
        top = max(top, float(np.nanmax(frame[col] + (err if err is not None else 0))))
    ax.set_xticks(x, frame["finding"], rotation=30, ha="right")
    ax.set_ylim(0, min(1.0, max(0.05, 1.15 * top)))
    ax.set_ylabel("soft overlap (mean over maps)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title)
    return fig


def comparison_bars(
    table: pd.DataFrame,
    metrics: Sequence[str],
    title: str | None = None,
    uncertainty: pd.DataFrame | None = None,
) -> Figure:
    """One panel per metric, bars per loss, one group per (task, model) of a loss table.

    ``table`` is :func:`imbalens.study.results.loss_table`-shaped (model, task, loss, metrics);
    with ``uncertainty`` (:func:`imbalens.study.stats.grid_uncertainty`), error bars are
    the 95% CIs of the summary rows (label ``all``).
    """
    frame = table.assign(
        setting=table["model"].map(model_label) + "\n" + table["task"].map(task_label)
    )
    settings = list(dict.fromkeys(frame["setting"]))
    losses = ordered(frame["loss"], LOSS_ORDER)
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(2.2 * len(metrics) * max(len(settings), 2) / 2 + 1.8, 3.6),
        layout="constrained",
        squeeze=False,
    )
    intervals_of = None
    if uncertainty is not None:
        unc = uncertainty[uncertainty["label"] == "all"]
        unc = unc.assign(setting=unc["model"].map(model_label) + "\n" + unc["task"].map(task_label))
        intervals_of = {m: ci_intervals(unc, m, category_col="setting") for m in metrics}
    for ax, metric in zip(axes[0], metrics, strict=True):
        intervals = None if intervals_of is None else intervals_of[metric]
        grouped_bars(
            ax, frame, metric, settings, losses, category_col="setting", intervals=intervals
        )
        ax.set_title(METRIC_LABELS.get(metric, metric.capitalize()))
        ax.set_ylabel(metric_label(metric))
        ax.tick_params(axis="x", rotation=0)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("center")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def concept_channels_figure(channels: pd.DataFrame, title: str | None = None) -> Figure:
    """Which channels detect what: components per channel, detector channels per finding.

    Left: histogram of the number of pathology-related components per channel (channels
    with at least one). Right: number of detector channels per boxed finding (from the
    ``components:<finding>`` columns of ``concepts_channels.csv``).
    """
    if "n_components" not in channels.columns:
        raise ValueError("concepts_channels.csv lacks the 'n_components' column")
    cols = [c for c in channels.columns if c.startswith("components:")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    active = channels.loc[channels["n_components"] > 0, "n_components"]
    if len(active):
        top = int(active.max())
        left.hist(
            active,
            bins=np.arange(0.5, top + 1.5) if top <= 30 else 30,
            color="#0072B2",
            edgecolor="black",
            linewidth=0.4,
        )
    left.set_xlabel("concept components of the channel (all boxed images)")
    left.set_ylabel("channels")
    left.set_title(f"{len(active)} of {len(channels)} channels detect a concept")
    names = [c.split(":", 1)[1] for c in cols]
    counts = [(channels[c].fillna(0) > 0).sum() for c in cols]
    right.bar(names, counts, color="#009E73", edgecolor="black", linewidth=0.4)
    right.set_ylabel("detector channels")
    right.set_title("channels detecting each finding")
    right.tick_params(axis="x", rotation=30)
    for label in right.get_xticklabels():
        label.set_horizontalalignment("right")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    if title:
        fig.suptitle(title)
    return fig


def cam_gallery(
    samples: Sequence[CamSample],
    key: str,
    ncols: int = 4,
    panel: float = 2.2,
    title: str | None = None,
) -> Figure:
    """One run's CAMs: one panel per sample (finding as title), box outlined, ``ncols`` wide.

    ``key`` selects the CAM of each sample (:attr:`CamSample.cams`). Returns a figure with
    ``len(samples)`` image axes (unused grid cells removed) and a colour bar.
    """
    if not samples:
        raise ValueError("cam_gallery needs at least one sample")
    ncols = min(ncols, len(samples))
    nrows = -(-len(samples) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel * ncols + 0.8, panel * nrows + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for ax, sample in zip(axes.flat, samples, strict=False):
        cam_overlay(
            ax,
            sample.image,
            sample.cams.get(key),
            mask=sample.mask,
            title=f"{sample.finding}\n{sample.image_name}",
        )
    for ax in list(axes.flat)[len(samples) :]:
        fig.delaxes(ax)
    mappable = plt.cm.ScalarMappable(cmap=CAM_CMAP, norm=plt.Normalize(0, 1))
    fig.colorbar(
        mappable, ax=[a for a in axes.flat if a in fig.axes], shrink=0.6, label="CAM (min-max)"
    )
    if title:
        fig.suptitle(title)
    return fig
