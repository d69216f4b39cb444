"""Data-loading speed: PNG decoding vs the prepared-image cache, at the model input size.

A phantom at NIH's size (1,024 px PNGs) is made once (``data/bench-1024``, ignored; reused
when it exists) and prepared once at S px (``imbalens prepare``; its time is printed as a
one-off cost). Then, side by side in one process, images/s of a ``DataLoader`` (batch 64,
train split, shuffled) with 1 and 2 worker processes:

- ``png``: decode the 1,024 px PNG, resize to S, per-image augmentation (today's path);
- ``cache``: memory-mapped uint8 shards, same per-image augmentation (``augment_on: loader``);
- ``cache+device``: memory-mapped uint8, no per-image work; the batch is augmented by
  ``augment_batch`` in the main process (on CPU here; on the GPU in a GPU run);
- ``cache+device, loader only``: the same uint8 batches without the augmentation: what the
  host's CPU must deliver when ``augment_batch`` runs on the GPU (not timed here).

Rates per worker (the ``workers=1`` row) times 16 cores estimate what a 16-core GPU host
feeds. Prints the CPU's speed flags, the cache's size on disk for the images prepared and,
by extrapolation (stated as such), for NIH's 112,120 images.

Usage: ``.venv/bin/python benchmarks/cache_speed.py [--images 1000] [--size 224]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from imbalens.data.nih import load_nih
from imbalens.data.prepared import open_prepared, prepare
from imbalens.data.synth import generate
from imbalens.data.transforms import augment_batch
from imbalens.provenance import cpu_flags, machine

NIH_IMAGES = 112_120


def loader_rate(
    dataset: torch.utils.data.Dataset, workers: int, n_images: int, device_augment: bool
) -> float:
    """Images/s of ``n_images`` drawn through a shuffled DataLoader (batch 64)."""
    loader = DataLoader(
        dataset,
        batch_size=64,
        shuffle=True,
        num_workers=workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
    gen = torch.Generator().manual_seed(0)
    seen = 0
    batches = iter(loader)
    first = next(batches)  # worker start-up is not the rate
    tic = time.perf_counter()
    for batch in batches:
        if device_augment:
            augment_batch(batch["image"], gen)
        seen += len(batch["index"])
        if seen >= n_images:
            break
    del first
    return seen / (time.perf_counter() - tic)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000, help="phantom images (1000)")
    ap.add_argument("--size", type=int, default=224, help="model input side S (224)")
    ap.add_argument("--root", type=Path, default=Path("data/bench-1024"), help="phantom folder")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--png-images", type=int, default=256, help="images timed on the PNG path")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the main process only collates (and augments batches)

    m = machine()
    print(f"# imbalens data-loading benchmark ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"CPU: {m['cpu']}, {m['cpu_count']} cores; speed flags: {' '.join(cpu_flags())}")
    tic = time.perf_counter()
    generate(args.root, n_images=args.images, size=1024, seed=0)
    print(
        f"phantom: {args.images} images at 1024 px in {args.root} ({time.perf_counter() - tic:.0f} s)"
    )

    with tempfile.TemporaryDirectory(prefix="imbalens-cache-") as cache:
        r = prepare(args.root, cache, args.size, force=True)
        print(
            f"prepare: {r.images} images -> {args.size} px in {r.seconds:.1f} s "
            f"({r.images / r.seconds:.1f} img/s on {os.cpu_count()} threads, once)"
        )
        per_image = r.bytes / r.images
        print(
            f"cache on disk: {r.bytes / 2**20:.1f} MiB for {r.images} images (measured); "
            f"{per_image * 1000 / 2**20:.1f} MiB per 1,000; extrapolated to NIH's "
            f"{NIH_IMAGES:,} images: {per_image * NIH_IMAGES / 2**30:.2f} GiB\n"
        )
        data = load_nih(args.root)
        imgs = open_prepared(args.root, cache, args.size)
        paths = {
            "png": (data.dataset("train", args.size, augment=True), args.png_images, False),
            "cache": (
                data.dataset("train", args.size, augment=True, prepared=imgs),
                len(data.images("train")),
                False,
            ),
            "cache+device": (
                data.dataset("train", args.size, augment=True, prepared=imgs, raw=True),
                len(data.images("train")),
                True,
            ),
            "cache+device, loader only": (
                data.dataset("train", args.size, augment=True, prepared=imgs, raw=True),
                len(data.images("train")),
                False,
            ),
        }
        print("| path | workers | img/s | vs png | per worker x 16 |")
        print("|---|---|---|---|---|")
        base: dict[int, float] = {}
        for label, (dataset, n, device_augment) in paths.items():
            for w in args.workers:
                rate = loader_rate(dataset, w, n, device_augment)
                base.setdefault(w, rate)
                print(
                    f"| {label} | {w} | {rate:.0f} | {rate / base[w]:.1f}x | {rate / w * 16:.0f} |"
                )
                sys.stdout.flush()
    print(
        "\n(vs png: the same worker count; per worker x 16: the rate of one worker core times "
        "16, an estimate for a 16-core GPU host, not a measurement)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
