"""Cross-field checks of a whole study (run by StudySpec's validator): per-loss recipes, UFM
studies, grid axes, and every loss value a grid axis or search space can produce, so that a
bad value stops the study before Ray starts, not inside a worker."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, get_args

from pydantic import ValidationError

from ncstudy.config.errors import _first_error
from ncstudy.config.loss_inputs import applies, loss_axes
from ncstudy.config.sections import (
    AXIS_SECTIONS,
    UFM_MODEL,
    DatasetSpec,
    GridSpec,
    TrainSpec,
    UFMSpec,
)

if TYPE_CHECKING:
    from ncstudy.config.study import StudySpec


# UFM trials: the whole sample set is one batch; at most this many reports per trial.
UFM_MAX_REPORTS = 1000


def _check_loss_train(study: StudySpec) -> None:
    """Each loss's `train:` merged over the study's must be a valid TrainSpec, and must not
    also be varied by a grid axis or the search space (which value would win is unclear)."""
    varied = set(study.grid.axes) | set(study.search.space if study.search else {})
    for i, loss in enumerate(study.losses):
        if not loss.train:
            continue
        where = f"losses[{i}] ({loss.name}).train"
        if study.model.name == UFM_MODEL:
            raise ValueError(f"{where}: UFM trials take their settings from `ufm:`; remove it")
        clash = sorted(f"train.{k}" for k in loss.train if f"train.{k}" in varied)
        if clash:
            raise ValueError(
                f"{where}: {clash[0]} is also a grid axis or search dimension; keep one of them"
            )
        if study.search is not None and loss.train.get("epochs", study.train.epochs) != (
            study.train.epochs
        ):
            raise ValueError(
                f"{where}.epochs: a search prunes every loss on the study's train.epochs "
                f"({study.train.epochs}); set epochs in `train:` instead"
            )
        try:
            TrainSpec.model_validate({**study.train.model_dump(exclude_unset=True), **loss.train})
        except ValidationError as err:
            reason = _first_error(err, type(study)).removeprefix("(top level): ")
            raise ValueError(f"{where}: {reason}") from None


def _check_ufm_study(study: StudySpec) -> None:
    """A UFM study: model.name ufm with a ufm section, no dataset or batch sizes, one process,
    and every loss valid for the variant (also under each ufm.* grid value)."""
    if study.model.name != UFM_MODEL:
        raise ValueError(f"ufm: set model.name: {UFM_MODEL} to run UFM trials, or remove `ufm`")
    if study.ufm is None:
        raise ValueError(
            f"model.name: {UFM_MODEL} needs a `ufm:` section (K, d, n_per_class, variant, ...)"
        )
    if "dataset" in study.model_fields_set:
        raise ValueError("dataset: UFM trials have no dataset (features are free); remove it")
    # by value: the study.yaml a run logs (every field dumped) must validate again
    if study.grid.batch_size != GridSpec().batch_size:
        raise ValueError(
            "grid.batch_size: UFM trials use the whole sample set as one batch; remove it"
        )
    if study.resources.workers_per_trial != 1:
        raise ValueError("resources.workers_per_trial: UFM trials run in one process; set 1")
    reports = study.ufm.iterations // study.evaluation.every
    if reports > UFM_MAX_REPORTS:
        raise ValueError(
            f"evaluation.every: a UFM trial reports every `every` iterations; {reports} reports "
            f"is too many, raise it to at least {study.ufm.iterations // UFM_MAX_REPORTS}"
        )
    ufm_axes = {p: v for p, v in study.grid.axes.items() if p.startswith("ufm.")}
    base = study.ufm.model_dump(exclude_unset=True)
    for combo in itertools.product(*ufm_axes.values()):
        values = {p.partition(".")[2]: v for p, v in zip(ufm_axes, combo, strict=True)}
        for i, loss in enumerate(study.losses):
            try:  # the loss's own `ufm:` fields, then the grid's values (as resolve_trial)
                ufm = UFMSpec.model_validate({**base, **loss.ufm, **values})
            except ValidationError as err:
                where = f"losses[{i}] ({loss.name}).ufm, grid.axes ({values})"
                raise ValueError(f"{where}: {_first_error(err, type(study))}") from None
            try:
                check_ufm_loss(loss.name, loss.params, ufm)
            except ValueError as err:
                where = f" with {values}" if values else ""
                raise ValueError(f"losses[{i}] ({loss.name}){where}: {err}") from None


def check_ufm_loss(name: str, params: dict[str, Any], ufm: UFMSpec) -> None:
    """A loss must fit the UFM variant and dimensions (raises ValueError with the fix)."""
    # the loss registry and the UFM package import torch: only while a study is validated
    from ncstudy.losses import check_loss_compat
    from ncstudy.ufm import REGULARIZED_LOSSES, SPHERICAL_LOSSES
    from ncstudy.ufm.spherical import POSITIVE_LOSSES

    parsed = check_loss_compat(name, params, ufm.d, ufm.K)
    if getattr(parsed, "queue_size", 0) > 0:
        raise ValueError(
            "queue_size: the UFM optimises the whole sample set as one batch, so a queue would "
            "add stale copies of the same free features to the pool (and every line-search "
            "evaluation would push to it); set queue_size: 0"
        )
    allowed = SPHERICAL_LOSSES if ufm.variant == "spherical" else REGULARIZED_LOSSES
    if name not in allowed:
        other = "regularized" if ufm.variant == "spherical" else "spherical"
        raise ValueError(
            f"ufm.variant {ufm.variant} takes the losses {', '.join(allowed)}; "
            f"use ufm.variant: {other} for {name!r}"
        )
    if name == "supcon":
        if params.get("projection") != "none":
            raise ValueError(
                "supcon in the UFM acts on the free features themselves: set "
                "params: {projection: none}"
            )
        views = int(params.get("views", 2))
        if (ufm.K * ufm.n_per_class) % views:
            raise ValueError(
                f"supcon stacks its {views} views over the K*n_per_class = "
                f"{ufm.K * ufm.n_per_class} free features: make that a multiple of {views}"
            )
    if ufm.log_loss and name not in POSITIVE_LOSSES:
        raise ValueError(
            f"ufm.log_loss needs a positive loss ({', '.join(POSITIVE_LOSSES)}); "
            f"{name!r} can be negative: set log_loss: false"
        )


def _check_axis(study: StudySpec, path: str, values: list[Any]) -> None:
    """An extra grid axis must name an existing field and every value must validate."""
    where = f"grid.axes.{path}"
    if not values:
        raise ValueError(f"{where}: the axis is empty; give at least one value")
    section, _, field = path.partition(".")
    if section == "loss":
        takers = [s.name for s in study.losses if applies(s.name, path)]
        if not field or field == "temperature" or not takers:
            raise ValueError(_no_such_loss_param(study, where, field))
        return
    if section not in AXIS_SECTIONS or field not in AXIS_SECTIONS[section].model_fields:
        raise ValueError(
            f"{where}: unknown axis; use train.<field>, model.<field>, dataset.<field> or "
            "loss.<param> (temperature, batch_size and seed have their own grid lists)"
        )
    if getattr(study, section) is None:
        raise ValueError(f"{where}: the study has no `{section}:` section to vary")
    base = getattr(study, section).model_dump(exclude_unset=True)
    for v in values:
        try:
            AXIS_SECTIONS[section].model_validate({**base, field: v})
        except ValidationError as err:
            raise ValueError(f"{where}={v!r}: {_first_error(err, type(study))}") from None


def _check_loss_values(study: StudySpec) -> None:
    """Every value that a grid axis or a search space gives a loss (a `loss.<param>`, a searched
    temperature, a `model.feature_dim`/dataset/ufm axis that changes d or K) passes the checks
    of a plain loss entry, so a bad value stops the study here, not inside a Ray worker."""
    if study.search is not None:
        _check_search_values(study)
    targets = _loss_targets(study)
    sources = _loss_value_sources(study)
    for i, loss in enumerate(study.losses):
        for origin, entries in sources.items():
            mine = loss_axes(loss.name, entries)
            for combo in itertools.product(*mine.values()):
                chosen = {p[5:]: v for p, v in zip(mine, combo, strict=True)}
                given = ", ".join(f"{origin}.loss.{f}={v!r}" for f, v in chosen.items())
                given += ": " if given else ""
                for context, check in targets:
                    try:
                        check(loss.name, {**loss.params, **chosen})
                    except ValueError as err:
                        raise ValueError(
                            f"{given}losses[{i}] ({loss.name}){context}: {err}"
                        ) from None


def _loss_value_sources(study: StudySpec) -> dict[str, dict[str, list[Any]]]:
    """The values each origin can give a loss parameter (`loss.<param>` -> values): grid axes
    (every combination runs) and search-space choices or range endpoints."""
    grid = {p: list(v) for p, v in study.grid.axes.items() if p.startswith("loss.")}
    out = {"grid.axes": grid}
    if study.search is not None:
        out["search.space"] = {
            p: d if isinstance(d, list) else [d.low, d.high]
            for p, d in study.search.space.items()
            if p.startswith("loss.")
        }
    return out


def _loss_targets(study: StudySpec) -> list[tuple[str, Any]]:
    """(context, check(name, params)) for every (d, K) or UFM problem the study's axes reach."""
    # the data and loss registries import torch: only while a study is validated
    from ncstudy.data.registry import dataset_num_classes
    from ncstudy.losses import check_loss_compat

    axes = study.grid.axes
    if study.ufm is not None:
        ufm_axes = {p: v for p, v in axes.items() if p.startswith("ufm.")}
        base = study.ufm.model_dump(exclude_unset=True)
        own = {loss.name: loss.ufm for loss in study.losses}  # each loss's `ufm:` fields
        targets = []
        for combo in itertools.product(*ufm_axes.values()):
            values = {p.partition(".")[2]: v for p, v in zip(ufm_axes, combo, strict=True)}
            context = f" with {values}" if values else ""
            targets.append(
                (
                    context,
                    lambda n, p, v=values: check_ufm_loss(
                        n, p, UFMSpec.model_validate({**base, **own[n], **v})
                    ),
                )
            )
        return targets
    dims = axes.get("model.feature_dim", [study.model.feature_dim])
    data_axes = {p: v for p, v in axes.items() if p.startswith("dataset.")}
    base = study.dataset.model_dump(exclude_unset=True)
    classes = {
        dataset_num_classes(
            DatasetSpec.model_validate(
                {**base, **{p.partition(".")[2]: v for p, v in zip(data_axes, c, strict=True)}}
            )
        )
        for c in itertools.product(*data_axes.values())
    }
    return [
        (
            f" with model.feature_dim={d}, {k} classes" if len(dims) * len(classes) > 1 else "",
            lambda n, p, d=d, k=k: check_loss_compat(n, p, d, k),
        )
        for d in dims
        for k in sorted(classes)
    ]


