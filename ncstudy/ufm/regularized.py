"""The regularised UFM (Zhu et al. 2021; "Are All Losses Created Equal"): unconstrained H, W, b
with penalties lambda_W/2 ||W||^2 + lambda_H/2 ||H||^2 + lambda_b/2 ||b||^2, minimised by the
shared L-BFGS loop of ncstudy.ufm.problem."""

from __future__ import annotations

from torch import Tensor

from ncstudy.losses import NCLoss
from ncstudy.ufm.problem import UFMProblem

REGULARIZED_LOSSES = ("ce", "ls", "focal", "mse")


class RegularizedUFM(UFMProblem):
    """Regularised UFM; the feature block's step is scaled by N/K like the spherical one's
    (a diagonal preconditioner: the data term's feature gradient is O(1/N))."""

    def __init__(
        self,
        criterion: NCLoss,
        labels: Tensor,
        dim: int,
        *,
        lambda_w: float,
        lambda_h: float,
        lambda_b: float,
        init_scale: float = 0.1,
        **kwargs: object,
    ) -> None:
        if criterion.name not in REGULARIZED_LOSSES:
            raise ValueError(
                f"the regularised UFM takes the CE-family losses ({', '.join(REGULARIZED_LOSSES)})"
                f", got {criterion.name!r}; use ufm.variant: spherical for it"
            )
        super().__init__(criterion, labels, dim, **kwargs)  # type: ignore[arg-type]
        self.features = self.features * init_scale
        self.lambda_w, self.lambda_h, self.lambda_b = lambda_w, lambda_h, lambda_b
        self.feature_scale = len(labels) / (int(labels.max()) + 1)
        head = criterion.head  # type: ignore[attr-defined]
        self.weight, self.bias = head.weight, head.bias

    def _penalty(self, features: Tensor) -> Tensor:
        return 0.5 * (
            self.lambda_w * self.weight.square().sum()
            + self.lambda_h * features.square().sum()
            + self.lambda_b * self.bias.square().sum()
        )

    def weights(self) -> Tensor:
        """The classifier rows W (K, d)."""
        return self.weight.detach().clone()
