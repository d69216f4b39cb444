"""Training engine: the paper's recipe, resumable, deterministic on CPU, DDP-ready.

Reads top-down like torchvision's ``references/classification/train.py``:
:func:`load_data`, :func:`train_one_epoch`, :func:`evaluate`, then :func:`train`, whose
steps are each a function: a :class:`~imbalens.training.runtime.Runtime` (device,
precision, memory format, progress, DDP rank; frozen, passed to every loop), the resume
point, :func:`build_loaders`, :func:`build_learner` (restored, then :func:`distribute`),
the epoch loop (:func:`record_epoch` after each) and the best checkpoint's scores. Recipe (Khakzar, Li et al. 2022, Sec. 3; official code imba-explain):
Adam (lr 4e-4, weight decay 1e-6), per-iteration cosine annealing with an optional
linear warm-up, the checkpoint with the best validation macro AUROC kept.

Learning rate at iteration $t$ of $T$ (mmcv's ``CosineAnnealing`` with linear warm-up,
as in the official code), $\\eta_0$ = ``lr``, $r$ = ``min_lr_ratio``, $w$ =
``warmup_ratio``, $W$ = ``warmup_iters``:

$$\\eta_t = \\eta_0 \\Big[r + (1 - r)\\tfrac{1 + \\cos(\\pi t / T)}{2}\\Big]
\\cdot \\Big[1 - (1 - \\tfrac{t}{W})(1 - w)\\Big]_{t < W}$$

(the second factor is 1 for $t \\ge W$; ``warmup_iters`` 0 means no warm-up; the
official code warms up for 1,000 iterations from 0.01 lr and ends at 0.01 lr).

Run folder (``out``): ``config.yaml`` (resolved, written first), ``history.csv`` (one row
per epoch), ``checkpoints/last.pt`` (every epoch, and every ``checkpoint_every_steps``
steps) and ``checkpoints/best.pt``, then ``predictions_val.csv``,
``predictions_test.csv``, ``metrics_val.json``, ``metrics.json`` (test) and finally the
marker ``train.done``. All files are written atomically. A run whose folder holds
``checkpoints/last.pt`` but no ``train.done`` resumes where it stopped (model, optimiser,
scheduler, epoch, step within the epoch, RNG states and sampler position), and ends with
the same metrics and weights as an uninterrupted run (CPU, fp32).

Every key has its default in :data:`imbalens.config.DEFAULTS`; a partial config is
completed from there.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from imbalens import runfolder as rf
from imbalens.config import ConfigError, config_hash, dump_config, load_config, merge_config
from imbalens.data.prepared import open_prepared
from imbalens.data.transforms import augment_batch, normalize_batch
from imbalens.io import atomic_write_csv, atomic_write_json, atomic_write_text
from imbalens.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from imbalens.training.distributed import (
    DistInfo,
    EpochSampler,
    SeededDataset,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    per_rank_batch,
    steps_per_epoch,
    sync_buffers,
)
from imbalens.training.evaluate import predict, score_split, sigmoid, write_predictions
from imbalens.training.precision import make_grad_scaler
from imbalens.training.progress import step_progress
from imbalens.training.runtime import Runtime, select_device

log = logging.getLogger(__name__)

CRASH_ENV = "IMBALENS_TEST_CRASH_AFTER_STEP"
"""Test hook: the process ends itself with ``os._exit(CRASH_EXIT_CODE)`` right after
optimiser step K (and after any checkpoint due at that step), like a killed job."""
CRASH_EXIT_CODE = 75

HISTORY_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_auroc_mean", "seconds")

# keys that may change between an interrupted run and its resumption
_RESUME_FREE = {
    ("train", "progress"),
    ("train", "workers"),
    ("train", "device"),
    ("train", "checkpoint_every_steps"),
}


# --------------------------------------------------------------------------- config
def _resume_key(cfg: dict[str, Any]) -> str:
    c = copy.deepcopy(cfg)
    for section, key in _RESUME_FREE:
        c.get(section, {}).pop(key, None)
    return config_hash(c)


# --------------------------------------------------------------------------- set-up
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed torch, numpy and ``random``; with ``deterministic``, deterministic kernels.

    :func:`train` asks for deterministic kernels on CPU (where they cost little) and lets
    cuDNN pick the fastest ones on CUDA (``cudnn.benchmark``), so GPU runs are seeded but
    not bitwise reproducible.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and ``random`` follow the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)


class WarmupCosine:
    """LR factor of iteration ``t``: cosine from 1 to ``min_ratio`` over ``total`` steps,
    times a linear warm-up from ``warmup_ratio`` to 1 over ``warmup_iters`` steps."""

    def __init__(
        self, total: int, min_ratio: float, warmup_iters: int, warmup_ratio: float
    ) -> None:
        self.total = max(1, int(total))
        self.min_ratio = float(min_ratio)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, t: int) -> float:
        progress = min(t, self.total) / self.total
        factor = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if t < self.warmup_iters:
            factor *= 1 - (1 - t / self.warmup_iters) * (1 - self.warmup_ratio)
        return factor


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"adam": torch.optim.Adam}
"""Registry of optimisers (the paper uses Adam)."""


def build_optimizer(model: nn.Module, t: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam(lr, weight_decay) over all parameters (``train.optimizer`` picks another)."""
    name = t.get("optimizer", "adam")
    if name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={name!r} unknown; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](
        model.parameters(), lr=float(t["lr"]), weight_decay=float(t["weight_decay"])
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, t: dict[str, Any], total_iters: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration :class:`WarmupCosine` schedule."""
    rule = WarmupCosine(
        total_iters, t["min_lr_ratio"], t.get("warmup_iters") or 0, t["warmup_ratio"]
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, rule)


@dataclass
class Progress:
    """Where training stands: what a checkpoint stores besides the weights."""

    epoch: int = 0  # epoch in progress (epochs before it are finished)
    step: int = 0  # optimiser steps already done in ``epoch``
    global_step: int = 0
    loss_sum: float = 0.0  # sum of per-step train losses in ``epoch``
    best_metric: float = -math.inf
    best_epoch: int = -1
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def load_data(cfg: dict[str, Any]) -> tuple[Any, dict[str, Dataset]]:
    """The NIH-layout data (real or phantom) and its train/val/test data sets."""
    from imbalens.data.nih import load_nih_from_config

    d = cfg["data"]
    data = load_nih_from_config(d)
    size, cache = int(d["image_size"]), bool(d["cache"])
    prepared = open_prepared(d["root"], d["prepared"], size) if d["prepared"] else None
    raw = d["augment_on"] == "device"  # train items stay uint8; the loop augments batches
    datasets = {
        "train": data.dataset("train", size, bool(d["augment"]), cache, prepared=prepared, raw=raw),
        "val": data.dataset("val", size, False, cache, prepared=prepared),
        "test": data.dataset("test", size, False, cache, prepared=prepared),
    }
    return data, datasets


def model_input(
    images: torch.Tensor,
    device: torch.device,
    memory_format: torch.memory_format,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """A loader batch on ``device`` as model input.

    Float batches (augmented and normalised per image in the loader) are only moved; a
    ``uint8`` batch (``data.augment_on: device``) is moved as bytes, then augmented with
    :func:`imbalens.data.transforms.augment_batch` when ``generator`` is given, otherwise
    only normalised.
    """
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = (
            augment_batch(images, generator)[0]
            if generator is not None
            else normalize_batch(images)
        )
    return images.contiguous(memory_format=memory_format)


def plateaued(state: Progress, patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs have passed since the best validation AUROC.

    $$ \\text{stop after epoch } e \\iff e - e^{*} \\ge p, $$ with $e^{*}$ the best epoch
    (1-based) and $p$ = ``train.patience`` (None: never). A function of the saved state,
    so a run killed after it stopped does not train on when resumed.
    """
    return (
        bool(patience) and state.best_epoch > 0 and state.epoch - state.best_epoch >= int(patience)
    )


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The device augmentation's generator of one optimiser step: a function of
    (seed, global step) only, so a resumed run draws the same crops."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


# --------------------------------------------------------------------------- bundles
@dataclass(frozen=True)
class TrainData:
    """The data side of a run: data sets, loaders and the sizes the loop needs.

    ``batch`` and ``eval_batch`` are per rank; ``n_steps`` is the number of optimiser
    steps per epoch; ``augment_seed`` seeds the device augmentation (``None``: the
    loader augments, or no augmentation).
    """

    data: Any
    datasets: dict[str, Dataset]
    class_names: list[str]
    batch: int
    eval_batch: int
    n_steps: int
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader
    augment_seed: int | None


@dataclass(frozen=True)
class Learner:
    """What an optimiser step touches: the model, the loss, the optimiser, its schedule,
    the fp16 gradient scaler (``None`` otherwise), and ``net``, the module the loop calls
    (the model wrapped in ``DistributedDataParallel`` under torchrun, else the model)."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    net: nn.Module

    def checkpoint(self, state: Progress, cfg: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint dict of this learner at ``state`` (see :mod:`.checkpoint`)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": cfg,
            "rng": rng_state(),
            **asdict(state),
        }


# --------------------------------------------------------------------------- loops
def train_one_epoch(
    learner: Learner,
    loader: DataLoader,
    rt: Runtime,
    state: Progress,
    n_steps: int,
    on_step: Callable[[Progress], None] | None = None,
    augment_seed: int | None = None,
) -> None:
    """Run optimiser steps ``state.step .. n_steps-1`` of epoch ``state.epoch``.

    A ``uint8`` batch (``data.augment_on: device``) is augmented on ``rt.device`` with a
    generator seeded from ``(augment_seed, global step)`` (:func:`model_input`); with
    ``augment_seed=None`` it is only normalised.

    The per-step loss of the global batch is summed into ``state.loss_sum``; ``on_step``
    is called after every step (checkpointing, the crash hook). DDP averages gradients
    over ranks, which is the global batch's gradient for a ``mean`` loss; a ``sum`` loss
    (the paper's reduction) is scaled by the world size W before ``backward``, so that
    W ranks of batch B/W take the step one process of batch B takes (tests/training/test_ddp.py).

    Raises:
        FloatingPointError: a non-finite loss (fp32/bf16), naming epoch and step.
    """
    criterion = learner.criterion
    learner.net.train()
    bar = step_progress(
        rt.progress,
        n_steps,
        state.step,
        f"epoch {state.epoch + 1}",
        int(loader.batch_size or 1),
        is_main=rt.info.is_main,
    )
    # sum over the global batch = W x the mean over ranks of each rank's sum
    ranks = rt.info.world_size if getattr(criterion, "reduction", "mean") == "sum" else 1
    batches = iter(loader)
    while state.step < n_steps:
        batch = next(batches)
        gen = (
            None
            if augment_seed is None
            else _step_generator(augment_seed, state.global_step, rt.device)
        )
        images = model_input(batch["image"], rt.device, rt.memory_format, gen)
        targets = batch["target"].to(rt.device, non_blocking=True).float()
        with rt.autocast():
            logits = learner.net(images)
        loss = criterion(logits.float(), targets)
        if not torch.isfinite(loss) and learner.scaler is None:
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {state.epoch + 1} step {state.step + 1}: "
                "lower train.lr or use precision fp32"
            )
        _optimiser_step(learner, loss * ranks)
        state.loss_sum += ranks * all_reduce_mean(loss.item(), rt.info, rt.device)
        state.step += 1
        state.global_step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{state.loss_sum / state.step:.4f}")
        if on_step is not None:
            on_step(state)
    bar.close()


def _optimiser_step(learner: Learner, loss: torch.Tensor) -> None:
    """Backward ``loss`` (scaled by the fp16 gradient scaler, if any), step the
    optimiser, then the per-iteration schedule."""
    optimizer, scaler = learner.optimizer, learner.scaler
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    learner.scheduler.step()


def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    class_names: list[str],
    rt: Runtime,
) -> tuple[float, dict[str, Any]]:
    """Validation loss (the training loss on the whole split at once) and performance."""
    from imbalens.training.metrics import performance

    _, logits, targets = predict(model, loader, rt, desc="val")
    with torch.no_grad():
        val_loss = float(
            criterion(
                torch.from_numpy(logits).to(rt.device), torch.from_numpy(targets).to(rt.device)
            )
        )
    return val_loss, performance(sigmoid(logits), targets, class_names)


# --------------------------------------------------------------------------- building
def build_loaders(cfg: dict[str, Any], rt: Runtime) -> TrainData:
    """The run's data sets (:func:`load_data`), per-rank batch sizes, the seeded train
    sampler and loader, and the validation loader."""
    t, info = cfg["train"], rt.info
    seed = int(t["seed"])
    data, datasets = load_data(cfg)
    batch = per_rank_batch(int(t["batch_size"]), info)
    eval_batch = per_rank_batch(int(t["eval_batch_size"]), info, "train.eval_batch_size")
    n_steps = steps_per_epoch(
        len(datasets["train"]), int(t["batch_size"]), t["max_steps_per_epoch"]
    )
    sampler = EpochSampler(datasets["train"], info, shuffle=True, seed=seed)
    on_device = cfg["data"]["augment_on"] == "device" and bool(cfg["data"]["augment"])
    # each rank draws its own crops: (seed, rank) -> one stream, steps index into it
    augment_seed = seed * 4099 + info.rank if on_device else None
    loader_kw: dict[str, Any] = {
        "num_workers": int(t["workers"]),
        "pin_memory": rt.device.type == "cuda",
        "worker_init_fn": seed_worker,
        "generator": torch.Generator().manual_seed(seed),
    }
    train_loader = DataLoader(
        SeededDataset(datasets["train"], seed), batch_size=batch, sampler=sampler, **loader_kw
    )
    val_loader = DataLoader(
        SeededDataset(datasets["val"], 0),
        batch_size=eval_batch,
        sampler=EpochSampler(datasets["val"], info, shuffle=False, seed=0),
        **loader_kw,
    )
    return TrainData(
        data,
        datasets,
        list(data.class_names),
        batch,
        eval_batch,
        n_steps,
        sampler,
        train_loader,
        val_loader,
        augment_seed,
    )


def build_learner(cfg: dict[str, Any], data: TrainData, rt: Runtime) -> Learner:
    """Model (on ``rt.device``, in ``rt.memory_format``), loss, optimiser, schedule and
    gradient scaler of a config; ``net`` is the model itself (see :func:`distribute`).

    Raises:
        ConfigError: ``train.sync_bn`` under DDP on CPU (no SyncBatchNorm kernel there).
    """
    from imbalens.training.losses import build_loss
    from imbalens.training.models import build_model

    t, m, loss = cfg["train"], cfg["model"], cfg["loss"]
    model = build_model(m["name"], len(data.class_names), m["weights"], m["zero_init_residual"])
    if t["sync_bn"] and rt.info.distributed:
        if rt.device.type == "cpu":
            raise ConfigError(
                "train.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                "set train.sync_bn=false for CPU/gloo runs"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(rt.device, memory_format=rt.memory_format)
    pos, neg = data.data.counts("train")
    criterion = build_loss(
        loss["name"],
        pos,
        neg,
        variant=loss["variant"],
        reduction=loss.get("reduction", "auto"),
        **loss["hyper"],
    ).to(rt.device)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, data.n_steps * int(t["epochs"]))
    scaler = make_grad_scaler(rt.device, rt.precision)
    return Learner(model, criterion, optimizer, scheduler, scaler, net=model)


def distribute(learner: Learner, rt: Runtime) -> Learner:
    """The learner with ``net`` wrapped in ``DistributedDataParallel`` under torchrun
    (unchanged in a single process). Call it after loading any resumed weights: DDP
    broadcasts rank 0's parameters when it wraps the model."""
    if not rt.info.distributed:
        return learner
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return replace(learner, net=DistributedDataParallel(learner.model, device_ids=ids))


# --------------------------------------------------------------------------- resuming
def _open_run(cfg: dict[str, Any], out: Path, rt: Runtime) -> dict[str, Any] | None:
    """The run folder's ``last.pt`` to resume from (``None``: a fresh run); rank 0 then
    writes the resolved ``config.yaml``.

    Raises:
        ConfigError: ``last.pt`` was written with another config (up to the keys that
            may change between an interrupted run and its resumption).
    """
    ckpt_dir = out / rf.CHECKPOINTS
    last_path = ckpt_dir / rf.LAST
    resume = load_checkpoint(last_path, map_location=rt.device) if last_path.is_file() else None
    if resume is not None and _resume_key(merge_config(resume["config"])) != _resume_key(cfg):
        raise ConfigError(
            f"{last_path} was written with another config than the one given "
            f"(see {out / 'config.yaml'}); train into a new folder or delete "
            f"{ckpt_dir} to restart"
        )
    if rt.info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / rf.CONFIG)
    return resume


def _restore(learner: Learner, resume: dict[str, Any]) -> Progress:
    """Load a checkpoint's weights, optimiser, schedule, scaler and RNG states into
    place; return its :class:`Progress`."""
    learner.model.load_state_dict(resume["model"])
    learner.optimizer.load_state_dict(resume["optimizer"])
    learner.scheduler.load_state_dict(resume["scheduler"])
    if learner.scaler is not None and resume.get("scaler"):
        learner.scaler.load_state_dict(resume["scaler"])
    state = Progress(**{k: resume[k] for k in Progress.__dataclass_fields__})
    set_rng_state(resume["rng"])
    return state


def _step_hook(
    cfg: dict[str, Any], out: Path, learner: Learner, rt: Runtime, n_steps: int
) -> Callable[[Progress], None]:
    """The loop's ``on_step``: ``last.pt`` every ``train.checkpoint_every_steps`` steps
    (not at an epoch's last step, which the epoch's end saves), then the
    :data:`CRASH_ENV` test hook."""
    every = cfg["train"]["checkpoint_every_steps"]
    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    last_path = out / rf.CHECKPOINTS / rf.LAST

    def on_step(s: Progress) -> None:
        if every and s.global_step % int(every) == 0 and s.step < n_steps:
            sync_buffers(learner.model, rt.info)
            if rt.info.is_main:
                save_checkpoint(last_path, learner.checkpoint(s, cfg))
            barrier(rt.info)
        if crash_after and s.global_step == crash_after:
            log.warning("%s=%d: exiting after step %d", CRASH_ENV, crash_after, s.global_step)
            os._exit(CRASH_EXIT_CODE)

    return on_step


# --------------------------------------------------------------------------- epochs
def record_epoch(
    state: Progress, lr: float, val_loss: float, score: float, seconds: float
) -> tuple[dict[str, float], bool]:
    """Close epoch ``state.epoch``: append its history row, update the best epoch (the
    first epoch, then any with a finite, higher validation macro AUROC ``score``), and
    move ``state`` to the start of the next epoch.

    Returns:
        The history row and whether this epoch is the new best.
    """
    row = {
        "epoch": state.epoch + 1,
        "step": state.global_step,
        "lr": lr,
        "train_loss": state.loss_sum / max(1, state.step),
        "val_loss": val_loss,
        "val_auroc_mean": score,
        "seconds": seconds,
    }
    state.history.append(row)
    is_best = state.best_epoch < 0 or (math.isfinite(score) and score > state.best_metric)
    if is_best:
        state.best_metric = score if math.isfinite(score) else -math.inf
        state.best_epoch = state.epoch + 1
    state.epoch, state.step, state.loss_sum = state.epoch + 1, 0, 0.0
    state.seconds += seconds
    return row, is_best


def _save_epoch(
    cfg: dict[str, Any], out: Path, learner: Learner, state: Progress, is_best: bool
) -> None:
    """Rank 0's files at an epoch's end: ``best.pt`` (if best), ``last.pt``, the history."""
    ckpt_dir = out / rf.CHECKPOINTS
    ckpt = learner.checkpoint(state, cfg)
    if is_best:
        save_checkpoint(ckpt_dir / rf.BEST, ckpt)
    save_checkpoint(ckpt_dir / rf.LAST, ckpt)
    _write_history(out / rf.HISTORY, state.history)


def _fit(
    cfg: dict[str, Any],
    out: Path,
    rt: Runtime,
    data: TrainData,
    learner: Learner,
    state: Progress,
) -> None:
    """The epoch loop, from ``state`` to ``train.epochs`` or early stopping: train,
    validate, record, save, log."""
    t = cfg["train"]
    epochs, patience = int(t["epochs"]), t["patience"]
    on_step = _step_hook(cfg, out, learner, rt, data.n_steps)
    say = _say(rt.info)
    while state.epoch < epochs and not plateaued(state, patience):
        tic = time.perf_counter()
        data.sampler.set_epoch(state.epoch)
        data.sampler.set_start(state.step * data.batch)
        train_one_epoch(
            learner, data.train_loader, rt, state, data.n_steps, on_step, data.augment_seed
        )
        sync_buffers(learner.model, rt.info)
        val_loss, val_perf = evaluate(
            learner.model, learner.criterion, data.val_loader, data.class_names, rt
        )
        seconds = time.perf_counter() - tic
        lr = learner.optimizer.param_groups[0]["lr"]
        row, is_best = record_epoch(state, lr, val_loss, val_perf["auroc_mean"], seconds)
        if rt.info.is_main:
            _save_epoch(cfg, out, learner, state, is_best)
        barrier(rt.info)
        say(
            "epoch %d/%d step %d lr %.3g train_loss %.4f val_loss %.4f val_auroc %.4f%s (%.1f s)",
            row["epoch"],
            epochs,
            row["step"],
            row["lr"],
            row["train_loss"],
            val_loss,
            row["val_auroc_mean"],
            " *" if is_best else "",
            seconds,
        )
    if state.epoch < epochs:
        say(
            "stopped after epoch %d of %d: no better val AUROC for %d epochs (train.patience)",
            state.epoch,
            epochs,
            patience,
        )


def _score_best(
    cfg: dict[str, Any],
    out: Path,
    rt: Runtime,
    data: TrainData,
    learner: Learner,
    state: Progress,
) -> dict[str, Any]:
    """The best checkpoint on val and test: predictions, metrics, then ``train.done``."""
    best = load_checkpoint(out / rf.CHECKPOINTS / rf.BEST, map_location=rt.device)
    learner.model.load_state_dict(best["model"])
    workers = int(cfg["train"]["workers"])
    results: dict[str, dict[str, Any]] = {}
    for split in ("val", "test"):
        frame, perf = score_split(
            learner.model,
            data.datasets[split],
            data.class_names,
            rt,
            data.eval_batch,
            workers,
            split,
        )
        results[split] = {**perf, "best_epoch": state.best_epoch, "seconds": state.seconds}
        if rt.info.is_main:
            write_predictions(out / rf.PREDICTIONS.format(split=split), frame)
    if rt.info.is_main:
        atomic_write_json(out / rf.METRICS_VAL, results["val"])
        atomic_write_json(out / rf.METRICS, results["test"])
        atomic_write_text(out / rf.TRAIN_DONE, time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    barrier(rt.info)
    _say(rt.info)(
        "%s: best epoch %d, test auroc_mean %.4f ap_mean %.4f",
        out,
        state.best_epoch,
        results["test"]["auroc_mean"],
        results["test"]["ap_mean"],
    )
    return results["test"]


# --------------------------------------------------------------------------- main
def _say(info: DistInfo) -> Callable[..., None]:
    """``log.info`` on rank 0, ``log.debug`` elsewhere: one summary line, not one per rank."""
    return log.info if info.is_main else log.debug


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    atomic_write_csv(path, frame, float_format="%.7g")


def _finished(out: Path) -> dict[str, Any]:
    log.info("%s: train.done exists, nothing to do", out)
    return json.loads((out / rf.METRICS).read_text())


def train(cfg: dict[str, Any], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Train one run into ``out``; resume it if interrupted; return the test metrics.

    Args:
        cfg: a config (:func:`imbalens.config.merge_config`); missing keys take
            their defaults from :data:`imbalens.config.DEFAULTS`.
        out: run folder.

    Returns:
        :func:`imbalens.training.metrics.performance` of the best checkpoint on the test split,
        plus ``best_epoch`` and ``seconds`` (also written to ``metrics.json``).
    """
    out = Path(out)
    if (out / rf.TRAIN_DONE).is_file():
        return _finished(out)
    cfg = merge_config(cfg)
    t = cfg["train"]
    device_guess = select_device(t["device"], DistInfo())
    info = init_distributed(device_guess.type)
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        return _train(cfg, out, info)
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        cleanup(info)


def _train(cfg: dict[str, Any], out: Path, info: DistInfo) -> dict[str, Any]:
    """One process's part of :func:`train`, top-down: runtime, seed, resume point, data,
    learner (restored, then wrapped for DDP), the epoch loop, the best checkpoint's scores."""
    t = cfg["train"]
    rt = Runtime.from_config(t, info)
    say = _say(info)
    seed_everything(int(t["seed"]), deterministic=rt.device.type == "cpu")
    resume = _open_run(cfg, out, rt)
    say(
        "%s: device %s, precision %s, channels_last %s, %d process(es)",
        out,
        rt.device,
        rt.precision,
        rt.channels_last,
        info.world_size,
    )
    data = build_loaders(cfg, rt)
    learner = build_learner(cfg, data, rt)
    state = Progress()
    if resume is not None:
        state = _restore(learner, resume)
        del resume  # the checkpoint's tensors are no longer needed
        say("resuming %s at epoch %d step %d", out, state.epoch + 1, state.step)
    learner = distribute(learner, rt)
    _fit(cfg, out, rt, data, learner, state)
    return _score_best(cfg, out, rt, data, learner, state)


# --------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``imbalens train``."""
    parser.add_argument("--config", type=Path, default=None, help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=2 (repeatable)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder")


def cli(args: argparse.Namespace) -> int:
    """Run ``imbalens train``."""
    cfg = load_config(args.config, args.overrides)
    metrics = train(cfg, args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{args.out}: test auroc_mean {metrics['auroc_mean']:.4f} "
            f"ap_mean {metrics['ap_mean']:.4f} (best epoch {metrics['best_epoch']})"
        )
    return 0


__all__ = [
    "Learner",
    "Progress",
    "TrainData",
    "WarmupCosine",
    "build_learner",
    "build_loaders",
    "build_optimizer",
    "build_scheduler",
    "distribute",
    "evaluate",
    "load_data",
    "record_epoch",
    "seed_everything",
    "train",
    "train_one_epoch",
]
