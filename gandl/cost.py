"""What a config costs: XLA's compiled memory, FLOPs and bytes of its programs for a TPU topology.

JAX compiles for a TPU it does not have: libtpu (`pip install -e ".[tpu]"`) describes a slice's topology
(`jax.experimental.topologies`), and `jit(...).trace(...).lower().compile()` over a mesh of its devices
builds the real TPU executable, whose memory analysis (per core: arguments, temporaries, output) and cost
analysis (FLOPs, bytes accessed) are XLA's own. A program too large for HBM fails to compile, so a config
that cannot run is found here, before a TPU is paid for. The roofline bound turns the counts into a lower
bound on time from the chip's published peak FLOP/s and HBM bandwidth. A 256-px train step takes minutes
to compile on a small machine and JAX's compilation cache cannot reload an executable without the device,
so each measurement is kept in a small report cache keyed by everything that shapes the program.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
import json
import math
import os
import pathlib
import re
import threading
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import gandl
from gandl import sharding
from gandl.defaults import Train
from gandl.features import discriminator
from gandl.models.config import ModelConfig
from gandl.train import loop
from gandl.train import state as state_lib
from gandl.train import step as step_lib

GIB = 2.0**30
DAY = 86_400.0


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation's published per-chip figures (cloud.google.com/tpu/docs/<version>)."""

    kind: str  # JAX's device_kind
    prefix: str  # of its topology names (v3:2x2)
    cores: int  # TensorCores per chip
    megacore: bool  # JAX shows a chip's cores as one device
    counts_cores: bool  # the type's number counts TensorCores (v3-8: 4 chips), else chips (v5litepod-8)
    dims: int  # of its topology
    peak_flops: float  # bf16 FLOP/s per chip: the MXUs' rate
    hbm_bytes: float  # per chip
    hbm_bandwidth: float  # bytes/s per chip

    @property
    def devices_per_chip(self) -> int:
        return 1 if self.megacore else self.cores

    def per_device(self, value: float) -> float:
        return value / self.devices_per_chip


# Keyed by the generation as TPU types spell it (v3-8, v5litepod-8, v6e-8).
CHIPS = {
    "v2": Chip("TPU v2", "v2", 2, False, True, 2, 45e12, 16 * GIB, 600e9),
    "v3": Chip("TPU v3", "v3", 2, False, True, 2, 123e12, 32 * GIB, 900e9),
    "v4": Chip("TPU v4", "v4", 2, True, True, 3, 275e12, 32 * GIB, 1200e9),
    "v5p": Chip("TPU v5", "v5p", 2, True, True, 3, 459e12, 95 * GIB, 2765e9),
    "v5litepod": Chip("TPU v5 lite", "v5e", 1, False, False, 2, 197e12, 16 * GIB, 819e9),
    "v6e": Chip("TPU v6 lite", "v6e", 1, False, False, 2, 918e12, 32 * GIB, 1638e9),
}
_TYPE = re.compile(r"(v\d+[a-z]*)-(\d+)")


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice by its type (v3-8): its chip and topology."""

    name: str
    chip: Chip
    shape: tuple[int, ...]  # chips along each axis

    @property
    def topology(self) -> str:
        return f"{self.chip.prefix}:{'x'.join(map(str, self.shape))}"

    @property
    def num_devices(self) -> int:
        return math.prod(self.shape) * self.chip.devices_per_chip


def tpu_slice(tpu_type: str) -> Slice:
    """The slice a TPU type names: v3-8 is 4 chips (2x2, 8 cores), v4-8 2x2x1, v5litepod-8 2x4 chips."""
    m = _TYPE.fullmatch(tpu_type)
    if not m or m.group(1) not in CHIPS:
        raise ValueError(f"--devices={tpu_type!r}: expected a device count (8) or a TPU type ("
                         f"{', '.join(f'{g}-8' for g in CHIPS)}, or a pod such as v3-32)")
    chip, count = CHIPS[m.group(1)], int(m.group(2))
    chips = count // chip.cores if chip.counts_cores else count
    if chips < 1 or chips & (chips - 1) or (chip.counts_cores and count % chip.cores):
        raise ValueError(f"--devices={tpu_type!r}: {count} is not a power-of-two number of "
                         f"{'TensorCores' if chip.counts_cores else 'chips'} of a {chip.kind} slice")
    # Standard slice shapes: 2-D ones grow their last, shorter axis (2x2, 2x4, 4x4); 3-D ones fill a 2x2x1
    # host first, then grow the rightmost shortest axis (2x2x2, 2x2x4, 2x4x4, 4x4x4).
    shape = [1] * chip.dims
    while math.prod(shape) < chips:
        low = min(shape)
        axes = [i for i, s in enumerate(shape) if s == low]
        shape[axes[0] if chip.dims == 3 and math.prod(shape) < 4 else axes[-1]] *= 2
    return Slice(tpu_type, chip, tuple(shape))


def libtpu_version() -> str | None:
    """The installed libtpu's version; None without it (then nothing compiles for a TPU)."""
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return None


