"""Demo: the embedded synthetic screen at 64 px on a CPU, minutes end to end.

  python -m gandl.main --config configs/demo.py --workdir /tmp/gandl_demo --mode convert
  python -m gandl.main --config configs/demo.py --workdir /tmp/gandl_demo --mode preview
"""

import ml_collections

from gandl.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.synthetic.image_size = 64
    config.data.image_size = 64
    config.data.sites_per_shard = 64
    return config
