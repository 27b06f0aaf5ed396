"""Normalisation, plate-grouped cross-validation and Table 1 on hand-made features."""

import numpy as np
import pandas as pd
import pytest

from gandl.analysis import classify
from gandl.data import screen


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
    return np.asarray(feats, np.float32), screen.screen_view(pd.DataFrame(rows), screen.default_schema())


def test_grouped_folds_never_mix_plates():
    x, meta = _screen()
    groups = (meta["experiment"] + "_" + meta["plate"].astype(str)).to_numpy()
    labels = meta["group"].to_numpy()
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


@pytest.mark.parametrize("dim", [4, 256])  # 160-240 training rows: the primal solver (side by side), then the dual
def test_svms_fitted_side_by_side_equal_the_same_fits_one_by_one(dim):
    rng = np.random.default_rng(2)
    x, meta = _screen()
    x = np.hstack([x, rng.normal(size=(len(x), dim - x.shape[1]))]).astype(np.float32) if dim > x.shape[1] else x
    labels = meta["disease_condition"].to_numpy()
    trains = [np.flatnonzero(meta["plate"].to_numpy() != p) for p in (1, 2, 3)] + [np.arange(len(x))]
    together = [classify.hyperplane(m) for m in classify.fit_svms(x, labels, trains, c=0.5, seed=3)]
    alone = [classify.hyperplane(classify.make_svm(0.5, 3).fit(x[t], labels[t])) for t in trains]
    for (w, b), (w1, b1) in zip(together, alone):
        np.testing.assert_array_equal(w, w1)
        assert b == b1


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
    meta.loc[(meta["group"] == "VERO") & (meta["role"] == "C+"), "role"] = "other"
    table = classify.classify_controls(x, meta).set_index("task")
    assert table.loc["C+ vs C- (VERO)", "status"].startswith("skipped: only one class")
    assert np.isnan(table.loc["C+ vs C- (VERO)", "accuracy"])
    assert table.loc["C+ vs C- (HRCE)", "status"] == "ok"


def _wells(meta: pd.DataFrame, sites_per_well: int = 3) -> pd.DataFrame:
    """The same sites, `sites_per_well` consecutive sites of a plate and condition making one well."""
    index = meta.groupby(["experiment", "plate", "disease_condition"]).cumcount() // sites_per_well
    return meta.assign(well_id=meta["experiment"] + "_" + meta["plate"].astype(str) + "_"
                       + meta["disease_condition"].str[0] + index.astype(str))


def _weak(shift: float, seed: int = 0, noise_dims: int = 20) -> tuple[np.ndarray, pd.DataFrame]:
    """Plate-normalised controls whose C+/C- differ by `shift` sds along one feature among `noise_dims` others."""
    x, meta = _screen(seed, plates_per_line=3, sites=30, shift=shift)
    extra = np.random.default_rng(seed + 1).normal(0, 1, (len(x), noise_dims)).astype(np.float32)
    meta = _wells(meta)
    return classify.normalize(np.concatenate([x[:, :1], extra], 1), meta, "center_scale"), meta


def test_draw_wells_takes_whole_wells_from_the_training_plates_only():
    _, meta = _weak(1.0)
    labels = classify.control_role(meta).to_numpy()
    wells, groups = meta["well_id"].to_numpy(), classify.plate_key(meta)
    held_out = classify.control_folds(meta, n_splits=3)
    rng = np.random.default_rng(0)
    for train, test, k in classify.folds_of_groups(groups, held_out):
        rows = classify.draw_wells(train, labels, wells, 2, rng)
        assert set(rows) <= set(train) and not set(rows) & set(test) and not set(groups[rows]) & set(held_out[k])
        chosen = set(wells[rows])
        assert sorted(pd.Series(wells[rows]).groupby(labels[rows]).nunique()) == [2, 2]
        assert sorted(rows) == sorted(i for i in train if wells[i] in chosen)  # every site of a chosen well
    few = np.flatnonzero((labels == "C-") | (wells == wells[labels == "C+"][0]))  # one C+ well in all
    assert set(wells[classify.draw_wells(few, labels, wells, 4, rng)]) >= {wells[labels == "C+"][0]}


