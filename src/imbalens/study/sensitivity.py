"""How much the loss ranking of each metric depends on the analysis choices.

For every trained run of a grid this re-measures, from its saved checkpoint (no
retraining), the alignment and concept metrics under the choices a reader could have
made differently:

- the dissection quantile :math:`q \\in \\{0.005, 0.01, 0.04\\}` (Disjoint, Unique);
- the dissected layer (ResNet50 ``layer3`` and ``layer4``, T-DenseNet's last block
  ``features.norm5``; the model's ``dissect_layers``);
- the CAM normalisation, at feature or at input resolution (soft IoBB, IoR, pointing
  game, top-k IoU; :func:`imbalens.explain.cam.class_activation_maps`).

Within each (model, task, metric) the four losses are ranked under each setting, and
each setting's ranking is compared with the reference setting (the config's own
choice) by Kendall's :math:`\\tau` (:func:`scipy.stats.kendalltau`, the tau-b variant
for ties): :math:`\\tau = 1` the same order, :math:`-1` the reverse. A conclusion that
hinges on one loss being "more aligned" is only as firm as the :math:`\\tau` of its metric.

The layer's activations are computed once per run and layer
(:class:`imbalens.explain.dissect.ActivationStream` with a disk cache) and re-counted
for every q; each run's measurements are kept in its ``sensitivity.csv``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import kendalltau
from torch.utils.data import Subset

from imbalens import runfolder as rf
from imbalens.io import atomic_write_text

__all__ = [
    "CAM_NORMALISATIONS",
    "QS",
    "kendall_table",
    "measure_grid",
    "measure_run",
    "ranking_table",
]

log = logging.getLogger(__name__)

QS: tuple[float, ...] = (0.005, 0.01, 0.04)
"""Dissection quantiles compared."""
CAM_NORMALISATIONS: tuple[str, ...] = ("feature", "input")
"""CAM normalisations compared."""
ALIGNMENT_METRICS: tuple[str, ...] = ("iobb", "ior", "pointing", "topk_iou")
COLUMNS = ["run", "model", "loss", "task", "factor", "setting", "metric", "value"]


def _concept_rows(
    model: Any,
    dataset: Any,
    cfg: dict[str, Any],
    qs: Sequence[float],
    device: Any = "cpu",
    autocast: Any = None,
) -> list[dict[str, Any]]:
    from imbalens.config import DEFAULTS
    from imbalens.explain.analyse import dissection_settings
    from imbalens.explain.dissect import ActivationStream, count_concepts

    a = {**DEFAULTS["analysis"], **(cfg.get("analysis") or {})}
    kw = dissection_settings(a, int(cfg["data"]["image_size"]))
    kw["normalise"] = "images"  # per image, whatever the run's setting (comparable across q)
    rows = []
    for layer in model.dissect_layers:
        stream = ActivationStream(
            model, dataset, layer, int(a.get("batch_size", 32)), device, autocast, cache=True
        )
        try:
            for q in qs:
                res = count_concepts(stream, float(q), **kw)
                for metric in ("disjoint", "unique"):
                    value = float(getattr(res, metric))
                    rows.append({"layer": layer, "q": float(q), "metric": metric, "value": value})
        finally:
            stream.close()
    return rows


def measure_run(
    run_dir: str | Path,
    qs: Sequence[float] = QS,
    normalisations: Sequence[str] = CAM_NORMALISATIONS,
    max_images: int | None = 128,
    force: bool = False,
    device: str | Any = "auto",
) -> pd.DataFrame:
    """The run's metrics under every setting (long format, :data:`COLUMNS` plus
    ``layer``, ``q``, ``normalise``), from its best checkpoint; cached in the run's
    ``sensitivity.csv`` (recomputed with ``force``). Forward passes run as the run's
    analysis stages run them: on ``device`` (``auto``: the GPU when there is one) in
    the run's ``train.precision`` (bf16 autocast where the CPU has it).

    Args:
        max_images: the first N boxed images only (None: all 880 / the phantom's).
    """
    import functools

    from imbalens.data.nih import load_nih_from_config
    from imbalens.explain.alignment import alignment_table
    from imbalens.explain.dissect import default_q
    from imbalens.training.checkpoint import load_model_from_run
    from imbalens.training.precision import autocast_context
    from imbalens.training.runtime import select_device

    run = rf.RunFolder(Path(run_dir))
    cached = run.path / rf.SENSITIVITY
    if cached.is_file() and not force:
        old = pd.read_csv(cached)
        if "max_images" in old and set(old["max_images"].astype(str)) == {str(max_images)}:
            return old
        log.info("%s was measured with other settings: measuring again", cached)
    model, cfg = load_model_from_run(run.path)
    dev = select_device(device)
    model.to(dev).eval()
    precision = (cfg.get("train") or {}).get("precision", "fp32")
    autocast = functools.partial(autocast_context, dev, precision)
    data = load_nih_from_config(cfg["data"])
    dataset = data.dataset("boxed", int(cfg["data"]["image_size"]))
    if max_images is not None and max_images < len(dataset):
        dataset = Subset(dataset, range(int(max_images)))
    key = {
        "run": run.path.name,
        "model": cfg["model"]["name"],
        "loss": cfg["loss"]["name"],
        "task": cfg["data"]["task"],
    }
    a = cfg.get("analysis") or {}
    ref_layer = a.get("layer") or model.dissect_layers[0]
    ref_q = float(a["q"]) if a.get("q") is not None else default_q(model)
    rows = []
    for norm in normalisations:
        t = alignment_table(
            model, dataset, data.class_names, data.task, device=dev, normalise=norm,
            autocast=autocast,
        )  # fmt: skip
        for metric in ALIGNMENT_METRICS:
            value = float(t[metric].mean())
            rows.append(
                key
                | {"factor": "cam", "setting": norm, "metric": metric, "value": value}
                | {"normalise": norm, "is_reference": norm == "feature"}
            )
    for r in _concept_rows(model, dataset, cfg, sorted({*qs, ref_q}), dev, autocast):
        is_ref = r["layer"] == ref_layer and r["q"] == ref_q
        setting = f"{r['layer']} q={r['q']:g}"
        rows.append(key | {"factor": "dissection", "setting": setting, "is_reference": is_ref, **r})
    df = pd.DataFrame(rows).assign(max_images=str(max_images))
    atomic_write_text(cached, df.to_csv(index=False))
    return pd.read_csv(cached)  # the same types whether measured now or read back


def measure_grid(grid_dir: str | Path, **kw: Any) -> pd.DataFrame:
    """:func:`measure_run` of every trained run (``checkpoints/best.pt``) of a grid."""
    frames = []
    for cfg_path in sorted(Path(grid_dir).glob(f"*/{rf.CONFIG}")):
        run = rf.RunFolder(cfg_path.parent)
        if not run.best.is_file():
            log.warning("%s: no %s; skipped", run.path.name, run.best)
            continue
        frames.append(measure_run(run.path, **kw))
    if not frames:
        raise FileNotFoundError(
            f"{grid_dir} has no trained run (checkpoints/best.pt): run the grid first"
        )
    return pd.concat(frames, ignore_index=True)


def ranking_table(df: pd.DataFrame) -> pd.DataFrame:
    """Loss order (best first) per (model, task, metric, factor, setting), as text."""
    g = df.groupby(["model", "task", "factor", "metric", "setting"], sort=False)
    out = g.apply(
        lambda x: " > ".join(x.sort_values("value", ascending=False)["loss"]), include_groups=False
    )
    return out.rename("ranking").reset_index()


def kendall_table(df: pd.DataFrame) -> pd.DataFrame:
    """Kendall's tau between each setting's loss values and the reference setting's
    (the rows :func:`measure_run` marks ``is_reference``: the config's own choice).

    Returns:
        Columns model, task, factor, metric, setting, reference, tau, n (losses).
    """
    rows = []
    for (model, task, factor, metric), g in df.groupby(["model", "task", "factor", "metric"]):
        refs = g.loc[g["is_reference"].astype(bool), "setting"].unique()
        if len(refs) != 1:
            raise ValueError(
                f"{model}/{task}/{factor}/{metric}: {len(refs)} reference settings {list(refs)}; "
                "the runs of one model must share their analysis settings"
            )
        ref_name = refs[0]
        ref = g[g["setting"] == ref_name].set_index("loss")["value"]
        for setting, s in g.groupby("setting"):
            v = s.set_index("loss")["value"]
            losses = ref.index.intersection(v.index)
            tau = kendalltau(ref[losses], v[losses]).statistic if len(losses) > 1 else float("nan")
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "factor": factor,
                    "metric": metric,
                    "setting": setting,
                    "reference": ref_name,
                    "tau": float(tau),
                    "n": len(losses),
                }
            )
    return pd.DataFrame(rows)
