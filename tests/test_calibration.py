"""The hit list on null screens, through the whole `analyze_screen`: no treatment effect, so every hit is false.

Wide embeddings are where an axis fitted on the very control wells a dose is then tested against calls
noise: a linear SVM separates its own training wells far better than unseen ones, so every treated well
lands "above C-". Cross-fitted scores and a compound-level FDR keep the calls within the nominal 5%.

Below, the simulated screens of `feature_screens.screen` (no analysis runs): each setting has the property it
claims, measured from the features, and `hit_metrics` counts what a hit list got right.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gandl.analysis import calibration, report
from gandl.data.synthetic import feature_screens


@pytest.fixture(scope="module")
def layout():
    return feature_screens.layout(plates_per_line=3, compounds=8, positive_wells=8, negative_wells=8, sites_per_well=2)


@pytest.mark.slow
@pytest.mark.parametrize("dim", [224, 512])
def test_pure_noise_features_call_at_most_the_fdr_in_hits(layout, dim):
    rates = []
    for seed in range(3):
        features = feature_screens.null_features(layout, dim, np.random.default_rng(seed))
        outcome = report.analyze_screen(features, layout, draw=False)
        assert not outcome["skipped"], outcome["skipped"]
        rates.append(calibration.error_rates(outcome))
    assert np.mean([r["hit_rate"] for r in rates]) <= 0.05
    assert np.mean([r["dose_rate"] for r in rates]) <= 0.05
    assert np.mean([r["map_rate"] for r in rates]) <= 0.1
    assert abs(np.mean([r["table1_accuracy"] for r in rates]) - 0.5) < 0.1


@pytest.mark.slow
def test_plate_structured_noise_and_well_level_analysis(layout):
    features = feature_screens.null_features(layout, 64, np.random.default_rng(7), plate_sd=1.0, well_sd=0.5)
    for level in ("site", "well"):
        outcome = report.analyze_screen(features, layout, report.AnalysisConfig(level=level,
                                                                                normalization="center_scale"),
                                         draw=False)
        assert not outcome["skipped"], outcome["skipped"]
        assert (outcome["table1"]["status"] == "ok").all()
        assert calibration.error_rates(outcome)["hit_rate"] <= 0.05
    assert (outcome["table1"]["n"] == [96, 96, 48, 48]).all()  # wells: 2 lines x 3 plates x 16 controls


@pytest.mark.slow
def test_within_plate_shuffle_removes_a_real_effect(layout):
    rng = np.random.default_rng(3)
    features = feature_screens.null_features(layout, 32, rng)
    healthy = (layout["disease_condition"] == "Mock").to_numpy()
    rescued = layout["treatment"].isin(["compound-000", "compound-001"]).to_numpy()
    features[healthy | rescued, 0] += 4.0  # controls separate and two compounds rescue fully
    real = calibration.error_rates(report.analyze_screen(features, layout, draw=False))
    assert real["table1_accuracy"] > 0.95 and real["hit_rate"] == pytest.approx(4 / 16)  # 2 of 8, both lines
    null = calibration.error_rates(report.analyze_screen(feature_screens.shuffle_within_plates(features, layout, rng),
                                                         layout, draw=False))
    assert null["hit_rate"] <= 0.05 and null["table1_accuracy"] < 0.7


def test_constant_features_skip_every_task_with_the_reason(layout):
    outcome = report.analyze_screen(np.ones((len(layout), 8), np.float32), layout)
    assert set(outcome["skipped"]) == {"controls", "efficacy", "qc", "dose_response", "spaces", "activity"}
    assert all("no variance" in why for why in outcome["skipped"].values())


DIM = 64


def _screen(name, seed=0, dim=DIM, separation=None):
    """A setting's screen; `separation` (|delta| in well sds) larger for a quieter one where a test measures
    shares of delta, which do not depend on it."""
    setting = feature_screens.SETTINGS[name]
    setting = dataclasses.replace(setting, separation=separation) if separation else setting
    return feature_screens.screen(setting, dim, np.random.default_rng(seed))


def _positions(meta):
    """Zero-based (row, column) of each site's well."""
    return meta["well"].str[0].map(ord).to_numpy() - 65, meta["well"].str[1:].astype(int).to_numpy() - 1


def _outer_rings(meta):
    """Sites of the wells in the plate's two outer rings (where the edge settings shift wells)."""
    rows, cols = _positions(meta)
    return np.minimum.reduce([rows, cols, 15 - rows, 23 - cols]) <= 1


