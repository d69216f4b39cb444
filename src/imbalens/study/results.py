"""Load a grid's run folders into tidy tables, and the paper's own numbers beside them.

A grid folder (``runs/<grid>/``) holds one folder per run, each with its resolved
``config.yaml`` and whatever stages have finished: ``metrics.json`` (training),
``alignment_summary.csv`` / ``alignment.csv`` and ``concepts.json`` (analysis). This
module turns them into long ("tidy") :class:`pandas.DataFrame` objects that the book's
results page, :mod:`imbalens.study.claims` and :mod:`imbalens.study.plots` use. Missing stages are
recorded, never fatal: a grid with two losses and one model is a valid (smaller) grid.

The paper's Table 1 (soft IoBB/IoR) and Table 2 (Disjoint/Unique) of Khakzar, Li et al.
(2022) live in ``paper_numbers.yaml`` next to this module and are loaded with
:func:`paper_numbers`; they are always labelled ``"paper"``.

Display names and orderings (``CB-Focal``, ``T-DenseNet``, the paper's loss order) come
from :mod:`imbalens.study.labels`; the CAMs of Figure 1 are recomputed from checkpoints
by :mod:`imbalens.explain.samples`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from imbalens import runfolder as rf
from imbalens.study.labels import (
    LOSS_ORDER,
    MODEL_ORDER,
    TASK_ORDER,
    loss_label,
    metric_label,
    model_label,
    ordered,
    task_label,
)

log = logging.getLogger(__name__)

AVERAGE = "Average"
"""Name of the class-average row added to a multi-label run's performance."""

RUN_COLUMNS = ["run_id", "model", "loss", "task", "seed", "status", "path"]
PERFORMANCE_COLUMNS = ["run", "model", "loss", "task", "seed", "class", "auroc", "ap", "mean_prob"]
ALIGNMENT_COLUMNS = ["run", "model", "loss", "task", "seed", "finding", "iobb", "ior"]
CONCEPT_COLUMNS = ["run", "model", "loss", "task", "seed", "disjoint", "unique"]


def summary_class(task: str) -> str:
    """The row that summarises a run in Figure 2: ``"Average"`` (multi-label) or ``"Unhealthy"``."""
    return AVERAGE if task == "multilabel" else "Unhealthy"


@dataclass
class GridResults:
    """Everything a grid's run folders hold, as tidy tables.

    Attributes:
        grid_dir: the grid folder.
        runs: one row per run: run_id, model, loss, task, seed, status
            (``analysed`` | ``trained`` | ``incomplete`` | ``failed``, the last from the
            grid's ``grid.json``), path.
        performance: one row per (run, class), plus an ``"Average"`` row per multi-label
            run: auroc, ap, mean_prob (test split).
        alignment: one row per (run, finding), finding ``"all"`` = mean over all maps:
            soft iobb, ior.
        concepts: one row per run: disjoint, unique (normalised concept counts).
        problems: human-readable notes on what is missing or unreadable.
    """

    grid_dir: Path
    runs: pd.DataFrame
    performance: pd.DataFrame
    alignment: pd.DataFrame
    concepts: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        """Models present, in :data:`MODEL_ORDER`."""
        return ordered(self.runs["model"], MODEL_ORDER)

    @property
    def tasks(self) -> list[str]:
        """Tasks present, in :data:`TASK_ORDER`."""
        return ordered(self.runs["task"], TASK_ORDER)

    @property
    def losses(self) -> list[str]:
        """Losses present, in :data:`LOSS_ORDER`."""
        return ordered(self.runs["loss"], LOSS_ORDER)

    def run_dirs(self, model: str, task: str, seed: int | None = None) -> dict[str, Path]:
        """``{loss: run folder}`` for one (model, task), lowest seed unless ``seed`` is given."""
        sel = self.runs[(self.runs["model"] == model) & (self.runs["task"] == task)]
        if seed is not None:
            sel = sel[sel["seed"] == seed]
        sel = sel.sort_values("seed")
        out: dict[str, Path] = {}
        for loss in ordered(sel["loss"], LOSS_ORDER):
            out[loss] = Path(sel[sel["loss"] == loss]["path"].iloc[0])
        return out

    def trained_run_dirs(self, model: str, task: str, which: str = "best") -> dict[str, Path]:
        """:meth:`run_dirs` restricted to runs that have the checkpoint ``which`` (best | last)."""
        return {
            loss: path
            for loss, path in self.run_dirs(model, task).items()
            if (rf.RunFolder(path).checkpoints / f"{which}.pt").is_file()
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); delete it and rerun the stage"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _run_meta(run_dir: Path) -> dict[str, Any]:
    cfg = yaml.safe_load((run_dir / rf.CONFIG).read_text()) or {}
    try:
        meta = {
            "run_id": run_dir.name,
            "model": str(cfg["model"]["name"]),
            "loss": str(cfg["loss"]["name"]),
            "task": str(cfg["data"]["task"]),
            "seed": int(cfg.get("train", {}).get("seed", 0)),
        }
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{run_dir / 'config.yaml'} lacks key {err} (need model.name, loss.name, data.task)"
        ) from err
    if (run_dir / rf.ANALYSIS_DONE).exists():
        meta["status"] = "analysed"
    elif (run_dir / rf.TRAIN_DONE).exists():
        meta["status"] = "trained"
    else:
        meta["status"] = "incomplete"
    meta["path"] = str(run_dir)
    return meta


