"""The colour part of an SCL view (`transforms.colour_ops`) for a whole batch at once, with
independent random draws per image: the FFCV path's replacement for a Python loop over images.

Per image, as torchvision's `RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`,
`RandomGrayscale(p=0.2)` and, on ImageNet-sized inputs, `RandomApply([GaussianBlur(k, (0.1,
2.0))], p=0.5)`: jitter factors brightness, contrast, saturation ~ U(0.6, 1.4), hue ~ U(-0.1,
0.1), applied in a random order; the same formulas as torchvision's tensor functions (ITU-R 601
grayscale weights, contrast towards the mean gray level, hue in HSV, reflect-padded separable
blur). The one difference: images stay float between steps (torchvision rounds uint8 images to
integers after every step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

JITTER = 0.4  # brightness, contrast and saturation factors in [1 - 0.4, 1 + 0.4]
HUE = 0.1
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def grayscale(x: Tensor) -> Tensor:
    """(N, 1, H, W) luminance of float RGB images (N, 3, H, W)."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, grayscale(x), factor)


def hue(x: Tensor, factor: Tensor) -> Tensor:
    """Rotate the hue by `factor` turns (HSV round trip, as torchvision's adjust_hue)."""
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb((h + factor.view(-1, 1, 1)) % 1.0, s, v)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    chroma = maxc - minc
    s = chroma / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    h = torch.where(
        maxc == r,
        (g - b) / safe,
        torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe),
    )
    h = torch.where(chroma == 0, torch.zeros_like(h), h)
    return (h / 6.0) % 1.0, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    sector = torch.floor(h * 6.0)
    frac = h * 6.0 - sector
    sector = sector.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    # per sector (0..5): which of v, t, p, q is r, g and b
    table = torch.stack(
        [
            torch.stack([v, q, p, p, t, v]),
            torch.stack([t, v, v, q, p, p]),
            torch.stack([p, p, t, v, v, q]),
        ]
    )  # (3 channels, 6 sectors, N, H, W)
    index = sector.unsqueeze(0).unsqueeze(0).expand(3, 1, *sector.shape)
    return table.gather(1, index).squeeze(1).transpose(0, 1)


JITTER_OPS = (brightness, contrast, saturation, hue)  # ColorJitter's fn_idx order


def gaussian_blur(x: Tensor, kernel: int, sigma: Tensor) -> Tensor:
    """Blur each image with its own sigma: a separable Gaussian of odd size `kernel`, reflect
    padding (torchvision's GaussianBlur)."""
    n, c, height, width = x.shape
    half = (kernel - 1) * 0.5
    grid = torch.linspace(-half, half, kernel, dtype=x.dtype, device=x.device)
    pdf = torch.exp(-0.5 * (grid[None, :] / sigma[:, None]) ** 2)
    k1d = (pdf / pdf.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, k)
    flat = F.pad(x.reshape(1, n * c, height, width), [kernel // 2] * 4, mode="reflect")
    flat = F.conv2d(flat, k1d.view(n * c, 1, 1, kernel), groups=n * c)
    flat = F.conv2d(flat, k1d.view(n * c, 1, kernel, 1), groups=n * c)
    return flat.view(n, c, height, width)


class BatchColourAugment(torch.nn.Module):
    """`colour_ops(size)` on a batch of uint8 (or 0-255 float) images (N, 3, H, W), each image
    with its own random draws; returns float images on the 0-255 scale."""

    def __init__(self, blur_kernel: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.blur_kernel, self.generator = blur_kernel, generator

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> Tensor:
        u = torch.rand(n, generator=self.generator).to(device)
        return low + (high - low) * u

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0
        n, dev = x.shape[0], x.device
        jitter = self._uniform(n, 0, 1, dev) < 0.8
        factors = [self._uniform(n, 1 - JITTER, 1 + JITTER, dev) for _ in range(3)]
        factors.append(self._uniform(n, -HUE, HUE, dev))
        order = torch.rand(n, 4, generator=self.generator).argsort(dim=1).to(dev)  # randperm
        x = apply_jitter(x, jitter, factors, order)
        gray = self._uniform(n, 0, 1, dev) < 0.2
        x = torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        if self.blur_kernel is not None:
            blur = self._uniform(n, 0, 1, dev) < 0.5
            sigma = self._uniform(n, 0.1, 2.0, dev)
            if blur.any():
                x[blur] = gaussian_blur(x[blur], self.blur_kernel, sigma[blur])
        return x.clamp(0, 1) * 255.0


def apply_jitter(x: Tensor, active: Tensor, factors: list[Tensor], order: Tensor) -> Tensor:
    """Colour jitter of the `active` images: at step k each applies op `order[i, k]` (0
    brightness, 1 contrast, 2 saturation, 3 hue) with its factor."""
    x = x.clone()
    for step in range(4):
        for op, fn in enumerate(JITTER_OPS):
            rows = active & (order[:, step] == op)
            if rows.any():
                x[rows] = fn(x[rows], factors[op][rows])
    return x
