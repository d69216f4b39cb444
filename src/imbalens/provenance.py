"""Provenance of a run: package versions, git commit, config hash, machine.

Every run folder gets ``provenance.json`` (:data:`imbalens.runfolder.PROVENANCE`) when the
grid executes one of its stages, so a number in the book can be traced to the code and
the machine that computed it (the "record the environment" habit of reproducible
computational research; Sandve et al. 2013, *Ten Simple Rules for Reproducible
Computational Research*, rules 3-4). The book shows :func:`footer_line` under each page
and the results page lists :func:`grid_table`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from imbalens import runfolder as rf
from imbalens.io import atomic_write_text
from imbalens.paths import repo_root

#: distributions whose versions are recorded (their numbers can change results)
PACKAGES: tuple[str, ...] = (
    "imbalens",
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "scikit-learn",
    "scikit-image",
    "matplotlib",
    "papermill",
    "jupytext",
    "jupyter-book",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (``None`` when absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(repo: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(repo: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout at ``repo``.

    ``dirty`` is True when a tracked file differs from the commit (untracked files, such
    as ``runs/`` and ``data/``, do not count); both are None outside a git checkout.
    """
    root = Path(repo) if repo is not None else repo_root()
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: the CPU flags that decide training speed: AVX2 (fp32), AVX-512, native bf16 (AVX512-BF16,
#: AMX): where bf16 is not native, autocast bf16 is ~9x slower than fp32
SPEED_FLAGS: tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags(wanted: tuple[str, ...] = SPEED_FLAGS) -> list[str]:
    """Which of ``wanted`` the CPU has (``flags`` of ``/proc/cpuinfo``; [] where absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def machine() -> dict[str, Any]:
    """CPU model and core count, GPU names (CUDA), torch's intra-op thread count, OS."""
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "gpus": gpus,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def collect(
    cfg: Mapping[str, Any] | None = None,
    repo: str | os.PathLike[str] | None = None,
    chash: str | None = None,
) -> dict[str, Any]:
    """The provenance record: time, git state, package versions, machine, config hash.

    ``chash`` (the grid's hash of the run) wins over hashing ``cfg``
    (:func:`imbalens.config.config_hash`).
    """
    from imbalens.config import config_hash

    if chash is None and cfg is not None:
        chash = config_hash(cfg)
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git": git_state(repo),
        "packages": package_versions(),
        "machine": machine(),
        "config_hash": chash,
    }


def write_provenance(
    run_dir: str | os.PathLike[str],
    cfg: Mapping[str, Any] | None = None,
    repo: str | os.PathLike[str] | None = None,
    chash: str | None = None,
) -> Path:
    """Write :func:`collect` to ``<run_dir>/provenance.json`` atomically; return its path."""
    path = Path(run_dir) / rf.PROVENANCE
    atomic_write_text(path, json.dumps(collect(cfg, repo, chash), indent=1) + "\n")
    return path


def read_provenance(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's ``provenance.json``, or None when absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / rf.PROVENANCE).read_text())
    except (OSError, ValueError):
        return None


def footer_line(prov: Mapping[str, Any] | None) -> str:
    """One line for a page footer, e.g. ``imbalens 0.1.0 · commit 1a2b3c4 (dirty) · ...``."""
    if not prov:
        return "provenance: not recorded"
    git = prov.get("git") or {}
    pk = prov.get("packages") or {}
    mach = prov.get("machine") or {}
    commit = (git.get("commit") or "")[:7] or "no git"
    dirty = " (dirty)" if git.get("dirty") else ""
    gpus = ", ".join(mach.get("gpus") or []) or "no GPU"
    parts = [
        f"imbalens {pk.get('imbalens') or '?'}",
        f"commit {commit}{dirty}",
        f"torch {pk.get('torch') or '?'}",
        f"config {prov.get('config_hash') or '-'}",
        f"{mach.get('cpu', '?')} ({mach.get('cpu_count', '?')} cores, "
        f"{mach.get('torch_threads', '?')} torch threads), {gpus}",
        f"recorded {prov.get('created', '?')}",
    ]
    return " · ".join(parts)


def grid_table(grid_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per run folder of a grid that has ``provenance.json`` (sorted by run id)."""
    rows = []
    for run in sorted(p for p in Path(grid_dir).iterdir() if p.is_dir()):
        prov = read_provenance(run)
        if prov is None:
            continue
        git = prov.get("git") or {}
        mach = prov.get("machine") or {}
        rows.append(
            {
                "run": run.name,
                "commit": (git.get("commit") or "")[:7] or None,
                "dirty": git.get("dirty"),
                "config_hash": prov.get("config_hash"),
                "torch": (prov.get("packages") or {}).get("torch"),
                "machine": f"{mach.get('cpu', '?')} / {', '.join(mach.get('gpus') or []) or 'no GPU'}",
                "recorded": prov.get("created"),
            }
        )
    return rows
