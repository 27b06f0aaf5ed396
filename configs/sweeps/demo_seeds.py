"""The demo over other screens: the same job on synthetic screen seeds 1, 2, 3 (zero-shot sets 11, 12, 13).

The demo's settings were chosen on seed 0 (`configs/demo.py`'s default); this sweep reruns the whole job
(synthetic screen, conversion, training, embedding, analysis) on three other draws and writes, besides
each run's report, WORKDIR/spread.md: every analysis number's mean, sd and range over the runs.
  python -m gandl.sweep --sweep configs/sweeps/demo_seeds.py --workdir /tmp/demo_seeds
About 15 minutes a run on 2 CPU cores.
"""


def get_sweep() -> dict:
    return {
        "base": "configs/demo.py",
        "mode": "all",
        "zip": {"synthetic.seed": [1, 2, 3], "zeroshot.synthetic.seed": [11, 12, 13]},
    }
