"""Training engine: schedule, precision, checkpoints, samplers, config, and end-to-end runs.

End-to-end runs use the tiny phantom (64 px) for both models x both tasks with two steps,
and a learnable toy (label j = bright cell j of a 4x4 grid) that a network must fit.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from imbalens.config import ConfigError, load_config, merge_config
from imbalens.data.findings import FINDINGS, class_names
from imbalens.paths import REPO
from imbalens.training.checkpoint import (
    load_checkpoint,
    load_model_from_run,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from imbalens.training.distributed import (
    DistInfo,
    EpochSampler,
    SeededDataset,
    gather_arrays,
    per_rank_batch,
    steps_per_epoch,
)
from imbalens.training.evaluate import evaluate_run, sigmoid
from imbalens.training.precision import autocast_context, cpu_supports_bf16, resolve_precision
from imbalens.training.train import (
    HISTORY_COLUMNS,
    Progress,
    WarmupCosine,
    build_scheduler,
    plateaued,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- schedule


def test_warmup_cosine_known_values() -> None:
    # T = 10, cosine to 0.01, warm-up 4 iterations from 0.1 (mmcv's linear warm-up).
    rule = WarmupCosine(total=10, min_ratio=0.01, warmup_iters=4, warmup_ratio=0.1)
    # t = 0: cosine factor 1, warm-up factor 1 - 1 * 0.9 = 0.1
    assert rule(0) == pytest.approx(0.1)
    # t = 2: cosine 0.01 + 0.99 * (1 + cos(0.2 pi)) / 2 = 0.9054634; warm-up 1 - 0.5*0.9 = 0.55
    assert rule(2) == pytest.approx(0.9054634 * 0.55, abs=1e-6)
    # t = 5: half-way, no warm-up: 0.01 + 0.99 * 0.5 = 0.505
    assert rule(5) == pytest.approx(0.505)
    assert rule(10) == pytest.approx(0.01)
    assert rule(12) == pytest.approx(0.01)  # clamped past the end
    no_warmup = WarmupCosine(total=4, min_ratio=0.0, warmup_iters=0, warmup_ratio=0.01)
    assert [no_warmup(t) for t in range(5)] == pytest.approx([1, 0.8535534, 0.5, 0.1464466, 0])


def test_scheduler_steps_per_iteration() -> None:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)
    t = {"min_lr_ratio": 0.0, "warmup_iters": 0, "warmup_ratio": 0.01}
    sched = build_scheduler(opt, t, total_iters=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([4e-4, 4e-4 * 0.8535534, 2e-4, 4e-4 * 0.1464466])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- precision


def test_precision_resolution() -> None:
    expected = "bf16" if cpu_supports_bf16() else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="fp32, bf16, fp16, auto"):
        resolve_precision("fp8", "cpu")


def test_autocast_context_dtypes() -> None:
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast_context("cpu", "fp32"):
        assert layer(x).dtype == torch.float32
    with autocast_context("cpu", "bf16"):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: close to the fp32 result
    assert torch.allclose(y.float(), layer(x), atol=0.05)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    np.random.seed(1)  # noqa: NPY002
    random.seed(2)
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "epoch": 3, "history": [{"a": 1.0}], "rng": rng_state()}
    path = tmp_path / "c" / "x.pt"
    save_checkpoint(path, state)
    assert not [p for p in path.parent.iterdir() if p.name != "x.pt"]  # no temp files left
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    loaded = load_checkpoint(path)  # weights_only=True: fails on any pickled object
    set_rng_state(loaded["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
    assert loaded["epoch"] == 3 and loaded["history"] == [{"a": 1.0}]
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- sampling


class _Echo(torch.utils.data.Dataset):
    """Item i: its index and a random draw (to see the per-sample seeding)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        return {"value": i, "noise": float(torch.rand(()))}


