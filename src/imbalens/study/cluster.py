"""The grid on Dask distributed: one Dask task per run, on any number of machines.

``imbalens grid PARAMS --scheduler ADDRESS`` sends each selected run (its stages, in
order) to a Dask scheduler as one task; the task calls the same
:func:`imbalens.study.grid.run_stages` as ``--jobs``, on whichever worker the scheduler
picks. The grid's preparation (phantom, run folders, ``grid.json``) and its pages run
where the command runs, so the run folders must live on a file system that every worker
sees at the same path (NFS, Lustre, GPFS). ``--scheduler local:N`` starts a
``LocalCluster`` of N one-thread worker processes on this machine instead.

Where a task may run is decided by Dask's worker resources (Dask's *abstract resources*):
start GPU workers with ``dask worker ADDRESS --nthreads 1 --resources GPU=4`` and the grid
with ``--task-resources GPU=4`` (or ``--gpus-per-run 4``), and a run waits for a worker
that has 4 GPUs free. With ``--gpus-per-run N`` (N > 1) the task first trains the run
with ``torchrun --standalone --nproc_per_node=N -m imbalens.cli train``; the grid then
counts the run as trained outside the notebook (``train.done`` without ``train.ipynb``).

Faults. The task holds the run folder's lock (:meth:`imbalens.runfolder.RunFolder.lock`,
an ``flock``) while it runs, so two grids, or two workers, never train the same run: the
second is refused with a message naming the holder and the run is reported failed. When
a worker dies (SIGKILL, a node lost) the scheduler gives its task to another worker
(up to ``distributed.scheduler.allowed-failures`` times, default 3); the kernel releases
the dead process's lock and the new task resumes training from ``checkpoints/last.pt``,
skipping every stage whose done marker is there. The task logs (and the grid logs) which
run moved, from which holder, and from which epoch and step it resumed. A stage that fails
deterministically fails once (``run_stages`` returns it as failed; tasks are not retried)
and the grid goes on.

Slurm: :func:`slurm_cluster` (dask-jobqueue's ``SLURMCluster``, see
``examples/slurm_cluster.py``), or the plain job array ``scripts/slurm-array.sh`` that
runs one ``imbalens grid --only`` shard per array task (its run ids come from
``python -m imbalens.study.cluster ids PARAMS``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imbalens import runfolder as rf
from imbalens.config import ConfigError
from imbalens.paths import NOTEBOOK_DIR
from imbalens.study import grid as g

log = logging.getLogger(__name__)

#: ``--scheduler`` value that starts a LocalCluster (``local`` or ``local:N``)
LOCAL = "local"


# --------------------------------------------------------------------------- helpers
def parse_resources(text: str | None) -> dict[str, float]:
    """Parse Dask resources ``"GPU=1,MEM=8e9"`` (or space-separated) into a dict.

    Example: ``parse_resources("GPU=2 MEM=4e9") == {"GPU": 2.0, "MEM": 4e9}``.

    Raises:
        ConfigError: an item that is not ``NAME=NUMBER``.
    """
    out: dict[str, float] = {}
    for item in (text or "").replace(",", " ").split():
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise ConfigError(
                f"--task-resources: {item!r} is not NAME=NUMBER (e.g. GPU=1)"
            ) from None
    return out


def torchrun_command(run_dir: Path, nproc: int) -> list[str]:
    """The command that trains ``run_dir`` on ``nproc`` local GPUs (DDP, :mod:`~imbalens.training.distributed`)."""
    folder = rf.RunFolder(run_dir)
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "imbalens.cli", "train",
        "--config", str(folder.config), "--out", str(folder.path),
    ]  # fmt: skip


def lock_holder(folder: rf.RunFolder) -> dict[str, Any] | None:
    """The holder recorded in the run's lock file (pid, host, started, what), if any.

    A lock released normally is emptied, so a record found by a process that then gets
    the lock was left by a holder that died (the kernel released its ``flock``). Read
    before the claim, it may also name a holder that released the lock in between: it
    only feeds a log line, never a decision.
    """
    try:
        info = json.loads(folder.lock_file.read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def checkpoint_position(folder: rf.RunFolder) -> dict[str, int] | None:
    """Epoch and step that training would resume from (``last.pt`` without ``train.done``)."""
    if folder.train_done.is_file() or not folder.last.is_file():
        return None
    from imbalens.training.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(folder.last)
    except Exception as exc:  # a torn or foreign file: training itself will say so
        log.warning("%s: cannot read %s (%s)", folder.path.name, folder.last, exc)
        return None
    return {k: int(ckpt.get(k, 0)) for k in ("epoch", "step", "global_step")}


def _ensure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
    logging.getLogger("imbalens").setLevel(logging.INFO)
    g._quiet_papermill()


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


# --------------------------------------------------------------------------- the task
@dataclass
class TaskOutcome:
    """What one Dask task did: the run's result and where and how it ran."""

    result: g.RunResult
    worker: str
    host: str
    pid: int
    took_over: dict[str, Any] | None = None  # the dead holder whose lock this task took
    resumed_from: dict[str, int] | None = None  # epoch/step of last.pt at the start
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def moved_line(self) -> str | None:
        """One log line when the run was taken over from a dead holder, else None."""
        if self.took_over is None:
            return None
        prev = self.took_over
        where = (
            f"epoch {self.resumed_from['epoch'] + 1} step {self.resumed_from['step']} "
            f"(global step {self.resumed_from['global_step']})"
            if self.resumed_from
            else "its first unfinished stage (no training checkpoint to resume)"
        )
        return (
            f"{self.result.id}: moved to worker {self.worker} (pid {self.pid} on {self.host}) "
            f"from pid {prev.get('pid')} on {prev.get('host')}, which died; resumed from {where}"
        )


