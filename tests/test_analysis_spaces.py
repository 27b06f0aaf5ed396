"""On/off-perturbation axes on hand-made features with a known infection direction."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gandl.analysis import spaces


def _sites(n: int = 200, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """C+ and C- differ along a known unit direction; the largest other variance is along another one."""
    rng = np.random.default_rng(seed)
    d = 6
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    infection, nuisance = basis[:, 0], basis[:, 1]
    role = np.repeat(["Mock", "Active SARS-CoV-2", "Active SARS-CoV-2"], n)
    treated = np.arange(3 * n) >= 2 * n
    level = np.where(role == "Mock", 1.0, -1.0)
    level[treated] = rng.uniform(-1, 1, n)  # compounds rescue part of the way
    x = (4.0 * level[:, None] * infection + rng.normal(0, 3.0, (3 * n, 1)) * nuisance
         + rng.normal(0, 0.3, (3 * n, d)) + 7.0)
    meta = pd.DataFrame({"site_id": [f"s{i}" for i in range(3 * n)], "well_id": [f"w{i}" for i in range(3 * n)],
                         "group": "HRCE", "experiment": "E", "plate": 1,
                         "role": np.where(treated, "treated", np.where(role == "Mock", "C+", "C-")),
                         "perturbation": np.where(treated, "drug", ""), "dose": np.where(treated, 1.0, np.nan)})
    return x.astype(np.float32), meta, basis


def test_axes_recover_the_infection_direction_and_the_orthogonal_pc():
    x, meta, basis = _sites()
    axes = spaces.fit_axes(x, meta)
    assert axes.normal @ basis[:, 0] > 0.99  # points from C- toward C+
    assert abs(axes.off_direction @ basis[:, 1]) > 0.99
    assert abs(axes.off_direction @ axes.normal) < 1e-9
    on, off = spaces.project(x, axes)
    # The treated sites' on-values follow how far each was rescued; their off-values follow the nuisance.
    level, nuisance = (x - 7.0) @ basis[:, 0] / 4.0, (x - 7.0) @ basis[:, 1]
    assert stats.spearmanr(on[400:], level[400:]).statistic > 0.95
    assert abs(stats.pearsonr(off, nuisance).statistic) > 0.99
    # The SVM boundary lies between the control groups.
    threshold = axes.scale_on(axes.threshold)
    assert on[meta["role"] == "C+"].mean() > threshold > on[:200 * 2][200:].mean()


def test_coordinates_table():
    x, meta, _ = _sites(50)
    coords = spaces.coordinates(x, meta, spaces.fit_axes(x, meta))
    assert list(coords["role"].unique()) == ["C+", "C-", "treated"]
    assert {"on", "off", "site_id", "dose"} <= set(coords)
    assert len(coords) == len(x)


def test_axes_need_both_control_kinds():
    x, meta, _ = _sites(20)
    meta["role"] = meta["role"].replace("C+", "C-")
    with pytest.raises(ValueError, match="C\\+ and C-"):
        spaces.fit_axes(x, meta)
