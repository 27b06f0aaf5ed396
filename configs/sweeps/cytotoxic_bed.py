"""The demo job on the cytotoxic test bed: do inert cytotoxic compounds stay out of the hit list?

The demo screen with a third of its generated compounds (7 of 21) toxic and inert (`synthetic.toxic_fraction`), whose
dying cells shed the infection phenotype in full (`synthetic.cytotoxic_mimicry=1`): their wells move from
C- towards C+ along the infection axis as they kill, the false hits a rescue call must reject, while losing
nuclei (the nuclear-stain proxy the analysis reads as viability). Seeds 1, 2, 3 draw the screen, the zero-shot
set and the training. Each run's analysis lists hits, cytotoxic and off-axis compounds per feature set, and
`hits.csv` beside truth.csv says which compound is which (docs/results.md, "The cytotoxic test bed").
  python -m gandl.sweep --sweep configs/sweeps/cytotoxic_bed.py --workdir /tmp/cytotoxic_bed
About 15 minutes a run on 2 idle CPU cores.
"""


def get_sweep() -> dict:
    return {
        "base": "configs/demo.py",
        "mode": "all",
        "overrides": {"synthetic.toxic_fraction": 0.34, "synthetic.cytotoxic_mimicry": 1.0},
        "zip": {"synthetic.seed": [1, 2, 3], "zeroshot.synthetic.seed": [11, 12, 13], "seed": [1, 2, 3]},
        "spread_over": ["synthetic.seed", "zeroshot.synthetic.seed", "seed"],
    }
