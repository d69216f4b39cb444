"""Shared fixtures: the real nih-mini subset (skipped when absent) and a tiny phantom."""

from __future__ import annotations

import os
from pathlib import Path

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
