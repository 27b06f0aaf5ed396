"""The config check, run before any work: will this config run on these devices, and what will it cost?

`validate` tests the config against a device count (pure: no JAX computation), collecting every failure as
one message that names the field, its value, the device count and a value that would work. For a TPU type
(`--devices=v3-8`) with libtpu installed, `run` then has XLA compile the real programs for that slice's
topology (`gandl.cost`): per-core memory, FLOPs, bytes and a roofline bound, from the executable itself; a
config that does not fit in HBM is refused, naming a batch that does. Otherwise `trace` traces one full
training step (G main, G reg, D main, D reg, EMA) and one embedding batch abstractly at the config's real
size (`jax.jit(...).trace(...).lower()` on shapes only: nothing is compiled or run) and reports parameter
counts, per-image FLOPs from XLA's cost analysis of the lowered programs, and an estimate of per-device
memory. `gandl.main` calls `run` first in every mode (`--mode check` alone), `gandl.sweep` validates every
run before launching any, and `launch/tpu.sh` checks the config it would launch for the TPU type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import jax
import ml_collections

from gandl import cost
from gandl.data.rxrx import STAINS, channel_map
from gandl.models.config import ModelConfig
from gandl.train import loop, sharding

_GLOB = re.compile(r"[*?\[]")


class ConfigCheckError(ValueError):
    """A config that cannot run on the devices it was checked for; lists every failure."""

    def __init__(self, failures: list[str], num_devices: int):
        self.failures = failures
        self.num_devices = num_devices
        lines = "\n".join(f"  - {f}" for f in failures)
        super().__init__(f"the config cannot run on {num_devices} device(s); {len(failures)} problem(s):\n{lines}")


def device_count(devices: str = "") -> int:
    """The device count a `--devices` value names: '' = JAX's own count, an integer, or a TPU type (v3-8)."""
    if not devices:
        return jax.device_count()
    if devices.isdigit() and int(devices) > 0:
        return int(devices)
    return cost.tpu_slice(devices).num_devices


def simulate_devices(n: int) -> None:
    """Make JAX see `n` CPU devices, to check a config for a machine this one is not (before any JAX use, or
    with JAX already running on `n` CPU devices)."""
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX has started: its devices must already be the ones asked for
        pass
    if jax.device_count() != n or jax.devices()[0].platform != "cpu":
        raise RuntimeError(f"cannot simulate {n} devices: JAX already runs on {jax.device_count()} "
                           "(XLA_FLAGS --xla_force_host_platform_device_count, or JAX used before the check)")


# ---------------------------------------------------------------------------------------------------------------
# Validation


def _record_side(config: ml_collections.ConfigDict, shards: str, root: str) -> tuple[int, str] | None:
    """(side in px, the field that sets it) of a record set, when the config says; None when unknown."""
    if shards and _GLOB.search(shards):
        return config.data.rxrx1_utils_image_size, "data.rxrx1_utils_image_size"
    if shards and not config.data.image_size:
        return None  # converted elsewhere, at a size the config does not state
    if config.data.image_size:
        return config.data.image_size, "data.image_size"
    return (config.synthetic.image_size, "synthetic.image_size") if not root else None


def _source_channels(d: ml_collections.ConfigDict) -> int | None:
    """Channels of the training records before data.channels picks from them; None when unknown."""
    if d.shards and _GLOB.search(d.shards):
        return len(STAINS["rxrx1"])  # rxrx1-utils records
    if d.kind == "generic":
        return len(d.channel_columns) or None
    return len(STAINS[d.kind]) if d.kind in STAINS else None


def _suggest(value: int, ok) -> int:
    """The smallest value >= `value` (>= 1) that satisfies `ok`."""
    v = max(value, 1)
    while not ok(v):
        v += 1
    return v


