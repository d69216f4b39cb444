"""Data-parallel training started by ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m imbalens.cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them
and joins the process group (NCCL on CUDA, gloo on CPU). Without them everything runs
as one process of a world of size 1 and no collective is ever called.

Each rank sees ``1/N`` of every global batch (``per-rank batch = global batch / N``);
gradients are averaged by DDP, so with a loss that is a mean over the batch one step
equals a single-process step on the global batch (up to BatchNorm, whose statistics are
per rank unless ``train.sync_bn`` converts it to SyncBatchNorm, CUDA only). Evaluation
shards the data without shuffling, gathers predictions on every rank, drops the
sampler's padding by sample index, and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = False  # True when this module created the process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


BACKENDS: dict[str, str] = {"cuda": "nccl", "cpu": "gloo"}
"""Registry: device type -> torch.distributed backend."""


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Returns ``DistInfo()`` (rank 0 of 1) when ``WORLD_SIZE`` is unset or 1. If a process
    group already exists (e.g. a caller set it up), it is used as is.

    Raises:
        RuntimeError: ``WORLD_SIZE`` > 1 but ``RANK``/``MASTER_ADDR``/``MASTER_PORT`` are
            missing (start the run with torchrun).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", "0")),
            False,
        )
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} unset: start with "
            "`torchrun --nproc_per_node=N -m imbalens.cli train ...`"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = BACKENDS.get(device_type, "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("rank %d/%d joined the %s process group", rank, world, backend)
    return DistInfo(rank, world, local_rank, True)


def cleanup(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if info.initialised and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of a scalar over all ranks (the scalar itself in a single process)."""
    if not info.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_arrays(
    indices: np.ndarray, arrays: dict[str, np.ndarray], info: DistInfo
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gather per-rank rows from all ranks, drop duplicates, sort by sample index.

    ``DistributedSampler`` pads the last shard with repeats of the first samples; a
    sample index seen twice is kept once, so the result has one row per sample, in
    data-set order, exactly as a single process would produce it.
    """
    if info.distributed:
        parts: list[Any] = [None] * info.world_size
        dist.all_gather_object(parts, (indices, arrays))
        indices = np.concatenate([p[0] for p in parts])
        arrays = {k: np.concatenate([p[1][k] for p in parts]) for k in arrays}
    uniq, first = np.unique(indices, return_index=True)
    return uniq, {k: v[first] for k, v in arrays.items()}


class EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` that can start mid-epoch and tags each index with its epoch.

    The order of epoch ``e`` is ``torch.randperm(n, seed + e)`` (the parent's rule),
    padded to a multiple of the world size; rank ``r`` takes every ``world_size``-th
    index from ``r``. :meth:`set_start` skips the first ``k`` indices of this rank's
    shard (resuming after ``k / per-rank batch`` finished steps). Items are yielded as
    ``(index, epoch)`` so :class:`SeededDataset` can seed augmentation per sample.
    """

    def __init__(
        self,
        dataset: Dataset,
        info: DistInfo,
        shuffle: bool,
        seed: int,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's shard in the next iteration."""
        self.start = int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start :]
        return iter([(int(i), int(self.epoch)) for i in indices])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class SeededDataset(Dataset):
    """Wraps a data set so that sample ``i`` of epoch ``e`` is augmented from a fixed seed.

    Before ``dataset[i]`` the torch, numpy and ``random`` generators of the loading
    process are seeded with ``hash(seed, e, i)`` (numpy ``SeedSequence``); their previous
    states are restored afterwards.
    The augmentation of a sample then depends neither on the number of DataLoader
    workers, nor on the number of DDP ranks, nor on where a resumed run restarts.
    The sample index is added to the item as ``"sample"``.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        item_seed = int(
            np.random.SeedSequence([self.seed, epoch, index]).generate_state(1, np.uint32)[0]
        )
        np_state = np.random.get_state()  # noqa: NPY002 (global state on purpose)
        py_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed)
                np.random.seed(item_seed)  # noqa: NPY002
                random.seed(item_seed)
                item = dict(self.dataset[index])
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
        item["sample"] = index
        return item


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each training forward, so after the last step
    every rank holds statistics updated by its own shard; evaluation must use one set.
    """
    if info.distributed:
        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)


def per_rank_batch(global_batch: int, info: DistInfo, key: str = "train.batch_size") -> int:
    """``global_batch / world_size``; an error when it does not divide evenly."""
    if global_batch % info.world_size:
        raise ValueError(
            f"{key}={global_batch} is not divisible by WORLD_SIZE={info.world_size}; "
            f"choose a multiple of {info.world_size}"
        )
    return global_batch // info.world_size


def steps_per_epoch(n_samples: int, global_batch: int, cap: int | None) -> int:
    """Full global batches per epoch (the last partial batch is dropped), capped at ``cap``.

    A data set smaller than one global batch gives one (partial) step.
    """
    steps = max(1, n_samples // global_batch) if n_samples else 0
    if n_samples and n_samples < global_batch:
        log.warning("only %d training samples for a batch of %d", n_samples, global_batch)
    return min(steps, cap) if cap else steps


def shard_size(n_samples: int, info: DistInfo) -> int:
    """Samples per rank after the sampler's padding."""
    return math.ceil(n_samples / info.world_size)