def performance_rows(metrics: Mapping[str, Any], task: str) -> list[dict[str, Any]]:
    """Tidy rows (class, auroc, ap, mean_prob) from a ``metrics.json`` mapping.

    Multi-label runs get an extra ``"Average"`` row from ``auroc_mean``/``ap_mean``/
    ``mean_prob_mean`` (NaN-excluded class means, :func:`imbalens.training.metrics.performance`).
    """
    for key in ("auroc", "ap", "mean_prob"):
        if not isinstance(metrics.get(key), Mapping):
            raise ValueError(f"metrics lack the per-class mapping {key!r}")
    rows = [
        {
            "class": name,
            "auroc": float(metrics["auroc"][name]),
            "ap": float(metrics["ap"].get(name, math.nan)),
            "mean_prob": float(metrics["mean_prob"].get(name, math.nan)),
        }
        for name in metrics["auroc"]
    ]
    if task == "multilabel":
        rows.append(
            {
                "class": AVERAGE,
                "auroc": float(metrics.get("auroc_mean", math.nan)),
                "ap": float(metrics.get("ap_mean", math.nan)),
                "mean_prob": float(metrics.get("mean_prob_mean", math.nan)),
            }
        )
    return rows


def alignment_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows (finding, iobb, ior) from ``alignment_summary.csv``, else from ``alignment.csv``.

    The summary holds one row per finding and ``"all"``, the mean over every
    (image, finding) map (columns ``iobb``/``ior`` or ``iobb_mean``/``ior_mean``); when
    only the per-map file exists both are recomputed from it.
    """
    summary = run_dir / rf.ALIGNMENT_SUMMARY
    if summary.exists():
        frame = pd.read_csv(summary)
    else:
        per_map = pd.read_csv(run_dir / rf.ALIGNMENT)
        frame = per_map.groupby("finding", as_index=False)[["iobb", "ior"]].mean()
        frame = pd.concat(
            [frame, pd.DataFrame([{"finding": "all", **per_map[["iobb", "ior"]].mean()}])]
        )
    # imbalens.explain.alignment.summarise_alignment writes iobb_mean/ior_mean (+ _std, _n).
    frame = frame.rename(columns={"iobb_mean": "iobb", "ior_mean": "ior"})
    missing = {"finding", "iobb", "ior"} - set(frame.columns)
    if missing:
        raise ValueError(f"{summary} lacks columns {sorted(missing)}")
    return frame[["finding", "iobb", "ior"]].to_dict("records")


def _performance_reader(run_dir: Path, task: str) -> list[dict[str, Any]]:
    return performance_rows(_read_json(run_dir / rf.METRICS), task)


def _alignment_reader(run_dir: Path, task: str) -> list[dict[str, Any]]:
    return alignment_rows(run_dir)


def _concepts_reader(run_dir: Path, task: str) -> list[dict[str, Any]]:
    return [_concept_row(_read_json(run_dir / rf.CONCEPTS), run_dir)]


STAGE_READERS: dict[str, tuple[tuple[str, ...], Any]] = {
    "performance": ((rf.METRICS,), _performance_reader),
    "alignment": ((rf.ALIGNMENT_SUMMARY, rf.ALIGNMENT), _alignment_reader),
    "concepts": ((rf.CONCEPTS,), _concepts_reader),
}
"""Table -> (files that feed it, first preferred; reader(run_dir, task) -> rows)."""


def load_grid(grid_dir: str | Path) -> GridResults:
    """Read every run folder (a sub-folder with ``config.yaml``) of ``grid_dir``.

    Unreadable or missing stage outputs are listed in :attr:`GridResults.problems`
    (and logged); the tables hold what is there.

    Raises:
        FileNotFoundError: when ``grid_dir`` does not exist.
    """
    grid = Path(grid_dir)
    if not grid.is_dir():
        raise FileNotFoundError(f"grid folder {grid} does not exist: run `imbalens grid` first")
    runs, perf, align, conc, problems = [], [], [], [], []
    for run_dir in sorted(p.parent for p in grid.glob("*/config.yaml")):
        try:
            meta = _run_meta(run_dir)
        except (ValueError, yaml.YAMLError) as err:
            problems.append(f"{run_dir.name}: unreadable config ({err})")
            continue
        runs.append(meta)
        key = {k: meta[k] for k in ("model", "loss", "task", "seed")} | {"run": meta["run_id"]}
        sinks = {"performance": perf, "alignment": align, "concepts": conc}
        for table, (files, reader) in STAGE_READERS.items():
            if not any((run_dir / f).exists() for f in files):
                problems.append(f"{run_dir.name}: no {files[0]} yet")
                continue
            name, sink = files[0], sinks[table]
            try:
                sink.extend(key | row for row in reader(run_dir, meta["task"]))
            except (ValueError, KeyError, OSError) as err:
                problems.append(f"{run_dir.name}: {name} unreadable ({err})")
    failed = _failed_runs(grid)
    for meta in runs:
        if meta["run_id"] in failed:
            meta["status"] = "failed"
            problems.append(f"{meta['run_id']}: a stage failed (see grid.json)")
    for note in problems:
        log.warning("%s: %s", grid, note)
    return GridResults(
        grid_dir=grid,
        runs=pd.DataFrame(runs, columns=RUN_COLUMNS),
        performance=pd.DataFrame(perf, columns=PERFORMANCE_COLUMNS),
        alignment=pd.DataFrame(align, columns=ALIGNMENT_COLUMNS),
        concepts=pd.DataFrame(conc, columns=CONCEPT_COLUMNS),
        problems=problems,
    )


BASELINE_METRICS: tuple[str, ...] = ("iobb", "ior", "pointing", "disjoint", "unique")
"""The numbers the results page sets beside their sanity baselines."""


def load_baselines(results: GridResults) -> pd.DataFrame:
    """Every run's sanity baselines over all its maps (``baselines.csv``, alignment) and
    images (``concepts_baselines.csv``, concepts): one row per (run, baseline, metric).

    Columns: model, loss, task, seed, run, metric, baseline (``untrained``,
    ``randomised-k``, ``uniform``, ``centre``), layers, value, trained (the trained model
    on the same images), beats (trained > value; NA where either is undefined), n.
    Runs without the files (analysed before they existed) are left out.
    """
    rows = []
    for r in results.runs.itertuples(index=False):
        folder = rf.RunFolder(Path(r.path))
        for file in (folder.baselines, folder.concepts_baselines):
            if not file.is_file():
                continue
            b = pd.read_csv(file)
            b = b[(b["finding"] == "all") & b["metric"].isin(BASELINE_METRICS)]
            key = {
                "model": r.model,
                "loss": r.loss,
                "task": r.task,
                "seed": r.seed,
                "run": r.run_id,
            }
            rows += [key | row for row in b.drop(columns="finding").to_dict("records")]
    cols = ["model", "loss", "task", "seed", "run", "metric", "baseline", "layers", "value",
            "trained", "beats", "n"]  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=cols)


def baselines_view(baselines: pd.DataFrame) -> pd.DataFrame:
    """The trained value beside each baseline, per (task, model, loss, metric), and the
    baselines it does not beat (``not beaten``: the flags of the results page)."""
    if baselines.empty:
        return pd.DataFrame()
    b = baselines[baselines["seed"] == baselines["seed"].min()]
    wide = b.pivot_table(
        index=["task", "model", "loss", "metric"], columns="baseline", values="value",
        aggfunc="first",
    )  # fmt: skip
    keys = ["task", "model", "loss", "metric"]
    wide.insert(0, "trained", b.groupby(keys)["trained"].first())
    lost = b[b["beats"].astype("boolean").eq(False).fillna(False)]
    wide["not beaten"] = lost.groupby(keys)["baseline"].agg(", ".join).reindex(wide.index)
    wide["not beaten"] = wide["not beaten"].fillna("")
    wide = wide.reset_index()
    wide["task"] = wide["task"].map(task_label)
    wide["model"] = wide["model"].map(model_label)
    wide["loss"] = wide["loss"].map(loss_label)
    wide["metric"] = wide["metric"].map(metric_label)
    return wide.set_index(["task", "model", "loss", "metric"])


def baselines_summary(baselines: pd.DataFrame) -> pd.DataFrame:
    """How many runs beat each baseline, per metric: ``k/n`` (n: runs where defined)."""
    if baselines.empty:
        return pd.DataFrame()
    beats = baselines["beats"].astype("boolean")
    grouped = baselines.assign(beats=beats).groupby(["metric", "baseline"])["beats"]
    out = grouped.agg(lambda x: f"{int(x.fillna(False).sum())}/{int(x.notna().sum())}")
    table = out.unstack("baseline").fillna("")
    table.index = [metric_label(m) for m in table.index]
    return table


def _failed_runs(grid: Path) -> set[str]:
    """Run folder names that ``imbalens grid`` recorded as failed in ``grid.json``."""
    try:
        report = json.loads((grid / rf.GRID_JSON).read_text())
        return {r["dir"] for r in report.get("runs", []) if r.get("status") == "failed"}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return set()


def _concept_row(data: Mapping[str, Any], run_dir: Path) -> dict[str, float]:
    try:
        return {"disjoint": float(data["disjoint"]), "unique": float(data["unique"])}
    except KeyError as err:
        raise ValueError(f"{run_dir / 'concepts.json'} lacks key {err}") from err


def loss_table(results: GridResults) -> pd.DataFrame:
    """One row per (model, task, loss): the numbers the claims compare, seed-averaged.

    Columns: model, task, loss, n_seeds, auroc, ap, mean_prob (the :func:`summary_class`
    row), iobb, ior (finding ``"all"``), disjoint, unique (means over seeds), and for each
    of these ``<metric>_sd``, the sample standard deviation over seeds (NaN with one
    seed). Absent stages give NaN.
    """
    keys = ["model", "task", "loss"]
    base = results.runs.groupby(keys, as_index=False).agg(n_seeds=("seed", "nunique"))
    perf = results.performance
    perf = perf[perf["class"] == perf["task"].map(summary_class)]
    align = results.alignment[results.alignment["finding"] == "all"]
    sources = (
        (perf, ["auroc", "ap", "mean_prob"]),
        (align, ["iobb", "ior"]),
        (results.concepts, ["disjoint", "unique"]),
    )
    sds = []
    for frame, cols in sources:
        grouped = frame.groupby(keys, as_index=False)[cols]
        base = base.merge(grouped.mean(), on=keys, how="left")
        sds.append(grouped.std().rename(columns={c: f"{c}_sd" for c in cols}))
    for part in sds:
        base = base.merge(part, on=keys, how="left")
    return _sort(base)


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {
        "model": {m: i for i, m in enumerate(MODEL_ORDER)},
        "task": {t: i for i, t in enumerate(TASK_ORDER)},
        "loss": {m: i for i, m in enumerate(LOSS_ORDER)},
    }

    def key(col: pd.Series) -> pd.Series:
        return col.map(rank[col.name]).fillna(99) if col.name in rank else col

    by = [c for c in ("task", "model", "loss") if c in frame.columns]
    return frame.sort_values(by, key=key).reset_index(drop=True)


def paper_numbers() -> dict[str, Any]:
    """The paper's Tables 1 and 2 (``paper_numbers.yaml``), with their ``source``."""
    text = resources.files("imbalens.study").joinpath("paper_numbers.yaml").read_text()
    return yaml.safe_load(text)


