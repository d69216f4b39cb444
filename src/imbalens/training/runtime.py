"""Where and how a model runs: one frozen bundle of device, precision, memory format,
progress mode and the DDP position, built once from the ``train`` config section.

The training loop, validation and prediction take a :class:`Runtime` instead of a
dozen loose parameters (torchvision's ``args``, but frozen: nothing downstream can
change where the run executes half-way through).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from imbalens.training.distributed import DistInfo
from imbalens.training.precision import autocast_context, resolve_precision
from imbalens.training.progress import parse_progress, progress_enabled


def select_device(setting: str | torch.device, info: DistInfo | None = None) -> torch.device:
    """The ``torch.device`` of a ``train.device`` / ``--device`` setting.

    ``auto`` is CUDA when available, else CPU; anything else is passed to
    ``torch.device``. With ``info`` (training), a CUDA device without an index gets
    this process's ``LOCAL_RANK`` (``cuda:LOCAL_RANK`` under DDP, ``cuda:0`` alone);
    without it (analysis) the index stays as given.

    Example:
        >>> select_device("cpu")
        device(type='cpu')
        >>> select_device("cuda", DistInfo(rank=1, world_size=2, local_rank=1))
        device(type='cuda', index=1)
    """
    if str(setting) == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)
    if info is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    return device


@dataclass(frozen=True)
class Runtime:
    """Device, precision, memory format, progress mode and DDP position of a run.

    ``precision`` is resolved (``fp32``, ``bf16`` or ``fp16``, never ``auto``);
    ``progress`` is ``auto``, ``on`` or ``off`` (:func:`imbalens.training.progress.parse_progress`).

    Example:
        >>> rt = Runtime.from_config({"device": "cpu", "precision": "fp32",
        ...                           "channels_last": True, "progress": "off"})
        >>> rt.device, rt.memory_format, rt.bars
        (device(type='cpu'), torch.channels_last, False)
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    progress: str = "off"
    info: DistInfo = field(default_factory=DistInfo)

    @classmethod
    def from_config(cls, t: dict[str, Any], info: DistInfo | None = None) -> Runtime:
        """The runtime of a ``train`` config section (``device``, ``precision``,
        ``channels_last``, ``progress``) for the process ``info`` (default: alone).

        Raises:
            ValueError: an unknown ``train.precision``.
            imbalens.config.ConfigError: an invalid ``train.progress``.
        """
        info = info if info is not None else DistInfo()
        device = select_device(t["device"], info)
        precision = resolve_precision(t["precision"], device)
        return cls(device, precision, bool(t["channels_last"]), parse_progress(t["progress"]), info)

    @property
    def memory_format(self) -> torch.memory_format:
        """``torch.channels_last`` or ``torch.contiguous_format``."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def bars(self) -> bool:
        """Whether evaluation shows progress bars (:func:`progress_enabled`)."""
        return progress_enabled(self.progress, self.info)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """A fresh context running a forward pass in :attr:`precision` on :attr:`device`."""
        return autocast_context(self.device, self.precision)


__all__ = ["Runtime", "select_device"]
