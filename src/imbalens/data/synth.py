"""A chest-radiograph phantom written in exactly NIH ChestX-ray14's layout.

The phantom is the study's embedded default data set: a fresh, offline machine can run
every notebook on it, and, unlike NIH, the true extent of every lesion is known, so its
boxes are exact. ``generate`` writes into ``out``::

    images/00000001_000.png ...      8-bit grey PNG, size x size
    Data_Entry_2017.csv               2020 revision: 9 header names, 11 fields a row
    BBox_List_2017.csv                boxes in the 1,024-px release space ("Infiltrate")
    train_val_list.txt, test_list.txt patient-wise split (test_fraction of patients)
    lesion_masks.npz                  each boxed lesion's exact pixel mask (LesionMasks)
    phantom.json                      manifest (parameters, counts), written last

Labels. By default the label distribution follows NIH's published counts
(:data:`imbalens.data.findings.NIH_IMAGE_COUNTS`, Wang et al. 2017): an image is healthy with
probability $h = 60{,}361/112{,}120 \\approx 0.538$; otherwise finding $k$ is drawn
independently with probability $r_k = q_k Z$ and the draw is repeated until at least one
finding is present, where $q_k = n_k / (N - n_{\\text{No Finding}})$ is the finding's
share among unhealthy images and $Z$ solves

$$ Z = 1 - \\prod_k (1 - q_k Z), $$

so that the conditional marginal $P(k \\mid \\text{unhealthy}) = r_k / Z = q_k$ and the
overall marginal is $(1 - h) q_k = n_k / N$, exactly NIH's prevalence. After the
patient-wise split every finding is forced to have at least
:data:`MIN_POSITIVES_PER_SPLIT` positive images in train_val and in test (added to
random images of that split, unhealthy ones first), so that tiny phantoms still have
every class in both splits; for 4,000 images this changes only Hernia's count (NIH rate
0.2% gives about 8 images).

The rendering (anatomy and the 14 findings' appearances) is in
:mod:`imbalens.data.anatomy`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imbalens import runfolder as rf
from imbalens.data import anatomy
from imbalens.data.anatomy import render_with_masks, rng_for
from imbalens.data.findings import (
    BOXED_FINDINGS,
    FINDINGS,
    NIH_IMAGE_COUNTS,
    NIH_TOTAL_IMAGES,
    NO_FINDING,
    RELEASE_SIZE,
)
from imbalens.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

VERSION = 2
"""Format version of the phantom; with :func:`code_digest` it decides whether an
existing phantom can be kept."""

MANIFEST = rf.PHANTOM_MANIFEST
MASKS = rf.PHANTOM_MASKS
"""Every boxed lesion's exact pixel mask (:func:`lesion_mask`)."""
MIN_POSITIVES_PER_SPLIT = 3
"""Every finding gets at least this many positive images in train_val and in test."""

BOX_LABEL = {"Infiltration": "Infiltrate"}
"""BBox_List_2017.csv spells Infiltration as NIH does."""

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h]"
ORIGINAL_SIZES = ((2500, 2048), (2048, 2500), (2021, 2021), (3056, 2544), (2992, 2991))
PIXEL_SPACINGS = (0.143, 0.139, 0.168, 0.171)
BALANCED_LABELS_PER_UNHEALTHY = 1.5


