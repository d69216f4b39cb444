"""CPU/GPU speed of training and inference: fp32 vs bf16 autocast + channels_last.

Prints one table, every setting measured side by side in the same process: images per
second of a training step (forward, BCE loss over 14 outputs, backward, Adam step) and of
inference (forward under ``torch.inference_mode``) for both models at 128 and 224 px,
with the bf16/fp32 ratio. Then the accuracy cost of bf16: the largest absolute logit
difference on one batch, and the losses after a few identical training steps.

Usage: ``make bench`` (preloads tcmalloc when installed) or
``python benchmarks/speed.py [--models resnet50 t-densenet] [--sizes 128 224] [--batch 16]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from collections.abc import Sequence

import torch
from torch import nn

from imbalens.provenance import cpu_flags, machine
from imbalens.training.models import build_model
from imbalens.training.precision import autocast_context, cpu_supports_bf16

MODES: dict[str, tuple[str, bool]] = {
    "fp32": ("fp32", False),
    "bf16+cl": ("bf16", True),
}
"""Registry: mode label -> (precision, channels_last)."""


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


def bf16_accuracy(
    name: str, size: int, batch: int, steps: int, device: torch.device
) -> dict[str, float]:
    """Max |logit_bf16 - logit_fp32| on one batch (eval mode), and the loss after ``steps``
    identical Adam steps (lr 1e-3, same init, same batch) in fp32 and in bf16+channels_last."""
    torch.manual_seed(0)
    base = build_model(name, 14).to(device)
    x32, y = _inputs(batch, size, False, device), _targets(batch, 14, device)
    xcl = _inputs(batch, size, True, device)
    base.eval()
    with torch.inference_mode():
        ref = base(x32)
        low = copy.deepcopy(base).to(memory_format=torch.channels_last)
        with autocast_context(device, "bf16"):
            out = low(xcl).float()
    result = {
        "max_abs_logit_diff": (out - ref).abs().max().item(),
        "logit_scale": ref.abs().max().item(),
    }
    loss_fn = nn.BCEWithLogitsLoss()
    for label, (precision, channels_last) in MODES.items():
        model = copy.deepcopy(base)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        x = xcl if channels_last else x32
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(steps):
            with autocast_context(device, precision):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        result[f"loss_{label}"] = loss.item()
    result["loss_diff"] = abs(result["loss_bf16+cl"] - result["loss_fp32"])
    return result


def tcmalloc_note() -> str:
    """Whether tcmalloc is preloaded (``make bench`` does that when it is installed)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload:
        return f"tcmalloc preloaded ({preload})"
    return "tcmalloc NOT preloaded (run via `make bench` to preload it when installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "t-densenet"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--accuracy-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(f"# imbalens speed benchmark ({time.strftime('%Y-%m-%d %H:%M')})")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, device {device}, "
        f"CPU bf16: {cpu_supports_bf16()}, {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"CPU: {machine()['cpu']}; speed flags: {' '.join(cpu_flags()) or 'none found'}")
    print(tcmalloc_note())
    print(f"batch {args.batch}, {args.warmup} warm-up + {args.iters} timed iterations\n")
    print("| model | px | mode | train img/s | infer img/s | train ratio | infer ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        for size in args.sizes:
            speeds: dict[str, tuple[float, float]] = {}
            for label, (precision, channels_last) in MODES.items():
                torch.manual_seed(0)
                memory_format = torch.channels_last if channels_last else torch.contiguous_format
                model = build_model(name, 14).to(device, memory_format=memory_format)
                x = _inputs(args.batch, size, channels_last, device)
                y = _targets(args.batch, 14, device)
                tr = train_speed(model, x, y, precision, args.warmup, args.iters)
                inf = infer_speed(model, x, precision, args.warmup, args.iters)
                speeds[label] = (tr, inf)
                base = speeds["fp32"]
                ratio = (
                    f"{tr / base[0]:.2f}x | {inf / base[1]:.2f}x" if label != "fp32" else "1 | 1"
                )
                print(f"| {name} | {size} | {label} | {tr:.1f} | {inf:.1f} | {ratio} |")
                sys.stdout.flush()

    print("\n## bf16 accuracy (128 px, same init, same batch)\n")
    print("| model | max abs logit diff | max abs logit | loss fp32 | loss bf16+cl | diff |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        r = bf16_accuracy(name, 128, args.batch, args.accuracy_steps, device)
        print(
            f"| {name} | {r['max_abs_logit_diff']:.4f} | {r['logit_scale']:.3f} | "
            f"{r['loss_fp32']:.5f} | {r['loss_bf16+cl']:.5f} | {r['loss_diff']:.5f} |"
        )
    print(f"\n(losses after {args.accuracy_steps} Adam steps at lr 1e-3 on one batch of 14 labels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
