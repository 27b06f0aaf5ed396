"""The compute ladder: GAN-DL and its self-supervised twin on the morphology-only test bed, one axis at a time.

From the demo's point (32 px, 32 channels per block, 64k training images: 4,000 steps of 16), each axis moves
alone: training images (16k, 32k, 64k), channels per block (8, 16, 32), the model's side (16, 32 px; the handcrafted
set is computed at the same side, from the same batches). Every point trains GAN-DL (`train.objective=gan`, the
paper's training) and its twin (`contrastive`: the same D and ContraD head trained on the NT-Xent of two augmented
views alone, no generator), on seeds 1-3 (screen, zero-shot set and training drawn together). Each run is the
whole demo job with the block statistics, their random-init reference at 8 initialisations (the gap is to their
mean) and the analysis at k = 8 labelled wells.
  python -m gandl.sweep --sweep configs/sweeps/ladder.py --workdir /tmp/ladder
  python benchmarks/ladder.py --workdir /tmp/ladder        # the table and figure (also runs what is not done)
  python benchmarks/ladder_power.py --workdir /tmp/ladder  # where the gap's noise comes from; seeds for ±2 points
The larger steps (64-128 px, paper widths) on one GPU: configs/sweeps/ladder_gpu.py.
"""

FEATURE_SETS = ("gandl_blocks", "random_d_blocks", "handcrafted")
# The random-init reference at 8 initialisations: one draw's spread over inits is the largest noise in a run's gap
# (docs/results.md, "Power"); 8 cut it to a third for at most 1.5 more minutes a run.
REFERENCE_INITS = 8
DEMO_POINT = {"train.steps": 4000, "model.channel_max": 32, "model.resolution": 32, "data.image_size": 32}


def ladder(axes: dict[str, list], seeds: tuple[int, ...] = (1, 2, 3), overrides: dict | None = None,
           start: dict | None = None) -> dict:
    """The sweep of a ladder: every point of `axes` (field -> budgets, each moved alone from `start`, by default
    DEMO_POINT; the model's side moves the data's with it) x both objectives x `seeds`."""
    start = start or DEMO_POINT
    points = [start]
    for field, budgets in axes.items():
        for budget in budgets:
            point = dict(start, **{field: budget})
            if field == "model.resolution":
                point["data.image_size"] = budget
            if point not in points:
                points.append(point)
    return {
        "base": "configs/demo.py",
        "mode": "all",
        "overrides": {"synthetic.morphology_only": True, "embed.feature_sets": FEATURE_SETS,
                      "analysis.few_labels": (8,), "train.augment": "none", "train.contrastive_weight": 0.0,
                      "train.probe_every": 0, "train.swd_every": 0, "embed.reference_inits": REFERENCE_INITS,
                      **(overrides or {})},
        # points slowest, objectives fastest: a partial sweep has both learners of each point and seed it reached
        "zip": [{field: [p[field] for p in points] for field in start},
                {"synthetic.seed": list(seeds), "zeroshot.synthetic.seed": [10 + s for s in seeds],
                 "seed": list(seeds)},
                {"train.objective": ["gan", "contrastive"]}],
        "spread_over": ["synthetic.seed", "zeroshot.synthetic.seed", "seed"],
    }


def get_sweep() -> dict:
    return ladder({"train.steps": [1000, 2000, 4000], "model.channel_max": [8, 16, 32],
                   "model.resolution": [16, 32]})
