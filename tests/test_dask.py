"""The grid on Dask distributed (imbalens.study.cluster), on loopback only.

The fast tests check the pieces with known answers: resource parsing, exact ``--only``
globs, the torchrun command, the checkpoint position, the lock as an atomic claim (a
held run is refused naming its holder; a dead holder's run is taken over and resumed),
and the Slurm job script. The slow test starts a ``dask scheduler`` and two
``dask worker`` processes on 127.0.0.1 (separate processes, one thread each), runs the
smoke grid's train and performance stages through them and locally (``--jobs 1``),
checks that the metrics are identical, then SIGKILLs the worker training a run and checks
that the grid completes with the same metrics, the run resumed from its checkpoint.
Every process started here is killed (with its process group) in a fixture's finally.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imbalens import runfolder as rf
from imbalens.config import ConfigError
from imbalens.runfolder import LockHeld, RunFolder
from imbalens.study import cluster
from imbalens.study.grid import configure_parser

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
RUN_IDS = ["t-densenet-bce-binary-s0", "t-densenet-cbfocal-binary-s0"]
# two epochs of 4 steps, last.pt after every step: a kill lands inside training
OVERRIDES = ["train.epochs=2", "train.max_steps_per_epoch=4", "train.checkpoint_every_steps=1"]
STAGES = ["train", "performance"]


# --------------------------------------------------------------------------- fast
def test_parse_resources_known_answers() -> None:
    assert cluster.parse_resources("GPU=2 MEM=4e9") == {"GPU": 2.0, "MEM": 4e9}
    assert cluster.parse_resources("GPU=1,CPU=8") == {"GPU": 1.0, "CPU": 8.0}
    assert cluster.parse_resources(None) == {}
    with pytest.raises(ConfigError, match="'GPU' is not NAME=NUMBER"):
        cluster.parse_resources("GPU")
    with pytest.raises(ConfigError, match="'GPU=two'"):
        cluster.parse_resources("GPU=two")


def test_exact_pattern_matches_one_run_only() -> None:
    ids = ["resnet50-bce-binary-s1", "resnet50-bce-binary-s10", "resnet50-wbce-binary-s1"]
    pattern = cluster.exact_pattern(ids[0])
    assert pattern == "[r]esnet50-bce-binary-s1"
    assert [i for i in ids if fnmatch.fnmatchcase(i, pattern)] == [ids[0]]


def test_run_ids_of_the_smoke_grid_and_the_module_cli(capsys: pytest.CaptureFixture) -> None:
    assert cluster.run_ids(REPO / "params" / "smoke.yaml") == RUN_IDS
    assert cluster.main(["ids", str(REPO / "params" / "smoke.yaml"), "--exact"]) == 0
    assert capsys.readouterr().out.split() == [cluster.exact_pattern(i) for i in RUN_IDS]


def test_slurm_array_script_runs_the_task_s_run_alone(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "imbalens").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "imbalens").chmod(0o755)
    (fake / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (fake / "python").chmod(0o755)
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(fake), os.environ.get("PATH", "")]),
        PYTHONPATH=str(REPO / "src"),
        SLURM_ARRAY_TASK_ID="1",
    )
    script = REPO / "scripts" / "slurm-array.sh"
    cmd = ["bash", str(script), "params/smoke.yaml", "--set", "data.root=/x"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("array task 1: run [t]-densenet-cbfocal-binary-s0 on ")
    assert lines[1:] == [
        "grid", "params/smoke.yaml", "--only", "[t]-densenet-cbfocal-binary-s0", "--no-pages",
        "--set", "data.root=/x",
    ]  # fmt: skip
    env["SLURM_ARRAY_TASK_ID"] = "2"  # past the last of the 2 runs
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "past the grid's last run" in proc.stderr


def test_torchrun_command(tmp_path: Path) -> None:
    cmd = cluster.torchrun_command(tmp_path, 4)
    assert cmd[1:6] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
    ]  # fmt: skip
    assert cmd[6:] == [
        "imbalens.cli", "train", "--config", str(tmp_path / rf.CONFIG), "--out", str(tmp_path),
    ]  # fmt: skip


def test_grid_parser_has_the_dask_flags() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(
        ["p.yaml", "--scheduler", "tcp://127.0.0.1:8786", "--gpus-per-run", "4"]
    )
    assert (args.scheduler, args.gpus_per_run, args.task_resources) == (
        "tcp://127.0.0.1:8786", 4, None,
    )  # fmt: skip
    assert parser.parse_args(["p.yaml"]).scheduler is None  # without it: the local path
    missing = parser.parse_args(["/nonexistent.yaml", "--scheduler", "tcp://127.0.0.1:9"])
    assert cluster.cli(missing) == 2  # the params error, before any connection


def _fake_checkpoint(folder: RunFolder, epoch: int, step: int, global_step: int) -> None:
    import torch

    from imbalens.training.checkpoint import save_checkpoint

    save_checkpoint(
        folder.last,
        {"epoch": epoch, "step": step, "global_step": global_step, "w": torch.zeros(1)},
    )


def test_checkpoint_position(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    assert cluster.checkpoint_position(folder) is None
    _fake_checkpoint(folder, 1, 2, 6)
    assert cluster.checkpoint_position(folder) == {"epoch": 1, "step": 2, "global_step": 6}
    folder.train_done.write_text("{}")
    assert cluster.checkpoint_position(folder) is None  # trained: nothing to resume


def test_run_task_refuses_a_run_held_by_another_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from imbalens.runfolder import hold_lock\n"
            f"with hold_lock({str(tmp_path / rf.LOCK)!r}, what='other grid'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=rf"pid {holder.pid} .*other grid"):
            cluster.run_task("r", str(tmp_path), "h", [], str(REPO / "book"))
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's flock: the run is taken over
    out = cluster.run_task("r", str(tmp_path), "h", [], str(REPO / "book"))
    assert out.took_over is not None and out.took_over["pid"] == holder.pid


def test_run_task_takes_over_a_dead_holder_and_says_from_which_step(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.lock_file.write_text(json.dumps({"pid": 424242, "host": "node7", "what": "x"}))
    _fake_checkpoint(folder, 1, 3, 7)
    out = cluster.run_task("run-a", str(tmp_path), "h", [], str(REPO / "book"))
    assert out.result.status == "done" and out.pid == os.getpid()
    assert out.resumed_from == {"epoch": 1, "step": 3, "global_step": 7}
    line = out.moved_line()
    assert line is not None
    assert (
        "from pid 424242 on node7, which died; resumed from epoch 2 step 3 (global step 7)" in line
    )
    assert folder.lock_file.read_text() == ""  # released normally: emptied
    again = cluster.run_task("run-a", str(tmp_path), "h", [], str(REPO / "book"))
    assert again.took_over is None and again.moved_line() is None


def test_run_task_trains_a_multi_gpu_run_with_torchrun_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], cwd: Path, check: bool) -> subprocess.CompletedProcess:
        seen.append(cmd)
        if len(seen) == 1:  # the first torchrun trains the run, like imbalens.cli train
            RunFolder(tmp_path).train_done.write_text("{}")
            return subprocess.CompletedProcess(cmd, 0)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(cluster.subprocess, "run", fake_run)
    out = cluster.run_task("r", str(tmp_path), "h", ["train"], str(REPO / "book"), None, 4)
    assert seen == [cluster.torchrun_command(tmp_path, 4)]
    assert out.result.status == "done" and out.result.stages["train"].status == "skipped"
    marker = json.loads(RunFolder(tmp_path).marker("train").read_text())
    assert marker["external"] is True  # the grid counts it as trained outside the notebook
    # a failing torchrun fails the run once, with the command in the message
    other = tmp_path / "other"
    bad = cluster.run_task(
        "o", str(other), "h", ["train", "performance"], str(REPO / "book"), None, 2
    )
    assert bad.result.status == "failed"
    assert bad.result.stages["train"].error.startswith("torchrun exited with 1: ")
    assert bad.result.stages["performance"].status == "not-run"


def test_run_task_hands_its_claim_to_a_run_stages_that_locks_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imbalens.study import grid

    tries: list[str] = []

    def locking_run_stages(run_id, run_dir, chash, stages, notebook_dir, threads=None):
        res = grid.RunResult(run_id, str(run_dir), chash, {})
        try:  # like a grid whose run_stages holds the run lock (refused: nothing written)
            with RunFolder(run_dir).lock(f"imbalens grid: {run_id}"):
                tries.append("ran")
                res.status = "done"
        except LockHeld as exc:
            tries.append("refused")
            res.status = "failed"
            res.stages = {stages[0]: grid.StageResult("failed", error=str(exc))}
        return res

    monkeypatch.setattr(grid, "run_stages", locking_run_stages)
    out = cluster.run_task("r", str(tmp_path), "h", ["train"], str(REPO / "book"))
    assert tries == ["refused", "ran"] and out.result.status == "done"


def test_slurm_cluster_job_script() -> None:
    pytest.importorskip("dask_jobqueue")
    c = cluster.slurm_cluster(
        "gpu", gpus_per_job=4, walltime="12:00:00", cores=16, memory="128GB",
        scheduler_options={"host": "127.0.0.1", "dashboard_address": None},
    )  # fmt: skip
    try:
        script = c.job_script()
    finally:
        c.close()
    assert "#SBATCH -p gpu" in script
    assert "#SBATCH --gres=gpu:4" in script
    assert "#SBATCH -t 12:00:00" in script
    assert "--nthreads 1" in script and "--resources GPU=4" in script


# A stage notebook: counts its executions in <grid>/calls.txt; fails for the focal run.
FAKE_NB = """\
# %% tags=["parameters"]
run_dir = ""

