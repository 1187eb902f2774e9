"""Sufficient statistics for the NC metrics: a streaming accumulator that all-reduces.

Every metric in spec/metrics.md is a function of per-class counts and sums, two pooled
within-class scatter matrices (raw and L2-normalised features), per-class sums of squared norms
and, for `erank_intra`, per-class scatter matrices of the normalised features for a bounded,
deterministic subset of classes. Each worker fills an accumulator over its shard; `all_reduce`
sums them, so the result does not depend on the number of workers or on the batch size.

The scatter matrices are centred, so that they keep their digits near total collapse (class
means at an offset of 10 or 100 with a within-class spread of 1e-6): each class's rows are
shifted by a row of that class seen first on this worker (close to the class mean, so nothing
cancels), and the mean is taken out exactly at the end, W = P - T T^T / n for the shifted scatter
P and shifted sum T. `all_reduce` first sums the counts and sums, then moves every worker's
shifted statistics to the global class means (a correction of the order of the spread) and sums
those: one pass over the data, two rounds of all-reduce. The scatter products are symmetric:
on CPU they are accumulated on the lower triangle only (BLAS syrk, half the flops of a gemm).

nc4 needs the class means of the very pass that it scores. The accumulator therefore caches the
raw features (in their incoming dtype, so nothing is lost) and the predictions while they fit in
`nc4_cache_bytes`; `all_reduce` (or `statistics` on one process) then scores them against the
reduced class means, which is exact. When the cache overflows on any worker, nc4 falls back to
`reference_means` (class means from a previous pass, scored online) if given, or is left out of
the statistics (`nc4_source` None): the trainer's pass (`ncstudy.evaluate.passes.nc_pass`) then
scores the predictions against this pass's means in a second pass, which is exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.linalg.blas import dsyrk
from threadpoolctl import ThreadpoolController
from torch import Tensor


@dataclass(frozen=True)
class NCStatistics:
    """Reduced sufficient statistics of one metrics pass (all sums, float64 by default)."""

    num_classes: int
    dim: int
    counts: Tensor  # (K,) samples per class
    sum_features: Tensor  # (K, d) sum of h per class
    within_scatter: Tensor  # (d, d) sum over all samples of (h - mu_y)(h - mu_y)^T
    sum_normalized: Tensor  # (K, d) sum of z = h/||h|| per class
    within_scatter_normalized: Tensor  # (d, d) the same for z about its class means
    sq_norm_normalized: Tensor  # (K,) sum of ||z||^2 per class (1 per nonzero feature)
    intra_classes: Tensor  # (m,) class ids that have a scatter matrix
    # (m, d, d) sum of (z - mean)(z - mean)^T per tracked class, in the LOWER triangle (the
    # upper one is not that of the matrix: symmetrising 100 of them costs more than the rest)
    scatter_normalized: Tensor
    nc4_mismatches: float | None = None  # predictions != nearest class mean
    nc4_samples: float | None = None  # samples that carried a prediction
    nc4_source: str | None = None  # "exact" (same-pass means), "reference" (given means),
    # "second_pass" (same-pass means, predictions scored in a second pass; set by nc_pass)

    @property
    def num_samples(self) -> float:
        """Total number of accumulated samples N."""
        return float(self.counts.sum())


# Elements per all_reduce call: statistics are reduced in place, in chunks of at most this size
# (128 MiB of float64), so no backend ever needs a buffer the size of all the statistics.
REDUCE_CHUNK_ELEMENTS = 1 << 24


def all_reduce_in_place(tensor: Tensor, group: Any = None) -> None:
    """Sum a contiguous tensor over all ranks in place, in chunks of REDUCE_CHUNK_ELEMENTS."""
    flat = tensor.view(-1)  # a view: the chunks write straight into `tensor`
    for start in range(0, flat.numel(), REDUCE_CHUNK_ELEMENTS):
        dist.all_reduce(flat[start : start + REDUCE_CHUNK_ELEMENTS], group=group)


_BLAS: ThreadpoolController | None = None


def blas_threads(limit: int | None = None) -> Any:
    """A context that limits the BLAS libraries numpy/scipy load to `limit` threads (default:
    torch's count; their own default is every core, which oversubscribes a worker that torch
    keeps to fewer). The controller is built once: building one scans every loaded library."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=limit or torch.get_num_threads(), user_api="blas")


