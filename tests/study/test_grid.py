"""The grid runner: expansion, run ids, key errors, done markers, failures, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from imbalens.config import ConfigError
from imbalens.study.grid import (
    expand,
    format_run_id,
    load_params,
    marker_path,
    parse_params,
    run_grid,
    select,
)

# A stage notebook: appends its name to <run_dir>/../calls.txt (so tests count executions),
# fails when the run's loss is "focal" and the stage is "performance", hangs (until
# interrupted) when the stage is "alignment" and hang.txt exists, raises
# KeyboardInterrupt when interrupt.txt exists.
STAGE_NB = """\
# %% [markdown]
# # Fake {stage}

# %% tags=["parameters"]
run_dir = ""

# %%
import pathlib, time, yaml
rd = pathlib.Path(run_dir)
cfg = yaml.safe_load((rd / "config.yaml").read_text())
with open(rd.parent / "calls.txt", "a") as fh:
    fh.write(rd.name + " {stage}\\n")
if "{stage}" == "performance" and cfg["loss"]["name"] == "focal":
    raise RuntimeError("planted failure in " + rd.name)
if "{stage}" == "alignment" and (rd.parent / "interrupt.txt").exists():
    raise KeyboardInterrupt
if "{stage}" == "alignment" and (rd.parent / "hang.txt").exists():
    (rd.parent / "started.txt").write_text("yes")
    time.sleep(120)
if "{stage}" == "train":  # like imbalens.training.train: rewrite config.yaml with an extra key
    cfg["train"]["added_by_training"] = True
    (rd / "config.yaml").write_text(yaml.safe_dump(cfg))
    (rd / "metrics.json").write_text('{"auroc_mean": 0.5}')
print("{stage} ok", cfg["loss"]["name"])
"""

RESULTS_NB = """\
# %% [markdown]
# # Fake results

# %% tags=["parameters"]
grid_dir = ""
params_path = ""

