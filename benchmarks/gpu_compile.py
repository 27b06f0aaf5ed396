"""Compile the config's programs for NVIDIA H100s without a GPU and print XLA's memory and a roofline bound.

JAX's CUDA plugin compiles ahead of time for a GPU it does not have, given a target description
(`topologies.get_topology_desc(platform="cuda", target_config=...)`), once its start-up check, which needs
a driver, is skipped. Needs a separate environment with the CUDA plugin (it would otherwise start on
CPU-only machines and fail):

  python3 -m venv /tmp/gpu-venv && /tmp/gpu-venv/bin/pip install -e . "jax[cuda12]==0.10.2"
  JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 XLA_FLAGS=--xla_gpu_enable_triton_gemm=false \
      /tmp/gpu-venv/bin/python benchmarks/gpu_compile.py --config configs/rxrx19a.py --gpus 1 \
      --programs main_step,embed --config.model.dtype=bfloat16

Triton GEMM fusion is off because XLA 0.10.2's Triton tiling pass aborts the process on the train step
(`triton_tiling_propagation.cc:627 Check failed: subdim_size_accumulator == dim_size`); the programs
compiled without it use cuBLAS for matrix products, which changes no memory figure that matters here.
XLA reports no cost analysis for a GPU program, compiled or lowered, so FLOPs come from the same program
lowered for this machine's CPU (as the traced estimate's do) and the bound is FLOPs-only: a lower bound
on time that ignores memory traffic.
"""

from __future__ import annotations

import time

import jax
from absl import app, flags
from jax.experimental import topologies
from ml_collections import config_flags

from gandl import cost, sharding

_CONFIG = config_flags.DEFINE_config_file("config", "configs/rxrx19a.py", "Config to compile.")
_GPUS = flags.DEFINE_integer("gpus", 1, "GPUs in the data-parallel mesh.")
_PROGRAMS = flags.DEFINE_list("programs", ["main_step", "embed"], "Of step, main_step, embed.")

# NVIDIA's published H100 SXM5 80 GB figures, in XLA's GpuTargetConfig text format.
H100_SXM = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84942979072 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak, SXM5
GIB = 2.0**30


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    topology = topologies.get_topology_desc(platform="cuda", topology=f"1x1x{_GPUS.value}", target_config=H100_SXM)
    mesh = sharding.make_mesh(list(topology.devices))
    state = cost.abstract_state(config, mesh)
    cpu_mesh = sharding.make_mesh(jax.devices("cpu")[:1])
    cpu_state = cost.abstract_state(config, cpu_mesh)
    print(f"{config.model.resolution} px x {config.model.num_channels} channels, {config.model.dtype}, "
          f"{_GPUS.value} x H100 SXM 80 GB (compiled without one)")
    print(f"{'program':<30} {'batch':>6} {'arguments':>10} {'temporaries':>12} {'output':>7} {'total':>7} "
          f"{'GFLOP/image':>12} {'FLOP bound':>17} {'compile':>8}")
    for program in _PROGRAMS.value:
        batch = cost.batch_size(config, program)
        start = time.time()
        with jax.set_mesh(cpu_mesh):
            flops = cost.lowered_flops(cost.traced(config, program, cpu_mesh, batch, cpu_state).lower())
        with jax.set_mesh(mesh):
            memory = cost.traced(config, program, mesh, batch, state).lower().compile().memory_analysis()
        per_image = flops / batch
        rate = _GPUS.value * H100_BF16_FLOPS / per_image
        unit = "sites/s" if program == "embed" else "images/s"
        total = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                 - memory.alias_size_in_bytes)  # output written into donated arguments counted once
        print(f"{cost.PROGRAMS[program]:<30} {batch:>6} {memory.argument_size_in_bytes / GIB:>10.2f} "
              f"{memory.temp_size_in_bytes / GIB:>12.2f} {memory.output_size_in_bytes / GIB:>7.2f} "
              f"{total / GIB:>7.2f} {per_image / 1e9:>12,.1f} {rate:>8,.0f} {unit:<8} {time.time() - start:>7.0f}s")
    print("(GiB on the GPU; the bound counts FLOPs only, at the dense bf16 tensor-core peak of "
          f"{H100_BF16_FLOPS / 1e12:g} TFLOP/s: a lower bound on time that ignores memory traffic)")


if __name__ == "__main__":
    app.run(main)
