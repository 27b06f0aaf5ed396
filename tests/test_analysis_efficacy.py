"""Efficacy normalisation, dose-response tables, Hill fits, hit calls and the hit table on hand-made numbers."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from gandl.analysis import efficacy

DOSES = np.array([0.0316, 0.1, 0.316, 1.0, 3.16, 10.0])


def _meta(roles_per_line: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for line, conds in roles_per_line.items():
        for i, cond in enumerate(conds):
            rows.append(dict(site_id=f"{line}{i}", well_id=f"{line}w{i}", cell_type=line, disease_condition=cond,
                             treatment="", treatment_conc=np.nan))
    return pd.DataFrame(rows)


def test_efficacy_scores_put_controls_at_minus_one_and_plus_one_per_line():
    meta = _meta({"HRCE": ["Mock", "Mock", "Active SARS-CoV-2", "Active SARS-CoV-2", ""],
                  "VERO": ["Mock", "Active SARS-CoV-2", "Active SARS-CoV-2", "Mock"]})
    on = np.array([0.8, 0.6, -0.2, 0.0, 0.3, 5.0, 1.0, 3.0, 7.0])
    scores, skipped = efficacy.efficacy_scores(on, meta)
    assert skipped == {}
    role = meta["disease_condition"]
    for line in ("HRCE", "VERO"):
        rows = meta["cell_type"] == line
        assert scores[rows & (role == "Mock")].mean() == pytest.approx(1.0, abs=1e-12)
        assert scores[rows & (role == "Active SARS-CoV-2")].mean() == pytest.approx(-1.0, abs=1e-12)
    assert scores[4] == pytest.approx(-1 + 2 * (0.3 - (-0.1)) / (0.7 - (-0.1)))  # affine in between


def test_a_cell_line_without_controls_is_skipped_not_scored():
    meta = _meta({"HRCE": ["Mock", "Active SARS-CoV-2"], "VERO": ["Active SARS-CoV-2", "Active SARS-CoV-2"]})
    scores, skipped = efficacy.efficacy_scores(np.array([1.0, 0.0, 0.5, 0.4]), meta)
    assert skipped == {"VERO": "no C+ control sites"}
    assert np.isnan(scores[2:]).all() and np.isfinite(scores[:2]).all()


def test_dose_response_averages_sites_into_wells_then_wells_per_dose():
    meta = pd.DataFrame({"well_id": ["w1", "w1", "w2", "w3", "w4", "w5"], "treatment": ["d", "d", "d", "d", "", ""],
                         "cell_type": "HRCE", "treatment_conc": [1.0, 1.0, 1.0, 10.0, np.nan, np.nan],
                         "experiment": "HRCE-1", "plate": [1, 1, 2, 2, 1, 2],
                         "disease_condition": ["Active SARS-CoV-2"] * 5 + ["Mock"]})
    scores = np.array([0.0, 1.0, 1.5, -1.0, 9.0, 3.0])
    wells = efficacy.well_scores(scores, meta)
    assert wells["score"].tolist() == [0.5, 1.5, -1.0] and wells["n_sites"].tolist() == [2, 1, 1]
    assert wells["plate_id"].tolist() == ["HRCE-1_1", "HRCE-1_2", "HRCE-1_2"]
    controls = efficacy.control_wells(scores, meta)  # the C- well only, not the Mock one
    assert controls[["well_id", "plate_id", "score"]].values.tolist() == [["w4", "HRCE-1_1", 9.0]]
    curve = efficacy.dose_response(wells)
    assert curve["mean"].tolist() == [1.0, -1.0]
    assert curve["n"].tolist() == [2, 1] and curve["n_sites"].tolist() == [3, 1]
    assert curve["sem"].iloc[0] == pytest.approx(np.std([0.5, 1.5], ddof=1) / np.sqrt(2))
    assert np.isnan(curve["sem"].iloc[1])
    assert curve["log10_conc"].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="experiment"):
        efficacy.well_scores(scores, meta.drop(columns="experiment"))


def _reference_fit(x: np.ndarray, y: np.ndarray, flat_threshold: float = 0.25, flat_p: float = 0.05,
                   max_slope: float = 10.0) -> tuple[np.ndarray, str]:
    """The per-curve scipy `curve_fit` (TRF) fit that `fit_hills` replaces, with its bounds and status rules."""
    doses = np.unique(x)
    if len(doses) < efficacy.MIN_DOSES:
        return np.full(4, np.nan), "too_few_doses"
    lo, hi = doses[0] - 1.0, doses[-1] + 1.0
    bounds = ([-5.0, -5.0, lo, 0.1], [5.0, 5.0, hi, max_slope])
    p0 = np.clip([y[x == doses[0]].mean(), y[x == doses[-1]].mean(), np.median(doses), 1.0],
                 np.add(bounds[0], 1e-6), np.subtract(bounds[1], 1e-6))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(efficacy.hill, x, y, p0=p0, bounds=bounds, x_scale="jac", max_nfev=400)
    except RuntimeError:
        groups = [y[x == d] for d in doses]
        p = stats.f_oneway(*groups).pvalue if all(len(g) > 1 for g in groups) else np.nan
        return np.full(4, np.nan), "flat" if p > flat_p else "no_convergence"
    residual, total = np.sum((y - efficacy.hill(x, *params)) ** 2), np.sum((y - y.mean()) ** 2)
    dof = len(y) - 4
    f_p = stats.f.sf(((total - residual) / 3) / (residual / dof), 3, dof) if residual > 0 and dof > 0 else 0.0
    if abs(params[1] - params[0]) < flat_threshold or f_p > flat_p:
        return params, "flat"
    if min(params[2] - lo, hi - params[2]) < 1e-3 * (hi - lo):
        return params, "ec50_out_of_range"
    return params, "ok"


KNOWN = [(-1.0, 0.9, np.log10(0.25), 1.5), (-0.8, 0.5, 0.3, 2.5), (0.5, -1.0, -0.5, 1.0)]


def _fit_all(curves: list[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """`fit_hills` on a list of (log_conc, response) curves in one call, in list order."""
    label = np.concatenate([np.full(len(x), i) for i, (x, _) in enumerate(curves)])
    return efficacy.fit_hills(label, np.concatenate([x for x, _ in curves]), np.concatenate([y for _, y in curves]))


def test_vectorised_hill_fits_recover_known_parameters_and_match_per_curve_fits():
    rng = np.random.default_rng(0)
    x = np.repeat(np.log10(DOSES), 4)
    curves = [(x, efficacy.hill(x, *p)) for p in KNOWN]  # exact
    curves += [(x, efficacy.hill(x, *p) + rng.normal(0, 0.05, x.size)) for p in KNOWN]  # low noise
    for _ in range(30):  # flat (pure noise) and noisy real curves, some with a dose missing (a masked column)
        keep = x != np.log10(DOSES)[rng.integers(6)] if rng.random() < 0.3 else np.ones(x.size, bool)
        curves.append((x[keep], -1 + rng.normal(0, 0.3, x.size)[keep]))
        params = (rng.uniform(-1.2, -0.6), rng.uniform(-0.3, 1.2), rng.uniform(-1.3, 0.8), rng.uniform(0.5, 3))
        curves.append((x[keep], efficacy.hill(x[keep], *params) + rng.normal(0, 0.25, keep.sum())))
    curves.append((x, efficacy.hill(x, -1.0, 5.0, 2.2, 0.5)))  # EC50 beyond a decade above the top dose
    fits = _fit_all(curves)
    estimate = np.column_stack([fits["bottom"], fits["top"], np.log10(fits["ec50_uM"]), fits["hill_slope"]])
    np.testing.assert_allclose(estimate[:3], KNOWN, atol=1e-4)
    assert (fits["fit_status"].iloc[:6] == "ok").all() and np.allclose(fits["r2"].iloc[:3], 1.0)
    np.testing.assert_allclose(fits["pec50"].iloc[:3], [6 - p[2] for p in KNOWN], atol=1e-4)
    assert np.abs(estimate[3:6, :3] - np.asarray(KNOWN)[:, :3]).max() < 0.1  # the slope is the loosest
    reference = [_reference_fit(cx, cy) for cx, cy in curves]
    assert fits["fit_status"].tolist() == [status for _, status in reference]
    both = [i for i, (_, status) in enumerate(reference) if status in ("ok", "ec50_out_of_range")]
    assert len(both) >= 15 and fits["fit_status"].iloc[-1] == "ec50_out_of_range"
    sse = [[np.sum((curves[i][1] - efficacy.hill(curves[i][0], *params[i])) ** 2) for i in both]
           for params in (estimate, [reference[i][0] for i in range(len(curves))])]
    assert np.all(np.array(sse[0]) <= np.array(sse[1]) * (1 + 1e-6) + 1e-12)  # never worse than curve_fit
    # The same parameters, except where the slope runs to its bound: there the cost is flat in the slope and
    # curve_fit stops short of the bound (e.g. 9.85 for 10), with the same curve.
    interior = [i for i in both if reference[i][0][3] < 9.0]
    assert len(interior) >= 20
    np.testing.assert_allclose(estimate[interior], [reference[i][0] for i in interior], atol=2e-3)
    statuses = set(fits["fit_status"])
    assert {"ok", "flat", "ec50_out_of_range"} <= statuses


def test_hill_fits_flag_rather_than_raise():
    x = np.repeat(np.log10(DOSES), 3)
    rng = np.random.default_rng(1)
    fits = _fit_all([(x, -1 + rng.normal(0, 0.3, x.size)), (np.zeros(3), np.ones(3)),
                     (np.log10([1.0, 1.0]), np.array([0.2, 0.4])),
                     (x, np.where(x > 0.9, 1.0, -1.0)),  # an infinitely steep step: no settled fit
                     (x, np.where(np.arange(x.size) % 2, 5.0, -5.0)), (x, np.full(x.size, np.nan))])
    assert fits["fit_status"].tolist() == ["flat", "too_few_doses", "too_few_doses", "no_convergence", "flat",
                                           "too_few_doses"]
    assert fits["ec50_uM"].isna().all() and fits.loc[3, ["bottom", "top", "r2"]].isna().all()


def test_toxic_drop_and_auc():
    assert efficacy.toxic_drop([-1, -0.5, 0.5, 0.9, 0.8, -0.6], [0.1] * 6)
    assert not efficacy.toxic_drop([-1, -0.5, 0.5, 0.9, 0.8, 0.95], [0.1] * 6)
    assert not efficacy.toxic_drop([-1, 0.5, 0.2, 0.0, -0.2, -0.1], [0.5] * 6)  # drop within noise
    assert efficacy.curve_auc(np.array([0.0, 1.0, 2.0]), np.array([-1.0, -1.0, -1.0])) == 0.0
    assert efficacy.curve_auc(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0])) == 2.0
    assert efficacy.curve_auc(np.array([1.0, 0.0]), np.array([1.0, -1.0])) == pytest.approx(1.0)


def _controls(rng: np.random.Generator, plates: list[str], per_plate: int = 6,
              offsets: dict[str, float] | None = None, sd: float = 0.05) -> pd.DataFrame:
    """C- wells (HRCE) at -1 plus each plate's offset, as `control_wells` returns them."""
    return pd.DataFrame([dict(cell_type="HRCE", plate_id=p, well_id=f"{p}c{i}", n_sites=1,
                              score=-1 + (offsets or {}).get(p, 0.0) + rng.normal(0, sd))
                         for p in plates for i in range(per_plate)])


