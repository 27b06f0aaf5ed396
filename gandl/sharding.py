"""Device mesh, data sharding and multi-process start-up.

One code path for 1 CPU, 8 simulated devices and a TPU pod: a 1-D mesh named 'data' spans every device
of every process; the batch is split along it, parameters are replicated. Each process contributes its
local slice of the global batch (`global_batch`).
"""

from __future__ import annotations

import itertools
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gandl.defaults import DISTRIBUTED_MODES  # config.train.distributed: see initialize_distributed

DATA_AXIS = "data"
_BARRIERS = itertools.count()

# Environment variables that mean "this process is one of several" (Cloud TPU VMs, explicit coordinators).
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS")


def skip_absent_tpu() -> str | None:
    """Keep JAX from starting libtpu's TPU backend on a machine without a TPU chip; the platforms set, or None.

    With libtpu installed (the `tpu` extra: `gandl.cost` compiles for a TPU topology with it on any machine), JAX
    tries a TPU backend first wherever it starts. Without a chip, libtpu then prints "Failed to find host bounds
    for accelerator type ..." and "E0000 ... INVALID_ARGUMENT: Error: unexpected worker hostname ..." to stderr
    (and setenv()s CLOUD_TPU_TASK_ID and others) before JAX falls back to the CPU. So where no TPU chip is
    attached (JAX's own PCI check) and neither JAX_PLATFORMS nor JAX_FORCE_TPU_INIT is set, JAX is given its
    other backends by name, in its own order of preference (the CPU, and an installed GPU plugin's): what it
    would have chosen, without the try. Call before JAX starts a backend; later it does nothing. The compile
    check still loads libtpu for a topology (`gandl.cost.devices`), which needs no TPU backend.
    """
    if "JAX_PLATFORMS" in os.environ or "JAX_FORCE_TPU_INIT" in os.environ or jax.config.jax_platforms:
        return None
    try:  # JAX's TPU detection and backend registry have no public API: on any change, leave JAX as it is
        from jax._src import hardware_utils, xla_bridge

        if xla_bridge._backends or hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0:
            return None
        xla_bridge._discover_and_register_pjrt_plugins()
        factories = xla_bridge._backend_factories
        if "tpu" not in factories or xla_bridge.get_tpu_library_path() is None:
            return None  # no libtpu: JAX's own start is already quiet
        preferred = sorted((p for p in factories if p != "tpu"), key=lambda p: -factories[p].priority)
    except (ImportError, AttributeError, TypeError):
        return None
    platforms = ",".join(preferred)
    jax.config.update("jax_platforms", platforms)
    return platforms


def initialize_distributed(mode: str = "auto") -> bool:
    """Start JAX's multi-controller runtime when configured or when the environment is a cluster.

    mode 'auto' initialises on Cloud TPU VMs and wherever a coordinator is set in the environment (it is
    also what enables synchronised preemption); 'on' always; 'off' never. Besides the clusters JAX detects
    itself, JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID start any set of processes by hand
    (several on one machine, or plain VMs). Safe to call again. Returns whether the runtime is up.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"distributed mode must be one of {DISTRIBUTED_MODES}, got {mode!r}")
    if jax.distributed.is_initialized():
        return True
    if mode == "off" or (mode == "auto" and not any(v in os.environ for v in _CLUSTER_ENV)):
        return False
    kwargs = {}
    if "JAX_NUM_PROCESSES" in os.environ or "JAX_PROCESS_ID" in os.environ:
        try:
            kwargs = dict(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                          process_id=int(os.environ["JAX_PROCESS_ID"]))
        except (KeyError, ValueError) as e:
            raise ValueError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must both be set to integers, got "
                             f"{os.environ.get('JAX_NUM_PROCESSES')!r} and {os.environ.get('JAX_PROCESS_ID')!r}") from e
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


def local_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
    """A process's share of the global batch; the global batch must split evenly over devices."""
    if global_batch_size % jax.device_count():
        raise ValueError(f"global batch {global_batch_size} does not divide over {jax.device_count()} devices")
    return global_batch_size // (jax.process_count() if process_count is None else process_count)


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble the global batch from every process's local part, sharded over 'data'."""
    return jax.make_array_from_process_local_data(data_sharding(mesh), local)


def compile_in_step(jitted, *args, name: str, timeout_s: int = 3600) -> None:
    """Compile `jitted` for `args`, then wait until every process has compiled it too.

    Processes compile at different speeds (cache hits, busy hosts), and CPU collectives (gloo) give up
    when a peer is 30 s late to the first one, so a multi-process run must not start executing until all
    have their executable. The wait is a coordination-service barrier, not a device collective. The jit
    cache keeps the executable, so the next `jitted(*args)` does not compile again.
    """
    if jax.process_count() == 1:
        return
    jitted.lower(*args).compile()
    key = f"gandl compiled {next(_BARRIERS)} {name}"  # every process calls in the same order
    ocp.multihost.get_barrier_sync_fn()(key=key, timeout_ms=timeout_s * 1000)
