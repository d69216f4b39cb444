"""Sanity baselines for every alignment number: what a model that learned nothing scores.

Adebayo et al., "Sanity checks for saliency maps" (NeurIPS 2018) show that a saliency
method whose maps survive the destruction of the model's weights explains the
architecture and the image, not what the model learned. Beside each trained run this
module scores, on the same boxed images and with the same CAM
(:mod:`imbalens.explain.alignment`, :mod:`imbalens.explain.localization`):

- **untrained**: the same architecture at its random initialisation with the run's
  ``train.seed`` (``torch.manual_seed(seed)`` then
  :func:`imbalens.training.models.build_model`, as training starts);
- **cascading randomisation**: the trained model with its top layers re-initialised,
  from the head down (Adebayo et al. 2018, Sec. 3): level 1 re-draws the head, level 2
  also the last block, ...; the layers of each level are named in :data:`CASCADE`;
- **map baselines**, no model at all: a *uniform* map (soft IoBB = 1, soft IoR = the
  box's area fraction, the two ends a diffuse map can reach) and a *centre prior*, an
  isotropic Gaussian at the image centre with :math:`\\sigma = S/4`.

A trained model's number "beats" a baseline when it is strictly larger (every metric
here is higher-is-better); ``baselines.csv`` records each comparison.

The untrained model does not depend on the loss, so a grid's runs that differ only in
their loss share its numbers: the first run to need them writes them to
``<grid>/.shared/`` (:func:`shared_path`), keyed by everything but the loss in the
run's config, the device type, the torch version and a hash of this package's source,
and the others
read them back (exactly the same numbers, at a quarter of the cost).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from imbalens import runfolder as rf
from imbalens.data.findings import BOXED_FINDINGS
from imbalens.explain.alignment import alignment_table, soft_iobb, soft_ior
from imbalens.explain.localization import COLUMNS, gaussian_map, localization_metrics
from imbalens.io import atomic_write_csv, atomic_write_text

__all__ = [
    "CASCADE",
    "METRICS",
    "MAP_BASELINES",
    "baseline_table",
    "cascade_layers",
    "compare_with_trained",
    "map_baseline_table",
    "randomise_layers",
    "shared_path",
    "untrained_model",
    "write_baselines",
    "write_concept_baselines",
]

log = logging.getLogger(__name__)

CASCADE: dict[str, tuple[tuple[str, ...], ...]] = {
    "resnet50": (("fc",), ("layer4",), ("layer3",), ("layer2",)),
    "t-densenet": (
        ("classifier",),
        ("features.norm5", "features.denseblock2"),
        ("features.transition1", "features.denseblock1"),
    ),
}
"""Cascading-randomisation levels per model, from the top: level k re-initialises the
modules of the first k entries."""

METRICS: tuple[str, ...] = ("iobb", "ior", *COLUMNS)
"""Metrics compared with the baselines (all higher-is-better)."""


def cascade_layers(model_name: str, levels: int) -> list[str]:
    """Module names re-initialised at cascade level ``levels`` (>= 1) of ``model_name``.

    Raises:
        KeyError: a model without a cascade in :data:`CASCADE` (add its levels there).
        ValueError: ``levels`` outside 1..len(levels of the model).
    """
    if model_name not in CASCADE:
        raise KeyError(
            f"no cascading-randomisation levels for model {model_name!r}; "
            f"add them to imbalens.explain.baselines.CASCADE (known: {sorted(CASCADE)})"
        )
    steps = CASCADE[model_name]
    if not 1 <= levels <= len(steps):
        raise ValueError(f"cascade level {levels} outside 1..{len(steps)} for {model_name}")
    return [name for step in steps[:levels] for name in step]


def randomise_layers(model: nn.Module, layers: Sequence[str], seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose named sub-modules are re-initialised, the rest untouched.

    Every sub-module with a ``reset_parameters`` method inside a named layer (Conv,
    Linear, BatchNorm: weights and running statistics) is reset with PyTorch's default
    initialisation, drawn under ``torch.manual_seed(seed)`` (the global RNG is restored).
    """
    new = copy.deepcopy(model)
    named = dict(new.named_modules())
    missing = [n for n in layers if n not in named]
    if missing:
        raise KeyError(
            f"model has no modules {missing}; its top-level ones: {list(dict(new.named_children()))}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in layers:
            for m in named[name].modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return new


def untrained_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """The run's architecture at random initialisation, seeded with ``train.seed``
    (ImageNet or checkpoint weights are not loaded: this is the no-learning baseline)."""
    from imbalens.training.models import build_model

    m = cfg["model"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg["train"]["seed"]))
        model = build_model(m["name"], num_classes, None, bool(m.get("zero_init_residual")))
    return model.eval()


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    """sha256 of this package's Python sources (a cached baseline of older code is stale)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def shared_path(
    out: Path, cfg: dict[str, Any], what: str, n_images: int, device: str = "cpu"
) -> Path | None:
    """Where a grid run reads or writes the untrained model's ``what`` baseline, shared
    with the grid's other runs whose config differs only in ``loss``: a file in
    ``<grid>/.shared/`` named by a hash of the config without ``loss``, ``n_images``
    (the first N boxed images measured), the device type (CPU and GPU kernels round
    differently), the torch version and :func:`_source_hash`. None for a run folder
    outside a grid (no ``grid-run.json``): it computes its own."""
    out = Path(out)
    if not (out / rf.RECORD).is_file():
        return None
    key = {
        "what": what,
        "config": {k: v for k, v in cfg.items() if k != "loss"},
        "n_images": n_images,
        "device": device,
        "torch": torch.__version__,
        "source": _source_hash(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    suffix = "csv" if what == "alignment" else "json"
    return out.parent / rf.SHARED_DIR / f"untrained-{what}-{digest[:16]}.{suffix}"


def _read_shared(path: Path | None) -> pd.DataFrame | dict[str, Any] | None:
    """A shared baseline file, or None when absent, unreadable or lacking what it must
    hold (then recomputed, and rewritten)."""
    if path is None or not path.is_file():
        return None
    need = (
        {"baseline", "finding", *METRICS}
        if path.suffix == ".csv"
        else {"disjoint", "unique", "n_images"}
    )
    try:
        value = pd.read_csv(path) if path.suffix == ".csv" else json.loads(path.read_text())
        have = set(value.columns) if isinstance(value, pd.DataFrame) else set(value)
        if not need <= have or len(value) == 0:
            raise ValueError(f"missing {sorted(need - have)}" if need - have else "empty")
        return value
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s unreadable (%s): computing the untrained baseline again", path, exc)
        return None


def _all_boxes(dataset: Dataset, batch_size: int) -> Tensor:
    masks = [
        b["box_mask"][b["has_box"].bool()]
        for b in DataLoader(dataset, batch_size=batch_size, shuffle=False)
    ]
    return torch.cat(masks) if masks else torch.zeros(0, 1, 1, dtype=torch.bool)


def _findings(dataset: Dataset, batch_size: int) -> list[str]:
    out: list[str] = []
    for b in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        _, f_idx = torch.nonzero(b["has_box"].bool(), as_tuple=True)
        out += [BOXED_FINDINGS[f] for f in f_idx.tolist()]
    return out


MAP_BASELINES: dict[str, Callable[[int], Tensor]] = {
    "uniform": lambda s: torch.ones(s, s, dtype=torch.float64),
    "centre": lambda s: gaussian_map(s, s / 4.0),
}
"""Map baselines: name -> (S -> (S, S) map)."""


def map_baseline_table(dataset: Dataset, batch_size: int = 32, chunk: int = 256) -> pd.DataFrame:
    """Per-map metrics of each :data:`MAP_BASELINES` map against every box of
    ``dataset``: columns baseline, finding, and :data:`METRICS`."""
    masks = _all_boxes(dataset, batch_size)
    findings = _findings(dataset, batch_size)
    frames = []
    for name, make in MAP_BASELINES.items():
        base = make(int(masks.shape[-1]))
        for lo in range(0, len(masks), chunk):
            m = masks[lo : lo + chunk]
            s = base.expand(m.shape)
            cols = {"iobb": soft_iobb(s, m), "ior": soft_ior(s, m), **localization_metrics(s, m)}
            frames.append(
                pd.DataFrame(
                    {
                        "baseline": name,
                        "finding": findings[lo : lo + chunk],
                        **{k: v.tolist() for k, v in cols.items()},
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and n of :data:`METRICS` by (baseline, layers, finding), plus finding "all"."""
    keys = ["baseline", "layers"]
    both = pd.concat([df, df.assign(finding="all")], ignore_index=True)
    long = both.melt(id_vars=[*keys, "finding"], value_vars=list(METRICS), var_name="metric")
    g = long.groupby([*keys, "finding", "metric"], sort=False)["value"]
    return g.agg(value="mean", n="count").reset_index()


