"""Class activation maps (CAM) and a general Grad-CAM, batched, in torch.

CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016)
for a network that ends in global average pooling (GAP) and a linear head: with
feature maps :math:`A \\in \\mathbb{R}^{C \\times h \\times w}` of the last convolutional
layer and head weights :math:`W \\in \\mathbb{R}^{K \\times C}`,

$$ \\mathrm{CAM}_k = \\mathrm{norm}\\Big(\\mathrm{ReLU}\\big(\\textstyle\\sum_c W_{kc} A_c\\big)\\Big) $$

where ``norm`` is a min-max rescaling to [0, 1] of each map and a bilinear upsampling
(``align_corners=False``) to the input size. All K classes come from one forward pass.
The bias :math:`b_k` would add a constant to the map before ReLU; the study (and the
official code) leave it out, and for any map whose minimum is >= 0 it disappears in the
min-max step anyway.

Grad-CAM (Selvaraju et al., ICCV 2017) works for any layer of any model: channel weights
are the spatial mean of the gradient of the class logit :math:`y_k`,

$$ \\alpha_{kc} = \\frac{1}{hw} \\sum_{ij} \\frac{\\partial y_k}{\\partial A_{cij}}, \\qquad
   \\mathrm{GradCAM}_k = \\mathrm{norm}\\Big(\\mathrm{ReLU}\\big(\\textstyle\\sum_c
   \\alpha_{kc} A_c\\big)\\Big). $$

For a GAP+linear head at the last layer :math:`\\alpha_{kc} = W_{kc}/(hw)`, so Grad-CAM
equals CAM up to a positive scale, i.e. exactly after min-max.

Normalisation (``normalise``):

- ``"feature"`` (default, like the official code of Khakzar, Li et al. 2022): min-max at
  the feature resolution, then bilinear upsampling; values stay in [0, 1] but the
  upsampled map's extremes need not reach exactly 0 and 1.
- ``"input"``: upsample first, then min-max at the input resolution (what the
  ``grad-cam`` package ends with: it rescales again after resizing).

A constant map (max == min, e.g. all zero after ReLU) becomes all zeros, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NORMALISATIONS",
    "GradCAM",
    "class_activation_maps",
    "get_module",
    "minmax",
]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``model`` with dotted name ``name`` (``"layer4"``, ``"fc"``).

    Raises:
        KeyError: naming the missing module and a few that exist.
    """
    modules = dict(model.named_modules())
    if name not in modules:
        known = ", ".join(n for n in list(modules)[:12] if n)
        raise KeyError(f"model {type(model).__name__} has no module {name!r} (e.g. {known}, ...)")
    return modules[name]


def minmax(maps: Tensor) -> Tensor:
    """Min-max rescale each map over its last two dimensions to [0, 1].

    $$ \\hat{m} = (m - \\min m) / (\\max m - \\min m) $$ and 0 where max == min.
    """
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    hi = flat.amax(-1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1), 0.0)
    return out.view_as(maps)


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return up.reshape(*lead, *size)


def _norm_feature(maps: Tensor, size: tuple[int, int]) -> Tensor:
    return _upsample(minmax(maps), size).clamp_(0.0, 1.0)


def _norm_input(maps: Tensor, size: tuple[int, int]) -> Tensor:
    return minmax(_upsample(maps, size))


NORMALISATIONS: dict[str, Callable[[Tensor, tuple[int, int]], Tensor]] = {
    "feature": _norm_feature,
    "input": _norm_input,
}
"""Where the min-max step happens: ``feature`` (then upsample) or ``input`` (after)."""


def _normaliser(name: str) -> Callable[[Tensor, tuple[int, int]], Tensor]:
    if name not in NORMALISATIONS:
        raise ValueError(f"unknown normalise={name!r}: choose one of {', '.join(NORMALISATIONS)}")
    return NORMALISATIONS[name]


def _class_index(classes: int | Sequence[int] | Tensor | None, k: int) -> Tensor | None:
    if classes is None:
        return None
    idx = torch.as_tensor([classes] if isinstance(classes, int) else classes, dtype=torch.long)
    if idx.ndim != 1 or (idx.numel() and (idx.min() < 0 or idx.max() >= k)):
        raise ValueError(f"classes must be output indices in [0, {k}), got {classes!r}")
    return idx


class _Capture:
    """Forward hook that keeps the output of one module."""

    def __init__(self) -> None:
        self.output: Tensor | None = None

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"hooked module {type(module).__name__} must return a Tensor")
        self.output = output