def test_epoch_sampler_shards_equal_one_global_batch() -> None:
    data = _Echo()
    one = [i for i, _ in EpochSampler(data, DistInfo(), shuffle=True, seed=5)]
    r0 = [i for i, _ in EpochSampler(data, DistInfo(0, 2), shuffle=True, seed=5)]
    r1 = [i for i, _ in EpochSampler(data, DistInfo(1, 2), shuffle=True, seed=5)]
    assert sorted(one) == list(range(10))
    # global batch 4 = 2 ranks x 2: the same four samples in step 0 and step 1
    assert sorted(r0[:2] + r1[:2]) == sorted(one[:4])
    assert sorted(r0[2:4] + r1[2:4]) == sorted(one[4:8])
    s = EpochSampler(data, DistInfo(), shuffle=True, seed=5)
    s.set_start(4)
    assert [i for i, _ in s] == one[4:] and len(s) == 6
    s.set_epoch(1)
    s.set_start(0)
    other = list(s)
    assert [e for _, e in other] == [1] * 10 and [i for i, _ in other] != one


def test_seeded_dataset_depends_only_on_seed_epoch_index() -> None:
    ds = SeededDataset(_Echo(), seed=3)
    a = ds[(4, 0)]["noise"]
    torch.manual_seed(123)  # the global state does not matter ...
    before = torch.get_rng_state()
    assert ds[(4, 0)]["noise"] == a
    assert torch.equal(torch.get_rng_state(), before)  # ... and is left untouched
    assert ds[(4, 1)]["noise"] != a  # another epoch, another draw
    assert ds[(4, 0)]["sample"] == 4


def test_gather_and_batch_helpers() -> None:
    idx = np.array([2, 0, 1, 0])  # padding repeated sample 0
    uniq, arrays = gather_arrays(idx, {"x": np.array([20, 0, 10, 0])}, DistInfo())
    assert uniq.tolist() == [0, 1, 2] and arrays["x"].tolist() == [0, 10, 20]
    assert per_rank_batch(8, DistInfo(0, 2)) == 4
    with pytest.raises(ValueError, match="not divisible by WORLD_SIZE=3"):
        per_rank_batch(8, DistInfo(0, 3))
    assert steps_per_epoch(10, 4, None) == 2  # last partial batch dropped
    assert steps_per_epoch(10, 4, 1) == 1
    assert steps_per_epoch(3, 4, None) == 1


# ----------------------------------------------------------------------------- config


def test_load_config_train_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 3, "checkpoint_every_steps": 5}}))
    cfg = load_config(path, ["train.batch_size=8", "train.sync_bn=true"])
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["batch_size"] == 8
    assert cfg["train"]["checkpoint_every_steps"] == 5 and cfg["train"]["sync_bn"] is True
    assert load_config(None)["train"]["checkpoint_every_steps"] is None
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_example_config_is_valid() -> None:
    example = REPO / "params" / "train-example.yaml"
    cfg = load_config(example)
    assert cfg["model"]["name"] in ("resnet50", "t-densenet")
    assert cfg["train"]["lr"] == pytest.approx(4e-4)


# ----------------------------------------------------------------------------- end to end


def _phantom_cfg(root: Path, model: str, task: str, **train: object) -> dict:
    base = {
        "epochs": 1,
        "batch_size": 16,
        "eval_batch_size": 64,
        "max_steps_per_epoch": 2,
        "precision": "fp32",
        "progress": "off",
        "workers": 0,
    }
    base.update(train)
    return merge_config(
        {
            "data": {"root": str(root), "task": task, "image_size": 64},
            "model": {"name": model},
            "loss": {"name": "wbce" if task == "binary" else "focal"},
            "train": base,
        }
    )


CASES = [(m, t) for m in ("t-densenet", "resnet50") for t in ("multilabel", "binary")]


