"""The UFM as an optimisation problem: free features H (one row per sample) plus the loss
module's own class weights, minimised by (Riemannian) L-BFGS with Armijo backtracking.

Both variants share the loop here; they differ in the variables, the objective's penalty, the
projection onto the tangent space (the sphere's; none for the regularised UFM) and the
retraction (normalisation). Plain (preconditioned) gradient descent is `memory=0`.

Why L-BFGS: at sharp temperatures the normalised losses are badly conditioned. For `ntce` at
tau = 0.1 the within-class spread of the features is held only by other-class terms of relative
size exp(-(1 + 1/(K-1))/tau) ~ 1e-6, while the rest of the landscape has curvature ~ 1/tau^2;
gradient descent then creeps (still 7e-5 above the ETF value after 3000 steps) where L-BFGS reaches
the simplex ETF in a few hundred.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ncstudy.losses import NCLoss

ARMIJO_C = 1e-4  # sufficient-decrease constant
MAX_BACKTRACKS = 60  # 2^-60: below float64 resolution of any useful step
MEMORY = 10  # L-BFGS curvature pairs kept (0: preconditioned gradient descent)


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

    Subclasses define `_penalty`, `_project` and `_retract`, and may scale the feature block of
    the initial inverse Hessian (`feature_scale`); the iteration (L-BFGS two-loop recursion on
    the Riemannian gradient, vector transport by projection, Armijo backtracking with a
    fall-back to the gradient direction) lives here.
    """

    feature_scale: float = 1.0  # diagonal preconditioner of the feature block

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
        memory: int = MEMORY,
    ) -> None:
        queue = getattr(getattr(criterion, "params", None), "queue_size", 0)
        if queue:
            raise ValueError(
                f"loss {criterion.name!r}: queue_size {queue} in a UFM problem; the whole sample "
                "set is one batch and every objective evaluation would push to the queue: set 0"
            )
        self.criterion = criterion.double()
        self.criterion.train()
        self.labels = labels.long()
        gen = torch.Generator().manual_seed(int(seed) * 7919 + 17)
        self.features = torch.randn(len(labels), dim, generator=gen, dtype=torch.float64)
        self.params: list[nn.Parameter] = [p for p in criterion.parameters() if p.requires_grad]
        self.step_size, self.max_step, self.log_loss = step, max_step, log_loss
        self.memory = memory
        self.iteration = 0
        self.converged = False  # no representable decrease left (or a zero gradient)
        self.last_step: StepResult | None = None  # what run() last did
        # L-BFGS state on flat vectors of all variables: stacked curvature pairs (oldest first),
        # the last step taken with the gradient before it, the preconditioner's diagonal
        self._s: Tensor | None = None
        self._y: Tensor | None = None
        self._last: tuple[Tensor, Tensor] | None = None
        self._shapes = [self.features.shape] + [p.shape for p in self.params]
        self._diagonal: Tensor | None = None

    # ------------------------------------------------------------------ to override

    def _penalty(self, features: Tensor) -> Tensor:
        """Regularisation added to the loss (zero for the spherical UFM)."""
        return features.new_zeros(())

    def _project(self, x: Tensor, v: Tensor) -> Tensor:
        """v mapped into the tangent space at x (Riemannian gradient, vector transport)."""
        return v

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
        """One L-BFGS step with Armijo backtracking; if the quasi-Newton direction finds no
        decrease, the memory is dropped and the preconditioned gradient is tried; if that fails
        too, the point stays as is and the problem is converged."""
        h = self.features.detach().requires_grad_(True)
        for p in self.params:
            p.grad = None
        f0 = self.objective(h)
        f0.backward()
        grads = [h.grad] + [
            p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params
        ]
        points = [h.detach()] + [p.detach().clone() for p in self.params]
        rgrad = self._project_flat(points, self._flat(grads))  # the Riemannian gradient
        self._remember(points, rgrad)
        self.iteration += 1
        f0v = float(f0.detach())
        gradient_dir = self._preconditioner() * rgrad
        grad_norm = math.sqrt(max(float(rgrad @ gradient_dir), 0.0))
        if not math.isfinite(f0v) or not grad_norm > 0:
            # a zero gradient, or a log-loss at exactly 0: nothing left to decrease
            self.converged = grad_norm == 0 or f0v == -math.inf
            return StepResult(f0v, 0.0, grad_norm)
        if self._s is not None:
            direction = self._two_loop(rgrad)
            if float(rgrad @ direction) > 0:
                result = self._line_search(points, direction, rgrad, f0v, 1.0)
                if result is not None:
                    return StepResult(result[0], result[1], grad_norm)
            self._s = self._y = None  # not a descent direction, or no decrease along it
        result = self._line_search(points, gradient_dir, rgrad, f0v, self.step_size)
        if result is not None:
            self.step_size = min(2 * result[1], self.max_step)
            return StepResult(result[0], result[1], grad_norm)
        self.converged = True
        self._last = None
        return StepResult(f0v, 0.0, grad_norm)

    def run(self, iterations: int) -> StepResult:
        """`iterations` steps; once converged the rest are no-ops (the count still advances).
        Returns the last step taken, also when that was before this call (converged)."""
        for _ in range(iterations):
            if self.converged:
                self.iteration += 1
                continue
            self.last_step = self.step()
        if self.last_step is None:  # no step taken yet: the gradient is not known
            return StepResult(float(self.objective().detach()), 0.0, math.inf)
        return self.last_step

    def _line_search(
        self, points: list[Tensor], direction: Tensor, rgrad: Tensor, f0: float, t: float
    ) -> tuple[float, float] | None:
        """Armijo backtracking along -direction from t, halving; (objective, step) or None."""
        slope = float(rgrad @ direction)
        dirs = self._blocks(direction)
        with torch.no_grad():
            for _ in range(MAX_BACKTRACKS):
                cand = [self._retract(x - t * d) for x, d in zip(points, dirs, strict=True)]
                self._set_params(cand[1:])
                f1 = float(self.objective(cand[0]))
                # strictly below f0 too: a step lost in rounding is no progress (converged)
                if math.isfinite(f1) and f1 <= f0 - ARMIJO_C * t * slope and f1 < f0:
                    self.features = cand[0]
                    self._last = (-t * direction, rgrad)
                    return f1, t
                t /= 2
            self._set_params(points[1:])
        return None

    def _remember(self, points: list[Tensor], rgrad: Tensor) -> None:
        """Add the curvature pair (s, y) of the last step; every stored vector is transported
        (projected) to the tangent space at the new point."""
        if self.memory == 0 or self._last is None:
            return
        step, old_grad = self._last
        self._last = None
        s = self._project_flat(points, step)
        y = rgrad - self._project_flat(points, old_grad)
        if self._s is not None:
            self._s = self._project_flat(points, self._s)
            self._y = self._project_flat(points, self._y)
        if float(s @ y) > 1e-12 * float(s.norm() * y.norm()):  # positive curvature only
            new_s, new_y = s[None], y[None]
            if self._s is not None:
                new_s, new_y = torch.cat([self._s, new_s]), torch.cat([self._y, new_y])
            self._s, self._y = new_s[-self.memory :], new_y[-self.memory :]

    def _two_loop(self, rgrad: Tensor) -> Tensor:
        """L-BFGS two-loop recursion: an approximation of H^-1 rgrad, from the stored pairs and
        the initial inverse Hessian gamma * (the preconditioner)."""
        assert self._s is not None and self._y is not None
        rho = 1.0 / (self._s * self._y).sum(1)
        q = rgrad.clone()
        alphas = []
        for i in reversed(range(len(rho))):
            a = rho[i] * (self._s[i] @ q)
            alphas.append(a)
            q -= a * self._y[i]
        y, diagonal = self._y[-1], self._preconditioner()
        gamma = (self._s[-1] @ y) / (y @ (diagonal * y))
        r = gamma * diagonal * q
        for i, a in zip(range(len(rho)), reversed(alphas), strict=True):
            r += (a - rho[i] * (self._y[i] @ r)) * self._s[i]
        return r

    # ------------------------------------------------------------------ flat vectors

    def _preconditioner(self) -> Tensor:
        """Diagonal of the initial inverse Hessian: feature_scale on the features, 1 elsewhere."""
        if self._diagonal is None:
            sizes = [math.prod(shape) for shape in self._shapes]
            self._diagonal = torch.ones(sum(sizes), dtype=torch.float64)
            self._diagonal[: sizes[0]] = self.feature_scale
        return self._diagonal

    def _flat(self, blocks: list[Tensor]) -> Tensor:
        return torch.cat([b.reshape(-1) for b in blocks])

    def _blocks(self, v: Tensor) -> list[Tensor]:
        """Views of a flat vector (or of the rows of a stack of them) as the variable blocks."""
        out, start = [], 0
        for shape in self._shapes:
            size = math.prod(shape)
            out.append(v[..., start : start + size].reshape(*v.shape[:-1], *shape))
            start += size
        return out

    def _project_flat(self, points: list[Tensor], v: Tensor) -> Tensor:
        """_project block by block on a flat vector (or a stack of them)."""
        blocks = [self._project(x, b) for x, b in zip(points, self._blocks(v), strict=True)]
        return torch.cat([b.reshape(*v.shape[:-1], -1) for b in blocks], dim=-1)

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
        """A self-describing checkpoint: features, loss module state, step size, iteration and
        the L-BFGS memory (so a resumed run takes the same steps)."""
        return {
            "features": self.features.clone(),
            "criterion": self.criterion.state_dict(),
            "step_size": self.step_size,
            "iteration": self.iteration,
            "converged": self.converged,
            "last_step": None if self.last_step is None else dataclasses.astuple(self.last_step),
            "lbfgs": (self._s, self._y, self._last),
        }

    def load_state(self, state: dict[str, object]) -> None:
        """Resume from `state()`."""
        self.features = state["features"].to(torch.float64)  # type: ignore[union-attr]
        self.criterion.load_state_dict(state["criterion"])  # type: ignore[arg-type]
        self.step_size = float(state["step_size"])  # type: ignore[arg-type]
        self.iteration = int(state["iteration"])  # type: ignore[call-overload]
        self.converged = bool(state["converged"])
        last = state["last_step"]
        self.last_step = None if last is None else StepResult(*last)  # type: ignore[misc]
        self._s, self._y, self._last = state["lbfgs"]  # type: ignore[misc]
