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
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
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


def normalize(image: torch.Tensor) -> torch.Tensor:
    """Grey ``uint8`` ``(1, S, S)`` -> float32 ``(3, S, S)``, ImageNet-normalised.

    $$ x_c = (v / 255 - \\mu_c) / \\sigma_c $$ with the grey value ``v`` replicated to the
    three channels.
    """
    x = image.to(torch.float32).div_(255.0)
    return (x.expand(3, *x.shape[-2:]) - _MEAN) / _STD


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize` for plotting: ``t * sigma + mu``, clamped to [0, 1].

    Accepts ``(3, S, S)`` or ``(B, 3, S, S)``; returns a float tensor of the same shape.
    """
    mean = _MEAN.to(t.device, t.dtype)
    std = _STD.to(t.device, t.dtype)
    return (t * std + mean).clamp(0.0, 1.0)
