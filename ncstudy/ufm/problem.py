"""The UFM as an optimisation problem: free features H (one row per sample) plus the loss
module's own class weights, minimised by (Riemannian) gradient descent with Armijo backtracking.

Both variants share the loop here; they differ in the variables, the objective's penalty, the
descent direction (tangent projection on the sphere) and the retraction (normalisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ncstudy.losses import NCLoss

ARMIJO_C = 1e-4  # sufficient-decrease constant
MAX_BACKTRACKS = 60  # 2^-60: below float64 resolution of any useful step


@dataclass
class StepResult:
    """One iteration: the objective after it, the step accepted (0: none) and the norm of the
    (preconditioned, Riemannian) gradient before it."""

    objective: float
    step: float
    grad_norm: float


def balanced_labels(num_classes: int, n_per_class: int) -> Tensor:
    """Labels 0..K-1, each repeated n times, class-major."""
    return torch.arange(num_classes).repeat_interleave(n_per_class)


class UFMProblem:
    """Free features and a loss module's parameters, optimised jointly in float64.

    Subclasses define `_penalty`, `_direction` and `_retract`; the iteration (gradient, Armijo
    backtracking with halving on failure and doubling after success) lives here.
    """

    def __init__(
        self,
        criterion: NCLoss,
        labels: Tensor,
        dim: int,
        *,
        seed: int = 0,
        step: float = 1.0,
        max_step: float = 1e3,
        log_loss: bool = False,
    ) -> None:
        self.criterion = criterion.double()
        self.criterion.train()
        self.labels = labels.long()
        gen = torch.Generator().manual_seed(int(seed) * 7919 + 17)
        self.features = torch.randn(len(labels), dim, generator=gen, dtype=torch.float64)
        self.params: list[nn.Parameter] = [p for p in criterion.parameters() if p.requires_grad]
        self.step_size, self.max_step, self.log_loss = step, max_step, log_loss
        self.iteration = 0
        self.converged = False  # no representable decrease left (or a zero gradient)

    # ------------------------------------------------------------------ to override

    def _penalty(self, features: Tensor) -> Tensor:
        """Regularisation added to the loss (zero for the spherical UFM)."""
        return features.new_zeros(())

    def _direction(self, x: Tensor, grad: Tensor, is_features: bool) -> Tensor:
        """The (preconditioned) descent direction of one variable given its gradient."""
        raise NotImplementedError

    def _retract(self, x: Tensor) -> Tensor:
        """Map a stepped point back onto the feasible set."""
        return x

    # ------------------------------------------------------------------ the loop

    def loss(self, features: Tensor | None = None) -> Tensor:
        """The production loss at the current (or given) features and the current weights."""
        return self.criterion(self.features if features is None else features, self.labels).loss

    def objective(self, features: Tensor | None = None) -> Tensor:
        """What is minimised: loss + penalty, or log(loss) when `log_loss` (sharp temperatures)."""
        h = self.features if features is None else features
        value = self.loss(h) + self._penalty(h)
        if self.log_loss:
            # A loss that rounds to exactly 0 gives -inf: the search rejects it (not finite)
            if float(value.detach()) < 0:
                raise ValueError(
                    f"log_loss needs a positive loss, got {float(value)}; set ufm.log_loss: false"
                )
            return torch.log(value)
        return value

    def step(self) -> StepResult:
        """One gradient step with Armijo backtracking; a failed search leaves the point as is."""
        h = self.features.detach().requires_grad_(True)
        for p in self.params:
            p.grad = None
        f0 = self.objective(h)
        f0.backward()
        grads = [h.grad] + [
            p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params
        ]
        points = [h.detach()] + [p.detach().clone() for p in self.params]
        dirs = [
            self._direction(x, g, i == 0)
            for i, (x, g) in enumerate(zip(points, grads, strict=True))
        ]
        # Directional derivative along -dirs: the Riemannian gradient's inner product with dirs
        # (tangent projection is self-adjoint, so <grad, P g> = <P g, P g> scaled per block).
        slope = float(sum((g * d).sum() for g, d in zip(grads, dirs, strict=True)))
        grad_norm = math.sqrt(max(slope, 0.0))
        self.iteration += 1
        f0v = float(f0.detach())
        if not math.isfinite(f0v) or slope <= 0 or not math.isfinite(slope):
            # a zero gradient, or a log-loss at exactly 0: nothing left to decrease
            self.converged = slope <= 0 or f0v == -math.inf
            return StepResult(f0v, 0.0, grad_norm)
        t = self.step_size
        with torch.no_grad():
            for _ in range(MAX_BACKTRACKS):
                cand = [self._retract(x - t * d) for x, d in zip(points, dirs, strict=True)]
                self._set_params(cand[1:])
                f1 = float(self.objective(cand[0]))
                if math.isfinite(f1) and f1 <= f0v - ARMIJO_C * t * slope:
                    self.features = cand[0]
                    self.step_size = min(2 * t, self.max_step)
                    return StepResult(f1, t, grad_norm)
                t /= 2
            self._set_params(points[1:])
        self.converged = True
        return StepResult(f0v, 0.0, grad_norm)

    def run(self, iterations: int) -> StepResult:
        """`iterations` steps; once converged the rest are no-ops (the count still advances)."""
        result = StepResult(float(self.objective().detach()), 0.0, math.inf)
        for _ in range(iterations):
            if self.converged:
                self.iteration += 1
                continue
            result = self.step()
        return result

    def _set_params(self, values: list[Tensor]) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, values, strict=True):
                p.copy_(v)

    # ------------------------------------------------------------------ read-out

    @torch.no_grad()
    def predictions(self) -> Tensor:
        """The loss's prediction rule on the free features."""
        return self.criterion.scores(self.features).argmax(1)

    def accuracy(self) -> float:
        """Training accuracy of the UFM (every sample is a training sample)."""
        return float((self.predictions() == self.labels).double().mean())

    def state(self) -> dict[str, object]:
        """A self-describing checkpoint: features, loss module state, step size, iteration."""
        return {
            "features": self.features.clone(),
            "criterion": self.criterion.state_dict(),
            "step_size": self.step_size,
            "iteration": self.iteration,
            "converged": self.converged,
        }

    def load_state(self, state: dict[str, object]) -> None:
        """Resume from `state()`."""
        self.features = state["features"].to(torch.float64)  # type: ignore[union-attr]
        self.criterion.load_state_dict(state["criterion"])  # type: ignore[arg-type]
        self.step_size = float(state["step_size"])  # type: ignore[arg-type]
        self.iteration = int(state["iteration"])  # type: ignore[call-overload]
        self.converged = bool(state["converged"])
