"""How close a full trial gets to the compute limit: ncstudy's worker loop on the offline
CIFAR-10 copy (decode + training augmentation + train step), fed by the torchvision loader
(0 and 2 loader processes) and by FFCV, against the bare forward/backward/SGD step of the same
model on in-memory tensors, in the same process.

    python benchmarks/bench_pipeline.py [--per-class 100] [--epochs 3] [--model small_cnn]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ncstudy.config import expand, parse_study
from ncstudy.context import LocalContext
from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip
from ncstudy.train import train_loop

# NCSTUDY_CIFAR10_ZIP, else the offline CIFAR-10 JPEG copy next to the repository
OFFLINE_ZIP = shared_cifar10_zip() or (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"
)


def study(
    root: Path,
    model: dict,
    epochs: int,
    batch: int,
    *,
    resources: dict | None = None,
    amp: bool = False,
    **dataset: object,
) -> dict:
    """A one-trial CE study on the extracted CIFAR-10 copy (resources: overrides, e.g. GPUs)."""
    return {
        "name": "pipeline",
        "dataset": {"name": "cifar10_jpeg", "root": str(root), "val_fraction": 0.1, **dataset},
        "model": model,
        "train": {"epochs": epochs, "lr": 0.1, "amp": amp},
        "losses": [{"name": "ce"}],
        "grid": {"batch_size": [batch]},
        "resources": {"cpus_per_worker": 2, **(resources or {})},
        "evaluation": {"every": epochs, "nc_metrics": False},
    }


def loop_rate(spec: dict) -> float:
    """Samples/s of the worker loop over the epochs after the first (warm-up, JIT)."""
    ctx = LocalContext()
    train_loop(expand(parse_study(spec))[0], ctx)
    rates = [r["perf/samples_per_second"] for r in ctx.reports]
    return sum(rates[1:]) / len(rates[1:])


def bare_rate(spec: dict, steps: int, device: str = "cpu", amp: bool = False) -> float:
    """Samples/s of forward + backward + SGD on random tensors of the same shape, resident on
    the device (the compute limit); with `amp` as the worker loop runs it (autocast + scaler)."""
    from ncstudy.losses import build_loss
    from ncstudy.models import build_model

    dev = torch.device(device)
    trial = expand(parse_study(spec))[0]
    encoder = build_model(trial.model, (3, 32, 32)).to(dev)
    loss = build_loss("ce", {}, feature_dim=encoder.feature_dim, num_classes=10).to(dev)
    params = list(encoder.parameters()) + list(loss.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    use_amp = amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    x = torch.randn(trial.batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (trial.batch_size,), device=dev)
    encoder.train()
    for i in range(steps + 2):
        if i == 2:
            sync(dev)
            start = time.perf_counter()
        with torch.autocast(device_type=dev.type, enabled=use_amp):
            out = loss(encoder(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        scaler.step(opt)
        scaler.update()
    sync(dev)
    return steps * trial.batch_size / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall clocks time the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="ncstudy-pipeline-"))
    root = extract_imagefolder_zip(OFFLINE_ZIP, tmp / "img", {"train": args.per_class, "test": 10})
    model = {"name": args.model, "width": args.width, "feature_dim": 64}
    base = study(root, model, args.epochs, args.batch)

    bare = bare_rate(base, steps=max(5, 9 * args.per_class // args.batch))
    print(
        f"model {args.model} width {args.width}, batch {args.batch}, 2 threads, "
        f"{10 * args.per_class} training images"
    )
    print(f"bare fwd/bwd on in-memory tensors        {bare:8.1f} samples/s   1.00")
    for workers in (0, 2):
        rate = loop_rate(study(root, model, args.epochs, args.batch, num_workers=workers))
        print(
            f"trial, torchvision loader, {workers} workers    {rate:8.1f} samples/s   "
            f"{rate / bare:.2f}"
        )
    try:
        from data_prep.write_beton import main as write_beton
    except ImportError:
        print("ffcv not installed: skipped")
        return
    betons = tmp / "betons"
    write_beton(["--dataset", "cifar10_jpeg", "--root", str(root), "--out", str(betons)])
    ffcv = study(root, model, args.epochs, args.batch, loader="ffcv", beton_dir=str(betons))
    rate = loop_rate(ffcv)
    print(f"trial, FFCV loader (raw beton)           {rate:8.1f} samples/s   {rate / bare:.2f}")


if __name__ == "__main__":
    main()
