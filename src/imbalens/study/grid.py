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
)
from imbalens.paths import NOTEBOOK_DIR, REPO
from imbalens.provenance import write_provenance
from imbalens.study.notebooks import NotebookFailed, execute

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("train", "performance", "alignment", "concepts")
PAGES: tuple[str, ...] = ("data", "results")
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
    if not isinstance(manifest, dict):
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
    if not name or not re.fullmatch(r"[A-Za-z0-9._-]+", str(name)):
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
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
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
    root = cfg["data"].get("root")
    if root is not None and not Path(str(root)).expanduser().is_absolute():
        cfg["data"]["root"] = str((cwd / str(root)).resolve())
    elif root is not None:
        cfg["data"]["root"] = str(Path(str(root)).expanduser())


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
    rewrites any other. A root that holds real data (``Data_Entry_2017.csv`` without
    ``phantom.json``) is never written to. Returns True when images were (re)written.
    """
    r = Path(root)
    if (r / "Data_Entry_2017.csv").is_file() and not (r / rf.PHANTOM_MANIFEST).is_file():
        log.info("data root %s holds real data (no phantom.json): not generating a phantom", r)
        return False
    from imbalens.data.synth import generate

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


def marker_path(run_dir: Path, stage: str) -> Path:
    """The grid's done marker for ``stage`` in ``run_dir``."""
    return run_dir / rf.STAGE_MARKER.format(stage=stage)


def stage_done(run_dir: Path, stage: str, chash: str) -> bool:
    """True when ``stage``'s marker in ``run_dir`` holds ``chash``."""
    m = marker_path(run_dir, stage)
    try:
        return json.loads(m.read_text()).get("config_hash") == chash
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return False


def _mark(run_dir: Path, stage: str, chash: str, seconds: float, **extra: Any) -> None:
    payload = {"stage": stage, "config_hash": chash, "seconds": round(seconds, 2)}
    payload.update(extra)
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


def run_stages(
    run_id: str,
    run_dir: Path,
    chash: str,
    stages: Sequence[str],
    notebook_dir: Path,
    threads: int | None = None,
    on_stage: Any = None,
) -> RunResult:
    """Execute ``stages`` of one run in order; the first failure skips the rest.

    ``on_stage(stage, result)`` is called after each stage (for progress bars).
    ``KeyboardInterrupt`` propagates after the current notebook's partial output is removed.
    """
    result = RunResult(run_id, str(run_dir), chash, {})
    failed = False
    with kernel_env(threads):
        for stage in stages:
            if failed:
                res = StageResult("not-run")
            elif stage_done(run_dir, stage, chash):
                res = StageResult("skipped", notebook=rf.NOTEBOOK.format(stage=stage))
            elif (
                stage == "train"
                and (run_dir / rf.TRAIN_DONE).is_file()
                and not (run_dir / rf.NOTEBOOK.format(stage="train")).is_file()
            ):
                log.info(
                    "%s: train.done found without train.ipynb: trained outside the grid", run_id
                )
                _mark(run_dir, stage, chash, 0.0, external=True)
                res = StageResult("skipped")
            else:
                src = notebook_dir / f"{stage}.py"
                log.info("%s / %s started", run_id, stage)
                if not (run_dir / rf.PROVENANCE).is_file() or stage == stages[0]:
                    write_provenance(run_dir, chash=chash)
                try:
                    ex = execute(
                        src,
                        run_dir / rf.NOTEBOOK.format(stage=stage),
                        {"run_dir": str(run_dir)},
                        cwd=run_dir,
                    )
                except (NotebookFailed, FileNotFoundError, ValueError) as exc:
                    kept = getattr(exc, "failed_path", None)
                    log.error(
                        "%s / %s failed: %s%s", run_id, stage, exc, f" (see {kept})" if kept else ""
                    )
                    res = StageResult(
                        "failed", notebook=kept.name if kept else None, error=str(exc)
                    )
                    failed = True
                else:
                    _mark(run_dir, stage, chash, ex.seconds, notebook=ex.output.name)
                    log.info("%s / %s done in %.1f s", run_id, stage, ex.seconds)
                    res = StageResult("done", ex.seconds, ex.output.name)
            result.stages[stage] = res
            if on_stage is not None:
                on_stage(stage, res)
    result.status = "failed" if failed else "done"
    return result


def _quiet_papermill() -> None:
    """Papermill logs every notebook's paths at INFO; the grid logs one line per stage."""
    papermill_log = logging.getLogger("papermill")
    if papermill_log.getEffectiveLevel() > logging.DEBUG:
        papermill_log.setLevel(logging.WARNING)


