"""Device mesh, data sharding and multi-process start-up.

One code path for 1 CPU, 8 simulated devices and a TPU pod: a 1-D mesh named 'data' spans every device
of every process; the batch is split along it, parameters are replicated. Each process contributes its
local slice of the global batch (`global_batch`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several" (Cloud TPU VMs, explicit coordinators).
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS")


def initialize_distributed(mode: str = "auto", coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> bool:
    """Start JAX's multi-controller runtime when configured or when the environment is a cluster.

    mode 'auto' initialises on Cloud TPU VMs and wherever a coordinator is set in the environment (it is
    also what enables preemption notices); 'on' always; 'off' never. Returns whether it initialised.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off" or (mode == "auto" and not coordinator_address and not any(v in os.environ for v in _CLUSTER_ENV)):
        return False
    kwargs = {}
    if coordinator_address:
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
    return True


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process), its 'data' axis Explicit."""
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Explicit,), devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the 'data' axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def local_batch_size(global_batch_size: int) -> int:
    """This process's share of the global batch; the global batch must split evenly over devices."""
    if global_batch_size % jax.device_count():
        raise ValueError(f"global batch {global_batch_size} does not divide over {jax.device_count()} devices")
    return global_batch_size // jax.process_count()


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble the global batch from every process's local part, sharded over 'data'."""
    return jax.make_array_from_process_local_data(data_sharding(mesh), local)
