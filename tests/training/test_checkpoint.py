"""imbalens.training.checkpoint: atomic save, weights-only load, RNG state, bad files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from imbalens.runfolder import LAST
from imbalens.training.checkpoint import (
    CorruptCheckpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from imbalens.training.train import Learner, Progress


def _draws() -> tuple[torch.Tensor, np.ndarray, float]:
    return torch.rand(4), np.random.rand(4), random.random()  # noqa: NPY002 (global state)


def test_round_trip_of_plain_values(tmp_path: Path) -> None:
    state = {
        "model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2)},
        "epoch": 3,
        "best_metric": 0.75,
        "config": {"model": {"name": "t-densenet"}, "train": {"lr": 4e-4, "sync_bn": False}},
        "history": [{"epoch": 1, "val_auroc_mean": float("nan")}],
        "scaler": None,
    }
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert torch.equal(back["model"]["b"], state["model"]["b"])
    assert (back["epoch"], back["best_metric"], back["scaler"]) == (3, 0.75, None)
    assert back["config"] == state["config"]
    assert np.isnan(back["history"][0]["val_auroc_mean"])
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temp file left


def test_a_learner_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    learner = Learner(model, nn.BCEWithLogitsLoss(), opt, sched, None, net=model)
    state = Progress(epoch=1, step=2, global_step=5, best_metric=0.5, best_epoch=1)
    save_checkpoint(tmp_path / "last.pt", learner.checkpoint(state, {"train": {"seed": 1}}))
    back = load_checkpoint(tmp_path / "last.pt")  # weights_only=True inside
    fresh = nn.Linear(3, 2)
    fresh.load_state_dict(back["model"])
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    assert back["optimizer"]["state"][0]["step"] == 1
    assert back["scheduler"]["last_epoch"] == 1
    assert Progress(**{k: back[k] for k in Progress.__dataclass_fields__}) == state
    assert back["config"] == {"train": {"seed": 1}}


def test_load_refuses_arbitrary_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": Path("/etc/passwd")})  # not a tensor/number/str/list/dict
    with pytest.raises(CorruptCheckpoint, match="Weights only load failed"):
        load_checkpoint(path)


def test_rng_state_round_trip_restores_the_same_numbers() -> None:
    saved = rng_state()
    first = _draws()
    set_rng_state(saved)
    again = _draws()
    assert torch.equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_rng_state_survives_a_checkpoint_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    random.seed(1)
    np.random.standard_normal()  # noqa: NPY002 (leaves a cached gaussian in the state)
    save_checkpoint(tmp_path / "last.pt", {"rng": rng_state()})
    first = _draws() + (np.random.standard_normal(),)  # noqa: NPY002
    _draws()  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    again = _draws() + (np.random.standard_normal(),)  # noqa: NPY002
    assert torch.equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert (first[2], first[3]) == (again[2], again[3])


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "best.pt")):
        load_checkpoint(tmp_path / "best.pt")


def test_empty_file_is_corrupt_and_named(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / LAST
    path.parent.mkdir()
    path.write_bytes(b"")
    with pytest.raises(CorruptCheckpoint) as err:
        load_checkpoint(path)
    assert f"checkpoint {path} is empty" in str(err.value)
    assert f"rm {path}" in str(err.value)  # last.pt: delete it to restart the run
    assert err.value.path == path


def test_truncated_file_is_corrupt_and_named(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.zeros(1000)}})
    bad = tmp_path / "checkpoints" / "best.pt"
    bad.parent.mkdir()
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpoint) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert f"checkpoint {bad} is truncated or corrupt ({len(data) // 2} bytes)" in message
    assert "\n" not in message
    assert str(tmp_path / "train.done") in message  # best.pt: retrain the run
