"""Run configuration: one nested dict of plain literals, defaults, overrides, hashing.

A run is described by a nested mapping with the sections ``data``, ``model``, ``loss``,
``train`` and ``analysis``. :data:`DEFAULTS` holds the paper's recipe (Khakzar, Li et al.
2022, Sec. 3) for the embedded phantom; YAML files and ``--set key=value`` overrides are
merged onto it. Unknown keys are an error that names the key, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imbalens.io import atomic_write_text

DEFAULTS: dict[str, Any] = {
    "data": {
        "root": "data/phantom",  # NIH layout: Data_Entry_2017.csv, BBox_List_2017.csv, images/
        "task": "multilabel",  # multilabel | binary
        "include_no_finding": False,  # official code: True (15 outputs)
        "image_size": 224,
        "val_fraction": 0.1,  # patient-wise, carved out of train_val_list.txt
        "split_seed": 0,
        "missing": "error",  # error | skip  (images listed but absent)
        "cache": False,  # keep decoded images in memory (small data sets)
        "augment": True,  # random resized crop, flip, colour jitter on train
        # folder of a prepared-image cache (imbalens prepare): uint8 shards read instead of
        # decoding PNGs; null = decode the PNGs
        "prepared": None,
        # where the train augmentation runs: loader (per image, torchvision v2, in the
        # DataLoader workers) | device (whole batches in tensor ops on the training device)
        "augment_on": "loader",
    },
    "model": {
        "name": "resnet50",  # resnet50 | t-densenet
        "weights": None,  # null (random init) | imagenet | path to a checkpoint
        # random init only: residual blocks start as the identity (Goyal et al. 2017)
        "zero_init_residual": True,
    },
    "loss": {
        "name": "bce",  # bce | wbce | focal | cbfocal
        "variant": "paper",  # paper | official
        "reduction": "auto",  # auto (paper: sum, official: mean) | sum | mean
        "hyper": {},  # e.g. {alpha: 0.25, gamma: 2.0, beta: 0.9999}
    },
    "train": {
        "epochs": 50,
        "batch_size": 512,  # global batch (split over DDP ranks)
        "eval_batch_size": 256,
        "lr": 4.0e-4,
        "weight_decay": 1.0e-6,
        "warmup_iters": 0,  # official code: 1000
        "warmup_ratio": 0.01,  # warm-up starts at lr * warmup_ratio
        "min_lr_ratio": 0.0,  # official code: 0.01 (cosine ends at lr * min_lr_ratio)
        "precision": "auto",  # fp32 | bf16 | auto
        "channels_last": True,
        "workers": 0,
        "seed": 2022,
        "max_steps_per_epoch": None,  # cap for smoke runs
        "patience": None,  # early stopping: epochs without a better val AUROC (null: off)
        "checkpoint_every_steps": None,  # also save last.pt every N optimiser steps
        "sync_bn": False,  # SyncBatchNorm under DDP (CUDA only)
        "device": "auto",  # auto | cpu | cuda
        "progress": "auto",  # auto | on | off
    },
    "analysis": {
        "q": None,  # null: model default (t-densenet 0.01, resnet50 0.04)
        "layer": None,  # null: every dissect layer of the model (the first is reported)
        # paper | official: the defaults of threshold, counting, normalise, floor_ties
        "dissection": "paper",
        "threshold": None,  # null: the dissection mode's (paper dataset, official batch)
        "counting": None,  # null: mode's; components (paper) | contours (official)
        "normalise": None,  # null: mode's; images (paper) | entries (official) | boxes
        "floor_ties": None,  # null: mode's (paper true, official false)
        "upsample": True,  # activations upsampled to the input (false: at the grid)
        "box_cover": 0.5,  # upsample false only: covered fraction that makes a box cell
        "connectivity": 2,  # components: skimage 1 = 4-connected, 2 = 8-connected
        "binary_boxes": "union",  # binary task: union (official) | per_finding
        "batch_size": 32,  # official: 64 (resnet50), 128 (t-densenet)
        "cache": True,  # keep the layer's activations in a temp file (one forward pass)
        "baselines": True,  # baselines.csv: untrained, cascade-randomised, uniform, centre
        "cascade_levels": [2],  # imbalens.explain.baselines.CASCADE levels (1 = head only)
        "baseline_images": 128,  # baselines on the first N boxed images (null: all)
    },
}


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names it."""


