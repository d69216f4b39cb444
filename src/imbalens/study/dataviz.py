"""Figures of the data page: label prevalence beside NIH's, example images with boxes.

Both work on any folder in NIH's layout (the phantom, nih-mini, the full release), read
through :mod:`imbalens.data.nih`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from imbalens.data.findings import (
    BOXED_FINDINGS,
    FINDINGS,
    NIH_IMAGE_COUNTS,
    NIH_TOTAL_IMAGES,
    NO_FINDING,
)
from imbalens.data.nih import load_boxes, read_data_entry, read_image
from imbalens.study.plots import draw_boxes

LABELS: tuple[str, ...] = (NO_FINDING, *FINDINGS)


def prevalence(roots: dict[str, str | os.PathLike[str]]) -> pd.DataFrame:
    """Share of images carrying each label, one column per data set plus ``NIH (full)``.

    $$ \\pi_k = \\frac{\\#\\{\\text{images labelled } k\\}}{\\#\\{\\text{images}\\}} $$

    Rows are "No Finding" and the 14 findings, sorted by NIH's prevalence (descending).
    """
    cols = {"NIH (full)": pd.Series({k: NIH_IMAGE_COUNTS[k] / NIH_TOTAL_IMAGES for k in LABELS})}
    for name, root in roots.items():
        labels = read_data_entry(Path(root) / "Data_Entry_2017.csv")["labels"]
        flat = [f for labs in labels for f in (labs or (NO_FINDING,))]
        counts = pd.Series(flat, dtype=str).value_counts()
        cols[name] = counts.reindex(list(LABELS), fill_value=0) / len(labels)
    table = pd.DataFrame(cols)
    return table.sort_values("NIH (full)", ascending=False)


def prevalence_bars(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Grouped horizontal bars of :func:`prevalence`, log-scaled share of images."""
    n_rows, n_sets = table.shape
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * n_rows + 1.2))
    height = 0.8 / n_sets
    y = np.arange(n_rows)
    colors = ("#999999", "#0072B2", "#E69F00", "#009E73")
    for j, col in enumerate(table.columns):
        ax.barh(
            y + (j - (n_sets - 1) / 2) * height,
            table[col].to_numpy(),
            height,
            label=col,
            color=colors[j % len(colors)],
        )
    ax.set_yticks(y, table.index)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("share of images with the label (log scale)")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def example_grid(
    root: str | os.PathLike[str],
    image_size: int = 256,
    n_examples: int = 3,
    findings: Sequence[str] = BOXED_FINDINGS,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Rows = boxed findings, columns = ``n_examples`` images with that finding's boxes.

    Images are chosen at random (``numpy.random.default_rng(seed)``) among those with a
    box of the row's finding, resized to ``image_size`` (square, as the models see them)
    and drawn with all their boxes of that finding (:func:`imbalens.data.nih.load_boxes`).
    A row with fewer images than ``n_examples`` leaves the rest of the row blank.
    """
    root = Path(root)
    boxes = load_boxes(root, image_size)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(
        len(findings),
        n_examples,
        figsize=(1.9 * n_examples, 1.95 * len(findings)),
        squeeze=False,
    )
    for r, finding in enumerate(findings):
        fb = boxes[boxes["finding"] == finding]
        names = sorted(fb["image"].unique())
        pick = rng.permutation(len(names))[:n_examples]
        for c in range(n_examples):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(finding, fontsize=9)
            if c >= len(pick):
                ax.set_frame_on(False)
                continue
            name = names[pick[c]]
            img = read_image(root / "images" / name)
            if img.shape != (image_size, image_size):
                img = np.asarray(
                    Image.fromarray(img).resize((image_size, image_size), Image.BILINEAR)
                )
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            draw_boxes(ax, fb[fb["image"] == name], linewidth=1.2)
            ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
