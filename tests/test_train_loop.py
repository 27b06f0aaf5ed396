"""The training loop on the synthetic shards: learning, exact resume, SIGTERM, NaN guard.

Device-count and process-count independence: test_multiprocess.py.
"""

import os
import signal

import jax
import numpy as np
import pytest

from gandl import sharding
from gandl.data import pipeline
from gandl.defaults import Config
from gandl.models.config import ModelConfig
from gandl.train import checkpoint, loop
from gandl.train import state as state_lib


@pytest.fixture(scope="module")
def config(tiny_config, shards_dir):
    """The tiny model on the 16 px, 5-channel test shards."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.shards = shards_dir
    return cfg



def _train(cfg, workdir: str, **kwargs) -> loop.TrainResult:
    """The training loop on `cfg`'s typed settings, as the train stage runs it."""
    return loop.train(loop.TrainSettings.from_config(Config.from_mapping(cfg), workdir), workdir, **kwargs)

def _params(state: state_lib.TrainState):
    return jax.device_get((state.g_params, state.d_params, state.ema_params, state.g_opt_state, state.d_opt_state,
                           state.pl_mean, state.rng, state.augment, state.head, state.head_opt_state))


@pytest.mark.slow
def test_trains_and_discriminator_tells_reals_from_fakes(config, tmp_path):
    cfg = config.copy_and_resolve_references()
    cfg.train.steps = 120
    cfg.train.checkpoint_every = 60
    cfg.train.log_every = 20
    result = _train(cfg, str(tmp_path))
    assert result.step == 120 and not result.stopped_early
    assert all(np.isfinite(h["g_loss"]) and np.isfinite(h["d_loss"]) for h in result.history)
    late = result.history[-3:]
    assert np.mean([h["d_real"] - h["d_fake"] for h in late]) > 0.5  # D separates reals from fakes
    assert np.isfinite([h["r1"] for h in late]).any() and np.isfinite([h["pl_penalty"] for h in late]).any()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["120", "60"]
    assert (tmp_path / "samples" / "step_00000120.png").exists()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))


@pytest.mark.parametrize("options", [{}, dict(augment="ada", augment_p=0.5, ada_interval=2, ada_kimg=1.0,
                                              contrastive_weight=0.5), dict(objective="contrastive")],
                         ids=["paper", "ada+contrastive", "contrastive objective"])
@pytest.mark.slow
def test_resumed_run_equals_uninterrupted(config, tmp_path, options):
    cfg = config.copy_and_resolve_references()
    cfg.train.update(options)
    cfg.train.steps = 14
    straight = _train(cfg, str(tmp_path / "straight"))
    cfg.train.steps = 7  # stops off the input stream's 10-step restart points, so resume must skip batches
    first = _train(cfg, str(tmp_path / "resumed"))
    assert first.step == 7
    cfg.train.steps = 14
    resumed = _train(cfg, str(tmp_path / "resumed"))
    assert resumed.step == 14
    for a, b in zip(jax.tree.leaves(_params(straight.state)), jax.tree.leaves(_params(resumed.state))):
        np.testing.assert_array_equal(a, b)
    loss = "contrastive_loss" if options.get("objective") == "contrastive" else "g_loss"
    assert straight.history[-1][loss] == resumed.history[-1][loss]
    if options.get("objective") == "contrastive":  # no generator: G as initialised, no samples
        settings, mesh = loop.TrainSettings.from_config(Config.from_mapping(cfg), ""), sharding.make_mesh()
        with jax.set_mesh(mesh):
            fresh = state_lib.create(settings.model, settings.train, settings.seed, mesh)
        for a, b in zip(jax.tree.leaves(jax.device_get((fresh.g_params, fresh.ema_params))),
                        jax.tree.leaves(jax.device_get((resumed.state.g_params, resumed.state.ema_params)))):
            np.testing.assert_array_equal(a, b)
        assert not (tmp_path / "straight" / "samples").exists() or not os.listdir(tmp_path / "straight" / "samples")
    elif options:  # p moved (by 32/1000 every 2 steps) and was carried over exactly
        assert float(resumed.state.augment.p) != 0.5 and resumed.history[-1]["augment_p"] > 0


def _spec(config):
    return pipeline.open_shards(config.data.shards)


def _edited_input(cfg, edit):
    """The shard input with `edit(i, batch)` applied to the i-th batch: how tests inject events."""
    source = loop.shard_input_fn(loop.TrainSettings.from_config(Config.from_mapping(cfg), ""), _spec(cfg))

    def input_fn(start):
        for i, batch in enumerate(source(start)):
            yield edit(i, batch)

    return input_fn


def _terminate_at_batch_3(i, batch):
    if i == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return batch


@pytest.mark.slow
def test_sigterm_saves_and_stops(config, tmp_path):
    cfg = config.copy_and_resolve_references()
    cfg.train.steps = 30
    handler = signal.getsignal(signal.SIGTERM)
    result = _train(cfg, str(tmp_path), input_fn=_edited_input(cfg, _terminate_at_batch_3), spec=_spec(cfg))
    assert result.stopped_early and result.step == 4
    assert checkpoint.Checkpointer(str(tmp_path), 10).latest_step() == 4
    assert signal.getsignal(signal.SIGTERM) == handler  # the loop's handler is gone again


@pytest.mark.slow
def test_nan_stops_cleanly_and_keeps_the_last_good_checkpoint(config, tmp_path):
    cfg = config.copy_and_resolve_references()
    cfg.train.steps = 30
    nan_from_batch_12 = _edited_input(cfg, lambda i, batch: np.full_like(batch, np.nan) if i >= 12 else batch)
    with pytest.raises(loop.TrainingDiverged, match=r"non-finite d_loss at step 13"):
        _train(cfg, str(tmp_path), input_fn=nan_from_batch_12, spec=_spec(cfg))
    ckpt = checkpoint.Checkpointer(str(tmp_path), 10)
    assert ckpt.latest_step() == 10
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        template = state_lib.create(ModelConfig.of_run(cfg), cfg.train, cfg.seed, mesh)
        restored, saved_config = ckpt.restore(checkpoint.abstract_like(template))
    ckpt.close()
    assert int(restored.step) == 10 and saved_config["train"]["steps"] == 30
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored.g_params)))


def test_model_must_match_the_data(config, tmp_path):
    cfg = config.copy_and_resolve_references()
    cfg.model.num_channels = 3
    with pytest.raises(ValueError, match=r"the model has 3 channels but the data gives 5 \("):
        _train(cfg, str(tmp_path))
    cfg.model.update(num_channels=5, resolution=32)  # 16-px shards cannot feed a 32-px model
    with pytest.raises(ValueError, match="cannot be area-downscaled to 32 px"):
        _train(cfg, str(tmp_path))
