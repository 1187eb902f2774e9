"""The measurements of the first-GPU check (benchmarks/gpu_check.sh runs this), one table:

1. CIFAR ResNet-18 training throughput (batch 512, AMP): ncstudy's worker loop (`train_loop`)
   fed by FFCV and by the torchvision loader, against a bare PyTorch loop on random tensors
   resident on the GPU (the compute limit; goal: the loop at >= 0.95x of it).
2. The loaders alone feeding the GPU (decode + augment + host-to-device copy), images/s.
3. The worker's NC metrics pass (`nc_pass`) against a plain inference pass over the same
   GPU-resident images (goal: <= 1.3x).

    python benchmarks/gpu_bench.py [--per-class 2000] [--epochs 3] [--dry-run]

--dry-run: the CPU, tiny sizes and the small CNN; proves every stage runs (numbers meaningless).
Reuses bench_pipeline's study, worker-loop and bare-loop functions.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_pipeline import bare_rate, loop_rate, study, sync

from ncstudy.config import expand, parse_study
from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip


def junit_rows(path: Path) -> list[Row]:
    """The GPU-marked tests' outcome, from pytest's JUnit XML (gpu_check.sh writes it)."""
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total = int(suite.get("tests", 0))
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    ran = total - skipped
    return [
        Row(f"GPU-marked tests passed ({skipped} skipped)", ran - bad, f"/{ran}", "all", bad == 0),
    ]


@dataclass
class Row:
    """One line of the table: a measured value against its goal (None: no goal, context)."""

    name: str
    value: float
    unit: str
    goal: str = ""
    ok: bool | None = None


def sizes(dry: bool, args: argparse.Namespace) -> dict:
    """Model and sizes: CIFAR ResNet-18 at batch 512 on the GPU; tiny ones in the dry run."""
    if dry:
        return {
            "model": {"name": "small_cnn", "width": 8, "feature_dim": 16},
            "per_class": 12,
            "batch": 32,
            "epochs": 2,
            "workers": 1,
            "metrics_n": 128,
        }
    return {
        "model": {"name": "resnet18_cifar"},
        "per_class": args.per_class,
        "batch": args.batch,
        "epochs": args.epochs,
        "workers": args.workers,
        "metrics_n": args.metrics_n,
    }


def prepare(work: Path, per_class: int) -> tuple[Path, Path | None]:
    """Extract a class-balanced CIFAR-10 subset and write its raw FFCV beton (None: no ffcv)."""
    root = extract_imagefolder_zip(
        shared_cifar10_zip(), work / "img", {"train": per_class, "test": 10}
    )
    import importlib.util

    if importlib.util.find_spec("ffcv") is None:  # data_prep imports without it, then refuses
        return root, None
    from data_prep.write_beton import main as write_beton

    betons = work / "betons"
    write_beton(["--dataset", "cifar10_jpeg", "--root", str(root), "--out", str(betons)])
    return root, betons


def throughput_rows(root: Path, betons: Path | None, s: dict, device: torch.device) -> list[Row]:
    """Worker loop (FFCV, torchvision) against the bare loop, same model, batch and AMP."""
    gpu = {"gpus_per_worker": 1.0 if device.type == "cuda" else 0.0, "cpus_per_worker": 2}
    base = study(root, s["model"], s["epochs"], s["batch"], resources=gpu, amp=True)
    trial = expand(parse_study(base))[0]
    steps_per_epoch = max(5, int(10 * s["per_class"] * 0.9) // s["batch"])  # 10 % is val
    bare = max(bare_rate(base, steps_per_epoch, str(device), amp=True) for _ in range(2))
    rows = [Row(f"bare loop ({trial.model.name}, b{s['batch']}, AMP)", bare, "img/s")]
    loaders: list[tuple[str, dict]] = [("torchvision", {"num_workers": s["workers"]})]
    if betons is not None:
        ffcv = {"loader": "ffcv", "beton_dir": str(betons), "num_workers": s["workers"]}
        loaders.insert(0, ("ffcv", ffcv))
    best = 0.0
    for label, extra in loaders:
        spec = study(root, s["model"], s["epochs"], s["batch"], resources=gpu, amp=True, **extra)
        rate = loop_rate(spec)
        best = max(best, rate)
        rows.append(Row(f"worker loop, {label} loader", rate, "img/s"))
        rows.append(Row(f"  ratio to the bare loop ({label})", rate / bare, "x"))
    ratio = best / bare
    rows.append(Row("worker loop / bare loop (best loader)", ratio, "x", ">= 0.95", ratio >= 0.95))
    if betons is None:
        rows.append(Row("ffcv not installed: FFCV rows skipped", float("nan"), ""))
    return rows


def feed_rate(loader: Iterable, device: torch.device, epochs: int = 2) -> float:
    """Images/s of a loader whose batches are copied to the device (best epoch after one)."""
    best = 0.0
    for epoch in range(epochs + 1):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        sync(device)
        start, n = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            n += len(y)
        sync(device)
        if epoch > 0:
            best = max(best, n / (time.perf_counter() - start))
    return best


def loader_rows(root: Path, betons: Path | None, s: dict, device: torch.device) -> list[Row]:
    """The training loaders alone feeding the device: torchvision (pinned) and FFCV."""
    from torch.utils.data import DataLoader

    from ncstudy.data import build_data

    base = study(root, s["model"], 1, s["batch"], num_workers=s["workers"])
    trial = expand(parse_study(base))[0]
    data = build_data(trial.dataset, trial.seed)
    torchvision_loader = DataLoader(
        data.train,
        s["batch"],
        shuffle=True,
        drop_last=True,
        num_workers=s["workers"],
        pin_memory=device.type == "cuda",
        persistent_workers=s["workers"] > 0,
    )
    tv = feed_rate(torchvision_loader, device)
    rows = [Row(f"torchvision loader -> device ({s['workers']} workers)", tv, "img/s")]
    if betons is not None:
        ffcv_spec = study(root, s["model"], 1, s["batch"], num_workers=s["workers"])
        ffcv_spec["dataset"] |= {"loader": "ffcv", "beton_dir": str(betons)}
        ffcv_trial = expand(parse_study(ffcv_spec))[0]
        ffcv_data = build_data(ffcv_trial.dataset, ffcv_trial.seed)
        ffcv = feed_rate(ffcv_data.train_loader(0, 1, s["batch"], 0, 1), device)
        rows.append(Row(f"ffcv loader -> device ({s['workers']} threads)", ffcv, "img/s"))
        rows.append(Row("  ffcv / torchvision", ffcv / tv, "x"))
    return rows


@torch.no_grad()
def plain_pass(encoder, criterion, batches, device: torch.device) -> float:
    """Seconds of an inference pass: forward and the loss's prediction, nothing kept."""
    encoder.eval()
    sync(device)
    start = time.perf_counter()
    for x, _ in batches:
        criterion.scores(encoder(x)).argmax(1)
    sync(device)
    return time.perf_counter() - start


