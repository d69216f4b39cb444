"""Concept counting in the manner of network dissection (Bau et al., CVPR 2017).

For a layer with channels :math:`c = 1..C` and activation maps :math:`A^c_i` of image
:math:`i`, a threshold :math:`\\tau_c` is chosen so that

$$ P(A^c \\ge \\tau_c) = q $$

over the whole annotation set (``threshold="dataset"``, the paper: Khakzar, Li et al.
2022, Sec. 4.3; q = 0.01 for T-DenseNet, 0.04 for ResNet50). As in network dissection
(Bau et al. 2017), the quantile is taken over the activation cells themselves; the maps
are then upsampled to the input (below) and binarised there with :math:`\\tau_c`. Each map is binarised,
:math:`[A^c_i \\ge \\tau_c]`, split into connected components (``skimage.measure.label``;
``connectivity=1``: 4-connected, ``connectivity=2``: 8-connected, the default and what
OpenCV contours use), and a component that shares at least one cell with the boxes of
image :math:`i` is a *pathology-related concept*. With :math:`n_{ic}` such components,

$$ \\mathrm{Disjoint} = \\frac{1}{Z} \\sum_i \\sum_c n_{ic}, \\qquad
   \\mathrm{Unique} = \\frac{1}{Z} \\sum_i \\sum_c [n_{ic} > 0], $$

where :math:`Z` is the number of images (``normalise="images"``, the paper) or of boxes
(``normalise="boxes"``, the official code).

Resolution of the comparison. By default (``upsample_to="mask"``) the activations are
bilinearly upsampled (``align_corners=False``) to the box masks' (input) resolution, as
the paper's equation and the official code do, and the binary maps, their components and
the overlap with the boxes are computed there: a box then marks exactly its own pixels (a
Nodule box, 0.5% of the image, marks 0.5%). Dataset thresholds are quantiles of the
activation cells (before upsampling, as Bau et al. 2017); per-batch thresholds
(``threshold="batch"``, the official code) are quantiles of the upsampled maps. ``upsample_to=S`` upsamples to S x S instead.
``upsample_to=None`` compares at the activation grid; a cell then belongs to the box when
the box covers at least ``box_cover`` (default 1/2) of it (adaptive average pooling of the
input-resolution mask). The former rule, "any part covered" (max-pooling), inflates small
boxes on coarse grids: at 80 px a Nodule box marked 15% of a 3x3 grid.

Thresholds (``threshold="dataset"``), :math:`\\tau_c` = the ``1 - q`` quantile of channel c
over all cells of all images with NumPy's default linear interpolation, i.e. with
:math:`r = (1-q)(n-1)` the interpolation between order statistics
:math:`x_{(\\lfloor r \\rfloor)}` and :math:`x_{(\\lceil r \\rceil)}`:

- ``exact=True``: all values in memory, ``np.quantile``; for small sets only.
- ``exact=False``: bounded memory, independent of the number of images. Pass 1: per
  channel min and max. Pass 2: per channel a ``bins``-bin histogram over [min, max]
  that also keeps each bin's smallest and largest value. Pass 3: the bin that holds each
  of the two order statistics is split again into ``bins`` sub-bins (again with their
  min and max). The order statistic lies in a known sub-bin; it is estimated by linear
  interpolation between the sub-bin's observed min and max. **Error bound**: the
  observed width (max - min) of that sub-bin, at most ``(max_c - min_c) / bins**2``;
  it is 0 whenever the sub-bin holds a single value or ties (e.g. ReLU zeros), and it is
  reported per channel as ``threshold_error``. A fourth pass counts the concepts.
- ``exact=None`` (default): exact if the set has at most ``exact_limit`` values in all
  (known after pass 1), histograms otherwise.

**Ties at the floor.** A post-ReLU channel that is silent on more than a fraction
:math:`1-q` of the cells has :math:`\\tau_c` equal to its minimum (0), and
:math:`A \\ge \\tau_c` would then switch on *every* cell, making the whole map one
"concept" that always touches the box. Whenever :math:`\\tau_c` is not above the channel's
minimum (over the set; over the batch in ``"batch"`` mode) the rule becomes the strict
:math:`A > \\tau_c`, so silent cells never form a concept (a channel that never fires is
then no detector). Pass ``floor_ties=False`` for the literal :math:`A \\ge \\tau_c`.

``threshold="batch"``: :math:`\\tau_c` is ``torch.quantile`` of channel c over each batch
separately (one pass); ``thresholds`` then holds the mean over batches and
``batch_thresholds`` each batch's values.

**Official mode** (:data:`OFFICIAL`, equal to CAMP-eXplain-AI/imba-explain
``ConceptDetector.detect``, tested against a literal re-implementation): maps upsampled
to the input, per-batch thresholds, literal ``A >= tau`` (no floor rule), and per map the
number of **contours** that OpenCV ``findContours(RETR_TREE)`` returns for (binary map x
union box mask) (``counting="contours"``, :func:`count_contours`): each 8-connected
component of the clipped map has an outer border, and each hole (a 4-connected
background component not touching the border) has one more, so a component that enters
a box twice counts twice and a ring counts 2. An image's Disjoint (sum over channels) and
Unique (channels with a contour) are averaged over **box entries**: the official code
appends the image's count once per box label, so an image with b boxes weighs b times,

$$ \\mathrm{Disjoint} = \\frac{\\sum_i b_i \\sum_c n_{ic}}{\\sum_i b_i}
   \\quad (\\texttt{normalise="entries"}). $$

Its configs use ResNet50 ``layer3.5`` (the output of ``layer3``) with
``quantile_threshold=0.96`` (q = 0.04) and batch 64.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from skimage.measure import label
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from imbalens.data.findings import BOXED_FINDINGS
from imbalens.explain.cam import get_module

__all__ = [
    "COUNTING",
    "DISSECTION_MODES",
    "OFFICIAL",
    "PAPER",
    "THRESHOLD_MODES",
    "ActivationStream",
    "ConceptCounts",
    "count_concepts",
    "count_contours",
    "count_overlapping",
    "dissect_model",
    "streaming_quantile",
]

log = logging.getLogger(__name__)

THRESHOLD_MODES = ("dataset", "batch")
NORMALISE = ("images", "boxes", "entries")
_LABEL_CHUNK = 1 << 23  # pixels labelled per skimage call


@dataclass
class ConceptCounts:
    """Result of :func:`count_concepts` (normalised counts, thresholds, per-channel detail)."""

    disjoint: float
    unique: float
    thresholds: np.ndarray
    threshold_error: np.ndarray
    per_channel: pd.DataFrame
    n_images: int
    n_boxes: int | None
    q: float
    threshold_mode: str
    connectivity: int
    normalise: str
    total_components: int
    total_detectors: int
    per_finding: dict[str, dict[str, float]] = field(default_factory=dict)
    batch_thresholds: np.ndarray | None = None
    counting: str = "components"
    n_entries: int | None = None
    floor_ties: bool = True
    per_image: pd.DataFrame | None = None
    """Per image (stream order): ``disjoint`` and ``unique`` (its concepts and detector
    channels), ``weight`` and ``norm`` with Disjoint = sum(weight * disjoint) / sum(norm)
    (likewise Unique) under ``normalise``: what a bootstrap over images resamples."""

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (thresholds summarised, not listed)."""
        t = self.thresholds
        return {
            "disjoint": self.disjoint,
            "unique": self.unique,
            "q": self.q,
            "threshold": self.threshold_mode,
            "connectivity": self.connectivity,
            "normalise": self.normalise,
            "counting": self.counting,
            "floor_ties": self.floor_ties,
            "n_images": self.n_images,
            "n_boxes": self.n_boxes,
            "n_entries": self.n_entries,
            "n_channels": len(t),
            "total_components": self.total_components,
            "total_detectors": self.total_detectors,
            "n_detector_channels": int(self.per_channel["is_detector"].sum()),
            "thresholds": {
                "min": float(np.min(t)),
                "median": float(np.median(t)),
                "max": float(np.max(t)),
                "max_error": float(np.nanmax(self.threshold_error))
                if np.isfinite(self.threshold_error).any()
                else None,
            },
            "per_finding": self.per_finding,
        }


