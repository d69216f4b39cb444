"""Localisation metrics that a diffuse map cannot game: pointing game, hard IoU at a budget.

The paper's soft IoBB and IoR (:mod:`imbalens.explain.alignment`) use the saliency values
themselves, so a monotone flattening of a fixed map, :math:`S \\mapsto S^{\\gamma}` with
:math:`\\gamma < 1` (same peak, same pixel ranking), raises IoBB and lowers IoR without
the map pointing anywhere else. The metrics here depend on the map only through its
*ranking* of pixels, or its maximum (Saporta et al., "Benchmarking saliency methods for
chest X-ray interpretation", Nat. Mach. Intell. 2022 (CheXlocalize); Zhang et al.,
"Top-down neural attention by excitation backprop", ECCV 2016):

- **pointing game** (hit): the map's maximum lies in the mask :math:`M`. With ties the
  score is the share of maximal pixels inside :math:`M`, the expected hit under random
  tie-breaking, so a uniform map scores the mask's area fraction, not 1:

  $$ \\mathrm{hit} = \\frac{|\\{p : S_p = \\max S\\} \\cap M|}{|\\{p : S_p = \\max S\\}|} $$

- **hard IoU / IoBB at a budget**: keep the :math:`n` highest pixels,
  :math:`n = \\lceil k\\% \\cdot HW \\rceil` (``topk``, k a parameter, default 5) or
  :math:`n = |M|` (``area``: the mask's own area as budget), ties at the n-th value
  sharing the rest of the budget (:func:`budget_mask`: a uniform map scores
  :math:`n / HW` at hard IoBB, not 1), then

  $$ \\mathrm{IoU} = \\frac{|B \\cap M|}{|B \\cup M|}, \\qquad
     \\mathrm{IoBB}_{hard} = \\frac{|B \\cap M|}{|M|} ; $$

- **Otsu**: :math:`B = [S > t_{Otsu}]` with Otsu's (1979) threshold
  (:func:`skimage.filters.threshold_otsu`) of each map; NaN for a constant map, which
  no threshold splits.

Every metric is NaN where the mask is empty. On the phantom the same metrics are also
computed against each lesion's exact pixel mask (columns with suffix ``_mask``;
:func:`imbalens.data.synth.lesion_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from skimage.filters import threshold_otsu
from torch import Tensor

from imbalens.data.findings import BOXED_FINDINGS

__all__ = [
    "COLUMNS",
    "alignment_columns",
    "budget_mask",
    "column_names",
    "lesion_masks_of",
    "localization_hook",
    "gaussian_map",
    "hard_overlaps",
    "localization_metrics",
    "otsu_mask",
    "pointing_game",
    "power_transform_table",
    "summarise_localization",
]

COLUMNS: tuple[str, ...] = (
    "pointing",
    "topk_iou",
    "topk_iobb",
    "area_iou",
    "otsu_iou",
    "otsu_iobb",
)
"""Columns :func:`localization_metrics` adds to ``alignment.csv`` (box masks)."""

MASK_SUFFIX = "_mask"


def _check(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.as_tensor(maps)
    s = s if s.is_floating_point() else s.double()  # float32 CAMs stay float32 (ranking)
    m = torch.as_tensor(masks).bool()
    if s.shape[-2:] != m.shape[-2:]:
        raise ValueError(
            f"maps {tuple(s.shape)} and masks {tuple(m.shape)} differ in H, W: "
            "upsample the maps to the mask (input) resolution first"
        )
    return s, m.expand_as(s)


def _nan_where_empty(value: Tensor, masks: Tensor) -> Tensor:
    return torch.where(masks.flatten(-2).any(-1), value, torch.nan)


def pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Hit = share of the map's maximal pixels that lie in the mask (module docstring).

    Args:
        maps: (..., H, W) saliency maps; masks: (..., H, W) bool, broadcastable.

    Returns:
        float64 (...): 1 for a unique maximum inside the mask, 0 outside; NaN for an
        empty mask.
    """
    s, m = _check(maps, masks)
    flat, mf = s.flatten(-2), m.flatten(-2)
    top = flat == flat.amax(-1, keepdim=True)
    hit = (top & mf).sum(-1).double() / top.sum(-1).clamp_min(1).double()
    return _nan_where_empty(hit, m)


