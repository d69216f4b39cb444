"""Numeric precision of training and inference: fp32, bf16 autocast, fp16 AMP.

``precision`` in the config is one of ``fp32``, ``bf16``, ``fp16`` or ``auto``:

- ``auto`` on a CPU picks bf16 autocast when the CPU has native bf16 arithmetic
  (AVX512-BF16 or AMX tiles; oneDNN then runs convolutions in bf16, a 2-5x speed-up on
  such CPUs), otherwise fp32;
- ``auto`` on CUDA picks bf16 when the GPU supports it (Ampere and later), else fp16
  with a gradient scaler (Micikevicius et al., "Mixed Precision Training", ICLR 2018).

Autocast keeps the weights and the optimiser in fp32 and runs matrix products and
convolutions in the low-precision type; losses are computed in fp32 by the loss modules.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""Registry: precision name -> autocast dtype (``None`` = no autocast)."""


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 instructions (AVX512-BF16 or AMX)."""
    probes: list[Callable[[], bool]] = [
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False),
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False),
    ]
    for probe in probes:
        try:
            if probe():
                return True
        except (RuntimeError, AttributeError):  # pragma: no cover - old/odd builds
            continue
    return False


def _auto_cpu() -> str:
    return "bf16" if cpu_supports_bf16() else "fp32"


def _auto_cuda() -> str:
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


AUTO: dict[str, Callable[[], str]] = {"cpu": _auto_cpu, "cuda": _auto_cuda}
"""Registry: device type -> the precision ``auto`` resolves to there."""


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Resolve ``auto`` to ``fp32``/``bf16``/``fp16`` for ``device``; validate the name.

    Raises:
        ValueError: an unknown precision name (the message lists the known ones).
    """
    dev = torch.device(device)
    if precision == "auto":
        return AUTO.get(dev.type, lambda: "fp32")()
    if precision not in DTYPES:
        known = ", ".join([*DTYPES, "auto"])
        raise ValueError(f"train.precision={precision!r} is unknown; use one of {known}")
    if precision == "bf16" and dev.type == "cpu" and not cpu_supports_bf16():
        log.warning("bf16 requested but this CPU has no native bf16: expect it to be slow")
    return precision


def autocast_context(
    device: torch.device | str, precision: str
) -> contextlib.AbstractContextManager[Any]:
    """A context manager running the forward pass in ``precision`` on ``device``.

    ``fp32`` gives a no-op context; ``bf16``/``fp16`` give ``torch.autocast``.
    ``auto`` is resolved first with :func:`resolve_precision`.
    """
    dev = torch.device(device)
    dtype = DTYPES[resolve_precision(precision, dev)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


def make_grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 on CUDA (needed against underflow), else ``None``.

    bf16 has fp32's exponent range and needs no loss scaling.
    """
    dev = torch.device(device)
    if resolve_precision(precision, dev) == "fp16" and dev.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