@pytest.fixture(scope="module")
def phantom_runs(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two-step runs of both models x both tasks (ResNet50 in bf16 autocast when possible)."""
    runs = {}
    for model, task in CASES:
        out = tmp_path_factory.mktemp(f"{model}-{task}")
        cfg = _phantom_cfg(
            tiny_phantom, model, task, precision="fp32" if model == "t-densenet" else "auto"
        )
        metrics = train(cfg, out)
        runs[(model, task)] = (out, cfg, metrics)
    return runs


@pytest.mark.parametrize(("model", "task"), CASES)
def test_run_folder_files_and_columns(phantom_runs: dict, model: str, task: str) -> None:
    from imbalens.data.nih import load_nih
    from imbalens.training.metrics import performance

    out, cfg, metrics = phantom_runs[(model, task)]
    for name in (
        "config.yaml",
        "history.csv",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "predictions_val.csv",
        "predictions_test.csv",
        "metrics.json",
        "metrics_val.json",
        "train.done",
    ):
        assert (out / name).is_file(), name
    assert not list(out.rglob(".*"))  # no temp files left behind
    assert yaml.safe_load((out / "config.yaml").read_text()) == {
        **cfg,
        "train": {**cfg["train"], "checkpoint_every_steps": None, "sync_bn": False},
    }
    history = pd.read_csv(out / "history.csv")
    assert tuple(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1] and history["step"].tolist() == [2]
    assert history["lr"].iloc[0] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0

    data = load_nih(cfg["data"]["root"], task=task)
    names = class_names(task)
    pred = pd.read_csv(out / "predictions_test.csv")
    assert list(pred.columns) == (
        ["image"] + [f"prob:{c}" for c in names] + [f"target:{c}" for c in names]
    )
    assert pred["image"].tolist() == data.images("test")
    targets = pred[[f"target:{c}" for c in names]].to_numpy(np.float32)
    assert np.array_equal(targets, data.targets("test"))
    probs = pred[[f"prob:{c}" for c in names]].to_numpy(np.float64)
    assert ((probs > 0) & (probs < 1)).all()
    assert len(pd.read_csv(out / "predictions_val.csv")) == len(data.images("val"))

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["best_epoch"] == 1 and on_disk["seconds"] > 0
    again = performance(probs, targets, names)  # metrics are those of the CSV
    assert on_disk["auroc_mean"] == pytest.approx(again["auroc_mean"], abs=1e-6)
    assert on_disk["ap_mean"] == pytest.approx(again["ap_mean"], abs=1e-6)
    assert metrics["auroc_mean"] == on_disk["auroc_mean"]
    assert set(on_disk["auroc"]) == set(names)
    assert (out / "train.done").stat().st_mtime_ns >= (out / "metrics.json").stat().st_mtime_ns

    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "step",
        "config",
        "best_metric",
        "rng",
    } <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 0 and ckpt["global_step"] == 2


def test_best_checkpoint_reproduces_predictions(phantom_runs: dict) -> None:
    out, cfg, _ = phantom_runs[("t-densenet", "multilabel")]
    model, run_cfg = load_model_from_run(out, "best")
    assert not model.training and run_cfg["model"]["name"] == "t-densenet"
    pred = pd.read_csv(out / "predictions_test.csv")
    from imbalens.data.nih import load_nih

    ds = load_nih(cfg["data"]["root"]).dataset("test", 64)
    images = torch.stack([ds[i]["image"] for i in range(8)])
    with torch.inference_mode():
        probs = sigmoid(model(images).numpy())
    expected = pred[[f"prob:{c}" for c in FINDINGS]].to_numpy()[:8]
    assert np.allclose(probs, expected, atol=1e-5)

    evaluated = evaluate_run(out, "best", "test")
    on_disk = json.loads((out / "metrics.json").read_text())
    assert evaluated["auroc_mean"] == pytest.approx(on_disk["auroc_mean"], abs=1e-6)
    assert (out / "evaluation" / "best-test" / "predictions.csv").is_file()
    from imbalens.cli import main

    assert main(["evaluate", str(out), "--which", "last", "--split", "val"]) == 0
    last_val = json.loads((out / "evaluation" / "last-val" / "metrics.json").read_text())
    on_disk_val = json.loads((out / "metrics_val.json").read_text())
    # one epoch: last = best, so the CLI's val metrics are the training's
    assert last_val["auroc_mean"] == pytest.approx(on_disk_val["auroc_mean"], abs=1e-6)

    # a finished run is not trained again
    stamp = (out / "checkpoints" / "best.pt").stat().st_mtime_ns
    assert train(cfg, out)["auroc_mean"] == on_disk["auroc_mean"]
    assert (out / "checkpoints" / "best.pt").stat().st_mtime_ns == stamp


def write_toy_nih(root: Path, n: int = 40, size: int = 32, seed: int = 0) -> Path:
    """An NIH-layout toy whose finding j is a bright cell j of a 4x4 grid (learnable)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows, names = [], []
    cell = size // 4
    for i in range(n):
        positive = np.flatnonzero(rng.random(len(FINDINGS)) < 0.3)
        img = rng.normal(80, 15, (size, size))
        for j in positive:
            r, c = divmod(int(j), 4)
            img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] += 100
        name = f"{i:08d}_000.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / name)
        labels = "|".join(FINDINGS[j] for j in positive) or "No Finding"
        rows.append(f"{name},{labels},0,{i},50,M,PA,{size},{size},0.1,0.1,")
        names.append(name)
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    header += "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    (root / "Data_Entry_2017.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[:8]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[8:]) + "\n")
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    return root


