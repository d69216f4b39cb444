"""Display names and orderings of the study's models, losses, tasks and metrics.

Every table and figure of the book names a loss ``CB-Focal`` (not ``cbfocal``), a model
``T-DenseNet`` and the multi-label task ``multi-label``, and lists them in the paper's
order (BCE, WBCE, Focal, CB-Focal; T-DenseNet, ResNet50; multi-label, binary). This
module is the one place those names and orders live; a name it does not know passes
through unchanged, so a new loss shows up under its config name rather than failing.

Example:
    >>> loss_label("cbfocal"), model_label("t-densenet"), task_label("multilabel")
    ('CB-Focal', 'T-DenseNet', 'multi-label')
    >>> ordered(["focal", "bce", "mse"], LOSS_ORDER)
    ['bce', 'focal', 'mse']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

LOSS_ORDER: tuple[str, ...] = ("bce", "wbce", "focal", "cbfocal")
"""Losses in the paper's column order."""
LOSS_LABELS: dict[str, str] = {
    "bce": "BCE",
    "wbce": "WBCE",
    "focal": "Focal",
    "cbfocal": "CB-Focal",
}
WEIGHTED_LOSSES: tuple[str, ...] = ("wbce", "focal", "cbfocal")
"""The cost-sensitive losses the paper compares with plain BCE."""
MODEL_ORDER: tuple[str, ...] = ("t-densenet", "resnet50")
MODEL_LABELS: dict[str, str] = {"t-densenet": "T-DenseNet", "resnet50": "ResNet50"}
TASK_ORDER: tuple[str, ...] = ("multilabel", "binary")
TASK_LABELS: dict[str, str] = {"multilabel": "multi-label", "binary": "binary"}
METRIC_LABELS: dict[str, str] = {
    "auroc": "AUROC",
    "ap": "AP",
    "mean_prob": "mean predicted probability",
    "iobb": "IoBB",
    "ior": "IoR",
    "pointing": "pointing game",
    "disjoint": "Disjoint",
    "unique": "Unique",
}


def loss_label(loss: str) -> str:
    """Display name of a loss (``cbfocal`` -> ``CB-Focal``); unknown names pass through."""
    return LOSS_LABELS.get(loss, loss)


def model_label(model: str) -> str:
    """Display name of a model (``t-densenet`` -> ``T-DenseNet``)."""
    return MODEL_LABELS.get(model, model)


def task_label(task: str) -> str:
    """Display name of a task (``multilabel`` -> ``multi-label``)."""
    return TASK_LABELS.get(task, task)


def metric_label(metric: str) -> str:
    """Display name of a metric (``mean_prob`` -> ``mean predicted probability``)."""
    return METRIC_LABELS.get(metric, metric)


def ordered(values: Iterable[str], order: tuple[str, ...]) -> list[str]:
    """Distinct ``values`` sorted by ``order``; values not in ``order`` follow, alphabetically."""
    return sorted(set(values), key=lambda v: (order.index(v) if v in order else len(order), v))


def run_title(config: Mapping[str, Any]) -> str:
    """Title of a run page: model, loss and task of the run's resolved config.

    The task keeps its config name (``binary``, ``multilabel``), as the run ids do:
    ``run_title(cfg) == "T-DenseNet, BCE, binary"`` for ``t-densenet-bce-binary-s0``.
    """
    model, loss = config["model"]["name"], config["loss"]["name"]
    return f"{model_label(model)}, {loss_label(loss)}, {config['data']['task']}"