def _process_environment() -> set[str]:
    """Names in the C library's environment, which child processes inherit; `os.environ` is Python's copy
    and misses what native code sets with setenv()."""
    environ = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    names, i = set(), 0
    while environ[i] is not None:
        names.add(environ[i].split(b"=", 1)[0].decode(errors="replace"))
        i += 1
    return names


@contextlib.contextmanager
def _libtpu_environment(tpu_type: str) -> Iterator[None]:
    """What libtpu reads on a machine that is not a TPU VM, set for the call only: the same variables tell
    `sharding.initialize_distributed` that a process is part of a pod. libtpu also writes variables of its
    own (CLOUD_TPU_TASK_ID among them) with setenv(); those are removed too, or every process this one
    starts afterwards would believe it runs on a TPU pod. Compiling uses no TPU, so several processes may
    load libtpu at once (it otherwise holds a lock file for the chips it would drive)."""
    values = dict(TPU_ACCELERATOR_TYPE=tpu_type, TPU_WORKER_HOSTNAMES="localhost", TPU_SKIP_MDS_QUERY="1",
                  ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    saved = {k: os.environ.get(k) for k in values}
    before = _process_environment()
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for k in _process_environment() - before - set(os.environ):
            os.unsetenv(k)


@functools.lru_cache(maxsize=8)
def devices(tpu: Slice) -> tuple:
    """Compile-only devices of the slice's topology (no TPU needed; libtpu required)."""
    from jax.experimental import topologies

    with _libtpu_environment(tpu.name):
        options = dict(chip_config_name="megacore") if tpu.chip.megacore else {}
        return tuple(topologies.get_topology_desc(platform="tpu", topology_name=tpu.topology, **options).devices)


_HBM = re.compile(r"available HBM \(([\d.]+)([KMGT]?)\)")
_REQUIRED = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)")


def _xla_bytes(match: re.Match | None) -> float | None:
    """A byte count as XLA writes it (15.48G: binary units)."""
    return float(match.group(1)) * 1024.0 ** " KMGT".index(match.group(2) or " ") if match else None


def usable_hbm(tpu: Slice) -> float:
    """Bytes of HBM per device that XLA lets a program use, as it states when one exceeds them: a program
    needing a TiB of temporaries is compiled to make it say (below the chip's HBM: XLA keeps a reserve)."""
    mesh = sharding.make_mesh(list(devices(tpu)))
    big = jax.ShapeDtypeStruct((2**18, 2**20), jnp.float32, sharding=sharding.replicated(mesh))
    try:
        jax.jit(lambda x: jnp.sort(x * 2, axis=1)[:, :1]).trace(big).lower().compile()
    except jax.errors.JaxRuntimeError as e:
        found = _xla_bytes(_HBM.search(str(e)))
        if found:
            return found
    return tpu.chip.per_device(tpu.chip.hbm_bytes)


# ---------------------------------------------------------------------------------------------------------------
# The programs


PROGRAMS = {"step": "train step, every phase due", "main_step": "train step, main phases only",
            "embed": "embedding batch"}
BATCH_FIELDS = {"step": "train.batch_size", "main_step": "train.batch_size", "embed": "embed.batch_size"}


def batch_size(config: ml_collections.ConfigDict, program: str) -> int:
    return config.embed.batch_size if program == "embed" else config.train.batch_size


def main_only(train: Train) -> Train:
    """The train section with both lazy regularisers off: the step then holds only the phases due every step."""
    return dataclasses.replace(train, pl_weight=0.0, r1_gamma=0.0, lipschitz_weight=0.0)