def run_task(
    run_id: str,
    run_dir: str,
    chash: str,
    stages: Sequence[str],
    notebook_dir: str,
    threads: int | None = None,
    gpus_per_run: int = 0,
) -> TaskOutcome:
    """One Dask task: claim the run folder's lock, then run the run's stages in order.

    The lock is the atomic claim (:func:`imbalens.runfolder.hold_lock`); training resumes
    from ``checkpoints/last.pt`` when an earlier holder died. With ``gpus_per_run > 1``
    the run is first trained with ``torchrun`` (:func:`torchrun_command`).

    Raises:
        imbalens.runfolder.LockHeld: another live process holds the run (message names it).
    """
    _ensure_logging()
    t0 = time.perf_counter()
    folder = rf.RunFolder(Path(run_dir))
    before = lock_holder(folder)
    claim = f"dask task {run_id}"
    with contextlib.ExitStack() as held:
        held.enter_context(folder.lock(what=claim))
        outcome = TaskOutcome(
            g.RunResult(run_id, str(folder.path), chash, {}),
            _worker_address(), socket.gethostname(), os.getpid(),
        )  # fmt: skip
        outcome.took_over = before
        outcome.resumed_from = checkpoint_position(folder)
        line = outcome.moved_line()
        if line:
            log.warning("%s", line)
        elif outcome.resumed_from:
            log.info("%s: resuming training from %s", run_id, outcome.resumed_from)
        if gpus_per_run > 1 and "train" in stages and not folder.train_done.is_file():
            cmd = torchrun_command(folder.path, gpus_per_run)
            log.info("%s: %s", run_id, " ".join(cmd))
            proc = subprocess.run(cmd, cwd=folder.path, check=False)
            if proc.returncode != 0:
                msg = f"torchrun exited with {proc.returncode}: {' '.join(cmd)}"
                outcome.result = _failed(run_id, str(folder.path), chash, stages, msg)
                return outcome
        if not stages:  # nothing to run (e.g. only torchrun training was asked for)
            outcome.result.status = "done"
            return _timed(outcome, t0)
        args = (run_id, folder.path, chash, list(stages), Path(notebook_dir), threads)
        outcome.result = g.run_stages(*args)
        if _refused_by_own_claim(outcome.result, claim):
            held.close()  # this run_stages locks the run itself: hand the claim over to it
            outcome.result = g.run_stages(*args)
    return _timed(outcome, t0)


