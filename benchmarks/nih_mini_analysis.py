"""Full analysis (CAM alignment + concepts) of random-initialised models on nih-mini.

Runs :func:`imbalens.explain.analyse.analyse_model` on the boxed images of
``../shared/data/nih-mini`` (880 real NIH images with expert boxes) at 224 px for
T-DenseNet and ResNet50 (random initialisation, seed 0) and reports the wall time of
each step. With ``--limit N`` only the first N boxed images are analysed and the time
for all of them is extrapolated linearly (labelled as such in the output).

    .venv/bin/python benchmarks/nih_mini_analysis.py --limit 128
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from imbalens.config import merge_config
from imbalens.data.nih import load_nih
from imbalens.explain.analyse import analyse_model
from imbalens.training.models import build_model
from imbalens.training.precision import resolve_precision

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-mini"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--out", type=Path, default=Path("/tmp/imbalens-nih-mini-analysis"))
    parser.add_argument("--models", nargs="+", default=["t-densenet", "resnet50"])
    parser.add_argument("--task", default="multilabel")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = load_nih(args.root, task=args.task)
    n_boxed = len(data.images("boxed"))
    precision = resolve_precision(args.precision, args.device)
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, len(data.class_names)).eval()
        cfg = merge_config(
            {
                "data": {"root": str(args.root), "task": args.task, "image_size": args.size},
                "model": {"name": name},
                "train": {"precision": precision},
                "analysis": {"batch_size": args.batch_size},
            }
        )
        t0 = time.perf_counter()
        res = analyse_model(
            model, data, cfg, args.out / name, device=args.device, limit=args.limit, force=True
        )
        total = time.perf_counter() - t0
        n = res["n_images"]
        report = {
            "model": name,
            "n_images": n,
            "n_boxed_total": n_boxed,
            "precision": precision,
            "threads": torch.get_num_threads(),
            "total_s": round(total, 1),
            "steps_s": {k: round(v, 1) for k, v in res["seconds"].items()},
            "iobb": round(res["iobb"], 4),
            "ior": round(res["ior"], 4),
            "concepts": res["concepts"],
        }
        if n < n_boxed:
            report["extrapolated_total_s_for_all_boxed"] = round(total * n_boxed / n, 1)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
