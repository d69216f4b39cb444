"""Look into a model: CAM alignment with the boxes and concept counts, per run folder.

For the boxed test images (the 880 NIH images with expert boxes) this writes, into the
run folder (Khakzar, Li et al. 2022, Sec. 4.2-4.3):

- ``alignment.csv``: one row per (image, boxed finding) map: image, finding, output,
  iobb, ior (:func:`imbalens.explain.alignment.alignment_table`);
- ``alignment_summary.csv``: mean, std, n by finding and "all";
- ``concepts.json``: Disjoint / Unique of the first analysed layer at the top level
  (disjoint, unique, q, layer, threshold, n_images, n_boxes, per_finding, thresholds
  summary) and every analysed layer under ``layers``;
- ``concepts_channels.csv``: per-channel detail of every analysed layer;
- ``analysis.done`` (written last): the summary; a finished folder is skipped unless
  ``force``.

Settings come from the run config's ``analysis`` section (``q``, ``threshold``, ``layer``,
``upsample``, ``connectivity``, ``normalise``, ``batch_size``; optional ``cache``, default
True: activations are kept in a temporary folder on disk so the model runs once per
layer) and ``train.precision`` (autocast of the forward passes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from imbalens import runfolder as rf
from imbalens.config import DEFAULTS
from imbalens.explain.alignment import alignment_table, summarise_alignment
from imbalens.explain.baselines import write_baselines
from imbalens.explain.dissect import default_q, dissect_model
from imbalens.explain.localization import lesion_masks_of, summarise_localization
from imbalens.io import atomic_write_text

__all__ = ["DONE", "analyse_model", "analyse_run", "cli", "configure_parser"]

log = logging.getLogger(__name__)

DONE = rf.ANALYSIS_DONE


def _device(setting: str | torch.device) -> torch.device:
    if str(setting) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def _autocast(device: torch.device, precision: str) -> Callable[[], Any]:
    try:
        from imbalens.training.precision import autocast_context
    except ImportError:  # pragma: no cover - precision module absent
        return contextlib.nullcontext
    return lambda: autocast_context(device, precision)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def analyse_model(
    model: nn.Module,
    data: Any,
    cfg: dict[str, Any],
    out: str | Path,
    device: str | torch.device = "auto",
    limit: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Alignment and concepts of ``model`` on ``data``'s boxed images, written to ``out``.

    Args:
        model: a network with ``cam_layer``, ``head``, ``dissect_layers`` (and ``name``).
        data: an :class:`imbalens.data.nih.NIHData` (``class_names``, ``task``,
            ``dataset("boxed", S)``, ``boxes(S)``).
        cfg: resolved config (``data.image_size``, ``analysis``, ``train.precision``).
        out: output folder. limit: analyse only the first ``limit`` boxed images.
        force: redo a folder that already has ``analysis.done``.

    Returns:
        The summary dict (also the content of ``analysis.done``).
    """
    out = Path(out)
    if (out / DONE).is_file() and not force:
        log.info("%s exists: skipping (force=True to redo)", out / DONE)
        return json.loads((out / DONE).read_text())
    a_cfg = {**DEFAULTS["analysis"], **(cfg.get("analysis") or {})}
    size = int(cfg["data"]["image_size"])
    dev = _device(device)
    precision = (cfg.get("train") or {}).get("precision", "fp32")
    autocast = _autocast(dev, precision)
    model = model.to(dev).eval()
    full = data.dataset("boxed", size)
    dataset: Dataset = full
    if limit is not None and limit < len(full):
        dataset = Subset(full, range(int(limit)))
    names = set(full.names[: len(dataset)])
    boxes = data.boxes(size)
    n_boxes = int(boxes["image"].isin(names).sum())
    seconds: dict[str, float] = {}
    bs = int(a_cfg["batch_size"])

    t0 = time.perf_counter()
    exact = lesion_masks_of(data)  # issue #9: exact lesion masks on the phantom
    table = alignment_table(
        model, dataset, data.class_names, data.task, bs, dev, autocast=autocast, exact=exact
    )
    summary = summarise_alignment(table).merge(summarise_localization(table), on="finding")
    seconds["alignment"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_baselines(model, cfg, data, dataset, table, out, dev, autocast)
    seconds["baselines"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(table, out / rf.ALIGNMENT)
    _write_csv(summary, out / rf.ALIGNMENT_SUMMARY)

    layers = [a_cfg["layer"]] if a_cfg["layer"] else list(model.dissect_layers)
    q = float(a_cfg["q"]) if a_cfg["q"] is not None else default_q(model)
    per_layer: dict[str, Any] = {}
    channels = []
    for layer in layers:
        t0 = time.perf_counter()
        res = dissect_model(
            model,
            dataset,
            layer=layer,
            q=q,
            batch_size=bs,
            device=dev,
            autocast=autocast,
            cache=bool(a_cfg["cache"]),
            threshold=a_cfg["threshold"],
            connectivity=int(a_cfg["connectivity"]),
            normalise=a_cfg["normalise"],
            upsample_to=size if a_cfg["upsample"] else None,
            n_boxes=n_boxes,
        )
        seconds[f"concepts:{layer}"] = time.perf_counter() - t0
        per_layer[layer] = {"layer": layer, **res.summary()}
        channels.append(res.per_channel.assign(layer=layer))
        log.info("%s: disjoint %.2f unique %.2f", layer, res.disjoint, res.unique)
    concepts = {**per_layer[layers[0]], "layers": per_layer, "seconds": seconds}
    atomic_write_text(out / rf.CONCEPTS, json.dumps(concepts, indent=2, default=float))
    _write_csv(pd.concat(channels, ignore_index=True), out / rf.CONCEPTS_CHANNELS)
    all_row = summary.set_index("finding").loc["all"]
    result = {
        "n_images": len(dataset),
        "n_boxes": n_boxes,
        "n_maps": len(table),
        "iobb": float(all_row["iobb_mean"]),
        "ior": float(all_row["ior_mean"]),
        "concepts": {
            k: {"disjoint": v["disjoint"], "unique": v["unique"]} for k, v in per_layer.items()
        },
        "seconds": seconds,
        "device": str(dev),
        "precision": precision,
    }
    atomic_write_text(out / DONE, json.dumps(result, indent=2))
    return result


def analyse_run(
    run_dir: str | Path,
    device: str | torch.device = "auto",
    limit: int | None = None,
    force: bool = False,
    which: str = "best",
) -> dict[str, Any]:
    """:func:`analyse_model` for a trained run: its ``which`` checkpoint, its data config.

    Raises:
        FileNotFoundError: no checkpoint (train the run first) or no data at ``data.root``.
    """
    from imbalens.data.nih import load_nih_from_config
    from imbalens.training.checkpoint import load_model_from_run

    run = Path(run_dir)
    if (run / DONE).is_file() and not force:
        log.info("%s exists: skipping (--force to redo)", run / DONE)
        return json.loads((run / DONE).read_text())
    model, cfg = load_model_from_run(run, which=which)
    d = cfg["data"]
    data = load_nih_from_config(d)
    return analyse_model(model, data, cfg, run, device=device, limit=limit, force=force)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``imbalens analyse``."""
    parser.add_argument("run_dir", type=Path, help="a trained run folder")
    parser.add_argument("--force", action="store_true", help="redo a finished analysis")
    parser.add_argument("--limit", type=int, default=None, help="first N boxed images only")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint")


def cli(args: argparse.Namespace) -> int:
    """Run ``imbalens analyse``."""
    result = analyse_run(args.run_dir, args.device, args.limit, args.force, args.which)
    log.info("analysis of %s: %s", args.run_dir, json.dumps(result))
    return 0
