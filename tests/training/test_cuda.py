"""CUDA paths: AMP training (bf16 and fp16 with a GradScaler) and resume on a GPU.

These run only where CUDA is available (CI has no GPU, so there they are skipped: see
the README); ``benchmarks/cuda_check.sh`` runs the same paths at a larger scale,
together with torchrun/NCCL/SyncBatchNorm and the GPU speed table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from imbalens.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from imbalens.training.train import CRASH_ENV, CRASH_EXIT_CODE, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


#: the tiny CUDA run: 64 px, 2 epochs of 6 steps, last.pt every 4 steps
CUDA_RUN = {
    "data": {"image_size": 64},
    "loss": {"name": "wbce"},
    "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 6, "lr": 1e-3}
    | {"device": "cuda", "progress": "off", "workers": 0, "checkpoint_every_steps": 4},
}


def test_rng_state_restores_from_a_checkpoint_loaded_onto_the_gpu(tmp_path: Path) -> None:
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "s.pt", {"rng": rng_state()})
    expected = (torch.rand(3), torch.rand(3, device="cuda"))
    set_rng_state(load_checkpoint(tmp_path / "s.pt", map_location="cuda")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(torch.rand(3, device="cuda"), expected[1])


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_trains_on_cuda(tiny_phantom: Path, tmp_path: Path, precision: str, small_config) -> None:
    cfg = small_config(tiny_phantom, **CUDA_RUN)
    cfg["train"]["precision"] = precision
    metrics = train(cfg, tmp_path / precision)
    history = pd.read_csv(tmp_path / precision / "history.csv")
    assert len(history) == 2 and history.train_loss.notna().all()
    assert 0.0 <= metrics["auroc_mean"] <= 1.0


def test_killed_cuda_run_resumes(tiny_phantom: Path, tmp_path: Path, small_config) -> None:
    cfg = small_config(tiny_phantom, **CUDA_RUN)
    cfg["train"]["precision"] = "fp16"  # the GradScaler's state travels too
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-m", "imbalens.cli", "train", "--config", str(config_file)]
        + ["--out", str(run)],
        env={**os.environ, CRASH_ENV: "9"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step"]) == (1, 2)  # saved at global step 8, mid-epoch 2
    assert last["scaler"] is not None
    train(cfg, run)
    assert (run / "train.done").is_file()
    assert len(pd.read_csv(run / "history.csv")) == 2