def _plate_diff(x, meta, a, b):
    """mean(x[a]) - mean(x[b]) on each plate, averaged over plates (plate and line offsets cancel), and the
    squared length its noise adds (from the plates' spread)."""
    plate = (meta["experiment"] + "_" + meta["plate"].astype(str)).to_numpy()
    diffs = np.array([x[a & (plate == p)].mean(0) - x[b & (plate == p)].mean(0) for p in np.unique(plate)
                      if (a & (plate == p)).any() and (b & (plate == p)).any()])
    mean = diffs.mean(0)
    return mean, ((diffs - mean) ** 2).sum() / (len(diffs) * (len(diffs) - 1))


def _roles(meta):
    """(treated, C+, C-) masks of the sites."""
    treated = (meta["treatment"] != "").to_numpy()
    positive = (meta["disease_condition"] == "Mock").to_numpy()
    return treated, positive, ~treated & ~positive


def _along(x, meta, a, b):
    """(a - b) on the plate as (coefficient along delta, length orthogonal to it) in units of |delta|, delta
    estimated from the control wells in neither (independent noise); squared lengths less what noise adds."""
    _, positive, negative = _roles(meta)
    delta, delta_noise = _plate_diff(x, meta, positive & ~a & ~b, negative & ~a & ~b)
    diff, diff_noise = _plate_diff(x, meta, a, b)
    length2 = delta @ delta - delta_noise
    along = diff @ delta / length2
    return along, np.sqrt(max(diff @ diff - diff_noise - along ** 2 * length2, 0.0) / length2)


def _half_of_c_minus(meta):
    """Every other C- well (by layout order: half of each plate's)."""
    _, _, negative = _roles(meta)
    return negative & (pd.factorize(meta["well_id"])[0] % 2 == 0)


def _sds(x, meta, rows):
    """(well sd, site sd) of the chosen sites, by ANOVA within plate x condition groups of wells."""
    x, meta = x[rows], meta[rows].reset_index(drop=True)
    well = pd.factorize(meta["well_id"])[0]
    wells = pd.DataFrame(x).groupby(well).mean()
    site_var = ((x - wells.to_numpy()[well]) ** 2).sum() / ((len(x) - len(wells)) * x.shape[1])
    group = (meta["experiment"] + meta["plate"].astype(str) + meta["disease_condition"]
             + (meta["treatment"] != "").astype(str)).groupby(well).first()
    deviation = wells - wells.groupby(group.to_numpy()).transform("mean")
    between = (deviation.to_numpy() ** 2).sum() / ((len(wells) - group.nunique()) * x.shape[1])
    return np.sqrt(between - site_var / meta.groupby("well_id").size().mean()), np.sqrt(site_var)


@pytest.mark.parametrize("name", list(feature_screens.SETTINGS))
def test_every_well_sits_at_one_384_well_position_per_plate(name):
    setting = feature_screens.SETTINGS[name]
    features, meta, truth = _screen(name)
    assert features.shape == (len(meta), DIM) and features.dtype == np.float32 and np.isfinite(features).all()
    wells = meta.drop_duplicates("well_id")
    assert wells["well"].str.fullmatch(r"[A-P](0[1-9]|1\d|2[0-4])").all()
    assert not wells.duplicated(["experiment", "plate", "well"]).any()
    assert (wells["well_id"] == wells["experiment"] + "_" + wells["plate"].astype(str) + "_" + wells["well"]).all()
    assert (meta["site_id"] == meta["well_id"] + "_" + meta["site"].astype(str)).all()
    assert (meta.groupby("well_id").size() == setting.sites_per_well).all()
    controls = wells[wells["treatment"] == ""]
    assert (controls.groupby(["experiment", "plate"]).size()
            == setting.positive_wells + setting.negative_wells).all()
    if setting.control_placement == "edge":
        columns = wells["well"].str[1:].astype(int)
        assert columns[wells["treatment"] == ""].isin(feature_screens.EDGE_COLUMNS).all()
        assert not columns[wells["treatment"] != ""].isin(feature_screens.EDGE_COLUMNS).any()
    assert len(truth) == setting.compounds * len(feature_screens.DOSES_UM) * meta["cell_type"].nunique()
    pairs = feature_screens.pair_truth(truth)
    assert setting.null == (not ((pairs["rescue"] >= feature_screens.THRESHOLD) & ~pairs["cytotoxic"]).any())


