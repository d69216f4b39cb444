"""DDP on CPU: 2 gloo processes started by torchrun equal 1 process with the same global batch.

Both runs go through ``imbalens.cli train``: the DDP run under
``python -m torch.distributed.run --standalone --nproc_per_node=2`` (torchrun), the
reference as a plain process. BatchNorm would make them differ by design (each rank
normalises its half batch with its own statistics, and SyncBatchNorm needs CUDA), so
both use a small BatchNorm-free GAP network registered by the entry script; with it and
a loss that is a mean over the batch, a DDP step (gradients averaged over ranks) is the
single-process step on the union of the shards up to float rounding. Augmentation is on:
it is seeded per sample, so it does not depend on the rank either. Every atomic write
(``os.replace``) and temp file is recorded per rank: rank 1 must write nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from imbalens.config import merge_config
from imbalens.training.checkpoint import load_checkpoint

ENTRY = textwrap.dedent(
    '''
    """Entry point for the DDP test: registers a BN-free toy model, records file writes."""
    import atexit, json, os, sys, tempfile
    from torch import nn
    from imbalens.training.models import MODELS, register_model

    class ToyGAP(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, num_classes)
            self.cam_layer, self.dissect_layers, self.head = "features", ("features",), "fc"

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))

    if "toy-gap" not in MODELS:
        register_model("toy-gap")(lambda num_classes, imagenet: ToyGAP(num_classes))

    writes = []
    _replace, _mkstemp = os.replace, tempfile.mkstemp
    def replace(src, dst, *a, **k):
        writes.append(str(dst))
        return _replace(src, dst, *a, **k)
    def mkstemp(*a, **k):
        writes.append("mkstemp")
        return _mkstemp(*a, **k)
    os.replace, tempfile.mkstemp = replace, mkstemp
    log = os.environ["WRITES_LOG"] + "." + os.environ.get("RANK", "single")
    atexit.register(lambda: open(log, "w").write(json.dumps(writes)))

    from imbalens.cli import main
    sys.exit(main(sys.argv[1:]))
    '''
)


def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_two_gloo_ranks_match_one_process(tiny_phantom: Path, tmp_path: Path) -> None:
    cfg = merge_config(
        {
            "data": {"root": str(tiny_phantom), "image_size": 32, "augment": True},
            "model": {"name": "toy-gap"},
            "loss": {"name": "bce"},
            "train": {
                "epochs": 3,
                "batch_size": 8,  # global: 2 ranks x 4
                "eval_batch_size": 16,
                "max_steps_per_epoch": 3,
                "lr": 3e-3,
                "precision": "fp32",
                "progress": "off",
                "workers": 0,
                "device": "cpu",
            },
        }
    )
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WRITES_LOG": str(tmp_path / "writes")}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    args = ["train", "--config", str(config_file), "--out"]

    _run([sys.executable, str(entry), *args, str(tmp_path / "one")], env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run([*torchrun, "--nproc_per_node=2", str(entry), *args, str(tmp_path / "two")], env)

    one, two = tmp_path / "one", tmp_path / "two"
    h1, h2 = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
    assert h1["step"].tolist() == h2["step"].tolist() == [3, 6, 9]
    # the loss must actually move, or matching curves would prove nothing
    assert h1["train_loss"].iloc[-1] < h1["train_loss"].iloc[0] - 0.005
    for col in ("train_loss", "val_loss", "lr"):
        assert np.allclose(h1[col], h2[col], rtol=1e-4, atol=1e-6), (col, h1[col], h2[col])
    assert np.allclose(h1["val_auroc_mean"], h2["val_auroc_mean"], atol=1e-3)

    # predictions: padding of the odd-sized test split removed, same order and values
    p1, p2 = pd.read_csv(one / "predictions_test.csv"), pd.read_csv(two / "predictions_test.csv")
    assert len(p1) % 2 == 1, "the test split should be odd so the sampler pads it"
    assert p1["image"].tolist() == p2["image"].tolist()
    prob = [c for c in p1.columns if c.startswith("prob:")]
    assert np.allclose(p1[prob].to_numpy(), p2[prob].to_numpy(), atol=1e-4)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["auroc_mean"] == pytest.approx(m1["auroc_mean"], abs=1e-3)

    w1 = load_checkpoint(one / "checkpoints" / "last.pt")["model"]
    w2 = load_checkpoint(two / "checkpoints" / "last.pt")["model"]
    assert set(w2) == set(w1)  # no "module." prefix from the DDP wrapper
    for key in w1:
        assert np.allclose(w1[key].numpy(), w2[key].numpy(), atol=1e-4), key

    # only rank 0 wrote files
    writes = {r: json.loads((tmp_path / f"writes.{r}").read_text()) for r in ("0", "1")}
    assert writes["1"] == []
    assert str(two / "train.done") in writes["0"] and str(two / "metrics.json") in writes["0"]
