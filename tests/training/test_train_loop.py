"""imbalens.training.train: one epoch of optimiser steps by hand, and an epoch's bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from imbalens.training.runtime import Runtime
from imbalens.training.train import Learner, Progress, record_epoch, train_one_epoch

CPU = Runtime(torch.device("cpu"), "fp32", channels_last=False, progress="off")


def _learner(w0: float, lr: float) -> Learner:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    return Learner(model, nn.MSELoss(reduction="mean"), opt, sched, None, net=model)


def _loader(targets: list[float]) -> DataLoader:
    xs = [1.0, 2.0] * (len(targets) // 2)
    items = [
        {"image": torch.tensor([x]), "target": torch.tensor([y])}
        for x, y in zip(xs, targets, strict=True)
    ]
    return DataLoader(items, batch_size=2, shuffle=False)  # type: ignore[arg-type]


def test_two_sgd_steps_by_hand() -> None:
    # x = (1, 2), y = (1, 0), w0 = 0.5, lr 0.5, loss = mean((w x - y)^2):
    # step 1: loss (0.25 + 1) / 2 = 0.625, grad (-1 + 4) / 2 = 1.5, w = 0.5 - 0.75 = -0.25
    # step 2: loss (1.5625 + 0.25) / 2 = 0.90625, grad (-2.5 - 2) / 2 = -2.25, w = 0.875
    learner = _learner(0.5, 0.5)
    state = Progress()
    seen: list[tuple[int, int]] = []
    train_one_epoch(
        learner,
        _loader([1.0, 0.0, 1.0, 0.0]),
        CPU,
        state,
        n_steps=2,
        on_step=lambda s: seen.append((s.step, s.global_step)),
    )
    assert learner.model.weight.item() == 0.875
    assert state.loss_sum == 0.625 + 0.90625
    assert (state.epoch, state.step, state.global_step) == (0, 2, 2)
    assert seen == [(1, 1), (2, 2)]
    assert learner.scheduler.last_epoch == 2  # one scheduler step per optimiser step


def test_a_resumed_epoch_runs_only_the_steps_left() -> None:
    learner = _learner(0.5, 0.5)
    state = Progress(epoch=0, step=1, global_step=1, loss_sum=0.625)
    train_one_epoch(learner, _loader([1.0, 0.0]), CPU, state, n_steps=2)
    # the first batch of the (resumed) loader is step 2: from w = 0.5 again, one step
    assert learner.model.weight.item() == -0.25
    assert state.loss_sum == 0.625 + 0.625
    assert (state.step, state.global_step) == (2, 2)


def test_a_non_finite_loss_names_epoch_and_step() -> None:
    state = Progress(epoch=2)
    with pytest.raises(FloatingPointError, match="at epoch 3 step 1"):
        train_one_epoch(_learner(0.5, 0.5), _loader([math.nan, 0.0]), CPU, state, n_steps=1)


def test_record_epoch_keeps_the_best_finite_auroc() -> None:
    state = Progress(epoch=0, step=4, global_step=4, loss_sum=2.0)
    row, best = record_epoch(state, lr=1e-3, val_loss=0.5, score=math.nan, seconds=1.5)
    assert best  # the first epoch is the best so far, even with an undefined AUROC
    assert row is state.history[-1]
    assert math.isnan(row["val_auroc_mean"])
    assert {k: v for k, v in row.items() if k != "val_auroc_mean"} == {
        "epoch": 1,
        "step": 4,
        "lr": 1e-3,
        "train_loss": 0.5,
        "val_loss": 0.5,
        "seconds": 1.5,
    }
    assert (state.best_epoch, state.best_metric) == (1, -math.inf)
    assert (state.epoch, state.step, state.loss_sum, state.seconds) == (1, 0, 0.0, 1.5)

    state.step, state.global_step = 2, 6
    _, best = record_epoch(state, 1e-3, 0.4, 0.7, 2.0)
    assert best and (state.best_epoch, state.best_metric) == (2, 0.7)
    _, best = record_epoch(state, 1e-3, 0.4, 0.7, 2.0)  # a tie is not better
    assert not best and state.best_epoch == 2
    _, best = record_epoch(state, 1e-3, 0.4, math.nan, 2.0)
    assert not best and state.best_epoch == 2
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4]
    assert state.seconds == 7.5
