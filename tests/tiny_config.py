"""The tests' tiny StyleGAN2 (16 px, 5 channels) and fast schedule, as a config file.

A file rather than a fixture body so that subprocesses (multi-process runs of `gandl.main`) load the
same config: `--config tests/tiny_config.py`.
"""

import ml_collections

from gandl.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    cfg = base_config()
    cfg.model.update(resolution=16, num_channels=5, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256,
                     channel_max=32, mbstd_group_size=2)
    cfg.train.update(batch_size=16, g_lr=2e-3, d_lr=2e-3, r1_gamma=0.05, r1_interval=4, pl_interval=2,
                     log_every=5, checkpoint_every=10, sample_every=10, swd_every=0, steps=10)
    cfg.preview.update(num_images=8, cols=4)
    cfg.embed.batch_size = 16
    cfg.embed.feature_sets = ("gandl", "random_d", "handcrafted")  # the multiscale sets: tests/test_probe.py
    return cfg
