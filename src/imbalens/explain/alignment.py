"""Feature alignment: how much of a CAM falls inside the radiologists' boxes.

For a CAM :math:`S \\in [0, 1]^{H \\times W}` and the union :math:`M \\in \\{0,1\\}^{H
\\times W}` of one finding's boxes (Khakzar, Li et al. 2022, Sec. 4.2):

$$ \\mathrm{IoBB} = \\frac{\\sum S \\odot M}{\\sum M}, \\qquad
   \\mathrm{IoR} = \\frac{\\sum S \\odot M}{\\sum S} $$

IoBB is a recall-like coverage of the box, IoR a precision-like share of the saliency
that lies inside it. The soft versions use :math:`S` as it is; with ``threshold=t`` the
hard versions use :math:`[S \\ge t]` instead.

**Dead maps.** A CAM that is zero everywhere (after the ReLU and min-max normalisation:
a silent or constant map) has no saliency at all. Both metrics then are 0, as in the
official code (its ``0/0`` gives 0): IoBB's numerator is 0, and IoR, :math:`0/0`, is
*defined* as 0 here. Such maps stay in every mean, and :func:`summarise_alignment`
counts them (``n_dead``) per finding and in total. (Before: IoR was NaN and left out of
the mean while IoBB kept the 0: with 3 of 10 maps dead, mean IoR 0.30 instead of the
official 0.21.) An empty *mask* (no box) still gives NaN: there is no box to align with.

**Which boxes.** Multi-label: one map per (image, boxed finding), that finding's output
against the union of that finding's boxes. Binary task (``boxes``): ``"union"``
(the official code, the default) makes one map per image, the single output against the
union of all the image's boxes; ``"per_finding"`` one row per (image, finding) with that
finding's boxes (the same map repeated). The ``boxes`` column of the tables says which.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from imbalens.data.findings import BOXED_FINDINGS
from imbalens.explain.cam import class_activation_maps
from imbalens.explain.localization import column_names, localization_hook

__all__ = [
    "BOX_MODES",
    "alignment_table",
    "resolve_boxes",
    "soft_iobb",
    "soft_ior",
    "summarise_alignment",
]

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


def _ratio(num: Tensor, den: Tensor, empty: float = float("nan")) -> Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), empty)


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
        float64 Tensor (...); 0 where the map sums to zero (a dead map: 0/0 -> 0, as the
        official code; module docstring).
    """
    s, m = _prepare(cams, masks, threshold)
    sm = s * m
    return _ratio(sm.sum((-2, -1)), s.expand_as(sm).sum((-2, -1)), empty=0.0)


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


BOX_MODES = ("union", "per_finding")


def resolve_boxes(boxes: str, task: str) -> str:
    """``union`` / ``per_finding`` for a setting; ``auto``: binary -> union (official),
    multi-label -> per_finding (each finding has its own output).

    Raises:
        ValueError: unknown setting, or ``union`` for the multi-label task.
    """
    if boxes == "auto":
        return "union" if task == "binary" else "per_finding"
    if boxes not in BOX_MODES:
        raise ValueError(f"unknown analysis.binary_boxes={boxes!r}: choose one of {BOX_MODES}")
    if boxes == "union" and task != "binary":
        raise ValueError(
            "analysis.binary_boxes=union is for the binary task (one output); the "
            "multi-label task compares each finding's output with its own boxes"
        )
    return boxes


COLUMNS = ["image", "finding", "output", "iobb", "ior", "dead", "boxes"]


