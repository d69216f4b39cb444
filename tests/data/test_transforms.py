"""imbalens.data.transforms: square resize, ImageNet normalisation, the per-image and the
batched (device) augmentation.

``augment_batch`` must be a crop + flip + jitter whose geometry moves image and masks
together and whose randomness is the generator's alone.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from imbalens.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchAugment,
    augment_batch,
    build_augment,
    denormalize,
    normalize,
    normalize_batch,
    resize_grey,
)

# ----------------------------------------------------------------------------- batched augmentation


def test_augment_batch_moves_masks_with_the_image_and_follows_its_generator() -> None:
    rng = np.random.default_rng(0)
    n, s = 64, 48
    masks = np.zeros((n, 2, s, s), dtype=bool)
    for i in range(n):
        y, x = rng.integers(4, 30, size=2)
        masks[i, 0, y : y + 14, x : x + 10] = True
    images = torch.from_numpy(masks[:, :1].astype(np.uint8) * 200 + 20)
    m = torch.from_numpy(masks)
    out, out_m = augment_batch(images, torch.Generator().manual_seed(1), m)
    assert out.shape == (n, 3, s, s) and out.dtype == torch.float32
    assert out_m is not None and out_m.dtype == torch.bool and out_m.shape == m.shape
    # the bright square is where the moved mask is (up to the bilinear edge)
    grey = out[:, 0]
    bright = grey > grey.flatten(1).quantile(0.5, dim=1).view(n, 1, 1) + 0.5
    agree = (bright == out_m[:, 0]).float().mean().item()
    assert agree > 0.97, agree
    # deterministic in its generator, different for another seed
    again, _ = augment_batch(images, torch.Generator().manual_seed(1), m)
    other, _ = augment_batch(images, torch.Generator().manual_seed(2), m)
    assert torch.equal(out, again) and not torch.equal(out, other)
    # the crop zooms in (scale 0.7..1), so a mask never shrinks
    area = out_m[:, 0].float().sum(dim=(1, 2))
    assert (area / m[:, 0].float().sum(dim=(1, 2))).min() >= 0.9  # zoom >= 1, never shrinks


def test_augment_batch_known_answers() -> None:
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    ident = BatchAugment.identity(4)
    out, _ = augment_batch(images, ident)
    assert torch.allclose(out, normalize_batch(images), atol=1e-5)
    flipped, _ = augment_batch(images, replace(ident, flip=-torch.ones(4)))
    assert torch.allclose(flipped, normalize_batch(images.flip(-1)), atol=1e-5)
    # the left half, stretched to the whole width = crop then bilinear resize (inside;
    # the last column blends with the pixel right of the crop, torchvision repeats the edge)
    half, _ = augment_batch(images, replace(ident, w=torch.full((4,), 0.5)))
    x = images.float() / 255
    crop = torch.nn.functional.interpolate(x[..., :8], size=(16, 16), mode="bilinear")
    expected = normalize_batch((crop * 255).round().to(torch.uint8))
    assert torch.allclose(half[..., :15], expected[..., :15], atol=0.03)
    bright, _ = augment_batch(images, replace(ident, brightness=torch.full((4,), 1.2)))
    v = (x * 1.2).clamp(0, 1)
    assert torch.allclose(bright, normalize_batch((v * 255).round().to(torch.uint8)), atol=0.02)


def test_batch_augment_draws_match_random_resized_crop_ranges() -> None:
    p = BatchAugment.draw(4000, torch.Generator().manual_seed(0))
    area = p.w * p.h
    assert area.min() >= 0.7 - 1e-6 and area.max() <= 1.0 + 1e-6
    assert (p.x0 >= 0).all() and (p.x0 + p.w <= 1 + 1e-6).all() and (p.y0 + p.h <= 1 + 1e-6).all()
    unclipped = (p.w < 1) & (p.h < 1)
    ratio = (p.w / p.h)[unclipped]
    assert ratio.min() >= 0.75 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    assert abs((p.flip < 0).float().mean().item() - 0.5) < 0.03
    assert 0.8 <= p.brightness.min() and p.contrast.max() <= 1.2


# ----------------------------------------------------------------------------- known answers


def test_normalize_known_image_equals_the_hand_computation() -> None:
    image = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)  # (1, 2, 2)
    out = normalize(image)
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    # x_c = (v / 255 - mu_c) / sigma_c, mu = (0.485, 0.456, 0.406), sigma = (0.229, 0.224, 0.225)
    expected = torch.tensor(
        [
            [[-0.485 / 0.229, 0.515 / 0.229], [-0.285 / 0.229, -0.085 / 0.229]],
            [[-0.456 / 0.224, 0.544 / 0.224], [-0.256 / 0.224, -0.056 / 0.224]],
            [[-0.406 / 0.225, 0.594 / 0.225], [-0.206 / 0.225, -0.006 / 0.225]],
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert out[0, 0, 0].item() == pytest.approx(-2.117904, abs=1e-5)
    assert out[2, 0, 1].item() == pytest.approx(2.64, abs=1e-5)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_denormalize_undoes_normalize_and_clamps() -> None:
    image = torch.arange(0, 256, 4, dtype=torch.uint8).view(1, 8, 8)
    grey = image.float() / 255
    back = denormalize(normalize(image))
    torch.testing.assert_close(back, grey.expand(3, 8, 8), atol=1e-6, rtol=0)
    batch = denormalize(torch.full((2, 3, 4, 4), 100.0))  # far above 1 after undoing
    assert batch.shape == (2, 3, 4, 4) and bool((batch == 1.0).all())
    assert bool((denormalize(torch.full((3, 2, 2), -100.0)) == 0.0).all())


def test_normalize_batch_is_normalize_per_image() -> None:
    images = torch.randint(
        0, 256, (5, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out = normalize_batch(images)
    assert out.shape == (5, 3, 6, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.stack([normalize(im) for im in images]))
    assert images.dtype == torch.uint8  # the input is not changed in place


def test_eval_transform_is_deterministic() -> None:
    """Evaluation is resize + normalise only: no draw from any random generator."""
    image = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    torch.manual_seed(0)
    a = normalize(torch.from_numpy(resize_grey(image, 32))[None])
    torch.manual_seed(1)
    b = normalize(torch.from_numpy(resize_grey(image, 32))[None])
    assert torch.equal(a, b)


def test_resize_grey_known_answers() -> None:
    image = np.random.default_rng(2).integers(0, 256, (16, 16), dtype=np.uint8)
    same = resize_grey(image, 16)
    assert np.array_equal(same, image) and same.flags["C_CONTIGUOUS"]
    flat = np.full((20, 30), 77, dtype=np.uint8)
    for size in (8, 24, 64):
        out = resize_grey(flat, size)
        assert out.shape == (size, size) and out.dtype == np.uint8
        assert (out == 77).all()  # a constant image stays constant, whatever the aspect


def test_augmentation_keeps_shape_and_dtype_and_follows_the_seed() -> None:
    aug = build_augment(24)
    image = torch.randint(
        0, 256, (1, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    mask = torch.zeros((2, 24, 24), dtype=torch.bool)
    mask[0, 4:12, 6:18] = True
    torch.manual_seed(5)
    out, out_mask = aug(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert out.shape == (1, 24, 24) and out.dtype == torch.uint8
    assert out_mask.shape == (2, 24, 24) and out_mask.dtype == torch.bool
    assert not bool(out_mask[1].any())  # an empty mask stays empty
    torch.manual_seed(5)
    again, _ = aug(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert torch.equal(out, again)
    batch, masks = augment_batch(image[None], torch.Generator().manual_seed(0))
    assert batch.shape == (1, 3, 24, 24) and batch.dtype == torch.float32 and masks is None


def test_batch_augment_identity_and_zero_contrast_known_answers() -> None:
    ident = BatchAugment.identity(3)
    assert ident.w.tolist() == [1.0] * 3 and ident.x0.tolist() == [0.0] * 3
    assert ident.flip.tolist() == [1.0] * 3 and ident.contrast.tolist() == [1.0] * 3
    images = torch.tensor([0, 100, 200, 255], dtype=torch.uint8).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    # contrast 0: every pixel becomes the image mean, (0 + 100 + 200 + 255) / 4 / 255
    flat, _ = augment_batch(images, replace(ident, contrast=torch.zeros(3)))
    mean = torch.full((3, 1, 2, 2), (0 + 100 + 200 + 255) / 4 / 255)
    torch.testing.assert_close(
        flat, normalize_batch((mean * 255).round().to(torch.uint8)), atol=0.01, rtol=0
    )
    # brightness 0: black
    black, _ = augment_batch(images, replace(ident, brightness=torch.zeros(3)))
    torch.testing.assert_close(black, normalize_batch(torch.zeros_like(images)), atol=1e-6, rtol=0)