def _merge(base: dict[str, Any], update: Mapping[str, Any], where: str, strict: bool) -> None:
    for key, value in update.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in base:
            if strict:
                known = ", ".join(sorted(base))
                raise ConfigError(f"unknown config key {path!r} (known here: {known})")
            base[key] = copy.deepcopy(value)
        elif isinstance(base[key], dict) and path not in _FREE_FORM:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
            _merge(base[key], value, path, strict)
        else:
            base[key] = copy.deepcopy(value)


_FREE_FORM = {"loss.hyper"}


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (``2`` int, ``null``, ``[1,2]``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=2)")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def merge_config(*layers: Mapping[str, Any], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Deep-merge ``layers`` onto :data:`DEFAULTS`, then apply ``key=value`` overrides.

    Raises:
        ConfigError: naming the first unknown key or malformed override.
    """
    cfg = copy.deepcopy(DEFAULTS)
    for layer in layers:
        _merge(cfg, layer or {}, "", strict=True)
    for item in overrides:
        keys, value = parse_override(item)
        nested: dict[str, Any] = {}
        cursor = nested
        for k in keys[:-1]:
            cursor = cursor.setdefault(k, {})
        cursor[keys[-1]] = value
        _merge(cfg, nested, "", strict=True)
    return cfg


def load_config(
    path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Read a YAML config (``safe_load``) and merge it onto the defaults."""
    layer: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            layer = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {yaml_problem(exc)}") from None
        if not isinstance(layer, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return merge_config(layer, overrides=overrides)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one line with the line/column, without ``"<unicode string>"``."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(what)


#: keys that change what is printed, never what is computed: left out of :func:`config_hash`
DISPLAY_ONLY: tuple[str, ...] = ("train.progress",)


def config_hash(cfg: Mapping[str, Any]) -> str:
    """A short, stable hash of a resolved config (sorted-key JSON, sha256, 12 hex).

    :data:`DISPLAY_ONLY` keys are left out, so turning a progress bar on does not make a
    grid retrain its runs.
    """
    cfg = copy.deepcopy(dict(cfg))
    for key in DISPLAY_ONLY:
        section, _, leaf = key.partition(".")
        if isinstance(cfg.get(section), dict):
            cfg[section].pop(leaf, None)
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dump_config(cfg: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))