def test_a_layout_that_does_not_fit_a_plate_is_refused():
    with pytest.raises(ValueError, match="384-well plate"):
        feature_screens.layout(compounds=61)  # 366 treated + 32 control wells
    with pytest.raises(ValueError, match="columns 1, 2, 23, 24"):
        feature_screens.layout(positive_wells=40, negative_wells=40, control_placement="edge")
    assert len(feature_screens.layout(compounds=58, sites_per_well=1, lines=("HRCE",), plates_per_line=1)) == 380


def test_iid_setting_has_equal_variances_and_half_sd_plate_offsets():
    features, meta, _ = _screen("iid")
    treated, _, _ = _roles(meta)
    np.testing.assert_allclose(_sds(features, meta, treated), 1.0, atol=0.1)
    np.testing.assert_allclose(_sds(features, meta, ~treated), 1.0, atol=0.1)
    plates = pd.DataFrame(features[treated]).groupby(meta.loc[treated, "well_id"].str.rsplit("_", n=1).str[0].values)
    within_line = plates.mean().groupby(lambda key: key.split("_")[0]).transform(lambda v: v - v.mean())
    assert np.sqrt((within_line.to_numpy() ** 2).sum() / ((len(within_line) - 2) * DIM)) == pytest.approx(0.5,
                                                                                                          abs=0.1)


def test_unequal_variance_doubles_the_treated_well_sd():
    features, meta, _ = _screen("unequal-variance")
    treated, _, _ = _roles(meta)
    (treated_well, treated_site), (control_well, control_site) = (_sds(features, meta, treated),
                                                                  _sds(features, meta, ~treated))
    assert treated_well / control_well == pytest.approx(2.0, abs=0.25)
    assert treated_site / control_site == pytest.approx(1.0, abs=0.05)


def test_treated_sd_setting_scales_well_and_site_noise():
    features, meta, _ = _screen("treated-sd-1.5")
    treated, _, _ = _roles(meta)
    ratio = np.divide(_sds(features, meta, treated), _sds(features, meta, ~treated))
    np.testing.assert_allclose(ratio, 1.5, atol=0.15)


def test_heavy_tails_have_the_kurtosis_gaussian_noise_lacks():
    def excess_kurtosis(name):
        features, meta, _ = _screen(name)
        residual = features - pd.DataFrame(features).groupby(meta["well_id"].values).transform("mean").to_numpy()
        return stats.kurtosis(residual.ravel())

    assert excess_kurtosis("heavy-tails") > 3
    assert abs(excess_kurtosis("iid")) < 0.2


def test_artefacts_are_two_percent_of_sites_with_tenfold_noise():
    features, meta, _ = _screen("artefacts")
    median = pd.DataFrame(features).groupby(meta["well_id"].values).transform("median").to_numpy()
    loud = ((features - median) ** 2).mean(1) > 25  # a normal site's ~1, an artefact's ~100
    assert loud.mean() == pytest.approx(0.02, abs=0.007)
    assert feature_screens.SETTINGS["artefacts"].analysis == {"well_aggregate": "mean"}


def test_edge_shift_moves_the_outer_wells_towards_c_minus_along_delta():
    features, meta, _ = _screen("edge-axis")
    treated, _, _ = _roles(meta)
    outer = _outer_rings(meta)
    assert outer[~treated].all()
    along, across = _along(features, meta, treated & outer, treated & ~outer)
    assert along == pytest.approx(-0.75, abs=0.1) and across < 0.3
    along, _ = _along(features, meta, treated & ~outer, _half_of_c_minus(meta))  # inert interior ones look rescued
    assert along == pytest.approx(0.75, abs=0.15)


def test_random_edge_shift_moves_the_outer_wells_off_the_axis():
    features, meta, _ = _screen("edge-random")
    treated, _, _ = _roles(meta)
    outer = _outer_rings(meta)
    along, across = _along(features, meta, treated & outer, treated & ~outer)
    assert abs(along) < 0.3 and across == pytest.approx(0.75, abs=0.2)


