"""The main job end to end on a tiny budget: synthetic screen -> shards -> train -> embed -> analyze."""

import os

import numpy as np
import pandas as pd

from gandl import main


def test_main_job_writes_a_report_with_numbers_and_resumes(tiny_run):
    cfg, tmp_path, result = tiny_run
    workdir = str(tmp_path)

    summary = pd.read_csv(tmp_path / "analysis" / "summary.csv", index_col=0)
    assert list(summary.columns) == ["GAN-DL", "random-init D", "handcrafted"]
    for task in ("C+ vs C- (all cell lines): accuracy", "zero-shot cell type: accuracy",
                 "hidden efficacy: Spearman (dose points)"):
        values = summary.loc[task].astype(float)
        assert np.isfinite(values).all() and (values.abs() <= 1).all(), task
    assert float(summary.loc["zero-shot cell type: accuracy", "handcrafted"]) > 0.5  # four cell lines: chance 0.25
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert "GAN-DL" in report and "handcrafted" in report
    for fig in ("fig3_controls.png", "fig4_compounds.png", "fig5_dose_response.png", "fig6_confusion.png"):
        assert (tmp_path / "analysis" / "GAN-DL" / fig).stat().st_size > 1000
    assert (tmp_path / "samples" / "step_00000020.png").exists()
    assert result["summary"].shape == summary.shape

    # Rerunning resumes: training is done, embeddings exist, only the analysis is recomputed.
    npz = tmp_path / "embeddings" / "step_20" / "gandl.npz"
    mtime = os.stat(npz).st_mtime_ns
    main.run_all(cfg, workdir)
    assert os.stat(npz).st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]
