"""The four losses of the study as one unified weighted binary cross-entropy.

Khakzar, Li et al. (2022), Sec. 3.2, write every loss for one class (output) $c$ as

$$ L_c = -\\sum_i \\left[ w^+_{ic}\\, y_{ic} \\log p_{ic}
          + w^-_{ic}\\, (1 - y_{ic}) \\log (1 - p_{ic}) \\right],
   \\qquad p = \\sigma(x), $$

with $N^+_c$ / $N^-_c$ the numbers of positive / negative training samples of class $c$:

| loss | $w^+$ | $w^-$ |
|---|---|---|
| ``bce`` | 1 | 1 |
| ``wbce`` | $N^-/(N^+ + N^-)$ | $N^+/(N^+ + N^-)$ |
| ``focal`` (Lin et al. 2017) | $\\alpha (1-p)^\\gamma$ | $(1-\\alpha) p^\\gamma$ |
| ``cbfocal`` (Cui et al. 2019) | $\\frac{1-\\beta}{1-\\beta^{N^+}} (1-p)^\\gamma$ | $\\frac{1-\\beta}{1-\\beta^{N^-}} p^\\gamma$ |

defaults $\\alpha = 0.25$, $\\gamma = 2$, $\\beta = 0.9999$.

Choices made here (``variant="paper"``):

- **Reduction** (``reduction="auto"``, the default): the paper's sum over samples and
  classes, $\\sum_{i,c}$, as its equation writes it. The mean $\\frac{1}{BK}\\sum_{i,c}$
  (``reduction="mean"``) differs by the constant factor $BK$ only, but that factor is
  not harmless under Adam: Adam's $\\epsilon = 10^{-8}$ and the weight-decay term
  $\\lambda w$ ($\\lambda = 10^{-6}$) are added to the gradient at a fixed scale. With
  NIH's counts the paper CB-Focal weights $1/E$ are ~1e-4, the *mean* loss is ~3e-5 and
  the median parameter gradient of a network ~1e-8, i.e. at Adam's $\\epsilon$: the
  updates are then damped and dominated by weight decay. The sum is $BK$ (7,168 at
  batch 512 x 14) times larger and trains.
- **Gradients** flow through the focal factors $(1-p)^\\gamma$, $p^\\gamma$ as in the
  standard focal loss (``torchvision.ops.sigmoid_focal_loss``).
- **Numerics**: $\\log p = \\log\\sigma(x)$, $\\log(1-p) = \\log\\sigma(-x)$ and
  $(1-p)^\\gamma = \\exp(\\gamma \\log\\sigma(-x))$, computed in float32 from the logits:
  finite values and gradients at $|x| = 100$ and under bf16 autocast.
- **Empty class** ($N^+_c = 0$ or $N^-_c = 0$): ``wbce`` and ``cbfocal`` raise
  ``ValueError`` naming the class index, because the weights are degenerate
  ($w^- = 0$) or infinite ($1/(1-\\beta^0)$). With ``allow_empty=True`` the counts are
  clipped to at least 1 before computing the weights (as if one sample existed), which
  keeps every weight finite and positive. ``bce`` and ``focal`` do not use the counts.

``variant="official"`` reproduces the authors' code (CAMP-eXplain-AI/imba-explain,
mmcls-style losses), everything averaged over batch x classes (``reduction="auto"``
means ``"mean"`` here; ``"sum"`` / ``"mean"`` force either for both variants):

- ``bce``: as the paper.
- ``wbce``: per batch, $w^+_c = \\#\\text{neg}_c / (\\#\\text{pos}_c + 10^{-6})$, $w^- = 1$
  (``pos_weight`` of ``binary_cross_entropy_with_logits``); when the batch has no
  positive or no negative of class $c$, $w^+_c$ falls back to
  $\\min_k N^-_k / N^+_k$ over all classes of the training set (the code's
  ``min_global_pos_weight``; ``fallback="class"`` uses the class's own $N^-_c/N^+_c$).
  Under DistributedDataParallel "the batch" is each process's share, as in the code.
- ``focal``: the paper's weights times ``loss_weight`` = 10.
- ``cbfocal``: with effective numbers $E = (1-\\beta^N)/(1-\\beta)$ the two weights are
  normalised to sum 1: $w^+ = \\alpha_c (1-p)^\\gamma$, $w^- = (1-\\alpha_c) p^\\gamma$ with
  $\\alpha_c = \\frac{1/E^+}{1/E^+ + 1/E^-} = \\frac{E^-}{E^+ + E^-}$, times
  ``loss_weight`` = 50.

All constant weights are registered buffers, so ``loss.to(device)`` moves them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

VARIANTS = ("paper", "official")
REDUCTIONS = ("auto", "sum", "mean")
AUTO_REDUCTION = {"paper": "sum", "official": "mean"}
"""What ``reduction="auto"`` means per variant: the paper's equation sums over samples,
the authors' code averages over batch x classes."""

