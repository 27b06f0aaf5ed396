"""Normalisation, plate-grouped cross-validation and Table 1 on hand-made features."""

import numpy as np
import pandas as pd
import pytest

from gandl.analysis import classify


def _screen(seed: int = 0, plates_per_line: int = 3, sites: int = 20, shift: float = 2.0,
            lines: tuple[str, ...] = ("HRCE", "VERO")) -> tuple[np.ndarray, pd.DataFrame]:
    """Controls on several plates: C+/C- differ along feature 0, lines along feature 1, plates by an offset."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for li, line in enumerate(lines):
        for p in range(plates_per_line):
            offset = rng.normal(0, 3.0, 4)  # a plate batch effect larger than the biology
            for cond, sign in (("Mock", 1), ("Active SARS-CoV-2", -1)):
                for s in range(sites):
                    rows.append(dict(site_id=f"{line}-1_{p}_{cond[0]}{s}_1", well_id=f"{line}-1_{p}_{cond[0]}{s}",
                                     cell_type=line, experiment=f"{line}-1", plate=p + 1, well=f"{cond[0]}{s}",
                                     site=1, disease_condition=cond, treatment="", treatment_conc=np.nan,
                                     SMILES=""))
                    feats.append(offset + [sign * shift / 2, 3.0 * li, 0, 0] + rng.normal(0, 1, 4))
    return np.asarray(feats, np.float32), pd.DataFrame(rows)


def test_grouped_folds_never_mix_plates():
    x, meta = _screen()
    groups = (meta["experiment"] + "_" + meta["plate"].astype(str)).to_numpy()
    labels = meta["cell_type"].to_numpy()
    folds = classify.grouped_folds(labels, groups, n_splits=5)
    assert len(folds) == 3  # capped by the 3 plates each line has
    seen = []
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(labels[test]) <= set(labels[train])
        seen += list(test)
    assert sorted(seen) == list(range(len(meta)))  # every row tested exactly once


def test_grouped_folds_refuse_a_class_on_one_plate():
    with pytest.raises(classify.CVError, match="single plate"):
        classify.grouped_folds(np.array(["a", "a", "b", "b"]), np.array(["p1", "p2", "p3", "p3"]))


def test_center_scale_uses_each_plates_controls():
    x, meta = _screen()
    z = classify.normalize(x, meta, "center_scale")
    for _, rows in meta.groupby(["experiment", "plate"]).groups.items():
        np.testing.assert_allclose(z[rows].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(z[rows].std(0, ddof=1), 1, atol=1e-5)


def test_tvn_whitens_within_condition_variation():
    x, meta = _screen(sites=200)
    z = classify.normalize(x, meta, "tvn").astype(np.float64)
    keys = meta["experiment"] + meta["plate"].astype(str) + meta["disease_condition"]
    within = z - pd.DataFrame(z).groupby(keys.to_numpy()).transform("mean").to_numpy()
    np.testing.assert_allclose(np.cov(within, rowvar=False), np.eye(4), atol=0.08)
    with pytest.raises(ValueError, match="normalization"):
        classify.normalize(x, meta, "zscore")


def test_hyperplane_matches_decision_function():
    x, meta = _screen()
    y = meta["disease_condition"] == "Mock"
    model = classify.make_svm().fit(x, y)
    w, b = classify.hyperplane(model)
    np.testing.assert_allclose(x @ w + b, model.decision_function(x), rtol=1e-5, atol=1e-5)


def test_table1_separates_controls_and_normalisation_beats_plate_effects():
    x, meta = _screen()
    raw = classify.classify_controls(x, meta).set_index("task")
    norm = classify.classify_controls(classify.normalize(x, meta, "center_scale"), meta).set_index("task")
    assert list(raw.index) == ["C+ vs C- (all cell lines)", "HRCE vs VERO", "C+ vs C- (HRCE)", "C+ vs C- (VERO)"]
    assert (raw["status"] == "ok").all() and (raw["n_folds"] >= 2).all()
    # Per-plate normalisation removes the plate offsets that blur the 2-sigma C+/C- shift.
    assert norm.loc["C+ vs C- (all cell lines)", "accuracy"] > 0.75
    assert norm.loc["C+ vs C- (all cell lines)", "roc_auc"] > 0.85
    assert norm.loc["C+ vs C- (all cell lines)", "accuracy"] > raw.loc["C+ vs C- (all cell lines)", "accuracy"]


def test_table1_skips_a_cell_line_without_controls():
    x, meta = _screen()
    meta.loc[(meta["cell_type"] == "VERO") & (meta["disease_condition"] == "Mock"), "disease_condition"] = ""
    table = classify.classify_controls(x, meta).set_index("task")
    assert table.loc["C+ vs C- (VERO)", "status"].startswith("skipped: only one class")
    assert np.isnan(table.loc["C+ vs C- (VERO)", "accuracy"])
    assert table.loc["C+ vs C- (HRCE)", "status"] == "ok"
