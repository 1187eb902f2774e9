"""erank_intra's batched pieces against the per-class reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncstudy.metrics._linalg import effective_rank
from ncstudy.metrics.rank import effective_ranks, scatter_eigenvalues


def test_effective_ranks_match_the_one_class_function():
    g = torch.Generator().manual_seed(0)
    spectra = torch.rand(6, 9, generator=g, dtype=torch.float64)
    spectra[1, 4:] = 0  # zeros contribute nothing
    spectra[2] = 0  # a collapsed class: effective rank 0
    spectra[3, :] = 0
    spectra[3, 0] = 2.5  # one direction: effective rank 1
    got = effective_ranks(spectra)
    want = [effective_rank(s) for s in spectra]
    assert got.tolist() == pytest.approx(want, rel=1e-13, abs=0)
    assert got[2] == 0 and got[3] == pytest.approx(1.0, rel=1e-15)


def test_scatter_eigenvalues_read_the_lower_triangle_like_torch():
    """The CPU (numpy LAPACK) path and torch's eigvalsh (the accelerator path, run here on the
    CPU) agree on a batch given by lower triangles only (garbage above the diagonal)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 30, 7, generator=g, dtype=torch.float64)
    scatter = x.transpose(1, 2) @ x
    upper = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)
    scatter[:, upper] = 1e3  # only the lower triangle may be read
    want = np.abs(np.linalg.eigvalsh((x.transpose(1, 2) @ x).numpy()))
    cpu = scatter_eigenvalues(scatter)
    dev = torch.linalg.eigvalsh(scatter, UPLO="L").abs()
    np.testing.assert_allclose(cpu.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(dev.numpy(), want, rtol=1e-12)