def _timed(outcome: TaskOutcome, t0: float) -> TaskOutcome:
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _refused_by_own_claim(result: g.RunResult, claim: str) -> bool:
    """True when ``run_stages`` failed on the run lock that this very task holds.

    A ``run_stages`` that holds the run's lock itself is refused by the task's claim (an
    ``flock`` on another descriptor of the same file, same process) before it writes
    anything; its message names this process and the claim.
    """
    first = next(iter(result.stages.values()), None)
    error = (first.error if first is not None else None) or ""
    me = f"pid {os.getpid()} on host {socket.gethostname()} "
    return result.status == "failed" and me in error and claim in error


def _failed(run_id: str, run_dir: str, chash: str, stages: Sequence[str], error: str) -> Any:
    res = g.RunResult(run_id, run_dir, chash, {}, status="failed")
    for i, s in enumerate(stages):
        res.stages[s] = g.StageResult("failed", error=error) if i == 0 else g.StageResult("not-run")
    return res


# --------------------------------------------------------------------------- the client
def _is_local(scheduler: Any) -> bool:
    return isinstance(scheduler, str) and (scheduler == LOCAL or scheduler.startswith(LOCAL + ":"))


def connect(scheduler: Any, workers: int = 1) -> Any:
    """A ``distributed.Client``: for an address, a Client, or ``local[:N]`` (a LocalCluster)."""
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        return scheduler
    text = str(scheduler)
    if _is_local(scheduler):
        n = int(text.partition(":")[2] or workers)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True)
        return Client(cluster)
    if hasattr(scheduler, "scheduler_address"):  # a dask-jobqueue / LocalCluster object
        return Client(scheduler)
    return Client(text, timeout="30s")


def _collect(
    client: Any,
    futures: Mapping[Any, g.Run],
    todo: Sequence[str],
    on_done: Any,
) -> None:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    for fut in as_completed(list(futures)):
        run = futures[fut]
        try:
            outcome: TaskOutcome = fut.result()
        except KilledWorker as exc:
            msg = (
                f"the workers running it died too often ({exc}); see "
                "distributed.scheduler.allowed-failures"
            )
            log.error("%s failed: %s", run.id, msg)
            on_done(run, _failed(run.id, "", run.hash, todo, msg), None)
            continue
        except Exception as exc:  # LockHeld, or a bug: reported, the grid goes on
            log.error("%s failed: %s: %s", run.id, type(exc).__name__, exc)
            on_done(run, _failed(run.id, "", run.hash, todo, f"{type(exc).__name__}: {exc}"), None)
            continue
        line = outcome.moved_line()
        if line:
            log.warning("%s", line)
        log.info(
            "%s: %s on %s in %.1f s", run.id, outcome.result.status, outcome.worker, outcome.seconds
        )
        on_done(run, outcome.result, outcome)


def run_grid_dask(
    params: str | os.PathLike[str] | g.GridSpec,
    out: str | os.PathLike[str] = "runs",
    *,
    scheduler: Any,
    only: Iterable[str] | None = None,
    overrides: Iterable[str] = (),
    stages: Sequence[str] | None = None,
    notebook_dir: str | os.PathLike[str] | None = None,
    pages: bool = True,
    progress: bool | None = None,
    task_resources: Mapping[str, float] | None = None,
    gpus_per_run: int = 0,
    threads: int | None = None,
) -> g.GridReport:
    """Run (or resume) a grid with one Dask task per selected run; same report as ``--jobs``.

    Args:
        params, out, only, overrides, stages, notebook_dir, pages, progress: as in
            :func:`imbalens.study.grid.run_grid`.
        scheduler: a scheduler address (``tcp://host:8786``), ``local[:N]``, a
            ``distributed.Client`` or a cluster object (``SLURMCluster``).
        task_resources: Dask resources each run needs (default ``{"GPU": gpus_per_run}``
            when ``gpus_per_run`` > 0, else none).
        gpus_per_run: GPUs of one run; above 1 the task trains with ``torchrun``.
        threads: ``OMP_NUM_THREADS`` of each stage's kernel (default: the worker's).

    Returns:
        A :class:`imbalens.study.grid.GridReport` (``grid.json`` written as with ``--jobs``).
    """
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    spec = params if isinstance(params, g.GridSpec) else g.load_params(params)
    nb_dir = str(Path(notebook_dir).resolve() if notebook_dir else NOTEBOOK_DIR)
    todo = [s for s in spec.stages if not stages or s in stages]
    prep = g.run_grid(
        spec,
        out,
        only=only,
        overrides=overrides,
        stages=stages,
        notebook_dir=nb_dir,
        pages=False,
        progress=False,
        prepare_only=True,
    )  # fmt: skip  (phantom, run folders, grid.json: the local path's own preparation)
    runs = g.expand(spec, overrides)
    chosen = g.select(runs, only)
    report = g.GridReport(spec.name, prep.grid_dir, list(prep.runs), {}, 0.0)
    resources = dict(task_resources or ({"GPU": float(gpus_per_run)} if gpus_per_run else {}))
    client = connect(scheduler, workers=spec.jobs)
    _log_start(client, spec, len(chosen), len(runs), len(todo), resources)
    task = _TaskArgs(todo, nb_dir, threads, gpus_per_run, resources)
    _run_tasks(client, scheduler, spec, report, chosen, task, started, progress)
    if pages and not report.interrupted:
        report.pages = g._run_pages(spec, report.grid_dir, runs, report.runs, Path(nb_dir))
    report.seconds = time.perf_counter() - t0
    g._write_grid_json(report, spec, started)
    return report