def metrics_rows(s: dict, device: torch.device) -> list[Row]:
    """nc_pass (all metrics, reduced) against plain_pass over the same resident images."""
    from ncstudy.evaluate.passes import nc_pass
    from ncstudy.losses import build_loss
    from ncstudy.models import build_model

    spec = {"name": "m", "model": s["model"], "losses": [{"name": "ce"}]}
    trial = expand(parse_study(spec))[0]
    encoder = build_model(trial.model, (3, 32, 32)).to(device).eval()
    criterion = build_loss("ce", {}, feature_dim=encoder.feature_dim, num_classes=10).to(device)
    gen = torch.Generator().manual_seed(0)
    n, b = s["metrics_n"], trial.evaluation.eval_batch_size
    batches = [
        (
            torch.randn(min(b, n - i), 3, 32, 32, generator=gen).to(device),
            torch.randint(0, 10, (min(b, n - i),), generator=gen).to(device),
        )
        for i in range(0, n, b)
    ]
    max_intra = trial.evaluation.max_intra_classes
    plain_pass(encoder, criterion, batches[:2], device)  # warm-up (cuDNN, allocator)
    nc_pass(encoder, criterion, batches[:2], 10, device, max_intra)
    plain = min(plain_pass(encoder, criterion, batches, device) for _ in range(2))
    metric = float("inf")
    for _ in range(2):
        sync(device)
        start = time.perf_counter()
        nc_pass(encoder, criterion, batches, 10, device, max_intra)  # returns floats: synced
        metric = min(metric, time.perf_counter() - start)
    ratio = metric / plain
    name = trial.model.name
    return [
        Row(f"inference pass, {n} images ({name})", plain, "s"),
        Row(f"metrics pass (nc_pass), {n} images", metric, "s"),
        Row("metrics pass / inference pass", ratio, "x", "<= 1.3", ratio <= 1.3),
    ]


def print_table(rows: list[Row]) -> None:
    """One table, each number against its goal."""
    print(f"\n{'measurement':52s} {'value':>12s} {'unit':6s} {'goal':>8s}  verdict")
    for r in rows:
        verdict = "" if r.ok is None else ("PASS" if r.ok else "MISS")
        value = "-" if r.value != r.value else f"{r.value:12.3f}".rstrip("0").rstrip(".")
        print(f"{r.name:52s} {value:>12s} {r.unit:6s} {r.goal:>8s}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (smoke run)")
    parser.add_argument("--per-class", type=int, default=2000, help="CIFAR-10 training images")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--metrics-n", type=int, default=50_000)
    parser.add_argument("--stages", nargs="+", default=["throughput", "loaders", "metrics"])
    parser.add_argument("--junit", type=Path, help="pytest JUnit XML to report in the table")
    args = parser.parse_args()
    dry = args.dry_run or os.environ.get("GPU_CHECK_DRY") == "1"
    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device; use --dry-run (or GPU_CHECK_DRY=1) on a CPU")
    device = torch.device("cpu") if dry else torch.device("cuda", 0)
    s = sizes(dry, args)
    name = "dry run on the CPU" if dry else torch.cuda.get_device_name(device)
    print(f"gpu_bench: {name}, torch {torch.__version__}, sizes {s}", flush=True)
    rows: list[Row] = junit_rows(args.junit) if args.junit else []
    work = Path(tempfile.mkdtemp(prefix="ncstudy-gpu-check-"))
    root = betons = None
    if {"throughput", "loaders"} & set(args.stages):
        started = time.perf_counter()
        root, betons = prepare(work, s["per_class"])
        print(f"prepared {10 * s['per_class']} images in {time.perf_counter() - started:.1f} s")
    stages = {
        "throughput": lambda: throughput_rows(root, betons, s, device),
        "loaders": lambda: loader_rows(root, betons, s, device),
        "metrics": lambda: metrics_rows(s, device),
    }
    for stage in args.stages:
        started = time.perf_counter()
        rows += stages[stage]()
        print(f"stage {stage}: {time.perf_counter() - started:.1f} s", flush=True)
    print_table(rows)
    if dry:
        print("(dry run: CPU and tiny sizes; the numbers only show that every stage ran)")


if __name__ == "__main__":
    main()