def abstract_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> state_lib.TrainState:
    """The train state's shapes, replicated over the mesh: nothing is initialised."""
    model = ModelConfig.of_run(config)
    with jax.set_mesh(mesh):
        return jax.eval_shape(lambda: state_lib.create(model, Train.from_mapping(config.train), config.seed, mesh))


def traced(config: ml_collections.ConfigDict, program: str, mesh: jax.sharding.Mesh, batch: int,
           state: state_lib.TrainState) -> jax.stages.Traced:
    """One of `PROGRAMS`, traced on shapes alone for a global `batch`: the jitted functions training and
    the embedding export run, with their own caches (`loop.compiled_step`, `discriminator.compiled_features`)."""
    model, train = ModelConfig.of_run(config), Train.from_mapping(config.train)
    images = jax.ShapeDtypeStruct((batch, model.resolution, model.resolution, model.num_channels), jnp.float32,
                                  sharding=sharding.data_sharding(mesh))
    with jax.set_mesh(mesh):
        if program == "embed":
            mbstd = (jax.ShapeDtypeStruct((model.mbstd_num_channels,), jnp.float32)
                     if config.embed.mbstd == "train" else None)
            features = discriminator.compiled_features(model, config.embed.orientation_average)
            return features.trace(dict(params=state.d_params, mbstd=mbstd), images)
        step_train = train if program == "step" else main_only(train)
        return loop.compiled_step(model, step_lib.step_config(step_train), mesh).trace(state, images)


def _device_bytes(aval) -> int:
    """Bytes of one device's shard of an abstract array (its sharding from explicit-axis tracing)."""
    shape = getattr(aval, "shape", None)
    if shape is None or not hasattr(aval, "dtype"):
        return 0
    spec = getattr(getattr(aval, "sharding", None), "spec", None)
    mesh = getattr(getattr(aval, "sharding", None), "mesh", None)
    size = int(np.prod(shape, dtype=np.int64))
    for entry in spec or ():
        for axis in (entry if isinstance(entry, tuple) else (entry,)):
            if axis is not None and mesh is not None:
                size //= mesh.shape[axis]
    itemsize = 4 if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key) else np.dtype(aval.dtype).itemsize
    return size * itemsize


def _subjaxprs(params: dict) -> Iterator:
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jax.extend.core.Jaxpr):
                yield v


def _peak_bytes(jaxpr, memo: dict | None = None) -> int:
    """Peak per-device bytes of a jaxpr's intermediates (inputs excluded), freeing each at its last use."""
    memo = {} if memo is None else memo
    if id(jaxpr) in memo:  # the same sub-jaxpr (a layer's, a conv's) is called many times
        return memo[id(jaxpr)]
    last = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, jax.extend.core.Var):
                last[v] = i
    for v in jaxpr.outvars:
        if isinstance(v, jax.extend.core.Var):
            last[v] = len(jaxpr.eqns)
    inputs = set(jaxpr.invars) | set(jaxpr.constvars)
    live = peak = 0
    for i, eqn in enumerate(jaxpr.eqns):
        inner = max((_peak_bytes(sub, memo) for sub in _subjaxprs(eqn.params)), default=0)
        out = sum(_device_bytes(v.aval) for v in eqn.outvars)
        peak = max(peak, live + inner + out)
        live += sum(_device_bytes(v.aval) for v in eqn.outvars if last.get(v, -1) > i)
        dying = {v for v in eqn.invars if isinstance(v, jax.extend.core.Var) and last.get(v) == i}
        live -= sum(_device_bytes(v.aval) for v in dying - inputs)
    memo[id(jaxpr)] = peak
    return peak


