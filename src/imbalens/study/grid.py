"""A grid of runs, each a sequence of papermill-executed stage notebooks.

A params file (``params/*.yaml``) describes one grid::

    name: quick
    base: {data: {root: data/phantom, image_size: 80}, train: {epochs: 4}}  # onto DEFAULTS
    axes: {model.name: [t-densenet, resnet50], loss.name: [bce, wbce, focal, cbfocal]}
    run_id: "{model.name}-{loss.name}-{data.task}-s{train.seed}"
    stages: [train, performance, alignment, concepts]
    phantom: {n_images: 4000, size: 256, seed: 0}       # imbalens.data.synth.generate(root, ...)
    jobs: 1

The axes are expanded as a Cartesian product; each combination is merged onto
``base`` (itself merged onto :data:`imbalens.config.DEFAULTS`), so a typo in any key is
an error naming it. Every run gets a folder ``<out>/<grid>/<run-id>/`` holding the
resolved ``config.yaml`` and one executed notebook per stage. A stage counts as done
when its marker ``<stage>.stage.done`` holds the hash of the run's resolved config
(:func:`imbalens.config.config_hash`, recorded in ``grid-run.json``: stages may add keys
to ``config.yaml``); a changed config moves the old folder aside to
``<out>/<grid>/.stale/`` and re-runs every stage. A failing stage marks its run failed
and skips that run's later stages; the other runs go on. Notebooks run with the run
folder as working directory and receive the absolute ``run_dir`` as parameter.

The train stage's notebook may be replaced by multi-GPU training outside the grid
(``torchrun ... -m imbalens.cli train --config <run>/config.yaml --out <run>``): a run
folder whose ``train.done`` exists (written by :func:`imbalens.training.train.train`) but which has
no executed ``train.ipynb`` counts as trained, and the grid goes on with the next stage.

After the runs, the per-grid pages are executed into ``<out>/<grid>/_pages/``: ``data``
(parameters ``phantom_root``, ``nih_mini_root``) and ``results`` (``grid_dir``,
``params_path``). ``<out>/<grid>/grid.json`` lists the runs, their statuses and timings.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imbalens import runfolder as rf
from imbalens.config import (
    ConfigError,
    atomic_write_text,
    config_hash,
    dump_config,
    merge_config,
    parse_override,
    validate_config,
    yaml_problem,
)
from imbalens.paths import NOTEBOOK_DIR, REPO
from imbalens.provenance import write_provenance
from imbalens.study.notebooks import (
    NotebookFailed,
    die_with_parent,
    execute,
    remove_dead_kernel_sockets,
)

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("train", "performance", "alignment", "concepts")
PAGES: tuple[str, ...] = ("data", "results", "sensitivity")
DEFAULT_RUN_ID = "{model.name}-{loss.name}-{data.task}-s{train.seed}"
NIH_MINI_DEFAULT = REPO.parent / "shared" / "data" / "nih-mini"
_TOP_KEYS = {"name", "base", "axes", "run_id", "stages", "phantom", "jobs", "description"}


# --------------------------------------------------------------------------- the spec
@dataclass
class GridSpec:
    """One params file, parsed and checked (not yet expanded)."""

    name: str
    path: Path | None
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    run_id: str = DEFAULT_RUN_ID
    stages: tuple[str, ...] = STAGES
    phantom: dict[str, Any] | None = None
    jobs: int = 1


@dataclass
class Run:
    """One expanded run: its id, its axis values and the resolved config."""

    id: str
    values: dict[str, Any]
    config: dict[str, Any]

    @property
    def hash(self) -> str:
        """Hash of the resolved config and, for a phantom root, the phantom's identity."""
        data = data_identity(self.config["data"].get("root"))
        return config_hash(self.config if data is None else {"config": self.config, "data": data})


def data_identity(root: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """What identifies a generated phantom (version, code digest, parameters), else None.

    Part of a run's hash, so that a regenerated phantom (other parameters or other
    generator code) re-runs every stage; real data (no ``phantom.json``) has no identity.
    """
    if root is None:
        return None
    try:
        manifest = json.loads((Path(root) / rf.PHANTOM_MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("complete") is False:
        return None
    return {k: manifest.get(k) for k in ("version", "code", "parameters")}


def _where(path: Path | None) -> str:
    return str(path) if path is not None else "<params>"


def parse_params(raw: Any, path: Path | None = None) -> GridSpec:
    """Check a params mapping (as read from YAML) and return a :class:`GridSpec`.

    Raises:
        ConfigError: naming the file and the offending key.
    """
    where = _where(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping with name, base, axes")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(_TOP_KEYS))})"
        )
    name = raw.get("name") or (path.stem if path is not None else None)
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name)):
        raise ConfigError(f"{where}: key 'name' must be a folder name like 'quick', got {name!r}")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: key 'base' must be a mapping of config sections")
    axes = raw.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}: key 'axes' must map dotted keys to lists")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: axis 'axes.{key}' must be a non-empty list")
    stages = tuple(raw.get("stages") or STAGES)
    bad = [s for s in stages if not re.fullmatch(r"[A-Za-z0-9_-]+", str(s))]
    if bad:
        raise ConfigError(f"{where}: key 'stages' has bad stage name(s) {bad}")
    phantom = raw.get("phantom")
    if phantom is not None and not isinstance(phantom, dict):
        raise ConfigError(f"{where}: key 'phantom' must be a mapping of synth.generate arguments")
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"{where}: key 'jobs' must be a positive integer, got {jobs!r}")
    run_id = str(raw.get("run_id") or DEFAULT_RUN_ID)
    spec = GridSpec(str(name), path, base, dict(axes), run_id, stages, phantom, jobs)
    try:  # fail early on unknown config keys, naming the file
        merge_config(base)
        for key, values in axes.items():
            merge_config(base, _nested(key.split("."), values[0]))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return spec


