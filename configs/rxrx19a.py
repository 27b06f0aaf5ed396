"""RxRx19a at 256 px: the paper's setting, for a Cloud TPU v3-8.

Point data.root at an unpacked RxRx19a release (metadata.csv + images/):
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
    return config