def test_cytotoxic_compounds_move_mostly_off_the_axis_and_lose_cells():
    features, meta, truth = _screen("off-axis", separation=10.0)
    pairs = feature_screens.pair_truth(truth)
    assert pairs["cytotoxic"].mean() == 0.25
    treated, _, _ = _roles(meta)
    inert = treated & ~meta["treatment"].isin(pairs.loc[pairs["cytotoxic"], "perturbation"]).to_numpy()
    top = meta["treatment_conc"].to_numpy() == max(feature_screens.DOSES_UM)
    moves = []
    for pair in pairs[pairs["cytotoxic"]].itertuples():
        line = (meta["cell_type"] == pair.group).to_numpy()
        wells = top & line & (meta["treatment"] == pair.perturbation).to_numpy()
        moves.append(_along(features, meta, wells, inert & line))
        assert meta.loc[wells, "viability"].mean() == pytest.approx(0.4, abs=0.08)
    along, across = np.transpose(moves)
    assert np.mean(along) == pytest.approx(0.6, abs=0.1) and np.median(across) == pytest.approx(4.0, abs=0.3)
    assert meta.loc[inert, "viability"].mean() == pytest.approx(1.0, abs=0.03)
    assert truth.loc[truth["cytotoxic"], "treatment_conc"].min() >= 3.16  # the top doses only


def test_vehicle_shifts_every_treated_well_towards_c_plus():
    features, meta, truth = _screen("vehicle", separation=10.0)
    treated, _, _ = _roles(meta)
    along, across = _along(features, meta, treated, _half_of_c_minus(meta))
    assert along == pytest.approx(0.4, abs=0.07) and across == pytest.approx(0.25, abs=0.06)
    assert (truth["rescue"] == 0.4).all()


def test_actives_reach_their_level_along_delta_at_the_top_dose():
    features, meta, truth = _screen("actives-benign", separation=10.0)
    for _, line in feature_screens.pair_truth(truth).groupby("group"):
        assert sorted(line.loc[line["rescue"] > 0, "rescue"]) == pytest.approx(feature_screens.LEVELS)
    treated, positive, negative = _roles(meta)
    reference = _half_of_c_minus(meta)
    delta, noise = _plate_diff(features, meta, positive, negative & ~reference)
    plate = (meta["experiment"] + "_" + meta["plate"].astype(str)).to_numpy()
    base = pd.DataFrame(features[reference]).groupby(plate[reference]).mean().loc[plate].to_numpy()
    along = (features - base) @ delta / (delta @ delta - noise)
    rescue = meta.merge(truth, on=["treatment", "cell_type", "treatment_conc"], how="left")["rescue"].to_numpy()
    slope, intercept = np.polyfit(rescue[treated], along[treated], 1)
    assert slope == pytest.approx(1.0, abs=0.1) and intercept == pytest.approx(0.0, abs=0.05)


def test_hit_metrics_count_false_hits_and_recall_per_level():
    truth = pd.DataFrame(dict(treatment=list("ABCDE"), cell_type="HRCE", treatment_conc=1.0,
                              rescue=[0.3, 0.6, 1.0, 0.8, 0.5], cytotoxic=[False, False, True, False, False]))
    hits = pd.DataFrame(dict(perturbation=list("ABCDE"), group="HRCE", hit=[True, True, True, False, True]))
    metrics = calibration.hit_metrics({"hits": hits}, truth, (0.5, 0.75, 1.0))
    assert metrics == pytest.approx(dict(hits=4, false_hits=2, any_false=1, fdp=0.5, below=1,
                                         **{"recall>=0.5": 2 / 3, "recall>=0.75": 0.0, "recall>=1": np.nan}),
                                    nan_ok=True)
    assert calibration.hit_metrics({"hits": hits.assign(hit=False)}, truth)["fdp"] == 0
    assert np.isnan(calibration.hit_metrics({}, truth)["any_false"])
    with pytest.raises(ValueError, match="truth does not have"):
        calibration.hit_metrics({"hits": hits.assign(perturbation="Z")}, truth)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unequal-variance", "heavy-tails", "edge-axis", "off-axis", "vehicle"])
def test_null_screens_that_look_like_real_plates_call_no_false_hit(name):
    # The audit's null classes through the whole analysis (the hit call before the rescue rule called false hits
    # in 1-5 of every 5 such screens: benchmarks/calibration.py, docs/results.md). 64 dimensions keep it quick.
    setting = dataclasses.replace(feature_screens.SETTINGS[name], dim=None)
    false = []
    for seed in range(3):
        features, meta, truth = feature_screens.screen(setting, 64, np.random.default_rng(seed))
        outcome = report.analyze_screen(features, meta, report.AnalysisConfig(**setting.analysis), draw=False)
        assert "dose_response" not in outcome["skipped"], outcome["skipped"]
        false.append(calibration.hit_metrics(outcome, truth)["false_hits"])
    assert sum(false) == 0, false
