"""imbalens.study.plots: figures have the expected axes, bars, boxes and colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle

from imbalens.explain.samples import CamSample
from imbalens.study.plots import (
    LOSS_COLORS,
    alignment_bars,
    cam_overlay,
    comparison_bars,
    draw_boxes,
    figure1,
    figure2,
    grouped_bars,
    history_curves,
    performance_bars,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() != 0]


def test_draw_boxes_geometry() -> None:
    fig, ax = plt.subplots()
    patches = draw_boxes(ax, pd.DataFrame({"x0": [2], "y0": [3], "x1": [10], "y1": [7]}))
    assert len(patches) == 1
    assert patches[0].get_xy() == (2, 3)
    assert (patches[0].get_width(), patches[0].get_height()) == (8, 4)
    assert not patches[0].get_fill()
    with pytest.raises(ValueError, match="x1 < x0"):
        draw_boxes(ax, [(5, 0, 1, 1)])


def test_cam_overlay_layers_and_shape_check() -> None:
    fig, ax = plt.subplots()
    img = np.zeros((16, 16))
    cam = np.zeros((16, 16))
    cam[4:8, 4:8] = 1
    mask = cam.astype(bool)
    cam_overlay(ax, img, cam, boxes=[(4, 4, 8, 8)], mask=mask, title="x")
    assert len(ax.images) == 2  # grey image + CAM
    assert ax.get_title() == "x"
    assert len(ax.patches) == 1
    with pytest.raises(ValueError, match="cam shape"):
        cam_overlay(ax, img, np.zeros((8, 8)))


def sample(finding: str, losses: list[str]) -> CamSample:
    mask = np.zeros((16, 16), bool)
    mask[2:6, 3:9] = True
    return CamSample(
        finding,
        f"{finding}.png",
        np.full((16, 16), 0.5),
        mask,
        {x: np.random.default_rng(0).random((16, 16)) for x in losses},
    )


def test_figure1_grid_and_order() -> None:
    samples = [sample("Mass", ["focal", "bce"]), sample("Nodule", ["focal", "bce"])]
    fig = figure1(samples, title="t")
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2 * 3  # input + BCE + Focal per row
    titles = [ax.get_title() for ax in image_axes[:3]]
    assert titles == ["input + box", "BCE", "Focal"]
    assert image_axes[0].get_ylabel() == "Mass"
    assert len(fig.axes) == 2 * 3 + 1  # plus the colour bar
    # explicit columns: a loss without a CAM says so
    fig = figure1(samples[:1], columns=["bce", "wbce", "focal", "cbfocal"])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("not run") == 2
    with pytest.raises(ValueError):
        figure1([])


def perf_frame() -> pd.DataFrame:
    rows = []
    for loss, p in (("cbfocal", 0.4), ("bce", 0.1), ("wbce", 0.3)):
        for seed in (0, 1):
            for cls in ("Average", "A", "B"):
                rows.append(
                    {
                        "loss": loss,
                        "seed": seed,
                        "class": cls,
                        "auroc": 0.7 + seed / 10,
                        "ap": 0.3,
                        "mean_prob": p,
                    }
                )
    return pd.DataFrame(rows)


def test_figure2_bars_per_class_and_loss() -> None:
    fig = figure2(perf_frame(), title="m")
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len(bars(ax)) == 3 * 3  # 3 classes x 3 losses
    labels = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert labels == ["A", "B", "Average"]  # average last
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["BCE", "WBCE", "CB-Focal"]  # paper order
    # colour of the BCE bars is the fixed BCE colour; height is the seed mean
    first = bars(fig.axes[0])[0]
    assert matplotlib.colors.to_hex(first.get_facecolor()) == LOSS_COLORS["bce"].lower()
    assert first.get_height() == pytest.approx(0.75)


def test_grouped_bars_skips_missing_combinations() -> None:
    fig, ax = plt.subplots()
    frame = perf_frame()
    frame = frame[~((frame["loss"] == "wbce") & (frame["class"] == "A"))]
    assert grouped_bars(ax, frame, "ap", ["A", "B"], ["bce", "wbce"]) == 3


def test_run_level_plots() -> None:
    metrics = pd.DataFrame(
        {
            "class": ["A", "B", "Average"],
            "auroc": [0.7, 0.8, 0.75],
            "ap": [0.2, 0.3, 0.25],
            "mean_prob": [0.1, 0.2, 0.15],
        }
    )
    fig = performance_bars(metrics)
    assert len(fig.axes) == 3 and all(len(bars(ax)) == 3 for ax in fig.axes)
    assert bars(fig.axes[0])[2].get_hatch() == "//"
    history = pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1],
            "train_loss": [1.0, 0.8, 0.6, 0.4],
            "val_loss": [0.9] * 4,
            "val_auroc_mean": [0.6, 0.6, 0.7, 0.7],
        }
    )
    fig = history_curves(history)
    assert len(fig.axes) == 2
    train_line = fig.axes[0].get_lines()[0]
    assert list(train_line.get_ydata()) == pytest.approx([0.9, 0.5])  # per-epoch means
    with pytest.raises(ValueError, match="val_auroc_mean"):
        history_curves(history.drop(columns="val_auroc_mean"))
    summary = pd.DataFrame(
        {"finding": ["Mass", "all"], "iobb_mean": [0.3, 0.2], "ior_mean": [0.1, 0.2]}
    )
    fig = alignment_bars(summary)
    assert len(bars(fig.axes[0])) == 4
    assert fig.axes[0].get_ylim()[1] == pytest.approx(0.3 * 1.15)  # 15 % above the top bar
    fig = alignment_bars(summary.assign(iobb_std=[0.5, 0.1], ior_std=[0.0, 0.0]))
    assert fig.axes[0].get_ylim()[1] == pytest.approx(0.92)  # includes the error bar


def test_comparison_bars() -> None:
    table = pd.DataFrame(
        {
            "model": ["resnet50"] * 2,
            "task": ["binary"] * 2,
            "loss": ["bce", "focal"],
            "disjoint": [1.0, 2.0],
            "unique": [0.5, 0.7],
        }
    )
    fig = comparison_bars(table, ["disjoint", "unique"])
    assert len(fig.axes) == 2
    assert [b.get_height() for b in bars(fig.axes[0])] == [1.0, 2.0]


def error_segments(ax) -> list[tuple[float, float]]:
    """(low, high) y of every vertical error bar on ``ax``, in drawing order."""
    out = []
    for container in ax.containers:
        err = getattr(container, "errorbar", None)
        if err is None:
            continue
        for seg in err.lines[2][0].get_segments():
            out.append((float(seg[0][1]), float(seg[1][1])))
    return out


def test_figure2_error_bars_are_the_cis() -> None:
    perf = perf_frame()
    perf = perf[perf["seed"] == 0]
    unc = pd.DataFrame(
        [
            {
                "metric": "auroc",
                "label": cls,
                "loss": loss,
                "lo": 0.6,
                "hi": 0.75,
                "t_lo": np.nan,
                "t_hi": np.nan,
            }  # fmt: skip
            for loss in ("bce", "wbce", "cbfocal")
            for cls in ("A", "B", "Average")
        ]
    )
    fig = figure2(perf, uncertainty=unc)
    segs = error_segments(fig.axes[0])
    assert len(segs) == 9 and all(s == pytest.approx((0.6, 0.75)) for s in segs)
    assert error_segments(fig.axes[1]) == []  # no CI for AP: no error bars (one seed)


def test_comparison_bars_with_ci_and_t_interval_fallback() -> None:
    table = pd.DataFrame(
        {
            "model": ["resnet50"] * 2,
            "task": ["binary"] * 2,
            "loss": ["bce", "focal"],
            "disjoint": [1.0, 2.0],
        }  # fmt: skip
    )
    unc = pd.DataFrame(
        {
            "model": "resnet50",
            "task": "binary",
            "metric": "disjoint",
            "label": "all",
            "loss": ["bce", "focal"],
            "lo": np.nan,
            "hi": np.nan,
            "t_lo": [0.5, 1.5],
            "t_hi": [1.5, 3.0],
        }  # fmt: skip
    )
    fig = comparison_bars(table, ["disjoint"], uncertainty=unc)
    assert error_segments(fig.axes[0]) == [(0.5, 1.5), (1.5, 3.0)]