def add_gram(out: Tensor, rows: Tensor) -> None:
    """out += rows^T rows on (at least) the lower triangle; read it with `symmetric_from_lower`.

    A float64 CPU product goes through BLAS syrk (the lower triangle only, half the flops of a
    gemm); anything else through torch's addmm (the full matrix).
    """
    if out.device.type == "cpu" and out.dtype == rows.dtype == torch.float64:
        c = out.numpy().T  # Fortran order: its upper triangle is out's lower one
        with blas_threads():
            res = dsyrk(1.0, rows.contiguous().numpy().T, beta=1.0, c=c, trans=0, overwrite_c=1)
        if not np.shares_memory(res, c):  # scipy copied (never for a contiguous out)
            c[...] = res
    else:
        out.addmm_(rows.T, rows)


def symmetric_from_lower(matrix: Tensor) -> Tensor:
    """The symmetric matrix (or batch) whose lower triangle is that of `matrix`."""
    return torch.tril(matrix) + torch.tril(matrix, -1).transpose(-1, -2)


def _outer_sum(a: Tensor, b: Tensor, weights: Tensor | None = None) -> Tensor:
    """sum_k w_k a_k b_k^T for rows a_k, b_k (K, d): a (d, d) matrix."""
    return (a if weights is None else a * weights[:, None]).T @ b


def intra_class_subset(num_classes: int, max_intra_classes: int) -> Tensor:
    """The classes that get a scatter matrix: all, or `max_intra_classes` evenly spaced ids."""
    if max_intra_classes < 0:
        raise ValueError(f"max_intra_classes must be >= 0, got {max_intra_classes}")
    if max_intra_classes >= num_classes:
        return torch.arange(num_classes)
    ids = np.unique(np.round(np.linspace(0, num_classes - 1, max_intra_classes)).astype(np.int64))
    return torch.from_numpy(ids)


