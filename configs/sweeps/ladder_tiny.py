"""The compute ladder (configs/sweeps/ladder.py) at a size that runs in a test: its start point only (a 16 px screen of
one site per well, 8 channels per block, 8 training steps, the reference at 3 initialisations), both objectives,
one seed.
  python benchmarks/ladder.py --sweep configs/sweeps/ladder_tiny.py --workdir /tmp/ladder_tiny
  python benchmarks/ladder_power.py --sweep configs/sweeps/ladder_tiny.py --workdir /tmp/ladder_tiny
"""

import os

from gandl.defaults import call_in_file


def get_sweep() -> dict:
    return call_in_file(
        os.path.join(os.path.dirname(__file__), "ladder.py"), "ladder", {}, seeds=(1,),
        start={"train.steps": 8, "model.channel_max": 8, "model.resolution": 16, "data.image_size": 16},
        overrides={"synthetic.image_size": 16, "synthetic.plates_per_cell_line": 2, "synthetic.sites_per_well": 1,
                   "synthetic.num_compounds": 3, "zeroshot.synthetic.plates_per_cell_line": 2,
                   "zeroshot.synthetic.sites_per_well": 1, "data.num_workers": 1, "data.sites_per_shard": 64,
                   "train.checkpoint_every": 4, "train.sample_every": 4, "train.log_every": 4,
                   "analysis.n_splits": 2, "analysis.few_labels": (2,), "analysis.few_label_draws": 2,
                   "embed.reference_inits": 3})
