"""CPU/GPU speed of training and inference: eager fp32 against every faster path.

Prints, every setting measured side by side in the same run (never compare timings
across machines; the CPU's flags are printed first):

1. images per second of a training step (forward, BCE over 14 outputs, backward, Adam)
   and of inference (``torch.inference_mode``) for both models at 128 and 224 px, per
   mode: fp32 eager, + channels_last, + ``torch.compile`` (inductor), bf16 autocast
   (skipped where the CPU has no native bf16: there it is ~9x slower than fp32);
2. the accuracy of each mode against fp32 eager: max |logit difference| on one batch
   and the loss after a few identical Adam steps;
3. the allocator (glibc malloc, glibc with tunables, tcmalloc) and the grid's
   jobs x threads split, each in fresh child processes (the environment must be set
   before the process starts);
4. ``torch.profiler``'s top ops of a training step, fp32 eager vs the fastest mode.

Usage: ``make bench`` or ``python benchmarks/speed.py [--models ...] [--sizes ...]``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from imbalens.provenance import cpu_flags, machine
from imbalens.training.models import build_model
from imbalens.training.precision import autocast_context, cpu_supports_bf16


@dataclass(frozen=True)
class Mode:
    """One way to run a step: autocast precision, memory format, torch.compile."""

    precision: str
    channels_last: bool
    compile: bool


MODES: dict[str, Mode] = {
    "fp32": Mode("fp32", False, False),
    "fp32+cl": Mode("fp32", True, False),
    "fp32+cl+compile": Mode("fp32", True, True),
    "bf16+cl": Mode("bf16", True, False),
    "bf16+cl+compile": Mode("bf16", True, True),
}
"""Registry: mode label -> how it runs (``fp32`` is the baseline of every ratio)."""

GLIBC_TUNABLES: dict[str, str] = {
    # keep freed memory in the heap instead of returning it to the kernel after each
    # step (the activations of a step are allocated and freed again every iteration)
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),  # glibc's 64-bit maximum
    "MALLOC_TRIM_THRESHOLD_": str(2**34),
    "MALLOC_TOP_PAD_": str(2**28),
}
"""glibc malloc tunables (mallopt(3)), the fallback where tcmalloc cannot be installed."""

TCMALLOC_GLOB = "/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4"


def _env_without_preload() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    for key in GLIBC_TUNABLES:
        env.pop(key, None)
    return env


def allocators() -> dict[str, dict[str, str]]:
    """Registry: allocator label -> the child process's environment."""
    plain = _env_without_preload()
    found = sorted(glob.glob(TCMALLOC_GLOB))
    result = {"glibc": plain, "glibc+tunables": {**plain, **GLIBC_TUNABLES}}
    if found:
        result["tcmalloc"] = {**plain, "LD_PRELOAD": found[0]}
    return result


def available_modes(device: torch.device, include_slow_bf16: bool) -> list[str]:
    """The modes worth timing here: bf16 only on CUDA or a CPU with native bf16."""
    native = device.type == "cuda" or cpu_supports_bf16()
    return [
        m for m, spec in MODES.items() if spec.precision == "fp32" or native or include_slow_bf16
    ]


def prepare(name: str, mode: Mode, device: torch.device) -> nn.Module:
    """The model in ``mode``'s memory format, compiled when the mode says so."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if mode.channels_last else torch.contiguous_format
    model = build_model(name, 14).to(device, memory_format=memory_format)
    return torch.compile(model) if mode.compile else model


def _inputs(batch: int, size: int, channels_last: bool, device: torch.device) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, memory_format=memory_format)


def _targets(batch: int, k: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(batch, k, generator=g) < 0.3).float().to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    warmup: int,
    iters: int,
) -> float:
    """Images/s of full training steps (forward, loss, backward, Adam)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        with autocast_context(x.device, precision):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(x.device)
    tic = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(x.device)
    return iters * x.shape[0] / (time.perf_counter() - tic)


