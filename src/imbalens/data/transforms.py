"""Image transforms of the study: square resize, train augmentation, ImageNet normalisation.

The paper (Khakzar, Li et al. 2022, Sec. 4) trains with "random crop, horizontal flip,
colour jitter, resize to 224x224" and ImageNet normalisation. Here that is, on a grey
``uint8`` tensor ``(1, S, S)`` that was already resized to the model input:

- train (``augment=True``): ``RandomResizedCrop(S, scale=(0.7, 1.0))`` -> horizontal flip
  (p = 0.5) -> ``ColorJitter(brightness=0.2, contrast=0.2)``; the crop resizes back to S;
- eval: nothing (the square resize already happened when the image was decoded).

Then the grey channel is replicated to 3 channels and normalised,

$$ x_c = (v / 255 - \\mu_c) / \\sigma_c, \\qquad \\mu = (0.485, 0.456, 0.406),\\ \\sigma = (0.229, 0.224, 0.225). $$

Box masks (``torchvision.tv_tensors.Mask``) go through the same geometric transforms
(nearest-neighbour) and are left alone by the colour jitter, so boxes follow the crop.

:func:`augment_batch` is the same augmentation on a whole ``uint8`` batch in tensor ops
(one ``affine_grid`` + ``grid_sample`` for crop, resize and flip; the jitter as two
broadcast multiplies), run on the training device after the batch is transferred
(``data.augment_on: device``): the loader then only copies bytes (from a prepared cache,
:mod:`imbalens.data.prepared`), which is what keeps a GPU fed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

CROP_SCALE: tuple[float, float] = (0.7, 1.0)
JITTER = 0.2

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


def resize_grey(image: np.ndarray, size: int) -> np.ndarray:
    """Square-resize a grey ``uint8`` image ``(H, W)`` to ``(size, size)``.

    Bilinear with antialiasing (``torchvision.transforms.v2.functional.resize``); the
    aspect ratio is not kept, as in the paper's "resize to 224x224" (NIH images are
    square anyway).
    """
    if image.shape == (size, size):
        return np.ascontiguousarray(image)
    t = torch.from_numpy(np.ascontiguousarray(image))[None]
    out = TF.resize(t, [size, size], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    return out[0].numpy()


def build_augment(image_size: int) -> Callable:
    """The training augmentation on a ``(1, S, S)`` uint8 image (and optional masks).

    ``RandomResizedCrop(S, scale=(0.7, 1.0))`` -> ``RandomHorizontalFlip()`` ->
    ``ColorJitter(brightness=0.2, contrast=0.2)`` (torchvision.transforms.v2). Call it as
    ``aug(tv_tensors.Image(x))`` or ``aug(tv_tensors.Image(x), tv_tensors.Mask(m))``.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop((image_size, image_size), scale=CROP_SCALE, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=JITTER, contrast=JITTER),
        ]
    )