def tree_bytes(tree) -> int:
    """Bytes of one device's share of every array in an abstract tree."""
    return sum(_device_bytes(x) for x in jax.tree.leaves(tree))


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def lowered_flops(lowered) -> float:
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What one training step and one embedding batch of the config cost, from the traced programs alone:
    FLOPs from XLA's analysis of the lowered programs, memory estimated by walking them (no compiler)."""

    num_devices: int
    resolution: int
    num_channels: int
    batch_size: int
    embed_batch_size: int
    g_params: int
    d_params: int
    step_flops_per_image: float  # one step with every phase (both lazy regularisers due), per real image
    embed_flops_per_image: float
    step_bytes_per_device: int
    embed_bytes_per_device: int
    seconds: float
    note: str = ""  # why nothing was compiled

    def __str__(self) -> str:
        return "\n".join([
            f"config check passed for {self.num_devices} device(s), in {self.seconds:.1f} s",
            *([f"  {self.note}: the memory below is an estimate"] if self.note else []),
            f"  model: {self.resolution} px x {self.num_channels} channels; G {self.g_params:,} parameters, "
            f"D {self.d_params:,}",
            f"  train step (G main, G reg, D main, D reg, EMA), batch {self.batch_size}: "
            f"{self.step_flops_per_image / 1e9:,.1f} GFLOP per image, ~{self.step_bytes_per_device / GIB:.2f} GiB "
            "per device (estimate)",
            f"  embedding batch of {self.embed_batch_size}: {self.embed_flops_per_image / 1e9:,.2f} GFLOP per image, "
            f"~{self.embed_bytes_per_device / GIB:.2f} GiB per device (estimate)",
            "  (memory estimate: peak live arrays of the traced program per device, before XLA fusion and without "
            "its buffer assignment; FLOPs: XLA's cost analysis of the lowered program)"])


def estimate(config: ml_collections.ConfigDict, note: str = "") -> Estimate:
    """Trace and lower one train step and one embedding batch on shapes alone, over every device JAX has."""
    start = time.time()
    model, train, embed = ModelConfig.of_run(config), config.train, config.embed
    mesh = sharding.make_mesh()
    state = abstract_state(config, mesh)
    with jax.set_mesh(mesh):
        step = traced(config, "step", mesh, train.batch_size, state)
        embedding = traced(config, "embed", mesh, embed.batch_size, state)
        step_flops, embed_flops = lowered_flops(step.lower()), lowered_flops(embedding.lower())
    return Estimate(
        num_devices=mesh.size, resolution=model.resolution, num_channels=model.num_channels,
        batch_size=train.batch_size, embed_batch_size=embed.batch_size, g_params=count(state.g_params),
        d_params=count(state.d_params), step_flops_per_image=step_flops / train.batch_size,
        embed_flops_per_image=embed_flops / embed.batch_size,
        step_bytes_per_device=tree_bytes(step.jaxpr.in_avals) + _peak_bytes(step.jaxpr.jaxpr),
        embed_bytes_per_device=tree_bytes(embedding.jaxpr.in_avals) + _peak_bytes(embedding.jaxpr.jaxpr),
        seconds=time.time() - start, note=note)