@torch.inference_mode()
def infer_speed(
    model: nn.Module, x: torch.Tensor, precision: str, warmup: int, iters: int
) -> float:
    """Images/s of inference forward passes."""
    model.eval()
    for _ in range(warmup):
        with autocast_context(x.device, precision):
            model(x)
    _sync(x.device)
    tic = time.perf_counter()
    for _ in range(iters):
        with autocast_context(x.device, precision):
            model(x)
    _sync(x.device)
    return iters * x.shape[0] / (time.perf_counter() - tic)


def accuracy(
    name: str, size: int, batch: int, steps: int, device: torch.device, modes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per mode, against fp32 eager from the same init on the same batch: the largest
    |logit difference| in eval mode, and the BCE loss after ``steps`` Adam steps (lr 1e-3)."""
    x, y = _inputs(batch, size, False, device), _targets(batch, 14, device)
    loss_fn = nn.BCEWithLogitsLoss()
    result: dict[str, dict[str, float]] = {}
    ref: torch.Tensor | None = None
    for label in modes:
        mode = MODES[label]
        model = prepare(name, mode, device)
        xm = x.contiguous(memory_format=torch.channels_last) if mode.channels_last else x
        model.eval()
        with torch.inference_mode(), autocast_context(device, mode.precision):
            logits = model(xm).float()
        ref = logits if ref is None else ref
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(steps):
            with autocast_context(device, mode.precision):
                out = model(xm)
            loss = loss_fn(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        result[label] = {
            "max_abs_logit_diff": (logits - ref).abs().max().item(),
            "logit_scale": ref.abs().max().item(),
            "loss": loss.item(),
        }
    return result


def tcmalloc_note() -> str:
    """Whether tcmalloc is preloaded (``make bench`` does that when it is installed)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload:
        return f"tcmalloc preloaded ({preload})"
    return "tcmalloc NOT preloaded (run via `make bench` to preload it when installed)"


def child_speed(args: argparse.Namespace) -> float:
    """Training img/s of one (model, size, mode) in this (child) process."""
    device = torch.device(args.device)
    mode = MODES[args.child]
    model = prepare(args.models[0], mode, device)
    x = _inputs(args.batch, args.sizes[0], mode.channels_last, device)
    y = _targets(args.batch, 14, device)
    return train_speed(model, x, y, mode.precision, args.warmup, args.iters)


def spawn(
    env: dict[str, str],
    jobs: int,
    threads: int,
    name: str,
    size: int,
    mode: str,
    args: argparse.Namespace,
) -> float:
    """Total training img/s of ``jobs`` concurrent child processes with ``threads`` each."""
    cmd = [
        sys.executable, __file__, "--child", mode, "--models", name, "--sizes", str(size),
        "--threads", str(threads), "--batch", str(args.batch), "--warmup", str(args.warmup),
        "--iters", str(args.iters), "--device", args.device,
    ]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    rates = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"child {' '.join(cmd)} failed with status {proc.returncode}")
        rates.append(json.loads(out.strip().splitlines()[-1])["train"])
    return sum(rates)


