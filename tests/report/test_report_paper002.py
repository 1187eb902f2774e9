"""The paper-002 figures on a constructed trials frame (no MLflow): Figures 2 and 3 appear for a
K > d + 1 study with the values of the frame in their captions, and not for an ordinary grid."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from ncstudy.report import paper002


def study(k: int, dims: list[int]) -> SimpleNamespace:
    rows = []
    for d in dims:
        for i, tau in enumerate((0.05, 0.5)):
            rows.append(
                {"key": f"n{d}{tau}", "run_id": None, "status": "FINISHED", "loss": "normface",
                 "temperature": tau, "num_classes": k, "axes": {"model.feature_dim": d},
                 "nc/gnc1": 0.1 + i, "nc/gnc2": 0.9 - 0.5 * i, "nc/gnc3": 0.2 + i,
                 "test/acc1": 0.8 - 0.1 * i, "train/acc1": 0.9}
            )  # fmt: skip
    histories = pd.DataFrame({"key": [], "metric": [], "step": [], "value": []})
    return SimpleNamespace(trials=pd.DataFrame(rows), spec=None, histories=histories)


def test_figures_2_and_3_for_many_classes(tmp_path) -> None:
    files = paper002.figures(study(k=10, dims=[2, 4]), tmp_path)
    names = sorted(f.path.name for f in files)
    assert names == [
        "gnc_dimension_normface_tau0.05.png",
        "gnc_dimension_normface_tau0.5.png",
        "gnc_temperature_normface_d2.png",
        "gnc_temperature_normface_d4.png",
    ]
    assert all(f.path.stat().st_size > 5000 for f in files)
    fig2 = next(f for f in files if f.name == "gnc_temperature_normface_d2")
    # d = 2, K = 10: the regular decagon, 1 - cos(2 pi / 10)
    assert "optimal rho_ovr(2, 10) = 0.191" in fig2.caption
    assert "GNC2 0.900 at tau = 0.05 to 0.400 at tau = 0.5" in fig2.caption
    fig3 = next(f for f in files if f.name == "gnc_dimension_normface_tau0.05")
    assert "d=2: 80.0%, d=4: 80.0%" in fig3.caption


def test_no_gnc_figures_for_an_ordinary_grid(tmp_path) -> None:
    assert paper002.figures(study(k=10, dims=[16, 32]), tmp_path) == []