Counts = Sequence[float] | np.ndarray | torch.Tensor


def _as_counts(values: Counts, what: str) -> np.ndarray:
    array = np.asarray(
        values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values,
        dtype=np.float64,
    ).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{what} is empty; give one count per output")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{what} must be finite and >= 0, got {array.tolist()}")
    return array


def effective_number(counts: np.ndarray, beta: float) -> np.ndarray:
    """Effective number of samples (Cui et al., CVPR 2019): $E_N = (1-\\beta^N)/(1-\\beta)$.

    Computed as ``-expm1(N log beta) / (1 - beta)`` for precision near $\\beta = 1$;
    $\\beta = 0$ gives $E = 1$ for $N \\geq 1$.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = np.asarray(counts, dtype=np.float64)
    if beta == 0.0:
        return np.where(counts > 0, 1.0, 0.0)
    return -np.expm1(counts * math.log(beta)) / (1.0 - beta)


def resolve_reduction(reduction: str, variant: str) -> str:
    """``"sum"`` or ``"mean"`` for a ``reduction`` setting (``auto``: :data:`AUTO_REDUCTION`).

    Raises:
        ValueError: an unknown reduction or variant, naming the choices.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; choose one of {REDUCTIONS}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown loss variant {variant!r}; choose one of {VARIANTS}")
    return AUTO_REDUCTION[variant] if reduction == "auto" else reduction


