"""Leakage: inputs without signal score at chance on held-out plates, through every normalisation and the
ImageNet comparator's path; with a real signal the same paths still score high.

Chance on ~300 sites has a standard deviation of ~0.03, so the 0.60 ceiling is three of them above 0.5.
The comparator test also runs the old protocol (one model fine-tuned on all controls, then the same CV) on
the same noise: it memorises the random labels and scores far above chance, so the test can fail.
"""

import pathlib

import numpy as np
import pandas as pd
import pytest

from gandl.analysis import classify, report
from gandl.defaults import Config

TASK = "C+ vs C- (all cell lines)"


def _controls(rng: np.random.Generator, plates: int = 8, sites: int = 40) -> pd.DataFrame:
    """Control sites of two cell lines on `plates` plates each half, C+ / C- in random wells."""
    rows = []
    for p in range(plates):
        line = ("HRCE", "VERO")[p % 2]
        experiment, plate = f"{line}-1", p // 2 + 1
        for i, cond in enumerate(rng.permutation(["Mock", "Active SARS-CoV-2"] * (sites // 2))):
            well = f"{'ABCDEFGHIJKLMNOP'[i // 12]}{i % 12 + 1:02d}"
            rows.append(dict(site_id=f"{experiment}_{plate}_{well}_1", well_id=f"{experiment}_{plate}_{well}",
                             cell_type=line, experiment=experiment, plate=plate, well=well, site=1,
                             disease_condition=cond, treatment="", treatment_conc=np.nan, SMILES=""))
    return pd.DataFrame(rows)


def _inputs(kind: str, seed: int = 0, dim: int = 32) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    meta = _controls(rng)
    x = rng.normal(0, 1, (len(meta), dim))
    plate = pd.factorize(meta["experiment"] + "_" + meta["plate"].astype(str))[0]
    if kind == "plate":  # plate identity (an offset and a scale per plate), not the label
        x = x * rng.uniform(0.5, 2.0, (plate.max() + 1, dim))[plate] + rng.normal(0, 4, (plate.max() + 1, dim))[plate]
    if kind == "signal":  # the label along one direction (4 sd apart), under plate offsets half the noise
        x += rng.normal(0, 0.5, (plate.max() + 1, dim))[plate]
        x[:, 0] += np.where(meta["disease_condition"] == "Mock", 2.0, -2.0)
    return x.astype(np.float32), meta


@pytest.mark.parametrize("normalization", classify.NORMALIZATIONS)
def test_features_without_the_label_score_at_chance_and_with_it_high(normalization):
    config = report.AnalysisConfig(normalization=normalization, n_splits=4)
    for kind in ("noise", "plate", "signal"):
        x, meta = _inputs(kind)
        result = report.analyze_screen(x, meta, config, draw=False)
        table = result["table1"].set_index("task")
        assert table.loc[TASK, "n_folds"] == 4 and table.loc[TASK, "n"] == 320
        # 320 sites merged (chance sd ~0.03 over seeds), 160 per cell line (sd ~0.07): ceilings ~3 sd up.
        for task, ceiling in ((TASK, 0.60), ("C+ vs C- (HRCE)", 0.70), ("C+ vs C- (VERO)", 0.70)):
            accuracy = table.loc[task, "accuracy"]
            assert accuracy > 0.85 if kind == "signal" else accuracy <= ceiling, (kind, task, accuracy)
    assert "fitted on each fold's training groups only" in result["protocol"]["table1_controls"]


def _image_screen(root: pathlib.Path, signal: bool, seed: int = 0) -> str:
    """Shards of 6 plates x 48 control sites of 16 px noise; with `signal`, C+ sites are brighter in w1."""
    from gandl.data import convert, rxrx
    from gandl.data.synthetic import layouts

    rng = np.random.default_rng(seed)
    meta = _controls(rng, plates=6, sites=48)
    meta = meta.assign(cell_type="HRCE", experiment="HRCE-1", plate=np.repeat(np.arange(1, 7), 48))
    meta["well_id"] = meta["experiment"] + "_" + meta["plate"].astype(str) + "_" + meta["well"]
    meta["site_id"] = meta["well_id"] + "_1"
    for row in meta.itertuples():
        image = rng.integers(0, 256, (16, 16, 5))
        if signal and row.disease_condition == "Mock":
            image[..., 0] = np.minimum(image[..., 0] + 80, 255)
        for c in range(5):
            path = layouts.image_path(root / "raw", row.experiment, row.plate, row.well, 1, c + 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(layouts.png_bytes(image[..., c].astype(np.uint8)))
    meta.to_csv(root / "raw" / "metadata.csv", index=False)
    convert.convert(rxrx.read_rxrx19a(str(root / "raw")), str(root / "shards"),
                    convert.ConvertOptions(image_size=16, sites_per_shard=96, num_workers=1), progress=False)
    return str(root / "shards")


def _comparator_tables(root: pathlib.Path, signal: bool, epochs: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1 of the ImageNet comparator on an image screen: (old protocol, per-fold path of `run_embed`).

    The old protocol scores the model fine-tuned on every control (the descriptive outputs' model) in the
    same cross-validation.
    """
    from gandl import embed, sharding
    from gandl.analysis import io
    from gandl.data import folds, pipeline
    from gandl.features import imagenet

    spec, mesh = pipeline.open_shards(_image_screen(root, signal)), sharding.make_mesh()
    # A random backbone that is trained too: enough capacity to memorise random labels in a few steps.
    settings = imagenet.FineTuneConfig(epochs=epochs, batch_size=32, learning_rate=1e-2, train_backbone=True,
                                       blocks=(1, 1, 1, 1), pool_batches=4)
    out = str(root / "embeddings")
    options = pipeline.InputOptions()
    all_controls = imagenet.fine_tune_comparator(spec, settings, mesh, imagenet.RANDOM, 0, options)
    features, meta = io.load_embeddings(embed.export(spec, out, {"imagenet": all_controls}, batch_size=32,
                                                     provenance={}, progress=False)["imagenet"])
    config = report.AnalysisConfig(n_splits=2)
    old = report.analyze_screen(features, meta, config, draw=False)["table1"].set_index("task")
    view = io.screen_view(meta, io.default_schema())  # the sites as the analysis reads them
    assignment = folds.assignment(view, folds.FoldSettings(n_splits=2, group_by="plate", seed=0))
    every_control = imagenet.Controls()

    def fine_tuned(held_out):
        return imagenet.fine_tune_comparator(spec, settings, mesh, imagenet.RANDOM, 0, options,
                                             imagenet.Controls(held_out, "plate"))

    embed.export_folds(spec, out, "imagenet", assignment, fine_tuned, batch_size=32, provenance={},
                       feature_settings={}, rows=lambda batch: imagenet.control_labels(batch, every_control) >= 0)
    fold_sets = io.load_fold_sets(out, "imagenet")
    folds = classify.control_folds(view, n_splits=2)
    assert [h for *_, h in fold_sets] == [list(f) for f in folds]
    assert all(len(m) == len(meta) for _, m, _ in fold_sets)  # every site here is a control
    result = report.analyze_screen(features, meta, config, fold_sets=fold_sets, draw=False)
    assert "one model per fold" in result["protocol"]["table1_controls"]
    return old, result["table1"].set_index("task")


@pytest.mark.slow
def test_imagenet_comparator_is_scored_only_by_models_that_never_saw_the_fold(tmp_path):
    old, noise = _comparator_tables(tmp_path / "noise", signal=False, epochs=4)
    assert old.loc[TASK, "accuracy"] > 0.75  # the old protocol, train-on-test: random labels memorised
    assert noise.loc[TASK, "n"] == 288 and noise.loc[TASK, "n_folds"] == 2
    assert noise.loc[TASK, "accuracy"] <= 0.60
    _, signal = _comparator_tables(tmp_path / "signal", signal=True, epochs=1)
    assert signal.loc[TASK, "accuracy"] > 0.9


def test_comparator_table1_is_skipped_without_per_fold_features():
    x, meta = _inputs("signal")
    table = report.analyze_screen(x, meta, report.AnalysisConfig(n_splits=4), fold_sets=[], draw=False)["table1"]
    assert table["accuracy"].isna().all() and table["status"].str.contains("no per-fold features").all()


@pytest.mark.slow
def test_the_embed_stage_records_one_fold_assignment_that_both_stages_read(tiny_config, tmp_path, monkeypatch):
    """A label-fitted set (the registry's `per_fold`) is exported per fold of the analysis' folds, drawn once and
    written as folds.json; the analysis scores Table 1 with those exports; another assignment is refused."""
    import os

    import jax

    from gandl import embed
    from gandl.analysis import io
    from gandl.analysis import stage as analysis_stage
    from gandl.data import convert, folds, rxrx
    from gandl.data.synthetic import layouts as synthetic
    from gandl.features import registry
    from gandl.models import init_variables
    from gandl.models.config import ModelConfig

    raw = synthetic.write_rxrx19a(tmp_path / "raw", seed=0, image_size=16, plates_per_cell_line=3, sites_per_well=1,
                                  num_compounds=3)
    shards = str(tmp_path / "shards")
    convert.convert(rxrx.read_rxrx19a(str(raw)), shards, convert.ConvertOptions(image_size=16, num_workers=1),
                    progress=False)
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.shards, cfg.zeroshot.enabled, cfg.analysis.n_splits = shards, False, 2
    cfg.embed.update(feature_sets=("handcrafted", "imagenet"), imagenet_weights="random")
    cfg.embed.imagenet.update(epochs=1, batch_size=16, blocks=(1, 1, 1, 1), pool_batches=2)
    model = ModelConfig.from_mapping(cfg.model)
    d_params = init_variables(model, jax.random.key(0))[1]["params"]
    monkeypatch.setattr(embed.stage, "restore_discriminator", lambda workdir, mesh, step: (model, d_params, 7, {}))
    workdir = str(tmp_path / "run")
    folder = embed.run(Config.from_mapping(cfg), workdir)

    recorded = folds.read_folds(folder)
    _, meta = io.load_embeddings(os.path.join(folder, "handcrafted.npz"))
    meta = io.screen_view(meta, io.default_schema())
    assert recorded["held_out"] == [list(g) for g in classify.control_folds(meta, n_splits=2)]  # the analysis' folds
    fold_sets = io.load_fold_sets(folder, "imagenet")
    assert [held for *_, held in fold_sets] == recorded["held_out"]
    assert all(len(m) == classify.control_mask(meta).sum() for _, m, _ in fold_sets)  # every control, per fold
    result = analysis_stage.run(Config.from_mapping(cfg), workdir)
    label = registry.get("imagenet").label
    assert "one model per fold" in result["screens"][label]["protocol"]["table1_controls"]

    cfg.analysis.n_splits = 3  # three folds of the six plates: not what the exports were fitted for
    with pytest.raises(embed.ExportError, match=r"another fold assignment \(changed: n_splits: 2 -> 3"):
        embed.run(Config.from_mapping(cfg), workdir)
    assert folds.read_folds(folder) == recorded
    with open(os.path.join(folder, folds.FOLDS), "a") as f:  # a damaged record is not read
        f.write(" ")
    assert folds.read_folds(folder) is None and io.load_fold_sets(folder, "imagenet") == []