def budget_mask(maps: Tensor, n: Tensor | int) -> Tensor:
    """The top-``n`` pixels of each map as weights in [0, 1], ties shared fairly.

    With :math:`t` the n-th largest value, pixels above :math:`t` weigh 1 and the
    :math:`m` pixels equal to :math:`t` share what is left of the budget, each weighing
    :math:`(n - |S > t|) / m`: the expected selection under random tie-breaking. So the
    weights sum to exactly ``n`` and a constant map selects every pixel with weight
    n / HW (not all of them), while a map without ties gives a plain 0/1 mask.

    Args:
        maps: (..., H, W). n: pixels in the budget, an int or a (...) tensor (>= 1).

    Returns:
        float64 (..., H, W) weights.
    """
    s = torch.as_tensor(maps)
    flat = s.flatten(-2)
    hw = flat.shape[-1]
    if isinstance(n, int):  # one budget for all maps: the n-th largest by kthvalue
        n = min(max(n, 1), hw)
        t = flat.kthvalue(hw - n + 1, dim=-1, keepdim=True).values
        n_t = torch.full(flat.shape[:-1], n, dtype=torch.long)
    else:
        n_t = torch.as_tensor(n, dtype=torch.long).clamp(1, hw).expand(flat.shape[:-1])
        ordered = flat.sort(-1, descending=True).values
        t = ordered.gather(-1, (n_t - 1).unsqueeze(-1))
    above = flat > t
    tied = flat == t
    share = (n_t - above.sum(-1)).double() / tied.sum(-1).clamp_min(1).double()
    weights = above.double() + tied.double() * share.unsqueeze(-1)
    return weights.reshape(s.shape)


def otsu_mask(maps: Tensor) -> tuple[Tensor, Tensor]:
    """B = [S > Otsu threshold] per map, and a (...) bool telling where it is defined.

    A constant map (no two grey levels) has no Otsu split: ``defined`` is False there.
    """
    s = torch.as_tensor(maps).double()
    arr = s.reshape(-1, *s.shape[-2:]).numpy()
    out = np.zeros(arr.shape, dtype=bool)
    ok = np.zeros(arr.shape[0], dtype=bool)
    for i, a in enumerate(arr):
        if np.isfinite(a).all() and a.max() > a.min():
            out[i] = a > threshold_otsu(a)
            ok[i] = True
    return torch.from_numpy(out).reshape(s.shape), torch.from_numpy(ok).reshape(s.shape[:-2])


def hard_overlaps(binary: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    r"""Hard IoU = |B & M| / |B | M| and IoBB = |B & M| / |M|; NaN for an empty mask.

    ``binary`` may hold weights in [0, 1] (:func:`budget_mask` with ties): then
    :math:`|B \cap M| = \sum_p B_p M_p` and :math:`|B \cup M| = \sum B + |M| - |B \cap M|`.
    """
    b = torch.as_tensor(binary).double()
    m = torch.as_tensor(masks).bool().expand_as(b)
    inter = (b * m).flatten(-2).sum(-1)
    area = m.flatten(-2).sum(-1).double()
    union = b.flatten(-2).sum(-1) + area - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.nan)
    iobb = torch.where(area > 0, inter / area.clamp_min(1), torch.nan)
    return _nan_where_empty(iou, m), iobb


def localization_metrics(maps: Tensor, masks: Tensor, k: float = 5.0) -> dict[str, Tensor]:
    """Every column of :data:`COLUMNS` for (N, H, W) maps against (N, H, W) masks.

    Args:
        k: the ``topk`` budget in percent of the image's pixels (0 < k <= 100).

    Returns:
        ``{column: float64 (N,)}``.
    """
    if not 0.0 < k <= 100.0:
        raise ValueError(f"top-k budget k={k} must be a percentage in (0, 100]")
    s, m = _check(maps, masks)
    hw = s.shape[-1] * s.shape[-2]
    out = {"pointing": pointing_game(s, m)}
    top = budget_mask(s, math.ceil(k / 100.0 * hw))
    out["topk_iou"], out["topk_iobb"] = hard_overlaps(top, m)
    area = budget_mask(s, m.flatten(-2).sum(-1))
    out["area_iou"], _ = hard_overlaps(area, m)
    otsu, defined = otsu_mask(s)
    iou, iobb = hard_overlaps(otsu, m)
    out["otsu_iou"] = torch.where(defined, iou, torch.nan)
    out["otsu_iobb"] = torch.where(defined, iobb, torch.nan)
    return out


def alignment_columns(
    maps: Tensor, boxes: Tensor, exact: Tensor | None = None, k: float = 5.0
) -> dict[str, list[float]]:
    """Columns for ``alignment.csv``: :data:`COLUMNS` against the box masks and, when
    ``exact`` (N, H, W) lesion masks are given (phantom), the same plus soft ``iobb`` and
    ``ior`` against them with the suffix ``_mask`` (rows with an empty exact mask: NaN).
    """
    cols = {c: v.tolist() for c, v in localization_metrics(maps, boxes, k).items()}
    if exact is not None:
        from imbalens.explain.alignment import soft_iobb, soft_ior

        e = torch.as_tensor(exact).bool()
        more = localization_metrics(maps, e, k)
        more["iobb"] = torch.where(e.flatten(-2).any(-1), soft_iobb(maps, e), torch.nan)
        more["ior"] = torch.where(e.flatten(-2).any(-1), soft_ior(maps, e), torch.nan)
        cols.update({f"{c}{MASK_SUFFIX}": v.tolist() for c, v in more.items()})
    return cols