def load_params(path: str | os.PathLike[str]) -> GridSpec:
    """Read a params YAML (``yaml.safe_load``) and check it; errors name the file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"params file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {yaml_problem(exc)}") from None
    return parse_params(raw, p.resolve())


def _nested(keys: Sequence[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cursor = out
    for k in keys[:-1]:
        cursor = cursor.setdefault(k, {})
    cursor[keys[-1]] = value
    return out


def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    cursor: Any = cfg
    for k in dotted.split("."):
        if not isinstance(cursor, Mapping) or k not in cursor:
            raise KeyError(dotted)
        cursor = cursor[k]
    return cursor


def format_run_id(template: str, cfg: Mapping[str, Any]) -> str:
    """Fill ``{dotted.key[:spec]}`` fields of ``template`` from ``cfg`` and sanitise.

    The result keeps ``[A-Za-z0-9._-]``; any other run of characters becomes ``-``.
    Example: ``"{model.name}-{loss.name}-s{train.seed}"`` -> ``"t-densenet-bce-s0"``.
    """

    def fill(m: re.Match[str]) -> str:
        key, _, spec = m.group(1).partition(":")
        try:
            value = _lookup(cfg, key.strip())
        except KeyError:
            raise ConfigError(f"run_id field {{{key}}} is not a config key") from None
        return format(value, spec) if spec else str(value)

    text = re.sub(r"\{([^{}]+)\}", fill, template)
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    if not text:
        raise ConfigError(f"run_id template {template!r} gives an empty id")
    return text


def _absolute_roots(cfg: dict[str, Any], cwd: Path) -> None:
    """``data.root`` and ``data.prepared`` made absolute against ``cwd`` (``~`` expanded)."""
    for key in ("root", "prepared"):
        path = cfg["data"].get(key)
        if path is not None and not Path(str(path)).expanduser().is_absolute():
            cfg["data"][key] = str((cwd / str(path)).resolve())
        elif path is not None:
            cfg["data"][key] = str(Path(str(path)).expanduser())


def expand(
    spec: GridSpec, overrides: Iterable[str] = (), cwd: str | os.PathLike[str] | None = None
) -> list[Run]:
    """Expand ``spec``'s axes as a product into resolved runs (product order = axes order).

    ``overrides`` (``key=value``) apply on top of ``base``; overriding an axis key
    restricts that axis to the given value. Relative ``data.root`` paths resolve
    against ``cwd`` (default: the current directory).

    Raises:
        ConfigError: unknown keys, bad overrides, or two runs with the same id.
    """
    where = _where(spec.path)
    here = Path(cwd) if cwd is not None else Path.cwd()
    axes = dict(spec.axes)
    extra: list[str] = []
    for item in overrides:
        keys, value = parse_override(item)
        dotted = ".".join(keys)
        if dotted in axes:
            axes[dotted] = [value]
        else:
            extra.append(item)
    runs: list[Run] = []
    seen: dict[str, dict[str, Any]] = {}
    keys = list(axes)
    for combo in itertools.product(*(axes[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        layers = [_nested(k.split("."), v) for k, v in values.items()]
        try:
            cfg = merge_config(spec.base, overrides=extra)
            cfg = merge_config(cfg, *layers)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        _absolute_roots(cfg, here)
        rid = format_run_id(spec.run_id, cfg)
        if rid in seen:
            raise ConfigError(
                f"{where}: run_id {spec.run_id!r} gives {rid!r} for both {seen[rid]} and "
                f"{values}; add the differing axis to run_id"
            )
        seen[rid] = values
        runs.append(Run(rid, values, cfg))
    return runs


def select(runs: Sequence[Run], only: Iterable[str] | None) -> list[Run]:
    """Keep the runs whose id matches any pattern (glob; a plain word matches as substring)."""
    patterns = [p for p in (only or []) if p]
    if not patterns:
        return list(runs)
    globs = [p if any(c in p for c in "*?[") else f"*{p}*" for p in patterns]
    return [r for r in runs if any(fnmatch.fnmatchcase(r.id, g) for g in globs)]


# --------------------------------------------------------------------------- data
def ensure_phantom(root: str | os.PathLike[str], phantom: Mapping[str, Any]) -> bool:
    """Make the phantom at ``root`` match ``phantom`` (:func:`imbalens.data.synth.generate`).

    ``generate`` keeps a complete phantom with the same parameters and generator code and
    rewrites any other. A root that is neither empty nor a phantom's own (no
    ``phantom.json``: real data, whatever its label file is called) is never written to:
    it is used as it is. Returns True when images were (re)written.
    """
    from imbalens.data.synth import ForeignFolder, generate, refuse_foreign_folder

    r = Path(root)
    try:
        refuse_foreign_folder(r)
    except ForeignFolder:
        log.info("data root %s holds files but no phantom.json: used as real data, no phantom", r)
        return False
    before = data_identity(r)
    t0 = time.perf_counter()
    generate(r, **dict(phantom))
    changed = data_identity(r) != before
    if changed:
        log.info("phantom at %s written in %.0f s (%s)", r, time.perf_counter() - t0, dict(phantom))
    return changed


# --------------------------------------------------------------------------- stages
@dataclass
class StageResult:
    status: str  # done | skipped | failed | not-run | interrupted
    seconds: float = 0.0
    notebook: str | None = None
    error: str | None = None


@dataclass
class RunResult:
    id: str
    dir: str
    config_hash: str
    values: dict[str, Any]
    status: str = "pending"  # done | failed | interrupted | pending | not-selected
    stages: dict[str, StageResult] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages.values())


#: What each stage leaves in its run folder (checked when present at marking time) and
#: the markers of the code it calls that must go for a redo to really recompute.
STAGE_OUTPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": ((rf.TRAIN_DONE, rf.METRICS, rf.METRICS_VAL, rf.HISTORY), (rf.TRAIN_DONE,)),
    "performance": ((rf.METRICS,), ()),
    "alignment": (
        (rf.ALIGNMENT, rf.ALIGNMENT_SUMMARY, rf.ALIGNMENT_DONE, rf.BASELINES),
        (rf.ALIGNMENT_DONE, rf.ANALYSIS_DONE),
    ),
    "concepts": (
        (
            rf.CONCEPTS,
            rf.CONCEPTS_CHANNELS,
            rf.CONCEPTS_IMAGES,
            rf.CONCEPTS_BASELINES,
            rf.SENSITIVITY,
        ),
        (rf.CONCEPTS_DONE, rf.ANALYSIS_DONE, rf.SENSITIVITY),
    ),
}


def marker_path(run_dir: Path, stage: str) -> Path:
    """The grid's done marker for ``stage`` in ``run_dir``."""
    return run_dir / rf.STAGE_MARKER.format(stage=stage)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _parses(path: Path) -> bool:
    """A JSON output must parse (a truncated ``metrics.json`` is not an output)."""
    if path.suffix != ".json":
        return True
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def stage_outputs(run_dir: Path, stage: str, notebook: str | None) -> dict[str, str]:
    """Checksums (sha256) of ``stage``'s executed notebook and of its outputs present now."""
    names = list(STAGE_OUTPUTS.get(stage, ((), ()))[0])
    if notebook:
        names.insert(0, notebook)
    return {n: _sha256(run_dir / n) for n in names if (run_dir / n).is_file()}


