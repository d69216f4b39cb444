"""Predictions and performance of a model on a split; re-evaluating a trained run.

:func:`predict` runs a model over a data set (sharded over DDP ranks, gathered, padding
removed) and returns logits and targets in data-set order. :func:`write_predictions`
writes ``predictions_<split>.csv`` (``image``, then ``prob:<class>`` for each class, then
``target:<class>``), with probabilities ``p = sigmoid(logit)``.
:func:`evaluate_run` reloads a run's best (or last) checkpoint and recomputes its
predictions and :func:`imbalens.training.metrics.performance` on a split; the CLI command
``imbalens evaluate RUN_DIR [--which best|last] [--split test|val]`` calls it.
Where and how the model runs (device, precision, memory format, DDP rank, progress
bars) comes in one :class:`imbalens.training.runtime.Runtime`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imbalens import runfolder as rf
from imbalens.io import atomic_write_csv, atomic_write_json
from imbalens.training.distributed import EpochSampler, SeededDataset, gather_arrays
from imbalens.training.precision import resolve_precision
from imbalens.training.runtime import Runtime

log = logging.getLogger(__name__)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rt: Runtime) -> DataLoader:
    """A non-shuffled loader over this rank's shard of ``dataset``."""
    sampler = EpochSampler(dataset, rt.info, shuffle=False, seed=0)
    return DataLoader(
        SeededDataset(dataset, 0),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=rt.device.type == "cuda",
    )


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: DataLoader,
    rt: Runtime,
    bars: bool = False,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits and targets of every sample of ``loader``'s data set, in data-set order.

    Args:
        model: the network (put in eval mode).
        loader: a loader of ``{"image", "target", "sample"}`` batches.
        rt: device, precision, memory format and DDP position.
        bars: show a tqdm bar labelled ``desc``.

    Returns:
        ``(indices, logits (N, K) float32, targets (N, K) float32)``, identical on every
        rank; with DDP the shards are gathered and the sampler's padding dropped.
    """
    model.eval()
    idx, logits, targets = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not bars, leave=False):
        images = batch["image"].to(rt.device, non_blocking=True, memory_format=rt.memory_format)
        with rt.autocast():
            out = model(images)
        logits.append(out.float().cpu().numpy())
        targets.append(batch["target"].float().numpy())
        idx.append(np.asarray(batch["sample"], dtype=np.int64))
    k = logits[0].shape[1] if logits else 0
    indices, arrays = gather_arrays(
        np.concatenate(idx) if idx else np.zeros(0, np.int64),
        {
            "logits": np.concatenate(logits) if logits else np.zeros((0, k), np.float32),
            "targets": np.concatenate(targets) if targets else np.zeros((0, k), np.float32),
        },
        rt.info,
    )
    return indices, arrays["logits"], arrays["targets"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function $$\\sigma(x) = 1 / (1 + e^{-x})$$."""
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)


def predictions_frame(
    names: list[str], probs: np.ndarray, targets: np.ndarray, class_names: list[str]
) -> pd.DataFrame:
    """One row per image: ``image``, ``prob:<class>``..., ``target:<class>``...."""
    if len(names) != len(probs) or probs.shape != targets.shape:
        raise ValueError(
            f"{len(names)} names, probs {probs.shape}, targets {targets.shape} do not match"
        )
    frame = {"image": list(names)}
    frame.update({f"prob:{c}": probs[:, j] for j, c in enumerate(class_names)})
    frame.update({f"target:{c}": targets[:, j].astype(int) for j, c in enumerate(class_names)})
    return pd.DataFrame(frame)


def write_predictions(path: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """Write a predictions frame as CSV (7 significant digits), atomically."""
    atomic_write_csv(path, frame, float_format="%.7g")


def score_split(
    model: nn.Module,
    dataset: Dataset,
    class_names: list[str],
    rt: Runtime,
    batch_size: int,
    workers: int,
    split: str = "test",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predictions frame and :func:`imbalens.training.metrics.performance` of ``model`` on
    ``dataset`` (progress bars as ``rt.bars``, labelled ``split``)."""
    from imbalens.training.metrics import performance

    loader = eval_loader(dataset, batch_size, workers, rt)
    indices, logits, targets = predict(model, loader, rt, rt.bars, desc=split)
    probs = sigmoid(logits)
    names = [dataset.names[i] for i in indices]  # type: ignore[attr-defined]
    return predictions_frame(names, probs, targets, class_names), performance(
        probs, targets, class_names
    )


def evaluate_run(
    run_dir: str | os.PathLike[str],
    which: str = "best",
    split: str = "test",
    device: str = "cpu",
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Recompute predictions and metrics of a trained run's checkpoint on ``split``.

    Writes ``predictions.csv`` and ``metrics.json`` into ``out`` (default
    ``RUN_DIR/evaluation/<which>-<split>/``), leaving the training's own files alone.

    Returns:
        The :func:`imbalens.training.metrics.performance` dict plus ``which``, ``split``, ``epoch``.
    """
    from imbalens.data.nih import load_nih_from_config
    from imbalens.training.checkpoint import load_checkpoint, load_model_from_run

    if split not in ("test", "val", "train", "boxed"):
        raise ValueError(f"split={split!r}: use test, val, train or boxed")
    run = Path(run_dir)
    dev = torch.device(device)
    model, cfg = load_model_from_run(run, which=which, map_location=dev)
    d, t = cfg["data"], cfg["train"]
    data = load_nih_from_config(d)
    dataset = data.dataset(split, d["image_size"], augment=False, cache=False)
    rt = Runtime(dev, resolve_precision(t["precision"], dev), bool(t["channels_last"]))
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    frame, metrics = score_split(
        model,
        dataset,
        list(data.class_names),
        rt,
        int(t["eval_batch_size"]),
        int(t["workers"]),
        split=split,
    )
    epoch = load_checkpoint(run / rf.CHECKPOINTS / f"{which}.pt").get("epoch")
    metrics = {**metrics, "which": which, "split": split, "epoch": epoch}
    dest = Path(out) if out is not None else run / "evaluation" / f"{which}-{split}"
    write_predictions(dest / "predictions.csv", frame)
    atomic_write_json(dest / rf.METRICS, metrics)
    log.info(
        "%s %s %s: auroc_mean %.4f ap_mean %.4f",
        run.name,
        which,
        split,
        metrics["auroc_mean"],
        metrics["ap_mean"],
    )
    return metrics


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``imbalens evaluate``."""
    parser.add_argument("run_dir", type=Path, help="a run folder written by `imbalens train`")
    parser.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint")
    parser.add_argument("--split", choices=("test", "val", "boxed", "train"), default="test")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=None, help="output folder")


def cli(args: argparse.Namespace) -> int:
    """Run ``imbalens evaluate``; prints the macro AUROC/AP."""
    m = evaluate_run(args.run_dir, args.which, args.split, args.device, args.out)
    auroc, ap = m["auroc_mean"], m["ap_mean"]
    print(
        f"{args.run_dir} {args.which} {args.split}: auroc_mean {auroc:.4f} ap_mean {ap:.4f}"
        + ("" if math.isfinite(auroc) else " (undefined: no positives)")
    )
    return 0
