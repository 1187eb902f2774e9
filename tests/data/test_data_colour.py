"""The batched SCL colour augmentation (FFCV path) against torchvision's own functions, image by
image, and its random draws against the rates of torchvision's transforms."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from ncstudy.data import colour_batch as cb

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Float RGB images in [0, 1], with saturated and gray pixels (hue edge cases)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 10, 12, generator=gen)
    x[0, :, :3] = 0.5  # gray: chroma 0
    x[1, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red
    x[2] = x[2].round()  # corners of the RGB cube
    return x


@pytest.mark.parametrize(
    ("op", "reference", "low", "high"),
    [
        (cb.brightness, TF.adjust_brightness, 0.6, 1.4),
        (cb.contrast, TF.adjust_contrast, 0.6, 1.4),
        (cb.saturation, TF.adjust_saturation, 0.6, 1.4),
        (cb.hue, TF.adjust_hue, -0.1, 0.1),
    ],
)
def test_each_jitter_op_is_torchvisions_per_image(
    images: torch.Tensor, op, reference, low: float, high: float
) -> None:
    factors = torch.linspace(low, high, len(images))
    batched = op(images, factors)
    for x, f, out in zip(images, factors, batched, strict=True):
        assert torch.allclose(out, reference(x, float(f)), atol=1e-5)


def test_jitter_applies_the_ops_in_each_images_own_order(images: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(1)
    n = len(images)
    factors = [0.6 + 0.8 * torch.rand(n, generator=gen) for _ in range(3)]
    factors.append(-0.1 + 0.2 * torch.rand(n, generator=gen))
    order = torch.stack([torch.randperm(4, generator=gen) for _ in range(n)])
    active = torch.tensor([True, True, False, True, True, True])
    out = cb.apply_jitter(images, active, factors, order)
    refs = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(n):
        expected = images[i]
        for op in order[i].tolist() if active[i] else []:  # as ColorJitter's fn_idx loop
            expected = refs[op](expected, float(factors[op][i]))
        assert torch.allclose(out[i], expected, atol=1e-5), i


def test_blur_is_torchvisions_gaussian_blur_per_image(images: torch.Tensor) -> None:
    sigmas = torch.linspace(0.1, 2.0, len(images))
    out = cb.gaussian_blur(images, 5, sigmas)
    for x, s, o in zip(images, sigmas, out, strict=True):
        assert torch.allclose(o, TF.gaussian_blur(x, [5, 5], [float(s), float(s)]), atol=1e-5)


def test_grayscale_is_torchvisions(images: torch.Tensor) -> None:
    expected = torch.stack([TF.rgb_to_grayscale(x) for x in images])
    assert torch.allclose(cb.grayscale(images), expected, atol=1e-6)


def test_random_draws_follow_the_transforms_rates() -> None:
    n = 4000
    colourful = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    colourful[:, 0] = 200  # red: any jitter changes it, grayscale makes R = G = B
    aug = cb.BatchColourAugment(blur_kernel=3, generator=torch.Generator().manual_seed(0))
    out = aug(colourful)
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
    gray = (out.amax(dim=1) - out.amin(dim=1)).amax(dim=(1, 2)) < 1e-3
    unchanged = (out - colourful.float()).abs().amax(dim=(1, 2, 3)) < 1e-3
    sd = (0.25 / n) ** 0.5
    assert abs(gray.float().mean() - 0.2) < 4 * sd  # RandomGrayscale(p=0.2)
    # not jittered (p 0.2), not grayed (0.8): 0.16; blur keeps a flat image as it is
    assert abs(unchanged.float().mean() - 0.2 * 0.8) < 4 * sd
    again = cb.BatchColourAugment(blur_kernel=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(colourful), out)  # seeded draws are reproducible
