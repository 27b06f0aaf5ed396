"""The paper's training on the three test beds over three seeds: the test-bed table of docs/results.md.

Test beds (`gandl.data.synthetic`): morphology-only (every channel of every site matched to one intensity
histogram, so only shape, arrangement and texture differ), subtle (phenotypes at 40 % strength, half the
cells) and the standard demo screen. Seeds 1, 2, 3 draw the screen, the zero-shot set and the training. Each
run is the whole demo job with the block features too and the analysis at k = 4, 8, 16 labelled wells; the
ADA / ContraD options of configs/sweeps/feature_learners.py are left at the paper's (off). WORKDIR/spread.md
gives every number and every learned set's gap to its random-init reference as mean ± sd (min–max) over the
seeds, one block per test bed. 9 runs of about 15 minutes on 2 idle cores:
  python -m gandl.sweep --sweep configs/sweeps/test_beds.py --workdir /tmp/test_beds
"""

FEATURE_SETS = ("gandl", "random_d", "gandl_multiscale", "random_d_multiscale", "gandl_blocks", "random_d_blocks",
                "handcrafted")


def get_sweep() -> dict:
    return {
        "base": "configs/demo.py",
        "mode": "all",
        "overrides": {"embed.feature_sets": FEATURE_SETS, "analysis.few_labels": (4, 8, 16),
                      "train.augment": "none", "train.contrastive_weight": 0.0},
        "zip": [
            {"synthetic.seed": [1, 2, 3], "zeroshot.synthetic.seed": [11, 12, 13], "seed": [1, 2, 3]},
            {"synthetic.morphology_only": [True, False, False], "synthetic.phenotype_strength": [1.0, 0.4, 1.0],
             "synthetic.cell_density": [1.0, 0.5, 1.0]},
        ],
        "spread_over": ["synthetic.seed", "zeroshot.synthetic.seed", "seed"],
    }