class UnifiedWeightedBCE(nn.Module):
    """Base class: $\\sum_{i,c}$ (or $\\frac{1}{BK}\\sum_{i,c}$) of
    $-[w^+ y \\log p + w^- (1-y) \\log(1-p)]$, times ``loss_weight``.

    Subclasses set ``uses_counts`` / ``hyper_defaults`` and implement :meth:`weights`.
    Call as ``loss(logits, targets)`` with both of shape (B, K) (or (B,) when K = 1).
    """

    name: str = "base"
    uses_counts: bool = False
    hyper_defaults: dict[str, dict[str, Any]] = {"paper": {}, "official": {}}

    def __init__(
        self,
        pos_counts: Counts,
        neg_counts: Counts,
        variant: str = "paper",
        reduction: str = "auto",
        **hyper: Any,
    ) -> None:
        super().__init__()
        self.reduction = resolve_reduction(reduction, variant)
        pos = _as_counts(pos_counts, "pos_counts")
        neg = _as_counts(neg_counts, "neg_counts")
        if pos.shape != neg.shape:
            raise ValueError(
                f"pos_counts ({pos.size}) and neg_counts ({neg.size}) differ in length"
            )
        defaults = {"loss_weight": 1.0, "allow_empty": False, **self.hyper_defaults[variant]}
        unknown = sorted(set(hyper) - set(defaults))
        if unknown:
            raise ValueError(
                f"loss {type(self).name!r} (variant {variant!r}) does not take {unknown}; "
                f"accepted hyper-parameters: {sorted(defaults)}"
            )
        self.variant = variant
        self.hyper = {**defaults, **hyper}
        self.num_classes = int(pos.size)
        self.loss_weight = float(self.hyper["loss_weight"])
        if self.uses_counts:
            pos, neg = self._check_empty(pos, neg)
        self.register_buffer("pos_counts", torch.as_tensor(pos, dtype=torch.float32))
        self.register_buffer("neg_counts", torch.as_tensor(neg, dtype=torch.float32))
        self._pos_np, self._neg_np = pos, neg

    def _check_empty(self, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        empty = np.flatnonzero((pos == 0) | (neg == 0))
        if empty.size == 0:
            return pos, neg
        detail = ", ".join(f"class {c} (N+={pos[c]:g}, N-={neg[c]:g})" for c in empty)
        if not self.hyper["allow_empty"]:
            raise ValueError(
                f"loss {self.name!r} needs positives and negatives of every class in the "
                f"training counts; empty: {detail}. Pass allow_empty=True to clip the counts "
                "at 1, or drop the class."
            )
        logger.warning("loss %s: counts clipped at 1 for %s", self.name, detail)
        return np.maximum(pos, 1.0), np.maximum(neg, 1.0)

    def _constant(self, name: str, values: np.ndarray) -> None:
        self.register_buffer(name, torch.as_tensor(values, dtype=torch.float32))

    def weights(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """$(w^+, w^-)$, each broadcastable to (B, K); may depend on the logits."""
        one = logits.new_ones(())
        return one, one

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The unreduced, unscaled loss, shape (B, K), in float32 (or float64 if given)."""
        if logits.dim() == 1 and self.num_classes == 1:
            logits = logits.unsqueeze(1)
        if targets.dim() == 1 and self.num_classes == 1:
            targets = targets.unsqueeze(1)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must have shape (batch, {self.num_classes}), got {tuple(logits.shape)}"
            )
        if targets.shape != logits.shape:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} differs from logits {tuple(logits.shape)}"
            )
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        x = logits.to(dtype)
        y = targets.to(dtype)
        w_pos, w_neg = self.weights(x, y)
        return -(w_pos * y * F.logsigmoid(x) + w_neg * (1.0 - y) * F.logsigmoid(-x))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss: ``loss_weight`` times the sum (or mean) over batch x classes."""
        loss = self.elementwise(logits, targets)
        return self.loss_weight * (loss.sum() if self.reduction == "sum" else loss.mean())

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, reduction={self.reduction!r}, "
            f"classes={self.num_classes}, hyper={self.hyper}"
        )


LOSSES: dict[str, type[UnifiedWeightedBCE]] = {}
"""Registry of loss classes by name."""


def register_loss(
    name: str,
) -> Callable[[type[UnifiedWeightedBCE]], type[UnifiedWeightedBCE]]:
    """Class decorator adding a :class:`UnifiedWeightedBCE` subclass to :data:`LOSSES`."""

    def decorator(cls: type[UnifiedWeightedBCE]) -> type[UnifiedWeightedBCE]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return decorator


def _focal_factors(x: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """$((1-p)^\\gamma, p^\\gamma)$ as $\\exp(\\gamma\\log\\sigma(\\mp x))$ (finite gradients)."""
    if gamma == 0:
        one = x.new_ones(())
        return one, one
    return torch.exp(gamma * F.logsigmoid(-x)), torch.exp(gamma * F.logsigmoid(x))


@register_loss("bce")
class BCELoss(UnifiedWeightedBCE):
    """Binary cross-entropy: $w^+ = w^- = 1$ (both variants)."""


@register_loss("wbce")
class WeightedBCELoss(UnifiedWeightedBCE):
    """Weighted BCE. Paper: $w^+ = N^-/(N^+ + N^-)$, $w^- = N^+/(N^+ + N^-)$ (constants).

    Official: per batch $w^+_c = \\#neg_c/(\\#pos_c + 10^{-6})$, $w^- = 1$, with the
    fallback $\\min_k N^-_k/N^+_k$ (``fallback="global_min"``) or $N^-_c/N^+_c$
    (``fallback="class"``) for a class without positives or negatives in the batch.
    """

    uses_counts = True
    hyper_defaults = {"paper": {}, "official": {"fallback": "global_min"}}
    EPS = 1e-6

    def __init__(
        self,
        pos_counts: Counts,
        neg_counts: Counts,
        variant: str = "paper",
        reduction: str = "auto",
        **hyper: Any,
    ):
        super().__init__(pos_counts, neg_counts, variant, reduction, **hyper)
        pos, neg = self._pos_np, self._neg_np
        if variant == "paper":
            self._constant("w_pos", neg / (pos + neg))
            self._constant("w_neg", pos / (pos + neg))
        else:
            ratio = neg / pos
            fallback = self.hyper["fallback"]
            if fallback == "global_min":
                self._constant("fallback_pos_weight", np.full_like(ratio, ratio.min()))
            elif fallback == "class":
                self._constant("fallback_pos_weight", ratio)
            else:
                raise ValueError(f"wbce fallback must be 'global_min' or 'class', got {fallback!r}")

    def weights(self, logits: torch.Tensor, targets: torch.Tensor):
        if self.variant == "paper":
            return self.w_pos.to(logits.dtype), self.w_neg.to(logits.dtype)
        n_pos = targets.sum(0)
        n_neg = targets.shape[0] - n_pos
        batch = n_neg / (n_pos + self.EPS)
        usable = (n_pos != 0) & (n_neg != 0)
        w_pos = torch.where(usable, batch, self.fallback_pos_weight.to(logits.dtype))
        return w_pos.detach(), logits.new_ones(())


@register_loss("focal")
class FocalLoss(UnifiedWeightedBCE):
    """Focal loss (Lin et al., ICCV 2017): $w^+ = \\alpha(1-p)^\\gamma$, $w^- = (1-\\alpha)p^\\gamma$.

    Official variant: the same times ``loss_weight`` = 10.
    """

    hyper_defaults = {
        "paper": {"alpha": 0.25, "gamma": 2.0},
        "official": {"alpha": 0.25, "gamma": 2.0, "loss_weight": 10.0},
    }

    def weights(self, logits: torch.Tensor, targets: torch.Tensor):
        alpha = float(self.hyper["alpha"])
        f_pos, f_neg = _focal_factors(logits, float(self.hyper["gamma"]))
        return alpha * f_pos, (1.0 - alpha) * f_neg


@register_loss("cbfocal")
class ClassBalancedFocalLoss(UnifiedWeightedBCE):
    """Class-balanced focal loss (Cui et al., CVPR 2019) with per-class effective numbers.

    Paper: $w^+ = (1-p)^\\gamma / E^+$, $w^- = p^\\gamma / E^-$ with
    $1/E = (1-\\beta)/(1-\\beta^N)$. Official: $w^+ = \\alpha_c (1-p)^\\gamma$,
    $w^- = (1-\\alpha_c) p^\\gamma$, $\\alpha_c = E^-/(E^+ + E^-)$, times ``loss_weight`` = 50.
    """

    uses_counts = True
    hyper_defaults = {
        "paper": {"beta": 0.9999, "gamma": 2.0},
        "official": {"beta": 0.9999, "gamma": 2.0, "loss_weight": 50.0},
    }

    def __init__(
        self,
        pos_counts: Counts,
        neg_counts: Counts,
        variant: str = "paper",
        reduction: str = "auto",
        **hyper: Any,
    ):
        super().__init__(pos_counts, neg_counts, variant, reduction, **hyper)
        beta = float(self.hyper["beta"])
        e_pos = effective_number(self._pos_np, beta)
        e_neg = effective_number(self._neg_np, beta)
        if variant == "paper":
            self._constant("w_pos", 1.0 / e_pos)
            self._constant("w_neg", 1.0 / e_neg)
        else:
            alpha = e_neg / (e_pos + e_neg)
            self._constant("w_pos", alpha)
            self._constant("w_neg", 1.0 - alpha)

    def weights(self, logits: torch.Tensor, targets: torch.Tensor):
        f_pos, f_neg = _focal_factors(logits, float(self.hyper["gamma"]))
        return self.w_pos.to(logits.dtype) * f_pos, self.w_neg.to(logits.dtype) * f_neg


def build_loss(
    name: str,
    pos_counts: Counts,
    neg_counts: Counts,
    variant: str = "paper",
    reduction: str = "auto",
    **hyper: Any,
) -> UnifiedWeightedBCE:
    """Build a registered loss for classes with training counts ``pos_counts``/``neg_counts``.

    Args:
        name: a key of :data:`LOSSES` (``bce``, ``wbce``, ``focal``, ``cbfocal``).
        pos_counts: $N^+$ per output (length K), e.g. ``NIHData.counts("train")[0]``.
        neg_counts: $N^-$ per output.
        variant: ``"paper"`` (the paper's equations) or ``"official"`` (the authors' code).
        reduction: ``"sum"`` or ``"mean"`` over batch x classes; ``"auto"``: the
            variant's own (paper: sum, official: mean; :data:`AUTO_REDUCTION`).
        **hyper: ``alpha``, ``gamma``, ``beta``, ``loss_weight``, ``allow_empty``,
            ``fallback`` (official wbce) where the loss takes them.

    Returns:
        A module called as ``loss(logits, targets)`` returning a scalar.

    Raises:
        KeyError: unknown name. ValueError: bad variant, hyper-parameter or counts.
    """
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; registered losses: {sorted(LOSSES)}")
    return LOSSES[name](pos_counts, neg_counts, variant, reduction, **hyper)
