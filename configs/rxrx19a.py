"""RxRx19a at 256 px: the paper's setting, for a Cloud TPU v3-8.

Check the config against the machine first (no TPU needed: 8 devices simulated on this CPU), then convert:
  python -m gandl.main --config configs/rxrx19a.py --workdir /tmp/x --mode check --devices=v3-8
  python -m gandl.main --config configs/rxrx19a.py --workdir gs://BUCKET/rxrx19a \
      --config.data.root=gs://BUCKET/RxRx19a --mode convert
"""

import ml_collections

from gandl.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.kind = "rxrx19a"
    config.data.image_size = 256  # 1024 px sites, area-downscaled 4x
    config.data.sites_per_shard = 256  # ~1,200 shards: plenty for every host of a pod slice
    # Without a data.root the stand-in screens are synthesized at RxRx19a's own 1024 px.
    config.synthetic.image_size = 1024
    # The paper's StyleGAN2 (stated here, not inherited, so a change of the base leaves it alone).
    config.model.update(num_channels=5, mapping_layers=3, z_dim=512, w_dim=512)
    config.train.update(batch_size=32, g_lr=1e-4, d_lr=1e-4, r1_gamma=1.0, lipschitz_weight=1.0, pl_weight=2.0,
                        ema_kimg=10.0)
    # The method's embedding (b4.fc, 512-d) and its baselines: the multiscale sets are 5,376-d at these widths
    # (6.6 GB for 305,520 sites, and the analysis holds a few copies), so they are opt-in here.
    config.embed.feature_sets = ("gandl", "random_d", "handcrafted")
    return config
