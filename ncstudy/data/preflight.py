"""Pre-flight data checks: every path a study reads, checked before Ray starts (local runs).

Without them a wrong `dataset.root` shows up as a failed trial after Ray started, and a wrong
transfer or ImageNet-C path only after training finished. The checks are cheap (existence and
layout: folders, class folders, the first image of a class; batch sizes against the training
split sizes counted from class folders), never a dataset load.
On a cluster the data lives on the workers, so `ncstudy.run` skips them there.
The dataset modules (torch, torchvision: seconds) are imported inside the checks, so the driver
loads them only when there is data to check (a UFM study has none).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ncstudy.config import UFM_MODEL, SpecError, StudySpec, expand
from ncstudy.data.split_sizes import train_split_size


def check_study_data(study: StudySpec) -> None:
    """Raise SpecError (naming the field and the fix) for the first data path of `study` that
    is missing or has the wrong layout: the training datasets of all trials (grid axes may vary
    the dataset), FFCV files, transfer datasets and the ImageNet-C folder."""
    if study.model.name == UFM_MODEL:
        return  # free features: no data
    _check_paths(study)
    _check_batch_sizes(study)


def _check_paths(study: StudySpec) -> None:
    """Every data path of the study exists with the right layout (see check_study_data)."""
    datasets = _study_datasets(study)
    for spec in datasets:
        _check_dataset(spec)
    ev = study.evaluation
    if ev.ood is not None:
        _check_ood(ev.ood, datasets)
    if ev.transfer is None and ev.corruptions is None:
        return
    if any(d.name == "digits" for d in datasets):
        what = "transfer" if ev.transfer is not None else "corruptions"
        raise SpecError(
            f"evaluation.{what}: a digits encoder reads 1-channel digit images, not RGB "
            f"images; use an image dataset (cifar10_jpeg, cifar10, ...) or remove `{what}`"
        )
    if ev.transfer is not None:
        for i, ds in enumerate(ev.transfer.datasets):
            _check_transfer(ds, f"evaluation.transfer.datasets[{i}]")
    if ev.corruptions is not None and ev.corruptions.imagenet_c_root is not None:
        for spec in datasets:
            _check_imagenet_c(ev.corruptions, spec)


def _study_datasets(study: StudySpec) -> list[Any]:
    """The distinct DatasetSpecs the study's trials train on (searches: the study's own)."""
    if study.search is not None:
        return [study.dataset]
    unique: dict[str, Any] = {}
    for trial in expand(study):
        unique.setdefault(trial.dataset.model_dump_json(), trial.dataset)
    return list(unique.values())


def _check_batch_sizes(study: StudySpec) -> None:
    """Every batch size fits its training split: each worker's share of the split holds at
    least one batch (the loaders drop the last partial batch, so a larger batch trains on
    nothing). Inside a trial this is a deterministic error that no retry can fix."""
    workers = study.resources.workers_per_trial
    if study.search is not None:
        searched = study.search.space.get("batch_size", [])
        field = "search.space.batch_size" if searched else "grid.batch_size"
        pairs = [(study.dataset, b) for b in (searched or study.grid.batch_size)]
    else:
        field = "grid.batch_size"
        pairs = [(t.dataset, t.batch_size) for t in expand(study)]
    largest: dict[str, tuple[Any, int]] = {}
    for spec, batch in pairs:
        key = spec.model_dump_json()
        if key not in largest or batch > largest[key][1]:
            largest[key] = (spec, batch)
    for spec, batch in largest.values():
        try:
            size = train_split_size(spec)
        except ValueError as err:  # e.g. subset_per_class above the smallest class
            raise SpecError(str(err)) from None
        if size is not None and -(-size // workers) < batch // workers:
            raise _fail(
                field,
                spec,
                f"batch size {batch} is larger than the training split ({size} images"
                + (f" over {workers} workers" if workers > 1 else "")
                + "); lower it to at most "
                f"{size if workers == 1 else workers * -(-size // workers)}, or use more data "
                "(dataset.subset_per_class, val_fraction)",
            )


def _fail(field: str, spec: Any, message: str) -> SpecError:
    label = f" ({spec.name})" if spec is not None else ""
    return SpecError(f"{field}{label}: {message}")


def _check_dataset(spec: Any) -> None:
    # torch, torchvision: see the module docstring
    from ncstudy.data.imagefolder import IMAGENET_CLASSES

    if spec.name.startswith(("cifar10", "cifar100")) and "jpeg" not in spec.name:
        _check_cifar(spec)
    elif spec.name.startswith("cifar10_jpeg"):
        _check_cifar10_jpeg(spec)
    elif spec.name == "miniimagenet":  # its own message: no download exists
        _check_miniimagenet(spec)
    elif spec.name in ("imagefolder", *IMAGENET_CLASSES):
        if spec.root is None:
            raise _fail("dataset.root", spec, "not set; point it at the train/ + val/ tree")
        _check_tree(
            Path(spec.root).expanduser(), "dataset.root", spec, IMAGENET_CLASSES.get(spec.name)
        )
    if spec.loader == "ffcv":
        _check_ffcv(spec)


def _check_miniimagenet(spec: Any) -> None:
    # torch, torchvision: see the module docstring
    from ncstudy.data.miniimagenet import CLASSES, HOW_TO_GET

    if spec.root is None:
        raise _fail("dataset.root", spec, f"not set; {HOW_TO_GET}")
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise _fail("dataset.root", spec, f"{root} does not exist; {HOW_TO_GET}")
    _check_tree(root, "dataset.root", spec, CLASSES)


def _check_cifar(spec: Any) -> None:
    # torch, torchvision: see the module docstring
    from ncstudy.data.cifar import ARCHIVES, cifar_root

    which = spec.name.removesuffix("_lt")
    root = cifar_root(spec)
    folder, url = ARCHIVES[which]
    if spec.download or (root / folder).is_dir():
        return  # torchvision downloads it (online) or it is there
    raise _fail(
        "dataset.root",
        spec,
        f"{root / folder}/ not found; set dataset.download: true (online) or download {url} "
        f"and extract it into {root} (or point dataset.root at the folder that holds {folder}/)",
    )


def _check_cifar10_jpeg(spec: Any, field: str = "dataset.root") -> None:
    # torch, torchvision: see the module docstring
    from ncstudy.data.imagefolder import NO_CIFAR10_JPEG, cifar10_jpeg_cache, shared_cifar10_zip

    if spec.root is not None:
        _check_tree(Path(spec.root).expanduser(), field, spec, 10)
        return
    cached, zip_path = cifar10_jpeg_cache(), shared_cifar10_zip()
    if not cached.is_dir() and not (zip_path is not None and zip_path.is_file()):
        zip_text = f"NCSTUDY_CIFAR10_ZIP={zip_path} is not a file" if zip_path else "no zip"
        raise _fail(
            field, spec, f"not set, no extracted copy at {cached} and {zip_text}; {NO_CIFAR10_JPEG}"
        )


def _check_tree(root: Path, field: str, spec: Any, classes: int | None) -> None:
    """An ImageFolder tree: train/<class>/ with images, val/ or test/ with the same classes."""
    # torch, torchvision: see the module docstring
    from ncstudy.data.imagefolder import TEST_SPLITS

    layout = "train/<class>/*.jpg and val/<class>/*.jpg (or test/)"
    if not root.is_dir():
        raise _fail(field, spec, f"{root} does not exist; it should hold {layout}")
    train = _class_folders(root / "train")
    if train is None:
        raise _fail(field, spec, f"{root} has no train/ folder; it should hold {layout}")
    test_dir = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if test_dir is None:
        raise _fail(field, spec, f"{root} has neither val/ nor test/; it should hold {layout}")
    if not train:
        raise _fail(field, spec, f"{root / 'train'} has no class folders ({layout})")
    if classes is not None and len(train) != classes:
        raise _fail(
            field,
            spec,
            f"{root / 'train'} has {len(train)} class folders, {spec.name} has {classes}; "
            "use name: imagefolder for other trees",
        )
    test = _class_folders(test_dir) or []
    if test != train:
        differ = sorted(set(train) ^ set(test))[:3]
        raise _fail(
            field,
            spec,
            f"{root}: train/ and {test_dir.name}/ have different classes (e.g. {differ})",
        )
    if not _has_image(root / "train" / train[0]):
        raise _fail(field, spec, f"no images in {root / 'train' / train[0]}/ ({layout})")


def _class_folders(split_dir: Path) -> list[str] | None:
    if not split_dir.is_dir():
        return None
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def _has_image(folder: Path) -> bool:
    # torch, torchvision: see the module docstring
    from ncstudy.data.imagefolder import IMAGE_SUFFIXES

    with os.scandir(folder) as entries:
        return any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in entries)


def _check_ffcv(spec: Any) -> None:
    # torch, torchvision: see the module docstring
    from ncstudy.data.ffcv_loader import BETON_NAMES, beton_path, require_ffcv

    try:
        require_ffcv()  # importing it catches missing system libraries too
    except ValueError as err:
        raise _fail("dataset.loader", spec, str(err).removeprefix("loader: ")) from None
    path = beton_path(spec.beton_dir, BETON_NAMES[spec.name])
    if not path.is_file():
        raise _fail(
            "dataset.beton_dir",
            spec,
            f"{path} does not exist; write it with `python -m data_prep.write_beton --dataset "
            f"{spec.name} --out {path.parent}` (add --root for file-based datasets)",
        )


def _check_ood(specs: list[Any], datasets: list[Any]) -> None:
    from ncstudy.evaluate.ood import check_ood  # torch, torchvision: see the module docstring

    try:
        check_ood(specs, datasets)
    except (ValueError, FileNotFoundError) as err:
        raise SpecError(str(err)) from None


def _check_transfer(ds: Any, field: str) -> None:
    # torch, torchvision: see the module docstring
    from ncstudy.evaluate.transfer import (
        TORCHVISION_FOLDERS,
        downstream_root,
        reads_as_imagefolder,
    )

    if ds.name == "cifar10_jpeg":
        _check_cifar10_jpeg(ds, f"{field}.root")
        return
    if ds.name == "imagefolder":
        _check_tree(Path(ds.root).expanduser(), f"{field}.root", ds, None)
        return
    root = downstream_root(ds)  # not cifar10_jpeg: that one would extract the zip
    folder = TORCHVISION_FOLDERS[ds.name]
    if (root / folder).is_dir() or ds.download:
        return
    if reads_as_imagefolder(ds, root):  # a named dataset's ImageFolder copy
        _check_tree(root, f"{field}.root", ds, None)
        return
    found = f"neither torchvision's files ({folder}/) nor an ImageFolder tree (train/, test/)"
    if ds.name == "voc2007":
        found = f"no VOC devkit ({folder}/ with Annotations/, JPEGImages/, ImageSets/)"
    raise _fail(
        f"{field}.root",
        ds,
        f"{root} holds {found}; set root to where the files are, or download: true (online)",
    )


def _check_imagenet_c(spec: Any, dataset: Any) -> None:
    """Every requested `<root>/<corruption>/<severity>/` exists; on ImageFolder-type training
    sets its class folders are the training classes (labels are folder positions)."""
    # torch: see the module docstring
    from ncstudy.evaluate.corruptions import check_same_classes

    field = "evaluation.corruptions.imagenet_c_root"
    root = Path(spec.imagenet_c_root).expanduser()
    if not root.is_dir():
        raise _fail(
            field, None, f"{root} does not exist; it should hold <corruption>/<1-5>/<wnid>/*"
        )
    train_classes = None
    tree = _tree_root(dataset)
    if tree is not None:
        train_classes = _class_folders(tree / "train")
    for name in spec.corruptions:
        for severity in spec.severities:
            folder = root / name / str(severity)
            found = _class_folders(folder)
            if found is None:
                raise _fail(
                    field,
                    None,
                    f"{folder} does not exist; ImageNet-C holds <corruption>/<severity>/<wnid>/ "
                    "(or remove imagenet_c_root to generate the corruptions)",
                )
            if train_classes is not None:
                try:
                    check_same_classes(found, train_classes, folder)
                except ValueError as err:  # its message names the field already
                    raise SpecError(str(err)) from None


def _tree_root(dataset: Any) -> Path | None:
    """The ImageFolder root a training set reads its class names from (None: CIFAR pickles)."""
    # torch, torchvision: see the module docstring
    from ncstudy.data.imagefolder import IMAGENET_CLASSES, cifar10_jpeg_cache

    if dataset.name in ("imagefolder", *IMAGENET_CLASSES) and dataset.root is not None:
        return Path(dataset.root).expanduser()
    if dataset.name.startswith("cifar10_jpeg"):
        cached = cifar10_jpeg_cache()
        return Path(dataset.root).expanduser() if dataset.root is not None else cached
    return None
