"""Issue 18: multiscale D features, the training mbstd statistic at export, and the linear probe over training."""

import dataclasses
import json
import os

import jax
import numpy as np
import pandas as pd
import pytest

from gandl import embed, main, probe, sharding
from gandl import workdir as layout
from gandl.analysis import classify, probe_table, zeroshot
from gandl.analysis import stage as analysis_stage
from gandl.data import pipeline
from gandl.data import stage as data_stage
from gandl.defaults import Config
from gandl.features import discriminator
from gandl.models import init_variables
from gandl.models.config import ModelConfig
from gandl.models.discriminator import multiscale_dim
from gandl.sweep import last_scalars


@pytest.fixture(scope="module")
def probed_run(tiny_config, tmp_path_factory):
    """(config, workdir, train result): the tiny model trained 10 steps on a 2-plates-per-line screen, probed
    every 5 steps with the zero-shot set; checkpoints every 5 steps, keeping 1 (and the probed ones)."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.synthetic.update(seed=0, image_size=16, plates_per_cell_line=2, sites_per_well=1, num_compounds=3)
    cfg.zeroshot.synthetic.update(plates_per_cell_line=2, sites_per_well=1)
    cfg.data.update(image_size=16, sites_per_shard=64, num_workers=1)
    # Checkpoints every 5 steps, only the last one kept but for the probed steps.
    cfg.train.update(probe_every=5, probe_sites=64, probe_zeroshot_sites=64, checkpoint_every=5, keep_checkpoints=1)
    cfg.analysis.update(n_splits=2, few_labels=(2,), few_label_draws=2)
    workdir = str(tmp_path_factory.mktemp("probed"))
    data_stage.convert_screen(Config.from_mapping(cfg), workdir)
    return cfg, workdir, main.run_train(Config.from_mapping(cfg), workdir)


def _images(n: int, seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 5)).astype(np.float32)


@pytest.mark.slow
def test_multiscale_features_have_their_width_and_ignore_batch_mates(tiny_config):
    model = ModelConfig.from_mapping(tiny_config.model)  # the probe's model: its compiled features are shared
    params = init_variables(model, jax.random.key(0))[1]["params"]
    mesh = sharding.make_mesh()
    a = _images(8, 0)
    b = a.copy()
    b[1:] = _images(7, 1)
    fc = discriminator.feature_fn(model, params, mesh)(a)
    for mbstd in (None, np.array([0.3], np.float32)):
        fn = discriminator.feature_fn(model, params, mesh, option="multiscale", mbstd_value=mbstd)
        fa, fb = fn(a), fn(b)
        assert fa.shape == (8, multiscale_dim(model)) == (8, 2 * (32 + 32) + 32)
        np.testing.assert_allclose(fa[0], fb[0], rtol=1e-5, atol=1e-6)  # a function of its own image only
        assert not np.allclose(fa[1], fb[1])
        assert np.all(fa[:, 32:64] >= 0)  # the first block's spatial stddevs
    np.testing.assert_allclose(fa[:, -32:], discriminator.feature_fn(model, params, mesh, mbstd_value=mbstd)(a),
                               rtol=1e-5, atol=1e-6)  # the tail is the fc embedding with the same mbstd input
    assert not np.allclose(fa[:, -32:], fc)  # the fed statistic (0.3) is not the constant 1e-4
    with pytest.raises(ValueError, match="unknown discriminator feature option 'pooled'"):
        discriminator.feature_fn(model, params, mesh, option="pooled")


@pytest.mark.slow
def test_probe_writes_its_table_curve_and_scalars(probed_run):
    cfg, workdir, result = probed_run
    assert result.step == 10
    table = pd.read_csv(layout.probe_table(workdir))
    assert list(table.columns) == probe_table.COLUMNS
    assert sorted(table["step"].unique()) == [5, 10]
    assert set(table["images_seen"]) == {5 * 16, 10 * 16}
    assert set(table["feature_set"]) == {"gandl", "gandl_multiscale"}
    tasks = set(table["task"])
    assert {"C+ vs C- (all cell lines)", "HRCE vs VERO", zeroshot.ZEROSHOT_TASK} <= tasks, tasks
    ok = table[table["status"] == "ok"]
    assert {"C+ vs C- (all cell lines)", "HRCE vs VERO", zeroshot.ZEROSHOT_TASK} <= set(ok["task"])
    # Each task again with 2 labelled wells per class (analysis.few_labels), scored on the same held-out plates.
    full = {"C+ vs C- (all cell lines)", "HRCE vs VERO", "C+ vs C- (HRCE)", "C+ vs C- (VERO)", zeroshot.ZEROSHOT_TASK}
    assert tasks == full | {probe.few_label_task(t, 2) for t in full}
    assert {probe.few_label_task(t, 2) for t in ("HRCE vs VERO", zeroshot.ZEROSHOT_TASK)} <= set(ok["task"])
    assert set(ok["reference_label"]) == {"random-init D", "random-init D multiscale"}
    # The random-init reference does not train: the same accuracy at every step.
    assert (ok.groupby(["feature_set", "task"])["reference_accuracy"].nunique() == 1).all()
    with open(layout.probe_curve(workdir), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # TensorBoard gets the table's numbers of the last probe, each under its own task and feature set.
    scalars = last_scalars(layout.tensorboard(workdir))
    last = ok[ok["step"] == 10].set_index(["feature_set", "task"])
    assert scalars["probe/HRCE vs VERO/gandl_multiscale"] == pytest.approx(
        last.loc[("gandl_multiscale", "HRCE vs VERO"), "accuracy"])
    assert scalars[f"probe/{zeroshot.ZEROSHOT_TASK}/random_d"] == pytest.approx(
        last.loc[("gandl", zeroshot.ZEROSHOT_TASK), "reference_accuracy"])


def test_the_fixed_subset_is_a_seeded_uniform_sample_whatever_the_batching(shards_dir):
    spec = pipeline.open_shards(shards_dir)
    controls = lambda m: classify.control_mask(m)  # noqa: E731
    images, meta = probe.fixed_subset(spec, pipeline.InputOptions(), 3, seed=7, keep=controls, batch_size=2)
    _, every = probe.fixed_subset(spec, pipeline.InputOptions(), 10_000, seed=7, keep=controls, batch_size=64)
    assert len(meta) == len(images) == 3 and classify.control_mask(meta).all()
    # Cut back every few sites or drawn in one batch: the same 3 lowest priorities of the same draws.
    priorities = np.random.default_rng(7).uniform(size=len(every))
    expected = every["site_id"].to_numpy()[np.sort(np.argsort(priorities)[:3])]
    np.testing.assert_array_equal(meta["site_id"].to_numpy(), expected)
    _, other = probe.fixed_subset(spec, pipeline.InputOptions(), 3, seed=8, keep=controls, batch_size=2)
    assert list(other["site_id"]) != list(meta["site_id"])


def test_a_resumed_probe_replaces_the_rows_of_steps_it_probes_again(tmp_path):
    path = str(tmp_path / "probe.csv")
    row = dict(zip(probe_table.COLUMNS, [5, 80, "gandl", "GAN-DL", "t", 0.5, "ok", "random-init D", 0.4]))
    probe_table.append_rows(path, [row, dict(row, step=10, images_seen=160)])
    table = probe_table.append_rows(path, [dict(row, step=10, images_seen=160, accuracy=0.9)])
    assert table["step"].tolist() == [5, 10] and table["accuracy"].tolist() == [0.5, 0.9]
    pd.DataFrame({"x": [1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="probe.csv: columns"):
        probe_table.append_rows(path, [row])


@pytest.mark.slow
def test_export_feeds_the_training_mbstd_statistic_and_records_it(probed_run):
    cfg, workdir, _ = probed_run
    cfg = cfg.copy_and_resolve_references()
    cfg.embed.update(mbstd="train", feature_sets=("gandl", "gandl_multiscale", "random_d_multiscale"))
    cfg.zeroshot.enabled = False
    out = embed.run(Config.from_mapping(cfg), workdir)
    with open(os.path.join(out, embed.SETTINGS)) as f:
        sets = json.load(f)["feature_sets"]
    model = ModelConfig.from_mapping(cfg.model)
    assert sets["gandl"]["dim"] == 32 and sets["gandl_multiscale"]["dim"] == multiscale_dim(model)
    trained_value = sets["gandl_multiscale"]["mbstd_value"]
    assert sets["gandl"]["mbstd_value"] == trained_value and len(trained_value) == model.mbstd_num_channels
    assert trained_value[0] > 1e-3  # a real group stddev, far from the constant 1e-4
    assert sets["random_d_multiscale"]["mbstd_value"] != trained_value  # measured per parameter set
    features = {}
    for name in ("gandl", "gandl_multiscale", "random_d_multiscale"):
        with np.load(os.path.join(out, f"{name}.npz"), allow_pickle=False) as npz:
            features[name] = npz["features"]
            assert json.loads(str(npz["provenance"]))["feature_settings"]["mbstd_value"] == sets[name]["mbstd_value"]
        assert features[name].shape[1] == sets[name]["dim"]
    # Trained vs random-init D: different multiscale features of the same sites.
    assert not np.allclose(features["gandl_multiscale"], features["random_d_multiscale"], atol=1e-3)

    # Fed the recorded value, an embedding is still a function of its own image, and it differs from the
    # constant-mbstd one.
    _, d_params, _, _ = embed.restore_discriminator(workdir, sharding.make_mesh())
    mesh = sharding.make_mesh()
    fn = discriminator.feature_fn(model, d_params, mesh, option="multiscale", mbstd_value=np.array(trained_value))
    a = _images(16, 2)
    b = a.copy()
    b[1:] = _images(15, 3)
    np.testing.assert_allclose(fn(a)[0], fn(b)[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(fn(a), discriminator.feature_fn(model, d_params, mesh, option="multiscale")(a))


@pytest.mark.slow
def test_probed_checkpoints_are_kept_and_the_report_says_which_step_it_analyses(probed_run):
    cfg, workdir, _ = probed_run
    assert layout.checkpoint_steps(workdir) == [5, 10]  # keep_checkpoints=1, but step 5 was probed
    table = pd.read_csv(layout.probe_table(workdir))
    cfg = cfg.copy_and_resolve_references()
    cfg.embed.update(step=5, feature_sets=("gandl", "random_d"))
    out = embed.run(Config.from_mapping(cfg), workdir)
    assert out == layout.embeddings(workdir, 5)
    newer = layout.embeddings(workdir, 99)
    os.makedirs(newer)  # a higher exported step (empty): embed.step, not the latest, picks the analysed one
    try:
        analysis_stage.run(Config.from_mapping(cfg), workdir)
    finally:
        os.rmdir(newer)
    with open(os.path.join(layout.analysis(workdir), "analysis.json")) as f:
        source = json.load(f)["source"]
    assert source.startswith("Features of the discriminator at training step 5 (named by embed.step=5; "
                             "checkpoints reach step 10).")
    multiscale = table[(table["feature_set"] == "gandl_multiscale") & (table["status"] == "ok")]
    at_5 = multiscale[multiscale["step"] == 5]["accuracy"].mean()
    assert f"GAN-DL multiscale {at_5:.3f} at this step" in source
    assert "optimistic" in source
    with open(os.path.join(layout.analysis(workdir), "report.md")) as f:
        assert source in f.read()
    cfg.embed.step = 7
    with pytest.raises(FileNotFoundError, match="embed.step=7: no embeddings"):
        analysis_stage.run(Config.from_mapping(cfg), workdir)


@pytest.mark.slow
def test_the_probes_reference_line_is_the_mean_over_the_references_draws(probed_run, tmp_path):
    cfg, workdir, _ = probed_run
    cfg = cfg.copy_and_resolve_references()
    cfg.data.shards, cfg.zeroshot.shards = layout.shards("", workdir), layout.zeroshot_shards("", workdir)
    cfg.train.probe_features = ("gandl_blocks",)
    lines = {}
    for inits in (1, 3):
        cfg.embed.reference_inits = inits
        probed = probe.Probe.from_config(Config.from_mapping(cfg), str(tmp_path / str(inits)))  # the run's untouched
        probed(5, init_variables(ModelConfig.from_mapping(cfg.model), jax.random.key(9))[1]["params"])
        table = pd.read_csv(layout.probe_table(str(tmp_path / str(inits))))
        lines[inits] = table.set_index("task")["reference_accuracy"]
    # Each draw scored alone on the probe's own subset: the line of 3 draws is their mean, the line of 1 the first.
    context = dataclasses.replace(probed.context, mesh=sharding.make_mesh())
    alone = [pd.DataFrame(probed._score(name, context)).set_index("task")["accuracy"]
             for name in ("random_d_blocks", "random_d_blocks@1", "random_d_blocks@2")]
    pd.testing.assert_series_equal(lines[1], alone[0], check_names=False)
    pd.testing.assert_series_equal(lines[3], sum(alone) / 3, check_names=False)
    assert not np.allclose(lines[3], lines[1])
