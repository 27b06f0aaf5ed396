"""The config check: every shipped config and sweep run validates for 1 and 8 devices, impossible settings fail
with one clear message each, and the paper config is checked from the command line (costs: tests/test_cost.py)."""

import glob
import os
import subprocess
import sys

import jax
import pytest

from gandl import check, sweep
from gandl.analysis.classify import NORMALIZATIONS
from gandl.analysis.tasks import AnalysisConfig
from gandl.defaults import base_config
from gandl.sweep import REPO_ROOT

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "*.py")))
SWEEPS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "sweeps", "*.py")))


def _config(path: str):
    return sweep.call_in_file(path, "get_config")


def _demo(**overrides):
    config = _config(os.path.join(REPO_ROOT, "configs", "demo.py"))
    config.update_from_flattened_dict(overrides)
    return config


@pytest.mark.parametrize("num_devices", [1, 8])
@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_passes_for_1_and_8_devices(path, num_devices):
    assert check.validate(_config(path), num_devices) == []


@pytest.mark.parametrize("num_devices", [1, 8])
@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_every_sweep_run_passes_for_1_and_8_devices(path, num_devices):
    s = sweep.load_sweep(path)
    assert s.runs
    sweep.check_runs(s, num_devices)


@pytest.mark.parametrize("overrides, message", [
    # The demo model on a TPU v3-8 with mbstd groups of 4: 2 images per device.
    ({"model.mbstd_group_size": 4}, "train.batch_size=16: 2 images per device hold no whole minibatch-stddev groups "
     "of model.mbstd_group_size=4 or path-length batches (/ train.pl_batch_shrink=2) on 8 device(s); use "
     "train.batch_size=32 (or model.mbstd_group_size=2)"),
    ({"train.batch_size": 12}, "train.batch_size=12: 1.5 images per device on 8 device(s); use train.batch_size=16"),
    ({"embed.batch_size": 20}, "embed.batch_size=20: does not split over 8 device(s); use embed.batch_size=24"),
    ({"data.image_size": 48, "model.resolution": 32}, "data.image_size=48: the training records (48 px) cannot be "
     "area-downscaled to model.resolution=32 by a whole factor on 8 device(s); use data.image_size=64 or "
     "model.resolution=16"),
    # the model takes the records' side unless model.resolution is set
    ({"data.image_size": 48}, "data.image_size=48: the model takes the training records' side unless "
     "model.resolution is set, and 48 px is not a power of two >= 8 (on 8 device(s)); use data.image_size=64 or set "
     "model.resolution"),
    ({"data.shards": "/data/shards", "data.image_size": 0}, "model.resolution=None: the config does not say the "
     "training records' side (data.shards converted elsewhere"),
    ({"data.image_size": 128}, "data.image_size=128: conversion would upscale the 64-px synthetic screen"),
    ({"data.crop_size": 24, "model.resolution": 32}, "data.crop_size=24: the training records (24 px) cannot be "
     "area-downscaled"),
    ({"data.crop_size": 24}, "data.crop_size=24: the model takes the training records' side unless model.resolution"),
    ({"data.shards": "gs://b/rxrx1/*.tfrecord", "data.channels": (1, 2, 3, 4, 6), "data.rxrx1_utils_image_size": 100,
      "model.resolution": 32},
     "data.rxrx1_utils_image_size=100: the training records (100 px) cannot be area-downscaled"),
    ({"data.channels": (1, 2, 3)}, "data.channels=(1, 2, 3): 3 channels for a model.num_channels=5 model on 8 "
     "device(s); name 5 channels or set model.num_channels=3"),
    ({"data.channels": (1, 2, 3, 4, 6)}, "data.channels=(1, 2, 3, 4, 6): channels [6] do not exist in the 5-channel"),
    ({"model.num_channels": 6}, "model.num_channels=6: the rxrx19a data has 5 channels on 8 device(s)"),
    ({"zeroshot.channels": (1, 2, 3)}, "zeroshot.channels=(1, 2, 3): maps to (1, 2, 3), but the zero-shot set"),
    ({"model.resolution": 48}, "model.resolution=48: must be None or a power of two >= 8; use model.resolution=None"),
    ({"model.mbstd_num_channels": 3}, "model: mbstd_num_channels must divide the 4x4 block's channel count"),
    ({"train.log_every": 0}, "train.log_every=0: must be an integer >= 1; use train.log_every=50"),
    ({"embed.step": -2}, "embed.step=-2: must be an integer >= -1; use embed.step=-1"),
    ({"model.conv_clamp": 0.0}, "model.conv_clamp=0.0: must be None or a number > 0; use model.conv_clamp=256.0"),
    ({"analysis.fdr": 1.0}, "analysis.fdr=1.0: must be a number in (0, 1); use analysis.fdr=0.05"),
    ({"data.channels": (0, 1)}, "data.channels=(0, 1): must be a tuple whose items are each an integer >= 1; use "
     "data.channels=()"),
    ({"synthetic.control_wells_per_plate": (6, 3, 6)},
     "synthetic.control_wells_per_plate=(6, 3, 6): must be a tuple of 4 whose items are each an integer >= 0"),
    ({"train.probe_every": 1200}, "train.probe_every=1200: not a multiple of train.checkpoint_every=500, so probed "
     "steps would have no checkpoint to embed (on 8 device(s)); use train.probe_every=1000"),
    ({"train.objective": "contrastive", "train.augment": "ada"}, "train.augment='ada': the contrastive objective "
     "augments its own views and has no D(real) for ADA (on 8 device(s)); use train.augment='none'"),
    ({"train.objective": "simclr"}, "train.objective='simclr': must be one of"),
    ({"embed.reference_inits": 8, "embed.feature_sets": ("gandl_blocks", "handcrafted")},
     "embed.reference_inits=8: embed.feature_sets lists no random-init set to draw again (on 8 device(s)); add one of "
     "random_d, random_d_multiscale, random_d_blocks or use embed.reference_inits=1"),
    ({"embed.reference_inits": 0}, "embed.reference_inits=0: must be an integer >= 1"),
])
def test_settings_that_cannot_run_fail_with_a_clear_message(overrides, message):
    failures = check.validate(_demo(**overrides), 8)
    assert any(message in f for f in failures), failures