def baseline_table(
    model: nn.Module,
    untrained: nn.Module | None,
    dataset: Dataset,
    class_names: Sequence[str],
    task: str,
    model_name: str,
    levels: Sequence[int] = (1, 2),
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    autocast: object | None = None,
    untrained_rows: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Summaries (long format) of the untrained, cascade-randomised and map baselines.

    ``untrained_rows``: the untrained model's per-map rows measured before (a grid's
    shared baseline), used instead of running ``untrained``.

    Returns:
        ``(table, seconds)``: columns baseline, layers, finding, metric, value, n;
        ``seconds`` per baseline.
    """
    models: list[tuple[str, str, nn.Module]] = []
    if untrained is not None and untrained_rows is None:
        models.append(("untrained", "all", untrained))
    for k in levels:
        layers = cascade_layers(model_name, k)
        models.append((f"randomised-{k}", "+".join(layers), randomise_layers(model, layers, seed)))
    frames, seconds = [] if untrained_rows is None else [untrained_rows], {}
    for name, layers, m in models:
        t0 = time.perf_counter()
        m = m.to(device).eval()
        t = alignment_table(m, dataset, class_names, task, batch_size, device, autocast=autocast)
        frames.append(t.assign(baseline=name, layers=layers))
        seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    frames.append(map_baseline_table(dataset, batch_size).assign(layers="-"))
    seconds["maps"] = time.perf_counter() - t0
    return _summary(pd.concat(frames, ignore_index=True)), seconds


def compare_with_trained(baselines: pd.DataFrame, trained: pd.DataFrame) -> pd.DataFrame:
    """Add ``trained`` (the trained model's mean of the same metric and finding, from its
    ``alignment.csv`` table) and ``beats`` (trained > baseline; empty where either is
    undefined, e.g. Otsu on a uniform map) to a baseline summary."""
    t = _summary(trained.assign(baseline="trained", layers="-"))
    t = t.rename(columns={"value": "trained", "n": "trained_n"})[["finding", "metric", "trained"]]
    out = baselines.merge(t, on=["finding", "metric"], how="left")
    defined = out["trained"].notna() & out["value"].notna()
    out["beats"] = (out["trained"] > out["value"]).astype("boolean").where(defined, pd.NA)
    return out


def write_baselines(
    model: nn.Module,
    cfg: dict[str, Any],
    data: Any,
    dataset: Dataset,
    trained: pd.DataFrame,
    out: Path,
    device: str | torch.device = "cpu",
    autocast: object | None = None,
) -> dict[str, float]:
    """:func:`baseline_table` of a run, compared with its ``trained`` alignment table,
    written atomically to ``out/baselines.csv``; returns the seconds per baseline.

    Settings: ``analysis.baselines`` (False: nothing is done),
    ``analysis.cascade_levels`` (levels of :data:`CASCADE`, default [2]: head and last
    block) and ``analysis.baseline_images`` (the first N boxed images, default 128, or
    null for all; the trained model is compared on the same images).
    """
    a = cfg.get("analysis") or {}
    if not a.get("baselines", True):
        return {}
    levels = [int(k) for k in a.get("cascade_levels", (2,))]
    n = a.get("baseline_images", 128)
    if n is not None and int(n) < len(dataset):  # type: ignore[arg-type]
        dataset = Subset(dataset, range(int(n)))
    names = _names(dataset)
    if names is not None:
        trained = trained[trained["image"].isin(set(names))]
    seed = int(cfg["train"]["seed"])
    batch_size = int(a.get("batch_size", 32))
    dev = torch.device(device).type
    shared = shared_path(out, cfg, "alignment", len(dataset), dev)  # type: ignore[arg-type]
    rows = _read_shared(shared)
    t0 = time.perf_counter()
    if rows is None:
        m = untrained_model(cfg, len(data.class_names)).to(device)
        rows = alignment_table(
            m, dataset, data.class_names, data.task, batch_size, device, autocast=autocast
        ).assign(baseline="untrained", layers="all")
        if shared is not None:
            atomic_write_csv(shared, rows)
    untrained_seconds = time.perf_counter() - t0
    table, seconds = baseline_table(
        model,
        None,
        dataset,
        data.class_names,
        data.task,
        cfg["model"]["name"],
        levels=levels,
        seed=seed,
        batch_size=batch_size,
        device=device,
        autocast=autocast,
        untrained_rows=rows,
    )
    seconds = {"untrained": untrained_seconds, **seconds}
    result = compare_with_trained(table, trained)
    atomic_write_text(Path(out) / rf.BASELINES, result.to_csv(index=False))
    not_beaten = result[(result["finding"] == "all") & result["beats"].eq(False).fillna(False)]
    for row in not_beaten.itertuples(index=False):
        log.info(
            "trained %s %.3f does not beat %s (%.3f)",
            row.metric,
            row.trained,
            row.baseline,
            row.value,
        )
    return seconds


def write_concept_baselines(
    model: nn.Module,
    cfg: dict[str, Any],
    data: Any,
    dataset: Dataset,
    dissect: Callable[[nn.Module, Dataset], Any],
    out: Path,
) -> dict[str, float]:
    """Disjoint and Unique of the untrained and cascade-randomised models beside the
    trained one's, all dissected the same way on the same first boxed images, written
    atomically to ``out/concepts_baselines.csv`` (columns as ``baselines.csv``).

    A random network's channels also cross their own top-q threshold inside boxes, so a
    concept count means something only above these (Adebayo et al. 2018's argument,
    applied to network dissection). ``dissect(model, dataset)`` runs the run's
    dissection (layer, q, thresholds, counting) and returns its
    :class:`imbalens.explain.dissect.ConceptCounts`. Settings as :func:`write_baselines`
    (``analysis.baselines``, ``analysis.cascade_levels``, ``analysis.baseline_images``).
    Returns the seconds per model.
    """
    a = cfg.get("analysis") or {}
    if not a.get("baselines", True):
        return {}
    n = a.get("baseline_images", 128)
    if n is not None and int(n) < len(dataset):  # type: ignore[arg-type]
        dataset = Subset(dataset, range(int(n)))
    seed = int(cfg["train"]["seed"])
    dev = next(model.parameters()).device.type
    shared = shared_path(out, cfg, "concepts", len(dataset), dev)  # type: ignore[arg-type]
    cached = _read_shared(shared)
    models: list[tuple[str, str, nn.Module]] = [("trained", "-", model)]
    if cached is None:
        models.append(("untrained", "all", untrained_model(cfg, len(data.class_names))))
    for k in [int(k) for k in a.get("cascade_levels", (2,))]:
        layers = cascade_layers(cfg["model"]["name"], k)
        models.append((f"randomised-{k}", "+".join(layers), randomise_layers(model, layers, seed)))
    values: dict[str, tuple[str, Any]] = {}
    seconds = {}
    for name, layers, m in models:
        t0 = time.perf_counter()
        values[name] = (layers, dissect(m.eval(), dataset))
        seconds[name] = time.perf_counter() - t0
    if cached is not None:
        values = {"untrained": ("all", SimpleNamespace(**cached)), **values}
        seconds["untrained"] = 0.0
    elif shared is not None:
        res = values["untrained"][1]
        counts = {k: float(getattr(res, k)) for k in ("disjoint", "unique")}
        atomic_write_text(shared, json.dumps({**counts, "n_images": int(res.n_images)}))
    trained = values.pop("trained")[1]
    rows = [
        {
            "baseline": name,
            "layers": layers,
            "finding": "all",
            "metric": metric,
            "value": getattr(res, metric),
            "n": res.n_images,
            "trained": getattr(trained, metric),
            "beats": getattr(trained, metric) > getattr(res, metric),
        }  # fmt: skip
        for name, (layers, res) in values.items()
        for metric in ("disjoint", "unique")
    ]
    atomic_write_text(Path(out) / rf.CONCEPTS_BASELINES, pd.DataFrame(rows).to_csv(index=False))
    for r in rows:
        if not r["beats"]:
            log.info("trained %s %.2f does not beat %s (%.2f)", r["metric"], r["trained"],
                     r["baseline"], r["value"])  # fmt: skip
    return seconds


def _names(dataset: Dataset) -> list[str] | None:
    """Image names of a dataset or of nested ``Subset``s of one (None without names)."""
    if isinstance(dataset, Subset):
        inner = _names(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    names = getattr(dataset, "names", None)
    return None if names is None else list(names)
