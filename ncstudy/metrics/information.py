"""Information metrics (Song et al. 2024): MIR and HDR, ncstudy's variant and the paper's code.

K_W is the Gram of the unit weight rows, K_M the Gram of unit vectors v_k built from the
normalised class means mu^_k of the normalised features. H(K) is the von Neumann entropy of K/K
(eigenvalues clamped at 1e-10). The two variants differ only in how v_k is centred.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ncstudy.metrics._linalg import safe_normalize

EIGENVALUE_FLOOR = 1e-10


def matrix_entropy(gram: Tensor) -> float:
    """-sum lambda log lambda over the eigenvalues of gram / K, clamped at 1e-10."""
    k = gram.shape[0]
    sym = 0.5 * (gram + gram.T) / k
    lam = torch.linalg.eigvalsh(sym).clamp(min=EIGENVALUE_FLOOR)
    return float(-(lam * lam.log()).sum())


def mir_hdr(unit_weights: Tensor, unit_vectors: Tensor) -> tuple[float | None, float | None]:
    """(MIR, HDR) of two sets of K unit vectors; None where a denominator entropy is 0."""
    gram_w = unit_weights @ unit_weights.T
    gram_m = unit_vectors @ unit_vectors.T
    h_w, h_m = matrix_entropy(gram_w), matrix_entropy(gram_m)
    mutual = h_w + h_m - matrix_entropy(gram_w * gram_m)
    low, high = min(h_w, h_m), max(h_w, h_m)
    mir = mutual / low if low > 0 else None
    hdr = abs(h_w - h_m) / high if high > 0 else None
    return mir, hdr


def centred_mean_directions(mu_hat: Tensor) -> Tensor:
    """ncstudy's v_k: normalise(mu^_k - mean_k mu^_k)."""
    return safe_normalize(mu_hat - mu_hat.mean(0, keepdim=True))


def paper_mean_directions(mu_hat: Tensor, global_mean_normalized: Tensor) -> Tensor:
    """The paper's v_k: normalise(mu^_k - normalise(mean_i z_i)); a zero global mean stays 0."""
    return safe_normalize(mu_hat - safe_normalize(global_mean_normalized))


def information_metrics(
    weights: Tensor, mu_hat: Tensor, global_mean_normalized: Tensor
) -> dict[str, float]:
    """mir, hdr, mir_paper, hdr_paper for weights and mu^ over the same (present) classes."""
    if weights.shape[0] < 2:
        return {}
    unit_w = safe_normalize(weights)
    out: dict[str, float | None] = {}
    out["mir"], out["hdr"] = mir_hdr(unit_w, centred_mean_directions(mu_hat))
    paper = paper_mean_directions(mu_hat, global_mean_normalized)
    out["mir_paper"], out["hdr_paper"] = mir_hdr(unit_w, paper)
    return {k: v for k, v in out.items() if v is not None}