# ----------------------------------------------------------------------------- batches


def _unpack(item: Any) -> tuple[Tensor, Tensor, Tensor | None, np.ndarray | None]:
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3, 4):
        raise ValueError(
            "each batch must be (activations, box_mask[, finding_masks[, entries]]), got "
            f"{type(item).__name__}"
        )
    acts = torch.as_tensor(item[0]).float()
    box = torch.as_tensor(item[1]).bool()
    fm = torch.as_tensor(item[2]).bool() if len(item) >= 3 and item[2] is not None else None
    entries = None
    if len(item) == 4 and item[3] is not None:
        entries = np.asarray(item[3], dtype=np.int64).reshape(acts.shape[0], -1)
    if acts.ndim != 4 or box.ndim != 3 or box.shape[0] != acts.shape[0]:
        raise ValueError(
            f"activations must be (N, C, h, w) and box_mask (N, H, W) with the same N, got "
            f"{tuple(acts.shape)} and {tuple(box.shape)}"
        )
    if fm is not None and (fm.ndim != 4 or fm.shape[0] != acts.shape[0]):
        raise ValueError(f"finding masks must be (N, F, H, W), got {tuple(fm.shape)}")
    return acts, box, fm, entries


def _to_grid(mask: Tensor, grid: tuple[int, int], cover: float = 0.5) -> Tensor:
    """(..., H, W) bool -> (..., h, w): a cell is in the box if the box covers >= ``cover``
    of it (adaptive average pooling of the mask; module docstring)."""
    if tuple(mask.shape[-2:]) == grid:
        return mask
    if mask.shape[-2] < grid[0] or mask.shape[-1] < grid[1]:
        raise ValueError(
            f"box masks {tuple(mask.shape[-2:])} are smaller than the activation grid {grid}"
        )
    lead = mask.shape[:-2]
    frac = F.adaptive_avg_pool2d(mask.reshape(-1, 1, *mask.shape[-2:]).float(), grid)
    return frac.reshape(*lead, *grid) >= cover - 1e-9


_UPSAMPLE_CHUNK = 1 << 25  # upsampled values per block (128 MiB of float32)


def _target_size(upsample_to: int | str | None, box: Tensor) -> tuple[int, int] | None:
    if upsample_to is None:
        return None
    if upsample_to == "mask":
        return (int(box.shape[-2]), int(box.shape[-1]))
    if isinstance(upsample_to, str):
        raise ValueError(f"upsample_to must be 'mask', an int or None, got {upsample_to!r}")
    return (int(upsample_to), int(upsample_to))


