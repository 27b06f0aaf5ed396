"""The main job end to end on a tiny budget: synthetic screen -> shards -> train -> embed -> analyze."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from gandl import embed, main
from gandl.analysis import stage as analysis_stage
from gandl.data import stage as data_stage
from gandl.defaults import Config

pytestmark = pytest.mark.slow  # not in the inner loop (tests/conftest.py)


def test_main_job_writes_a_report_with_numbers_and_resumes(tiny_run):
    cfg, tmp_path, result = tiny_run
    workdir = str(tmp_path)

    summary = pd.read_csv(tmp_path / "analysis" / "summary.csv", index_col=0)
    assert list(summary.columns) == ["GAN-DL", "random-init D", "handcrafted"]
    for task in ("C+ vs C- (all cell lines): accuracy", "zero-shot cell type: accuracy",
                 "hidden efficacy: Spearman (dose points)", "C+ vs C- (all cell lines): accuracy @ k=2",
                 "zero-shot cell type: accuracy @ k=2"):
        values = summary.loc[task].astype(float)
        assert np.isfinite(values).all() and (values.abs() <= 1).all(), task
    assert float(summary.loc["zero-shot cell type: accuracy", "handcrafted"]) > 0.5  # four cell lines: chance 0.25
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert "GAN-DL" in report and "handcrafted" in report
    for fig in ("fig3_controls.png", "fig4_compounds.png", "fig5_dose_response.png", "fig6_confusion.png",
                "fig7_map_dose.png"):
        assert (tmp_path / "analysis" / "GAN-DL" / fig).stat().st_size > 1000
    few = pd.read_csv(tmp_path / "analysis" / "GAN-DL" / "zeroshot_few_labels.csv")
    assert list(few["k"]) == [2] and list(few["status"]) == ["ok"] and list(few["draws"]) == [2]
    protocol = json.loads((tmp_path / "analysis" / "analysis.json").read_text())["protocol"]["GAN-DL"]
    assert {"zeroshot_confusion", "zeroshot_few_labels", "table1_few_labels"} <= set(protocol)
    activity = pd.read_csv(tmp_path / "analysis" / "GAN-DL" / "map_activity.csv")
    assert len(activity) and activity["q_value"].between(0, 1).all()
    assert 0 <= float(summary.loc["phenotypic activity (mAP vs C-): fraction with q < 0.05", "GAN-DL"]) <= 1
    for stem in ("gandl.h5ad", "gandl_wells.parquet", "gandl_wells.h5ad"):
        assert (tmp_path / "embeddings" / "step_20" / stem).exists()
    assert (tmp_path / "samples" / "step_00000020.png").exists()
    assert result["summary"].shape == summary.shape

    # Rerunning resumes: training is done, embeddings exist, only the analysis is recomputed.
    npz = tmp_path / "embeddings" / "step_20" / "gandl.npz"
    mtime = os.stat(npz).st_mtime_ns
    main.run_all(Config.from_mapping(cfg), workdir)
    assert os.stat(npz).st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]


def test_analysis_survives_ordinary_inputs(tiny_run, tmp_path):
    """Three inputs that once ended the job: an RxRx1 table without `sirna_id`, zero-shot cell types that each sit on
    one plate (no honest held-out split), and a `truth.csv` of another schema beside the screen. The report is
    written, the zero-shot task is a skipped row with its reason, and the foreign truth file is ignored."""
    import json
    import shutil

    from gandl.data.synthetic import layouts

    cfg, run_dir, _ = tiny_run
    workdir = tmp_path / "run"
    # The run's screen, shards and checkpoints; exports record their absolute paths, so embed anew.
    shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns("raw_rxrx1", "shards_rxrx1", "embeddings",
                                                                    "analysis"))
    zeroshot_root = layouts.write_rxrx1(tmp_path / "rxrx1", seed=5, image_size=16, plates_per_cell_line=1,
                                        sites_per_well=1)
    metadata = pd.read_csv(zeroshot_root / "metadata.csv", dtype=str, keep_default_na=False)
    metadata.drop(columns=["sirna_id"]).to_csv(zeroshot_root / "metadata.csv", index=False)
    pd.DataFrame({"compound": ["Remdesivir"], "ic50": [1.0]}).to_csv(workdir / "raw" / "truth.csv", index=False)
    cfg = cfg.copy_and_resolve_references()
    cfg.zeroshot.root = str(zeroshot_root)

    # the screen's own shards are the run's, as converted
    data_stage.convert_zeroshot(Config.from_mapping(cfg), str(workdir))
    embed.run(Config.from_mapping(cfg), str(workdir))
    result = analysis_stage.run(Config.from_mapping(cfg), str(workdir))

    summary = pd.read_csv(workdir / "analysis" / "summary.csv", index_col=0)
    assert summary.loc["zero-shot cell typing", "GAN-DL"].startswith("skipped: ")
    assert "C+ vs C- (all cell lines): accuracy" in summary.index  # every other task still ran
    assert not any(row.startswith("hidden efficacy") for row in summary.index)  # the foreign truth is ignored
    record = json.loads((workdir / "analysis" / "analysis.json").read_text())
    assert set(record["skipped"]["GAN-DL"]) == {"zeroshot"}
    assert "skipped" in (workdir / "analysis" / "report.md").read_text()
    assert result["skipped"]["handcrafted"]["zeroshot"] == record["skipped"]["handcrafted"]["zeroshot"]


def test_profiles_load_in_the_fields_tools_as_the_readme_shows(tiny_run):
    """docs/outputs.md, "In pycytominer, scanpy and copairs": the well parquet, the h5ad and mAP on them."""
    import anndata

    from gandl.analysis import activity, io

    _, run_dir, _ = tiny_run
    folder = run_dir / "embeddings" / "step_20"
    wells = pd.read_parquet(folder / "gandl_wells.parquet")
    features = [c for c in wells.columns if not c.startswith("Metadata_")]
    sites = anndata.read_h5ad(folder / "gandl.h5ad")
    assert sites.X.shape[1] == len(features) and sites.n_obs >= len(wells)
    view = io.screen_view(wells.rename(columns=lambda c: c.removeprefix("Metadata_")), io.default_schema())
    assert view["well_id"].is_unique and set(view["role"]) >= {"C+", "C-", "treated"}  # one row per well
    table = activity.phenotypic_activity(wells[features].to_numpy(), view)
    assert len(table) and table["q_value"].between(0, 1).all()