class NCAccumulator:
    """Streaming, all-reducible accumulator of the NC sufficient statistics over one pass.

    Use once per pass: update() per batch, all_reduce() on every rank, then statistics().
    Memory: 7 K d + 2 d^2 + m d^2 floats (m = min(K, max_intra_classes) tracked classes,
    evenly spaced over the class ids), a buffer of 64 m rows, and the nc4 cache (capped).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        max_intra_classes: int = 100,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
        reference_means: Tensor | None = None,
        nc4_cache_bytes: int = 1 << 30,
        scatter_buffer_rows_per_class: int | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.num_classes, self.dim = num_classes, dim
        self.device, self.dtype = torch.device(device), dtype
        K, d, kw = num_classes, dim, {"device": self.device, "dtype": dtype}
        self.counts = torch.zeros(K, **kw)
        self.sum_features = torch.zeros(K, d, **kw)
        self.sum_normalized = torch.zeros(K, d, **kw)
        self.sq_norm_normalized = torch.zeros(K, **kw)
        # Per-class shifts (a row of the class seen first here), the shifted sums, and the
        # shifted scatters: raw pooled, normalised pooled over the untracked classes, and
        # normalised per tracked class (lower triangles, see add_gram).
        self._has_shift = torch.zeros(K, dtype=torch.bool, device=self.device)
        self.shift = torch.zeros(K, d, **kw)
        self.shift_normalized = torch.zeros(K, d, **kw)
        self.shifted_sum = torch.zeros(K, d, **kw)
        self.shifted_sum_normalized = torch.zeros(K, d, **kw)
        self.scatter = torch.zeros(d, d, **kw)
        self._scatter_normalized_untracked = torch.zeros(d, d, **kw)
        self.intra_classes = intra_class_subset(K, max_intra_classes).to(self.device)
        self.scatter_normalized = torch.zeros(len(self.intra_classes), d, d, **kw)
        self._set_buffering(scatter_buffer_rows_per_class)
        self._slot = torch.full((K,), -1, dtype=torch.long, device=self.device)
        self._slot[self.intra_classes] = torch.arange(len(self.intra_classes), device=self.device)
        self._tracked = self._slot >= 0

        self._reference_means = _reference_means(reference_means, K, d, kw)
        self._reference_counts = torch.zeros(2, **kw)  # [mismatches, samples]
        self._cache_budget = int(nc4_cache_bytes)
        self._cache_bytes = 0
        self._cache_overflowed = False
        self._cache: list[tuple[Tensor, Tensor]] = []
        self._nc4_reduced: tuple[float, float, str] | None = None
        self._reduced = False
        self._frozen = False  # set by statistics(), which hands out the tensors without copies
        self._nc4_result: tuple[float | None, float | None, str | None] = (None, None, None)
        self._result: NCStatistics | None = None

    def _set_buffering(self, rows_per_class: int | None) -> None:
        """Tracked rows wait in `_pending` until about `rows_per_class` per class (64 on the CPU;
        1024 on an accelerator, where memory is plentiful and each flush reads back sizes).
        With every class tracked and every class shifted, update() never waits for the device
        (no host reads): on a GPU the accumulation then overlaps the next batch's forward.
        The label range is checked at once on the CPU; on an accelerator it is counted on the
        device and raised by statistics()/all_reduce() (a per-batch check would sync)."""
        on_cpu = self.device.type == "cpu"
        if rows_per_class is None:
            rows_per_class = 64 if on_cpu else 1024
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._pending_rows = 0
        self._flush_rows = max(1, rows_per_class * len(self.intra_classes))
        self._all_tracked = len(self.intra_classes) == self.num_classes
        self._all_shifted = False
        self._defer_label_check = not on_cpu
        self._bad_labels = torch.zeros((), dtype=torch.long, device=self.device)

    def _check_batch(self, features: Tensor, labels: Tensor, predictions: Tensor | None) -> None:
        """Raise a ValueError naming the field when a batch does not fit this accumulator."""
        if self._reduced or self._frozen:
            raise RuntimeError(
                "update() after all_reduce() or statistics(): start a new NCAccumulator per pass"
            )
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"features must have shape (B, {self.dim}), got {tuple(features.shape)}"
            )
        if labels.shape != (features.shape[0],):
            raise ValueError(f"labels must have shape ({features.shape[0]},), got {labels.shape}")
        if predictions is not None and predictions.shape != labels.shape:
            raise ValueError(f"predictions must have shape {labels.shape}, got {predictions.shape}")

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, predictions: Tensor | None = None) -> None:
        """Add one batch: un-normalised features (B, d), labels (B,), optional predictions (B,)."""
        self._check_batch(features, labels, predictions)
        if features.shape[0] == 0:
            return
        labels = self._checked_labels(labels.to(self.device, torch.long))
        raw = features.detach().to(self.device)
        h = raw.to(self.dtype)
        z = F.normalize(h, dim=1)
        self._set_shifts(h, z, labels)
        hc = h - self.shift[labels]
        zc = z - self.shift_normalized[labels]
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.dtype))
        self.sum_features.index_add_(0, labels, h)
        self.sum_normalized.index_add_(0, labels, z)
        self.shifted_sum.index_add_(0, labels, hc)
        self.shifted_sum_normalized.index_add_(0, labels, zc)
        self.sq_norm_normalized.index_add_(0, labels, (z * z).sum(1))
        add_gram(self.scatter, hc)
        self._add_normalized_scatter(zc, labels)
        if predictions is not None:
            self._add_predictions(raw, h, predictions.to(self.device, torch.long))

    def _checked_labels(self, labels: Tensor) -> Tensor:
        """`labels`, known to lie in [0, K): checked now, or (deferred) counted and clamped so
        that the index operations stay in range until the check raises."""
        k = self.num_classes
        if not self._defer_label_check:
            if int(labels.min()) < 0 or int(labels.max()) >= k:
                raise ValueError(f"labels must lie in [0, {k}), got a label outside")
            return labels
        self._bad_labels += ((labels < 0) | (labels >= k)).sum()
        return labels.clamp(0, k - 1)

    def _raise_on_bad_labels(self) -> None:
        """The deferred label check (one host read per pass)."""
        if self._defer_label_check and int(self._bad_labels) > 0:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got {int(self._bad_labels)} "
                "labels outside"
            )

    def _set_shifts(self, h: Tensor, z: Tensor, labels: Tensor) -> None:
        """Classes seen for the first time take their first row of this batch as their shift."""
        if self._all_shifted:
            return
        new = ~self._has_shift[labels]
        if not bool(new.any()):
            return
        rows = torch.nonzero(new).squeeze(1)
        first = torch.full((self.num_classes,), len(labels), device=self.device)
        first.scatter_reduce_(0, labels[rows], rows, reduce="amin")
        classes = torch.nonzero(first < len(labels)).squeeze(1)
        self.shift[classes] = h[first[classes]]
        self.shift_normalized[classes] = z[first[classes]]
        self._has_shift[classes] = True
        self._all_shifted = bool(self._has_shift.all())

    def _add_normalized_scatter(self, zc: Tensor, labels: Tensor) -> None:
        """Untracked rows go into one pooled scatter; tracked rows are buffered per class."""
        slots = self._slot[labels]
        if self._all_tracked:  # no mask to read back: the whole batch is buffered
            self._buffer_tracked(slots, zc, len(labels))
            return
        untracked = slots < 0
        if bool(untracked.all()):
            add_gram(self._scatter_normalized_untracked, zc)
            return
        if bool(untracked.any()):
            add_gram(self._scatter_normalized_untracked, zc[untracked])
        tracked = ~untracked
        self._buffer_tracked(slots[tracked], zc[tracked], int(tracked.sum()))

    def _buffer_tracked(self, slots: Tensor, zc: Tensor, rows: int) -> None:
        self._pending.append((slots, zc))
        self._pending_rows += rows
        if self._pending_rows >= self._flush_rows:
            self._flush_scatter()

    def _flush_scatter(self) -> None:
        """Add the buffered tracked rows: one product per class, so each d x d update covers
        many samples (a per-batch update would be memory-bound at ~B/K rows per class)."""
        if not self._pending:
            return
        slots = torch.cat([p[0] for p in self._pending])
        zt = torch.cat([p[1] for p in self._pending])
        self._pending, self._pending_rows = [], 0
        order = torch.argsort(slots, stable=True)
        slots, zt = slots[order], zt[order]
        present, sizes = torch.unique_consecutive(slots, return_counts=True)
        for slot, block in zip(present.tolist(), torch.split(zt, sizes.tolist()), strict=True):
            add_gram(self.scatter_normalized[slot], block)

    def _add_predictions(self, raw: Tensor, h: Tensor, predictions: Tensor) -> None:
        """Cache features for exact nc4; score against reference means when those were given."""
        if self._reference_means is not None:
            nearest = nearest_class_mean(h, self._reference_means, self._reference_valid())
            self._reference_counts[0] += (nearest != predictions).sum()  # no host read
            self._reference_counts[1] += predictions.numel()
        if self._cache_overflowed:
            return
        size = raw.numel() * raw.element_size() + predictions.numel() * 8
        if self._cache_bytes + size > self._cache_budget:
            self._cache_overflowed, self._cache, self._cache_bytes = True, [], 0
            return
        self._cache.append((raw.clone(), predictions.clone()))
        self._cache_bytes += size

    def _reference_valid(self) -> Tensor:
        """Reference means that are usable (finite rows)."""
        assert self._reference_means is not None
        return torch.isfinite(self._reference_means).all(1)

    def _score_cache(self) -> tuple[float, float]:
        """Mismatches and samples of the cached predictions against the current class means."""
        return nc4_counts(self.counts, self.sum_features, self._cache)

    def all_reduce(self, group: object | None = None) -> None:
        """Sum every statistic across torch.distributed ranks (no-op when not initialised)."""
        if self._frozen:
            raise RuntimeError("all_reduce() after statistics(): call it before statistics()")
        self._raise_on_bad_labels()
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._reduced:
            raise RuntimeError("all_reduce() called twice: it would double-count the statistics")
        self._flush_scatter()
        # The small statistics travel together (one call); the large ones are reduced in place,
        # chunked, so the peak memory stays one set of statistics (a flat copy of everything
        # would double it: ~3.4 GB of scatter at d = 2048 with 100 tracked classes).
        flag = torch.tensor([1.0 if self._cache_overflowed else 0.0], device=self.device)
        small = [self.counts, self.sq_norm_normalized, self._reference_counts, flag.to(self.dtype)]
        local_counts = self.counts.clone()
        packed = torch.cat(small)
        dist.all_reduce(packed, group=group)
        offset = 0
        for t in small[:-1]:
            t.copy_(packed[offset : offset + t.numel()])
            offset += t.numel()
        overflowed_anywhere = float(packed[-1]) > 0
        all_reduce_in_place(self.sum_features, group)
        all_reduce_in_place(self.sum_normalized, group)
        # Every rank moves its shifted statistics to the same (global) class means, then sums.
        self._recentre(local_counts)
        for t in (
            self.shifted_sum,
            self.shifted_sum_normalized,
            self.scatter,
            self._scatter_normalized_untracked,
            self.scatter_normalized,
        ):
            all_reduce_in_place(t, group)
        self._reduced = True
        # The overflow flag is now global, so every rank makes the same (collective) choice.
        if not overflowed_anywhere:
            local = torch.tensor(self._score_cache(), dtype=self.dtype, device=self.device)
            dist.all_reduce(local, group=group)
            if float(local[1]) > 0:
                self._nc4_reduced = (float(local[0]), float(local[1]), "exact")
        self._cache_overflowed = self._cache_overflowed or overflowed_anywhere
        self._cache, self._cache_bytes = [], 0

    def _recentre(self, local_counts: Tensor) -> None:
        """Move this rank's shifted sums and scatters to the reduced class means: for a shift c
        and mean mu, sum (x - mu)(x - mu)^T = P + T e^T + e T^T + n e e^T with e = c - mu, and
        sum (x - mu) = T + n e. e is of the order of the within-class spread: nothing cancels."""
        scale = 1.0 / self.counts.clamp(min=1)[:, None]
        e = self.shift - self.sum_features * scale
        self.scatter += _shift_correction(self.shifted_sum, e, local_counts)
        self.shifted_sum.add_(e * local_counts[:, None])
        self.shift.sub_(e)  # now the global means
        e = self.shift_normalized - self.sum_normalized * scale
        self._recentre_normalized(self.shifted_sum_normalized, e, local_counts)
        self.shifted_sum_normalized.add_(e * local_counts[:, None])
        self.shift_normalized.sub_(e)

    def _recentre_normalized(self, shifted_sum: Tensor, e: Tensor, counts: Tensor) -> None:
        """The normalised scatters' part of `_recentre`: pooled untracked, then per slot."""
        untracked = ~self._tracked
        self._scatter_normalized_untracked += _shift_correction(
            shifted_sum[untracked], e[untracked], counts[untracked]
        )
        ids = self.intra_classes
        t, f, n = shifted_sum[ids], e[ids], counts[ids]
        self.scatter_normalized += (
            t[:, :, None] * f[:, None, :] + f[:, :, None] * t[:, None, :]
        ) + n[:, None, None] * f[:, :, None] * f[:, None, :]

    def _nc4(self) -> tuple[float | None, float | None, str | None]:
        """nc4 counts: exact from the cache when possible, else from the reference means."""
        if self._nc4_reduced is not None:
            return self._nc4_reduced
        if not self._reduced and not self._cache_overflowed:
            mismatches, samples = self._score_cache()
            if samples > 0:
                return mismatches, samples, "exact"
        if float(self._reference_counts[1]) > 0:
            return float(self._reference_counts[0]), float(self._reference_counts[1]), "reference"
        return None, None, None

    def statistics(self) -> NCStatistics:
        """The (reduced, if all_reduce ran) sufficient statistics; ends the pass.

        The scatters are centred in place (they are up to m d^2 floats) and handed over without
        copies, so the accumulator refuses further update()/all_reduce() calls afterwards.
        """
        if self._result is not None:
            return self._result
        self._raise_on_bad_labels()
        self._flush_scatter()
        self._nc4_result = self._nc4()
        self._cache, self._cache_bytes = [], 0
        self._frozen = True
        mismatches, samples, source = self._nc4_result
        within, untracked, per_class = self._centred_scatters()
        self._result = NCStatistics(
            num_classes=self.num_classes,
            dim=self.dim,
            counts=self.counts,
            sum_features=self.sum_features,
            within_scatter=within,
            sum_normalized=self.sum_normalized,
            within_scatter_normalized=untracked + symmetric_from_lower(per_class.sum(0)),
            sq_norm_normalized=self.sq_norm_normalized,
            intra_classes=self.intra_classes,
            scatter_normalized=per_class,
            nc4_mismatches=mismatches,
            nc4_samples=samples,
            nc4_source=source,
        )
        return self._result

    def _centred_scatters(self) -> tuple[Tensor, Tensor, Tensor]:
        """W = P - sum_k T_k T_k^T / n_k for the raw pooled, the normalised untracked pooled (both
        made symmetric) and, in place, the normalised per-class scatters (lower triangles)."""
        inv = 1.0 / self.counts.clamp(min=1)
        t, tz = self.shifted_sum, self.shifted_sum_normalized
        within = symmetric_from_lower(self.scatter) - _outer_sum(t, t, inv)
        untracked = ~self._tracked
        pooled = symmetric_from_lower(self._scatter_normalized_untracked) - _outer_sum(
            tz[untracked], tz[untracked], inv[untracked]
        )
        per_class = self.scatter_normalized
        for slot, k in enumerate(self.intra_classes.tolist()):
            per_class[slot].sub_(torch.outer(tz[k], tz[k]), alpha=float(inv[k]))
        return within, pooled, per_class


