"""The paper's regularisers on the demo screen, on a CPU: R1 strength × (Lipschitz + path length) off/on.

The runs share one converted demo screen; convert it once, then sweep:
  python -m gandl.main --config configs/demo.py --workdir /tmp/gandl_demo --mode convert
  python -m gandl.sweep --sweep configs/sweeps/demo_regularizers.py --workdir /tmp/sweep_demo
"""


def get_sweep() -> dict:
    return {
        "base": "configs/demo.py",
        "mode": "train",
        "overrides": {
            "data.shards": "/tmp/gandl_demo/shards",
            "train.steps": 300, "train.batch_size": 16, "train.checkpoint_every": 100, "train.sample_every": 100,
            "train.swd_every": 300, "train.swd_images": 256,
        },
        "product": {"train.r1_gamma": [0.5, 2.0]},
        # Both penalties off, then both on (the paper's variant).
        "zip": {"train.lipschitz_weight": [0.0, 1.0], "train.pl_weight": [0.0, 2.0]},
    }
