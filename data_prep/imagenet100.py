"""`python -m data_prep.imagenet100 --imagenet /data/imagenet --out /data/imagenet100`: the
standard ImageNet-100 tree (CMC's 100 classes, ncstudy.data.imagenet100) as symbolic links into
an ImageNet-1K ImageFolder tree (train/<wnid>, val/<wnid>); no image is copied."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ncstudy.data.imagenet100 import link_imagenet100


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (2: the ImageNet tree lacks a class)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.imagenet100", description=__doc__)
    parser.add_argument("--imagenet", required=True, help="ImageNet-1K root: train/, val/")
    parser.add_argument("--out", required=True, help="the ImageNet-100 root to create")
    args = parser.parse_args(argv)
    try:
        made = link_imagenet100(Path(args.imagenet).expanduser(), Path(args.out).expanduser())
    except FileNotFoundError as err:
        print(f"error: {err}")
        return 2
    print(f"{args.out}: {made} class folders linked (train/ and val/, 100 classes each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