@dataclasses.dataclass(frozen=True)
class Measured:
    """One program as XLA compiled it for one device of the slice (all byte and FLOP counts per device)."""

    program: str
    batch: int  # global
    num_devices: int
    fixed_bytes: int  # arguments that do not grow with the batch: the train state, or D's parameters
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # output written into donated arguments (counted once)
    temp_bytes: int
    code_bytes: int
    flops: float
    bytes_accessed: float
    xla_seconds: float  # XLA's own TPU cost model ("optimal_seconds")
    compile_seconds: float
    error: str = ""  # XLA's out-of-memory message: the program does not fit
    required_bytes: float = 0.0  # what XLA said it needed, with `error`

    @property
    def total_bytes(self) -> float:
        if self.error:
            return self.required_bytes
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    def per_image(self, value: float) -> float:
        return value * self.num_devices / self.batch

    def largest_batch(self, usable: float, ok: Callable[[int], bool]) -> int:
        """The largest global batch that `ok` accepts whose memory, scaled from this one, fits `usable` bytes:
        all but the code and the fixed arguments (as laid out on the device: the donated state, where it is
        donated) grows in proportion to the batch. Temporaries hold some batch-independent buffers
        (gradients), so above the compiled batch this errs on the safe side."""
        fixed = max(self.fixed_bytes, self.alias_bytes) + self.code_bytes
        per_image = (self.total_bytes - fixed) / (self.batch / self.num_devices)
        most = int((usable - fixed) // per_image) * self.num_devices if per_image > 0 else 0
        return next((b for b in range(most, 0, -1) if ok(b)), 0)


def _compile(lowered, program: str, batch: int, num_devices: int, fixed: int) -> Measured:
    start = time.time()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        message = str(e).splitlines()[0]
        return Measured(program, batch, num_devices, fixed, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, time.time() - start,
                        error=message, required_bytes=_xla_bytes(_REQUIRED.search(message)) or 0.0)
    mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return Measured(program, batch, num_devices, fixed, mem.argument_size_in_bytes, mem.output_size_in_bytes,
                    mem.alias_size_in_bytes, mem.temp_size_in_bytes, mem.generated_code_size_in_bytes,
                    float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                    float(cost.get("optimal_seconds", 0.0)), time.time() - start)


@contextlib.contextmanager
def _progress(what: str, every: float = 60.0) -> Iterator[None]:
    """Log that `what` started, a line every `every` seconds while it runs, and when it ended."""
    start, done = time.time(), threading.Event()

    def beat():
        while not done.wait(every):
            logging.info("still %s: %.0f min so far", what, (time.time() - start) / 60)

    logging.info("%s ...", what)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        logging.info("%s: done in %.0f s", what, time.time() - start)


# ---------------------------------------------------------------------------------------------------------------
# The report cache


_FORMAT = 1  # of the cached measurements
_PROGRAM_SOURCES = ("models", "train", "features")  # packages whose code shapes the compiled programs


def cache_dir() -> pathlib.Path:
    """$GANDL_COST_CACHE, else ~/.cache/gandl/cost (or under $XDG_CACHE_HOME)."""
    if os.environ.get("GANDL_COST_CACHE"):
        return pathlib.Path(os.environ["GANDL_COST_CACHE"])
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "gandl" / "cost"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of the code the programs are built from (and of how they are built), not of the rest."""
    digest = hashlib.sha256(inspect.getsource(traced).encode())
    root = pathlib.Path(gandl.__file__).parent
    for path in sorted(p for package in _PROGRAM_SOURCES for p in (root / package).rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(config: ml_collections.ConfigDict, program: str, batch: int, tpu: Slice) -> str:
    """Everything that shapes a measurement: the program and its settings, the topology, the versions."""
    parts = dict(
        format=_FORMAT, program=program, batch=batch, topology=tpu.topology, megacore=tpu.chip.megacore,
        model=dataclasses.asdict(ModelConfig.of_run(config)),
        train={k: getattr(config.train, k) for k in step_lib.STEP_FIELDS},
        embed=dict(orientation_average=config.embed.orientation_average, mbstd=config.embed.mbstd),
        versions=dict(jax=jax.__version__, jaxlib=importlib.metadata.version("jaxlib"), libtpu=libtpu_version()),
        code=code_version())
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _cached(key: str) -> dict | None:
    path = cache_dir() / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _store(key: str, entry: dict) -> None:
    path = cache_dir() / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(entry, indent=1, sort_keys=True))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------
# Compiling a config


@dataclasses.dataclass(frozen=True)
class Compiled:
    """A program's measurement with what the report needs besides (kept together in the cache)."""

    measured: Measured
    usable_bytes: float
    g_params: int
    d_params: int
    cached: bool = False


class _Context:
    """The slice's mesh and the config's abstract state, built on first use only (a fully cached check
    needs neither libtpu's topology nor a trace)."""

    def __init__(self, config: ml_collections.ConfigDict, tpu: Slice):
        self.config, self.tpu = config, tpu

    @functools.cached_property
    def mesh(self) -> jax.sharding.Mesh:
        return sharding.make_mesh(list(devices(self.tpu)))

    @functools.cached_property
    def state(self) -> state_lib.TrainState:
        return abstract_state(self.config, self.mesh)

    @functools.cached_property
    def usable(self) -> float:
        return usable_hbm(self.tpu)


def measure(config: ml_collections.ConfigDict, program: str, tpu: Slice, batch: int | None = None,
            context: _Context | None = None) -> Compiled:
    """Compile `program` of `config` for the slice at a global `batch` (default: the config's), or take it
    from the report cache."""
    batch = batch_size(config, program) if batch is None else batch
    key = cache_key(config, program, batch, tpu)
    entry = _cached(key)
    if entry is not None:
        return Compiled(Measured(**entry.pop("measured")), **entry, cached=True)
    context = context or _Context(config, tpu)
    state = context.state
    fixed = tree_bytes(state.d_params if program == "embed" else state)  # replicated: whole on every device
    what = f"compiling the {PROGRAMS[program]} (batch {batch}) for {tpu.name} ({tpu.chip.kind}, {tpu.topology})"
    with _progress(what), jax.set_mesh(context.mesh):
        lowered = traced(config, program, context.mesh, batch, state).lower()
        measured = _compile(lowered, program, batch, tpu.num_devices, fixed)
    result = Compiled(measured, context.usable, count(state.g_params), count(state.d_params))
    entry = dataclasses.asdict(result)
    entry.pop("cached")
    _store(key, entry)
    return result


def fitting_batch(config: ml_collections.ConfigDict, program: str, tpu: Slice, first: Compiled,
                  ok: Callable[[int], bool], tries: int = 4) -> int:
    """A global batch that `ok` accepts and that compiles within HBM, from `first` (a program that does not
    fit): scaled down from its memory, then checked by compiling it; 0 when none is found."""
    context, current = _Context(config, tpu), first
    for _ in range(tries):
        m = current.measured
        target = m.largest_batch(current.usable_bytes, ok)
        if m.batch <= target:  # the scaling would not shrink it: step down
            target = next((b for b in range(m.batch - 1, 0, -1) if ok(b)), 0)
        if target <= 0:
            return 0
        current = measure(config, program, tpu, target, context)
        if not current.measured.error and current.measured.total_bytes <= current.usable_bytes:
            return target
    return 0


@dataclasses.dataclass(frozen=True)
class Roofline:
    """A lower bound on a program's time per device from its FLOPs and HBM bytes at the chip's peak rates."""

    flops_seconds: float
    bytes_seconds: float

    @property
    def seconds(self) -> float:
        return max(self.flops_seconds, self.bytes_seconds)

    @property
    def bound_by(self) -> str:
        return "HBM bandwidth" if self.bytes_seconds >= self.flops_seconds else "FLOPs"


def roofline(measured: Measured, chip: Chip) -> Roofline:
    return Roofline(measured.flops / chip.per_device(chip.peak_flops),
                    measured.bytes_accessed / chip.per_device(chip.hbm_bandwidth))


def regularised_fraction(train: Train) -> float:
    """The fraction of steps on which every enabled lazy regulariser is due (the whole step runs)."""
    intervals = [max(train.pl_interval, 1)] if train.pl_weight > 0 else []
    if train.r1_gamma > 0 or train.lipschitz_weight > 0:
        intervals.append(max(train.r1_interval, 1))
    return 1.0 / math.lcm(*intervals) if intervals else 1.0


@dataclasses.dataclass(frozen=True)
class Report:
    """What the config's programs cost on a TPU slice, as XLA compiled them for it."""

    tpu: Slice
    model: ModelConfig
    train: Train
    programs: dict  # name -> Compiled, in PROGRAMS order
    largest: dict  # name -> the largest valid global batch that fits
    seconds: float

    @property
    def usable_bytes(self) -> float:
        return next(iter(self.programs.values())).usable_bytes

    def over(self) -> list[Compiled]:
        """The programs that do not fit the slice's HBM."""
        return [c for c in self.programs.values() if c.measured.error or c.measured.total_bytes > c.usable_bytes]

    def amortised(self) -> tuple[float, float] | None:
        """(seconds per step, images/s): a bound over the lazy-regularisation schedule, from the step with
        every phase due on the steps where all regularisers are, and the main-only step on every other
        (which costs at least that). None unless both steps were compiled."""
        if not {"step", "main_step"} <= set(self.programs):
            return None
        full, main = (roofline(self.programs[p].measured, self.tpu.chip).seconds for p in ("step", "main_step"))
        f = regularised_fraction(self.train)
        seconds = f * full + (1 - f) * main
        return seconds, self.train.batch_size / seconds

    def __str__(self) -> str:
        chip, first = self.tpu.chip, next(iter(self.programs.values()))
        cached = sum(c.cached for c in self.programs.values())
        per = "chip (2 cores as one device)" if chip.megacore else ("core" if chip.cores > 1 else "chip")
        lines = [
            f"config check passed for {self.tpu.name} ({self.tpu.num_devices} x {chip.kind}, topology "
            f"{self.tpu.topology}): compiled by XLA for it with libtpu {libtpu_version()}, in {self.seconds:,.0f} s"
            + (f" ({cached} of {len(self.programs)} programs from the report cache {cache_dir()})" if cached else ""),
            f"  model: {self.model.resolution} px x {self.model.num_channels} channels, {self.model.dtype}; "
            f"G {first.g_params:,} parameters, D {first.d_params:,}",
            f"  memory per {per}, of the {self.usable_bytes / GIB:.2f} GiB of HBM XLA lets a program use "
            f"({chip.per_device(chip.hbm_bytes) / GIB:.2f} GiB published):",
            f"    {'program':<30} {'batch':>6} {'arguments':>10} {'temporaries':>12} {'output':>7} {'total':>7} "
            f"{'of HBM':>7} {'GFLOP/image':>12} {'GiB accessed':>13} {'largest batch':>14}"]
        for name, c in self.programs.items():
            m = c.measured
            row = f"    {PROGRAMS[name]:<30} {m.batch:>6}"
            if m.error:
                lines.append(f"{row}  does not fit: {m.error}")
                continue
            lines.append(
                f"{row} {m.argument_bytes / GIB:>10.2f} {m.temp_bytes / GIB:>12.2f} {m.output_bytes / GIB:>7.2f} "
                f"{m.total_bytes / GIB:>7.2f} {m.total_bytes / c.usable_bytes:>7.0%} "
                f"{m.per_image(m.flops) / 1e9:>12,.1f} {m.bytes_accessed / GIB:>13,.1f} {self.largest[name]:>14,}")
        lines.append("    (GiB per device; output written into donated arguments is counted once in the total; "
                     "largest batch: the memory beyond the fixed arguments scaled with the batch, on the safe side)")
        peak, bandwidth = chip.per_device(chip.peak_flops), chip.per_device(chip.hbm_bandwidth)
        lines.append(f"  roofline, a lower bound on time (not a prediction): per device {peak / 1e12:.1f} TFLOP/s and "
                     f"{bandwidth / 1e9:,.0f} GB/s of HBM, from the published {chip.peak_flops / 1e12:g} bf16 TFLOP/s "
                     f"and {chip.hbm_bandwidth / 1e9:,.0f} GB/s per chip")
        for name, c in self.programs.items():
            if c.measured.error:
                continue
            r, m = roofline(c.measured, chip), c.measured
            unit = "sites/s" if name == "embed" else "images/s"
            lines.append(f"    {PROGRAMS[name]:<30} >= {r.seconds * 1e3:,.1f} ms, <= {m.batch / r.seconds:,.0f} {unit} "
                         f"(bound by {r.bound_by}; FLOPs alone {r.flops_seconds * 1e3:,.1f} ms, bytes alone "
                         f"{r.bytes_seconds * 1e3:,.1f} ms; XLA's own TPU cost model "
                         + (f"{m.xla_seconds * 1e3:,.1f} ms)" if m.xla_seconds > 0 else "gives no time for this chip)"))
        amortised = self.amortised()
        if amortised:
            seconds, rate = amortised
            every = round(1 / regularised_fraction(self.train))
            lines.append(f"    {'training, amortised':<30} >= {seconds * 1e3:,.1f} ms per step, <= {rate:,.0f} "
                         f"images/s = {rate * DAY / 1e6:,.1f} M images a day (every phase due on 1 step in {every}, "
                         "the main phases' bound on the others)")
        return "\n".join(lines)


def compile_report(config: ml_collections.ConfigDict, tpu: Slice, programs: tuple[str, ...],
                   batch_ok: dict[str, Callable[[int], bool]]) -> Report:
    """Compile (or take from the report cache) each of `programs` for the slice; `batch_ok[program]` says
    which global batches the config's rules allow, for the largest batch that fits."""
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise ValueError(f"unknown programs {unknown}; choose from {sorted(PROGRAMS)}")
    start, context = time.time(), _Context(config, tpu)
    compiled = {p: measure(config, p, tpu, context=context) for p in PROGRAMS if p in programs}
    largest = {p: c.measured.largest_batch(c.usable_bytes, batch_ok[p]) if not c.measured.error else 0
               for p, c in compiled.items()}
    return Report(tpu, ModelConfig.of_run(config), Train.from_mapping(config.train), compiled, largest,
                  time.time() - start)
