"""A seconds-long sweep for tests and for trying the runner: two shard sizes of a tiny synthetic screen.

  python -m gandl.sweep --sweep configs/sweeps/convert_smoke.py --workdir /tmp/sweep_smoke
"""


def get_sweep() -> dict:
    return {
        "base": "configs/demo.py",
        "mode": "convert",
        "overrides": {
            "synthetic.image_size": 16, "synthetic.plates_per_cell_line": 1, "synthetic.sites_per_well": 1,
            "synthetic.num_compounds": 3, "data.image_size": 16, "data.num_workers": 1, "model.resolution": 16,
        },
        "product": {"data.sites_per_shard": [16, 32]},
    }
