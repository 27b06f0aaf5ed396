"""Efficacy normalisation, dose-response tables, Hill fits and the hit table on hand-made numbers."""

import numpy as np
import pandas as pd
import pytest

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
    meta = pd.DataFrame({"well_id": ["w1", "w1", "w2", "w3", "w4"], "treatment": ["d", "d", "d", "d", ""],
                         "cell_type": "HRCE", "treatment_conc": [1.0, 1.0, 1.0, 10.0, np.nan]})
    wells = efficacy.well_scores(np.array([0.0, 1.0, 1.5, -1.0, 9.0]), meta)
    assert wells["score"].tolist() == [0.5, 1.5, -1.0] and wells["n_sites"].tolist() == [2, 1, 1]
    curve = efficacy.dose_response(wells)
    assert curve["mean"].tolist() == [1.0, -1.0]
    assert curve["n"].tolist() == [2, 1] and curve["n_sites"].tolist() == [3, 1]
    assert curve["sem"].iloc[0] == pytest.approx(np.std([0.5, 1.5], ddof=1) / np.sqrt(2))
    assert np.isnan(curve["sem"].iloc[1])
    assert curve["log10_conc"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("params", [(-1.0, 0.9, np.log10(0.25), 1.5), (-0.8, 0.5, 0.3, 2.5),
                                    (0.5, -1.0, -0.5, 1.0)])
def test_hill_fit_recovers_known_parameters(params):
    x = np.repeat(np.log10(DOSES), 4)
    exact = efficacy.fit_hill(x, efficacy.hill(x, *params))
    assert exact.status == "ok"
    np.testing.assert_allclose([exact.bottom, exact.top, np.log10(exact.ec50_uM), exact.hill_slope], params,
                               atol=1e-4)
    assert exact.pec50 == pytest.approx(6 - params[2], abs=1e-4) and exact.r2 == pytest.approx(1.0)
    noisy = efficacy.fit_hill(x, efficacy.hill(x, *params) + np.random.default_rng(0).normal(0, 0.05, x.size))
    assert noisy.status == "ok"
    assert abs(np.log10(noisy.ec50_uM) - params[2]) < 0.15
    assert abs(noisy.top - params[1]) < 0.1 and abs(noisy.bottom - params[0]) < 0.1


def test_hill_fit_flags_rather_than_raises():
    x = np.repeat(np.log10(DOSES), 3)
    rng = np.random.default_rng(1)
    assert efficacy.fit_hill(x, -1 + rng.normal(0, 0.3, x.size)).status == "flat"
    assert efficacy.fit_hill(np.zeros(3), np.ones(3)).status == "too_few_doses"
    one_dose = efficacy.fit_hill(np.log10([1.0, 1.0]), [0.2, 0.4])
    assert one_dose.failed and np.isnan(one_dose.ec50_uM)
    # A shallow rise whose EC50 lies beyond a decade above the top dose: EC50 pinned to its bound.
    assert efficacy.fit_hill(x, efficacy.hill(x, -1.0, 5.0, 2.2, 0.5)).status == "ec50_out_of_range"
    # An infinitely steep step: the optimiser cannot settle, which is a flag, not an exception.
    assert efficacy.fit_hill(x, np.where(x > 0.9, 1.0, -1.0)).failed
    weird = efficacy.fit_hill(x, np.where(np.arange(x.size) % 2, 5.0, -5.0))
    assert weird.failed


def test_toxic_drop_and_auc():
    assert efficacy.toxic_drop([-1, -0.5, 0.5, 0.9, 0.8, -0.6], [0.1] * 6)
    assert not efficacy.toxic_drop([-1, -0.5, 0.5, 0.9, 0.8, 0.95], [0.1] * 6)
    assert not efficacy.toxic_drop([-1, 0.5, 0.2, 0.0, -0.2, -0.1], [0.5] * 6)  # drop within noise
    assert efficacy.curve_auc(np.array([0.0, 1.0, 2.0]), np.array([-1.0, -1.0, -1.0])) == 0.0
    assert efficacy.curve_auc(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0])) == 2.0
    assert efficacy.curve_auc(np.array([1.0, 0.0]), np.array([1.0, -1.0])) == pytest.approx(1.0)


def test_hit_table_ranks_and_keeps_one_dose_compounds():
    rows = []
    for name, values in (("strong", efficacy.hill(np.log10(DOSES), -1, 1, -0.5, 2)),
                         ("weak", efficacy.hill(np.log10(DOSES), -1, -0.2, 0, 2)),
                         ("inert", np.full(6, -1.0))):
        for rep in range(2):
            for c, v in zip(DOSES, values):
                rows.append(dict(treatment=name, cell_type="HRCE", treatment_conc=c,
                                 well_id=f"{name}{c}{rep}", score=v + (0.02 if rep else -0.02), n_sites=1))
    rows.append(dict(treatment="single", cell_type="HRCE", treatment_conc=1.0, well_id="s", score=0.3, n_sites=1))
    table = efficacy.hit_table(pd.DataFrame(rows)).set_index("treatment")
    assert table["rank"].to_dict() == {"strong": 1, "single": 2, "weak": 3, "inert": 4}
    assert table.loc["strong", "fit_status"] == "ok" and table.loc["strong", "hit"]
    assert table.loc["strong", "ec50_uM"] == pytest.approx(10 ** -0.5, rel=0.05)
    assert table.loc["inert", "fit_status"] == "flat" and not table.loc["inert", "hit"]
    assert table.loc["single", "fit_status"] == "too_few_doses" and table.loc["single", "n_doses"] == 1
    assert not table["toxic_drop"].any()