def test_loss_falls_on_learnable_toy(tmp_path: Path) -> None:
    root = write_toy_nih(tmp_path / "toy")
    cfg = merge_config(
        {
            "data": {"root": str(root), "image_size": 32, "augment": False, "val_fraction": 0.2},
            "model": {"name": "t-densenet"},
            "train": {
                "epochs": 6,
                "batch_size": 8,
                "eval_batch_size": 32,
                "lr": 3e-3,
                "precision": "fp32",
                "progress": "off",
            },
        }
    )
    metrics = train(cfg, tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    losses = history["train_loss"].to_numpy()
    assert len(losses) == 6 and math.isclose(losses[0], losses[0])
    assert losses[-1] < 0.7 * losses[0], losses
    assert metrics["auroc_mean"] > 0.6


def test_resume_with_another_config_is_an_error(tmp_path: Path, tiny_phantom: Path) -> None:
    cfg = _phantom_cfg(tiny_phantom, "t-densenet", "binary", max_steps_per_epoch=1, epochs=2)
    cfg["train"]["checkpoint_every_steps"] = None
    out = tmp_path / "run"
    save_checkpoint(
        out / "checkpoints" / "last.pt",
        {"config": _phantom_cfg(tiny_phantom, "resnet50", "binary")},
    )
    with pytest.raises(ConfigError, match="another config"):
        train(cfg, out)
    assert not (out / "config.yaml").exists()  # the run folder is left as it was


def test_patience_stops_at_a_validation_plateau(tiny_phantom: Path, tmp_path: Path) -> None:
    cfg = merge_config(
        {
            "data": {"root": str(tiny_phantom), "image_size": 32},
            "model": {"name": "t-densenet"},
            "train": {"epochs": 6, "batch_size": 16, "max_steps_per_epoch": 1, "lr": 1e-9}
            | {"precision": "fp32", "progress": "off", "patience": 1},
        }
    )
    train(cfg, tmp_path / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    best, stop = -np.inf, None
    for e, score in enumerate(history["val_auroc_mean"], start=1):
        if score > best:
            best, best_epoch = score, e
        elif e - best_epoch >= 1:
            stop = e
            break
    assert stop is not None and len(history) == stop < 6
    state = Progress(epoch=stop, best_epoch=best_epoch)
    assert plateaued(state, 1) and not plateaued(state, None) and not plateaued(state, 9)
