"""CAM of all 14 classes in one forward pass vs the grad-cam package looping over classes.

Random-initialised ResNet50 and T-DenseNet (eval mode), a batch of random images. Both
methods are timed side by side in the same process; maps are compared with
``normalise="input"`` (the package min-max rescales after its cv2 resize).

    .venv/bin/python benchmarks/cam_speed.py --batch 16 --size 224
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from pytorch_grad_cam import GradCAM as PkgGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from imbalens.explain.cam import class_activation_maps, get_module
from imbalens.training.models import build_model


def bench(name: str, batch: int, size: int, classes: int, repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = build_model(name, classes).eval()
    x = torch.randn(batch, 3, size, size)
    ours_t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = class_activation_maps(model, x, normalise="input")
        ours_t.append(time.perf_counter() - t0)
    layer = get_module(model, model.cam_layer)
    t0 = time.perf_counter()
    theirs = []
    with PkgGradCAM(model=model, target_layers=[layer]) as pkg:
        for k in range(classes):
            theirs.append(pkg(input_tensor=x, targets=[ClassifierOutputTarget(k)] * batch))
    pkg_t = time.perf_counter() - t0
    theirs_arr = np.stack(theirs, 1)
    ours_best = min(ours_t)
    return {
        "model": name,
        "batch": batch,
        "size": size,
        "classes": classes,
        "threads": torch.get_num_threads(),
        "ours_s": round(ours_best, 3),
        "ours_s_all": [round(t, 3) for t in ours_t],
        "gradcam_pkg_s": round(pkg_t, 3),
        "speedup": round(pkg_t / ours_best, 1),
        "max_abs_diff": float(np.abs(ours.numpy() - theirs_arr).max()),
        "mean_abs_diff": float(np.abs(ours.numpy() - theirs_arr).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["t-densenet", "resnet50"])
    args = parser.parse_args()
    for name in args.models:
        print(json.dumps(bench(name, args.batch, args.size, args.classes, args.repeats)))


if __name__ == "__main__":
    main()
