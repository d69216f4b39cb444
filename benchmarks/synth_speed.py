"""Time ``imbalens.data.synth.generate`` for 4,000 images at 256 px with 1 and 2 workers.

Usage: ``.venv/bin/python benchmarks/synth_speed.py [--images N] [--size S] [--workers 1 2]``
Prints wall-clock and CPU seconds and the phantom's disk size (MB) per worker count, and checks
that the files are byte-identical whatever the worker count.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import tempfile
import time
from pathlib import Path

from imbalens.data.synth import generate


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its finished children: unlike
    wall time, it does not grow when other jobs share the cores."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    digests = set()
    print(f"{'workers':>7} {'seconds':>8} {'cpu_s':>8} {'MB':>7} {'img/s':>7}")
    for w in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "phantom"
            t0, c0 = time.perf_counter(), _cpu()
            generate(out, n_images=args.images, size=args.size, seed=0, workers=w)
            sec, cpu = time.perf_counter() - t0, _cpu() - c0
            mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
            digests.add(_digest(out))
        print(f"{w:>7} {sec:>8.1f} {cpu:>8.1f} {mb:>7.1f} {args.images / sec:>7.0f}")
    print("identical bytes across worker counts:", len(digests) == 1)


if __name__ == "__main__":
    main()