def stage_problem(run_dir: Path, stage: str, chash: str) -> str | None:
    """Why ``stage`` of ``run_dir`` is not done, or None when it is.

    Done = the marker holds ``chash`` and every file it recorded still exists, parses
    (JSON) and has the recorded sha256 (a deleted ``alignment.csv`` or a corrupt
    ``metrics.json`` is redone, never trusted).
    """
    try:
        marker = json.loads(marker_path(run_dir, stage).read_text())
    except FileNotFoundError:
        return "no marker"
    except (OSError, ValueError):
        return "unreadable marker"
    if not isinstance(marker, dict) or marker.get("config_hash") != chash:
        return "marker of another config"
    for name, digest in (marker.get("outputs") or {}).items():
        f = run_dir / name
        if not f.is_file():
            return f"{name} is missing"
        if not _parses(f) or _sha256(f) != digest:
            return f"{name} is corrupt or changed"
    return None


def stage_done(run_dir: Path, stage: str, chash: str) -> bool:
    """True when ``stage``'s marker holds ``chash`` and its recorded outputs verify."""
    return stage_problem(run_dir, stage, chash) is None


def _invalidate(run_dir: Path, stage: str, why: str) -> None:
    """Remove a stage's marker and its code's own done markers, so that a redo recomputes."""
    if why == "no marker":
        return
    log.warning("%s / %s: %s; redoing the stage", run_dir.name, stage, why)
    marker_path(run_dir, stage).unlink(missing_ok=True)
    for name in STAGE_OUTPUTS.get(stage, ((), ()))[1]:
        (run_dir / name).unlink(missing_ok=True)


def _mark(run_dir: Path, stage: str, chash: str, seconds: float, **extra: Any) -> None:
    payload = {"stage": stage, "config_hash": chash, "seconds": round(seconds, 2)}
    payload.update(extra)
    payload["outputs"] = stage_outputs(run_dir, stage, extra.get("notebook"))
    payload["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(marker_path(run_dir, stage), json.dumps(payload, indent=1) + "\n")


def recorded_hash(run_dir: Path) -> str | None:
    """The config hash the grid recorded for ``run_dir`` (``grid-run.json``), if any.

    The record, not ``config.yaml``, is compared: stages may rewrite ``config.yaml``
    (training adds its own defaults), which must not count as a changed config.
    """
    try:
        return json.loads((run_dir / rf.RECORD).read_text()).get("config_hash")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def prepare_run_dir(
    run_dir: Path, cfg: Mapping[str, Any], stale_dir: Path, chash: str | None = None
) -> None:
    """Write ``config.yaml`` and ``grid-run.json`` for a run whose folder is new or stale.

    A folder recorded with another config hash (or, unrecorded, holding a different
    ``config.yaml``) is moved to ``stale_dir`` first; a folder recorded with the same hash
    is left as it is. ``chash`` defaults to the hash of ``cfg``.
    """
    cfg_path = run_dir / rf.CONFIG
    chash = chash or config_hash(cfg)
    if run_dir.is_dir():
        old = recorded_hash(run_dir)
        if old is None and cfg_path.is_file():
            try:
                old = config_hash(yaml.safe_load(cfg_path.read_text()) or {})
            except yaml.YAMLError:
                old = "unreadable"
        if old == chash:
            if not cfg_path.is_file():
                dump_config(cfg, cfg_path)
            if recorded_hash(run_dir) is None:
                _record(run_dir, chash)
            return
        if old is not None:
            stale_dir.mkdir(parents=True, exist_ok=True)
            dest = stale_dir / f"{run_dir.name}-{old}-{int(time.time())}"
            log.warning(
                "%s: config changed (%s -> %s); old run moved to %s", run_dir.name, old, chash, dest
            )
            shutil.move(str(run_dir), str(dest))
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, cfg_path)
    _record(run_dir, chash)


