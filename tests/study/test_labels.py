"""imbalens.study.labels: display names, the paper's orders, the run pages' titles."""

from __future__ import annotations

import pandas as pd

from imbalens.study.labels import (
    LOSS_ORDER,
    MODEL_ORDER,
    TASK_ORDER,
    loss_label,
    metric_label,
    model_label,
    ordered,
    run_title,
    task_label,
)


def test_task_label_known_and_unknown() -> None:
    assert task_label("multilabel") == "multi-label"
    assert task_label("binary") == "binary"
    assert task_label("regression") == "regression"  # unknown names pass through


def test_loss_and_model_labels() -> None:
    assert [loss_label(x) for x in LOSS_ORDER] == ["BCE", "WBCE", "Focal", "CB-Focal"]
    assert [model_label(m) for m in MODEL_ORDER] == ["T-DenseNet", "ResNet50"]
    assert loss_label("mse") == "mse"
    assert model_label("vit") == "vit"


def test_metric_label() -> None:
    assert metric_label("mean_prob") == "mean predicted probability"
    assert metric_label("iobb") == "IoBB"
    assert metric_label("pointing") == "pointing game"
    assert metric_label("topk_iou") == "topk_iou"  # unknown names pass through


def test_ordered_follows_the_paper_then_the_alphabet() -> None:
    assert ordered(["cbfocal", "bce", "zeta", "focal", "bce", "alpha"], LOSS_ORDER) == [
        "bce",
        "focal",
        "cbfocal",
        "alpha",
        "zeta",
    ]
    assert ordered(pd.Series(["binary", "multilabel"]), TASK_ORDER) == ["multilabel", "binary"]
    assert ordered([], MODEL_ORDER) == []


def test_run_title_keeps_the_config_task_name() -> None:
    cfg = {
        "model": {"name": "t-densenet"},
        "loss": {"name": "bce"},
        "data": {"task": "binary", "root": "data/phantom"},
    }
    assert run_title(cfg) == "T-DenseNet, BCE, binary"  # what the smoke test reads
    cfg = {
        "model": {"name": "resnet50"},
        "loss": {"name": "cbfocal"},
        "data": {"task": "multilabel"},
    }
    assert run_title(cfg) == "ResNet50, CB-Focal, multilabel"