# ------------------------------------------------------------------ validation
#: Names accepted by the registries (``imbalens.training.models.MODELS``,
#: ``imbalens.training.losses.LOSSES``, ``imbalens.training.precision.DTYPES``); kept
#: here so that validating needs no torch import (tests check they match).
MODEL_NAMES = ("resnet50", "t-densenet")
LOSS_NAMES = ("bce", "wbce", "focal", "cbfocal")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass(frozen=True)
class Check:
    """What one config key accepts: Python types, a closed range, a set of choices.

    ``kinds`` are checked with ``isinstance`` (``bool`` is never an ``int`` here);
    ``lo``/``hi`` bound numbers (``lo_open`` excludes ``lo``); ``choices`` is an enum;
    ``null`` allows ``None``.
    """

    kinds: tuple[type, ...]
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[Any, ...] | None = None
    null: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not accepted, or None."""
        if value is None:
            return None if self.null else "must not be null"
        if isinstance(value, bool) and bool not in self.kinds:
            return f"must be {self.describe()}, got {value!r}"
        if not isinstance(value, self.kinds):
            return f"must be {self.describe()}, got {value!r} ({type(value).__name__})"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}; got {value!r}"
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return f"must be {'>' if self.lo_open else '>='} {self.lo}, got {value!r}"
        if self.hi is not None and value > self.hi:
            return f"must be <= {self.hi}, got {value!r}"
        return None

    def describe(self) -> str:
        names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
        kinds = [k for k in self.kinds if not (k is int and float in self.kinds)]
        text = " or ".join(names.get(k, k.__name__) for k in kinds)
        return text + (" or null" if self.null else "")


_INT, _NUM = (int,), (int, float)
#: The schema registry: dotted key -> :class:`Check`. Keys absent here are free-form.
SCHEMA: dict[str, Check] = {
    "data.root": Check((str,)),
    "data.task": Check((str,), choices=("multilabel", "binary")),
    "data.include_no_finding": Check((bool,)),
    "data.image_size": Check(_INT, lo=16, hi=4096),
    "data.val_fraction": Check(_NUM, lo=0.0, hi=0.9),
    "data.split_seed": Check(_INT, lo=0),
    "data.missing": Check((str,), choices=("error", "skip")),
    "data.cache": Check((bool,)),
    "data.augment": Check((bool,)),
    "data.prepared": Check((str,), null=True),
    "data.augment_on": Check((str,), choices=("loader", "device")),
    "model.name": Check((str,), choices=MODEL_NAMES),
    "model.weights": Check((str,), null=True),
    "model.zero_init_residual": Check((bool,)),
    "loss.name": Check((str,), choices=LOSS_NAMES),
    "loss.variant": Check((str,), choices=("paper", "official")),
    "loss.hyper": Check((dict,)),
    "loss.reduction": Check((str,), choices=("auto", "sum", "mean")),
    "train.epochs": Check(_INT, lo=1),
    "train.batch_size": Check(_INT, lo=1),
    "train.eval_batch_size": Check(_INT, lo=1),
    "train.lr": Check(_NUM, lo=0.0, lo_open=True),
    "train.weight_decay": Check(_NUM, lo=0.0),
    "train.warmup_iters": Check(_INT, lo=0),
    "train.warmup_ratio": Check(_NUM, lo=0.0, hi=1.0),
    "train.min_lr_ratio": Check(_NUM, lo=0.0, hi=1.0),
    "train.precision": Check((str,), choices=PRECISIONS),
    "train.channels_last": Check((bool,)),
    "train.workers": Check(_INT, lo=0),
    "train.seed": Check(_INT, lo=0),
    "train.max_steps_per_epoch": Check(_INT, lo=1, null=True),
    "train.patience": Check(_INT, lo=1, null=True),
    "train.checkpoint_every_steps": Check(_INT, lo=1, null=True),
    "train.sync_bn": Check((bool,)),
    "train.device": Check((str,), choices=("auto", "cpu", "cuda")),
    "train.progress": Check((str, bool), choices=("auto", "on", "off", True, False)),
    "analysis.q": Check(_NUM, lo=0.0, hi=1.0, lo_open=True, null=True),
    "analysis.dissection": Check((str,), choices=("paper", "official")),
    "analysis.threshold": Check((str,), choices=("dataset", "batch"), null=True),
    "analysis.counting": Check((str,), choices=("components", "contours"), null=True),
    "analysis.floor_ties": Check((bool,), null=True),
    "analysis.box_cover": Check(_NUM, lo=0.0, hi=1.0, lo_open=True),
    "analysis.binary_boxes": Check((str,), choices=("union", "per_finding")),
    "analysis.baselines": Check((bool,)),
    "analysis.cascade_levels": Check((list,)),
    "analysis.baseline_images": Check(_INT, lo=1, null=True),
    "analysis.layer": Check((str,), null=True),
    "analysis.upsample": Check((bool,)),
    "analysis.connectivity": Check(_INT, choices=(1, 2)),
    "analysis.normalise": Check((str,), choices=("images", "entries", "boxes"), null=True),
    "analysis.batch_size": Check(_INT, lo=1),
    "analysis.cache": Check((bool,)),
}


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def validate_config(
    cfg: Mapping[str, Any], source: str | os.PathLike[str] | None = None, check_root: bool = True
) -> None:
    """Check every value of a resolved config against :data:`SCHEMA`, before anything runs.

    Types, ranges and enums come from the registry; ``data.root`` must name an existing
    folder (unless ``check_root`` is False: the caller is about to make it), an absolute
    ``model.weights`` an existing file, and ``train.device=cuda`` needs a visible GPU
    (torch is imported only then). All problems are reported at once.

    Raises:
        ConfigError: one line per problem, each naming ``source`` and the key.
    """
    where = str(source) if source is not None else "<config>"
    problems: list[str] = []
    for key, check in SCHEMA.items():
        cursor: Any = cfg
        for part in key.split("."):
            cursor = cursor.get(part) if isinstance(cursor, Mapping) else None
        why = check.problem(cursor)
        if why is not None:
            problems.append(f"{where}: {key} {why}")
    root, weights = cfg["data"].get("root"), cfg["model"].get("weights")
    if check_root and isinstance(root, str) and not Path(root).expanduser().is_dir():
        problems.append(f"{where}: data.root {root!r} is not a folder (set data.root=PATH)")
    if isinstance(weights, str) and Path(weights).is_absolute() and not Path(weights).is_file():
        problems.append(f"{where}: model.weights {weights!r} is not a file (or use imagenet)")
    if cfg["train"].get("device") == "cuda" and not _cuda_available():
        problems.append(f"{where}: train.device is cuda but no GPU is visible (use auto or cpu)")
    if problems:
        raise ConfigError("\n".join(problems))