# %%
import pathlib, yaml
rd = pathlib.Path(run_dir)
with open(rd.parent / "calls.txt", "a") as fh:
    fh.write(rd.name + "\\n")
if yaml.safe_load((rd / "config.yaml").read_text())["loss"]["name"] == "focal":
    raise RuntimeError("planted failure")
"""


def test_dask_grid_reports_a_failing_run_once_and_goes_on(tmp_path: Path) -> None:
    from imbalens.study.grid import parse_params

    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "train.py").write_text(FAKE_NB)
    from imbalens.data.synth import generate

    generate(tmp_path / "data", n_images=12, size=16, seed=0, workers=1)  # a real data root
    spec = parse_params(
        {
            "name": "fake", "base": {"data": {"root": str(tmp_path / "data")}},
            "axes": {"loss.name": ["bce", "focal", "wbce"]}, "run_id": "{loss.name}",
            "stages": ["train"],
        }
    )  # fmt: skip
    grid_dir = tmp_path / "runs" / "fake"
    # local:2 = a LocalCluster of two worker processes on 127.0.0.1, closed by the grid
    rep = cluster.run_grid_dask(
        spec, tmp_path / "runs", scheduler="local:2", notebook_dir=nb, pages=False,
        progress=False,
    )  # fmt: skip
    assert not rep.ok
    status = {r.id: r.status for r in rep.runs}
    assert status == {"bce": "done", "focal": "failed", "wbce": "done"}
    assert sorted((grid_dir / "calls.txt").read_text().split()) == ["bce", "focal", "wbce"]
    focal = next(r for r in rep.runs if r.id == "focal")
    assert "planted failure" in (focal.stages["train"].error or "")  # failed once, not retried
    saved = json.loads((grid_dir / rf.GRID_JSON).read_text())
    assert [(r["id"], r["status"]) for r in saved["runs"]] == sorted(status.items())
    assert "3 runs, 1 failed" in rep.table()


def test_a_task_refused_by_the_run_lock_is_a_failed_run_in_the_report(tmp_path: Path) -> None:
    from types import SimpleNamespace

    client = cluster.connect("local:1")
    got: list = []
    try:
        with RunFolder(tmp_path).lock(what="another grid"):
            fut = client.submit(
                cluster.run_task, "r", str(tmp_path), "h", ["train"], str(REPO / "book")
            )
            run = SimpleNamespace(id="r", hash="h")
            cluster._collect(client, {fut: run}, ["train"], lambda *a: got.append(a))
    finally:
        cluster._close(client, "local:1")
    [(_, res, outcome)] = got
    assert res.status == "failed" and outcome is None
    err = res.stages["train"].error
    assert err.startswith("LockHeld: ") and f"pid {os.getpid()} " in err and "another grid" in err


# --------------------------------------------------------------------------- slow
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
    )


@dataclass
class Cluster:
    address: str
    root: Path
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()


def _start(cl: Cluster, name: str, args: list[str]) -> subprocess.Popen:
    with open(cl.root / f"{name}.log", "w") as fh:
        p = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=fh, stderr=subprocess.STDOUT, env=_env(),
            cwd=cl.root, start_new_session=True,  # its own group: its kernels die with it
        )  # fmt: skip
    cl.procs.append(p)
    return p


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from distributed import Client

    root = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    cl = Cluster(address, root)
    try:
        _start(cl, "scheduler", [
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
            "--port", address.rsplit(":", 1)[1], "--no-dashboard",
        ])  # fmt: skip
        for i in range(2):
            cl.workers[f"w{i}"] = _start(cl, f"w{i}", [
                "distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--nthreads",
                "1", "--no-nanny", "--no-dashboard", "--name", f"w{i}", "--resources", "RUN=1",
                "--local-directory", str(root / f"w{i}-space"),
            ])  # fmt: skip
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        yield cl
    finally:
        for p in cl.procs:
            with_group_killed(p)


def with_group_killed(p: subprocess.Popen) -> None:
    """SIGKILL a process started here and its process group (kernels it left), then reap it."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=30)


