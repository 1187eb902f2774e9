"""The explicit feature penalty of the regularised formulation (Zhu et al. 2021), which Yaras et
al. 2022 (Figures 5 and 6) compare with normalised features: `train.feature_decay` lambda adds
lambda/2 * mean_i ||h_i||^2 over the batch's encoder features to the optimised objective. Per
sample, so it does not grow with the batch: over a training set of N samples it is the UFM's
lambda_H/2 ||H||_F^2 (summed) with lambda_H = lambda / N. The logged `train/loss` stays the loss
alone, comparable across the two formulations."""

from __future__ import annotations

from torch import Tensor


def feature_penalty(features: Tensor, decay: float) -> Tensor | float:
    """decay/2 * mean_i ||h_i||^2 (in float32 under AMP); the float 0.0 when decay is 0."""
    if decay == 0:
        return 0.0
    return 0.5 * decay * features.float().square().sum(dim=1).mean()