def _check_search_values(study: StudySpec) -> None:
    """Search-space entries: every choice and range endpoint is a valid value of its field,
    ranges only on real-valued fields (a sampled 3.7 is no queue size)."""
    from ncstudy.losses import loss_params_model  # the loss registry imports torch

    assert study.search is not None
    for path, dim in study.search.space.items():
        where = f"search.space.{path}"
        values = dim if isinstance(dim, list) else [dim.low, dim.high]
        section, _, field = path.partition(".")
        if path == "temperature":
            bad = [v for v in values if not _positive_real(v)]
            if bad:
                raise ValueError(
                    f"{where}: temperatures must be finite numbers > 0 (logits are cos/tau), "
                    f"got {bad}"
                )
        elif path == "batch_size":
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            if bad:
                raise ValueError(f"{where}: batch sizes must be integers >= 1, got {bad}")
        elif section == "loss":
            takers = [s.name for s in study.losses if applies(s.name, path)]
            infos = [loss_params_model(name).model_fields[field] for name in takers]
            if field == "temperature" or not infos:
                raise ValueError(_no_such_loss_param(study, where, field))
            if not isinstance(dim, list) and not all(_takes_reals(i) for i in infos):
                raise ValueError(
                    f"{where}: a range samples real numbers, but {field} is not real-valued; "
                    "give a list of values"
                )
        elif section == "train":
            if field not in TrainSpec.model_fields:
                raise ValueError(f"{where}: train has no field {field!r}")
            if not isinstance(dim, list) and not _takes_reals(TrainSpec.model_fields[field]):
                raise ValueError(
                    f"{where}: a range samples real numbers, but train.{field} is not "
                    "real-valued; give a list of values"
                )
            base = study.train.model_dump(exclude_unset=True)
            for v in values:
                try:
                    TrainSpec.model_validate({**base, field: v})
                except ValidationError as err:
                    raise ValueError(f"{where}={v!r}: {_first_error(err, type(study))}") from None


