"""Training options that may make D a feature learner, side by side on three test beds over three seeds.

Seeds 1, 2, 3 (screen, zero-shot set, training) x test beds (the standard demo screen; morphology-only: every
channel of every site matched to one intensity histogram; subtle: phenotypes at 40 % strength and half the
cells) x options (the paper's training; ADA; ADA + the ContraD contrastive head), each the whole demo job
(screen, conversion, training, embedding with the block features too, analysis with k = 4, 8, 16 labels).
WORKDIR/spread.md gives every analysis number's mean ± sd (min–max) over the three seeds, one block of rows
per test bed and option:
  python -m gandl.sweep --sweep configs/sweeps/feature_learners.py --workdir /tmp/feature_learners
27 runs of about 15 minutes each on 2 CPU cores.
"""

FEATURE_SETS = ("gandl", "random_d", "gandl_multiscale", "random_d_multiscale", "gandl_blocks", "random_d_blocks",
                "handcrafted")


def get_sweep() -> dict:
    return {
        "base": "configs/demo.py",
        "mode": "all",
        "overrides": {"embed.feature_sets": FEATURE_SETS, "analysis.few_labels": (4, 8, 16)},
        "zip": [
            {"synthetic.morphology_only": [False, True, False], "synthetic.phenotype_strength": [1.0, 1.0, 0.4],
             "synthetic.cell_density": [1.0, 1.0, 0.5]},
            {"train.augment": ["none", "ada", "ada"], "train.contrastive_weight": [0.0, 0.0, 1.0]},
            {"synthetic.seed": [1, 2, 3], "zeroshot.synthetic.seed": [11, 12, 13], "seed": [1, 2, 3]},
        ],
        "spread_over": ["synthetic.seed", "zeroshot.synthetic.seed", "seed"],
    }