def _worker_init(level: int) -> None:
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
    }
    state = {
        "data": params["data"],
        "results": [params["results"], [(r.id, r.config_hash, r.status) for r in results]],
    }
    out: dict[str, StageResult] = {}
    with kernel_env(None):
        for page in PAGES:
            src = notebook_dir / f"{page}.py"
            if not src.is_file():
                log.warning("page %s: no notebook %s; skipped", page, src)
                out[page] = StageResult("absent")
                continue
            phash = config_hash({"page": page, "state": state[page]})
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
    """Run (or resume) a grid: phantom if needed, every selected run's stages, the pages.

    Args:
        params: a params YAML path or a parsed :class:`GridSpec`.
        out: the runs folder; the grid lives in ``out/<name>/``.
        jobs: runs in parallel (processes, ``OMP_NUM_THREADS = cores // jobs`` each);
            default: the params' ``jobs``.
        only: run-id patterns (globs, or substrings) selecting runs.
        overrides: ``key=value`` config overrides (an axis key restricts that axis).
        stages: a subset of the params' stages to run (in the params' order).
        dry_run: expand and report what would run; writes nothing.
        notebook_dir: folder of the stage/page ``.py`` notebooks (default ``book/``).
        pages: execute the data and results pages after the runs.
        progress: force the tqdm bar on/off (default: on when stderr is a TTY).
        prepare_only: write the run folders' ``config.yaml`` (and the phantom), run nothing
            (e.g. before training each run with torchrun).

    Returns:
        A :class:`GridReport`; ``report.ok`` is False when a run or page failed.
    """
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    spec = params if isinstance(params, GridSpec) else load_params(params)
    nb_dir = Path(notebook_dir) if notebook_dir is not None else NOTEBOOK_DIR
    todo_stages = list(spec.stages)
    if stages:
        unknown = [s for s in stages if s not in spec.stages]
        if unknown:
            raise ConfigError(f"--stages {unknown} not in the grid's stages {list(spec.stages)}")
        todo_stages = [s for s in spec.stages if s in stages]
    runs = expand(spec, overrides)
    chosen = select(runs, only)
    if only and not chosen:
        raise ConfigError(f"--only {list(only)} matches none of the {len(runs)} run ids")
    grid_dir = (Path(out) / spec.name).resolve()
    n_jobs = max(1, jobs if jobs is not None else spec.jobs)

    if spec.phantom and not dry_run:
        for root in dict.fromkeys(r.config["data"]["root"] for r in chosen):
            ensure_phantom(root, spec.phantom)

    results: dict[str, RunResult] = {}
    for r in runs:
        run_dir = grid_dir / r.id
        rr = RunResult(r.id, str(run_dir), r.hash, r.values)
        done = all(stage_done(run_dir, s, r.hash) for s in spec.stages)
        rr.status = "done" if done else ("pending" if r in chosen else "not-selected")
        for s in todo_stages:
            rr.stages[s] = StageResult("skipped" if stage_done(run_dir, s, r.hash) else "pending")
        results[r.id] = rr
    report = GridReport(spec.name, grid_dir, list(results.values()), {}, 0.0)
    if dry_run:
        report.seconds = time.perf_counter() - t0
        return report

    grid_dir.mkdir(parents=True, exist_ok=True)
    for r in chosen:
        prepare_run_dir(grid_dir / r.id, r.config, grid_dir / rf.STALE_DIR, r.hash)
    _write_grid_json(report, spec, started)
    if prepare_only:
        report.seconds = time.perf_counter() - t0
        return report

    bar = _progress(len(chosen) * len(todo_stages), progress)
    threads = max(1, (os.cpu_count() or 1) // n_jobs) if n_jobs > 1 else None
    log.info(
        "grid %s: %d of %d runs x %d stages, %d job(s) -> %s",
        spec.name, len(chosen), len(runs), len(todo_stages), n_jobs, grid_dir,
    )  # fmt: skip
    try:
        if n_jobs == 1:
            for r in chosen:
                res = run_stages(
                    r.id, grid_dir / r.id, r.hash, todo_stages, nb_dir,
                    on_stage=lambda _s, _res: bar.update(1),
                )  # fmt: skip
                res.values = r.values
                results[r.id] = res
                report.runs = list(results.values())
                _write_grid_json(report, spec, started)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                n_jobs,
                mp_context=ctx,
                initializer=_worker_init,
                initargs=(logging.getLogger().level or logging.INFO,),
            ) as pool:
                futures = {
                    pool.submit(
                        run_stages, r.id, grid_dir / r.id, r.hash, todo_stages, nb_dir, threads
                    ): r
                    for r in chosen
                }
                for fut in as_completed(futures):
                    r = futures[fut]
                    res = fut.result()
                    res.values = r.values
                    results[r.id] = res
                    bar.update(len(todo_stages))
                    report.runs = list(results.values())
                    _write_grid_json(report, spec, started)
    except KeyboardInterrupt:
        report.interrupted = True
        for rr in results.values():
            if rr.status == "pending":
                rr.status = "interrupted"
        report.runs = list(results.values())
        report.seconds = time.perf_counter() - t0
        _write_grid_json(report, spec, started)
        bar.close()
        log.warning("interrupted: run the same command again to resume")
        return report
    bar.close()
    report.runs = list(results.values())
    if pages:
        try:
            report.pages = _run_pages(spec, grid_dir, runs, report.runs, nb_dir)
        except KeyboardInterrupt:
            report.interrupted = True
    report.seconds = time.perf_counter() - t0
    _write_grid_json(report, spec, started)
    return report


# --------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``imbalens grid``."""
    parser.add_argument("params", help="params YAML of the grid, e.g. params/quick.yaml")
    parser.add_argument("--out", default="runs", help="runs folder (default: runs)")
    parser.add_argument("--jobs", type=int, default=None, help="runs in parallel (processes)")
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


def cli(args: argparse.Namespace) -> int:
    """Run ``imbalens grid``; exit code 1 when a run or page failed, 130 when interrupted."""
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
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(report.table() + "\n")
    if report.interrupted:
        return 130
    return 0 if report.ok else 1