@dataclass(frozen=True)
class BatchAugment:
    """One batch's augmentation draws, each a float tensor ``(B,)``.

    Crop width ``w``, height ``h`` and top-left ``x0``, ``y0`` as fractions of the side;
    ``flip`` is -1 (mirrored) or 1; ``brightness`` and ``contrast`` are jitter factors.
    """

    w: torch.Tensor
    h: torch.Tensor
    x0: torch.Tensor
    y0: torch.Tensor
    flip: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor

    @classmethod
    def draw(cls, n: int, generator: torch.Generator) -> BatchAugment:
        """Draws for ``n`` images from ``generator`` (on its device).

        Area fraction $a \\sim U(0.7, 1)$ and log aspect $\\log r \\sim U(\\log 3/4,
        \\log 4/3)$ as in ``RandomResizedCrop``; $w = \\sqrt{a r}$, $h = \\sqrt{a / r}$,
        clipped to 1 (torchvision re-draws up to 10 times instead, then falls back to a
        centre crop); offsets uniform over the positions that keep the crop inside; flip
        with p = 1/2; $b, c \\sim U(0.8, 1.2)$.
        """
        u = torch.rand((7, n), generator=generator, device=generator.device)
        area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[0]
        lo, hi = math.log(3 / 4), math.log(4 / 3)
        ratio = torch.exp(lo + (hi - lo) * u[1])
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        return cls(
            w=w,
            h=h,
            x0=(1 - w) * u[2],
            y0=(1 - h) * u[3],
            flip=torch.where(u[4] < 0.5, -1.0, 1.0),
            brightness=1 - JITTER + 2 * JITTER * u[5],
            contrast=1 - JITTER + 2 * JITTER * u[6],
        )

    @classmethod
    def identity(cls, n: int, device: torch.device | str = "cpu") -> BatchAugment:
        """No crop, no flip, no jitter."""
        one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
        return cls(one, one, zero, zero, one, one, one)


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator | BatchAugment,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training augmentation on a ``uint8`` batch ``(B, 1, S, S)``, in tensor ops.

    With draws $(x_0, y_0, w, h, f, b, c)$ (:meth:`BatchAugment.draw`, or given), the
    output pixel at normalised coordinates $(u, v) \\in [-1, 1]^2$ samples the input at
    $$ x = (2 x_0 + w - 1) + f\\, w\\, u, \\qquad y = (2 y_0 + h - 1) + h\\, v $$
    (``affine_grid`` + bilinear ``grid_sample``, ``align_corners=False``, border padding;
    the crop's outermost half pixel blends with its neighbour outside, where torchvision's
    crop-then-resize repeats the edge), then brightness
    $v \\leftarrow \\mathrm{clip}(b v)$ and contrast
    $v \\leftarrow \\mathrm{clip}(c (v - \\bar v) + \\bar v)$, $\\bar v$ the image's mean
    (torchvision's ``ColorJitter`` applies the two in random order; here it is fixed).
    Masks ``(B, K, S, S)`` follow the geometry (nearest). Returns float32
    ``(B, 3, S, S)`` ImageNet-normalised (:func:`normalize_batch`) and the masks (bool).
    """
    n = images.shape[0]
    p = generator if isinstance(generator, BatchAugment) else BatchAugment.draw(n, generator)
    theta = torch.zeros((n, 2, 3), device=images.device)
    theta[:, 0, 0] = p.flip * p.w
    theta[:, 0, 2] = 2 * p.x0 + p.w - 1
    theta[:, 1, 1] = p.h
    theta[:, 1, 2] = 2 * p.y0 + p.h - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = images.to(torch.float32).div_(255.0)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    x = (x * p.brightness.view(n, 1, 1, 1)).clamp_(0.0, 1.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * p.contrast.view(n, 1, 1, 1) + mean).clamp_(0.0, 1.0)
    out_masks = None
    if masks is not None:
        m = masks.to(torch.float32)
        m = F.grid_sample(m, grid, mode="nearest", padding_mode="border", align_corners=False)
        out_masks = m > 0.5
    return _normalize_float(x), out_masks


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """Grey ``uint8`` ``(B, 1, S, S)`` -> float32 ``(B, 3, S, S)``: :func:`normalize` per image."""
    return _normalize_float(images.to(torch.float32).div_(255.0))


def _normalize_float(x: torch.Tensor) -> torch.Tensor:
    """Grey floats in [0, 1], ``(..., 1, S, S)`` -> ImageNet-normalised ``(..., 3, S, S)``."""
    return (x.expand(*x.shape[:-3], 3, *x.shape[-2:]) - _MEAN.to(x.device)) / _STD.to(x.device)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """Grey ``uint8`` ``(1, S, S)`` -> float32 ``(3, S, S)``, ImageNet-normalised.

    $$ x_c = (v / 255 - \\mu_c) / \\sigma_c $$ with the grey value ``v`` replicated to the
    three channels.
    """
    return _normalize_float(image.to(torch.float32).div_(255.0))


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize` for plotting: ``t * sigma + mu``, clamped to [0, 1].

    Accepts ``(3, S, S)`` or ``(B, 3, S, S)``; returns a float tensor of the same shape.
    """
    mean = _MEAN.to(t.device, t.dtype)
    std = _STD.to(t.device, t.dtype)
    return (t * std + mean).clamp(0.0, 1.0)