@dataclass(frozen=True)
class _TaskArgs:
    """What every run's Dask task gets besides its run: stages, notebooks, GPUs, resources."""

    stages: list[str]
    notebook_dir: str
    threads: int | None
    gpus_per_run: int
    resources: dict[str, float]


def _log_start(
    client: Any, spec: g.GridSpec, n_chosen: int, n_runs: int, n_stages: int, resources: dict
) -> None:
    has_dashboard = "dashboard" in client.scheduler_info().get("services", {})
    log.info(
        "grid %s: %d of %d runs x %d stages on Dask %s%s%s",
        spec.name, n_chosen, n_runs, n_stages, client.scheduler.address,
        f" (dashboard {client.dashboard_link})" if has_dashboard else "",
        f", each needs {resources}" if resources else "",
    )  # fmt: skip


def _run_tasks(
    client: Any,
    scheduler: Any,
    spec: g.GridSpec,
    report: g.GridReport,
    chosen: Sequence[g.Run],
    task: _TaskArgs,
    started: str,
    progress: bool | None,
) -> None:
    """Submit one task per chosen run and fill ``report`` as they finish (``grid.json`` too).

    Ctrl-C cancels the tasks and marks the pending runs interrupted; the client (and a
    LocalCluster this module started) is closed in any case.
    """
    results = {r.id: r for r in report.runs}
    bar = g._progress(len(chosen), progress)

    def on_done(run: g.Run, res: g.RunResult, _outcome: TaskOutcome | None) -> None:
        res.dir = res.dir or str(report.grid_dir / run.id)
        res.values = run.values
        results[run.id] = res
        report.runs = list(results.values())
        g._write_grid_json(report, spec, started)
        bar.update(1)

    futures: dict[Any, g.Run] = {}
    try:
        for r in chosen:
            fut = client.submit(
                run_task, r.id, str(report.grid_dir / r.id), r.hash, task.stages,
                task.notebook_dir, task.threads, task.gpus_per_run,
                key=f"imbalens-{spec.name}-{r.id}-{r.hash}",
                resources=task.resources or None, retries=0, pure=False,
            )  # fmt: skip
            futures[fut] = r
        _collect(client, futures, task.stages, on_done)
    except KeyboardInterrupt:
        client.cancel(list(futures))
        report.interrupted = True
        for rr in results.values():
            if rr.status == "pending":
                rr.status = "interrupted"
        log.warning("interrupted: run the same command again to resume")
    finally:
        bar.close()
        _close(client, scheduler)
    report.runs = list(results.values())


def _close(client: Any, scheduler: Any) -> None:
    """Close a Client this module opened (and its LocalCluster); leave a caller's one open."""
    from distributed import Client

    if isinstance(scheduler, Client):
        return
    cluster = client.cluster if _is_local(scheduler) else None
    client.close()
    if cluster is not None:
        cluster.close()


