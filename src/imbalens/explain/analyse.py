"""Look into a model, per run folder: CAM alignment with the boxes, and concept counts.

Two stages, each rerunnable alone (Khakzar, Li et al. 2022, Sec. 4.2-4.3), on the boxed
test images (the 880 NIH images with expert boxes):

- **alignment** (:func:`align_model` / :func:`align_run`, the alignment notebook):
  ``alignment.csv`` (one row per map: image, finding, output, iobb, ior, dead, boxes;
  :func:`imbalens.explain.alignment.alignment_table`), ``alignment_summary.csv`` (mean,
  std, n, n_dead by finding and "all"), then ``alignment.done``;
- **concepts** (:func:`concepts_model` / :func:`concepts_run`, the concepts notebook):
  ``concepts.json`` (Disjoint / Unique of the first analysed layer at the top level and
  every analysed layer under ``layers``) and ``concepts_channels.csv`` (per channel),
  then ``concepts.done``.

:func:`analyse_model` / :func:`analyse_run` (``imbalens analyse RUN``) run both and write
``analysis.done`` last; either stage also writes it once both stage markers exist (so
the two notebooks together finish a run). A stage whose marker exists is skipped unless
``force``.

Settings come from the run config's ``analysis`` section (:data:`imbalens.config.DEFAULTS`:
``dissection`` paper | official and the keys it fills, ``q``, ``layer``, ``upsample``,
``binary_boxes``, ``batch_size``, ``cache``) and ``train.precision`` (autocast).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from imbalens import runfolder as rf
from imbalens.config import DEFAULTS
from imbalens.data.findings import BOXED_FINDINGS
from imbalens.explain.alignment import alignment_table, summarise_alignment
from imbalens.explain.baselines import write_baselines, write_concept_baselines
from imbalens.explain.dissect import DISSECTION_MODES, default_q, dissect_model
from imbalens.explain.localization import lesion_masks_of, summarise_localization
from imbalens.io import atomic_write_csv, atomic_write_text
from imbalens.training.precision import autocast_context
from imbalens.training.runtime import select_device

__all__ = [
    "DONE",
    "align_model",
    "align_run",
    "analyse_model",
    "analyse_run",
    "cli",
    "concepts_model",
    "concepts_run",
    "configure_parser",
    "dissection_settings",
]

log = logging.getLogger(__name__)

DONE = rf.ANALYSIS_DONE


def _done(path: Path, force: bool) -> dict[str, Any] | None:
    if path.is_file() and not force:
        log.info("%s exists: skipping (force=True / --force to redo)", path)
        return json.loads(path.read_text())
    return None


def dissection_settings(a_cfg: dict[str, Any], image_size: int) -> dict[str, Any]:
    """Keyword arguments of :func:`imbalens.explain.dissect.count_concepts` for a config's
    ``analysis`` section: the ``dissection`` mode's settings, then every non-null key.

    Raises:
        ValueError: an unknown ``analysis.dissection`` (naming the choices).
    """
    mode = a_cfg.get("dissection", "paper")
    if mode not in DISSECTION_MODES:
        raise ValueError(
            f"unknown analysis.dissection={mode!r}: choose one of {sorted(DISSECTION_MODES)}"
        )
    kw = dict(DISSECTION_MODES[mode])
    for key in ("threshold", "counting", "normalise", "floor_ties"):
        if a_cfg.get(key) is not None:
            kw[key] = a_cfg[key]
    kw["upsample_to"] = "mask" if a_cfg.get("upsample", True) else None  # masks: image_size
    kw["connectivity"] = int(a_cfg.get("connectivity", 2))
    kw["box_cover"] = float(a_cfg.get("box_cover", 0.5))
    return kw


@dataclass
class _Setup:
    """What both stages need: device, autocast, the boxed dataset (limited), boxes."""

    a_cfg: dict[str, Any]
    size: int
    device: torch.device
    precision: str
    autocast: Callable[[], Any]
    full: Any
    dataset: Dataset
    boxes: pd.DataFrame

    @property
    def n_boxes(self) -> int:
        return len(self.boxes)

    def box_entries(self) -> np.ndarray:
        """(len(full), 8): boxes of each finding per boxed image (by dataset index)."""
        row = {name: i for i, name in enumerate(self.full.names)}
        col = {f: j for j, f in enumerate(BOXED_FINDINGS)}
        out = np.zeros((len(self.full.names), len(BOXED_FINDINGS)), dtype=np.int64)
        for name, finding in zip(self.boxes["image"], self.boxes["finding"], strict=True):
            out[row[name], col[finding]] += 1
        return out


def _setup(model: nn.Module, data: Any, cfg: dict[str, Any], device, limit) -> _Setup:
    a_cfg = {**DEFAULTS["analysis"], **(cfg.get("analysis") or {})}
    size = int(cfg["data"]["image_size"])
    dev = select_device(device)
    precision = (cfg.get("train") or {}).get("precision", "fp32")
    model.to(dev).eval()
    full = data.dataset("boxed", size)
    dataset: Dataset = full
    if limit is not None and limit < len(full):
        dataset = Subset(full, range(int(limit)))
    names = set(full.names[: len(dataset)])
    boxes = data.boxes(size)
    boxes = boxes[boxes["image"].isin(names)]
    autocast = functools.partial(autocast_context, dev, precision)
    return _Setup(a_cfg, size, dev, precision, autocast, full, dataset, boxes)


def align_model(
    model: nn.Module,
    data: Any,
    cfg: dict[str, Any],
    out: str | Path,
    device: str | torch.device = "auto",
    limit: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """The alignment stage: CAMs and soft IoBB / IoR of the boxed images, into ``out``.

    Args:
        model: a network with ``cam_layer`` and ``head``.
        data: an :class:`imbalens.data.nih.NIHData` (``class_names``, ``task``,
            ``dataset("boxed", S)``, ``boxes(S)``).
        cfg: resolved config (``data.image_size``, ``analysis``, ``train.precision``).
        out: the run folder. limit: the first ``limit`` boxed images only.
        force: redo a folder that already has ``alignment.done``.

    Returns:
        The summary (also ``alignment.done``): n_images, n_boxes, n_maps, n_dead, boxes,
        iobb, ior (means over all maps), seconds, device, precision.
    """
    folder = rf.RunFolder(Path(out))
    if (done := _done(folder.alignment_done, force)) is not None:
        return done
    st = _setup(model, data, cfg, device, limit)
    boxes = st.a_cfg["binary_boxes"] if data.task == "binary" else "auto"
    t0 = time.perf_counter()
    exact = lesion_masks_of(data)  # the phantom's exact lesion masks (issue #9)
    table = alignment_table(
        model, st.dataset, data.class_names, data.task, int(st.a_cfg["batch_size"]),
        st.device, autocast=st.autocast, boxes=boxes, exact=exact,
    )  # fmt: skip
    summary = summarise_alignment(table).merge(summarise_localization(table), on="finding")
    seconds = {"alignment": time.perf_counter() - t0}
    t1 = time.perf_counter()
    write_baselines(model, cfg, data, st.dataset, table, folder.path, st.device, st.autocast)
    seconds["baselines"] = time.perf_counter() - t1
    folder.path.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(folder.alignment, table)
    atomic_write_csv(folder.alignment_summary, summary)
    all_row = summary.set_index("finding").loc["all"]
    result = {
        "n_images": len(st.dataset),
        "n_boxes": st.n_boxes,
        "n_maps": len(table),
        "n_dead": int(all_row["n_dead"]),
        "boxes": str(all_row["boxes"]),
        "iobb": float(all_row["iobb_mean"]),
        "ior": float(all_row["ior_mean"]),
        "seconds": seconds,
        "device": str(st.device),
        "precision": st.precision,
    }
    atomic_write_text(folder.alignment_done, json.dumps(result, indent=2))
    _combine(folder)
    return result


def concepts_model(
    model: nn.Module,
    data: Any,
    cfg: dict[str, Any],
    out: str | Path,
    device: str | torch.device = "auto",
    limit: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """The concepts stage: network dissection of every analysed layer, into ``out``.

    Layers: ``analysis.layer`` or all of ``model.dissect_layers`` (the first is reported
    at the top of ``concepts.json``); settings by :func:`dissection_settings`. Arguments
    as :func:`align_model`; ``force`` redoes a folder with ``concepts.done``.

    Returns:
        The summary (also ``concepts.done``): n_images, n_boxes, per-layer Disjoint /
        Unique, the settings, seconds.
    """
    folder = rf.RunFolder(Path(out))
    if (done := _done(folder.concepts_done, force)) is not None:
        return done
    st = _setup(model, data, cfg, device, limit)
    kw = dissection_settings(st.a_cfg, st.size)
    layers = [st.a_cfg["layer"]] if st.a_cfg["layer"] else list(model.dissect_layers)
    q = float(st.a_cfg["q"]) if st.a_cfg["q"] is not None else default_q(model)
    entries = st.box_entries()
    per_layer: dict[str, Any] = {}
    channels, images, seconds = [], [], {}
    names = list(st.full.names[: len(st.dataset)])  # dissection streams them in order
    for layer in layers:
        t0 = time.perf_counter()
        res = dissect_model(
            model, st.dataset, layer=layer, q=q, batch_size=int(st.a_cfg["batch_size"]),
            device=st.device, autocast=st.autocast, cache=bool(st.a_cfg["cache"]),
            box_entries=entries, n_boxes=st.n_boxes, **kw,
        )  # fmt: skip
        seconds[layer] = time.perf_counter() - t0
        per_layer[layer] = {"layer": layer, "dissection": st.a_cfg["dissection"], **res.summary()}
        channels.append(res.per_channel.assign(layer=layer))
        if res.per_image is not None:
            terms = res.per_image.assign(image=names, layer=layer, primary=layer == layers[0])
            images.append(terms[["layer", "primary", "image", *res.per_image.columns]])
        log.info("%s: disjoint %.2f unique %.2f", layer, res.disjoint, res.unique)
    folder.path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def dissect_primary(m: nn.Module, ds: Dataset) -> Any:
        """The run's dissection of ``layers[0]``, for the baselines of the same images."""
        return dissect_model(
            m.to(st.device), ds, layer=layers[0], q=q, batch_size=int(st.a_cfg["batch_size"]),
            device=st.device, autocast=st.autocast, cache=bool(st.a_cfg["cache"]),
            box_entries=entries, n_boxes=int(entries[: len(ds)].sum()), **kw,
        )  # fmt: skip

    write_concept_baselines(model, cfg, data, st.dataset, dissect_primary, folder.path)
    seconds["baselines"] = time.perf_counter() - t0
    concepts = {**per_layer[layers[0]], "layers": per_layer, "seconds": seconds}
    atomic_write_text(folder.concepts, json.dumps(concepts, indent=2, default=float))
    atomic_write_csv(folder.concepts_channels, pd.concat(channels, ignore_index=True))
    if images:
        atomic_write_csv(folder.concepts_images, pd.concat(images, ignore_index=True))
    result = {
        "n_images": len(st.dataset),
        "n_boxes": st.n_boxes,
        "dissection": st.a_cfg["dissection"],
        "concepts": {
            k: {"disjoint": v["disjoint"], "unique": v["unique"]} for k, v in per_layer.items()
        },
        "seconds": seconds,
        "device": str(st.device),
    }
    atomic_write_text(folder.concepts_done, json.dumps(result, indent=2))
    _combine(folder)
    return result