def test_hit_table_ranks_and_keeps_one_dose_compounds():
    rows = []
    for name, values in (("strong", efficacy.hill(np.log10(DOSES), -1, 1, -0.5, 2)),
                         ("weak", efficacy.hill(np.log10(DOSES), -1, -0.2, 0, 2)),
                         ("inert", np.full(6, -1.0))):
        for rep in range(2):
            for c, v in zip(DOSES, values):
                rows.append(dict(treatment=name, cell_type="HRCE", treatment_conc=c, plate_id=f"P{rep}",
                                 well_id=f"{name}{c}{rep}", score=v + (0.02 if rep else -0.02), n_sites=1))
    rows.append(dict(treatment="single", cell_type="HRCE", treatment_conc=1.0, plate_id="P0", well_id="s",
                     score=0.3, n_sites=1))
    controls = _controls(np.random.default_rng(0), ["P0", "P1"])
    table = efficacy.hit_table(pd.DataFrame(rows), controls).set_index("treatment")
    assert table["rank"].to_dict() == {"strong": 1, "single": 2, "weak": 3, "inert": 4}
    assert table.loc["strong", "fit_status"] == "ok" and table.loc["strong", "hit"]
    assert table.loc["strong", "ec50_uM"] == pytest.approx(10 ** -0.5, rel=0.05)
    assert table.loc["strong", "q"] < 0.01 and table.loc["strong", "best_dose"] in DOSES[3:]
    assert table.loc["strong", "p"] <= table.loc["strong", "q"]
    # weak: well above C- (small q) but never above the 0 threshold, so not a hit.
    assert table.loc["weak", "q"] < 0.05 and not table.loc["weak", "hit"]
    assert table.loc["inert", "fit_status"] == "flat" and not table.loc["inert", "hit"]
    assert table.loc["single", "fit_status"] == "too_few_doses" and table.loc["single", "n_doses"] == 1
    assert table.loc["single", "best_dose"] == 1.0 and table.loc["single", "q"] < 0.05  # one well, tested
    assert table.loc["single", "hit"]  # 0.3 against C- at -1 +- 0.05
    no_controls = efficacy.hit_table(pd.DataFrame(rows), controls.iloc[:1]).set_index("treatment")
    assert no_controls[["p", "q", "best_dose"]].isna().all(axis=None) and not no_controls["hit"].any()
    assert not table["toxic_drop"].any()


