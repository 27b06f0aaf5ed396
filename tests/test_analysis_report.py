"""The full analysis on a synthetic screen with handcrafted features, which see the hidden truth.

The screen (2 plates per cell line, 2 sites per well, 9 compounds at 6 doses, 32 px) is small enough to
draw in ~6 s yet has 108 compound x line x dose points, enough for a rank correlation with the hidden
efficacy to mean something: with 108 points a chance Spearman has a standard deviation of ~0.1, so the
0.5 threshold is five of them above chance (the shuffled-feature control lands near 0).
"""

import dataclasses
import os
from io import BytesIO

import numpy as np
import pandas as pd
import pytest

from gandl import fileio
from gandl.analysis import io, report
from gandl.data import images as image_io
from gandl.data import rxrx
from gandl.data import screen as screen_lib
from gandl.data.synthetic import layouts
from gandl.features import handcrafted


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    root = layouts.write_rxrx19a(tmp_path_factory.mktemp("analysis_screen"), seed=0, image_size=32,
                                 plates_per_cell_line=2, sites_per_well=2, num_compounds=9)
    scr = rxrx.read_rxrx19a(str(root))
    feats = handcrafted.features(image_io.read_site_images(scr.paths))
    return feats, scr.metadata, pd.read_csv(root / "truth.csv")


@pytest.fixture(scope="module")
def analysis(screen, tmp_path_factory):
    feats, meta, truth = screen
    # Through the embeddings-npz contract and a site_id join, in a scrambled row order.
    order = np.random.default_rng(0).permutation(len(meta))
    arrays = {c: (meta[c].to_numpy(float) if pd.api.types.is_numeric_dtype(meta[c]) else
                  meta[c].to_numpy().astype(str))[order] for c in meta}
    npz = tmp_path_factory.mktemp("emb") / "embeddings.npz"
    np.savez(npz, features=feats[order], provenance=np.array("{}"), **arrays)
    loaded, loaded_meta = io.load_embeddings(str(npz))
    aligned, aligned_meta = io.align(loaded, loaded_meta["site_id"], meta)
    shuffled = feats[np.random.default_rng(1).permutation(len(feats))]
    out = str(tmp_path_factory.mktemp("analysis"))
    open(os.path.join(out, "report.md.tmp-0dead"), "w").close()  # what a writer killed in an earlier run leaves
    config = report.AnalysisConfig(normalization="center_scale")
    result = report.analyze({"handcrafted": (aligned, aligned_meta), "shuffled": (shuffled, meta)}, out, config,
                            truth=truth)
    return result, out


@pytest.mark.slow
def test_controls_separate_and_shuffled_features_do_not(analysis):
    summary = analysis[0]["summary"]
    hc, sh = summary["handcrafted"], summary["shuffled"]
    for task in ("C+ vs C- (all cell lines)", "C+ vs C- (HRCE)", "C+ vs C- (VERO)"):
        assert hc[f"{task}: accuracy"] > 0.9 and hc[f"{task}: roc_auc"] > 0.95
        assert sh[f"{task}: accuracy"] < 0.75
    table = analysis[0]["screens"]["handcrafted"]["table1"]
    assert (table["n_groups"] == [4, 4, 2, 2]).all() and (table["status"] == "ok").all()


@pytest.mark.slow
def test_efficacy_ranking_follows_the_hidden_efficacy(analysis):
    summary = analysis[0]["summary"]
    assert summary.loc["hidden efficacy: Spearman (dose points)", "handcrafted"] > 0.5
    assert summary.loc["hidden efficacy: Spearman (best dose per compound)", "handcrafted"] > 0.7
    # Shuffled features: no fold's held-out C+ - C- gap is clearly positive, so no score is drawn on a mirrored axis.
    shuffled = summary.loc["hidden efficacy: Spearman (dose points)", "shuffled"]
    assert not np.isfinite(shuffled) or abs(shuffled) < 0.3
    hits = analysis[0]["screens"]["handcrafted"]["hits"].set_index(["perturbation", "group"])
    remdesivir = hits.loc[("Remdesivir", "HRCE")]
    assert remdesivir["hit"] and remdesivir["fit_status"] == "ok"
    assert 0.25 / 3 < remdesivir["ec50_uM"] < 0.25 * 3  # hidden EC50 0.25 µM
    assert not hits.loc[("Polydatin", "HRCE"), "hit"] and not hits.loc[("Polydatin", "VERO"), "hit"]
    # Features shuffled across sites carry no compound effect: no hit.
    assert not analysis[0]["screens"]["shuffled"]["hits"]["hit"].any()
    for line in ("HRCE", "VERO"):
        assert summary.loc[f"{line}: hidden efficacy AUROC (best-dose score, active vs inert)", "handcrafted"] > 0.9
        precision = summary.loc[f"{line}: hidden efficacy hit precision", "handcrafted"]
        assert not np.isfinite(precision) or precision >= 0.75  # NaN: no hit (two plates: one replicate df a dose)
    assert summary.loc["HRCE: hidden efficacy hit recall", "handcrafted"] >= 0.75