def _batch_rows(
    cams: Tensor, batch: dict[str, Tensor], outputs: list[str], col: list[int], boxes: str,
    names: Sequence[str] | None, threshold: float | None = None,
    exact: Callable[[str, str, int], Tensor | None] | None = None,
) -> list[dict[str, object]]:  # fmt: skip
    """Rows of one batch: ``cams`` (B, K', H, W); ``col[f]`` the CAM column of finding f."""
    has_box = batch["has_box"].bool()
    index = batch["index"].tolist()
    if boxes == "union":
        b_idx = torch.nonzero(has_box.any(1), as_tuple=True)[0]
        maps = cams[b_idx, col[0]]
        masks = batch["box_mask"][b_idx].bool().any(1)
        found = [
            "|".join(BOXED_FINDINGS[f] for f in torch.nonzero(has_box[b]).flatten().tolist())
            for b in b_idx.tolist()
        ]
        outs = [outputs[0]] * len(found)
        row_findings = [torch.nonzero(has_box[b]).flatten().tolist() for b in b_idx.tolist()]
    else:
        b_idx, f_idx = torch.nonzero(has_box, as_tuple=True)
        maps = cams[b_idx, torch.tensor([col[f] for f in f_idx.tolist()], dtype=torch.long)]
        masks = batch["box_mask"][b_idx, f_idx]
        found = [BOXED_FINDINGS[f] for f in f_idx.tolist()]
        outs = [outputs[f] for f in f_idx.tolist()]
        row_findings = [[f] for f in f_idx.tolist()]
    if b_idx.numel() == 0:
        return []
    iobb = soft_iobb(maps, masks, threshold).tolist()
    ior = soft_ior(maps, masks, threshold).tolist()
    dead = (maps.double().sum((-2, -1)) == 0).tolist()
    images = [names[index[b]] if names is not None else str(index[b]) for b in b_idx.tolist()]
    extra = localization_hook(maps, masks, exact, images, row_findings)
    rows = []
    for n, b in enumerate(b_idx.tolist()):
        i = index[b]
        rows.append(
            {
                "image": names[i] if names is not None else i,
                "finding": found[n],
                "output": outs[n],
                "iobb": iobb[n],
                "ior": ior[n],
                "dead": bool(dead[n]),
                "boxes": boxes,
                **{c: v[n] for c, v in extra.items()},
            }
        )
    return rows


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
    boxes: str = "auto",
    exact: Callable[[str, str, int], Tensor | None] | None = None,
) -> pd.DataFrame:
    """One row per map: image, finding, output, iobb, ior, dead, boxes.

    Multi-label: one map per (boxed image, finding with a box), the CAM of the finding's
    own output against that finding's boxes. Binary (single output "Unhealthy"):
    ``boxes="union"`` (default, official) one map per image against the union of all its
    boxes, ``finding`` naming its findings joined by ``|``; ``"per_finding"`` as the
    multi-label task. CAMs from :func:`imbalens.explain.cam.class_activation_maps` with
    ``normalise``. Items must be dicts with ``image``, ``box_mask`` (8, S, S),
    ``has_box`` (8,), ``index``; the dataset's ``.names`` give the image names
    (``Subset`` of such a dataset works). ``dead``: the map is zero everywhere.

    Args:
        autocast: an optional context-manager factory (called with no arguments) used
            around the forward pass, e.g. a bf16 autocast.
        threshold: None (soft metrics) or t (hard, ``[S >= t]``).
        boxes: ``auto`` | ``union`` | ``per_finding`` (:func:`resolve_boxes`).
        exact: optional ``(image, finding, size) -> (S, S) bool mask`` of the lesion's
            exact pixels (the phantom); adds the ``*_mask`` columns of
            :func:`imbalens.explain.localization.alignment_columns` (a union map against
            the union of its findings' masks).
    """
    boxes = resolve_boxes(boxes, task)
    outputs = [_output_for(f, class_names, task) for f in BOXED_FINDINGS]
    out_idx = sorted({list(class_names).index(o) for o in outputs})
    where = {k: j for j, k in enumerate(out_idx)}
    col = [where[list(class_names).index(o)] for o in outputs]
    base = getattr(boxed_dataset, "dataset", boxed_dataset)
    names = getattr(base, "names", None)
    rows: list[dict[str, object]] = []
    model.eval()
    for batch in DataLoader(boxed_dataset, batch_size=batch_size, shuffle=False):
        images = batch["image"].to(device)
        ctx = autocast() if autocast is not None else contextlib.nullcontext()
        with ctx:
            cams = class_activation_maps(model, images, classes=out_idx, normalise=normalise)
        rows += _batch_rows(cams.float().cpu(), batch, outputs, col, boxes, names, threshold, exact)
    log.info("alignment: %d maps (%s)", len(rows), boxes)
    return pd.DataFrame(rows, columns=[*COLUMNS, *column_names(exact)])


def summarise_alignment(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and n of iobb and ior by finding, plus an "all" row (NaN skipped).

    Columns: finding, iobb_mean, iobb_std, iobb_n, ior_mean, ior_std, ior_n, n_dead
    (dead maps, counted in the means as 0), boxes (``union`` / ``per_finding``). A union
    map ("A|B") counts in the rows of A and of B, once in "all".
    """
    df = df.assign(finding=df["finding"].astype(str))
    if "dead" not in df:
        df = df.assign(dead=False)
    per = df.assign(finding=df["finding"].str.split("|")).explode("finding")
    both = pd.concat([per, df.assign(finding="all")], ignore_index=True)
    groups = both.groupby("finding", sort=False)
    agg = groups[["iobb", "ior"]].agg(["mean", "std", "count"])
    agg.columns = [f"{m}_{s.replace('count', 'n')}" for m, s in agg.columns]
    agg["n_dead"] = groups["dead"].sum().astype(int)
    modes = sorted(set(df["boxes"])) if "boxes" in df else []
    agg["boxes"] = "+".join(modes) if modes else "per_finding"
    order = [f for f in BOXED_FINDINGS if f in agg.index] + ["all"]
    order += [f for f in agg.index if f not in order]
    return agg.loc[[f for f in order if f in agg.index]].reset_index()
