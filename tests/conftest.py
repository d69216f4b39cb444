"""Shared fixtures: the real nih-mini subset (skipped when absent), a tiny phantom and the
small training config the tests build on (``small_config``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
NIH_MINI = Path(os.environ.get("IMBALENS_NIH_MINI", REPO.parent / "shared" / "data" / "nih-mini"))


@pytest.fixture(scope="session")
def nih_mini_root() -> Path:
    """Root of ../shared/data/nih-mini (2,467 real NIH images); skip when it is absent."""
    if not (NIH_MINI / "Data_Entry_2017.csv").is_file():
        pytest.skip(f"nih-mini not found at {NIH_MINI} (set IMBALENS_NIH_MINI)")
    return NIH_MINI


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom (400 images, 64 px, seed 0) in NIH's layout, made once per session."""
    from imbalens.data.synth import generate

    out = tmp_path_factory.mktemp("phantom")
    generate(out, n_images=400, size=64, seed=0, boxes="all", workers=1)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a shared 2-core machine more threads spin and
    run ~10x slower (used by the training tests via ``pytest.mark.usefixtures``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: the part every small test config shares: a random-init t-densenet on 32 px fp32 input
SMALL_CONFIG: dict[str, dict[str, Any]] = {
    "data": {"image_size": 32},
    "model": {"name": "t-densenet"},
    "train": {"precision": "fp32"},
}


@pytest.fixture
def small_config() -> Callable[..., dict[str, Any]]:
    """Factory of the tiny config of the training/analysis tests.

    ``small_config(root, **sections)`` is ``merge_config(SMALL_CONFIG + data.root, sections)``:
    each keyword is a config section (``data``, ``model``, ``loss``, ``train``, ``analysis``)
    whose keys override the small defaults, deep-merged and checked for unknown keys as any
    config layer. For example ``small_config(root, data={"image_size": 64},
    train={"epochs": 2, "progress": "off"})``.
    """
    from imbalens.config import merge_config

    def make(root: str | os.PathLike[str], **sections: Mapping[str, Any]) -> dict[str, Any]:
        base = {k: dict(v) for k, v in SMALL_CONFIG.items()}
        base["data"]["root"] = str(root)
        return merge_config(base, sections)

    return make