def paper_loss_table() -> pd.DataFrame:
    """The paper's numbers in :func:`loss_table`'s layout (iobb, ior, disjoint, unique).

    AUROC, AP and mean probability are NaN: the paper shows them only as bar charts.
    """
    data = paper_numbers()
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for table in ("table1", "table2"):
        for task, by_model in data[table].items():
            for model, by_metric in by_model.items():
                for metric, by_loss in by_metric.items():
                    for loss, value in by_loss.items():
                        row = rows.setdefault(
                            (model, task, loss), {"model": model, "task": task, "loss": loss}
                        )
                        row[metric] = float(value)
    frame = pd.DataFrame(list(rows.values()))
    for col in ("auroc", "ap", "mean_prob"):
        frame[col] = math.nan
    return _sort(frame)


def _display_order(index: Any, metrics: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """Rows (task, model, metric), as display labels, in the paper's order; others last."""
    rank = (
        [task_label(t) for t in TASK_ORDER],
        [model_label(m) for m in MODEL_ORDER],
        [metric_label(m) for m in metrics],
    )
    return sorted(
        index,
        key=lambda r: tuple(rk.index(v) if v in rk else 9 for rk, v in zip(rank, r, strict=True)),
    )


def side_by_side(
    ours: pd.DataFrame, metrics: tuple[str, ...], ours_label: str, digits: int = 4
) -> pd.DataFrame:
    """The paper's table and ours in one frame, laid out like the paper's tables.

    Rows: (task, model, metric); columns: (source, loss) with source ``"paper"`` and
    ``ours_label``. Only (task, model) pairs present in ``ours`` are kept; a loss we did
    not run shows as NaN (rendered "—" by the notebook).
    """
    frames = []
    for label, table in (("paper", paper_loss_table()), (ours_label, ours)):
        long = table.melt(
            id_vars=["task", "model", "loss"], value_vars=list(metrics), var_name="metric"
        )
        long["source"] = label
        frames.append(long)
    long = pd.concat(frames, ignore_index=True)
    present = set(zip(ours["task"], ours["model"], strict=True))
    long = long[[(t, m) in present for t, m in zip(long["task"], long["model"], strict=True)]]
    long["loss"] = long["loss"].map(loss_label)
    long["model"] = long["model"].map(model_label)
    long["task"] = long["task"].map(task_label)
    long["metric"] = long["metric"].map(metric_label)
    wide = long.pivot_table(
        index=["task", "model", "metric"], columns=["source", "loss"], values="value", dropna=False
    )
    cols = [(src, loss_label(loss)) for src in ("paper", ours_label) for loss in LOSS_ORDER]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(cols, names=["source", "loss"]))
    row_order = _display_order(wide.index, metrics)
    return wide.reindex(row_order).round(digits)


