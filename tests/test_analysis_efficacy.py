"""Efficacy normalisation, dose-response tables, Hill fits and truth agreement on hand-made numbers."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from gandl.analysis import efficacy

DOSES = np.array([0.0316, 0.1, 0.316, 1.0, 3.16, 10.0])


def _meta(roles_per_line: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for line, roles in roles_per_line.items():
        for i, role in enumerate(roles):
            rows.append(dict(site_id=f"{line}{i}", well_id=f"{line}w{i}", group=line, role=role, perturbation="",
                             dose=np.nan))
    return pd.DataFrame(rows)


def test_efficacy_scores_put_controls_at_minus_one_and_plus_one_per_line():
    meta = _meta({"HRCE": ["C+", "C+", "C-", "C-", "other"], "VERO": ["C+", "C-", "C-", "C+"]})
    on = np.array([0.8, 0.6, -0.2, 0.0, 0.3, 5.0, 1.0, 3.0, 7.0])
    scores, skipped = efficacy.efficacy_scores(on, meta)
    assert skipped == {}
    role = meta["role"]
    for line in ("HRCE", "VERO"):
        rows = meta["group"] == line
        assert scores[rows & (role == "C+")].mean() == pytest.approx(1.0, abs=1e-12)
        assert scores[rows & (role == "C-")].mean() == pytest.approx(-1.0, abs=1e-12)
    assert scores[4] == pytest.approx(-1 + 2 * (0.3 - (-0.1)) / (0.7 - (-0.1)))  # affine in between


def test_a_cell_line_without_controls_is_skipped_not_scored():
    meta = _meta({"HRCE": ["C+", "C-"], "VERO": ["C-", "C-"]})
    scores, skipped = efficacy.efficacy_scores(np.array([1.0, 0.0, 0.5, 0.4]), meta)
    assert skipped == {"VERO": "no C+ control sites"}
    assert np.isnan(scores[2:]).all() and np.isfinite(scores[:2]).all()


def test_dose_response_summarises_wells_per_dose():
    wells = pd.DataFrame({"perturbation": "d", "group": "HRCE", "dose": [1.0, 1.0, 10.0],
                          "score": [0.5, 1.5, -1.0], "n_sites": [2, 1, 1]})
    curve = efficacy.dose_response(wells)
    assert curve["mean"].tolist() == [1.0, -1.0]
    assert curve["n"].tolist() == [2, 1] and curve["n_sites"].tolist() == [3, 1]
    assert curve["sem"].iloc[0] == pytest.approx(np.std([0.5, 1.5], ddof=1) / np.sqrt(2))
    assert np.isnan(curve["sem"].iloc[1])
    assert not efficacy.toxic_drop([-1, -0.5, 0.5, 0.9, 0.8, 0.95], [0.1] * 6)
    assert not efficacy.toxic_drop([-1, 0.5, 0.2, 0.0, -0.2, -0.1], [0.5] * 6)  # drop within noise
    assert not efficacy.toxic_drop([np.nan] * 6, [np.nan] * 6)  # an unscored curve
    assert efficacy.curve_auc(np.array([0.0, 1.0, 2.0]), np.array([-1.0, -1.0, -1.0])) == 0.0
    assert efficacy.curve_auc(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0])) == 2.0
    assert efficacy.curve_auc(np.array([1.0, 0.0]), np.array([1.0, -1.0])) == pytest.approx(1.0)


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
                rows.append(dict(perturbation=f"C{i}", group=line, dose=dose,
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
    curves = pd.DataFrame([dict(perturbation=n, group="HRCE", dose=d, mean=best[n] - (d < DOSES[-1]))
                           for n in ec50s for d in DOSES])
    hits = pd.DataFrame(dict(perturbation=list(ec50s), group="HRCE", hit=[True, False, True, True, False, False]))
    line = efficacy.truth_agreement(curves, truth, hits)["per_line"]["HRCE"]
    assert line["auroc"] == pytest.approx(6 / 9)  # I0 outranks all three actives: 6 of 9 pairs in order
    assert line["spearman_active"] == pytest.approx(-0.5)  # hidden A0 > A1 > A2, scores A1 > A2 > A0
    assert line["precision"] == pytest.approx(2 / 3) and line["recall"] == pytest.approx(2 / 3)
    assert line["n_active"] == 3 and line["n_inert"] == 3
    assert 0.8 < line["spearman_ceiling"] < 1.0  # the three inert compounds tie at 0


def test_truth_agreement_names_the_false_and_the_cytotoxic_hits():
    # A0 truly active; I0 inert; T0 and T1 inert but toxic (emax 0, a toxicity curve): the call A0, I0, T0 has
    # two false hits, one of them cytotoxic; T1, toxic but not called, is no hit of either kind.
    params = {"A0": (1.0, 0.5, np.nan), "I0": (0.0, np.nan, np.nan), "T0": (0.0, np.nan, 2.0), "T1": (0.0, np.nan, 3.0)}
    truth = pd.DataFrame([dict(treatment=name, cell_type="VERO", effect_class="x", emax=emax, ec50_uM=ec50, hill=1.0,
                               tox_ec50_uM=tox_ec50, tox_hill=2.0, SMILES="")
                          for name, (emax, ec50, tox_ec50) in params.items()])
    curves = pd.DataFrame([dict(perturbation=n, group="VERO", dose=d, mean=score * d / 10)
                           for n, score in zip(params, (0.9, 0.4, 0.6, -0.5)) for d in DOSES])
    hits = pd.DataFrame(dict(perturbation=list(params), group="VERO", hit=[True, True, True, False]))
    line = efficacy.truth_agreement(curves, truth, hits)["per_line"]["VERO"]
    assert line["false_hits"] == ["I0", "T0"]
    assert line["cytotoxic_hits"] == ["T0"] and line["n_cytotoxic_hits"] == 1
    assert line["precision"] == pytest.approx(1 / 3)
    unscored = efficacy.truth_agreement(curves, truth)["per_line"]["VERO"]
    assert unscored["false_hits"] == [] and unscored["cytotoxic_hits"] == [] and unscored["n_cytotoxic_hits"] == 0


def test_simes_of_many_compounds_at_once_is_each_compounds_simes():
    rng = np.random.default_rng(3)
    groups = 40
    group = rng.integers(0, groups, 300)
    p = np.where(rng.random(300) < 0.15, np.nan, rng.random(300) ** 2)
    p[group == 7] = np.nan  # a compound with no tested dose
    combined = efficacy.grouped_simes(p, group, groups + 1)  # and one with no row at all
    for g in range(groups + 1):
        q = np.sort(p[(group == g) & np.isfinite(p)])
        expected = np.min(q * len(q) / np.arange(1, len(q) + 1)) if len(q) else np.nan
        assert np.allclose(combined[g], expected, equal_nan=True, rtol=0, atol=0)
        assert np.allclose(efficacy.simes(p[group == g]), expected, equal_nan=True, rtol=0, atol=0)
    assert np.isnan(combined[7]) and np.isnan(combined[groups])
