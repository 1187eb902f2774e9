"""NCAccumulator.update() on an accelerator reads nothing back from the device once every
class has a shift (every class tracked): no per-batch label-range check, no masks to count.
The GPU check measures what that buys (benchmarks/README.md, first GPU run); here, on the CPU,
the accelerator's code path is forced and checked for host reads, for the deferred label
error, and for statistics equal to the CPU path's."""

from __future__ import annotations

import pytest
import torch

from ncstudy.metrics import NCAccumulator

K, D = 6, 5


def batches(n: int = 4, b: int = 30) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        y = torch.arange(b) % K  # every class in every batch
        out.append((torch.randn(b, D, generator=g) + y[:, None], y, torch.randint(0, K, (b,))))
    return out


def accelerator_path(**kw: object) -> NCAccumulator:
    """An accumulator on the accelerator's code path (deferred label check, large buffer)."""
    acc = NCAccumulator(K, D, max_intra_classes=K, **kw)
    acc._defer_label_check = True
    return acc


class NoHostReads:
    """Every way a tensor's value reaches Python raises while active."""

    NAMES = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")

    def __enter__(self) -> None:
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}
        for n in self.NAMES:
            setattr(torch.Tensor, n, self._refuse(n))

    def __exit__(self, *exc: object) -> None:
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)

    @staticmethod
    def _refuse(name: str):  # noqa: ANN205
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"host read in update(): Tensor.{name}")

        return refuse


def test_update_reads_nothing_back_once_every_class_is_shifted() -> None:
    acc = accelerator_path(scatter_buffer_rows_per_class=1000)
    data = batches()
    acc.update(*data[0])  # first batch: the shifts are set (reads back which classes are new)
    with NoHostReads():
        for z, y, p in data[1:]:
            acc.update(z, y, p)
    assert acc.statistics().counts.sum() == 4 * 30


def test_the_guard_catches_a_host_read() -> None:
    """The guard itself: the CPU path checks the label range with host reads."""
    acc = NCAccumulator(K, D, max_intra_classes=K)
    data = batches()
    acc.update(*data[0])
    with NoHostReads(), pytest.raises(AssertionError, match="host read"):
        acc.update(*data[1])


def test_a_bad_label_is_raised_at_the_end_of_the_pass() -> None:
    acc = accelerator_path()
    z, y, p = batches(1)[0]
    y = y.clone()
    y[3] = K  # out of range
    acc.update(z, y, p)  # no host read, so no error yet
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\), got 1 labels outside"):
        acc.statistics()
    with pytest.raises(ValueError, match="labels must lie"):
        NCAccumulator(K, D).update(z, y, p)  # the CPU path: at once


def test_the_accelerator_path_gives_the_cpu_statistics() -> None:
    cpu, fast = NCAccumulator(K, D, max_intra_classes=K), accelerator_path()
    for z, y, p in batches():
        cpu.update(z, y, p)
        fast.update(z, y, p)
    a, b = cpu.statistics(), fast.statistics()
    for name in (
        "counts",
        "sum_features",
        "within_scatter",
        "scatter_normalized",
        "nc4_mismatches",
    ):
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, torch.Tensor):
            torch.testing.assert_close(va, vb, rtol=1e-12, atol=1e-12)
        else:
            assert va == vb
