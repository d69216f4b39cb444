"""Training engine: the paper's recipe, resumable, deterministic on CPU, DDP-ready.

Reads top-down like torchvision's ``references/classification/train.py``:
:func:`load_data`, :func:`train_one_epoch`, :func:`evaluate`, then :func:`train` (the
main loop). Recipe (Khakzar, Li et al. 2022, Sec. 3; official code imba-explain):
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from imbalens import runfolder as rf
from imbalens.config import (
    ConfigError,
    atomic_write_text,
    config_hash,
    dump_config,
    load_config,
    merge_config,
)
from imbalens.data.prepared import open_prepared
from imbalens.data.transforms import augment_batch, normalize_batch
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
from imbalens.training.evaluate import (
    predict,
    progress_enabled,
    score_split,
    sigmoid,
    write_json,
    write_predictions,
)
from imbalens.training.precision import autocast_context, make_grad_scaler, resolve_precision
from imbalens.training.progress import parse_progress, step_progress

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


def select_device(setting: str, info: DistInfo) -> torch.device:
    """``auto``: CUDA when available (``cuda:LOCAL_RANK`` under DDP), else CPU."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    return device


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


# --------------------------------------------------------------------------- loops
def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    loader: DataLoader,
    device: torch.device,
    precision: str,
    channels_last: bool,
    state: Progress,
    n_steps: int,
    info: DistInfo,
    on_step: Callable[[Progress], None] | None = None,
    progress: bool | str = False,
    augment_seed: int | None = None,
) -> None:
    """Run optimiser steps ``state.step .. n_steps-1`` of epoch ``state.epoch``.

    A ``uint8`` batch (``data.augment_on: device``) is augmented on ``device`` with a
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
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    bar = step_progress(
        progress, n_steps, state.step, f"epoch {state.epoch + 1}", int(loader.batch_size or 1)
    )
    # sum over the global batch = W x the mean over ranks of each rank's sum
    ranks = info.world_size if getattr(criterion, "reduction", "mean") == "sum" else 1
    batches = iter(loader)
    while state.step < n_steps:
        batch = next(batches)
        gen = (
            None
            if augment_seed is None
            else _step_generator(augment_seed, state.global_step, device)
        )
        images = model_input(batch["image"], device, memory_format, gen)
        targets = batch["target"].to(device, non_blocking=True).float()
        with autocast_context(device, precision):
            logits = model(images)
        loss = criterion(logits.float(), targets)
        if not torch.isfinite(loss) and scaler is None:
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {state.epoch + 1} step {state.step + 1}: "
                "lower train.lr or use precision fp32"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss * ranks).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            (loss * ranks).backward()
            optimizer.step()
        scheduler.step()
        state.loss_sum += ranks * all_reduce_mean(loss.item(), info, device)
        state.step += 1
        state.global_step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{state.loss_sum / state.step:.4f}")
        if on_step is not None:
            on_step(state)
    bar.close()


def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    class_names: list[str],
    device: torch.device,
    precision: str,
    channels_last: bool,
    info: DistInfo,
    progress: bool = False,
) -> tuple[float, dict[str, Any]]:
    """Validation loss (the training loss on the whole split at once) and performance."""
    from imbalens.training.metrics import performance

    _, logits, targets = predict(
        model, loader, device, precision, channels_last, info, progress, desc="val"
    )
    with torch.no_grad():
        val_loss = float(
            criterion(torch.from_numpy(logits).to(device), torch.from_numpy(targets).to(device))
        )
    return val_loss, performance(sigmoid(logits), targets, class_names)


# --------------------------------------------------------------------------- main
def _checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    state: Progress,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "config": cfg,
        "rng": rng_state(),
        **asdict(state),
    }


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.7g"))


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
    from imbalens.training.losses import build_loss
    from imbalens.training.models import build_model

    t = cfg["train"]
    device = select_device(t["device"], info)
    precision = resolve_precision(t["precision"], device)
    channels_last = bool(t["channels_last"])
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    mode = parse_progress(t["progress"])  # auto | on | off (YAML true/false), else an error
    bars = progress_enabled(mode, info)
    say = log.info if info.is_main else log.debug  # one summary line per epoch, not per rank
    seed = int(t["seed"])
    seed_everything(seed, deterministic=device.type == "cpu")
    ckpt_dir = out / rf.CHECKPOINTS
    last_path = ckpt_dir / rf.LAST
    resume = load_checkpoint(last_path, map_location=device) if last_path.is_file() else None
    if resume is not None and _resume_key(merge_config(resume["config"])) != _resume_key(cfg):
        raise ConfigError(
            f"{last_path} was written with another config than the one given "
            f"(see {out / 'config.yaml'}); train into a new folder or delete "
            f"{ckpt_dir} to restart"
        )
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / rf.CONFIG)

    say(
        "%s: device %s, precision %s, channels_last %s, %d process(es)",
        out,
        device,
        precision,
        channels_last,
        info.world_size,
    )

    # data
    data, datasets = load_data(cfg)
    class_names = list(data.class_names)
    batch = per_rank_batch(int(t["batch_size"]), info)
    eval_batch = per_rank_batch(int(t["eval_batch_size"]), info, "train.eval_batch_size")
    n_steps = steps_per_epoch(
        len(datasets["train"]), int(t["batch_size"]), t["max_steps_per_epoch"]
    )
    epochs = int(t["epochs"])
    sampler = EpochSampler(datasets["train"], info, shuffle=True, seed=seed)
    on_device = cfg["data"]["augment_on"] == "device" and bool(cfg["data"]["augment"])
    # each rank draws its own crops: (seed, rank) -> one stream, steps index into it
    device_augment_seed = seed * 4099 + info.rank if on_device else None
    loader_kw: dict[str, Any] = {
        "num_workers": int(t["workers"]),
        "pin_memory": device.type == "cuda",
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

    # model, loss, optimiser, schedule
    m = cfg["model"]
    model = build_model(m["name"], len(class_names), m["weights"], m["zero_init_residual"])
    if t["sync_bn"] and info.distributed:
        if device.type == "cpu":
            raise ConfigError(
                "train.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                "set train.sync_bn=false for CPU/gloo runs"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=memory_format)
    pos, neg = data.counts("train")
    criterion = build_loss(
        cfg["loss"]["name"],
        pos,
        neg,
        variant=cfg["loss"]["variant"],
        reduction=cfg["loss"].get("reduction", "auto"),
        **cfg["loss"]["hyper"],
    ).to(device)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, n_steps * epochs)
    scaler = make_grad_scaler(device, precision)
    state = Progress()

    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        state = Progress(**{k: resume[k] for k in Progress.__dataclass_fields__})
        set_rng_state(resume["rng"])
        del resume
        say("resuming %s at epoch %d step %d", out, state.epoch + 1, state.step)

    ddp = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.distributed
        else model
    )
    every = t["checkpoint_every_steps"]
    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)

    def on_step(s: Progress) -> None:
        if every and s.global_step % int(every) == 0 and s.step < n_steps:
            sync_buffers(model, info)
            if info.is_main:
                save_checkpoint(
                    last_path, _checkpoint_state(model, optimizer, scheduler, scaler, s, cfg)
                )
            barrier(info)
        if crash_after and s.global_step == crash_after:
            log.warning("%s=%d: exiting after step %d", CRASH_ENV, crash_after, s.global_step)
            os._exit(CRASH_EXIT_CODE)

    patience = t["patience"]
    while state.epoch < epochs and not plateaued(state, patience):
        tic = time.perf_counter()
        sampler.set_epoch(state.epoch)
        sampler.set_start(state.step * batch)
        train_one_epoch(
            ddp,
            criterion,
            optimizer,
            scheduler,
            scaler,
            train_loader,
            device,
            precision,
            channels_last,
            state,
            n_steps,
            info,
            on_step,
            mode if info.is_main else "off",
            device_augment_seed,
        )
        sync_buffers(model, info)
        val_loss, val_perf = evaluate(
            model, criterion, val_loader, class_names, device, precision, channels_last, info
        )
        seconds = time.perf_counter() - tic
        score = val_perf["auroc_mean"]
        row = {
            "epoch": state.epoch + 1,
            "step": state.global_step,
            "lr": optimizer.param_groups[0]["lr"],
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
        if info.is_main:
            ckpt = _checkpoint_state(model, optimizer, scheduler, scaler, state, cfg)
            if is_best:
                save_checkpoint(ckpt_dir / rf.BEST, ckpt)
            save_checkpoint(last_path, ckpt)
            _write_history(out / rf.HISTORY, state.history)
        barrier(info)
        say(
            "epoch %d/%d step %d lr %.3g train_loss %.4f val_loss %.4f val_auroc %.4f%s (%.1f s)",
            row["epoch"],
            epochs,
            row["step"],
            row["lr"],
            row["train_loss"],
            val_loss,
            score,
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
    # final evaluation of the best checkpoint
    best = load_checkpoint(ckpt_dir / rf.BEST, map_location=device)
    model.load_state_dict(best["model"])
    results: dict[str, dict[str, Any]] = {}
    for split in ("val", "test"):
        frame, perf = score_split(
            model,
            datasets[split],
            class_names,
            device,
            precision,
            channels_last,
            eval_batch,
            int(t["workers"]),
            info,
            bars,
            split,
        )
        results[split] = {**perf, "best_epoch": state.best_epoch, "seconds": state.seconds}
        if info.is_main:
            write_predictions(out / rf.PREDICTIONS.format(split=split), frame)
    if info.is_main:
        write_json(out / rf.METRICS_VAL, results["val"])
        write_json(out / rf.METRICS, results["test"])
        atomic_write_text(out / rf.TRAIN_DONE, time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    barrier(info)
    say(
        "%s: best epoch %d, test auroc_mean %.4f ap_mean %.4f",
        out,
        state.best_epoch,
        results["test"]["auroc_mean"],
        results["test"]["ap_mean"],
    )
    return results["test"]


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
    "Progress",
    "WarmupCosine",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "load_data",
    "seed_everything",
    "train",
    "train_one_epoch",
]
