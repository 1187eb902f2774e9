"""Softmax codes: K unit vectors in R^d that maximise the one-vs-rest margin rho_ovr (Jiang et
al., "Generalized Neural Collapse for a Large Number of Classes"), where a closed form exists,
and the Theorem 3.9 bounds on the optimal margin for every (d, K).

- `simplex`: the simplex ETF, optimal for K <= d + 1 (rho = K / (K - 1)).
- `cross`: the first K of +-e_1, +-e_2, ... (a cross-polytope subset), optimal for
  d + 1 < K <= 2d (rho = 1).
- `polygon`: the regular K-gon, optimal for d = 2 (rho = 1 - cos(2 pi / K)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ncstudy.losses.etf import simplex_etf

CODES = ("auto", "simplex", "cross", "polygon", "given")


def softmax_code(kind: str, feature_dim: int, num_classes: int) -> Tensor:
    """(K, d) unit rows of the named code; a ValueError naming the fix where it does not exist."""
    d, k = feature_dim, num_classes
    if kind == "auto":
        kind = auto_code(d, k)
    if kind == "simplex":
        return simplex_etf(d, k, seed=0)
    if kind == "cross":
        if k > 2 * d:
            raise ValueError(f"params.code: cross needs K <= 2 d = {2 * d}, got K = {k}")
        rows = torch.zeros(k, d)
        for i in range(k):
            rows[i, i // 2] = 1.0 if i % 2 == 0 else -1.0
        return rows
    if kind == "polygon":
        if d != 2:
            raise ValueError(f"params.code: polygon needs model.feature_dim = 2, got {d}")
        angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        return torch.stack([angles.cos(), angles.sin()], dim=1).float()
    raise ValueError(f"params.code: unknown code {kind!r}; valid: {', '.join(CODES)}")


def auto_code(feature_dim: int, num_classes: int) -> str:
    """The known softmax code for (d, K): simplex, else cross, else polygon."""
    d, k = feature_dim, num_classes
    if k <= d + 1:
        return "simplex"
    if k <= 2 * d:
        return "cross"
    if d == 2:
        return "polygon"
    raise ValueError(
        f"params.code: no closed-form softmax code for d = {d}, K = {k} (known for K <= 2d and "
        "for d = 2); give the rows (code: given, weights: [...])"
    )


def optimal_margin(feature_dim: int, num_classes: int) -> float | None:
    """max rho_ovr over K unit vectors in R^d where it is known in closed form, else None."""
    d, k = feature_dim, num_classes
    if k <= d + 1:
        return k / (k - 1)
    if d == 2:
        return 1.0 - math.cos(2 * math.pi / k)
    if k <= 2 * d:
        return 1.0
    return None


def margin_bounds(feature_dim: int, num_classes: int) -> tuple[float, float]:
    """Theorem 3.9's (lower, upper) bounds on max rho_ovr (stated for K >= sqrt(2 pi sqrt(e d)))."""
    d, k = feature_dim, num_classes
    lg = math.lgamma
    lower = 0.5 * math.exp(
        (2 / (d - 1)) * (0.5 * math.log(math.pi) - math.log(k) + lg((d + 1) / 2) - lg(d / 2 + 1))
    )
    upper = 2 * math.exp(
        (1 / (d - 1)) * (math.log(2 * math.sqrt(math.pi) / k) + lg((d + 1) / 2) - lg(d / 2))
    )
    return lower, upper