@pytest.mark.slow
def test_report_folder(analysis):
    result, out = analysis
    for name in ("report.md", "summary.csv", "analysis.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    for folder in ("handcrafted", "shuffled"):
        for name in ("table1_controls.csv", "table1_controls.md", "spaces.parquet", "efficacy.parquet",
                     "dose_response.csv", "hits.csv", "fig3_controls.png", "fig4_compounds.png",
                     "fig5_dose_response.png"):
            path = os.path.join(out, folder, name)
            assert os.path.getsize(path) > 0, path
    assert all(os.path.exists(f) for f in result["files"])
    assert not [f for f in os.listdir(out) if ".tmp-" in f]
    text = open(os.path.join(out, "report.md")).read()
    assert "## Side by side" in text and "| handcrafted | shuffled |" in text
    assert "| cell_type | rank | treatment |" in text and "| group |" not in text  # the screen's own names
    scored = pd.read_parquet(os.path.join(out, "handcrafted", "efficacy.parquet"))
    held_out = result["screens"]["handcrafted"]["held_out"]
    plate = scored["experiment"] + "_" + scored["plate"].astype(str)
    assert len(held_out) >= 2 and len(scored) == len(result["screens"]["handcrafted"]["coordinates"])
    for k, groups in enumerate(held_out):  # every site is scored by the model that held its plate out
        assert set(plate[scored["model"] == k]) == set(groups)


def test_malformed_inputs_are_skipped_with_notes_or_refused(screen):
    feats, meta, _ = screen
    meta = meta.copy()
    vero_controls = (meta["cell_type"] == "VERO") & (meta["treatment"] == "")
    meta.loc[vero_controls & (meta["disease_condition"] == "Mock"), "disease_condition"] = ""
    one_dose = (meta["treatment"] == "Polydatin") & (meta["treatment_conc"] != 10.0)
    keep = ~one_dose.to_numpy()
    result = report.analyze_screen(feats[keep], meta[keep].reset_index(drop=True),
                                   report.AnalysisConfig(normalization="center_scale"))
    notes = "\n".join(result["notes"])
    assert "C+ vs C- (VERO): skipped" in notes
    assert "cell line VERO: not scored (no C+ control sites)" in notes
    assert "Polydatin (HRCE) has 1 dose(s)" in notes
    vero = result["hits"][result["hits"]["group"] == "VERO"]  # listed, each with why it was not tested
    assert len(vero) and not vero["hit"].any() and vero["status"].str.startswith("not tested: its fold").all()
    with pytest.raises(ValueError, match="align them by site_id"):
        report.analyze_screen(feats[:-1], meta)
    with pytest.raises(ValueError, match="screen.perturbation='treatment'"):
        report.analyze_screen(feats, meta.drop(columns="treatment"))
    with pytest.raises(io.JoinError, match="without metadata"):
        io.align(feats, meta["site_id"].str.replace("HRCE", "HRCE-x"), meta)


UV_AS_DMSO = screen_lib.ScreenSchema(**layouts.CELL_PROFILER_SCHEMA)


def test_wells_the_schema_leaves_out_of_the_treatments_are_no_compound_and_are_listed(screen):
    feats, meta, _ = screen
    plate_map = layouts.cell_profiler_plate_map(meta)
    uv = (plate_map["Metadata_Virus"] == "UV").to_numpy()
    assert (screen_lib.control_role(plate_map, schema=UV_AS_DMSO)[uv] == "treated").all()  # the default: a treatment
    declared = dataclasses.replace(UV_AS_DMSO, treated="Metadata_Compound != 'DMSO'")
    screen_lib.validate(plate_map, declared, "plate_map.csv")
    assert (screen_lib.control_role(plate_map, schema=declared)[uv] == "other").all()
    result = report.analyze_screen(feats, plate_map, report.AnalysisConfig(normalization="center_scale"),
                                   schema=declared)
    assert {"efficacy", "dose_response", "activity"} <= set(result["results"]), result["skipped"]
    for table in ("hits", "dose_response", "activity"):
        assert len(result[table]) and "DMSO" not in set(result[table]["perturbation"]), table
    blank = int(((plate_map["Metadata_Compound"] == "") & ~uv).sum())
    assert (f"{int(uv.sum()) + blank} sites of role other (perturbations: DMSO) are neither controls nor treatments: "
            "left out of compounds, hits and mAP") in result["notes"]


@pytest.mark.parametrize("change,message", [
    (dict(treated="Metadata_Compound == 'dmso'"),
     r"screen.treated=\"Metadata_Compound == 'dmso'\" selects no site of plate_map.csv"),
    (dict(treated="Metadata_Drug != 'DMSO'"), r"screen.treated=.* names column 'Metadata_Drug', which the metadata"),
    (dict(treated="Metadata_Compound != 'DMSO'", perturbation=""), r"screen.treated=.* names no perturbation column"),
])
def test_a_treated_query_that_does_not_fit_is_named_in_one_line(screen, change, message):
    plate_map = layouts.cell_profiler_plate_map(screen[1])
    with pytest.raises(screen_lib.MetadataError, match=message) as error:
        screen_lib.validate(plate_map, dataclasses.replace(UV_AS_DMSO, **change), "plate_map.csv")
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_html_report_is_self_contained_with_the_tables_numbers(analysis):
    result, out = analysis
    page = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == page.count("</table>") >= 5
    spearman = result["summary"].loc["hidden efficacy: Spearman (dose points)", "handcrafted"]
    assert f"<td>{spearman:.3f}</td>" in page
    top = result["screens"]["handcrafted"]["hits"].nsmallest(1, "rank").iloc[0]
    assert f"<td>{top['perturbation']}</td>" in page
    # Every figure the markdown links is embedded, and nothing points at a file beside the page.
    markdown = open(os.path.join(out, "report.md")).read()
    assert page.count('src="data:image/png;base64,iVBORw0KGgo') == markdown.count("](") >= 6
    assert ".png" not in page



@pytest.mark.slow
def test_the_report_folder_is_complete_only_with_its_completion_record(analysis):
    """Every file the analysis wrote is listed, with size and checksum, in a record written after them."""
    result, out = analysis
    record = os.path.join(out, report.RECORD)
    assert fileio.verify_record(record) == []
    listed = fileio.read_json(record)["files"]
    assert sorted(os.path.join(out, f) for f in listed) == sorted(result["files"])
    assert os.stat(record).st_mtime_ns >= max(os.stat(f).st_mtime_ns for f in result["files"])


@pytest.mark.slow
def test_numbers_only_draws_no_figure_and_changes_no_number(screen, analysis):
    feats, meta, truth = screen
    drawn = analysis[0]["screens"]["handcrafted"]
    bare = report.analyze_screen(feats, meta, report.AnalysisConfig(normalization="center_scale"), truth, draw=False)
    assert len(report.figures(drawn)) >= 5 and not report.figures(bare)
    assert not [block for result in bare["results"].values() for block in result.blocks if block[0] == "figure"]
    for key in ("hits", "dose_response", "qc_plates", "coordinates"):
        pd.testing.assert_frame_equal(bare[key], drawn[key])


def test_site_tables_are_parquet_even_when_a_column_mixes_numbers_and_names():
    table = pd.DataFrame({"plate": [1, "B2", None], "efficacy": [0.5, -1.0, np.nan]})
    back = pd.read_parquet(BytesIO(report._table_data("efficacy", table, False)))
    assert back["plate"].tolist()[:2] == ["1", "B2"] and pd.isna(back["plate"].iloc[2])
    assert np.allclose(back["efficacy"], table["efficacy"], equal_nan=True)
    assert report._table_data("hits", table, False).startswith("plate,efficacy")


def test_a_screen_of_controls_only_skips_the_dose_tests_with_the_reason():
    rows = [dict(site_id=f"HRCE-1_{p}_{well}_1", well_id=f"HRCE-1_{p}_{well}", cell_type="HRCE", experiment="HRCE-1",
                 plate=p, well=well, site=1, disease_condition=rxrx.MOCK if i % 2 else rxrx.ACTIVE, treatment="",
                 treatment_conc=np.nan)
            for p in range(1, 7) for i, well in enumerate(f"{r}{c:02d}" for r in "ABCD" for c in range(1, 13))]
    features = np.random.default_rng(0).normal(size=(len(rows), 8)).astype(np.float32)
    outcome = report.analyze_screen(features, pd.DataFrame(rows), report.AnalysisConfig(n_splits=2), draw=False)
    assert outcome["skipped"]["dose_response"].startswith("ValueError: the screen has no treated sites")
    assert "table1" in outcome and "efficacy" in outcome