# ------------------------------------------------------------------------ label sampler
def label_probabilities(prevalence: str | float = "nih") -> tuple[float, np.ndarray]:
    """Healthy probability $h$ and conditional finding shares $q_k$ (order FINDINGS).

    ``"nih"``: NIH's counts (module docstring). ``"balanced"``: $h = 0.5$ and every
    $q_k = 1.5/14$ (each finding in about 5.4% of images). A float $s > 0$ scales NIH's
    finding prevalences: the unhealthy fraction becomes $\\min(s (1 - h_{NIH}), 0.95)$
    and $q_k = \\min(s\\, n_k / N / (1 - h), 0.95)$.

    Raises:
        ValueError: for an unknown name or a non-positive scale.
    """
    counts = np.array([NIH_IMAGE_COUNTS[f] for f in FINDINGS], dtype=float)
    h_nih = NIH_IMAGE_COUNTS[NO_FINDING] / NIH_TOTAL_IMAGES
    if isinstance(prevalence, str) and prevalence not in ("nih", "balanced"):
        try:
            prevalence = float(prevalence)
        except ValueError:
            raise ValueError(
                f"prevalence {prevalence!r}: use 'nih', 'balanced' or a positive scale"
            ) from None
    if prevalence == "nih":
        return h_nih, counts / (NIH_TOTAL_IMAGES - NIH_IMAGE_COUNTS[NO_FINDING])
    if prevalence == "balanced":
        return 0.5, np.full(len(FINDINGS), BALANCED_LABELS_PER_UNHEALTHY / len(FINDINGS))
    s = float(prevalence)
    if not s > 0 or not math.isfinite(s):
        raise ValueError(f"prevalence scale must be a positive number, got {prevalence!r}")
    unhealthy = min(s * (1.0 - h_nih), 0.95)
    q = np.minimum(s * counts / NIH_TOTAL_IMAGES / unhealthy, 0.95)
    return 1.0 - unhealthy, q


def _solve_z(q: np.ndarray) -> float:
    """Largest root in (0, 1/max q] of $Z = 1 - \\prod_k (1 - q_k Z)$ (bisection).

    When $\\sum_k q_k \\le 1$ only Z = 0 solves it: the conditional shares cannot all be
    met with at least one finding per image; the upper bound 1/max q is then used.
    """
    hi = 1.0 / float(q.max())
    f = lambda z: 1.0 - float(np.prod(1.0 - q * z)) - z  # noqa: E731
    if f(hi) >= 0:
        return hi
    lo = 1e-9
    if f(lo) <= 0:
        return hi
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return lo


def sample_labels(n: int, rng: np.random.Generator, prevalence: str | float = "nih") -> np.ndarray:
    """Draw ``n`` multi-label rows, bool (n, 14) in FINDINGS order; all-False = No Finding.

    Healthy with probability $h$; unhealthy rows are independent Bernoulli($q_k Z$)
    redrawn until non-empty (see the module docstring), so marginals are $(1-h) q_k$.
    """
    h, q = label_probabilities(prevalence)
    r = np.clip(q * _solve_z(q), 0.0, 1.0)
    labels = np.zeros((n, len(FINDINGS)), dtype=bool)
    sick = np.flatnonzero(rng.random(n) >= h)
    todo = sick
    while todo.size:
        labels[todo] = rng.random((todo.size, len(FINDINGS))) < r
        todo = todo[~labels[todo].any(axis=1)]
    return labels


def _force_cover(
    labels: np.ndarray, split_rows: Sequence[np.ndarray], rng: np.random.Generator
) -> None:
    """Give every finding >= MIN_POSITIVES_PER_SPLIT positives in each split (in place)."""
    for rows in split_rows:
        for k in range(len(FINDINGS)):
            need = min(MIN_POSITIVES_PER_SPLIT, rows.size) - int(labels[rows, k].sum())
            if need <= 0:
                continue
            free = rows[~labels[rows, k]]
            sick = free[labels[free].any(axis=1)]
            well = free[~labels[free].any(axis=1)]
            pool = np.concatenate([rng.permutation(sick), rng.permutation(well)])
            labels[pool[:need], k] = True


