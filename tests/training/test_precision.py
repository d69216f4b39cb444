"""imbalens.training.precision: resolving ``auto``, autocast contexts, the fp16 scaler."""

from __future__ import annotations

import contextlib
import logging
import warnings

import pytest
import torch

from imbalens.training import precision as precision_mod
from imbalens.training.precision import autocast_context, make_grad_scaler, resolve_precision


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_explicit_precisions_resolve_to_themselves(name: str) -> None:
    assert resolve_precision(name, "cpu") == name
    assert resolve_precision(name, torch.device("cpu")) == name


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: native)
    assert resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_is_bf16_else_fp16(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert resolve_precision("auto", "cuda") == expected


def test_unknown_precision_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'fp64'.*fp32, bf16, fp16, auto"):
        resolve_precision("fp64", "cpu")


def test_bf16_without_native_support_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=precision_mod.__name__):
        assert resolve_precision("bf16", "cpu") == "bf16"
    assert "no native bf16" in caplog.text


def test_autocast_context_fp32_is_a_no_op_context() -> None:
    ctx = autocast_context("cpu", "fp32")
    assert isinstance(ctx, contextlib.nullcontext)
    a = torch.ones(3, 3)
    with ctx:
        assert (a @ a).dtype == torch.float32


def test_autocast_context_bf16_runs_matmuls_in_bf16() -> None:
    ctx = autocast_context(torch.device("cpu"), "bf16")
    assert isinstance(ctx, torch.autocast)
    a = torch.ones(3, 3)
    with ctx:
        out = a @ a
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), torch.full((3, 3), 3.0))


def test_autocast_context_resolves_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: False)
    assert isinstance(autocast_context("cpu", "auto"), contextlib.nullcontext)
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: True)
    assert isinstance(autocast_context("cpu", "auto"), torch.autocast)


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16", "auto"])
def test_no_grad_scaler_on_cpu(name: str) -> None:
    assert make_grad_scaler("cpu", name) is None


def test_grad_scaler_only_for_fp16_on_cuda() -> None:
    assert make_grad_scaler("cuda", "fp32") is None
    assert make_grad_scaler("cuda", "bf16") is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on a CPU machine
        assert isinstance(make_grad_scaler("cuda", "fp16"), torch.amp.GradScaler)