def analyse_model(
    model: nn.Module,
    data: Any,
    cfg: dict[str, Any],
    out: str | Path,
    device: str | torch.device = "auto",
    limit: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Both stages (:func:`align_model`, :func:`concepts_model`), then ``analysis.done``.

    Returns:
        The summary (also ``analysis.done``): the alignment summary's n_images, n_boxes,
        n_maps, n_dead, boxes, iobb, ior, plus ``concepts`` (per layer) and ``seconds``.
    """
    out = Path(out)
    if (done := _done(out / DONE, force)) is not None:
        return done
    align_model(model, data, cfg, out, device, limit, force)
    concepts_model(model, data, cfg, out, device, limit, force)
    result = _combine(rf.RunFolder(out))
    assert result is not None  # both markers were just written
    return result


def _combine(folder: rf.RunFolder) -> dict[str, Any] | None:
    """Write ``analysis.done`` from the two stage markers once both exist (else None)."""
    if not (folder.alignment_done.is_file() and folder.concepts_done.is_file()):
        return None
    align = json.loads(folder.alignment_done.read_text())
    concepts = json.loads(folder.concepts_done.read_text())
    seconds = dict(align["seconds"])
    seconds.update({f"concepts:{k}": v for k, v in concepts["seconds"].items()})
    result = {
        **{k: v for k, v in align.items() if k != "seconds"},
        "concepts": concepts["concepts"],
        "dissection": concepts.get("dissection"),
        "seconds": seconds,
    }
    atomic_write_text(folder.analysis_done, json.dumps(result, indent=2))
    return result


def _run_stage(stage: Callable[..., dict[str, Any]], marker: Path):
    def run(
        run_dir: str | Path,
        device: str | torch.device = "auto",
        limit: int | None = None,
        force: bool = False,
        which: str = "best",
    ) -> dict[str, Any]:
        from imbalens.data.nih import load_nih_from_config
        from imbalens.training.checkpoint import load_model_from_run

        run = Path(run_dir)
        if (done := _done(run / marker.name, force)) is not None:
            return done
        model, cfg = load_model_from_run(run, which=which)
        data = load_nih_from_config(cfg["data"])
        return stage(model, data, cfg, run, device=device, limit=limit, force=force)

    run.__doc__ = (
        f":func:`{stage.__name__}` for a trained run: its ``which`` checkpoint and data "
        "config.\n\nRaises:\n    FileNotFoundError: no checkpoint (train the run first) "
        "or no data at ``data.root``."
    )
    return run


align_run = _run_stage(align_model, Path(rf.ALIGNMENT_DONE))
concepts_run = _run_stage(concepts_model, Path(rf.CONCEPTS_DONE))
analyse_run = _run_stage(analyse_model, Path(rf.ANALYSIS_DONE))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``imbalens analyse``."""
    parser.add_argument("run_dir", type=Path, help="a trained run folder")
    parser.add_argument("--force", action="store_true", help="redo a finished analysis")
    parser.add_argument("--limit", type=int, default=None, help="first N boxed images only")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint")


def cli(args: argparse.Namespace) -> int:
    """Run ``imbalens analyse`` (both stages)."""
    result = analyse_run(args.run_dir, args.device, args.limit, args.force, args.which)
    log.info("analysis of %s: %s", args.run_dir, json.dumps(result))
    return 0
