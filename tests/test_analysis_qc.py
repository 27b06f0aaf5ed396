"""Plate quality control on a synthetic feature-space screen, and acting on it.

The screen: 2 cell lines x 4 plates of 384 wells, one site each; features are normal noise in 4 dimensions, C+
(Mock) 50 sd away along the first, one compound of 24 part-way there by dose. Controls fill interior columns
(3-4 C+, 21-22 C-). Three plates are bad: on one the controls are swapped, on one C+ is drawn like C-
(collapsed), on one every outer-ring well is shifted 6 sd along the C+ direction (an edge effect; its controls,
inside, are untouched). The screen names its plate and well columns its own way.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from gandl.analysis import io, qc, report, tasks

ROWS = "ABCDEFGHIJKLMNOP"
SWAPPED, COLLAPSED, EDGE = "HRCE-1_2", "VERO-1_1", "VERO-1_3"
SCHEMA = dataclasses.replace(io.default_schema(), plate="plate_no", well="position")
GAP, SHIFT = 50.0, 6.0


def _screen(seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows = []
    for line in ("HRCE", "VERO"):
        for plate in range(1, 5):
            layout = rng.permutation(384)  # compound and dose of each treated well
            for i in range(384):
                r, c = divmod(i, 24)
                condition, compound, dose = "Active SARS-CoV-2", f"c{layout[i] % 24}", 10.0 ** (layout[i] // 24 % 6 - 2)
                if 1 <= r <= 14 and c in (2, 3, 20, 21):
                    condition, compound, dose = ("Mock" if c < 4 else condition), "", np.nan
                rows.append(dict(experiment=f"{line}-1", plate_no=plate, position=f"{ROWS[r]}{c + 1:02d}", site=1,
                                 cell_type=line, disease_condition=condition, treatment=compound,
                                 treatment_conc=dose, viability=rng.poisson(100), outer=r in (0, 15) or c in (0, 23)))
    meta = pd.DataFrame(rows)
    plate = (meta["experiment"] + "_" + meta["plate_no"].astype(str)).to_numpy()
    mock, control = (meta["disease_condition"] == "Mock").to_numpy(), (meta["treatment"] == "").to_numpy()
    x = rng.normal(0, 1, (len(meta), 4))
    x[:, 0] += GAP * mock
    swapped = (plate == SWAPPED) & control
    x[swapped, 0] = GAP - x[swapped, 0]  # C+ wells read like C-, C- wells like C+
    x[(plate == COLLAPSED) & mock, 0] -= GAP
    x[(plate == EDGE) & meta.pop("outer").to_numpy(), 0] += SHIFT
    active = (meta["treatment"] == "c0").to_numpy()
    x[active, 0] += GAP * (np.log10(meta.loc[active, "treatment_conc"]) + 2) / 5
    return x.astype(np.float32), meta


@pytest.fixture(scope="module")
def screen() -> tuple[np.ndarray, pd.DataFrame]:
    return _screen()


@pytest.fixture(scope="module")
def analysis(screen, tmp_path_factory):
    """The report of the screen with plates below a robust Z′ of 0 excluded."""
    out = tmp_path_factory.mktemp("qc")
    result = report.analyze({"features": screen}, str(out), report.AnalysisConfig(min_z_prime=0.0), schema=SCHEMA)
    return result["screens"]["features"], out


def test_the_failed_plates_fail_and_the_edge_plate_is_flagged(analysis):
    table = analysis[0]["qc_plates"].set_index("plate_id")
    assert len(table) == 8 and (table[["n_pos", "n_neg"]] == 28).all().all()
    assert list(table.index[:2].sort_values()) == [SWAPPED, COLLAPSED]  # worst first
    assert set(table.index[table["status"] == "fails"]) == {SWAPPED, COLLAPSED}
    assert (table.drop([SWAPPED, COLLAPSED])["status"] == "good").all()
    # Swapped controls separate as well as any (classic |gap| would call them good): they sit the wrong way round.
    assert table.loc[SWAPPED, "z_prime_robust"] < -1 and table.loc[SWAPPED, "ssmd"] < -5
    assert abs(table.loc[COLLAPSED, "ssmd"]) < 1
    assert set(table.index[table["edge_flag"]]) == {EDGE}
    assert table.loc[EDGE, "edge_effect"] > 2 * table.loc[EDGE, "edge_noise"]
    assert not table["drift"].any()  # 4 plates per line: too few to measure drift against
    assert any("no drift measure for cell line VERO: 4 plates" in n for n in analysis[0]["notes"])


def test_plates_below_min_z_prime_are_left_out_of_every_other_task(analysis):
    outcome = analysis[0]
    assert sorted(outcome["excluded_plates"]["plate_id"]) == [SWAPPED, COLLAPSED]
    table1 = outcome["table1"].set_index("task")
    assert table1.loc["C+ vs C- (all cell lines)", ["n", "n_groups"]].tolist() == [6 * 56, 6]
    assert table1.loc["C+ vs C- (HRCE)", "accuracy"] == 1.0  # without the swapped plate's labels
    assert not set(io.plate_key(outcome["efficacy"])) & {SWAPPED, COLLAPSED}
    assert len(outcome["coordinates"]) == 6 * 384
    assert outcome["dose_response"]["n"].sum() == 6 * (384 - 56)  # every treated well of the six plates
    assert "without the excluded plates (VERO-1_1, HRCE-1_2)" in outcome["protocol"]["hits"]


def test_the_report_shows_the_plate_qc_its_maps_and_what_was_excluded(analysis):
    _, out = analysis
    text = (out / "report.md").read_text()
    assert "### Plate quality control" in text and "### Excluded plates" in text
    assert f"| {SWAPPED} | robust Z′ " in text and "below min_z_prime=0 |" in text
    assert "changed only through the fits" in text
    for stem in ("efficacy", "position", "viability"):
        for line in ("HRCE", "VERO"):
            assert f"(features/qc_map_{stem}_{line}.png)" in text
            assert (out / "features" / f"qc_map_{stem}_{line}.png").stat().st_size > 1000
    assert "(features/qc_drift.png)" in text
    plates = pd.read_csv(out / "features" / "qc_plates.csv")
    assert "plate_no" in plates.columns and "plate" not in plates.columns  # the screen's own column name
    assert "| plate_id | cell_type | experiment | plate_no |" in text


def test_an_unknown_plate_to_exclude_is_refused_by_name(screen):
    with pytest.raises(ValueError, match=r"\['HRCE-1_9'\]"):
        report.analyze_screen(*screen, report.AnalysisConfig(exclude_plates=("HRCE-1_1", "HRCE-1_9")), schema=SCHEMA)


def test_excluding_every_plate_of_a_cell_line_says_so(screen):
    config = report.AnalysisConfig(exclude_plates=tuple(f"VERO-1_{p}" for p in range(1, 5)))
    outcome = report.analyze_screen(*screen, config, schema=SCHEMA)
    assert "cell line VERO: every plate excluded, so only the plate quality control has numbers for it" in \
        outcome["notes"]
    assert set(outcome["qc_plates"]["group"]) == {"HRCE", "VERO"}  # the QC still covers every plate
    assert set(outcome["efficacy"]["group"]) == {"HRCE"}


def test_a_screen_without_plate_positions_gets_no_maps_and_says_why(analysis, screen):
    view = io.screen_view(screen[1], SCHEMA)
    view = view.assign(well=[f"well{i}" for i in range(len(view))]).drop(columns="viability")
    result = tasks.qc_task(tasks.Inputs(screen[0], view, tasks.AnalysisConfig(), "f",
                                        {"efficacy": {"efficacy": analysis[0]["efficacy"]}}, schema=SCHEMA))
    assert list(result.figures) == ["qc_drift.png"]
    assert any("no plate maps or edge effects: well 'well0' is not a row letter" in n for n in result.notes)
    table = result.values["qc_plates"]
    assert table["edge_effect"].isna().all() and not table["edge_flag"].any()
    assert (table["status"] == "good").all()  # the six kept plates


def test_drift_flags_the_plate_whose_controls_moved():
    rng = np.random.default_rng(0)
    wells = pd.DataFrame([dict(plate_id=f"{exp}_{p}", group="HRCE", experiment=exp, plate=p, role=role,
                               score=(1.0 if role == "C+" else -1.0) + rng.normal(0, 0.1)
                               + (0.4 if (exp, p, role) == ("B", 2, "C-") else 0.0))
                          for exp in ("B", "A") for p in (1, 2, 3, 4) for role in ("C+", "C-") for _ in range(16)])
    drift = qc.drift_table(wells)
    assert drift["plate_id"].tolist() == [f"{e}_{p}" for e in "AB" for p in (1, 2, 3, 4)]  # acquisition order
    assert drift.loc[drift["drift"], "plate_id"].tolist() == ["B_2"]
    assert drift.set_index("plate_id").loc["B_2", "neg_z"] > qc.DRIFT_Z