def _batch_ok(batch: int, n: int, group: int, shrink: int | None) -> bool:
    """Whether a global batch splits into whole mbstd groups per device (and its path-length share too)."""
    g = min(group, batch) or 1
    if batch % n or batch % g or (batch // g) % n:
        return False
    return shrink is None or (batch // shrink >= 1 and (batch // shrink) % n == 0)


def _size_failures(side: tuple[int, str] | None, crop: int, res: int, n: int, what: str) -> Iterator[str]:
    if side is None:
        return
    size, field = side
    if crop and crop > size:
        yield f"data.crop_size={crop}: larger than the {size}-px {what} ({field}) on {n} device(s); use at most {size}"
        return
    src, src_field = (crop, "data.crop_size") if crop else (size, field)
    if src < res or src % res:
        fits = [r for r in (src // k for k in range(1, src + 1) if src % k == 0) if r >= 8 and r & (r - 1) == 0]
        yield (f"{src_field}={src}: the {what} ({src} px) cannot be area-downscaled to model.resolution={res} by a "
               f"whole factor on {n} device(s); use {src_field}={res * max(1, math.ceil(src / res))} or "
               f"model.resolution={fits[0] if fits else 'a power of two dividing it'}")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
    """Every reason `config` cannot run on `num_devices` devices (empty: it can), one message each."""
    n = num_devices
    d, t, e, z = config.data, config.train, config.embed, config.zeroshot
    try:
        model = ModelConfig.from_mapping(config.model)
    except (TypeError, ValueError) as err:
        return [f"model: {err} (on {n} device(s)); fix the model section"]
    res, failures = model.resolution, []

    # Sizes: conversion never upscales; records reach the model by a whole area-downscale factor.
    synthetic_used = (not d.root and not d.shards) or (z.enabled and not z.root and not z.shards)
    if synthetic_used and d.image_size > config.synthetic.image_size:
        failures.append(f"data.image_size={d.image_size}: conversion would upscale the "
                        f"{config.synthetic.image_size}-px synthetic screen (synthetic.image_size) on {n} device(s); "
                        f"use data.image_size<={config.synthetic.image_size} or synthetic.image_size={d.image_size}")
    failures += _size_failures(_record_side(config, d.shards, d.root), d.crop_size, res, n, "training records")
    if z.enabled:
        zside = _record_side(config, z.shards, z.root)
        if zside != _record_side(config, d.shards, d.root):  # the same sizes are reported once
            failures += _size_failures(zside, d.crop_size, res, n, "zero-shot records")

    # Channels: the data's (after data.channels) and the zero-shot map's must be the model's.
    source = _source_channels(d)
    if d.channels:
        bad = [c for c in d.channels if source and not 1 <= c <= source]
        if bad:
            failures.append(f"data.channels={tuple(d.channels)}: channels {bad} do not exist in the {source}-channel "
                            f"{d.kind} data on {n} device(s); use 1-based channels in 1..{source}")
        elif len(d.channels) != model.num_channels:
            failures.append(f"data.channels={tuple(d.channels)}: {len(d.channels)} channels for a "
                            f"model.num_channels={model.num_channels} model on {n} device(s); name "
                            f"{model.num_channels} channels or set model.num_channels={len(d.channels)}")
    elif source and source != model.num_channels:
        failures.append(f"model.num_channels={model.num_channels}: the {d.kind} data has {source} channels on {n} "
                        f"device(s); use model.num_channels={source} or pick {model.num_channels} with data.channels")
    if z.enabled:
        zchannels = tuple(z.channels) or channel_map("rxrx1", "rxrx19a")
        rxrx1 = len(STAINS["rxrx1"])
        if len(zchannels) != model.num_channels or not all(1 <= c <= rxrx1 for c in zchannels):
            failures.append(f"zeroshot.channels={tuple(z.channels)}: maps to {zchannels}, but the zero-shot set "
                            f"(RxRx1, {rxrx1} channels) must feed model.num_channels={model.num_channels} on {n} "
                            f"device(s); give {model.num_channels} channels in 1..{rxrx1}, e.g. "
                            f"{channel_map('rxrx1', 'rxrx19a')} for a 5-channel model")

    # Batches: whole mbstd groups per device (D main, D reg), the path-length share per device (G reg).
    shrink = t.pl_batch_shrink if t.pl_weight > 0 else None
    group = model.mbstd_group_size
    if t.pl_weight > 0 and t.pl_batch_shrink < 1:
        failures.append(f"train.pl_batch_shrink={t.pl_batch_shrink}: must be >= 1 on {n} device(s); use 2")
    elif not _batch_ok(t.batch_size, n, group, shrink):
        per = t.batch_size / n
        why = (f"{per:g} images per device" if t.batch_size % n else
               f"{int(per)} images per device hold no whole minibatch-stddev groups of model.mbstd_group_size={group}"
               + (f" or path-length batches (/ train.pl_batch_shrink={t.pl_batch_shrink})" if shrink else ""))
        alt = [g for g in range(group - 1, 0, -1) if _batch_ok(t.batch_size, n, g, shrink)]
        failures.append(f"train.batch_size={t.batch_size}: {why} on {n} device(s); use train.batch_size="
                        f"{_suggest(t.batch_size, lambda b: _batch_ok(b, n, group, shrink))}"
                        + (f" (or model.mbstd_group_size={alt[0]})" if alt else ""))
    if e.batch_size % n:
        failures.append(f"embed.batch_size={e.batch_size}: does not split over {n} device(s); use embed.batch_size="
                        f"{_suggest(e.batch_size, lambda b: b % n == 0)}")
    # A probed step must have a checkpoint (kept: keep_period) for embed.step to name it.
    if t.probe_every and t.probe_every % t.checkpoint_every:
        fix = t.checkpoint_every * max(1, round(t.probe_every / t.checkpoint_every))
        failures.append(f"train.probe_every={t.probe_every}: not a multiple of train.checkpoint_every="
                        f"{t.checkpoint_every}, so probed steps would have no checkpoint to embed (on {n} device(s)); "
                        f"use train.probe_every={fix}")
    return failures


# ---------------------------------------------------------------------------------------------------------------
# The check


def run(config: ml_collections.ConfigDict, devices: str = "", programs: tuple[str, ...] = ()
        ) -> cost.Report | cost.Estimate:
    """Validate `config` for its devices (raising `ConfigCheckError` with every failure), then cost it.

    `devices` ('' = this machine's; a count or a TPU type: simulated on this CPU) is resolved after
    jax.distributed has started (per `train.distributed`), so a pod slice counts all of its devices. For a
    TPU type with libtpu installed, `programs` (of `cost.PROGRAMS`) are compiled for its topology and a
    config whose programs do not fit in HBM is refused; otherwise the programs are traced and estimated.
    """
    tpu = cost.tpu_slice(devices) if devices and not devices.isdigit() else None
    if devices:
        simulate_devices(device_count(devices))
    else:
        sharding.initialize_distributed(config.train.distributed)
    n = jax.device_count()
    failures = validate(config, n)
    if failures:
        raise ConfigCheckError(failures, n)
    if tpu is None or not programs:
        return cost.estimate(config)
    if cost.libtpu_version() is None:
        return cost.estimate(config, note=f"libtpu is not installed (pip install -e \".[tpu]\"), so nothing was "
                                          f"compiled for {tpu.name}")
    model, t = loop.model_config(config), config.train
    shrink = t.pl_batch_shrink if t.pl_weight > 0 else None
    train_ok = lambda b: _batch_ok(b, n, model.mbstd_group_size, shrink)  # noqa: E731
    batch_ok = dict(step=train_ok, main_step=train_ok, embed=lambda b: b % n == 0)
    report = cost.compile_report(config, tpu, programs, batch_ok)
    failures = [_over_budget(config, tpu, c, batch_ok[c.measured.program]) for c in report.over()]
    if failures:
        raise ConfigCheckError(failures, n)
    return report


def _over_budget(config: ml_collections.ConfigDict, tpu: cost.Slice, compiled: cost.Compiled, ok) -> str:
    """The message for a program that does not fit the slice's HBM, with a batch that does (compiled to see)."""
    m = compiled.measured
    field = cost.BATCH_FIELDS[m.program]
    fits = cost.fitting_batch(config, m.program, tpu, compiled, ok)
    fix = f"use {field}={fits}" if fits else "no batch fits: use model.dtype=bfloat16, a smaller model or a larger TPU"
    return (f"{field}={m.batch}: the {cost.PROGRAMS[m.program]} needs {m.total_bytes / cost.GIB:.2f} GiB per device, "
            f"over the {compiled.usable_bytes / cost.GIB:.2f} GiB of HBM XLA can use on a {tpu.chip.kind} device "
            f"({tpu.name}, {tpu.num_devices} devices); {fix}")