# --------------------------------------------------------------------------- Slurm
def slurm_cluster(
    partition: str,
    gpus_per_job: int = 1,
    walltime: str = "24:00:00",
    cores: int = 8,
    memory: str = "64GB",
    **kwargs: Any,
) -> Any:
    """A dask-jobqueue ``SLURMCluster`` whose every job is one worker holding ``gpus_per_job`` GPUs.

    Each job asks Slurm for ``--gres=gpu:N`` on ``partition`` for ``walltime`` and starts
    one single-thread worker advertising the resource ``GPU=N``, so that a run submitted
    with ``gpus_per_run=N`` lands on one job. Scale with ``cluster.scale(jobs=K)``.
    Extra ``kwargs`` go to ``SLURMCluster`` (``account``, ``job_script_prologue``, ...).
    """
    from dask_jobqueue import SLURMCluster

    extra = list(kwargs.pop("job_extra_directives", []))
    worker_args = list(kwargs.pop("worker_extra_args", []))
    return SLURMCluster(
        queue=partition,
        cores=cores,
        processes=1,
        memory=memory,
        walltime=walltime,
        job_extra_directives=[f"--gres=gpu:{gpus_per_job}", *extra],
        worker_extra_args=["--nthreads", "1", "--resources", f"GPU={gpus_per_job}", *worker_args],
        **kwargs,
    )


# --------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The Dask flags of ``imbalens grid`` (added by :func:`imbalens.study.grid.configure_parser`)."""
    group = parser.add_argument_group("Dask (a grid on many machines)")
    group.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="run each run as a Dask task: tcp://host:8786, or local[:N] for a LocalCluster",
    )  # fmt: skip
    group.add_argument(
        "--task-resources", default=None, metavar="NAME=N",
        help="Dask worker resources each run needs, e.g. GPU=1",
    )  # fmt: skip
    group.add_argument(
        "--gpus-per-run", type=int, default=0, metavar="N",
        help="GPUs per run (asks for GPU=N; above 1 trains with torchrun inside the task)",
    )  # fmt: skip
    group.add_argument(
        "--threads-per-run", type=int, default=None, metavar="N",
        help="OMP_NUM_THREADS of each run's kernels (default: the worker's environment)",
    )  # fmt: skip


def cli(args: argparse.Namespace) -> int:
    """``imbalens grid --scheduler ...``; --dry-run and --prepare stay local."""
    g._quiet_papermill()
    try:
        if args.dry_run or args.prepare:
            report = g.run_grid(
                args.params, args.out, only=args.only, overrides=args.overrides,
                stages=args.stages, dry_run=args.dry_run, notebook_dir=args.notebooks,
                pages=False, prepare_only=args.prepare,
            )  # fmt: skip
        else:
            report = run_grid_dask(
                args.params, args.out, scheduler=args.scheduler, only=args.only,
                overrides=args.overrides, stages=args.stages, notebook_dir=args.notebooks,
                pages=not args.no_pages, task_resources=parse_resources(args.task_resources),
                gpus_per_run=args.gpus_per_run, threads=args.threads_per_run,
            )  # fmt: skip
    except (ConfigError, rf.LockHeld) as exc:  # a held grid lock: another grid prepares
        for line in str(exc).splitlines():
            log.error("%s", line)
        return 2
    sys.stdout.write(report.table() + "\n")
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


def run_ids(
    params: str | os.PathLike[str], overrides: Iterable[str] = (), only: Iterable[str] | None = None
) -> list[str]:
    """The grid's run ids in product order (one Slurm array task each)."""
    spec = g.load_params(params)
    return [r.id for r in g.select(g.expand(spec, overrides), only)]


def exact_pattern(run_id: str) -> str:
    """An ``--only`` glob that matches ``run_id`` alone (a plain word matches as substring).

    Example: ``exact_pattern("resnet50-bce-binary-s1") == "[r]esnet50-bce-binary-s1"``,
    which does not match ``resnet50-bce-binary-s10``.
    """
    return f"[{run_id[0]}]{run_id[1:]}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imbalens.study.cluster ids PARAMS [--set K=V] [--exact]``: print run ids."""
    p = argparse.ArgumentParser(prog="python -m imbalens.study.cluster")
    p.add_argument("what", choices=["ids"])
    p.add_argument("params")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--exact", action="store_true", help="print --only globs matching one run")
    a = p.parse_args(argv)
    try:
        ids = run_ids(a.params, a.overrides)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sys.stdout.write("".join(f"{exact_pattern(i) if a.exact else i}\n" for i in ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
