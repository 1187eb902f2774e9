"""What one trial's config costs to turn into its TrialSpec, before and after the one config
shape (issue #13), measured in the same process.

Before, a search trial's Tune config held the sampled point and the whole study, so every call
of `trial_of` on it (the trial function, Tune's trial names, the progress lines, the searcher
closing a run) validated the whole StudySpec again and resolved the point. Now the searcher
resolves each point once, before Tune sees it, and every trial config is `{"trial": <TrialSpec>}`
for grid and search alike: reading it is one TrialSpec validation.

    python benchmarks/bench_trial_config.py --repeats 200
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from ncstudy.config import StudySpec, TrialSpec, parse_study
from ncstudy.search import search_trial, trial_from_point
from ncstudy.trial import trial_of

STUDY = {
    "name": "bench",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 4, "lr": 0.1},
    "losses": [{"name": "ce"}, {"name": "normface"}],
    "grid": {"batch_size": [64], "seed": [7]},
    "search": {
        "n_trials": 8,
        "space": {"temperature": {"low": 0.05, "high": 1.0}, "train.lr": [0.05, 0.1]},
    },
}


def trial_of_sampled_point(config: dict[str, Any]) -> TrialSpec:
    """What the previous `trial_of` did for a search trial's config (same functions)."""
    study = StudySpec.model_validate(config["study"])
    trial = trial_from_point(study, config["loss_index"], config["point"])
    return trial.model_copy(update={"key": f"{trial.key}-o{config['optuna_trial']}"})


def per_call_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median of `repeats` calls, in milliseconds (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    study = parse_study(STUDY)
    point = {"temperature": 0.2, "train.lr": 0.1}
    old = {"point": point, "study": study.model_dump(mode="json"), "loss_index": 1}
    old["optuna_trial"] = 3
    new = {"trial": search_trial(study, 1, point, 3).model_dump(mode="json")}
    assert trial_of_sampled_point(old) == trial_of(new)  # the same trial either way
    before = per_call_ms(lambda: trial_of_sampled_point(old), args.repeats)
    after = per_call_ms(lambda: trial_of(new), args.repeats)
    once = per_call_ms(lambda: search_trial(study, 1, point, 3).model_dump(mode="json"), 50)
    print(f"search trial config -> TrialSpec, before (point + whole study): {before:8.3f} ms")
    print(f"any trial config -> TrialSpec, now ({{'trial': ...}}):           {after:8.3f} ms")
    print(f"ratio before / now: {before / after:.0f}x")
    print(f"now, once per search trial in the searcher (resolve the point): {once:8.3f} ms")


if __name__ == "__main__":
    main()
