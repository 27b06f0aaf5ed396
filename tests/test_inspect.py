"""Inspecting a finished tiny run: the restored state, EMA samples, interpolation and the logged losses."""

import jax
import numpy as np
import pytest

from gandl import defaults, inspection
from gandl.train import loop

pytestmark = pytest.mark.slow  # not in the inner loop (tests/conftest.py)


@pytest.fixture(scope="module")
def run(tiny_run):
    return inspection.load_run(str(tiny_run[1]))


def test_load_run_restores_the_latest_full_state_from_the_saved_config(run, tiny_run):
    config, _, _ = tiny_run
    assert run.step == int(run.state.step) == 20
    assert run.config == defaults.Config.from_mapping(config)  # typed, as every stage receives it
    assert run.stains == ("Hoechst", "ConA", "Phalloidin", "Syto14", "WGA")
    # EMA and raw G differ after training, and the samples are those the loop wrote for step 20.
    assert not np.allclose(jax.tree.leaves(run.state.ema_params)[0], jax.tree.leaves(run.state.g_params)[0])
    earlier = inspection.load_run(str(tiny_run[1]), step=10)
    assert earlier.step == 10
    model = run.model
    assert not np.allclose(loop.samples(model, run.state, 2, 0), loop.samples(model, earlier.state, 2, 0))


def test_sample_grid_is_an_rgb_grid(run):
    grid = inspection.sample_grid(run, num=6, cols=3, seed=1)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 16 + 2, 3 * 16 + 4, 3) and grid.std() > 0


def test_interpolation_runs_from_one_latent_to_the_other(run):
    images = inspection.interpolate(run, num=5, seed=3)
    ends = loop.samples(run.model, run.state, 2, seed=3)  # the same two latents, through G
    np.testing.assert_allclose(images[[0, -1]], ends, atol=1e-4)
    steps = np.abs(np.diff(images, axis=0)).mean(axis=(1, 2, 3))
    assert (steps > 0).all() and images.shape == (5, 16, 16, 5)
    assert inspection.interpolation_strip(run, num=5, seed=3).shape == (16, 5 * 16 + 8, 3)
    with pytest.raises(ValueError, match="two ends"):
        inspection.interpolate(run, num=1)


def test_loss_history_reads_every_logged_scalar(tiny_run, tmp_path):
    history = inspection.loss_history(str(tiny_run[1]))
    assert list(history.index) == [5, 10, 15, 20]  # log_every=5
    assert {"g_loss", "d_loss", "d_real", "d_fake", "images_per_s"} <= set(history.columns)
    assert np.isfinite(history[["g_loss", "d_loss"]].to_numpy()).all()
    with pytest.raises(FileNotFoundError, match="no scalars"):
        inspection.loss_history(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        inspection.load_run(str(tmp_path))


def test_load_embeddings_gathers_every_feature_set_with_the_runs_analysis_settings(tiny_run):
    emb = inspection.load_embeddings(str(tiny_run[1]))
    assert emb.folder.endswith("step_20")
    assert list(emb.sets) == list(emb.zeroshot) == ["GAN-DL", "random-init D", "handcrafted"]
    features, metadata = emb.sets["GAN-DL"]
    assert features.shape == (len(metadata), 32) and "treatment" in metadata  # w_dim-wide D features
    assert emb.config.n_splits == 2  # the tiny run's analysis setting, not the default 5