# ------------------------------------------------------------------------ generation
def _patients(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Patient id and follow-up number of each image: 1 + Geometric(0.35) images a
    patient (mean about 2.9; NIH has 3.6 with a heavier tail), capped at 20."""
    pid, fu = [], []
    p = 0
    while len(pid) < n:
        p += 1
        k = min(int(rng.geometric(0.35)), 20)
        pid += [p] * k
        fu += list(range(k))
    return np.array(pid[:n]), np.array(fu[:n])


BoxRow = tuple[str, str, float, float, float, float]
"""One BBox_List_2017.csv row: image, finding label, x, y, w, h (1,024 space)."""
MaskDict = dict[str, tuple[tuple[int, int, int, int], np.ndarray]]
"""finding -> (box (x0, y0, x1, y1) in pixels, the lesion's bool mask cropped to it)."""
RenderResult = tuple[list[BoxRow], MaskDict]


def _render_task(task: tuple[Any, ...]) -> RenderResult:
    """Render and write one image; return its BBox_List rows (in the 1,024 space) and
    its boxed lesions' exact masks (cropped to their boxes; none without boxes)."""
    out, name, index, patient, findings, want_boxes, size, seed, difficulty = task
    img, boxes, masks = render_with_masks(size, seed, index, patient, findings, difficulty)
    path = Path(out) / "images" / name
    tmp = path.with_name(f".{name}.tmp")
    Image.fromarray(img, mode="L").save(tmp, format="PNG")
    os.replace(tmp, path)
    rows: list[BoxRow] = []
    crops: MaskDict = {}
    if want_boxes:
        k = RELEASE_SIZE / size
        for f in BOXED_FINDINGS:
            if f in boxes:
                x0, y0, x1, y1 = boxes[f]
                rows.append(
                    (name, BOX_LABEL.get(f, f), x0 * k, y0 * k, (x1 - x0) * k, (y1 - y0) * k)
                )
                crops[f] = (boxes[f], masks[f][y0:y1, x0:x1])
    return rows, crops


def _write_masks(path: Path, names: Sequence[str], masks: Sequence[MaskDict]) -> None:
    """Every boxed lesion's mask into one ``.npz`` (atomic): ``<image>|<finding>`` holds
    the mask cropped to its box, ``<image>|<finding>|box`` the box (x0, y0, x1, y1)."""
    arrays: dict[str, np.ndarray] = {}
    for name, per_image in zip(names, masks, strict=True):
        for f, (box, crop) in per_image.items():
            arrays[f"{name}|{f}"] = crop
            arrays[f"{name}|{f}|box"] = np.asarray(box, dtype=np.int32)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


class LesionMasks:
    """The exact pixel masks of a phantom's boxed lesions (``lesion_masks.npz``).

    Calling it, ``masks(image, finding, size)``, gives the bool ``(size, size)`` mask of
    that lesion at a model's input size (None when the image has no such box). The
    phantom's ``(P, P)`` mask is resized by area averaging (PIL ``BOX``, as the images'
    antialiased resize) and thresholded at 1/2; a lesion too small to fill half a pixel
    keeps its pixel of largest overlap, so no boxed lesion vanishes.

    Raises:
        FileNotFoundError: ``root`` has no masks file (not a phantom, or made by an
            older version: regenerate it with ``imbalens synth``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root) / MASKS
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: lesion masks exist only for a phantom made by "
                "imbalens.data.synth.generate (regenerate it with `imbalens synth`)"
            )
        manifest = read_manifest(root) or {}
        with np.load(path) as z:
            self._arrays = {k: z[k] for k in z.files}
        self.size = int((manifest.get("parameters") or {}).get("size", 0)) or None

    def full(self, image: str, finding: str) -> np.ndarray | None:
        """The mask at the phantom's own resolution, or None."""
        crop = self._arrays.get(f"{image}|{finding}")
        if crop is None:
            return None
        x0, y0, x1, y1 = (int(v) for v in self._arrays[f"{image}|{finding}|box"])
        if self.size is None:
            raise ValueError(f"{MANIFEST} gives no phantom size: regenerate the phantom")
        mask = np.zeros((self.size, self.size), dtype=bool)
        mask[y0:y1, x0:x1] = crop
        return mask

    def __call__(self, image: str, finding: str, size: int | None = None) -> np.ndarray | None:
        mask = self.full(image, finding)
        if mask is None or size is None or size == mask.shape[0]:
            return mask
        area = np.asarray(
            Image.fromarray(mask.astype(np.float32), mode="F").resize((size, size), Image.BOX)
        )
        out = area >= 0.5
        if not out.any() and area.max() > 0:
            out.flat[int(area.argmax())] = True
        return out


def lesion_mask(
    root: str | os.PathLike[str], image: str, finding: str, size: int | None = None
) -> np.ndarray | None:
    """One lesion's exact mask (see :class:`LesionMasks`; loads the file each call)."""
    return LesionMasks(root)(image, finding, size)


def code_digest() -> str:
    """First 16 hex digits of the SHA-256 of this module's and the renderer's source: a
    phantom made by other code is regenerated rather than silently reused."""
    h = hashlib.sha256()
    for mod in (__file__, anatomy.__file__):
        h.update(Path(mod).read_bytes())
    return h.hexdigest()[:16]


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a complete phantom in ``out``, or None when there is none."""
    p = Path(out) / MANIFEST
    if not p.is_file():
        return None
    try:
        manifest = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    return None if isinstance(manifest, dict) and manifest.get("complete") is False else manifest


class ForeignFolder(ValueError):
    """The phantom's target folder holds files the phantom generator did not write."""


def refuse_foreign_folder(out: str | os.PathLike[str]) -> None:
    """Refuse to write a phantom into a folder that is neither empty nor a phantom's own.

    A folder counts as the phantom's own when it holds ``phantom.json`` (written by
    :func:`generate`, a stub while generating). Anything else, e.g. real NIH data whose
    label file has another name, is never overwritten.

    Raises:
        ForeignFolder: naming the folder, some of its entries and how to proceed.
    """
    p = Path(out)
    if not p.exists():
        return
    if not p.is_dir():
        raise ForeignFolder(f"phantom target {p} is a file, not a folder; choose another --out")
    entries = sorted(c.name for c in p.iterdir())
    if not entries or MANIFEST in entries:
        return
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise ForeignFolder(
        f"refusing to write a phantom into {p}: it is not empty ({shown}) and holds no "
        f"{MANIFEST}, so its files were not written by the phantom generator (real data?). "
        f"Nothing was changed; choose an empty or new folder for the phantom"
    )


@dataclass(frozen=True)
class _Draw:
    """Everything drawn from the phantom's label/split generator ``(seed, 0)``."""

    pid: np.ndarray
    fu: np.ndarray
    patients: np.ndarray
    is_test: np.ndarray
    labels: np.ndarray
    ages0: np.ndarray
    sex: np.ndarray
    views: np.ndarray
    orig: np.ndarray
    spacing: np.ndarray
    names: list[str]

    @property
    def findings(self) -> list[tuple[str, ...]]:
        return [tuple(np.asarray(FINDINGS)[row].tolist()) for row in self.labels]


def _parameters(
    n_images: int,
    size: int,
    seed: int,
    prevalence: str | float,
    difficulty: float,
    boxes: str,
    test_fraction: float,
) -> dict[str, Any]:
    """Validate :func:`generate`'s arguments; return them as the manifest's parameters."""
    if n_images < 2:
        raise ValueError(f"n_images must be >= 2, got {n_images}")
    if size < 16:
        raise ValueError(f"size must be >= 16 px, got {size}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
    if boxes not in ("test", "all"):
        raise ValueError(f"boxes must be 'test' or 'all', got {boxes!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    label_probabilities(prevalence)  # validates
    return {
        "n_images": int(n_images),
        "size": int(size),
        "seed": int(seed),
        "prevalence": prevalence,
        "difficulty": float(difficulty),
        "boxes": boxes,
        "test_fraction": float(test_fraction),
    }


def _is_current(old: dict[str, Any] | None, params: dict[str, Any], out: Path) -> bool:
    """Whether the manifest ``old`` is that of a complete phantom made with ``params``
    by this code (version and digest), and its lesion masks are there."""
    return (
        old is not None
        and old.get("version") == VERSION
        and old.get("code") == code_digest()
        and old.get("parameters") == params
        and (out / MASKS).is_file()
    )


def _draw(n_images: int, seed: int, prevalence: str | float, test_fraction: float) -> _Draw:
    """Patients, split, labels and metadata, in the generator's fixed order."""
    rng = rng_for(seed, 0)
    pid, fu = _patients(n_images, rng)
    patients = np.unique(pid)
    n_test = min(max(1, round(test_fraction * patients.size)), patients.size - 1)
    test_patients = set(rng.permutation(patients)[:n_test].tolist())
    is_test = np.array([p in test_patients for p in pid])
    labels = sample_labels(n_images, rng, prevalence)
    _force_cover(labels, [np.flatnonzero(~is_test), np.flatnonzero(is_test)], rng)
    ages0 = np.clip(rng.normal(47, 17, patients.size), 1, 94).astype(int)
    sex = np.where(rng.random(patients.size) < 0.56, "M", "F")
    views = np.where(rng.random(n_images) < 0.4, "AP", "PA")
    orig = rng.integers(len(ORIGINAL_SIZES), size=n_images)
    spacing = rng.integers(len(PIXEL_SPACINGS), size=n_images)
    names = [f"{p:08d}_{f:03d}.png" for p, f in zip(pid, fu, strict=True)]
    return _Draw(pid, fu, patients, is_test, labels, ages0, sex, views, orig, spacing, names)


def _remove_stale(images: Path, keep: set[str]) -> None:
    """Delete everything in ``images`` whose name is not in ``keep``."""
    for stale in images.iterdir():
        if stale.name not in keep:
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()


def _render_all(
    out: Path, dr: _Draw, params: dict[str, Any], workers: int | None
) -> list[RenderResult]:
    """Render and write every image (a process pool unless ``workers == 1``)."""
    n_images, size, seed = params["n_images"], params["size"], params["seed"]
    findings = dr.findings
    tasks = [
        (
            str(out),
            dr.names[i],
            i,
            int(dr.pid[i]),
            findings[i],
            params["boxes"] == "all" or bool(dr.is_test[i]),
            size,
            seed,
            params["difficulty"],
        )
        for i in range(n_images)
    ]
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    t0 = time.perf_counter()
    if workers == 1:
        results = [_render_task(t) for t in tasks]
    else:
        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(
                _render_task, tasks, chunksize=max(1, min(64, n_images // (4 * workers)))
            )
    log.info(
        "rendered %d images (%d px) in %.1f s with %d workers",
        n_images,
        size,
        time.perf_counter() - t0,
        workers,
    )
    return results


def _write_tables(out: Path, dr: _Draw, box_rows: Sequence[Sequence[BoxRow]]) -> int:
    """Data_Entry_2017.csv, BBox_List_2017.csv and the split lists; returns the box count."""
    entry = [DATA_ENTRY_HEADER]
    findings = dr.findings
    for i, name in enumerate(dr.names):
        w, h = ORIGINAL_SIZES[dr.orig[i]]
        sp = PIXEL_SPACINGS[dr.spacing[i]]
        lab = "|".join(findings[i]) or NO_FINDING
        p = dr.pid[i]
        age = min(int(dr.ages0[p - 1] + dr.fu[i] // 4), 95)
        entry.append(
            f"{name},{lab},{dr.fu[i]},{p},{age},{dr.sex[p - 1]},{dr.views[i]},{w},{h},{sp},{sp}"
        )
    atomic_write_text(out / "Data_Entry_2017.csv", "\n".join(entry) + "\n")
    bbox = [BBOX_HEADER] + [
        f"{n},{f},{x:.6f},{y:.6f},{w:.6f},{h:.6f}" for rows in box_rows for n, f, x, y, w, h in rows
    ]
    atomic_write_text(out / "BBox_List_2017.csv", "\n".join(bbox) + "\n")
    for listing, want in (("train_val_list.txt", False), ("test_list.txt", True)):
        chosen = sorted(n for n, t in zip(dr.names, dr.is_test, strict=True) if t == want)
        atomic_write_text(out / listing, "\n".join(chosen) + "\n")
    return len(bbox) - 1


def _manifest(
    dr: _Draw, params: dict[str, Any], n_boxes: int, box_rows: Sequence[Sequence[BoxRow]]
) -> dict[str, Any]:
    """The phantom's manifest: format, version, code digest, parameters and counts."""
    labels = dr.labels

    def counts(rows: np.ndarray) -> dict[str, int]:
        c = {NO_FINDING: int((~labels[rows].any(axis=1)).sum())}
        c.update({f: int(labels[rows, k].sum()) for k, f in enumerate(FINDINGS)})
        return c

    n_test = int(dr.is_test.sum())
    return {
        "format": "imbalens-phantom",
        "version": VERSION,
        "code": code_digest(),
        "parameters": params,
        "counts": {
            "images": params["n_images"],
            "patients": int(dr.patients.size),
            "train_val_images": len(dr.names) - n_test,
            "test_images": n_test,
            "boxes": n_boxes,
            "boxed_images": sum(1 for rows in box_rows if rows),
            "labels_train_val": counts(np.flatnonzero(~dr.is_test)),
            "labels_test": counts(np.flatnonzero(dr.is_test)),
        },
    }


def generate(
    out: str | os.PathLike[str],
    n_images: int = 4000,
    size: int = 256,
    seed: int = 0,
    prevalence: str | float = "nih",
    difficulty: float = 0.5,
    boxes: str = "test",
    test_fraction: float = 0.25,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a phantom in NIH's layout into ``out`` and return its manifest.

    Args:
        out: folder (created). An existing complete phantom with the same parameters,
            version and code digest is kept (``overwrite=False``) and its manifest
            returned.
        n_images: number of images; patients get 1 + Geometric(0.35) follow-ups each.
        size: image side in pixels (boxes are still written in the 1,024 release space).
        seed: everything is a function of the seed: labels and split from
            ``SeedSequence(seed, spawn_key=(0,))``, image i from ``(seed, 2, i)`` etc.,
            so the bytes do not depend on ``workers``.
        prevalence: ``"nih"``, ``"balanced"`` or a scale (see :func:`label_probabilities`).
        difficulty: in [0, 1]; lesion contrast factor $1.5 - d$, size jitter
            $\\exp N(0, 0.06 + 0.25 d)$, noise $2 + 3d$ grey levels.
        boxes: ``"test"`` (boxes for test images only, as NIH) or ``"all"``.
        test_fraction: fraction of *patients* in test_list.txt.
        workers: processes (default ``os.cpu_count()``).
        overwrite: regenerate even when a matching complete phantom exists.

    Returns:
        The manifest written to ``phantom.json`` (parameters, counts, version).

    Raises:
        ValueError: for out-of-range arguments.
        ForeignFolder: ``out`` is neither empty nor a phantom (see
            :func:`refuse_foreign_folder`).
    """
    params = _parameters(n_images, size, seed, prevalence, difficulty, boxes, test_fraction)
    out = Path(out)
    refuse_foreign_folder(out)
    old = read_manifest(out)
    if not overwrite and _is_current(old, params, out):
        log.info("phantom in %s is complete (phantom.json matches); kept", out)
        return old  # type: ignore[return-value]
    # incomplete until the full manifest is back; the stub keeps the folder ours (a rerun
    # after a kill may write into it again)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps({"complete": False, "parameters": params}) + "\n")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    dr = _draw(n_images, seed, prevalence, test_fraction)
    _remove_stale(images, set(dr.names))
    results = _render_all(out, dr, params, workers)
    box_rows = [rows for rows, _ in results]
    n_boxes = _write_tables(out, dr, box_rows)
    _write_masks(out / MASKS, dr.names, [m for _, m in results])
    manifest = _manifest(dr, params, n_boxes, box_rows)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


# ------------------------------------------------------------------------ command line
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags of ``imbalens synth``."""
    parser.add_argument("--out", required=True, type=Path, help="output folder (NIH layout)")
    parser.add_argument("--images", type=int, default=4000, help="number of images (4000)")
    parser.add_argument("--size", type=int, default=256, help="image side in px (256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--prevalence", default="nih", help="nih | balanced | <scale of NIH's prevalences>"
    )
    parser.add_argument("--difficulty", type=float, default=0.5, help="in [0, 1] (0.5)")
    parser.add_argument(
        "--boxes",
        choices=("test", "all"),
        default="test",
        help="boxes for test images only (NIH) or for all",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        help="fraction of patients in test_list.txt (0.25)",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (all cores)")
    parser.add_argument(
        "--overwrite", action="store_true", help="regenerate even when a matching phantom exists"
    )


def cli(args: argparse.Namespace) -> int:
    """Run ``imbalens synth``; prints where the phantom is and its counts."""
    t0 = time.perf_counter()
    try:
        refuse_foreign_folder(args.out)
    except ForeignFolder as exc:
        log.error("%s", exc)
        return 2
    m = generate(
        args.out,
        n_images=args.images,
        size=args.size,
        seed=args.seed,
        prevalence=args.prevalence,
        difficulty=args.difficulty,
        boxes=args.boxes,
        test_fraction=args.test_fraction,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    c = m["counts"]
    print(
        f"phantom: {args.out} ({c['images']} images, {c['patients']} patients, "
        f"{c['test_images']} test, {c['boxes']} boxes) in {time.perf_counter() - t0:.1f} s"
    )
    return 0
