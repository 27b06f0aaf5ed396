"""Embedding-export throughput: sites/s and achieved FLOP/s of the discriminator features against a matmul.

  python benchmarks/embed.py --sizes 128,256 --batch 32

Times what `gandl.embed.export` runs per batch: a host batch in, the jitted D features on the mesh
(mbstd group 1), this process's rows back on the host. The input pipeline is measured separately by
benchmarks/input_pipeline.py. Widths default to StyleGAN2's 256-px configs.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flops import compiled_flops, matmul_flops_per_s

from gandl import sharding
from gandl.features import discriminator
from gandl.models import init_variables
from gandl.models.config import ModelConfig


def time_features(model: ModelConfig, batch: int, iters: int, orientation_average: bool) -> tuple[float, float]:
    """(seconds per batch, FLOPs per batch) of the export's feature function."""
    mesh = sharding.make_mesh()
    d_params = init_variables(model, jax.random.key(0))[1]["params"]
    images = np.random.default_rng(0).uniform(
        -1, 1, (batch, model.resolution, model.resolution, model.num_channels)).astype(np.float32)
    jitted = discriminator.compiled_features(model, orientation_average)
    with jax.set_mesh(mesh):
        variables = dict(params=d_params, mbstd=None)  # the export's: a constant mbstd channel
        flops = compiled_flops(jitted.lower(variables, sharding.global_batch(images, mesh)).compile())
    fn = discriminator.feature_fn(model, d_params, mesh, orientation_average)
    fn(images)  # compile + warm-up
    start = time.perf_counter()
    for _ in range(iters):
        fn(images)
    return (time.perf_counter() - start) / iters, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--channel_base", type=int, default=16384)
    parser.add_argument("--channel_max", type=int, default=512)
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32,bfloat16")
    parser.add_argument("--orientation_average", action="store_true", help="also time the 8-view average")
    args = parser.parse_args()
    rows = []
    for dtype in args.dtypes.split(","):
        peak = matmul_flops_per_s(dtype=dtype)
        for size in [int(s) for s in args.sizes.split(",")]:
            model = ModelConfig(resolution=size, num_channels=args.channels, channel_base=args.channel_base,
                                channel_max=args.channel_max, dtype=dtype)
            for views in ([False, True] if args.orientation_average else [False]):
                t, flops = time_features(model, args.batch, args.iters, views)
                rows.append((size, dtype, 8 if views else 1, args.batch / t, flops / args.batch / 1e9,
                             flops / t / 1e9, peak / 1e9, flops / t / peak))
    print(f"\nEmbedding export on {jax.device_count()} {jax.devices()[0].platform} device(s), {args.channels} "
          f"channels, channel_base {args.channel_base}, channel_max {args.channel_max}, batch {args.batch}\n")
    print("| px | dtype | views | sites/s | GFLOP/site | GFLOP/s | matmul GFLOP/s | fraction of matmul |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size, dtype, views, sps, gf_site, gfs, peak, frac in rows:
        print(f"| {size} | {dtype} | {views} | {sps:.1f} | {gf_site:.2f} | {gfs:.1f} | {peak:.0f} | {frac:.0%} |")


if __name__ == "__main__":
    main()
