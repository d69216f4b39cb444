"""imbalens.training.runtime: Runtime built from a train config, the one select_device."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from imbalens.config import DEFAULTS, ConfigError
from imbalens.training import precision as precision_mod
from imbalens.training.distributed import DistInfo
from imbalens.training.runtime import Runtime, select_device


def _train_cfg(**kw) -> dict:
    return {**DEFAULTS["train"], "device": "cpu", "precision": "fp32", **kw}


# ----------------------------------------------------------------------------- select_device
def test_select_device_cpu_and_passthrough() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    assert select_device("cuda:3", DistInfo(local_rank=1)) == torch.device("cuda", 3)


def test_select_device_auto_without_cuda_is_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    assert select_device("auto", DistInfo(rank=1, world_size=2, local_rank=1)).type == "cpu"


def test_select_device_auto_with_cuda_takes_the_local_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # training (with DistInfo): cuda:LOCAL_RANK; analysis (without): the index as given
    assert select_device("auto", DistInfo(rank=1, world_size=2, local_rank=1)) == torch.device(
        "cuda", 1
    )
    assert select_device("auto", DistInfo()) == torch.device("cuda", 0)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("auto").index is None


# ----------------------------------------------------------------------------- Runtime
def test_from_config_bundles_the_train_section() -> None:
    rt = Runtime.from_config(_train_cfg(channels_last=True, progress="off"))
    assert rt == Runtime(torch.device("cpu"), "fp32", True, "off", DistInfo())
    assert rt.memory_format == torch.channels_last
    assert Runtime.from_config(_train_cfg(channels_last=False)).memory_format == (
        torch.contiguous_format
    )


def test_from_config_parses_progress_and_keeps_the_dist_info() -> None:
    info = DistInfo(rank=1, world_size=2, local_rank=1)
    rt = Runtime.from_config(_train_cfg(progress=True), info)  # YAML's unquoted `on`
    assert (rt.progress, rt.info) == ("on", info)
    assert rt.bars is False  # rank 1 never shows bars
    assert Runtime.from_config(_train_cfg(progress=True)).bars is True  # rank 0, `on`
    assert Runtime.from_config(_train_cfg(progress=False)).progress == "off"
    with pytest.raises(ConfigError, match="train.progress"):
        Runtime.from_config(_train_cfg(progress="sometimes"))


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_from_config_resolves_auto_precision_on_cpu(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: native)
    assert Runtime.from_config(_train_cfg(precision="auto")).precision == expected


def test_from_config_rejects_an_unknown_precision() -> None:
    with pytest.raises(ValueError, match="fp64"):
        Runtime.from_config(_train_cfg(precision="fp64"))


def test_runtime_is_frozen() -> None:
    rt = Runtime(torch.device("cpu"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rt.precision = "bf16"  # type: ignore[misc]
    assert (rt.precision, rt.channels_last, rt.progress, rt.info) == (
        "fp32",
        False,
        "off",
        DistInfo(),
    )


def test_autocast_runs_matmuls_in_the_runtime_precision() -> None:
    a = torch.ones(2, 2)
    fp32 = Runtime(torch.device("cpu"), "fp32")
    assert isinstance(fp32.autocast(), contextlib.nullcontext)
    with fp32.autocast():
        assert (a @ a).dtype == torch.float32
    with Runtime(torch.device("cpu"), "bf16").autocast():
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32  # only inside the context