PAPER_NO_CI = "paper (single numbers, no CI)"
"""Column label of the paper's numbers in :func:`side_by_side_ci`: the paper gives no CIs."""


def side_by_side_ci(
    uncertainty: pd.DataFrame, metrics: tuple[str, ...], ours_label: str, digits: int = 3
) -> pd.DataFrame:
    """:func:`side_by_side` as text: ours as ``value [lo, hi]`` (95% CI), the paper's bare.

    ``uncertainty`` is :func:`imbalens.study.stats.grid_uncertainty`; its summary rows
    (label ``all``) are used, with the value's bootstrap CI, else its t-interval over
    seeds, else ``(no CI)``. The paper's column is :data:`PAPER_NO_CI`. Rows (task,
    model, metric); columns (source, loss); a loss we did not run is ``—``.
    """
    from imbalens.study.stats import ALL, format_ci

    unc = uncertainty[(uncertainty["label"] == ALL) & uncertainty["metric"].isin(metrics)]
    paper = paper_loss_table()
    present = set(zip(unc["task"], unc["model"], strict=True))
    cells: dict[tuple[str, str, str], dict[tuple[str, str], str]] = {}

    def key(task: str, model: str, metric: str) -> tuple[str, str, str]:
        return (task_label(task), model_label(model), metric_label(metric))

    for row in unc.itertuples():
        lo, hi = (row.lo, row.hi) if pd.notna(row.lo) else (row.t_lo, row.t_hi)
        text = format_ci(row.value, lo, hi, digits)
        cells.setdefault(key(row.task, row.model, row.metric), {})[
            (ours_label, loss_label(row.loss))
        ] = text
    for row in paper.itertuples():
        if (row.task, row.model) not in present:
            continue
        for metric in metrics:
            value = getattr(row, metric)
            text = f"{value:.4g}" if pd.notna(value) else "—"
            cells.setdefault(key(row.task, row.model, metric), {})[
                (PAPER_NO_CI, loss_label(row.loss))
            ] = text
    cols = [(src, loss_label(x)) for src in (PAPER_NO_CI, ours_label) for x in LOSS_ORDER]
    frame = pd.DataFrame.from_dict(cells, orient="index").reindex(
        columns=pd.MultiIndex.from_tuples(cols, names=["source", "loss"])
    )
    if frame.empty:
        return frame
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["task", "model", "metric"])
    order = _display_order(frame.index, metrics)
    return frame.reindex(order).astype(object).fillna("—")


