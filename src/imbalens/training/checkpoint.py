"""Checkpoints: atomic save, safe load (``weights_only=True``), RNG state, run loading.

A checkpoint is a plain dict, as in torchvision's classification reference: ``model``,
``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step`` (batches already done in
``epoch``), ``global_step``, ``config`` (resolved, plain dict), ``best_metric``,
``best_epoch``, ``history`` (list of per-epoch dicts) and ``rng``. Only tensors,
numbers, strings, lists and dicts are stored, so :func:`load_checkpoint` can use
``torch.load(..., weights_only=True)`` and never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from imbalens import runfolder as rf
from imbalens.io import atomic_path


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to a temp file in the same folder, then rename.

    A crash while writing leaves the previous checkpoint intact.
    """
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptCheckpoint: ``path`` is empty, truncated or not a checkpoint (one line
            naming the file and what to delete).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist (was the run trained?)")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise CorruptCheckpoint(p, exc) from exc


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file that cannot be read; the one-line message names it and the fix."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        size = path.stat().st_size if path.exists() else 0
        what = "empty" if size == 0 else f"truncated or corrupt ({size} bytes)"
        if path.name == rf.LAST:
            fix = f"delete it (rm {path}) to restart this run's training from the start"
        else:
            fix = (
                f"delete it and {path.with_name(rf.LAST).name} and "
                f"{path.parent.parent / rf.TRAIN_DONE} to retrain the run"
            )
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        detail = f"{type(cause).__name__}" + (f": {reason[:80]}" if reason else "")
        super().__init__(f"checkpoint {path} is {what} ({detail}); {fix}")
        self.path = path


def rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and ``random`` as tensors/lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global state on purpose)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (global state on purpose)
        (
            n["kind"],
            n["keys"].cpu().numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) key prefixes."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_model_from_run(
    run_dir: str | os.PathLike[str],
    which: str = "best",
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a trained run and load its ``best`` or ``last`` weights.

    Args:
        run_dir: a run folder written by :func:`imbalens.training.train.train`.
        which: ``"best"`` (best validation macro AUROC) or ``"last"``.
        map_location: device for the weights.

    Returns:
        ``(model, cfg)``: the model in eval mode and the run's resolved config.

    Raises:
        ValueError: ``which`` is not best/last.
        FileNotFoundError: the checkpoint is missing.
    """
    from imbalens.data.findings import class_names
    from imbalens.training.models import build_model

    if which not in ("best", "last"):
        raise ValueError(f"which={which!r}: use 'best' or 'last'")
    run = Path(run_dir)
    ckpt = load_checkpoint(run / rf.CHECKPOINTS / f"{which}.pt", map_location=map_location)
    cfg = ckpt.get("config")
    if cfg is None:
        cfg = yaml.safe_load((run / rf.CONFIG).read_text())
    names = class_names(cfg["data"]["task"], cfg["data"]["include_no_finding"])
    # weights=None: the checkpoint overwrites every parameter, no download needed.
    model = build_model(cfg["model"]["name"], len(names), None)
    model.load_state_dict(_strip_prefix(ckpt["model"]))
    model.to(map_location)
    model.eval()
    return model, cfg