def column_names(exact: object | None = None) -> list[str]:
    """Names of the columns :func:`alignment_columns` adds (with ``_mask`` ones when
    ``exact`` is not None)."""
    names = list(COLUMNS)
    if exact is not None:
        names += [f"{c}{MASK_SUFFIX}" for c in (*COLUMNS, "iobb", "ior")]
    return names


def localization_hook(
    maps: Tensor,
    masks: Tensor,
    exact: Callable[[str, str, int], Tensor | None] | None,
    images: Sequence[str],
    findings: Sequence[Sequence[int]],
) -> dict[str, list[float]]:
    """:func:`alignment_columns` for one batch of :func:`~imbalens.explain.alignment.
    alignment_table`: maps (n, S, S) of ``images`` against box ``masks``; map j's exact
    mask is the union of ``exact(images[j], finding, S)`` over its boxed ``findings[j]``
    (indices into ``BOXED_FINDINGS``; None from ``exact`` means an empty mask)."""
    if exact is None:
        return alignment_columns(maps, masks)
    size = int(maps.shape[-1])
    got = []
    for name, fs in zip(images, findings, strict=True):
        m = torch.zeros(size, size, dtype=torch.bool)
        for f in fs:
            one = exact(name, BOXED_FINDINGS[f], size)
            if one is not None:
                m |= torch.as_tensor(one).bool()
        got.append(m)
    return alignment_columns(maps, masks, torch.stack(got).bool())


def lesion_masks_of(data: Any) -> Callable[[str, str, int], Tensor | None] | None:
    """The exact lesion masks of ``data`` (an NIHData with ``root``) when it is a phantom
    with a masks file (:class:`imbalens.data.synth.LesionMasks`), else None."""
    from imbalens import runfolder as rf
    from imbalens.data.synth import LesionMasks

    root = getattr(data, "root", None)
    if root is None or not (Path(root) / rf.PHANTOM_MASKS).is_file():
        return None
    masks = LesionMasks(root)

    def exact(image: str, finding: str, size: int) -> Tensor | None:
        m = masks(image, finding, size)
        return None if m is None else torch.from_numpy(m)

    return exact


def summarise_localization(df: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and n (NaN skipped) of each metric column by finding, plus an "all" row.

    Columns: finding, then ``<metric>_mean``, ``<metric>_n`` for every metric of
    :data:`COLUMNS` (and its ``_mask`` variant) present in ``df``, or of ``columns``.
    """
    if columns is None:
        wanted = [*COLUMNS, *(f"{c}{MASK_SUFFIX}" for c in (*COLUMNS, "iobb", "ior"))]
        columns = [c for c in wanted if c in df.columns]
    parts = [df.assign(finding=df["finding"].astype(str)), df.assign(finding="all")]
    both = pd.concat(parts, ignore_index=True)
    agg = both.groupby("finding", sort=False)[list(columns)].agg(["mean", "count"])
    agg.columns = [f"{m}_{s.replace('count', 'n')}" for m, s in agg.columns]
    order = [f for f in BOXED_FINDINGS if f in agg.index] + ["all"]
    order += [f for f in agg.index if f not in order]
    return agg.loc[order].reset_index()


def gaussian_map(
    size: int = 100, sigma: float = 15.0, centre: tuple[float, float] | None = None
) -> Tensor:
    """An isotropic Gaussian :math:`\\exp(-\\|p - c\\|^2 / 2\\sigma^2)` on a size x size
    grid of pixel centres (peak 1; centre default the image centre)."""
    cy, cx = centre if centre is not None else (size / 2, size / 2)
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float64) + 0.5,
        torch.arange(size, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))


def power_transform_table(
    gammas: Sequence[float] = (1.0, 0.5, 0.25),
    size: int = 100,
    sigma: float = 15.0,
    box: tuple[int, int, int, int] = (30, 30, 70, 70),
    k: float = 5.0,
) -> pd.DataFrame:
    """The diffuse-map experiment of issue #9: one Gaussian map S, one box (x0, y0, x1,
    y1, pixel edges), and S**gamma for each gamma: soft IoBB / IoR against the pointing
    game and the hard metrics. One row per gamma.
    """
    from imbalens.explain.alignment import soft_iobb, soft_ior

    x0, y0, x1, y1 = box
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    base = gaussian_map(size, sigma)
    rows: list[Mapping[str, float]] = []
    for g in gammas:
        s = (base**g)[None]
        m = localization_metrics(s, mask[None], k)
        rows.append(
            {
                "gamma": float(g),
                "soft_iobb": float(soft_iobb(s, mask[None])[0]),
                "soft_ior": float(soft_ior(s, mask[None])[0]),
                **{c: float(v[0]) for c, v in m.items()},
            }
        )
    return pd.DataFrame(rows)