def grid_label(results: GridResults) -> str:
    """A label for our numbers: ``imbalens (this grid: <grid name>, <data root>)``."""
    roots = set()
    for path in results.runs["path"]:
        try:
            cfg = yaml.safe_load((Path(path) / rf.CONFIG).read_text())
            roots.add(Path(str(cfg["data"]["root"])).name)
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            continue
    data = "/".join(sorted(roots)) or "unknown data"
    return f"imbalens (this grid: {results.grid_dir.name}, {data})"


COMPONENT_PREFIX = "components:"
"""Prefix of ``concepts_channels.csv``'s per-finding component columns."""


def detectors_by_finding(channels: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """Per boxed finding: how many channels detect it and the ``top`` strongest ones.

    ``channels`` is a run's ``concepts_channels.csv`` (:func:`imbalens.explain.dissect.count_concepts`
    ``per_channel``: channel, n_components, ..., ``components:<finding>``). A channel
    *detects* a finding when at least one of its above-threshold components overlaps a
    box of that finding. Returns columns finding, detector_channels, components (summed
    over channels), top_channels (``"c17 (12), c3 (9)"``: channel and its components).
    """
    cols = [c for c in channels.columns if c.startswith(COMPONENT_PREFIX)]
    if "channel" not in channels.columns:
        raise ValueError("concepts_channels.csv lacks the 'channel' column")
    rows = []
    for col in cols:
        counts = channels.set_index("channel")[col].fillna(0)
        best = counts[counts > 0].sort_values(ascending=False, kind="stable").head(top)
        rows.append(
            {
                "finding": col[len(COMPONENT_PREFIX) :],
                "detector_channels": int((counts > 0).sum()),
                "components": int(counts.sum()),
                "top_channels": ", ".join(f"c{ch} ({int(n)})" for ch, n in best.items()),
            }
        )
    return pd.DataFrame(
        rows, columns=["finding", "detector_channels", "components", "top_channels"]
    )


def design_gaps(results: GridResults) -> list[str]:
    """Sentences naming what the paper's 4 losses x 2 models x 2 tasks design lacks here.

    Also names runs without analysis results. An empty list means the grid is complete.
    """
    if results.runs.empty:
        return [f"no runs in {results.grid_dir} yet: run `imbalens grid` with its params file"]
    notes = []
    for what, present, full, label in (
        ("losses", results.losses, LOSS_ORDER, loss_label),
        ("models", results.models, MODEL_ORDER, model_label),
        ("tasks", results.tasks, TASK_ORDER, task_label),
    ):
        absent = [label(x) for x in full if x not in present]
        if absent:
            notes.append(f"{what} not in this grid: {', '.join(absent)}")
    unfinished = results.runs.loc[results.runs["status"] != "analysed", "run_id"].tolist()
    if unfinished:
        notes.append(f"runs without analysis results: {', '.join(unfinished)}")
    return notes
