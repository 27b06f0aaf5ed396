"""Training options that may make D a feature learner, side by side on three test beds over three seeds.

configs/sweeps/test_beds.py (the morphology-only, subtle and standard test beds, seeds 1-3, the paper's
training), each under three options: the paper's training; ADA; ADA + the
ContraD contrastive head. Each run is the whole demo job (screen, conversion, training, embedding with the
block features too, analysis with k = 4, 8, 16 labels). WORKDIR/spread.md gives every analysis number's mean ±
sd (min–max) over the three seeds, one block of rows per test bed and option:
  python -m gandl.sweep --sweep configs/sweeps/feature_learners.py --workdir /tmp/feature_learners
27 runs of about 15 minutes each on 2 CPU cores. The slice docs/results.md reports (ADA + ContraD on the two harder
test beds; the paper's training on them is configs/sweeps/test_beds.py):
  python -m gandl.sweep --sweep configs/sweeps/feature_learners.py --workdir /tmp/feature_learners \
      --where train.contrastive_weight=1.0 --where synthetic.phenotype_strength=0.4
  python -m gandl.sweep --sweep configs/sweeps/feature_learners.py --workdir /tmp/feature_learners \
      --where train.contrastive_weight=1.0 --where synthetic.morphology_only=True
"""

import os

from gandl.defaults import call_in_file


def get_sweep() -> dict:
    sweep = call_in_file(os.path.join(os.path.dirname(__file__), "test_beds.py"), "get_sweep")
    overrides = {k: v for k, v in sweep["overrides"].items() if not k.startswith("train.")}  # swept here
    seeds, beds = sweep["zip"]
    options = {"train.augment": ["none", "ada", "ada"], "train.contrastive_weight": [0.0, 0.0, 1.0]}
    return dict(sweep, overrides=overrides, zip=[beds, options, seeds])
