"""The demo trained 4x longer: 16,000 iterations (256k images) on a CPU, to see where the probe curve goes.

  python -m gandl.main --config configs/cpu_long.py --workdir /tmp/gandl_cpu_long --mode all

Everything but the training length and the probe interval is `configs/demo.py`'s (same screen, model,
learning rates, checkpoint interval), so a finished demo workdir can be continued with this config: the
run resumes at its last checkpoint and reads the same batches an uninterrupted run would. About 50 minutes
from scratch on 2 CPU cores; docs/results.md, "Longer training", shows what its probe curve says.
"""

import os

import ml_collections

from gandl.defaults import call_in_file


def get_config() -> ml_collections.ConfigDict:
    config = call_in_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"), "get_config")
    config.train.update(steps=16000, probe_every=1000, swd_every=4000, sample_every=4000)
    return config