# %%
import json, pathlib
g = json.loads((pathlib.Path(grid_dir) / "grid.json").read_text())
(pathlib.Path(grid_dir) / "results-saw.txt").write_text(
    " ".join(sorted(r["id"] + ":" + r["status"] for r in g["runs"]))
)
"""


@pytest.fixture()
def notebooks(tmp_path: Path) -> Path:
    d = tmp_path / "nb"
    d.mkdir()
    for stage in ("train", "performance", "alignment"):
        (d / f"{stage}.py").write_text(STAGE_NB.replace("{stage}", stage))
    (d / "results.py").write_text(RESULTS_NB)
    return d


def tiny_root(tmp_path: Path) -> Path:
    """A 12-image phantom (16 px): the grid checks its data root before anything runs."""
    from imbalens.data.synth import generate

    root = tmp_path / "data"
    if not (root / "phantom.json").is_file():
        generate(root, n_images=12, size=16, seed=0, workers=1)
    return root


def write_params(tmp_path: Path, **extra: object) -> Path:
    root = str(tiny_root(tmp_path))
    raw = {
        "name": "fake",
        "base": {"data": {"root": root, "image_size": 32}, "train": {"epochs": 1}},
        "axes": {"loss.name": ["bce", "focal"], "model.name": ["t-densenet"]},
        "run_id": "{model.name}-{loss.name}-s{train.seed}",
        "stages": ["train", "performance", "alignment"],
    }
    raw.update(extra)
    p = tmp_path / "fake.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def calls(grid_dir: Path) -> list[str]:
    f = grid_dir / "calls.txt"
    return f.read_text().splitlines() if f.exists() else []


# ----------------------------------------------------------------------------- expansion
def test_expand_product_order_ids_and_absolute_root(tmp_path: Path) -> None:
    spec = parse_params(
        {
            "name": "g",
            "base": {"data": {"root": "data/x"}, "train": {"seed": 0}},
            "axes": {
                "model.name": ["t-densenet", "resnet50"],
                "loss.name": ["bce", "cbfocal"],
                "data.task": ["binary", "multilabel"],
            },
        }
    )
    runs = expand(spec, cwd=tmp_path)
    assert [r.id for r in runs] == [
        "t-densenet-bce-binary-s0",
        "t-densenet-bce-multilabel-s0",
        "t-densenet-cbfocal-binary-s0",
        "t-densenet-cbfocal-multilabel-s0",
        "resnet50-bce-binary-s0",
        "resnet50-bce-multilabel-s0",
        "resnet50-cbfocal-binary-s0",
        "resnet50-cbfocal-multilabel-s0",
    ]
    r = runs[2]
    assert r.config["model"]["name"] == "t-densenet"
    assert r.config["loss"]["name"] == "cbfocal"
    assert r.config["data"]["task"] == "binary"
    assert r.config["data"]["root"] == str(tmp_path / "data" / "x")
    assert r.values == {"model.name": "t-densenet", "loss.name": "cbfocal", "data.task": "binary"}
    # defaults survive the merge
    assert r.config["train"]["lr"] == pytest.approx(4e-4)


def test_overrides_set_base_keys_and_narrow_axes(tmp_path: Path) -> None:
    spec = parse_params(
        {"name": "g", "axes": {"loss.name": ["bce", "wbce", "focal"], "train.seed": [0, 1]}}
    )
    runs = expand(spec, ["loss.name=wbce", "train.epochs=3", "data.root=/abs/nih"], cwd=tmp_path)
    assert [r.id for r in runs] == ["resnet50-wbce-multilabel-s0", "resnet50-wbce-multilabel-s1"]
    assert {r.config["train"]["epochs"] for r in runs} == {3}
    assert runs[0].config["data"]["root"] == "/abs/nih"


def test_run_id_format_and_sanitising() -> None:
    cfg = {"model": {"name": "T DenseNet/x"}, "train": {"seed": 3, "lr": 0.0004}}
    assert format_run_id("{model.name}-s{train.seed:02d}", cfg) == "T-DenseNet-x-s03"
    assert format_run_id("lr{train.lr}", cfg) == "lr0.0004"
    with pytest.raises(ConfigError, match="model.nope"):
        format_run_id("{model.nope}", cfg)


def test_duplicate_run_ids_are_an_error(tmp_path: Path) -> None:
    spec = parse_params({"name": "g", "axes": {"train.lr": [0.1, 0.2]}, "run_id": "{model.name}"})
    with pytest.raises(ConfigError, match="train.lr"):
        expand(spec, cwd=tmp_path)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"name": "g", "base": {"train": {"epochz": 1}}}, "train.epochz"),
        ({"name": "g", "axes": {"model.nam": ["resnet50"]}}, "model.nam"),
        ({"name": "g", "axis": {}}, "'axis'"),
        ({"name": "g", "axes": {"loss.name": []}}, "axes.loss.name"),
        ({"name": "bad name!"}, "'name'"),
    ],
)
def test_unknown_or_bad_keys_name_file_and_key(tmp_path: Path, raw: dict, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_params(p)
    assert needle in str(info.value)
    assert str(p) in str(info.value)


def test_select_glob_and_substring() -> None:
    spec = parse_params(
        {
            "name": "g",
            "axes": {"model.name": ["resnet50", "t-densenet"], "loss.name": ["bce", "wbce"]},
        }
    )
    runs = expand(spec, cwd=Path("/"))
    assert [r.id for r in select(runs, ["t-densenet-*"])] == [
        "t-densenet-bce-multilabel-s2022",
        "t-densenet-wbce-multilabel-s2022",
    ]
    assert [r.id for r in select(runs, ["wbce"])] == [
        "resnet50-wbce-multilabel-s2022",
        "t-densenet-wbce-multilabel-s2022",
    ]
    assert len(select(runs, None)) == 4


def test_repo_params_files_parse() -> None:
    repo = Path(__file__).resolve().parents[2]
    expected = {"quick": 16, "smoke": None, "nih-mini": 16, "paper": 16, "phantom-gpu": 48}
    for name, n in expected.items():
        spec = load_params(repo / "params" / f"{name}.yaml")
        runs = expand(spec, cwd=repo)
        assert spec.name == name
        if n is not None:
            assert len(runs) == n, name
        assert all(Path(r.config["data"]["root"]).is_absolute() for r in runs)
        assert len({r.id for r in runs}) == len(runs)
    quick = expand(load_params(repo / "params" / "quick.yaml"), cwd=repo)
    assert {r.config["loss"]["name"] for r in quick} == {"bce", "wbce", "focal", "cbfocal"}
    assert {r.config["model"]["name"] for r in quick} == {"resnet50", "t-densenet"}
    assert {r.config["data"]["task"] for r in quick} == {"binary", "multilabel"}
    # every run config passes the schema (roots and the GPU are checked where they run)
    from imbalens import config

    for name in expected:
        for r in expand(load_params(repo / "params" / f"{name}.yaml"), cwd=repo):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(config, "_cuda_available", lambda: True)
                config.validate_config(r.config, name, check_root=False)
    gpu = expand(load_params(repo / "params" / "phantom-gpu.yaml"), cwd=repo)
    assert {r.config["train"]["seed"] for r in gpu} == {0, 1, 2}
    assert {r.config["data"]["augment_on"] for r in gpu} == {"device"}
    assert all(Path(r.config["data"]["prepared"]).is_absolute() for r in gpu)


# ----------------------------------------------------------------------------- running
def test_failure_isolation_skip_and_config_change(tmp_path: Path, notebooks: Path) -> None:
    params = write_params(tmp_path)
    out = tmp_path / "runs"
    rep = run_grid(params, out, notebook_dir=notebooks, progress=False)
    g = out / "fake"
    good, bad = g / "t-densenet-bce-s2022", g / "t-densenet-focal-s2022"
    assert not rep.ok
    status = {r.id: r.status for r in rep.runs}
    assert status == {good.name: "done", bad.name: "failed"}
    badres = next(r for r in rep.runs if r.id == bad.name)
    assert {k: v.status for k, v in badres.stages.items()} == {
        "train": "done",
        "performance": "failed",
        "alignment": "not-run",
    }
    # the failed notebook is kept for reading, under a name that is not the final one
    assert (bad / "performance.failed.ipynb").is_file()
    assert not (bad / "performance.ipynb").exists()
    assert "planted failure" in (bad / "performance.failed.ipynb").read_text()
    assert not marker_path(bad, "performance").exists()
    for stage in ("train", "performance", "alignment"):
        assert (good / f"{stage}.ipynb").is_file()
        m = json.loads(marker_path(good, stage).read_text())
        assert m["config_hash"] == json.loads((good / "grid-run.json").read_text())["config_hash"]
    assert yaml.safe_load((good / "config.yaml").read_text())["train"]["added_by_training"]
    assert sorted(calls(g)) == sorted(
        [f"{good.name} train", f"{good.name} performance", f"{good.name} alignment"]
        + [f"{bad.name} train", f"{bad.name} performance"]
    )
    # the results page saw both runs; grid.json records statuses and timings
    assert rep.pages["results"].status == "done"
    assert (g / "results-saw.txt").read_text() == f"{good.name}:done {bad.name}:failed"
    gj = json.loads((g / "grid.json").read_text())
    assert [r["status"] for r in gj["runs"]] == ["done", "failed"]
    assert gj["runs"][0]["stages"]["train"]["seconds"] > 0
    assert rep.pages["data"].status == "absent"

    # second invocation: done stages are skipped (a config.yaml rewritten by a stage is not a
    # changed config); the failed one is retried (and fails again)
    (g / "calls.txt").unlink()
    rep2 = run_grid(params, out, notebook_dir=notebooks, progress=False)
    assert calls(g) == [f"{bad.name} performance"]
    assert rep2.pages["results"].status == "skipped"  # nothing changed
    assert not (g / ".stale").exists()
    # a stage that reran (its marker rewritten) or an edited page source rebuilds the page
    marker_path(good, "alignment").unlink()
    assert (
        run_grid(params, out, notebook_dir=notebooks, progress=False).pages["results"].status
        == "done"
    )
    page = notebooks / "results.py"
    page.write_text(page.read_text() + "\n# edited\n")
    assert (
        run_grid(params, out, notebook_dir=notebooks, progress=False).pages["results"].status
        == "done"
    )
    assert (
        run_grid(params, out, notebook_dir=notebooks, progress=False).pages["results"].status
        == "skipped"
    )

    # a changed config re-runs every stage of every run, the old folder moved aside
    (g / "calls.txt").unlink()
    rep3 = run_grid(
        params,
        out,
        notebook_dir=notebooks,
        overrides=["train.epochs=2"],
        only=["bce"],
        progress=False,
    )
    assert rep3.ok
    assert calls(g) == [f"{good.name} {s}" for s in ("train", "performance", "alignment")]
    assert yaml.safe_load((good / "config.yaml").read_text())["train"]["epochs"] == 2
    assert (
        json.loads((good / "grid-run.json").read_text())["config_hash"] == rep3.runs[0].config_hash
    )
    stale = list((g / ".stale").iterdir())
    assert len(stale) == 1 and stale[0].name.startswith(good.name)
    assert (stale[0] / "train.ipynb").is_file()


def test_interrupt_leaves_no_outputs_and_resumes(tmp_path: Path, notebooks: Path) -> None:
    params = write_params(tmp_path, axes={"loss.name": ["bce"]})
    out = tmp_path / "runs"
    g = out / "fake"
    g.mkdir(parents=True)
    (g / "interrupt.txt").write_text("")
    rep = run_grid(params, out, notebook_dir=notebooks, progress=False)
    run = g / "resnet50-bce-s2022"
    assert rep.interrupted and not rep.ok
    assert rep.runs[0].status == "interrupted"
    assert (run / "performance.ipynb").is_file()
    assert not (run / "alignment.ipynb").exists()
    assert not (run / "alignment.failed.ipynb").exists()
    assert not marker_path(run, "alignment").exists()
    assert not list(run.glob(".*.partial.ipynb"))
    # grid.json names the stages this invocation finished as done, not pending
    stages = json.loads((g / "grid.json").read_text())["runs"][0]["stages"]
    assert {k: v["status"] for k, v in stages.items()} == {
        "train": "done",
        "performance": "done",
        "alignment": "interrupted",
    }
    # resume: only the interrupted stage runs
    (g / "interrupt.txt").unlink()
    (g / "calls.txt").unlink()
    rep2 = run_grid(params, out, notebook_dir=notebooks, progress=False)
    assert rep2.ok
    assert calls(g) == [f"{run.name} alignment"]


def test_sigint_on_the_cli_is_clean(tmp_path: Path, notebooks: Path) -> None:
    params = write_params(tmp_path, axes={"loss.name": ["bce"]}, stages=["alignment"])
    out = tmp_path / "runs"
    g = out / "fake"
    g.mkdir(parents=True)
    (g / "hang.txt").write_text("")
    cmd = [sys.executable, "-m", "imbalens.cli", "grid", str(params), "--out", str(out)]
    cmd += ["--notebooks", str(notebooks), "--no-pages"]
    # A terminal's foreground job receives ctrl-C with SIGINT at its default; a test
    # suite started in the background by a non-interactive shell (`make test &`) inherits
    # SIGINT *ignored*, which Python then keeps, so the child gets the default back here.
    proc = subprocess.Popen(
        cmd,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 90
    while not (g / "started.txt").exists():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.time() < deadline, "the notebook never started"
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what ctrl-C in a terminal does
    text = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, text
    assert "without encryption" not in text  # kernels over IPC sockets, not TCP
    run = g / "resnet50-bce-s2022"
    assert (run / "config.yaml").is_file()
    assert not (run / "alignment.ipynb").exists()
    assert not (run / "alignment.failed.ipynb").exists()
    assert not marker_path(run, "alignment").exists()
    assert not list(run.glob(".*.partial.ipynb"))
    assert json.loads((g / "grid.json").read_text())["interrupted"] is True


def test_dry_run_writes_nothing(tmp_path: Path, notebooks: Path) -> None:
    params = write_params(tmp_path)
    rep = run_grid(params, tmp_path / "runs", notebook_dir=notebooks, dry_run=True)
    assert [r.status for r in rep.runs] == ["pending", "pending"]
    assert not (tmp_path / "runs").exists()
    rep = run_grid(params, tmp_path / "runs", notebook_dir=notebooks, dry_run=True, only=["focal"])
    assert [r.status for r in rep.runs] == ["not-selected", "pending"]
    with pytest.raises(ConfigError, match="nothing"):
        run_grid(params, tmp_path / "runs", notebook_dir=notebooks, dry_run=True, only=["nothing"])


def test_parallel_jobs(tmp_path: Path, notebooks: Path) -> None:
    params = write_params(tmp_path, stages=["train"])
    rep = run_grid(params, tmp_path / "runs", notebook_dir=notebooks, jobs=2, pages=False)
    assert rep.ok
    # results depend on the thread count: each marker records the one its stage ran with
    marker = json.loads(
        marker_path(tmp_path / "runs" / "fake" / rep.runs[0].id, "train").read_text()
    )
    assert marker["threads"] == max(1, (os.cpu_count() or 1) // 2)
    assert sorted(calls(tmp_path / "runs" / "fake")) == [
        "t-densenet-bce-s2022 train",
        "t-densenet-focal-s2022 train",
    ]


# ----------------------------------------------------------------------------- the book
def test_book_assembles_toc_hides_parameters_and_builds(tmp_path: Path, notebooks: Path) -> None:
    from imbalens.study.book import BookError, assemble, build

    params = write_params(tmp_path, axes={"loss.name": ["bce", "wbce"]})
    out = tmp_path / "runs"
    assert run_grid(params, out, notebook_dir=notebooks, progress=False).ok
    book = assemble(out / "fake")
    assert book.runs == ["resnet50-bce-s2022", "resnet50-wbce-s2022"]
    toc = yaml.safe_load((book.root / "_toc.yml").read_text())
    assert toc["format"] == "jb-book" and toc["root"] == "index"
    assert toc["parts"][0]["chapters"][0] == {"file": "results"}
    assert toc["parts"][1] == {
        "caption": "Run resnet50-bce-s2022",
        "chapters": [
            {"file": f"runs/resnet50-bce-s2022/{s}"} for s in ("train", "performance", "alignment")
        ],
    }
    cfg = yaml.safe_load((book.root / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    nb = json.loads((book.root / "runs" / "resnet50-bce-s2022" / "train.ipynb").read_text())
    tagged = {
        tuple(c["metadata"].get("tags", [])) for c in nb["cells"] if c["metadata"].get("tags")
    }
    assert tagged == {("parameters", "remove-cell"), ("injected-parameters", "remove-cell")}
    assert "".join(nb["cells"][0]["source"]) == "# Fake train: resnet50-bce-s2022"
    index = build(book.root)
    assert index == book.root / "_build" / "html" / "index.html"
    page = book.root / "_build" / "html" / "runs" / "resnet50-wbce-s2022" / "performance.html"
    html = page.read_text()
    assert "performance ok wbce" in html
    assert "injected-parameters" not in html and "run_dir = " not in html
    # a page that the table of contents names but that is missing fails the build
    (book.root / "runs" / "resnet50-wbce-s2022" / "alignment.ipynb").unlink()
    with pytest.raises(BookError, match="alignment"):
        build(book.root)


def test_a_regenerated_phantom_reruns_the_runs(tmp_path: Path, notebooks: Path) -> None:
    data = tiny_root(tmp_path)
    manifest = json.loads((data / "phantom.json").read_text())
    params = write_params(tmp_path, axes={"loss.name": ["bce"]}, stages=["train"])
    out = tmp_path / "runs"
    g = out / "fake"
    kw = {"notebook_dir": notebooks, "overrides": [f"data.root={data}"], "pages": False}
    run_grid(params, out, **kw)
    run_grid(params, out, **kw)
    assert calls(g) == ["resnet50-bce-s2022 train"]  # the second invocation skipped it
    manifest["counts"] = {"x": 1}  # not part of the phantom's identity
    (data / "phantom.json").write_text(json.dumps(manifest))
    run_grid(params, out, **kw)
    assert len(calls(g)) == 1
    manifest["code"] = "bbbb"  # the generator changed: the phantom is another data set
    (data / "phantom.json").write_text(json.dumps(manifest))
    rep = run_grid(params, out, **kw)
    assert rep.ok and len(calls(g)) == 2
    assert len(list((g / ".stale").iterdir())) == 1


def test_corrupt_or_deleted_outputs_are_redone(tmp_path: Path, notebooks: Path) -> None:
    params = write_params(tmp_path, axes={"loss.name": ["bce"]})
    out = tmp_path / "runs"
    g = out / "fake"
    assert run_grid(params, out, notebook_dir=notebooks, pages=False, progress=False).ok
    run = g / "resnet50-bce-s2022"
    marker = json.loads(marker_path(run, "train").read_text())
    assert set(marker["outputs"]) == {"train.ipynb", "metrics.json"}
    (run / "metrics.json").write_text('{"auroc_mea')  # truncated: not trusted
    (run / "alignment.ipynb").unlink()  # a deleted stage notebook
    (g / "calls.txt").unlink()
    rep = run_grid(params, out, notebook_dir=notebooks, pages=False, progress=False)
    assert rep.ok
    # train (metrics.json) and alignment are redone; performance read metrics.json, which
    # train rewrote byte for byte, so its recorded checksum still holds
    assert calls(g) == [f"{run.name} {s}" for s in ("train", "alignment")]
    assert json.loads((run / "metrics.json").read_text()) == {"auroc_mean": 0.5}
    (g / "calls.txt").unlink()
    assert run_grid(params, out, notebook_dir=notebooks, pages=False, progress=False).ok
    assert calls(g) == []