def _shift_correction(shifted_sum: Tensor, e: Tensor, counts: Tensor) -> Tensor:
    """sum_k T_k e_k^T + e_k T_k^T + n_k e_k e_k^T (see NCAccumulator._recentre)."""
    cross = _outer_sum(shifted_sum, e)
    return cross + cross.T + _outer_sum(e, e, counts)


def nearest_class_mean(features: Tensor, means: Tensor, valid: Tensor) -> Tensor:
    """argmin_k ||h - mu_k|| over the valid classes (ties: lowest class id)."""
    dist2 = (means * means).sum(1)[None, :] - 2.0 * features @ means.T
    dist2 = dist2.masked_fill(~valid[None, :], float("inf"))
    return dist2.argmin(1)


def _pass_means(counts: Tensor, sum_features: Tensor) -> tuple[Tensor, Tensor]:
    """The class means of one pass (`sum_features / counts`) and which classes have samples."""
    return sum_features / counts.clamp(min=1)[:, None], counts > 0


def nearest_pass_mean(features: Tensor, counts: Tensor, sum_features: Tensor) -> Tensor:
    """The nearest class mean of each row of `features` among the means of the pass with these
    sums (classes without samples excluded): what nc4 scores the predictions against."""
    means, valid = _pass_means(counts, sum_features)
    return nearest_class_mean(features.to(means.dtype), means, valid)


def nc4_counts(
    counts: Tensor, sum_features: Tensor, batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[float, float]:
    """nc4's counts over `batches` of (features, predictions): how many predictions differ from
    the nearest class mean of the pass with these sums (`nearest_pass_mean`), and how many
    predictions there were."""
    means, valid = _pass_means(counts, sum_features)
    mismatches, samples = 0.0, 0.0
    for features, predictions in batches:
        nearest = nearest_class_mean(features.to(means.dtype), means, valid)
        mismatches += float((nearest != predictions).sum())
        samples += float(predictions.numel())
    return mismatches, samples


def _reference_means(means: Tensor | None, K: int, d: int, kw: dict[str, Any]) -> Tensor | None:
    """The accumulator's own copy of `reference_means` (None stays None), shape-checked."""
    if means is None:
        return None
    if tuple(means.shape) != (K, d):
        raise ValueError(
            f"reference_means must have shape (num_classes, dim) = ({K}, {d}), "
            f"got {tuple(means.shape)}"
        )
    return means.detach().to(**kw)
