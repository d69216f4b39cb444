"""Nothing lost, ever (issue #15): data-loss refusals, locks, fault injection."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from imbalens.config import ConfigError
from imbalens.data.synth import ForeignFolder, generate
from imbalens.study.grid import run_grid


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (a folder's exact content)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def real_copy(tmp_path: Path) -> Path:
    """A folder of 'real' data whose label file has another name (no phantom.json)."""
    d = tmp_path / "COPY"
    (d / "images").mkdir(parents=True)
    (d / "images" / "00000001_000.png").write_bytes(b"\x89PNG real bytes")
    (d / "Data_Entry_2020_v2.csv").write_text("Image Index,Finding Labels\n")
    (d / "train_val_list.txt").write_text("00000001_000.png\n")
    (d / "test_list.txt").write_text("")
    return d


def test_generate_refuses_a_folder_it_did_not_write(real_copy: Path) -> None:
    before = tree_digest(real_copy)
    with pytest.raises(ForeignFolder, match=r"refusing to write a phantom into .*COPY"):
        generate(real_copy, n_images=20, size=16, workers=1)
    assert tree_digest(real_copy) == before


def test_grid_with_phantom_block_never_overwrites_real_data(
    tmp_path: Path, real_copy: Path
) -> None:
    params = tmp_path / "g.yaml"
    raw = {
        "name": "g",
        "phantom": {"n_images": 20, "size": 16, "workers": 1},
        "base": {"data": {"root": "nowhere"}},
        "axes": {"loss.name": ["bce"]},
        "stages": ["train"],
    }
    params.write_text(yaml.safe_dump(raw))
    before = tree_digest(real_copy)
    # no phantom is written there; the pre-flight then names the missing label file
    with pytest.raises(ConfigError, match=r"data\.root .*COPY.*Data_Entry_2017\.csv not found"):
        run_grid(
            params, tmp_path / "runs", overrides=[f"data.root={real_copy}"], prepare_only=True,
            progress=False,
        )  # fmt: skip
    assert tree_digest(real_copy) == before
    assert not (real_copy / "phantom.json").exists()


def test_generate_writes_into_an_empty_folder_and_its_own(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    out.mkdir()
    m = generate(out, n_images=12, size=16, workers=1)
    assert m["counts"]["images"] == 12
    m2 = generate(out, n_images=14, size=16, workers=1)  # its own folder: rewritten
    assert m2["counts"]["images"] == 14


def test_book_out_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    from imbalens.cli import main
    from imbalens.study.book import BOOK_MARKER, BookError, assemble

    grid = tmp_path / "runs" / "g"
    grid.mkdir(parents=True)
    mine = tmp_path / "DIR"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("three years of work")
    (mine / "sub" / "notes.md").write_text("more")
    before = tree_digest(mine)
    with pytest.raises(BookError, match=r"refusing to use --out .*DIR.*thesis\.txt"):
        assemble(grid, mine)
    assert tree_digest(mine) == before
    assert main(["book", str(grid), "--out", str(mine), "--no-build"]) == 1
    assert tree_digest(mine) == before
    # a new folder is claimed (marker) and may be rebuilt, its old pages removed
    fresh = tmp_path / "BOOK"
    try:
        assemble(grid, fresh)
    except BookError:
        pass  # an empty grid has no notebook to show; the folder is still claimed
    assert (fresh / BOOK_MARKER).is_file()
    (fresh / "old-page.md").write_text("stale")
    try:
        assemble(grid, fresh)
    except BookError:
        pass
    assert not (fresh / "old-page.md").exists()


# ----------------------------------------------------------------------------- helpers
HANG_NB = """\
# %% tags=["parameters"]
run_dir = ""

# %%
import os, pathlib, time
rd = pathlib.Path(run_dir)
(rd / f"pid-{os.getpid()}").write_text("")
if (rd.parent / "hang.txt").exists():
    time.sleep(120)
if (rd.parent / "fill.txt").exists() and "wbce" in rd.name:  # a result too big for the disk
    from imbalens.io import atomic_path
    with atomic_path(rd / "big.bin") as tmp:
        tmp.write_bytes(b"0" * 8_000_000)
