"""The study schema: a YAML file -> a validated StudySpec -> fully resolved TrialSpecs.

Everything is checked here, before Ray or MLflow start: unknown keys (`extra="forbid"`), types,
loss names and parameters (against the loss registry), dataset and model names, grid axes,
impossible combinations, and the study name (it becomes a folder and must stay inside the
output folder).

Modules: `sections` (dataset, model, train, loss entry, grid, resources, ufm), `evaluation`,
`search_space`, `checks` (cross-field checks of a whole study), `study` (StudySpec, TrialSpec,
loading), `expand` (the grid as trials), `loss_inputs` (what each loss receives: its
temperatures and the axes that apply to it), `errors`.
"""

from ncstudy.config.checks import check_ufm_loss
from ncstudy.config.errors import SpecError, TrialConfigError, config_error_in
from ncstudy.config.evaluation import (
    CORRUPTIONS,
    DOWNSTREAM_DATASETS,
    ConvergenceSpec,
    CorruptionSpec,
    DownstreamDatasetSpec,
    EvaluationSpec,
    LongTailEvalSpec,
    ProbeSpec,
    TransferSpec,
)
from ncstudy.config.expand import expand, resolve_trial, trial_key
from ncstudy.config.search_space import SEARCH_METRICS, SEARCHABLE, RangeSpec, SearchSpec
from ncstudy.config.sections import (
    UFM_MODEL,
    DatasetSpec,
    GridSpec,
    LossSpec,
    ModelSpec,
    ResourcesSpec,
    Strict,
    TrainSpec,
    UFMSpec,
)
from ncstudy.config.study import STUDY_NAME, StudySpec, TrialSpec, load_study, parse_study

__all__ = [
    "CORRUPTIONS",
    "DOWNSTREAM_DATASETS",
    "SEARCHABLE",
    "SEARCH_METRICS",
    "STUDY_NAME",
    "UFM_MODEL",
    "ConvergenceSpec",
    "CorruptionSpec",
    "DatasetSpec",
    "DownstreamDatasetSpec",
    "EvaluationSpec",
    "GridSpec",
    "LongTailEvalSpec",
    "LossSpec",
    "ModelSpec",
    "ProbeSpec",
    "RangeSpec",
    "ResourcesSpec",
    "SearchSpec",
    "SpecError",
    "Strict",
    "StudySpec",
    "TrainSpec",
    "TransferSpec",
    "TrialConfigError",
    "TrialSpec",
    "UFMSpec",
    "check_ufm_loss",
    "config_error_in",
    "expand",
    "load_study",
    "parse_study",
    "resolve_trial",
    "trial_key",
]
