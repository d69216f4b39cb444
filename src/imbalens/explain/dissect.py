"""Concept counting in the manner of network dissection (Bau et al., CVPR 2017).

For a layer with channels :math:`c = 1..C` and activation maps :math:`A^c_i` of image
:math:`i`, a threshold :math:`\\tau_c` is chosen so that

$$ P(A^c \\ge \\tau_c) = q $$

over the whole annotation set (``threshold="dataset"``, the paper: Khakzar, Li et al.
2022, Sec. 4.3; q = 0.01 for T-DenseNet, 0.04 for ResNet50). Each map is binarised,
:math:`[A^c_i \\ge \\tau_c]`, split into connected components (``skimage.measure.label``;
``connectivity=1``: 4-connected, ``connectivity=2``: 8-connected, the default and what
OpenCV contours use), and a component that shares at least one cell with the boxes of
image :math:`i` is a *pathology-related concept*. With :math:`n_{ic}` such components,

$$ \\mathrm{Disjoint} = \\frac{1}{Z} \\sum_i \\sum_c n_{ic}, \\qquad
   \\mathrm{Unique} = \\frac{1}{Z} \\sum_i \\sum_c [n_{ic} > 0], $$

where :math:`Z` is the number of images (``normalise="images"``, the paper) or of boxes
(``normalise="boxes"``, the official code).

Box masks at feature resolution: a feature cell belongs to the box if the box covers any
part of it (adaptive max-pooling of the input-resolution mask). With ``upsample_to=S``
the activations are first bilinearly upsampled (``align_corners=False``) to S x S, as in
the official code, and thresholds and components are computed there.

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

``threshold="batch"`` reproduces the official code: :math:`\\tau_c` is ``torch.quantile``
of channel c over each batch separately (one pass); ``thresholds`` then holds the mean
over batches and ``batch_thresholds`` each batch's values.
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
    "THRESHOLD_MODES",
    "ActivationStream",
    "ConceptCounts",
    "count_concepts",
    "dissect_model",
    "streaming_quantile",
]

log = logging.getLogger(__name__)

THRESHOLD_MODES = ("dataset", "batch")
NORMALISE = ("images", "boxes")
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
            "n_images": self.n_images,
            "n_boxes": self.n_boxes,
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


def _unpack(item: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise ValueError(
            "each batch must be (activations, box_mask) or (activations, box_mask, "
            f"finding_masks), got {type(item).__name__}"
        )
    acts = torch.as_tensor(item[0]).float()
    box = torch.as_tensor(item[1]).bool()
    fm = torch.as_tensor(item[2]).bool() if len(item) == 3 and item[2] is not None else None
    if acts.ndim != 4 or box.ndim != 3 or box.shape[0] != acts.shape[0]:
        raise ValueError(
            f"activations must be (N, C, h, w) and box_mask (N, H, W) with the same N, got "
            f"{tuple(acts.shape)} and {tuple(box.shape)}"
        )
    if fm is not None and (fm.ndim != 4 or fm.shape[0] != acts.shape[0]):
        raise ValueError(f"finding masks must be (N, F, H, W), got {tuple(fm.shape)}")
    return acts, box, fm


def _to_grid(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """(..., H, W) bool -> (..., h, w): a cell is in the box if the box covers part of it."""
    if tuple(mask.shape[-2:]) == grid:
        return mask
    if mask.shape[-2] < grid[0] or mask.shape[-1] < grid[1]:
        raise ValueError(
            f"box masks {tuple(mask.shape[-2:])} are smaller than the activation grid {grid}"
        )
    lead = mask.shape[:-2]
    pooled = F.adaptive_max_pool2d(mask.reshape(-1, 1, *mask.shape[-2:]).float(), grid)
    return pooled.reshape(*lead, *grid) > 0


def _prepared(
    batches: Iterable[Any], upsample_to: int | None, with_masks: bool = True
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    for item in batches:
        acts, box, fm = _unpack(item)
        if upsample_to is not None:
            acts = F.interpolate(
                acts, size=(upsample_to, upsample_to), mode="bilinear", align_corners=False
            )
        grid = tuple(acts.shape[-2:])
        if with_masks:
            box = _to_grid(box, grid)
            fm = _to_grid(fm, grid) if fm is not None else None
        yield acts, box, fm


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


class _Tally:
    def __init__(self, c: int, n_findings: int):
        self.components = np.zeros(c, dtype=np.int64)
        self.images = np.zeros(c, dtype=np.int64)
        self.f_components = np.zeros((n_findings, c), dtype=np.int64)
        self.f_unique = np.zeros((n_findings, c), dtype=np.int64)
        self.f_images = np.zeros(n_findings, dtype=np.int64)
        self.n_images = 0


def _concept_labels(labels: np.ndarray, sel: np.ndarray, per_map: int, n_maps: int) -> np.ndarray:
    """Number of distinct components per map among the selected (labelled) cells."""
    flat = np.flatnonzero(sel)
    if flat.size == 0:
        return np.zeros(n_maps, dtype=np.int64)
    _, first = np.unique(labels.ravel()[flat], return_index=True)
    return np.bincount(flat[first] // per_map, minlength=n_maps)


def _count_batch(
    active: np.ndarray, box: np.ndarray, fm: np.ndarray | None, connectivity: int, tally: _Tally
) -> None:
    """Label every (image, channel) map of a batch and add its concept counts."""
    n, c, h, w = active.shape
    maps = active.reshape(n * c, h, w)
    per_chunk = max(1, _LABEL_CHUNK // ((h + 1) * w))
    n_f = 0 if fm is None else fm.shape[1]
    counts = np.zeros(n * c, dtype=np.int64)
    f_counts = np.zeros((n_f, n * c), dtype=np.int64)
    for m0 in range(0, n * c, per_chunk):
        m1 = min(n * c, m0 + per_chunk)
        # a zero row below each map keeps the maps apart for both connectivities
        padded = np.zeros((m1 - m0, h + 1, w), dtype=bool)
        padded[:, :h] = maps[m0:m1]
        lab = label(padded.reshape(-1, w), connectivity=connectivity).reshape(m1 - m0, h + 1, w)
        lab = lab[:, :h]
        img = np.arange(m0, m1) // c
        fg = lab > 0
        counts[m0:m1] = _concept_labels(lab, fg & box[img], h * w, m1 - m0)
        for f in range(n_f):
            f_counts[f, m0:m1] = _concept_labels(lab, fg & fm[img, f], h * w, m1 - m0)
    counts = counts.reshape(n, c)
    tally.components += counts.sum(0)
    tally.images += (counts > 0).sum(0)
    tally.n_images += n
    if n_f:
        f_counts = f_counts.reshape(n_f, n, c)
        tally.f_components += f_counts.sum(1)
        tally.f_unique += (f_counts > 0).sum(1)
        tally.f_images += fm.any(axis=(2, 3)).sum(0)


def count_concepts(
    batches: Iterable[Any],
    q: float,
    threshold: str = "dataset",
    connectivity: int = 2,
    normalise: str = "images",
    upsample_to: int | None = None,
    exact: bool | None = None,
    bins: int = 1024,
    per_finding: bool = True,
    n_boxes: int | None = None,
    finding_names: Sequence[str] | None = None,
    exact_limit: int = 1 << 24,
    floor_ties: bool = True,
) -> ConceptCounts:
    """Count pathology-related concepts (Disjoint, Unique) from streamed activations.

    Args:
        batches: a *re-iterable* (iterated once per pass) of ``(activations (N, C, h, w),
            box_mask (N, H, W) bool)`` or ``(..., finding_masks (N, F, H, W) bool)``;
            masks at the activation grid or at a larger (input) resolution.
        q: fraction of cells above the threshold, ``P(A^c >= tau_c) = q``.
        threshold: ``"dataset"`` (paper) or ``"batch"`` (official code, per batch).
        connectivity: 1 (4-connected) or 2 (8-connected), as ``skimage.measure.label``.
        normalise: ``"images"`` (paper) or ``"boxes"`` (official; needs ``n_boxes``).
        upsample_to: upsample activations to this square size before thresholding.
        exact, bins, exact_limit: threshold computation (module docstring).
        per_finding: add per-finding counts when finding masks are given.
        n_boxes: number of boxes in the set (for ``normalise="boxes"``; reported).
        finding_names: names of the F finding masks (default BOXED_FINDINGS when F == 8).
        floor_ties: use the strict ``A > tau`` where ``tau`` equals the channel minimum
            (module docstring, "Ties at the floor").

    Returns:
        :class:`ConceptCounts`. ``per_channel`` has columns channel, threshold,
        n_components (concept components over all images), n_images (images in which
        the channel is a concept detector), is_detector, and ``components:<finding>``.
        ``per_finding[f]`` = {disjoint, unique, n_images}, normalised by the images that
        have a box of f.

    Raises:
        ValueError: bad mode, q, connectivity, shapes, or missing ``n_boxes``.
    """
    if threshold not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold={threshold!r}: choose {THRESHOLD_MODES}")
    if normalise not in NORMALISE:
        raise ValueError(f"unknown normalise={normalise!r}: choose {NORMALISE}")
    if normalise == "boxes" and not n_boxes:
        raise ValueError("normalise='boxes' needs n_boxes (the number of boxes in the set)")
    if connectivity not in (1, 2):
        raise ValueError(
            f"connectivity must be 1 (4-connected) or 2 (8-connected), got {connectivity}"
        )
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    p = 1.0 - q

    def channel_values() -> Iterator[Tensor]:
        for acts, _, _ in _prepared(batches, upsample_to, with_masks=False):
            yield _by_channel(acts)

    class _Again:
        def __iter__(self) -> Iterator[Tensor]:
            return channel_values()

    batch_taus: list[np.ndarray] = []
    floor: Tensor | None = None
    if threshold == "dataset":
        stats = _range_pass(_Again())
        floor = stats[0]
        if exact is None:
            exact = stats[2] * len(stats[0]) <= exact_limit
        if exact:
            tau = _exact_quantile(_Again(), p)
            tau_err = np.zeros_like(tau)
        else:
            tau, tau_err, _ = streaming_quantile(_Again(), p, bins=bins, stats=stats)
        log.info("thresholds (%s): median %.4g", "exact" if exact else "histogram", np.median(tau))
    tally: _Tally | None = None
    names: list[str] = []
    for acts, box, fm in _prepared(batches, upsample_to):
        c = acts.shape[1]
        if tally is None:
            n_f = fm.shape[1] if (fm is not None and per_finding) else 0
            if finding_names is not None:
                names = list(finding_names)
            else:
                names = list(BOXED_FINDINGS) if n_f == 8 else [f"finding{i}" for i in range(n_f)]
            if len(names) != n_f:
                raise ValueError(f"finding_names has {len(names)} names for {n_f} finding masks")
            tally = _Tally(c, n_f)
        if threshold == "batch":
            by_channel = _by_channel(acts)
            t = _batch_quantile(by_channel, p)
            batch_taus.append(t.numpy())
            lo = by_channel.amin(1)
        else:
            t = torch.as_tensor(tau, dtype=acts.dtype)
            lo = floor.to(acts.dtype)
        tt = t[None, :, None, None]
        active = acts >= tt
        if floor_ties:
            strict = (t <= lo)[None, :, None, None]
            active = torch.where(strict, acts > tt, active)
        active = active.numpy()
        _count_batch(
            active, box.numpy(), fm.numpy() if (fm is not None and per_finding) else None,
            connectivity, tally,
        )  # fmt: skip
    if tally is None:
        raise ValueError("no activations: the batches are empty")
    if threshold == "batch":
        stack = np.stack(batch_taus)
        tau, tau_err = stack.mean(0), np.full(stack.shape[1], np.nan)
    z = tally.n_images if normalise == "images" else n_boxes
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
    pf = {
        f: {
            "disjoint": float(tally.f_components[i].sum() / tally.f_images[i])
            if tally.f_images[i]
            else float("nan"),
            "unique": float(tally.f_unique[i].sum() / tally.f_images[i])
            if tally.f_images[i]
            else float("nan"),
            "n_images": int(tally.f_images[i]),
        }
        for i, f in enumerate(names)
    }
    return ConceptCounts(
        disjoint=float(tally.components.sum() / z),
        unique=float(tally.images.sum() / z),
        thresholds=np.asarray(tau),
        threshold_error=np.asarray(tau_err),
        per_channel=per,
        n_images=tally.n_images,
        n_boxes=n_boxes,
        q=q,
        threshold_mode=threshold,
        connectivity=connectivity,
        normalise=normalise,
        total_components=int(tally.components.sum()),
        total_detectors=int(tally.images.sum()),
        per_finding=pf,
        batch_thresholds=np.stack(batch_taus) if batch_taus else None,
    )


# ------------------------------------------------------------------------ model level


class _StopForward(Exception):
    pass


class ActivationStream:
    """Re-iterable ``(activations, union box mask, finding masks)`` of one layer.

    Each iteration runs the model over the boxed dataset (stopping right after
    ``layer``) unless ``cache=True``: then the first complete iteration also writes each batch's
    activations (float32 ``.npy``) and box masks into a temporary folder and later
    iterations read them back, batch by batch, without the model or the image files. Either way only one batch is in memory.
    ``passes`` counts the forward passes over the data.
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
    ):
        self.model, self.dataset, self.layer = model, dataset, layer
        self.module = get_module(model, layer)
        self.batch_size, self.device, self.autocast = batch_size, device, autocast
        self.passes = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = (
            tempfile.TemporaryDirectory(prefix="imbalens-acts-") if cache else None
        )
        self._cached: list[tuple[Path, Path]] = []

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

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        if self._tmp is not None and self._cached:
            for acts_path, mask_path in self._cached:
                acts = torch.from_numpy(np.load(acts_path))
                masks = torch.from_numpy(np.load(mask_path))
                yield acts, masks.any(1), masks
            return
        self.passes += 1
        self.model.eval()
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)
        cached: list[tuple[Path, Path]] = []
        for i, batch in enumerate(loader):
            masks = batch["box_mask"].bool()
            acts = self._forward(batch["image"])
            if self._tmp is not None:
                base = Path(self._tmp.name) / f"{i:06d}"
                np.save(base.with_suffix(".acts.npy"), acts.numpy())
                np.save(base.with_suffix(".mask.npy"), masks.numpy())
                cached.append((base.with_suffix(".acts.npy"), base.with_suffix(".mask.npy")))
            yield acts, masks.any(1), masks
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
    **kw: Any,
) -> ConceptCounts:
    """:func:`count_concepts` on ``layer`` (default ``model.dissect_layers[0]``).

    Streams the boxed dataset (items with ``image``, ``box_mask`` (8, S, S)) through the
    model with an :class:`ActivationStream`: dataset thresholds take 4 passes (3 in exact
    mode: range, values, counting), ``threshold="batch"`` one; ``cache=True`` runs the model once and keeps the
    activations in a temporary folder on disk instead. ``q`` defaults to
    :func:`default_q`. Other keyword arguments go to :func:`count_concepts`.
    """
    if layer is None:
        layers = getattr(model, "dissect_layers", None)
        if not layers:
            raise ValueError("pass layer= or give the model a dissect_layers attribute")
        layer = layers[0]
    q = default_q(model) if q is None else q
    cache = cache and kw.get("threshold", "dataset") == "dataset"  # batch mode: one pass
    stream = ActivationStream(model, boxed_dataset, layer, batch_size, device, autocast, cache)
    try:
        result = count_concepts(stream, q, **kw)
    finally:
        stream.close()
    log.info("dissected %s: %d forward passes", layer, stream.passes)
    return result