def _check_search_metric(study: StudySpec) -> None:
    """The search metric must be in every epoch's report of every trial the search runs. UFM
    trials report val/acc1, train/acc1 and train/loss at every report."""
    from ncstudy.losses.registry import predicts_with_class_means  # imports torch

    search = study.search
    if search is None or study.ufm is not None:
        return
    if search.metric == "val/acc1" and study.dataset.val_fraction == 0:
        raise ValueError(
            "search.metric: val/acc1 needs a validation split, but dataset.val_fraction is 0; "
            "set it > 0 (e.g. 0.15) or search on train/loss"
        )
    for i, loss in enumerate(study.losses):
        if not predicts_with_class_means(loss.name):
            continue
        # its classifier is the class means of an evaluation pass (train.py): no running
        # training accuracy, and a validation accuracy only at evaluation epochs
        where = f"losses[{i}] ({loss.name}) predicts with class-mean prototypes"
        if search.metric == "train/acc1":
            raise ValueError(
                f"search.metric: {where}, so it has no per-epoch train/acc1; search on "
                "val/acc1 (with evaluation.every: 1) or train/loss"
            )
        if search.metric == "val/acc1" and study.evaluation.every != 1:
            raise ValueError(
                f"evaluation.every: {where}, which exist only after an evaluation, so it "
                f"reports val/acc1 only every {study.evaluation.every} epochs and the search "
                "needs it at every epoch; set evaluation.every: 1 or search.metric: train/loss"
            )


def check_test_at_best_val(study: StudySpec) -> None:
    """evaluation.test_at_best_val selects on val/acc1: it needs a validation split."""
    if study.evaluation.test_at_best_val and study.dataset.val_fraction == 0:
        raise ValueError(
            "evaluation.test_at_best_val: it picks the epoch by val/acc1, but "
            "dataset.val_fraction is 0; set it > 0 (the paper holds out 0.1) or remove it"
        )


def _no_such_loss_param(study: StudySpec, where: str, field: str) -> str:
    """The error of a `loss.<param>` axis or search entry that no loss of the study has."""
    from ncstudy.losses import loss_params_model  # the loss registry imports torch

    params = {
        s.name: [f for f in loss_params_model(s.name).model_fields if f != "temperature"]
        for s in study.losses
    }
    valid = "; ".join(f"{name}: {', '.join(p) or 'none'}" for name, p in params.items())
    return (
        f"{where}: no loss of this study has a parameter {field!r} (the temperature is its own "
        f"axis, `temperature`); the losses' parameters are {valid}"
    )


def _positive_real(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _takes_reals(info: Any) -> bool:
    """Whether a pydantic field accepts real numbers (float, or float | None)."""
    return float in (get_args(info.annotation) or (info.annotation,))
