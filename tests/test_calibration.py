"""The hit list on null screens, through the whole `analyze_screen`: no treatment effect, so every hit is false.

Wide embeddings are where an axis fitted on the very control wells a dose is then tested against calls
noise: a linear SVM separates its own training wells far better than unseen ones, so every treated well
lands "above C-". Cross-fitted scores and a compound-level FDR keep the calls within the nominal 5%.
"""

import numpy as np
import pytest

from gandl.analysis import calibration, report


@pytest.fixture(scope="module")
def layout():
    return calibration.layout(plates_per_line=3, compounds=8, positive_wells=8, negative_wells=8, sites_per_well=2)


@pytest.mark.slow
@pytest.mark.parametrize("dim", [224, 512])
def test_pure_noise_features_call_at_most_the_fdr_in_hits(layout, dim):
    rates = []
    for seed in range(3):
        features = calibration.null_features(layout, dim, np.random.default_rng(seed))
        outcome = report.analyze_screen(features, layout)
        assert not outcome["skipped"], outcome["skipped"]
        rates.append(calibration.error_rates(outcome))
    assert np.mean([r["hit_rate"] for r in rates]) <= 0.05
    assert np.mean([r["dose_rate"] for r in rates]) <= 0.05
    assert np.mean([r["map_rate"] for r in rates]) <= 0.1
    assert abs(np.mean([r["table1_accuracy"] for r in rates]) - 0.5) < 0.1


@pytest.mark.slow
def test_plate_structured_noise_and_well_level_analysis(layout):
    features = calibration.null_features(layout, 64, np.random.default_rng(7), plate_sd=1.0, well_sd=0.5)
    for level in ("site", "well"):
        outcome = report.analyze_screen(features, layout, report.AnalysisConfig(level=level,
                                                                                normalization="center_scale"))
        assert not outcome["skipped"], outcome["skipped"]
        assert (outcome["table1"]["status"] == "ok").all()
        assert calibration.error_rates(outcome)["hit_rate"] <= 0.05
    assert (outcome["table1"]["n"] == [96, 96, 48, 48]).all()  # wells: 2 lines x 3 plates x 16 controls


@pytest.mark.slow
def test_within_plate_shuffle_removes_a_real_effect(layout):
    rng = np.random.default_rng(3)
    features = calibration.null_features(layout, 32, rng)
    healthy = (layout["disease_condition"] == "Mock").to_numpy()
    rescued = layout["treatment"].isin(["compound-000", "compound-001"]).to_numpy()
    features[healthy | rescued, 0] += 4.0  # controls separate and two compounds rescue fully
    real = calibration.error_rates(report.analyze_screen(features, layout))
    assert real["table1_accuracy"] > 0.95 and real["hit_rate"] == pytest.approx(4 / 16)  # 2 of 8, both lines
    null = calibration.error_rates(report.analyze_screen(calibration.shuffle_within_plates(features, layout, rng),
                                                         layout))
    assert null["hit_rate"] <= 0.05 and null["table1_accuracy"] < 0.7


def test_constant_features_skip_every_task_with_the_reason(layout):
    outcome = report.analyze_screen(np.ones((len(layout), 8), np.float32), layout)
    assert set(outcome["skipped"]) == {"controls", "efficacy", "dose_response", "spaces", "activity"}
    assert all("no variance" in why for why in outcome["skipped"].values())
