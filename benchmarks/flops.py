"""Shared by the compute benchmarks: the machine's matmul FLOP/s and a compiled function's FLOPs."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def matmul_flops_per_s(n: int = 4096, reps: int = 5, dtype: str = "float32") -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak the other numbers are measured against."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def compiled_flops(compiled: jax.stages.Compiled) -> float:
    """FLOPs of one call, from XLA's cost analysis (all devices together)."""
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])