def test_every_failure_is_collected_into_one_error():
    config = _demo(**{"train.batch_size": 12, "embed.batch_size": 20, "data.channels": (1, 2, 3)})
    with pytest.raises(check.ConfigCheckError) as info:
        check.run(config)  # 8 simulated devices (conftest)
    assert info.value.num_devices == 8 and len(info.value.failures) == 3
    text = str(info.value)
    assert "cannot run on 8 device(s); 3 problem(s)" in text
    assert all(field in text for field in ("train.batch_size=12", "embed.batch_size=20", "data.channels=(1, 2, 3)"))
    assert check.validate(config, 1) == [f for f in check.validate(config, 1) if "data.channels" in f]


def test_a_sweep_with_a_run_that_cannot_run_launches_nothing(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text('def get_sweep():\n    return {"base": "configs/demo.py", "mode": "convert",'
                    ' "product": {"train.batch_size": [16, 12]}}\n')
    with pytest.raises(check.ConfigCheckError, match=r"run train.batch_size=12: train.batch_size=12"):
        sweep.run_sweep(str(path), str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_device_counts_of_tpu_types():
    assert [check.device_count(t) for t in ("8", "v2-8", "v3-8", "v3-32", "v4-8", "v5p-16", "v5litepod-8", "v6e-4")] \
        == [8, 8, 8, 32, 4, 8, 8, 4]
    assert check.device_count("") == jax.device_count()
    with pytest.raises(ValueError, match="expected a device count"):
        check.device_count("tpu")


@pytest.mark.slow
def test_main_checks_the_paper_config_on_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=REPO_ROOT)
    result = subprocess.run([sys.executable, "-m", "gandl.main", "--config", "configs/rxrx19a.py", "--workdir",
                             str(tmp_path), "--mode", "check"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config check passed for 1 device(s)" in result.stdout
    assert "256 px x 5 channels; G 23," in result.stdout and "GFLOP per image" in result.stdout
    assert not os.listdir(tmp_path)  # checked, nothing written


def test_every_config_field_has_a_rule_that_its_default_passes():
    """A field added to the defaults or a shipped config without a rule in check.RULES fails here (and is refused
    as unknown by the check), so no setting reaches a run unchecked."""
    held = set().union(*(check.fields(c) for c in [base_config(), *map(_config, CONFIGS)]))
    assert sorted(held - set(check.RULES)) == [], "config fields without a rule in gandl.check.RULES"
    defaults = check.fields(base_config())
    assert [f for f, value in defaults.items() if not check.RULES[f].ok(value)] == []
    assert all(rule.ok(rule.example) for rule in check.RULES.values())


def test_a_field_without_a_rule_is_refused_as_unknown():
    config = _demo()
    with config.unlocked():
        config.data.imagesize = 32
    assert check.validate(config, 8) == ["data.imagesize=32: not a GAN-DL setting (no rule in gandl.check.RULES); "
                                         "remove it"]


@pytest.mark.parametrize("field, values", [("normalization", (*NORMALIZATIONS, "zscore")),
                                           ("level", ("site", "well", "plate")),
                                           ("group_by", ("plate", "experiment", "well")),
                                           ("position_correction", ("auto", "on", "off", "always")),
                                           ("rescue_threshold", (-1.0, -0.5, 0.0, 0.99, 1.0)),
                                           ("exclude_plates", ((), ("HRCE-1_1",), ("",), (1,))),
                                           ("min_z_prime", (None, -2.0, 0, 0.5, 1.0, 1.5, float("nan"), "0.5"))])
def test_the_analysis_rules_accept_what_the_analysis_accepts(field, values):
    """The config check and AnalysisConfig hold the analysis fields to the same rules (the schema's)."""
    for value in values:
        try:
            AnalysisConfig(**{field: value})
            accepted = True
        except ValueError:
            accepted = False
        assert check.RULES[f"analysis.{field}"].ok(value) == accepted, value


def test_a_retired_setting_names_what_replaced_it_and_old_saved_configs_keep_their_controls():
    """analysis.uv_is_positive is folded into the rxrx19a_uv screen preset: a config that sets it is refused in one
    line naming the preset; a checkpoint or export saved with it reads as that preset, so its controls stay as they
    were."""
    from gandl.data import screen
    from gandl.defaults import Analysis, saved_config

    config = _demo()
    config.analysis.uv_is_positive = True
    assert check.validate(config, 8) == ['analysis.uv_is_positive=True: retired; use screen.preset="rxrx19a_uv" '
                                         "(UV-inactivated virus counts as C+ in that preset)"]
    saved = base_config().to_dict()
    saved["analysis"]["uv_is_positive"] = True
    assert screen.configured(saved_config(saved)) == screen.PRESETS["rxrx19a_uv"]
    saved["analysis"]["uv_is_positive"] = False
    assert screen.configured(saved_config(saved)) == screen.PRESETS["rxrx19a"]
    assert not hasattr(saved_config(saved).analysis, "uv_is_positive")
    # a field since dropped is passed over, one added since reads as its default, a list is a tuple again (JSON)
    saved["embed"]["long_gone"], saved["analysis"]["few_labels"] = 1, [4, 8]
    del saved["analysis"]["fdr"]
    typed = saved_config(saved)
    assert typed.analysis.fdr == Analysis().fdr and typed.analysis.few_labels == (4, 8)