def _record(run_dir: Path, chash: str) -> None:
    payload = {"run_id": run_dir.name, "config_hash": chash}
    atomic_write_text(run_dir / rf.RECORD, json.dumps(payload, indent=1) + "\n")


@contextlib.contextmanager
def kernel_env(threads: int | None) -> Iterator[None]:
    """Environment for kernels: inline matplotlib and, when given, the thread count."""
    saved = {k: os.environ.get(k) for k in ("MPLBACKEND", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _trained_outside(run_dir: Path, stage: str) -> bool:
    return (
        stage == "train"
        and (run_dir / rf.TRAIN_DONE).is_file()
        and not (run_dir / rf.NOTEBOOK.format(stage="train")).is_file()
    )


def _execute_stage(
    run_id: str, run_dir: Path, chash: str, stage: str, notebook_dir: Path, threads: int | None
) -> StageResult:
    """Execute one stage's notebook and mark it done (with its outputs' checksums)."""
    log.info("%s / %s started", run_id, stage)
    write_provenance(run_dir, chash=chash)
    try:
        ex = execute(
            notebook_dir / f"{stage}.py",
            run_dir / rf.NOTEBOOK.format(stage=stage),
            {"run_dir": str(run_dir)},
            cwd=run_dir,
        )
    except (NotebookFailed, FileNotFoundError, ValueError) as exc:
        kept = getattr(exc, "failed_path", None)
        log.error("%s / %s failed: %s%s", run_id, stage, exc, f" (see {kept})" if kept else "")
        return StageResult("failed", notebook=kept.name if kept else None, error=str(exc))
    used = threads or os.environ.get("OMP_NUM_THREADS") or "torch default"
    _mark(run_dir, stage, chash, ex.seconds, notebook=ex.output.name, threads=used)
    log.info("%s / %s done in %.1f s", run_id, stage, ex.seconds)
    return StageResult("done", ex.seconds, ex.output.name)


def _one_stage(
    run_id: str, run_dir: Path, chash: str, stage: str, notebook_dir: Path, threads: int | None
) -> StageResult:
    """Skip ``stage`` when it is verified done, else (re)do it."""
    why = stage_problem(run_dir, stage, chash)
    if why is None:
        return StageResult("skipped", notebook=rf.NOTEBOOK.format(stage=stage))
    _invalidate(run_dir, stage, why)
    if _trained_outside(run_dir, stage):
        log.info("%s: train.done found without train.ipynb: trained outside the grid", run_id)
        _mark(run_dir, stage, chash, 0.0, external=True)
        return StageResult("skipped")
    return _execute_stage(run_id, run_dir, chash, stage, notebook_dir, threads)


def run_stages(
    run_id: str,
    run_dir: Path,
    chash: str,
    stages: Sequence[str],
    notebook_dir: Path,
    threads: int | None = None,
    on_stage: Any = None,
) -> RunResult:
    """Execute ``stages`` of one run in order, holding the run's lock; a failure skips the rest.

    ``on_stage(stage, result)`` is called after each stage (for progress bars).
    ``KeyboardInterrupt`` propagates after the current notebook's partial output is removed.
    A run folder locked by another live process (:func:`imbalens.runfolder.hold_lock`)
    fails this run with a message naming the holder; nothing is written into it.
    """
    result = RunResult(run_id, str(run_dir), chash, {})

    def one(stage: str) -> None:
        if result.status == "failed":
            res = StageResult("not-run")
        else:
            res = _one_stage(run_id, run_dir, chash, stage, notebook_dir, threads)
            result.status = "failed" if res.status == "failed" else result.status
        result.stages[stage] = res
        if on_stage is not None:
            on_stage(stage, res)

    try:
        with rf.RunFolder(run_dir).lock(f"imbalens grid: {run_id}"), kernel_env(threads):
            for stage in stages:
                one(stage)
    except rf.LockHeld as exc:
        log.error("%s", exc)
        result.stages = {s: StageResult("not-run") for s in stages}
        if stages:
            result.stages[stages[0]] = StageResult("failed", error=str(exc))
        result.status = "failed"
        return result
    if result.status != "failed":
        result.status = "done"
    return result


def _quiet_papermill() -> None:
    """Papermill logs every notebook's paths at INFO; the grid logs one line per stage."""
    papermill_log = logging.getLogger("papermill")
    if papermill_log.getEffectiveLevel() > logging.DEBUG:
        papermill_log.setLevel(logging.WARNING)


def _worker_init(level: int, parent: int) -> None:
    """A pool worker: dies with the grid (even on kill -9), logs like it."""
    die_with_parent(parent)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    _quiet_papermill()


# --------------------------------------------------------------------------- the grid
@dataclass
class GridReport:
    """What :func:`run_grid` did: one entry per expanded run, plus the pages."""

    name: str
    grid_dir: Path
    runs: list[RunResult]
    pages: dict[str, StageResult]
    seconds: float
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        bad_runs = any(r.status in ("failed", "interrupted") for r in self.runs)
        bad_pages = any(p.status == "failed" for p in self.pages.values())
        return not (bad_runs or bad_pages or self.interrupted)

    def table(self) -> str:
        """A plain-text summary: one row per run, the seconds or status of each stage."""
        stages = list(dict.fromkeys(s for r in self.runs for s in r.stages))
        width = max([len(r.id) for r in self.runs] + [6])
        head = f"{'run':<{width}}  {'status':<12}" + "".join(f"{s:>13}" for s in stages)
        lines = [head, "-" * len(head)]

        def cell(s: StageResult | None) -> str:
            if s is None:
                return "-"
            if s.status == "done":
                return f"{s.seconds:.0f}s"
            return s.status

        for r in self.runs:
            lines.append(
                f"{r.id:<{width}}  {r.status:<12}"
                + "".join(f"{cell(r.stages.get(s)):>13}" for s in stages)
            )
        for name, p in self.pages.items():
            lines.append(f"page {name}: {p.status}" + (f" ({p.error})" if p.error else ""))
        n_fail = sum(r.status == "failed" for r in self.runs)
        lines.append(
            f"{len(self.runs)} runs, {n_fail} failed, {self.seconds:.0f} s; "
            f"grid folder {self.grid_dir}"
        )
        return "\n".join(lines)


def _write_grid_json(report: GridReport, spec: GridSpec, started: str) -> None:
    payload = {
        "name": report.name,
        "params": str(spec.path) if spec.path else None,
        "stages": list(spec.stages),
        "started": started,
        "seconds": round(report.seconds, 1),
        "interrupted": report.interrupted,
        "runs": [
            {
                "id": r.id,
                "dir": Path(r.dir).name,
                "config_hash": r.config_hash,
                "values": r.values,
                "status": r.status,
                "seconds": round(r.seconds, 1),
                "stages": {k: asdict(v) for k, v in r.stages.items()},
            }
            for r in report.runs
        ],
        "pages": {k: asdict(v) for k, v in report.pages.items()},
    }
    atomic_write_text(
        report.grid_dir / rf.GRID_JSON, json.dumps(payload, indent=1, default=str) + "\n"
    )


def _progress(total: int, enabled: bool | None) -> Any:
    """A tqdm bar on a terminal and, always, one log line per stage with the grid's ETA."""
    from imbalens.training.progress import GridProgress

    return GridProgress(total, enabled)


def _pages_inputs(results: Sequence[RunResult]) -> list[tuple[str, str, str, list[str]]]:
    """What the grid pages read of each run: id, config hash, status and its stage
    markers (rewritten, with their outputs' checksums, whenever a stage reruns), so that
    a page is rebuilt when any run's results change, not only its config."""
    out = []
    for r in results:
        folder = Path(r.dir)
        pattern = rf.STAGE_MARKER.format(stage="*")
        markers = sorted(p.read_text() for p in folder.glob(pattern)) if folder.is_dir() else []
        out.append((r.id, r.config_hash, r.status, markers))
    return out


def _run_pages(
    spec: GridSpec,
    grid_dir: Path,
    runs: Sequence[Run],
    results: Sequence[RunResult],
    notebook_dir: Path,
) -> dict[str, StageResult]:
    pages_dir = grid_dir / rf.PAGES_DIR
    roots = [Path(r.config["data"]["root"]) for r in runs]
    phantom_root = next(
        (p for p in roots if (p / rf.PHANTOM_MANIFEST).is_file()), REPO / "data" / "phantom"
    )
    nih_env = os.environ.get("IMBALENS_NIH_MINI")
    nih_root = next(
        (p for p in roots if not (p / rf.PHANTOM_MANIFEST).is_file()),
        Path(nih_env) if nih_env else NIH_MINI_DEFAULT,
    )
    params = {
        "data": {"phantom_root": str(phantom_root), "nih_mini_root": str(nih_root.resolve())},
        "results": {
            "grid_dir": str(grid_dir),
            "params_path": str(spec.path) if spec.path else "",
        },
        "sensitivity": {"grid_dir": str(grid_dir)},
    }
    runs_state = _pages_inputs(results)
    state = {
        "data": params["data"],
        "results": [params["results"], runs_state],
        "sensitivity": runs_state,
    }
    out: dict[str, StageResult] = {}
    with kernel_env(None):
        for page in PAGES:
            src = notebook_dir / f"{page}.py"
            if not src.is_file():
                log.warning("page %s: no notebook %s; skipped", page, src)
                out[page] = StageResult("absent")
                continue
            phash = config_hash({"page": page, "state": state[page], "source": _sha256(src)})
            if (
                stage_done(pages_dir, page, phash)
                and (pages_dir / rf.NOTEBOOK.format(stage=page)).is_file()
            ):
                out[page] = StageResult("skipped", notebook=rf.NOTEBOOK.format(stage=page))
                continue
            try:
                ex = execute(
                    src, pages_dir / rf.NOTEBOOK.format(stage=page), params[page], cwd=pages_dir
                )
            except (NotebookFailed, ValueError) as exc:
                log.error("page %s failed: %s", page, exc)
                out[page] = StageResult("failed", error=str(exc))
                continue
            _mark(pages_dir, page, phash, ex.seconds, notebook=ex.output.name)
            log.info("page %s done in %.1f s", page, ex.seconds)
            out[page] = StageResult("done", ex.seconds, ex.output.name)
    return out


@dataclass
class GridPlan:
    """What a grid invocation will do, checked before anything is written."""

    spec: GridSpec
    runs: list[Run]
    chosen: list[Run]
    stages: list[str]
    grid_dir: Path
    jobs: int
    notebook_dir: Path


def _confined(grid_dir: Path, run_id: str) -> Path:
    """``grid_dir/run_id``, refusing ids that would leave the grid folder or clash."""
    run_dir = (grid_dir / run_id).resolve()
    reserved = {rf.PAGES_DIR, rf.STALE_DIR, rf.SHARED_DIR}
    if run_dir.parent != grid_dir or run_id in reserved or run_id.startswith("."):
        raise ConfigError(f"run id {run_id!r} would not be a plain folder inside {grid_dir}")
    return run_dir


def plan_grid(
    spec: GridSpec,
    out: str | os.PathLike[str],
    *,
    jobs: int | None,
    only: Iterable[str] | None,
    overrides: Iterable[str],
    stages: Sequence[str] | None,
    notebook_dir: str | os.PathLike[str] | None,
) -> GridPlan:
    """Expand and select the runs, check stages, jobs and run folders; writes nothing.

    Raises:
        ConfigError: unknown stages, ``--jobs`` < 1, an ``--only`` matching nothing, a run
            id that escapes ``out/<grid>/``.
    """
    todo = list(spec.stages)
    if stages:
        unknown = [s for s in stages if s not in spec.stages]
        if unknown:
            raise ConfigError(f"--stages {unknown} not in the grid's stages {list(spec.stages)}")
        todo = [s for s in spec.stages if s in stages]
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"--jobs must be a positive integer, got {jobs!r}")
    runs = expand(spec, overrides)
    chosen = select(runs, only)
    if only and not chosen:
        raise ConfigError(f"--only {list(only)} matches none of the {len(runs)} run ids")
    grid_dir = (Path(out) / spec.name).resolve()
    if grid_dir.parent != Path(out).resolve():
        raise ConfigError(f"grid name {spec.name!r} would leave --out {out}")
    for r in runs:
        _confined(grid_dir, r.id)
    nb_dir = Path(notebook_dir) if notebook_dir is not None else NOTEBOOK_DIR
    return GridPlan(spec, runs, chosen, todo, grid_dir, jobs or spec.jobs, nb_dir)


def _phantom_roots(plan: GridPlan) -> list[str]:
    """The data roots the grid's ``phantom:`` block will write (empty or own folders)."""
    if not plan.spec.phantom:
        return []
    from imbalens.data.synth import ForeignFolder, refuse_foreign_folder

    roots = []
    for root in dict.fromkeys(r.config["data"]["root"] for r in plan.chosen):
        if not isinstance(root, str):  # validate_grid names it
            continue
        try:
            refuse_foreign_folder(root)
        except ForeignFolder:
            continue
        roots.append(root)
    return roots


def validate_grid(plan: GridPlan) -> None:
    """Validate every chosen run's config up front (:func:`imbalens.config.validate_config`).

    Problems of all runs are reported together, each naming the params file and the key;
    the same problem in several runs is reported once.

    Raises:
        ConfigError: one line per distinct problem.
    """
    source = _where(plan.spec.path)
    made = set(_phantom_roots(plan))
    problems: dict[str, None] = {}
    for r in plan.chosen:
        try:
            validate_config(r.config, source, check_root=r.config["data"]["root"] not in made)
        except ConfigError as exc:
            problems.update(dict.fromkeys(str(exc).splitlines()))
    if problems:
        raise ConfigError("\n".join(problems))


def _prepare_data(plan: GridPlan) -> None:
    """Write the phantom where one is wanted, pre-flight every data root (seconds), then
    build the prepared-image caches the runs name (``data.prepared``).

    Raises:
        ConfigError: a data root that cannot be read (lists, CSVs, images), naming it.
    """
    for root in _phantom_roots(plan):
        ensure_phantom(root, plan.spec.phantom or {})
    from imbalens.data.nih import DataError, preflight

    for root in dict.fromkeys(r.config["data"]["root"] for r in plan.chosen):
        cfg = next(r.config["data"] for r in plan.chosen if r.config["data"]["root"] == root)
        try:
            preflight(root, missing=cfg.get("missing", "error"))
        except (DataError, FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"{_where(plan.spec.path)}: data.root {root}: {exc}") from None
    _prepare_caches(plan)


def _prepare_caches(plan: GridPlan) -> None:
    """Build (or keep, when up to date) each prepared-image cache the runs name.

    One :func:`imbalens.data.prepared.prepare` per distinct (data.root, data.prepared,
    data.image_size), before any run starts, so that parallel runs only read it.
    """
    # Imported here, not at the top: prepared.py pulls in torch (via the NIH reader),
    # and a grid's bad input must fail in about a second, before any heavy import.
    from imbalens.data.prepared import prepare

    wanted = {
        (d["root"], d["prepared"], int(d["image_size"]))
        for d in (r.config["data"] for r in plan.chosen)
        if d.get("prepared")
    }
    for root, cache, size in sorted(wanted):
        r = prepare(root, cache, size)
        log.info(
            "prepared cache %s: %d images, %s in %.0f s",
            r.folder,
            r.images,
            "built" if r.built else "up to date",
            r.seconds,
        )


def _initial_results(plan: GridPlan) -> dict[str, RunResult]:
    results: dict[str, RunResult] = {}
    for r in plan.runs:
        run_dir = plan.grid_dir / r.id
        rr = RunResult(r.id, str(run_dir), r.hash, r.values)
        done = all(stage_done(run_dir, s, r.hash) for s in plan.spec.stages)
        rr.status = "done" if done else ("pending" if r in plan.chosen else "not-selected")
        for s in plan.stages:
            rr.stages[s] = StageResult("skipped" if stage_done(run_dir, s, r.hash) else "pending")
        results[r.id] = rr
    return results


def _threads(jobs: int) -> int | None:
    """Intra-op threads per run: the cores shared by ``jobs`` runs; None (torch's default,
    as before) for one job. Results depend on it at the 1e-3 level, so every stage
    marker records it (``threads``); it is not in the config hash."""
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None


def _execute_runs(plan: GridPlan, results: dict[str, RunResult], on_result: Any, bar: Any) -> None:
    """Run the chosen runs' stages, serially or in a pool of ``plan.jobs`` processes."""
    threads = _threads(plan.jobs)
    if plan.jobs == 1:
        for r in plan.chosen:
            res = run_stages(
                r.id, plan.grid_dir / r.id, r.hash, plan.stages, plan.notebook_dir, threads,
                on_stage=lambda _s, _res: bar.update(1),
            )  # fmt: skip
            on_result(r, res)
        return
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().level or logging.INFO
    with ProcessPoolExecutor(
        plan.jobs, mp_context=ctx, initializer=_worker_init, initargs=(level, os.getpid())
    ) as pool:
        futures = {
            pool.submit(
                run_stages, r.id, plan.grid_dir / r.id, r.hash, plan.stages, plan.notebook_dir,
                threads,
            ): r
            for r in plan.chosen
        }  # fmt: skip
        for fut in as_completed(futures):
            on_result(futures[fut], fut.result())
            bar.update(len(plan.stages))


def _mark_interrupted(results: dict[str, RunResult], plan: GridPlan) -> None:
    """After ctrl-C: stages finished in this invocation stay done, the rest interrupted."""
    for rr in results.values():
        if rr.status != "pending":
            continue
        rr.status = "interrupted"
        for s in plan.stages:
            if stage_done(Path(rr.dir), s, rr.config_hash):
                rr.stages[s] = StageResult(
                    "done" if rr.stages[s].status == "pending" else "skipped"
                )
            elif rr.stages.get(s) is not None and rr.stages[s].status == "pending":
                rr.stages[s] = StageResult("interrupted")


#: Temporary files of :mod:`imbalens.io` and of papermill left by a killed writer.
DEBRIS_GLOBS = (".*.tmp", f"{rf.CHECKPOINTS}/.*.tmp", ".*.partial.ipynb")


def remove_debris(run_dir: Path) -> list[Path]:
    """Delete the half-written temporaries a kill left in ``run_dir`` (call under its lock).

    Only names the project's own atomic writes use (``.<name>.<random>.tmp``, papermill's
    ``.<stage>.partial.ipynb``) are removed, never a finished file. Returns what went.
    """
    gone = [p for g in DEBRIS_GLOBS for p in run_dir.glob(g) if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    if gone:
        log.info(
            "%s: removed %d temporary file(s) left by a killed process", run_dir.name, len(gone)
        )
    return gone


def _prepare_runs(plan: GridPlan, results: dict[str, RunResult]) -> None:
    """Write each chosen run's folder under its lock; a run another process holds is
    left untouched (never moved aside), marked failed and dropped from ``plan.chosen``."""
    ready = []
    for r in plan.chosen:
        run_dir = plan.grid_dir / r.id
        try:
            with rf.RunFolder(run_dir).lock("imbalens grid: prepare"):
                prepare_run_dir(run_dir, r.config, plan.grid_dir / rf.STALE_DIR, r.hash)
                remove_debris(run_dir)
        except rf.LockHeld as exc:
            log.error("%s", exc)
            rr = results[r.id]
            rr.status = "failed"
            rr.stages = {s: StageResult("not-run") for s in plan.stages}
            if plan.stages:
                rr.stages[plan.stages[0]] = StageResult("failed", error=str(exc))
            continue
        ready.append(r)
    plan.chosen = ready


def run_grid(
    params: str | os.PathLike[str] | GridSpec,
    out: str | os.PathLike[str] = "runs",
    *,
    jobs: int | None = None,
    only: Iterable[str] | None = None,
    overrides: Iterable[str] = (),
    stages: Sequence[str] | None = None,
    dry_run: bool = False,
    notebook_dir: str | os.PathLike[str] | None = None,
    pages: bool = True,
    progress: bool | None = None,
    prepare_only: bool = False,
) -> GridReport:
    """Run (or resume) a grid: checks, phantom if needed, every selected run's stages, pages.

    Every config is validated and every data root pre-flighted before anything runs; the
    grid folder's lock (``grid.lock``) is held for the whole invocation, each run's lock
    while its stages run.

    Args:
        params: a params YAML path or a parsed :class:`GridSpec`.
        out: the runs folder; the grid lives in ``out/<name>/``.
        jobs: runs in parallel (processes, ``OMP_NUM_THREADS = cores // jobs`` each);
            default: the params' ``jobs``.
        only: run-id patterns (globs, or substrings) selecting runs.
        overrides: ``key=value`` config overrides (an axis key restricts that axis).
        stages: a subset of the params' stages to run (in the params' order).
        dry_run: expand, validate and report what would run; writes nothing.
        notebook_dir: folder of the stage/page ``.py`` notebooks (default ``book/``).
        pages: execute the data and results pages after the runs.
        progress: force the tqdm bar on/off (default: on when stderr is a TTY).
        prepare_only: write the run folders' ``config.yaml`` (and the phantom), run nothing
            (e.g. before training each run with torchrun).

    Returns:
        A :class:`GridReport`; ``report.ok`` is False when a run or page failed.

    Raises:
        ConfigError: a bad config, params file or data root (nothing was run), or
            :class:`imbalens.runfolder.LockHeld` when another grid uses the folder.
    """
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    spec = params if isinstance(params, GridSpec) else load_params(params)
    plan = plan_grid(
        spec, out, jobs=jobs, only=only, overrides=overrides, stages=stages,
        notebook_dir=notebook_dir,
    )  # fmt: skip
    validate_grid(plan)
    results = _initial_results(plan)
    report = GridReport(spec.name, plan.grid_dir, list(results.values()), {}, 0.0)
    if dry_run:
        report.seconds = time.perf_counter() - t0
        return report
    with rf.hold_lock(plan.grid_dir / rf.GRID_LOCK, what=f"imbalens grid {spec.name}"):
        _prepare_data(plan)
        _prepare_runs(plan, results)
        remove_dead_kernel_sockets()
        report.runs = list(results.values())
        _write_grid_json(report, spec, started)
        if not prepare_only:
            _run_and_report(plan, results, report, started, pages, progress)
    report.seconds = time.perf_counter() - t0
    _write_grid_json(report, spec, started)
    return report


def _run_and_report(
    plan: GridPlan,
    results: dict[str, RunResult],
    report: GridReport,
    started: str,
    pages: bool,
    progress: bool | None,
) -> None:
    """Execute the runs (grid.json rewritten after each), then the pages."""
    bar = _progress(len(plan.chosen) * len(plan.stages), progress)
    log.info(
        "grid %s: %d of %d runs x %d stages, %d job(s), threads each: %s -> %s",
        plan.spec.name, len(plan.chosen), len(plan.runs), len(plan.stages), plan.jobs,
        _threads(plan.jobs), plan.grid_dir,
    )  # fmt: skip

    def on_result(r: Run, res: RunResult) -> None:
        res.values = r.values
        results[r.id] = res
        report.runs = list(results.values())
        _write_grid_json(report, plan.spec, started)

    try:
        _execute_runs(plan, results, on_result, bar)
    except KeyboardInterrupt:
        report.interrupted = True
        _mark_interrupted(results, plan)
        report.runs = list(results.values())
        log.warning("interrupted: run the same command again to resume")
        return
    finally:
        bar.close()
    report.runs = list(results.values())
    if pages:
        try:
            report.pages = _run_pages(
                plan.spec, plan.grid_dir, plan.runs, report.runs, plan.notebook_dir
            )
        except KeyboardInterrupt:
            report.interrupted = True


# --------------------------------------------------------------------------- CLI
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``imbalens grid``."""
    parser.add_argument("params", help="params YAML of the grid, e.g. params/quick.yaml")
    parser.add_argument("--out", default="runs", help="runs folder (default: runs)")
    parser.add_argument(
        "--jobs", type=_positive_int, default=None, help="runs in parallel (processes, >= 1)"
    )
    parser.add_argument(
        "--only", action="append", default=None, metavar="PATTERN",
        help="run-id glob or substring; repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. --set data.root=/data/nih (an axis key narrows the axis)",
    )  # fmt: skip
    parser.add_argument("--stages", nargs="+", default=None, help="only these stages")
    parser.add_argument("--dry-run", action="store_true", help="list the runs; run nothing")
    parser.add_argument(
        "--prepare", action="store_true", help="write the run folders' config.yaml, run nothing"
    )
    parser.add_argument("--no-pages", action="store_true", help="skip the data/results pages")
    parser.add_argument(
        "--notebooks", default=None, help="folder of the .py notebooks (default: book/)"
    )
    from imbalens.study import cluster  # --scheduler: the grid on Dask

    cluster.configure_parser(parser)


def cli(args: argparse.Namespace) -> int:
    """Run ``imbalens grid``; exit code 1 when a run or page failed, 130 when interrupted."""
    if getattr(args, "scheduler", None):
        from imbalens.study import cluster

        return cluster.cli(args)
    _quiet_papermill()
    try:
        report = run_grid(
            args.params,
            args.out,
            jobs=args.jobs,
            only=args.only,
            overrides=args.overrides,
            stages=args.stages,
            dry_run=args.dry_run,
            notebook_dir=args.notebooks,
            pages=not args.no_pages,
            prepare_only=args.prepare,
        )
    except (ConfigError, rf.LockHeld) as exc:
        for line in str(exc).splitlines():
            log.error("%s", line)
        return 2
    sys.stdout.write(report.table() + "\n")
    if report.interrupted:
        return 130
    return 0 if report.ok else 1