def _grid(out: Path, data: Path, *extra: str) -> list[str]:
    sets = [a for o in [f"data.root={data}", *OVERRIDES] for a in ("--set", o)]
    return [
        sys.executable, "-m", "imbalens.cli", "grid", str(REPO / "params" / "smoke.yaml"),
        "--out", str(out), *sets, "--stages", *STAGES, "--no-pages", *extra,
    ]  # fmt: skip


def _results(grid_dir: Path) -> dict[str, tuple[dict, str]]:
    """Per run: test metrics without the timing, and the test predictions' text."""
    out = {}
    for rid in RUN_IDS:
        folder = RunFolder(grid_dir / rid)
        metrics = json.loads(folder.metrics.read_text())
        metrics.pop("seconds", None)
        out[rid] = (metrics, folder.predictions("test").read_text())
    return out


@pytest.fixture(scope="module")
def local_grid(dask_cluster: Cluster) -> tuple[dict, float, list[str]]:
    root = dask_cluster.root
    t0 = time.perf_counter()
    proc = subprocess.run(
        _grid(root / "local", root / "data", "--jobs", "1"), env=_env(), cwd=REPO,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    # the kernels' thread count changes float sums: the Dask runs use the local one
    marker = json.loads(
        RunFolder(root / "local" / "smoke" / RUN_IDS[0]).marker("train").read_text()
    )
    threads = ["--threads-per-run", str(marker["threads"])] if marker.get("threads") else []
    return _results(root / "local" / "smoke"), seconds, threads


@pytest.mark.slow
def test_dask_grid_matches_local_then_survives_a_killed_worker(
    dask_cluster: Cluster, local_grid: tuple[dict, float, list[str]]
) -> None:
    root, expected, threads = dask_cluster.root, local_grid[0], local_grid[2]
    # 1. the grid through the two workers: the same metrics and predictions as --jobs 1
    t0 = time.perf_counter()
    proc = subprocess.run(
        _grid(root / "dask", root / "data", "--scheduler", dask_cluster.address,
              "--task-resources", "RUN=1", *threads),
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert _results(root / "dask" / "smoke") == expected
    report = json.loads((root / "dask" / "smoke" / rf.GRID_JSON).read_text())
    assert [(r["id"], r["status"]) for r in report["runs"]] == [(i, "done") for i in RUN_IDS]
    print(f"\nsmoke grid (train+performance): local --jobs 1 {local_grid[1]:.1f} s, "
          f"dask 2 workers {seconds:.1f} s")  # fmt: skip

    # 2. again into a fresh folder; SIGKILL the worker holding a run once last.pt exists
    grid_dir = root / "killed" / "smoke"
    with open(root / "killed.log", "w") as fh:
        grid = subprocess.Popen(
            _grid(root / "killed", root / "data", "--scheduler", dask_cluster.address, *threads),
            env=_env(), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        killed = _kill_a_training_worker(dask_cluster, grid_dir, grid)
        assert grid.wait(timeout=600) == 0, (root / "killed.log").read_text()[-4000:]
    finally:
        if grid.poll() is None:
            grid.kill()
            grid.wait()
    text = (root / "killed.log").read_text()
    run_id, worker, pid, position = killed
    moved = [line for line in text.splitlines() if "moved to worker" in line]
    print(f"killed {worker} (pid {pid}) training {run_id} at last.pt {position}")
    print("\n".join(moved))
    assert len(moved) == 1 and f"{run_id}: moved to worker" in moved[0]
    assert f"from pid {pid} on" in moved[0] and "resumed from epoch" in moved[0]
    assert _results(grid_dir) == expected  # resumed run ends as if never interrupted
    report = json.loads((grid_dir / rf.GRID_JSON).read_text())
    assert [(r["id"], r["status"]) for r in report["runs"]] == [(i, "done") for i in RUN_IDS]
    with pytest.raises(ProcessLookupError):  # its orphaned kernel ended itself (ipykernel's
        os.killpg(pid, 0)  # parent poller), so it cannot write into the run after the move


def _kill_a_training_worker(
    cl: Cluster, grid_dir: Path, grid: subprocess.Popen
) -> tuple[str, str, int, dict | None]:
    """Wait until a worker holds a run with ``last.pt`` but no ``train.done``; SIGKILL it."""
    pids = {p.pid: name for name, p in cl.workers.items()}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and grid.poll() is None:
        for rid in RUN_IDS:
            folder = RunFolder(grid_dir / rid)
            holder = cluster.lock_holder(folder)
            if (
                holder
                and holder.get("pid") in pids
                and folder.last.is_file()
                and not folder.train_done.is_file()
            ):
                pid = int(holder["pid"])
                position = cluster.checkpoint_position(folder)
                os.kill(pid, signal.SIGKILL)  # the worker alone, as the OOM killer would
                cl.workers[pids[pid]].wait(timeout=30)
                return rid, pids[pid], pid, position
        time.sleep(0.05)
    raise AssertionError("no worker was seen training a run with a checkpoint")