def _prepared(
    batches: Iterable[Any],
    upsample_to: int | str | None,
    with_masks: bool = True,
    cover: float = 0.5,
    split: bool = True,
) -> Iterator[tuple[Tensor, Tensor, Tensor | None, np.ndarray | None]]:
    """Activations at the comparison resolution, with masks at the same grid.

    With ``split`` an upsampled batch is yielded in blocks of images (bounded memory);
    ``split=False`` keeps each batch whole (per-batch thresholds).
    """
    for item in batches:
        acts, box, fm, entries = _unpack(item)
        size = _target_size(upsample_to, box)
        if size is not None and size == tuple(acts.shape[-2:]):
            size = None
        n, c = acts.shape[:2]
        step = (
            n if size is None or not split else max(1, _UPSAMPLE_CHUNK // (c * size[0] * size[1]))
        )
        for i in range(0, n, step):
            a = acts[i : i + step]
            if size is not None:
                a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            grid = tuple(a.shape[-2:])
            b, f = box[i : i + step], (fm[i : i + step] if fm is not None else None)
            if with_masks:
                b = _to_grid(b, grid, cover)
                f = _to_grid(f, grid, cover) if f is not None else None
            yield a, b, f, (entries[i : i + step] if entries is not None else None)


def bilinear_matrix(out_size: int, in_size: int) -> Tensor:
    """(out, in) weights of 1-D bilinear resampling, ``align_corners=False``.

    Output cell ``o`` samples the input at :math:`s = \\max(0, (o + 1/2)\\,I/O - 1/2)`
    with weights :math:`1 - (s - \\lfloor s \\rfloor)` and :math:`s - \\lfloor s \\rfloor`
    on cells :math:`\\lfloor s \\rfloor` and :math:`\\min(\\lfloor s \\rfloor + 1, I - 1)`,
    as ``torch.nn.functional.interpolate(mode="bilinear")``, so that
    ``interpolate(A) == Wy @ A @ Wx.T`` up to float rounding.
    """
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(
        min=0
    )
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    l1 = src - i0
    w = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    w.index_put_((rows, i0), 1 - l1, accumulate=True)
    w.index_put_((rows, i1), l1, accumulate=True)
    return w.float()


_CANDIDATE_EPS = 1e-4


def _candidates(acts: Tensor, box: Tensor, tau: Tensor, lo: Tensor, floor_ties: bool) -> np.ndarray:
    """(N, C) maps that may have an active upsampled cell inside the box.

    Upsampling only each image's box rectangle (separable bilinear matrices) is far
    cheaper than upsampling whole maps. The test is conservative (a margin below the
    threshold absorbs float rounding), so every map that the exact path would count is a
    candidate; candidates are then upsampled whole with ``interpolate`` and counted
    exactly, and the others count 0 as they would there.
    """
    n, c, h, w = acts.shape
    big_h, big_w = box.shape[-2:]
    wy, wx = bilinear_matrix(big_h, h), bilinear_matrix(big_w, w)
    margin = _CANDIDATE_EPS * (tau.abs() + 1)
    # floor-tied channels at 0 (ReLU): A > 0 is exact under both paths (0 * w = 0)
    strict_zero = (tau <= lo) & (tau == 0) if floor_ties else torch.zeros_like(tau, dtype=bool)
    cut = torch.where(strict_zero, torch.zeros_like(tau), tau - margin)[:, None, None]
    out = np.zeros((n, c), dtype=bool)
    for i in range(n):
        rows = torch.nonzero(box[i].any(1)).flatten()
        cols = torch.nonzero(box[i].any(0)).flatten()
        if rows.numel() == 0:
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = torch.einsum("yh,chw,xw->cyx", wy[r0:r1], acts[i], wx[c0:c1])
        above = torch.where(strict_zero[:, None, None], crop > 0, crop >= cut)
        out[i] = (above & box[i, r0:r1, c0:c1]).flatten(1).any(1).numpy()
    return out


def _fast_component_counts(
    acts: Tensor,
    box: Tensor,
    fm: Tensor | None,
    tau: Tensor,
    lo: Tensor,
    run: Any,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Paper counting at input resolution, dataset thresholds: (N, C) counts and, with
    finding masks, (F, N, C) per-finding counts; equal to upsampling every map whole."""
    n, c = acts.shape[:2]
    size = tuple(box.shape[-2:])
    cand = _candidates(acts, box, tau, lo, run.floor_ties)
    counts = np.zeros((n, c), dtype=np.int64)
    f_counts = np.zeros((fm.shape[1], n, c), dtype=np.int64) if fm is not None else None
    for i in np.flatnonzero(cand.any(1)):
        ch = torch.from_numpy(np.flatnonzero(cand[i]))
        up = F.interpolate(acts[i : i + 1, ch], size=size, mode="bilinear", align_corners=False)
        active = _binarise(up, tau[ch], lo[ch], run.floor_ties)[0]
        stacks = [box[i : i + 1].numpy()]
        if f_counts is not None:
            stacks += [fm[i : i + 1, f].numpy() for f in range(fm.shape[1])]
        got = count_overlapping(active, stacks, run.connectivity, per_box=len(ch))
        counts[i, ch.numpy()] = got[0]
        if f_counts is not None:
            f_counts[:, i, ch.numpy()] = got[1:]
    return counts, f_counts


def _by_channel(acts: Tensor) -> Tensor:
    return acts.transpose(0, 1).reshape(acts.shape[1], -1)


# --------------------------------------------------------------------------- quantiles


def _bin_index(x: Tensor, lo: Tensor, width: Tensor, bins: int) -> Tensor:
    return ((x - lo[:, None]) / width[:, None]).floor_().clamp_(0, bins - 1).long()


def _widths(lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    w = (hi - lo) / bins
    return torch.where(w > 0, w, torch.ones_like(w))


class _Hist:
    """Per-row histograms with counts and each bin's observed min / max (+ a trash bin)."""

    def __init__(self, rows: int, bins: int):
        self.rows, self.bins = rows, bins
        n = rows * bins + 1
        self.count = torch.zeros(n, dtype=torch.long)
        self.vmin = torch.full((n,), math.inf)
        self.vmax = torch.full((n,), -math.inf)

    def add(self, flat_index: Tensor, values: Tensor) -> None:
        self.count += torch.bincount(flat_index, minlength=self.count.numel())
        self.vmin.scatter_reduce_(0, flat_index, values, reduce="amin")
        self.vmax.scatter_reduce_(0, flat_index, values, reduce="amax")

    def arrays(self) -> tuple[Tensor, Tensor, Tensor]:
        k = self.rows * self.bins
        shape = (self.rows, self.bins)
        return self.count[:k].view(shape), self.vmin[:k].view(shape), self.vmax[:k].view(shape)


def _locate(count: Tensor, rank: Tensor) -> tuple[Tensor, Tensor]:
    """Bin holding the 0-based order statistic ``rank`` per row, and the rank inside it."""
    cum = count.cumsum(1)
    b = torch.searchsorted(cum, rank[:, None], right=True)[:, 0].clamp_(max=count.shape[1] - 1)
    before = cum.gather(1, b[:, None])[:, 0] - count.gather(1, b[:, None])[:, 0]
    return b, rank - before


def _range_pass(batches: Iterable[Tensor]) -> tuple[Tensor, Tensor, int]:
    """Per-row min, max and number of values (one pass)."""
    lo = hi = None
    n = 0
    for x in batches:
        mn, mx = x.amin(1), x.amax(1)
        lo = mn if lo is None else torch.minimum(lo, mn)
        hi = mx if hi is None else torch.maximum(hi, mx)
        n += x.shape[1]
    if lo is None or hi is None or n == 0:
        raise ValueError("no activations: the batches are empty")
    return lo, hi, n


def streaming_quantile(
    batches: Iterable[Tensor],
    p: float,
    bins: int = 1024,
    stats: tuple[Tensor, Tensor, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-row ``p``-quantile of a re-iterable of (C, m) tensors, in three passes.

    Linear interpolation between order statistics (NumPy's default). Memory: O(C * bins),
    independent of the number of batches. See the module docstring for the algorithm.

    Args:
        stats: (min, max, n) per row from an earlier pass, to skip pass 1.

    Returns:
        (quantiles (C,), error bounds (C,), n values per row).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"quantile level must be in [0, 1], got {p}")
    lo, hi, n = stats if stats is not None else _range_pass(batches)  # pass 1
    c = lo.shape[0]
    rows = torch.arange(c)
    width = _widths(lo, hi, bins)
    coarse = _Hist(c, bins)
    for x in batches:  # pass 2: coarse histogram
        coarse.add((_bin_index(x, lo, width, bins) + rows[:, None] * bins).flatten(), x.flatten())
    count, cmin, cmax = coarse.arrays()
    r = p * (n - 1)
    ranks = (math.floor(r), min(math.floor(r) + 1, n - 1))
    frac = r - math.floor(r)
    targets = []
    for rank in ranks:
        b, offset = _locate(count, torch.full((c,), rank, dtype=torch.long))
        s_lo = cmin[rows, b]
        s_hi = cmax[rows, b]
        targets.append((b, offset, s_lo, _widths(s_lo, s_hi, bins), _Hist(c, bins)))
    trash = c * bins
    for x in batches:  # pass 3: refine inside the located bins
        cb = _bin_index(x, lo, width, bins)
        for b, _, s_lo, s_w, hist in targets:
            inside = cb == b[:, None]
            flat = _bin_index(x, s_lo, s_w, bins) + rows[:, None] * bins
            hist.add(torch.where(inside, flat, trash).flatten(), x.flatten())
    values, errors = [], []
    for _, offset, _, _, hist in targets:
        fcount, fmin, fmax = hist.arrays()
        s, o = _locate(fcount, offset)
        k = fcount[rows, s].double()
        vmin, vmax = fmin[rows, s].double(), fmax[rows, s].double()
        t = torch.where(k > 1, o.double() / (k - 1).clamp(min=1), 0.0)
        values.append(vmin + (vmax - vmin) * t)
        errors.append(vmax - vmin)
    q = values[0] + frac * (values[1] - values[0])
    return q.numpy(), torch.maximum(errors[0], errors[1]).numpy(), n


def _exact_quantile(batches: Iterable[Tensor], p: float) -> np.ndarray:
    vals = np.concatenate([x.numpy() for x in batches], axis=1)
    return np.quantile(vals, p, axis=1)


def _batch_quantile(x: Tensor, p: float) -> Tensor:
    """torch.quantile per row, in row chunks under torch's input-size limit."""
    step = max(1, (1 << 24) // max(1, x.shape[1]))
    return torch.cat([torch.quantile(x[i : i + step], p, dim=1) for i in range(0, len(x), step)])


# ---------------------------------------------------------------------------- counting


def _distinct_per_map(labels: np.ndarray, sel: np.ndarray, per_map: int, n_maps: int) -> np.ndarray:
    """Number of distinct labels per map among the selected cells (maps stacked, flat)."""
    flat = np.flatnonzero(sel)
    if flat.size == 0:
        return np.zeros(n_maps, dtype=np.int64)
    _, first = np.unique(labels.ravel()[flat], return_index=True)
    return np.bincount(flat[first] // per_map, minlength=n_maps)


def _chunks(n_maps: int, h: int, w: int) -> Iterator[tuple[int, int]]:
    step = max(1, _LABEL_CHUNK // ((h + 2) * (w + 2)))
    for m0 in range(0, n_maps, step):
        yield m0, min(n_maps, m0 + step)


def count_contours(maps: np.ndarray) -> np.ndarray:
    """Contours of each binary map as OpenCV ``findContours(..., RETR_TREE)`` lists them.

    RETR_TREE returns every border: the outer border of each 8-connected foreground
    component and the border of each hole, a 4-connected background component that does
    not touch the image border (Suzuki & Abe 1985). So

    $$ n = \\#\\{\\text{8-connected components of } M\\}
         + \\#\\{\\text{4-connected components of } \\neg M \\text{ not touching the border}\\}. $$

    Args:
        maps: (M, H, W) bool.

    Returns:
        (M,) int64 numbers of contours.
    """
    maps = np.asarray(maps, dtype=bool)
    m, h, w = maps.shape
    out = np.zeros(m, dtype=np.int64)
    per_map = (h + 2) * (w + 2)
    for m0, m1 in _chunks(m, h, w):
        # a background frame around each map: separates the maps' foregrounds and joins
        # every border-touching background region to one outer background
        pad = np.zeros((m1 - m0, h + 2, w + 2), dtype=bool)
        pad[:, 1:-1, 1:-1] = maps[m0:m1]
        flat = pad.reshape(-1, w + 2)
        fg = label(flat, connectivity=2)
        bg = label(~flat, connectivity=1)
        holes = (bg > 0) & (bg != bg[0, 0])
        out[m0:m1] = _distinct_per_map(fg, fg > 0, per_map, m1 - m0)
        out[m0:m1] += _distinct_per_map(bg, holes, per_map, m1 - m0)
    return out


def count_overlapping(
    maps: np.ndarray, boxes: np.ndarray | list[np.ndarray], connectivity: int = 2, per_box: int = 1
) -> np.ndarray:
    """Per map, the connected components of ``maps`` that share a cell with its box.

    Args:
        maps: (M, H, W) bool binarised activation maps.
        boxes: (M / per_box, H, W) bool box masks, map j against ``boxes[j // per_box]``
            (``per_box`` = channels per image), or a list of such stacks (then the result
            has one row per stack: (len(boxes), M)).
        connectivity: 1 (4-connected) or 2 (8-connected), as ``skimage.measure.label``.

    Only maps with an active cell inside a box are labelled (the others count 0).
    """
    maps = np.asarray(maps, dtype=bool)
    many = isinstance(boxes, list)
    stacks = boxes if many else [boxes]
    m, h, w = maps.shape
    grouped = maps.reshape(-1, per_box, h, w)
    hit = np.zeros(m, dtype=bool)
    for box in stacks:
        hit |= (grouped & box[:, None]).any(axis=(2, 3)).reshape(-1)
    idx = np.flatnonzero(hit)
    out = np.zeros((len(stacks), m), dtype=np.int64)
    per_map = (h + 2) * (w + 2)
    for m0, m1 in _chunks(idx.size, h, w):
        part = idx[m0:m1]
        pad = np.zeros((part.size, h + 2, w + 2), dtype=bool)
        pad[:, 1:-1, 1:-1] = maps[part]
        lab = label(pad.reshape(-1, w + 2), connectivity=connectivity).reshape(pad.shape)
        fg = lab > 0
        sel = np.zeros_like(fg)
        for k, box in enumerate(stacks):
            sel[:, 1:-1, 1:-1] = box[part // per_box]
            out[k, part] = _distinct_per_map(lab, fg & sel, per_map, part.size)
    return out if many else out[0]


def _clipped_contours(active: np.ndarray, box: np.ndarray, connectivity: int) -> np.ndarray:
    """Official counting: contours (RETR_TREE) of binary map x union box mask, (N, C)."""
    n, c, h, w = active.shape
    clipped = (active & box[:, None]).reshape(n * c, h, w)
    out = np.zeros(n * c, dtype=np.int64)
    idx = np.flatnonzero(clipped.any(axis=(1, 2)))  # empty maps have no contour
    out[idx] = count_contours(clipped[idx])
    return out.reshape(n, c)


def _overlapping(active: np.ndarray, box: np.ndarray, connectivity: int) -> np.ndarray:
    """Paper counting: components of the binary map that overlap the box, (N, C)."""
    n, c, h, w = active.shape
    return count_overlapping(active.reshape(n * c, h, w), box, connectivity, c).reshape(n, c)


COUNTING: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "components": _overlapping,
    "contours": _clipped_contours,
}
"""How an (image, channel) map's concepts are counted: ``components`` (the paper:
components overlapping a box) or ``contours`` (the official code: contours of the map
clipped to the boxes, holes included)."""


class _Tally:
    """Running sums over batches: per channel, per image, per finding."""

    def __init__(self, c: int, n_findings: int):
        self.components = np.zeros(c, dtype=np.int64)
        self.images = np.zeros(c, dtype=np.int64)
        self.f_components = np.zeros((n_findings, c), dtype=np.int64)
        self.f_unique = np.zeros((n_findings, c), dtype=np.int64)
        self.f_images = np.zeros(n_findings, dtype=np.int64)
        self.img_disjoint: list[np.ndarray] = []
        self.img_unique: list[np.ndarray] = []
        self.entries: list[np.ndarray] = []
        self.n_images = 0

    def add(self, counts: np.ndarray, entries: np.ndarray | None) -> None:
        """Add a batch's (N, C) concept counts and its (N, F) box entries (if any)."""
        self.components += counts.sum(0)
        self.images += (counts > 0).sum(0)
        self.img_disjoint.append(counts.sum(1))
        self.img_unique.append((counts > 0).sum(1))
        if entries is not None:
            self.entries.append(entries)
        self.n_images += counts.shape[0]

    def add_findings(self, f_counts: np.ndarray, fm: np.ndarray) -> None:
        """Add (F, N, C) per-finding counts of a batch with finding masks (N, F, H, W)."""
        self.f_components += f_counts.sum(1)
        self.f_unique += (f_counts > 0).sum(1)
        self.f_images += fm.any(axis=(2, 3)).sum(0)

    def per_image(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        entries = np.concatenate(self.entries) if self.entries else None
        return np.concatenate(self.img_disjoint), np.concatenate(self.img_unique), entries


def _binarise(acts: Tensor, t: Tensor, lo: Tensor, floor_ties: bool) -> np.ndarray:
    """``A >= tau`` per channel; ``A > tau`` where ``tau <= lo`` when ``floor_ties``."""
    tt = t.to(acts.dtype)[None, :, None, None]
    active = acts >= tt
    if floor_ties:
        strict = (t.to(acts.dtype) <= lo.to(acts.dtype))[None, :, None, None]
        active = torch.where(strict, acts > tt, active)
    return active.numpy()


@dataclass
class _Run:
    """Settings of one :func:`count_concepts` call (validated)."""

    q: float
    threshold: str
    connectivity: int
    normalise: str
    counting: str
    upsample_to: int | str | None
    floor_ties: bool
    box_cover: float
    per_finding: bool
    n_boxes: int | None

    def check(self) -> None:
        for name, value, choices in (
            ("threshold", self.threshold, THRESHOLD_MODES),
            ("normalise", self.normalise, NORMALISE),
            ("counting", self.counting, tuple(COUNTING)),
        ):
            if value not in choices:
                raise ValueError(f"unknown {name}={value!r}: choose one of {choices}")
        if self.normalise == "boxes" and not self.n_boxes:
            raise ValueError("normalise='boxes' needs n_boxes (the number of boxes in the set)")
        if self.connectivity not in (1, 2):
            raise ValueError(
                f"connectivity must be 1 (4-connected) or 2 (8-connected), got {self.connectivity}"
            )
        if not 0.0 < self.q < 1.0:
            raise ValueError(f"q must be in (0, 1), got {self.q}")

    def stream(
        self, batches: Iterable[Any], with_masks: bool = True, fast: bool = False
    ) -> Iterator[Any]:
        """Batches at the comparison resolution; with ``fast`` (and masks at the input
        resolution, ``upsample_to="mask"``) the raw activations, for
        :func:`_fast_component_counts` to upsample only what it needs."""
        if fast and self.upsample_to == "mask" and with_masks:
            return (_unpack(item) for item in batches)
        split = self.threshold == "dataset"
        return _prepared(batches, self.upsample_to, with_masks, self.box_cover, split)


class _ChannelValues:
    """Re-iterable of (C, m) activation values per batch (for the dataset threshold
    passes): the activation cells themselves, not upsampled (Bau et al. 2017)."""

    def __init__(self, batches: Iterable[Any]):
        self.batches = batches

    def __iter__(self) -> Iterator[Tensor]:
        for acts, _, _, _ in _prepared(self.batches, None, with_masks=False):
            yield _by_channel(acts)


def _dataset_thresholds(
    values: _ChannelValues, p: float, exact: bool | None, exact_limit: int, bins: int
) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """Thresholds over the whole set: (tau, error bound, per-channel minimum)."""
    stats = _range_pass(values)
    if exact is None:
        exact = stats[2] * len(stats[0]) <= exact_limit
    if exact:
        tau = _exact_quantile(values, p)
        err = np.zeros_like(tau)
    else:
        tau, err, _ = streaming_quantile(values, p, bins=bins, stats=stats)
    log.info("thresholds (%s): median %.4g", "exact" if exact else "histogram", np.median(tau))
    return tau, err, stats[0]


def _finding_names(n_f: int, finding_names: Sequence[str] | None) -> list[str]:
    if finding_names is not None:
        names = list(finding_names)
    else:
        names = list(BOXED_FINDINGS) if n_f == 8 else [f"finding{i}" for i in range(n_f)]
    if len(names) != n_f:
        raise ValueError(f"finding_names has {len(names)} names for {n_f} finding masks")
    return names


def _count_pass(
    run: _Run,
    batches: Iterable[Any],
    tau: np.ndarray | None,
    floor: Tensor | None,
    finding_names: Sequence[str] | None,
) -> tuple[_Tally, list[str], list[np.ndarray]]:
    """Binarise every map and count its concepts (the last pass)."""
    tally: _Tally | None = None
    names: list[str] = []
    batch_taus: list[np.ndarray] = []
    fast = run.threshold == "dataset" and run.counting == "components"
    for acts, box, fm, entries in run.stream(batches, fast=fast):
        use_fm = fm is not None and run.per_finding
        if tally is None:
            names = _finding_names(fm.shape[1] if use_fm else 0, finding_names)
            tally = _Tally(acts.shape[1], len(names))
        if fast and tuple(acts.shape[-2:]) != tuple(box.shape[-2:]):
            t = torch.as_tensor(tau)
            counts, f_counts = _fast_component_counts(
                acts, box, fm if use_fm else None, t, floor, run
            )
            tally.add(counts, entries)
            if use_fm and f_counts is not None:
                tally.add_findings(f_counts, fm.numpy())
            continue
        if run.threshold == "batch":
            by_channel = _by_channel(acts)
            t = _batch_quantile(by_channel, 1.0 - run.q)
            batch_taus.append(t.numpy())
            lo = by_channel.amin(1)
        else:
            t, lo = torch.as_tensor(tau), floor
        active = _binarise(acts, t, lo, run.floor_ties)
        box_np = box.numpy()
        tally.add(COUNTING[run.counting](active, box_np, run.connectivity), entries)
        if use_fm and run.counting == "components":
            n, c, h, w = active.shape
            fm_np = fm.numpy()
            stacks = [fm_np[:, f] for f in range(fm_np.shape[1])]
            f_counts = count_overlapping(
                active.reshape(n * c, h, w), stacks, run.connectivity, per_box=c
            )
            tally.add_findings(f_counts.reshape(-1, n, c), fm_np)
    if tally is None:
        raise ValueError("no activations: the batches are empty")
    return tally, names, batch_taus


def _per_finding(tally: _Tally, names: list[str], counting: str) -> dict[str, dict[str, float]]:
    """Per-finding Disjoint / Unique. Components: concepts in that finding's boxes per image
    with such a box. Contours (official): the image counts averaged over the finding's box
    entries (the official code appends an image's count once per box label)."""
    d, u, entries = tally.per_image()
    out: dict[str, dict[str, float]] = {}
    if counting == "contours":
        if entries is None:
            return out
        for i, f in enumerate(names or BOXED_FINDINGS[: entries.shape[1]]):
            e = entries[:, i].astype(np.float64)
            z = e.sum()
            out[f] = {
                "disjoint": float(e @ d / z) if z else float("nan"),
                "unique": float(e @ u / z) if z else float("nan"),
                "n_images": int((e > 0).sum()),
            }
        return out
    for i, f in enumerate(names):
        z = tally.f_images[i]
        out[f] = {
            "disjoint": float(tally.f_components[i].sum() / z) if z else float("nan"),
            "unique": float(tally.f_unique[i].sum() / z) if z else float("nan"),
            "n_images": int(z),
        }
    return out


def _normalised(tally: _Tally, run: _Run) -> tuple[float, float, int | None]:
    """(Disjoint, Unique, number of box entries) under ``run.normalise``."""
    d, u, entries = tally.per_image()
    n_entries = int(entries.sum()) if entries is not None else None
    if run.normalise == "entries":
        if entries is None:
            raise ValueError(
                "normalise='entries' needs each batch's box entries per image: pass "
                "(activations, box_mask, finding_masks, entries (N, F)) batches, or use "
                "dissect_model(..., box_entries=...)"
            )
        w = entries.sum(1).astype(np.float64)
        return float(w @ d / w.sum()), float(w @ u / w.sum()), n_entries
    z = tally.n_images if run.normalise == "images" else run.n_boxes
    return float(d.sum() / z), float(u.sum() / z), n_entries


def image_terms(
    disjoint: np.ndarray,
    unique: np.ndarray,
    entries: np.ndarray | None,
    normalise: str,
    n_boxes: int | None,
) -> pd.DataFrame:
    """Per-image terms of Disjoint and Unique, so that a resample of images recomputes them.

    With image $i$'s concept count $d_i$ (detector channels $u_i$), weight $w_i$ and
    normaliser $z_i$: $\\text{Disjoint} = \\sum_i w_i d_i / \\sum_i z_i$ (likewise Unique).
    ``images`` (the paper, Sec. 4.3): $w_i = z_i = 1$; ``entries`` (the official code,
    an image once per box entry): $w_i = z_i = e_i$, its box entries; ``boxes``: $w_i = 1$,
    $z_i = e_i$ (or ``n_boxes / n`` when the entries are unknown or do not add up to
    ``n_boxes``, so that the full set always gives the reported value). A bootstrap of images
    (Efron & Tibshirani 1993) then resamples a ratio of sums, as the counts are defined.
    """
    n = len(disjoint)
    e = entries.sum(1).astype(np.float64) if entries is not None else None
    ones = np.ones(n)
    if normalise == "entries" and e is not None:
        weight, norm = e, e
    elif normalise == "boxes":
        weight = ones
        known = e is not None and n_boxes is not None and e.sum() == n_boxes
        norm = e if known else ones * (float(n_boxes or 0) / max(n, 1))
    else:
        weight, norm = ones, ones
    return pd.DataFrame({"disjoint": disjoint, "unique": unique, "weight": weight, "norm": norm})


def count_concepts(
    batches: Iterable[Any],
    q: float,
    threshold: str = "dataset",
    connectivity: int = 2,
    normalise: str = "images",
    upsample_to: int | str | None = "mask",
    exact: bool | None = None,
    bins: int = 1024,
    per_finding: bool = True,
    n_boxes: int | None = None,
    finding_names: Sequence[str] | None = None,
    exact_limit: int = 1 << 24,
    floor_ties: bool = True,
    counting: str = "components",
    box_cover: float = 0.5,
) -> ConceptCounts:
    """Count pathology-related concepts (Disjoint, Unique) from streamed activations.

    The defaults are the paper's settings; :data:`OFFICIAL` holds the official code's
    (per-batch thresholds, contours of the clipped maps, per-box-entry averaging, no
    floor rule): ``count_concepts(batches, q, **OFFICIAL)``.

    Args:
        batches: a *re-iterable* (iterated once per pass) of ``(activations (N, C, h, w),
            box_mask (N, H, W) bool[, finding_masks (N, F, H, W) bool[, entries (N, F)]])``;
            masks at the activation grid or at a larger (input) resolution; ``entries``:
            the number of boxes of each finding per image (for ``normalise="entries"``).
        q: fraction of cells above the threshold, ``P(A^c >= tau_c) = q``.
        threshold: ``"dataset"`` (paper) or ``"batch"`` (official code, per batch).
        connectivity: 1 (4-connected) or 2 (8-connected) components (``components``).
        normalise: ``"images"`` (paper), ``"boxes"`` (total / ``n_boxes``) or
            ``"entries"`` (official: each image's count weighted by its box entries).
        upsample_to: ``"mask"`` (default: to the masks' resolution), a square size, or
            None (compare at the activation grid, masks by ``box_cover``).
        exact, bins, exact_limit: threshold computation (module docstring).
        per_finding: add per-finding counts when finding masks (or entries) are given.
        n_boxes: number of boxes in the set (for ``normalise="boxes"``; reported).
        finding_names: names of the F finding masks (default BOXED_FINDINGS when F == 8).
        floor_ties: strict ``A > tau`` where ``tau`` equals the channel minimum.
        counting: ``"components"`` (paper) or ``"contours"`` (official), :data:`COUNTING`.
        box_cover: grid mode only: the covered fraction that makes a cell part of a box.

    Returns:
        :class:`ConceptCounts`. ``per_channel`` has columns channel, threshold,
        n_components (concepts over all images), n_images (images in which the channel
        is a concept detector), is_detector, and ``components:<finding>``.

    Raises:
        ValueError: bad mode, q, connectivity, shapes, or missing ``n_boxes`` / entries.
    """
    run = _Run(
        q, threshold, connectivity, normalise, counting, upsample_to, floor_ties,
        box_cover, per_finding, n_boxes,
    )  # fmt: skip
    run.check()
    tau = tau_err = floor = None
    if threshold == "dataset":
        tau, tau_err, floor = _dataset_thresholds(
            _ChannelValues(batches), 1.0 - q, exact, exact_limit, bins
        )
    tally, names, batch_taus = _count_pass(run, batches, tau, floor, finding_names)
    if threshold == "batch":
        stack = np.stack(batch_taus)
        tau, tau_err = stack.mean(0), np.full(stack.shape[1], np.nan)
    return _result(run, tally, names, np.asarray(tau), np.asarray(tau_err), batch_taus)


def _result(
    run: _Run,
    tally: _Tally,
    names: list[str],
    tau: np.ndarray,
    tau_err: np.ndarray,
    batch_taus: list[np.ndarray],
) -> ConceptCounts:
    disjoint, unique, n_entries = _normalised(tally, run)
    d, u, entries = tally.per_image()
    per_image = image_terms(d, u, entries, run.normalise, run.n_boxes)
    per = pd.DataFrame(
        {
            "channel": np.arange(len(tau)),
            "threshold": tau,
            "n_components": tally.components,
            "n_images": tally.images,
            "is_detector": tally.images > 0,
        }
    )
    for i, f in enumerate(names):
        per[f"components:{f}"] = tally.f_components[i]
    return ConceptCounts(
        disjoint=disjoint,
        unique=unique,
        thresholds=tau,
        threshold_error=tau_err,
        per_channel=per,
        n_images=tally.n_images,
        n_boxes=run.n_boxes,
        q=run.q,
        threshold_mode=run.threshold,
        connectivity=run.connectivity,
        normalise=run.normalise,
        total_components=int(tally.components.sum()),
        total_detectors=int(tally.images.sum()),
        per_finding=_per_finding(tally, names, run.counting) if run.per_finding else {},
        batch_thresholds=np.stack(batch_taus) if batch_taus else None,
        counting=run.counting,
        n_entries=n_entries,
        floor_ties=run.floor_ties,
        per_image=per_image,
    )


OFFICIAL: dict[str, Any] = {
    "threshold": "batch",
    "upsample_to": "mask",
    "counting": "contours",
    "normalise": "entries",
    "floor_ties": False,
}
"""The official code's dissection settings (CAMP-eXplain-AI/imba-explain,
``ConceptDetector.detect``); the official batch size is 64 (ResNet50) and q = 0.04
(``quantile_threshold=0.96``) for ResNet50 ``layer3.5`` in its configs."""

PAPER: dict[str, Any] = {
    "threshold": "dataset",
    "upsample_to": "mask",
    "counting": "components",
    "normalise": "images",
    "floor_ties": True,
}
"""The paper's settings (Sec. 4.3), with the floor rule of the module docstring."""

DISSECTION_MODES: dict[str, dict[str, Any]] = {"paper": PAPER, "official": OFFICIAL}


# ------------------------------------------------------------------------ model level


class _StopForward(Exception):
    pass


class ActivationStream:
    """Re-iterable ``(activations, union box mask, finding masks)`` of one layer.

    Each iteration runs the model over the boxed dataset (stopping right after
    ``layer``) unless ``cache=True``: then the first complete iteration also writes each batch's
    activations (float32 ``.npy``) and box masks into a temporary folder and later
    iterations read them back, batch by batch, without the model or the image files. Either way only one batch is in memory.
    ``passes`` counts the forward passes over the data. ``box_entries`` (n_items, F):
    the number of boxes of each finding per dataset item (by the items' ``index``),
    yielded as the fourth element (for the official per-box-entry averaging).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        layer: str,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        cache: bool = False,
        box_entries: np.ndarray | None = None,
    ):
        self.model, self.dataset, self.layer = model, dataset, layer
        self.box_entries = None if box_entries is None else np.asarray(box_entries, np.int64)
        self.module = get_module(model, layer)
        self.batch_size, self.device, self.autocast = batch_size, device, autocast
        self.passes = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = (
            tempfile.TemporaryDirectory(prefix="imbalens-acts-") if cache else None
        )
        self._cached: list[tuple[Path, Path, np.ndarray | None]] = []

    def close(self) -> None:
        """Delete the activation cache, if any."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp, self._cached = None, []

    def _forward(self, images: Tensor) -> Tensor:
        store: dict[str, Tensor] = {}

        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            store["a"] = output
            raise _StopForward

        handle = self.module.register_forward_hook(hook)
        try:
            ctx = self.autocast() if self.autocast is not None else contextlib.nullcontext()
            with torch.inference_mode(), ctx:
                self.model(images.to(self.device))
        except _StopForward:
            pass
        finally:
            handle.remove()
        return store["a"].float().cpu()

    def _entries(self, batch: dict[str, Any]) -> np.ndarray | None:
        if self.box_entries is None:
            return None
        return self.box_entries[np.asarray(batch["index"], dtype=np.int64)]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor, np.ndarray | None]]:
        if self._tmp is not None and self._cached:
            for acts_path, mask_path, entries in self._cached:
                acts = torch.from_numpy(np.load(acts_path))
                masks = torch.from_numpy(np.load(mask_path))
                yield acts, masks.any(1), masks, entries
            return
        self.passes += 1
        self.model.eval()
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)
        cached: list[tuple[Path, Path, np.ndarray | None]] = []
        for i, batch in enumerate(loader):
            masks = batch["box_mask"].bool()
            acts = self._forward(batch["image"])
            entries = self._entries(batch)
            if self._tmp is not None:
                base = Path(self._tmp.name) / f"{i:06d}"
                np.save(base.with_suffix(".acts.npy"), acts.numpy())
                np.save(base.with_suffix(".mask.npy"), masks.numpy())
                cached.append(
                    (base.with_suffix(".acts.npy"), base.with_suffix(".mask.npy"), entries)
                )
            yield acts, masks.any(1), masks, entries
        self._cached = cached  # complete passes only


def default_q(model: nn.Module) -> float:
    """``imbalens.training.models.DEFAULT_Q`` for the model's ``name`` attribute.

    Raises:
        ValueError: when the model's name or the table is unknown (pass ``q=``).
    """
    from imbalens.training.models import DEFAULT_Q

    name = getattr(model, "name", None) or getattr(model, "model_name", None)
    if name not in DEFAULT_Q:
        raise ValueError(f"no default dissection q for model {name!r}: pass q=")
    return float(DEFAULT_Q[name])


def dissect_model(
    model: nn.Module,
    boxed_dataset: Dataset,
    layer: str | None = None,
    q: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    cache: bool = False,
    box_entries: np.ndarray | None = None,
    **kw: Any,
) -> ConceptCounts:
    """:func:`count_concepts` on ``layer`` (default ``model.dissect_layers[0]``).

    Streams the boxed dataset (items with ``image``, ``box_mask`` (8, S, S)) through the
    model with an :class:`ActivationStream`: dataset thresholds take 4 passes (3 in exact
    mode: range, values, counting), ``threshold="batch"`` one; ``cache=True`` runs the model once and keeps the
    activations in a temporary folder on disk instead. ``q`` defaults to
    :func:`default_q`. ``box_entries``: see :class:`ActivationStream`. Other keyword
    arguments go to :func:`count_concepts`.
    """
    if layer is None:
        layers = getattr(model, "dissect_layers", None)
        if not layers:
            raise ValueError("pass layer= or give the model a dissect_layers attribute")
        layer = layers[0]
    q = default_q(model) if q is None else q
    cache = cache and kw.get("threshold", "dataset") == "dataset"  # batch mode: one pass
    stream = ActivationStream(
        model, boxed_dataset, layer, batch_size, device, autocast, cache, box_entries
    )
    try:
        result = count_concepts(stream, q, **kw)
    finally:
        stream.close()
    log.info("dissected %s: %d forward passes", layer, stream.passes)
    return result