def profile_top(
    name: str, size: int, batch: int, label: str, device: torch.device, rows: int
) -> list[tuple[str, float]]:
    """``torch.profiler``'s top ops (name, share of self CPU time) of 2 training steps."""
    from torch.profiler import ProfilerActivity, profile

    mode = MODES[label]
    model = prepare(name, mode, device)
    x = _inputs(batch, size, mode.channels_last, device)
    y = _targets(batch, 14, device)
    train_speed(model, x, y, mode.precision, 2, 0)  # warm-up (and compile)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_speed(model, x, y, mode.precision, 0, 2)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / total) for e in events[:rows]]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "t-densenet"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--accuracy-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=None)
    parser.add_argument("--slow-bf16", action="store_true", help="time bf16 without native bf16")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["accuracy", "processes", "profile"]
    )
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps({"train": child_speed(args)}))
        return 0
    device = torch.device(args.device)
    modes = args.modes or available_modes(device, args.slow_bf16)

    print(f"# imbalens speed benchmark ({time.strftime('%Y-%m-%d %H:%M')})")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, device {device}, "
        f"CPU bf16: {cpu_supports_bf16()}, {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"CPU: {machine()['cpu']}; speed flags: {' '.join(cpu_flags()) or 'none found'}")
    print(tcmalloc_note())
    skipped = [m for m in MODES if m not in modes]
    if skipped:
        print(f"not timed: {', '.join(skipped)} (no native bf16 here: `--slow-bf16` times them)")
    print(
        f"batch {args.batch}, {args.warmup} warm-up (includes compiling) + {args.iters} timed iterations\n"
    )
    print("| model | px | mode | train img/s | infer img/s | train ratio | infer ratio |")
    print("|---|---|---|---|---|---|---|")
    best: dict[tuple[str, int], str] = {}
    for name in args.models:
        for size in args.sizes:
            speeds: dict[str, tuple[float, float]] = {}
            for label in modes:
                mode = MODES[label]
                model = prepare(name, mode, device)
                x = _inputs(args.batch, size, mode.channels_last, device)
                y = _targets(args.batch, 14, device)
                tr = train_speed(model, x, y, mode.precision, args.warmup, args.iters)
                inf = infer_speed(model, x, mode.precision, args.warmup, args.iters)
                speeds[label] = (tr, inf)
                base = speeds[modes[0]]
                print(
                    f"| {name} | {size} | {label} | {tr:.1f} | {inf:.1f} | "
                    f"{tr / base[0]:.2f}x | {inf / base[1]:.2f}x |"
                )
                sys.stdout.flush()
            best[name, size] = max(speeds, key=lambda m: speeds[m][0])
    print("\nfastest training mode: " + ", ".join(f"{n} {s} px: {m}" for (n, s), m in best.items()))

    if "accuracy" not in args.skip:
        print("\n## accuracy of each mode vs fp32 eager (128 px, same init, same batch)\n")
        print("| model | mode | max abs logit diff | max abs logit | loss after steps |")
        print("|---|---|---|---|---|")
        for name in args.models:
            for label, r in accuracy(
                name, 128, args.batch, args.accuracy_steps, device, modes
            ).items():
                print(
                    f"| {name} | {label} | {r['max_abs_logit_diff']:.2e} | "
                    f"{r['logit_scale']:.3f} | {r['loss']:.5f} |"
                )
        print(
            f"\n(losses after {args.accuracy_steps} Adam steps at lr 1e-3 on one batch of 14 labels)"
        )

    name, size = args.models[0], args.sizes[0]
    fast = best[name, size]
    if "processes" not in args.skip and device.type == "cpu":
        cores = os.cpu_count() or 1
        print(f"\n## allocator and jobs x threads ({name}, {size} px, {fast}, child processes)\n")
        print("| allocator | jobs x threads | total train img/s | ratio |")
        print("|---|---|---|---|")
        rows = [(alloc, 1, cores) for alloc in allocators()]
        top = "tcmalloc" if "tcmalloc" in allocators() else "glibc+tunables"
        rows += [(top, cores, 1)] if cores > 1 else []
        base_rate = None
        for alloc, jobs, threads in rows:
            rate = spawn(allocators()[alloc], jobs, threads, name, size, fast, args)
            base_rate = base_rate or rate
            print(f"| {alloc} | {jobs} x {threads} | {rate:.1f} | {rate / base_rate:.2f}x |")
            sys.stdout.flush()

    if "profile" not in args.skip:
        print(
            f"\n## torch.profiler: top ops of 2 training steps ({name}, {size} px), share of self CPU time\n"
        )
        for label in dict.fromkeys([modes[0], fast]):
            tops = profile_top(name, size, args.batch, label, device, rows=6)
            print(f"- {label}: " + "; ".join(f"{op} {share:.0%}" for op, share in tops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
