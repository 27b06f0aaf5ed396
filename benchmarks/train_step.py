"""Training-iteration throughput: images/s, XLA FLOPs per iteration, and FLOP/s against a matmul.

  python benchmarks/train_step.py --sizes 64,128 --batches 16,8

A full iteration is G main + D main every step, path length every 4 steps and R1 + Lipschitz every
16 (StyleGAN2's lazy regularisation). Each phase mix is compiled as its own variant (regulariser off,
or on at every step) and timed; the iteration's time and FLOPs are the amortised combination
t = t_main + (t_pl - t_main) / 4 + (t_r1 - t_main) / 16, FLOPs from XLA's cost analysis likewise.
The reference is a large matmul in the model's dtype, timed in the same process.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from flops import compiled_flops, matmul_flops_per_s

from gandl import sharding
from gandl.defaults import base_config
from gandl.models import build_models
from gandl.models.config import ModelConfig
from gandl.train import state as state_lib
from gandl.train import step as step_lib


def _variant(cfg, **train):
    c = cfg.train.copy_and_resolve_references()
    c.update(train)
    return c


def time_variant(model: ModelConfig, train, mesh, batch: int, iters: int) -> tuple[float, float]:
    """(seconds per iteration, FLOPs per iteration) of one compiled phase mix."""
    generator, discriminator = build_models(model)
    with jax.set_mesh(mesh):
        state = state_lib.create(model, train, 0, mesh)
        reals = sharding.global_batch(
            np.random.default_rng(0).uniform(-1, 1, (batch, model.resolution, model.resolution,
                                                     model.num_channels)).astype(np.float32), mesh)
        start = time.perf_counter()
        compiled = jax.jit(step_lib.make_train_step(generator, discriminator, train), donate_argnums=0) \
            .lower(state, reals).compile()
        flops = compiled_flops(compiled)
        print(f"{model.resolution} px, r1_interval {train.r1_interval}, pl_interval {train.pl_interval}: "
              f"compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        state, metrics = compiled(state, reals)  # warm-up
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(iters):
            state, metrics = compiled(state, reals)
        jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / iters, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--batches", default="16,8", help="global batch per size")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--channel_base", type=int, default=16384, help="StyleGAN2's 256-px widths by default")
    parser.add_argument("--channel_max", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--main_only", action="store_true",
                        help="time only G main + D main (one compile instead of three; no regularisers)")
    args = parser.parse_args()
    mesh = sharding.make_mesh()
    peak = matmul_flops_per_s(dtype=args.dtype)
    cfg = base_config()
    rows = []
    for size, batch in zip([int(s) for s in args.sizes.split(",")], [int(b) for b in args.batches.split(",")]):
        model = ModelConfig(resolution=size, num_channels=args.channels, channel_base=args.channel_base,
                            channel_max=args.channel_max, dtype=args.dtype)
        t, flops = time_variant(model, _variant(cfg, pl_weight=0.0, r1_gamma=0.0, lipschitz_weight=0.0),
                                mesh, batch, args.iters)
        if not args.main_only:
            t_pl, f_pl = time_variant(model, _variant(cfg, pl_interval=1, r1_gamma=0.0, lipschitz_weight=0.0),
                                      mesh, batch, args.iters)
            t_r1, f_r1 = time_variant(model, _variant(cfg, r1_interval=1, pl_weight=0.0), mesh, batch, args.iters)
            t, flops = t + (t_pl - t) / 4 + (t_r1 - t) / 16, flops + (f_pl - flops) / 4 + (f_r1 - flops) / 16
        rows.append((size, batch, batch / t, flops / batch / 1e9, flops / t / 1e9, flops / t / peak))
    print(f"\nTraining iteration on {jax.device_count()} {jax.devices()[0].platform} device(s), {args.channels} "
          f"channels, channel_base {args.channel_base}, channel_max {args.channel_max}, {args.dtype}, "
          f"{'main phases only' if args.main_only else 'amortised over the lazy regularisers'}; "
          f"{args.dtype} matmul reference {peak / 1e9:.0f} GFLOP/s\n")
    print("| px | batch | images/s | GFLOP/image | GFLOP/s | fraction of matmul |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, batch, ips, gf_img, gfs, frac in rows:
        print(f"| {size} | {batch} | {ips:.2f} | {gf_img:.1f} | {gfs:.1f} | {frac:.0%} |")


if __name__ == "__main__":
    main()