def _noise_screen(rng: np.random.Generator, effective: int = 0, compounds: int = 40, plates: int = 8,
                  plates_per_compound: int = 3, sd: float = 0.3, active_doses: int = 3, plate_sd: float = 0.5
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Well scores (wells, controls) of a screen whose compounds do nothing, but the first `effective`
    (which rescue to +1 at their top `active_doses` doses).

    Plates carry offsets (sd `plate_sd`, by default larger than the well noise) shared by their compound and
    control wells, and each compound sits on a few plates only, so a test against other plates' controls
    would call hits.
    """
    names = [f"P{i}" for i in range(plates)]
    offsets = dict(zip(names, rng.normal(0, plate_sd, plates)))
    rows = []
    for k in range(compounds):
        rescue = 2.0 * (np.arange(6) >= 6 - active_doses) if k < effective else np.zeros(6)
        for p in rng.choice(names, plates_per_compound, replace=False):
            scores = -1 + offsets[p] + rescue + rng.normal(0, sd, 6)
            rows += [dict(treatment=f"c{k}", cell_type="HRCE", treatment_conc=c, plate_id=p,
                          well_id=f"{p}-c{k}-{c}", score=v, n_sites=1) for c, v in zip(DOSES, scores)]
    return pd.DataFrame(rows), _controls(rng, names, offsets=offsets, sd=sd)


def test_pure_noise_screens_call_no_more_hits_than_the_fdr_allows():
    rng = np.random.default_rng(0)
    any_hit, below, fdp, power = [], [], [], []
    for _ in range(60):
        tests = efficacy.dose_tests(*_noise_screen(rng))
        assert tests["p"].notna().all() and (tests["n_controls"] == 18).all()  # 3 plates x 6 C- wells
        any_hit.append(bool((tests["q"] < 0.05).any()))
        below.append((tests["p"] < 0.05).mean())
    # All nulls true: BH's FDR is the chance of any discovery, at most 5% (3 of 60 screens expected).
    assert sum(any_hit) <= 6
    # A valid p is at most 5% below 0.05 (here fewer: plate offsets widen both groups' spread).
    assert np.mean(below) <= 0.055
    for _ in range(8):  # 4 of 40 compounds rescue: FDR (mean false discovery proportion) and power
        wells, controls = _noise_screen(rng, effective=4)
        table = efficacy.hit_table(wells, controls)
        called = set(table.loc[table["hit"], "treatment"])
        fdp.append(len(called - {"c0", "c1", "c2", "c3"}) / max(len(called), 1))
        power.append(len(called & {"c0", "c1", "c2", "c3"}) / 4)
        assert table.loc[table["hit"], "best_dose"].isin(DOSES[3:]).all()
    assert np.mean(fdp) <= 0.1 and np.mean(power) > 0.9


@pytest.mark.slow
def test_hit_q_controls_the_false_discovery_rate_of_compounds_not_of_doses():
    # 60 of 200 compounds rescue at every dose: their 360 dose rejections loosen a dose-level BH threshold
    # enough that a null compound's best of six doses passes it far more often than 5% of the calls
    # (measured: 18% of the compounds with a dose-level q < 0.05 were null). Simes then BH over compounds
    # holds the compound-level rate (4.6% over 20 screens; the bound is 5% x 140/200 = 3.5%, sd of the mean 1%).
    rng = np.random.default_rng(0)
    true = {f"c{i}" for i in range(60)}
    fdp, power = [], []
    for _ in range(20):
        table = efficacy.hit_table(*_noise_screen(rng, effective=60, compounds=200, plates=16, active_doses=6,
                                                  plate_sd=0.0))
        called = set(table.loc[table["q"] < 0.05, "treatment"])
        fdp.append(len(called - true) / max(len(called), 1))
        power.append(len(called & true) / len(true))
        assert (table["dose_q"] >= table["dose_p"]).all() and table["q"].notna().all()
    assert np.mean(fdp) <= 0.08 and np.mean(power) > 0.95


def test_truth_agreement_reports_each_cell_line_so_a_failing_line_is_not_hidden_by_the_pool():
    # HRCE's scores follow the hidden efficacy, VERO's run against it; VERO's efficacy and scores both sit
    # higher, so the pooled best-dose correlation stays positive.
    truth = pd.DataFrame([dict(treatment=f"C{i}", cell_type=line, effect_class="antiviral",
                               emax=0.4 if line == "HRCE" else 1.0,
                               ec50_uM=ec50, hill=1.0, tox_ec50_uM=np.nan, tox_hill=np.nan, SMILES="")
                          for line in ("HRCE", "VERO") for i, ec50 in enumerate([0.05, 0.3, 1.0, 3.0, 8.0])])
    rows = []
    for line, sign, offset in (("HRCE", 1.0, 0.0), ("VERO", -1.0, 3.0)):
        for i, ec50 in enumerate([0.05, 0.3, 1.0, 3.0, 8.0]):
            for dose in DOSES:
                rows.append(dict(treatment=f"C{i}", cell_type=line, treatment_conc=dose,
                                 mean=offset + sign * dose / (ec50 + dose)))
    agreement = efficacy.truth_agreement(pd.DataFrame(rows), truth)
    assert agreement["per_line"]["HRCE"]["spearman_compound"] == pytest.approx(1.0)
    assert agreement["per_line"]["VERO"]["spearman_compound"] == pytest.approx(-1.0)
    assert agreement["spearman_compound"] > 0
    assert agreement["n_compounds"] == 10


def test_truth_agreement_scores_separation_rank_and_hits_against_the_truly_active():
    ec50s = {"A0": 0.05, "A1": 0.5, "A2": 2.0, "I0": np.nan, "I1": np.nan, "I2": np.nan}
    truth = pd.DataFrame([dict(treatment=name, cell_type="HRCE", effect_class="x", emax=0.0 if name[0] == "I" else 1.0,
                               ec50_uM=ec50, hill=1.0, tox_ec50_uM=np.nan, tox_hill=np.nan, SMILES="")
                          for name, ec50 in ec50s.items()])
    # Best scores: the actives in the wrong order among themselves, all above the inert ones but I0 (0.9).
    best = {"A0": 0.5, "A1": 0.8, "A2": 0.7, "I0": 0.9, "I1": -1.0, "I2": -0.9}
    curves = pd.DataFrame([dict(treatment=n, cell_type="HRCE", treatment_conc=d, mean=best[n] - (d < DOSES[-1]))
                           for n in ec50s for d in DOSES])
    hits = pd.DataFrame(dict(treatment=list(ec50s), cell_type="HRCE", hit=[True, False, True, True, False, False]))
    line = efficacy.truth_agreement(curves, truth, hits)["per_line"]["HRCE"]
    assert line["auroc"] == pytest.approx(6 / 9)  # I0 outranks all three actives: 6 of 9 pairs in order
    assert line["spearman_active"] == pytest.approx(-0.5)  # hidden A0 > A1 > A2, scores A1 > A2 > A0
    assert line["precision"] == pytest.approx(2 / 3) and line["recall"] == pytest.approx(2 / 3)
    assert line["n_active"] == 3 and line["n_inert"] == 3
    assert 0.8 < line["spearman_ceiling"] < 1.0  # the three inert compounds tie at 0
