#!/usr/bin/env bash
# The accelerator benchmark in one run: training images/s at 256 px (global batch 64, float32 and bfloat16)
# and embedding-export sites/s, each with achieved FLOP/s against the card's own matmul, at StyleGAN2's
# 256-px widths (channel_base 16384, channel_max 512), 5 channels.
#
#   bash benchmarks/accelerator.sh            # from the repository root, on a machine with JAX for its card
#   ITERS=20 bash benchmarks/accelerator.sh
#
# Needs the package's dependencies (pip install -e .); downloads nothing. Prints markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
iters="${ITERS:-10}"

if ! python -c 'import jax, flax, optax, orbax.checkpoint, ml_collections, tensorflow' 2>/dev/null; then
  echo "missing dependencies: run 'pip install -e .' (with the JAX build for this accelerator) first" >&2
  exit 1
fi
python -c 'import jax; d = jax.devices(); print(f"JAX {jax.__version__}: {len(d)} x {d[0].device_kind} ({d[0].platform})")'
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

for dtype in float32 bfloat16; do
  python benchmarks/train_step.py --sizes 256 --batches 64 --dtype "$dtype" --iters "$iters"
done
python benchmarks/embed.py --sizes 256 --batch 256 --dtypes float32,bfloat16 --iters "$iters"
