"""Feature alignment: how much of a CAM falls inside the radiologists' boxes.

For a CAM :math:`S \\in [0, 1]^{H \\times W}` and the union :math:`M \\in \\{0,1\\}^{H
\\times W}` of one finding's boxes (Khakzar, Li et al. 2022, Sec. 4.2):

$$ \\mathrm{IoBB} = \\frac{\\sum S \\odot M}{\\sum M}, \\qquad
   \\mathrm{IoR} = \\frac{\\sum S \\odot M}{\\sum S} $$

IoBB is a recall-like coverage of the box, IoR a precision-like share of the saliency
that lies inside it. The soft versions use :math:`S` as it is; with ``threshold=t`` the
hard versions use :math:`[S \\ge t]` instead. A zero denominator (an empty mask for IoBB,
an all-zero map for IoR) gives NaN: the ratio is undefined, and NaN is excluded from
the means of :func:`summarise_alignment` (its ``n`` counts only defined values).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from imbalens.data.findings import BOXED_FINDINGS
from imbalens.explain.cam import class_activation_maps
from imbalens.explain.localization import column_names, localization_hook

__all__ = ["alignment_table", "soft_iobb", "soft_ior", "summarise_alignment"]

log = logging.getLogger(__name__)


def _prepare(cams: Tensor, masks: Tensor, threshold: float | None) -> tuple[Tensor, Tensor]:
    cams = torch.as_tensor(cams)
    masks = torch.as_tensor(masks)
    if cams.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"CAMs {tuple(cams.shape)} and masks {tuple(masks.shape)} differ in H, W: "
            "upsample the CAMs to the mask (input) resolution first"
        )
    s = cams.double()
    if threshold is not None:
        s = (s >= threshold).double()
    return s, masks.double()


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.nan)


def soft_iobb(cams: Tensor, masks: Tensor, threshold: float | None = None) -> Tensor:
    """IoBB = sum(S * M) / sum(M) over the last two dims, element-wise over leading dims.

    Args:
        cams: (..., H, W) maps in [0, 1]; masks: (..., H, W) bool/0-1, broadcastable.
        threshold: None (soft) or t, using [S >= t] (hard IoBB).

    Returns:
        float64 Tensor (...); NaN where the mask is empty.
    """
    s, m = _prepare(cams, masks, threshold)
    return _ratio((s * m).sum((-2, -1)), m.expand_as(s * m).sum((-2, -1)))


def soft_ior(cams: Tensor, masks: Tensor, threshold: float | None = None) -> Tensor:
    """IoR = sum(S * M) / sum(S) over the last two dims, element-wise over leading dims.

    Returns:
        float64 Tensor (...); NaN where the map sums to zero.
    """
    s, m = _prepare(cams, masks, threshold)
    sm = s * m
    return _ratio(sm.sum((-2, -1)), s.expand_as(sm).sum((-2, -1)))


def _output_for(finding: str, class_names: Sequence[str], task: str) -> str:
    if task == "binary":
        if len(class_names) != 1:
            raise ValueError(f"binary task expects one output, got {list(class_names)}")
        return class_names[0]
    if finding not in class_names:
        raise ValueError(
            f"boxed finding {finding!r} has no output among the model's classes "
            f"{list(class_names)}: check data.task / class_names"
        )
    return finding


def alignment_table(
    model: nn.Module,
    boxed_dataset: Dataset,
    class_names: Sequence[str],
    task: str,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    normalise: str = "feature",
    threshold: float | None = None,
    autocast: object | None = None,
    exact: Callable[[str, str, int], Tensor | None] | None = None,
) -> pd.DataFrame:
    """One row per (boxed image, finding with a box): image, finding, output, iobb, ior.

    The CAM is that of the finding's own output (multi-label) or of the single output
    (binary, named "Unhealthy"), computed by :func:`imbalens.explain.cam.class_activation_maps`
    with ``normalise``; the mask is the dataset's ``box_mask`` of that finding.
    Items must be dicts with ``image``, ``box_mask`` (8, S, S), ``has_box`` (8,), ``index``;
    the dataset's ``.names`` give the image names (``Subset`` of such a dataset works).

    Args:
        autocast: an optional context-manager factory (called with no arguments) used
            around the forward pass, e.g. a bf16 autocast.
        exact: optional ``(image, finding, size) -> (S, S) bool mask`` of the lesion's
            exact pixels (the phantom); adds the ``*_mask`` columns of
            :func:`imbalens.explain.localization.alignment_columns`.
    """
    outputs = [_output_for(f, class_names, task) for f in BOXED_FINDINGS]
    out_idx = sorted({list(class_names).index(o) for o in outputs})
    col = {k: j for j, k in enumerate(out_idx)}
    base = getattr(boxed_dataset, "dataset", boxed_dataset)
    names = getattr(base, "names", None)
    rows: list[dict[str, object]] = []
    loader = DataLoader(boxed_dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    for batch in loader:
        images = batch["image"].to(device)
        if autocast is not None:
            with autocast():
                cams = class_activation_maps(model, images, classes=out_idx, normalise=normalise)
        else:
            cams = class_activation_maps(model, images, classes=out_idx, normalise=normalise)
        cams = cams.float().cpu()
        has_box = batch["has_box"].bool()
        b_idx, f_idx = torch.nonzero(has_box, as_tuple=True)
        if b_idx.numel() == 0:
            continue
        c_idx = torch.tensor([col[list(class_names).index(outputs[f])] for f in f_idx.tolist()])
        maps = cams[b_idx, c_idx]
        masks = batch["box_mask"][b_idx, f_idx]
        iobb = soft_iobb(maps, masks, threshold).tolist()
        ior = soft_ior(maps, masks, threshold).tolist()
        index = batch["index"].tolist()
        extra = localization_hook(maps, masks, exact, names, index, b_idx, f_idx)
        for n, (b, f) in enumerate(zip(b_idx.tolist(), f_idx.tolist(), strict=True)):
            i = index[b]
            rows.append(
                {
                    "image": names[i] if names is not None else i,
                    "finding": BOXED_FINDINGS[f],
                    "output": outputs[f],
                    "iobb": iobb[n],
                    "ior": ior[n],
                    **{c: v[n] for c, v in extra.items()},
                }
            )
    log.info("alignment: %d maps", len(rows))
    return pd.DataFrame(
        rows, columns=["image", "finding", "output", "iobb", "ior", *column_names(exact)]
    )


def summarise_alignment(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and n of iobb and ior by finding, plus an "all" row (NaN skipped).

    Columns: finding, iobb_mean, iobb_std, iobb_n, ior_mean, ior_std, ior_n.
    """
    parts = [df.assign(finding=df["finding"].astype(str)), df.assign(finding="all")]
    both = pd.concat(parts, ignore_index=True)
    agg = both.groupby("finding", sort=False)[["iobb", "ior"]].agg(["mean", "std", "count"])
    agg.columns = [f"{m}_{s.replace('count', 'n')}" for m, s in agg.columns]
    order = [f for f in BOXED_FINDINGS if f in agg.index] + ["all"]
    order += [f for f in agg.index if f not in order]
    return agg.loc[order].reset_index()
