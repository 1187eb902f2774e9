"""Unconstrained-feature-model (UFM) trials (spec/ufm.md): free features, production losses."""

from ncstudy.ufm.problem import StepResult, UFMProblem, balanced_labels
from ncstudy.ufm.regularized import REGULARIZED_LOSSES, RegularizedUFM
from ncstudy.ufm.spherical import SPHERICAL_LOSSES, SphericalUFM, tangent

__all__ = [
    "REGULARIZED_LOSSES",
    "SPHERICAL_LOSSES",
    "RegularizedUFM",
    "SphericalUFM",
    "StepResult",
    "UFMProblem",
    "balanced_labels",
    "tangent",
]