(rd / "metrics.json").write_text('{"auroc_mean": 0.5}')
"""


def tiny_grid(tmp_path: Path, **extra: object) -> Path:
    root = tmp_path / "data"
    if not (root / "phantom.json").is_file():
        generate(root, n_images=12, size=16, seed=0, workers=1)
    nb = tmp_path / "nb"
    nb.mkdir(exist_ok=True)
    (nb / "train.py").write_text(HANG_NB)
    raw = {
        "name": "g",
        "base": {"data": {"root": str(root)}},
        "axes": {"loss.name": ["bce", "wbce"]},
        "stages": ["train"],
    }
    raw.update(extra)
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def nb_args(params: Path) -> dict[str, object]:
    """run_grid keywords for the test's own notebooks (never the book's real ones)."""
    return {"notebook_dir": params.parent / "nb", "pages": False, "progress": False}


def grid_cli(params: Path, out: Path, *more: str) -> list[str]:
    return [
        sys.executable, "-m", "imbalens.cli", "grid", str(params), "--out", str(out),
        "--notebooks", str(params.parent / "nb"), "--no-pages", *more,
    ]  # fmt: skip


# ------------------------------------------------------------------ up-front validation
BAD_INPUTS = [
    (["--set", "train.lr=abc"], r"g\.yaml: train\.lr must be a number"),
    (["--set", "train.batch_size=0"], r"g\.yaml: train\.batch_size must be >= 1"),
    (["--set", "data.root=null"], r"g\.yaml: data\.root must not be null"),
    (["--set", "data.root=/no/such/folder"], r"data\.root '/no/such/folder' is not a folder"),
    (["--set", "model.name=vgg", "--dry-run"], r"g\.yaml: model\.name must be one of"),
    (["--jobs", "0"], r"--jobs: must be a positive integer, got '0'"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS, ids=[a[-1] for a, _ in BAD_INPUTS])
def test_bad_grid_inputs_fail_up_front_naming_key_and_file(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    params = tiny_grid(tmp_path)
    proc = subprocess.run(
        grid_cli(params, tmp_path / "runs", *args), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert re.search(needle, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "g").exists()  # nothing ran, nothing was written


def test_bad_grid_input_fails_before_torch_is_imported(tmp_path: Path) -> None:
    """'Up front' means before the heavy imports: torch alone takes ~5 s to import on a
    2-core CI machine. Checked by module, not by a wall-clock bound (timings flake)."""
    params = tiny_grid(tmp_path)
    code = (
        "import sys\n"
        "from imbalens.cli import main\n"
        "try:\n"
        f"    rc = main(['grid', {str(params)!r}, '--out', {str(tmp_path / 'runs')!r},"
        " '--set', 'train.lr=abc', '--no-pages'])\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "print('exit', rc)\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["exit", "2", "False"], proc.stdout + proc.stderr


def test_null_root_with_a_phantom_block_is_a_clear_error(tmp_path: Path) -> None:
    params = tiny_grid(tmp_path, phantom={"n_images": 12, "size": 16, "workers": 1})
    with pytest.raises(ConfigError, match=r"g\.yaml: data\.root must not be null"):
        run_grid(params, tmp_path / "runs", overrides=["data.root=null"], dry_run=True)


def test_yaml_syntax_error_in_params_names_the_file(tmp_path: Path) -> None:
    from imbalens.study.grid import load_params

    p = tmp_path / "broken.yaml"
    p.write_text("name: x\naxes: {loss.name: [bce\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML: .*line \d+") as err:
        load_params(p)
    assert "<unicode string>" not in str(err.value)


def test_cuda_without_gpu_is_refused_up_front(tmp_path: Path, monkeypatch) -> None:
    import imbalens.config as config

    monkeypatch.setattr(config, "_cuda_available", lambda: False)
    with pytest.raises(ConfigError, match=r"g\.yaml: train\.device is cuda but no GPU"):
        params = tiny_grid(tmp_path)
        run_grid(params, tmp_path / "runs", overrides=["train.device=cuda"], **nb_args(params))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_grid_names_stay_inside_out(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="key 'name' must be a folder name"):
        run_grid(tiny_grid(tmp_path, name=name), tmp_path / "runs" / "x", dry_run=True)
    assert not (tmp_path / "runs").exists()


def test_run_ids_cannot_take_the_grids_own_folders(tmp_path: Path) -> None:
    params = tiny_grid(tmp_path, run_id="_pages", axes={"loss.name": ["bce"]})
    with pytest.raises(ConfigError, match="run id '_pages' would not be a plain folder"):
        run_grid(params, tmp_path / "runs", dry_run=True)


# ------------------------------------------------------------------------------- locks
def test_a_second_grid_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    from imbalens.runfolder import GRID_LOCK, LockHeld, hold_lock

    params = tiny_grid(tmp_path)
    g = tmp_path / "runs" / "g"
    with hold_lock(g / GRID_LOCK, what="imbalens grid g"):
        with pytest.raises(LockHeld, match=rf"in use by pid {os.getpid()} on host"):
            run_grid(params, tmp_path / "runs", **nb_args(params))
    assert sorted(p.name for p in g.iterdir()) == [GRID_LOCK]  # nothing else written
    assert run_grid(params, tmp_path / "runs", **nb_args(params)).ok  # freed


def test_a_locked_run_is_left_alone(tmp_path: Path) -> None:
    from imbalens.runfolder import RunFolder

    params = tiny_grid(tmp_path)
    out = tmp_path / "runs"
    run_grid(params, out, prepare_only=True)
    busy = RunFolder(out / "g" / "resnet50-bce-multilabel-s2022")
    with busy.lock("imbalens train (test)"):
        rep = run_grid(params, out, **nb_args(params))
    status = {r.id: r.status for r in rep.runs}
    assert status == {busy.path.name: "failed", "resnet50-wbce-multilabel-s2022": "done"}
    failed = next(r for r in rep.runs if r.id == busy.path.name)
    assert "imbalens train (test)" in (failed.stages["train"].error or "")
    assert not busy.metrics.exists()  # nothing written into the locked run


# ------------------------------------------------------------------ process faults
def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc), kernels in their own sessions too."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_kill_9_of_a_jobs_2_grid_leaves_no_orphans_and_resumes(tmp_path: Path) -> None:
    import signal

    params = tiny_grid(tmp_path)
    out = tmp_path / "runs"
    g = out / "g"
    g.mkdir(parents=True)
    (g / "hang.txt").write_text("")
    proc = subprocess.Popen(
        grid_cli(params, out, "--jobs", "2"), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while len(list(g.glob("*/pid-*"))) < 2:  # both kernels are busy in their notebook
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    below = _descendants(proc.pid)
    kernels = {int(p.name.split("-")[1]) for p in g.glob("*/pid-*")}
    assert kernels <= below and len(below) >= 4  # 2 workers + 2 kernels (+ helpers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while any(_alive(p) for p in below) and time.time() < deadline:
        time.sleep(0.2)
    orphans = [p for p in below if _alive(p)]
    for p in orphans:  # never leave them to the next test
        os.kill(p, signal.SIGKILL)
    assert orphans == []
    # the rerun takes the stale locks over and completes every run
    (g / "hang.txt").unlink()
    rep = run_grid(params, out, jobs=2, **nb_args(params))
    assert rep.ok and {r.status for r in rep.runs} == {"done"}


def test_corrupt_checkpoints_give_one_line_naming_the_file(tmp_path: Path) -> None:
    import torch

    from imbalens.training.checkpoint import CorruptCheckpoint, load_checkpoint, save_checkpoint

    ckpt = tmp_path / "run" / "checkpoints"
    save_checkpoint(ckpt / "last.pt", {"w": torch.arange(5000.0)})
    data = (ckpt / "last.pt").read_bytes()
    (ckpt / "last.pt").write_bytes(data[: len(data) // 2])
    (ckpt / "best.pt").write_bytes(b"")
    with pytest.raises(CorruptCheckpoint) as err:
        load_checkpoint(ckpt / "last.pt")
    msg = str(err.value)
    assert "\n" not in msg and str(ckpt / "last.pt") in msg and "truncated or corrupt" in msg
    assert f"rm {ckpt / 'last.pt'}" in msg
    with pytest.raises(CorruptCheckpoint, match=r"best\.pt is empty .*delete it and last\.pt"):
        load_checkpoint(ckpt / "best.pt")


def test_debris_of_killed_writers_is_removed_on_the_next_grid(tmp_path: Path) -> None:
    from imbalens.runfolder import RunFolder

    params = tiny_grid(tmp_path, axes={"loss.name": ["bce"]})
    out = tmp_path / "runs"
    run_grid(params, out, prepare_only=True)
    run = RunFolder(out / "g" / "resnet50-bce-multilabel-s2022")
    run.checkpoints.mkdir()
    junk = [run.checkpoints / ".last.pt.k2j3.tmp", run.path / ".metrics.json.x1.tmp"]
    junk.append(run.path / ".train.partial.ipynb")
    for p in junk:
        p.write_bytes(b"half")
    (run.checkpoints / "last.pt").write_bytes(b"kept")
    assert run_grid(params, out, **nb_args(params)).ok
    assert not any(p.exists() for p in junk)
    assert (run.checkpoints / "last.pt").read_bytes() == b"kept"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_fails_only_that_run_and_a_rerun_completes(tmp_path: Path) -> None:
    params = tiny_grid(tmp_path)
    out = tmp_path / "small"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(out)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (out / "g").mkdir()
        (out / "g" / "fill.txt").write_text("")
        rep = run_grid(params, out, **nb_args(params))
        status = {r.id: r.status for r in rep.runs}
        assert status == {
            "resnet50-bce-multilabel-s2022": "done",
            "resnet50-wbce-multilabel-s2022": "failed",
        }
        full = out / "g" / "resnet50-wbce-multilabel-s2022"
        assert "No space left on device" in (rep.runs[1].stages["train"].error or "")
        assert not list(full.glob(".*.tmp")) and not (full / "big.bin").exists()
        assert not (full / "train.stage.done").exists()
        json.loads((out / "g" / "grid.json").read_text())  # intact
        (out / "g" / "fill.txt").unlink()
        rep = run_grid(params, out, **nb_args(params))
        assert rep.ok and {r.status for r in rep.runs} == {"done"}
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


def test_only_dead_kernel_sockets_are_removed(tmp_path: Path, monkeypatch) -> None:
    import socket

    from imbalens.study.notebooks import remove_dead_kernel_sockets

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    dead = tmp_path / "kernel-0000-ipc-1"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))  # closed without unlink: what a killed kernel leaves
    live = tmp_path / "kernel-1111-ipc-1"
    other = tmp_path / "kernel-2222.json"
    other.write_text("{}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(live))
        server.listen(1)
        assert remove_dead_kernel_sockets() == [dead]
        assert live.exists() and other.exists() and not dead.exists()


WRITER = """
import sys, torch
from imbalens.training.checkpoint import save_checkpoint
torch.set_num_threads(1)
step = 0
print("ready", flush=True)
while True:
    step += 1
    save_checkpoint(sys.argv[1], {"step": step, "w": torch.full((1_000_000,), float(step))})
"""


def test_kill_9_during_checkpoint_writes_never_corrupts_last_pt(tmp_path: Path) -> None:
    import random
    import signal

    from imbalens.study.grid import remove_debris
    from imbalens.training.checkpoint import load_checkpoint

    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    rng = random.Random(0)
    steps = []
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(last)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.3 + rng.random() * 0.5)  # mid-write, most of the time
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if last.exists():
            state = load_checkpoint(last)  # always a complete checkpoint
            assert float(state["w"][0]) == state["step"] and float(state["w"][-1]) == state["step"]
            steps.append(state["step"])
    assert steps  # something was written
    remove_debris(run)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]
