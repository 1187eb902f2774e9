"""NC2 and NC3 as "Are All Losses Created Equal" (Zhou et al. 2022, section 4) defines them.

Its NC1, (1/K) tr(Sigma_W Sigma_B^+), is `nc1` as it is. Its NC2 compares the Gram matrix of
the *uncentred* classifier rows with the simplex ETF's (`nc2_etf_dist_weights` centres the rows
first), and its NC3 compares the K x K matrix W H_bar (classifier rows against centred class
means) with the simplex ETF (`nc3` compares W and the means directly):

    NC2 = || W W^T / ||W W^T||_F - (I_K - 1 1^T / K) / sqrt(K-1) ||_F
    NC3 = || W H_bar / ||W H_bar||_F - (I_K - 1 1^T / K) / sqrt(K-1) ||_F,
    H_bar = [mu_1 - mu_G, ..., mu_K - mu_G] (d x K).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ncstudy.metrics.classical import etf_distance


def nc2_zhou(weights: Tensor) -> float | None:
    """The paper's NC2: the ETF distance of W W^T, W's rows not centred."""
    return etf_distance(weights)


def nc3_zhou(weights: Tensor, centred_means: Tensor) -> float | None:
    """The paper's NC3: the ETF distance of W H_bar over the classes present (rows of both)."""
    k = weights.shape[0]
    if k < 2:
        return None
    product = weights @ centred_means.T  # (K, K): entry (k, j) = <w_k, mu_j - mu_G>
    norm = product.norm()
    if float(norm) <= 0:
        return None
    eye = torch.eye(k, dtype=product.dtype, device=product.device)
    etf = (eye - torch.full_like(product, 1.0 / k)) / math.sqrt(k - 1)
    return float((product / norm - etf).norm())