def test_few_labels_cost_accuracy_on_a_weak_signal_and_stay_at_chance_on_noise():
    x, meta = _weak(1.2)
    full = classify.classify_controls(x, meta, n_splits=3).set_index("task")
    few = classify.classify_few_labels(x, meta, (4, 1000), n_splits=3).set_index(["task", "k"])
    task = "C+ vs C- (all cell lines)"
    assert (few["status"] == "ok").all() and (few["draws"] == 5).all()
    assert 0.55 < few.loc[(task, 4), "accuracy"] < full.loc[task, "accuracy"] - 0.03
    assert few.loc[(task, 4), "roc_auc"] < full.loc[task, "roc_auc"]
    assert few.loc[(task, 4), "min_wells"] == 4 and few.loc[(task, 4), "accuracy_sd"] > 0
    # k above what the training plates hold: every training well, i.e. Table 1 itself.
    assert few.loc[(task, 1000), "accuracy"] == pytest.approx(full.loc[task, "accuracy"])
    assert few.loc[(task, 1000), "min_wells"] < 1000
    noise, meta = _weak(0.0)
    for k in (2, 4, 8):
        table = classify.classify_few_labels(noise, meta, (k,), n_splits=3).set_index("task")
        assert abs(table.loc[task, "accuracy"] - 0.5) < 0.08 and abs(table.loc[task, "roc_auc"] - 0.5) < 0.1


def test_few_labels_skip_a_label_fitted_extractor():
    x, meta = _weak(1.0)
    table = classify.classify_few_labels(x, meta, (4,), n_splits=3, label_fitted=True)
    assert table["status"].str.startswith("skipped: the feature extractor was fitted").all()
    assert table["accuracy"].isna().all()


def test_the_table1_task_adds_few_label_rows_when_asked():
    from gandl.analysis import tasks

    x, meta = _weak(1.2)
    inputs = tasks.Inputs(x, meta, tasks.AnalysisConfig(n_splits=3), "f", {}, sites=(x, meta))
    assert "table1_few_labels" not in tasks.controls_task(inputs).tables
    config = tasks.AnalysisConfig(n_splits=3, few_labels=(2, 8), few_label_draws=3, level="well")
    result = tasks.controls_task(tasks.Inputs(x, meta, config, "f", {}, sites=(x, meta)))
    few = result.tables["table1_few_labels"][0]
    assert len(few) == 4 * 2 and (few["draws"] == 3).all() and (few["status"] == "ok").all()
    assert 0.5 < result.summary["C+ vs C- (all cell lines): accuracy @ k=8"] <= 1
    assert result.summary["C+ vs C- (all cell lines): roc_auc @ k=2"] == few.loc[0, "roc_auc"]
    with pytest.raises(ValueError, match="few_labels"):
        tasks.AnalysisConfig(few_labels=(0,))


def test_center_scale_keeps_a_feature_constant_in_the_controls_bounded():
    # A count that is 0 in every control site of a plate (say, of a phenotype only some compounds cause) has no
    # per-plate sd: dividing by it turned ordinary treated values into ~1e7 and blew up every later score.
    x, meta = _screen()
    treated = np.zeros(len(meta), bool)
    treated[::7] = True
    meta = meta.assign(perturbation=np.where(treated, "drug", ""), role=np.where(treated, "treated", meta["role"]))
    x[:, 3] = np.where(treated, np.random.default_rng(1).poisson(3.0, len(meta)), 0.0)
    z = classify.plate_normalize(x, meta, "center_scale")
    assert np.isfinite(z).all() and np.abs(z[:, 3]).max() < 1e3
    np.testing.assert_allclose(z[:, :3], classify.plate_normalize(x[:, :3], meta, "center_scale"))  # others as before
