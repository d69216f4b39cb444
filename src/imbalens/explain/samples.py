"""CAMs of a few boxed test images, recomputed from saved checkpoints for the book's figures.

The analysis stage (:mod:`imbalens.explain.analyse`) keeps numbers, not maps. The
alignment page and the results page's Figure 1 (Khakzar, Li et al. 2022) show the maps
themselves: one boxed test image per boxed finding, and for each run (one per loss) the
class activation map (Zhou et al. 2016, :func:`imbalens.explain.cam.class_activation_maps`)
of that finding's output. :func:`cam_samples` loads each run's checkpoint and computes
them on the same images, so the columns of a figure compare losses on equal terms.

Example:
    >>> samples = cam_samples({"bce": "runs/smoke/t-densenet-bce-binary-s0"})  # doctest: +SKIP
    >>> samples[0].finding, samples[0].cams["bce"].shape  # doctest: +SKIP
    ('Atelectasis', (64, 64))
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from imbalens import runfolder as rf

log = logging.getLogger(__name__)


@dataclass
class CamSample:
    """One boxed test image with its box mask and a CAM per run (Figure 1's rows).

    Attributes:
        finding: the boxed finding shown.
        image_name: file name of the image.
        image: (H, W) grey image in [0, 1] (model input, de-normalised).
        mask: (H, W) bool, the union of that finding's boxes.
        cams: ``{key: (H, W) CAM in [0, 1]}``, key a loss (or any run label); the CAM is
            that of the finding's own output (multi-label) or the single output (binary).
    """

    finding: str
    image_name: str
    image: np.ndarray
    mask: np.ndarray
    cams: dict[str, np.ndarray] = field(default_factory=dict)


def pick_boxed_images(boxes: pd.DataFrame, findings: Sequence[str]) -> dict[str, str]:
    """One image per finding: the first (by name) with a box of it, preferring unused images.

    ``boxes`` has columns image and finding (:func:`imbalens.data.nih.load_boxes`). Findings
    without any box are left out.
    """
    chosen: dict[str, str] = {}
    for finding in findings:
        names = sorted(boxes.loc[boxes["finding"] == finding, "image"].unique())
        if not names:
            continue
        fresh = [n for n in names if n not in chosen.values()]
        chosen[finding] = (fresh or names)[0]
    return chosen


def _boxed_test_items(
    data: Any, size: int, findings: Sequence[str]
) -> tuple[list[CamSample], list[dict[str, Any]]]:
    """The picked boxed test images as samples without CAMs, and their dataset items."""
    from imbalens.data.findings import BOXED_FINDINGS
    from imbalens.data.nih import denormalize

    dataset = data.dataset("boxed", size)
    position = {name: i for i, name in enumerate(dataset.names)}
    boxes = data.boxes(size)
    boxes = boxes[boxes["image"].isin(position)]  # boxed *test* images only
    picked = pick_boxed_images(boxes, list(findings))
    items = [dataset[position[name]] for name in picked.values()]
    samples = [
        CamSample(
            finding=finding,
            image_name=name,
            image=denormalize(item["image"]).mean(0).numpy(),
            mask=item["box_mask"][BOXED_FINDINGS.index(finding)].numpy().astype(bool),
        )
        for (finding, name), item in zip(picked.items(), items, strict=True)
    ]
    return samples, items


def cam_samples(
    run_dirs: Mapping[str, str | Path],
    findings: Sequence[str] | None = None,
    which: str = "best",
    device: str = "cpu",
) -> list[CamSample]:
    """CAMs of one boxed test image per finding, for each run in ``run_dirs``.

    The data (root, task, image size, split) are those of the first run's config; all
    runs must share the task. CAMs come from :func:`imbalens.explain.cam.class_activation_maps`
    with the run's ``analysis.normalise``-independent default (min-max at the feature
    resolution, bilinear upsampling), for the finding's output (binary: the single one).

    Args:
        run_dirs: ``{label: run folder}``, e.g. ``{"bce": ..., "wbce": ...}``.
        findings: boxed findings to show (default all 8 that have boxes in the data).
        which: checkpoint, ``"best"`` or ``"last"``.
        device: where to run the models.

    Raises:
        ValueError: empty ``run_dirs`` or runs of different tasks.
    """
    import torch

    from imbalens.data.findings import BOXED_FINDINGS
    from imbalens.data.nih import load_nih_from_config
    from imbalens.explain.cam import class_activation_maps
    from imbalens.training.checkpoint import load_model_from_run

    if not run_dirs:
        raise ValueError("cam_samples needs at least one run folder")
    first = Path(next(iter(run_dirs.values())))
    d = yaml.safe_load((first / rf.CONFIG).read_text())["data"]
    data = load_nih_from_config(d)
    samples, items = _boxed_test_items(data, int(d["image_size"]), findings or BOXED_FINDINGS)
    if not items:
        log.warning("no boxed test images in %s", d["root"])
        return []
    batch = torch.stack([item["image"] for item in items]).to(device)
    for label, run_dir in run_dirs.items():
        model, run_cfg = load_model_from_run(run_dir, which=which, map_location=device)
        if run_cfg["data"]["task"] != d["task"]:
            raise ValueError(f"{run_dir} is task {run_cfg['data']['task']}, expected {d['task']}")
        cams = class_activation_maps(model, batch).cpu().numpy()
        for i, sample in enumerate(samples):
            out = data.class_names.index(sample.finding) if d["task"] == "multilabel" else 0
            sample.cams[label] = cams[i, out]
    return samples
