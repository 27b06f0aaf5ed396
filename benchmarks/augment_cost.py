"""Step-time cost of the training options: the demo's train step as shipped, with ADA, and with ADA + ContraD.

  python benchmarks/augment_cost.py [--config configs/demo.py] [--steps 100] [--rounds 3]

Each option's full step (lazy regularisers at their intervals) is compiled once, then timed in `rounds`
interleaved rounds of `steps` steps (baseline, ADA, ADA + ContraD, baseline, ...), so a load change on the
machine hits every option alike; the table gives each option's median round. The augmentation computes
every transform and selects per image, so its cost does not depend on p.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from gandl import sharding
from gandl.models import build_models
from gandl.models.config import ModelConfig
from gandl.sweep import REPO_ROOT, call_in_file
from gandl.train import state as state_lib
from gandl.train import step as step_lib

OPTIONS = {
    "baseline (paper)": {},
    "ADA": {"augment": "ada", "augment_p": 0.5},
    "ADA + ContraD": {"augment": "ada", "augment_p": 0.5, "contrastive_weight": 1.0},
}


class Timed:
    """One option's compiled step and its state, advanced `steps` at a time."""

    def __init__(self, config, overrides: dict, mesh):
        train = config.train.copy_and_resolve_references()
        train.update(overrides)
        model = ModelConfig.from_mapping(config.model)
        generator, discriminator = build_models(model)
        self.mesh, self.batch = mesh, train.batch_size
        with jax.set_mesh(mesh):
            self.state = state_lib.create(model, train, config.seed, mesh)
            self.reals = sharding.global_batch(np.random.default_rng(0).uniform(
                -1, 1, (train.batch_size, model.resolution, model.resolution, model.num_channels)).astype(np.float32),
                mesh)
            start = time.perf_counter()
            self.step = jax.jit(step_lib.make_train_step(generator, discriminator, train), donate_argnums=0)
            self.run(train.r1_interval * train.pl_interval)  # compiles, and every lazy phase has run once
            self.compile_s = time.perf_counter() - start

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps."""
        with jax.set_mesh(self.mesh):
            start = time.perf_counter()
            for _ in range(steps):
                self.state, metrics = self.step(self.state, self.reals)
            jax.block_until_ready(metrics)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=f"{REPO_ROOT}/configs/demo.py")
    parser.add_argument("--steps", type=int, default=100, help="steps per round (a multiple of r1_interval)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = call_in_file(args.config, "get_config")
    mesh = sharding.make_mesh()
    timed = {}
    for name, overrides in OPTIONS.items():
        timed[name] = Timed(config, overrides, mesh)
        print(f"{name}: compiled in {timed[name].compile_s:.0f} s", file=sys.stderr, flush=True)
    seconds = {name: [] for name in OPTIONS}
    for _ in range(args.rounds):
        for name, t in timed.items():
            seconds[name].append(t.run(args.steps))
    base = np.median(seconds["baseline (paper)"])
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s), batch {config.train.batch_size}, "
          f"{args.rounds} x {args.steps} steps each (median round)\n")
    print("| option | images/s | ms / step | step time vs baseline |\n|---|---|---|---|")
    for name, t in timed.items():
        s = np.median(seconds[name])
        print(f"| {name} | {args.steps * t.batch / s:.0f} | {1000 * s / args.steps:.1f} | {s / base:.2f}x |")


if __name__ == "__main__":
    main()