@torch.no_grad()
def class_activation_maps(
    model: nn.Module,
    images: Tensor,
    classes: int | Sequence[int] | Tensor | None = None,
    layer: str | None = None,
    head: str | None = None,
    normalise: str = "feature",
) -> Tensor:
    """CAMs of all (or the selected) classes from one forward pass, in [0, 1].

    $$ \\mathrm{CAM}_k = \\mathrm{norm}(\\mathrm{ReLU}(\\sum_c W_{kc} A_c)) $$
    (Zhou et al. 2016), ``A`` the output of ``layer`` (default ``model.cam_layer``), ``W``
    the weight of the ``nn.Linear`` named ``head`` (default ``model.head``). Valid only
    when ``layer`` feeds global average pooling and then the head directly; use
    :class:`GradCAM` otherwise. See the module docstring for ``normalise``.

    Args:
        model: the network (its mode is left as it is; call ``model.eval()`` first).
        images: (B, 3, H, W) input batch.
        classes: output indices to return (default all K), in the given order.
        layer, head: dotted module names overriding the model's attributes.
        normalise: ``"feature"`` or ``"input"``.

    Returns:
        float32 Tensor (B, K', H, W) on the images' device.

    Raises:
        KeyError: unknown module names; ValueError: bad ``classes``/``normalise``;
        TypeError: the head is not an ``nn.Linear``.
    """
    norm = _normaliser(normalise)
    layer = layer or getattr(model, "cam_layer", None)
    head = head or getattr(model, "head", None)
    if layer is None or head is None:
        raise ValueError("pass layer= and head= or give the model cam_layer and head attributes")
    linear = get_module(model, head)
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"head {head!r} is {type(linear).__name__}, expected nn.Linear")
    capture = _Capture()
    handle = get_module(model, layer).register_forward_hook(capture)
    try:
        model(images)
    finally:
        handle.remove()
    feats = capture.output
    assert feats is not None
    weight = linear.weight.detach().float()
    idx = _class_index(classes, weight.shape[0])
    if idx is not None:
        weight = weight[idx.to(weight.device)]
    if feats.shape[1] != weight.shape[1]:
        raise ValueError(
            f"layer {layer!r} has {feats.shape[1]} channels but head {head!r} takes "
            f"{weight.shape[1]} inputs: CAM needs the layer that feeds the GAP+linear head"
        )
    with torch.autocast(feats.device.type, enabled=False):  # the maps in fp32 always
        cams = torch.einsum("kc,bchw->bkhw", weight, feats.float()).relu_()
        return norm(cams, tuple(images.shape[-2:]))


class GradCAM:
    """Grad-CAM for any layer of any model, as a context manager.

    $$ \\alpha_{kc} = \\mathrm{mean}_{ij}\\, \\partial y_k / \\partial A_{cij}, \\quad
       \\mathrm{GradCAM}_k = \\mathrm{norm}(\\mathrm{ReLU}(\\sum_c \\alpha_{kc} A_c)) $$
    (Selvaraju et al. 2017). The forward hook is registered on ``__enter__`` and removed
    on ``__exit__``. One forward pass per call, one backward pass per requested class.

    Example:
        >>> with GradCAM(model, "layer3") as gc:  # doctest: +SKIP
        ...     maps = gc(images, classes=[0, 4])  # (B, 2, H, W)
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module, normalise: str = "feature"):
        self.model = model
        self.layer = (
            get_module(model, target_layer) if isinstance(target_layer, str) else target_layer
        )
        self.norm = _normaliser(normalise)
        self._capture = _Capture()
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> GradCAM:
        self._handle = self.layer.register_forward_hook(self._capture)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._capture.output = None

    def __call__(
        self, images: Tensor, classes: int | Sequence[int] | Tensor | None = None
    ) -> Tensor:
        """Maps (B, K', H, W) in [0, 1] for the output indices ``classes`` (default all)."""
        if self._handle is None:
            raise RuntimeError("use GradCAM as a context manager: `with GradCAM(...) as gc:`")
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            logits = self.model(x)
            acts = self._capture.output
            assert acts is not None
            idx = _class_index(classes, logits.shape[1])
            ks = range(logits.shape[1]) if idx is None else idx.tolist()
            maps = []
            for n, k in enumerate(ks):
                (grad,) = torch.autograd.grad(
                    logits[:, k].sum(), acts, retain_graph=n < len(ks) - 1
                )
                alpha = grad.float().mean(dim=(2, 3), keepdim=True)
                maps.append((alpha * acts.detach().float()).sum(1).relu())
        cams = torch.stack(maps, 1)
        return self.norm(cams, tuple(images.shape[-2:]))
