"""Peak memory of the dissection pass as the number of images doubles.

Each setting runs in a fresh subprocess and reports ``ru_maxrss`` (peak resident memory
of the process) minus the peak after the imports, and the ``tracemalloc`` peak (NumPy
allocations; torch's own are not traced). Activations are synthetic (ReLU of Gaussian
noise, generated batch by batch from a seed, so the data set itself is never held in
memory, as when streaming from a model), shaped like T-DenseNet norm5 (512 x 28 x 28)
and ResNet50 layer3 (1024 x 14 x 14), with one random box per image at 224 px.

Modes:
- ``hist``: dataset-wide thresholds with bounded-memory histograms (the default);
- ``exact``: dataset-wide thresholds with every value in memory (np.quantile);
- ``official``: per-batch torch.quantile of activations upsampled to 224 x 224 (the
  official code; its memory scales with the batch size, not with N).

    .venv/bin/python benchmarks/dissect_memory.py

Allocator: by default each worker runs with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc),
which fixes the size above which allocations are mmapped and returned to the system on
free. With glibc's default *dynamic* threshold, freed batch-sized buffers are recycled
through the heap and fragmentation makes the peak RSS creep up with the number of
batches although nothing is kept (``--glibc-default`` to see this).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

SHAPES = {"t-densenet": (512, 28, 28), "resnet50-layer3": (1024, 14, 14)}


class Synthetic:
    """Re-iterable of (activations, box mask at 224 px) batches, regenerated each pass."""

    def __init__(self, n: int, batch: int, shape: tuple[int, int, int], seed: int = 0):
        self.n, self.batch, self.shape, self.seed = n, batch, shape, seed

    def __iter__(self):
        import torch

        for start in range(0, self.n, self.batch):
            b = min(self.batch, self.n - start)
            g = torch.Generator().manual_seed(self.seed + start)
            acts = torch.randn(b, *self.shape, generator=g).relu_()
            mask = torch.zeros(b, 224, 224, dtype=torch.bool)
            xy = torch.randint(0, 160, (b, 2), generator=g)
            for i in range(b):
                x, y = xy[i].tolist()
                mask[i, y : y + 48, x : x + 64] = True
            yield acts, mask


def worker(mode: str, shape: str, n: int, batch: int) -> dict[str, object]:
    import torch

    from imbalens.explain.dissect import count_concepts

    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    data = Synthetic(n, batch, SHAPES[shape])
    kw = {
        "hist": {"threshold": "dataset", "exact": False},
        "exact": {"threshold": "dataset", "exact": True},
        "official": {"threshold": "batch", "upsample_to": 224},
    }[mode]
    t0 = time.perf_counter()
    res = count_concepts(data, 0.01, **kw)
    seconds = time.perf_counter() - t0
    _, traced = tracemalloc.get_traced_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "shape": shape,
        "n_images": n,
        "batch": batch,
        "peak_rss_mb": round(peak, 1),
        "after_imports_mb": round(base, 1),
        "peak_minus_imports_mb": round(peak - base, 1),
        "tracemalloc_peak_mb": round(traced / 2**20, 1),
        "activations_mb": round(n * 4 * __import__("math").prod(SHAPES[shape]) / 2**20, 1),
        "seconds": round(seconds, 1),
        "glibc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "dynamic"),
        "disjoint": round(res.disjoint, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "SHAPE", "N", "BATCH"))
    parser.add_argument("--n", type=int, nargs=2, default=[64, 128], help="N and 2N (hist/exact)")
    parser.add_argument("--n-official", type=int, nargs=2, default=[8, 16])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-official", type=int, default=4)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--modes", nargs="+", default=["hist", "exact", "official"])
    parser.add_argument("--glibc-default", action="store_true", help="dynamic mmap threshold")
    args = parser.parse_args()
    if args.worker:
        mode, shape, n, batch = args.worker
        print(json.dumps(worker(mode, shape, int(n), int(batch))))
        return
    for shape in args.shapes:
        settings = [(m, n, args.batch) for m in ("hist", "exact") for n in args.n]
        settings += [("official", n, args.batch_official) for n in args.n_official]
        settings = [s for s in settings if s[0] in args.modes]
        for mode, n, batch in settings:
            cmd = [sys.executable, __file__, "--worker", mode, shape, str(n), str(batch)]
            env = dict(os.environ)
            if not args.glibc_default:
                env["MALLOC_MMAP_THRESHOLD_"] = "131072"
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
