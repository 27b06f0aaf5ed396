"""The config check, run before any work: will this config run on these devices, and what will it cost?

`validate` tests the config against a device count (pure: this module imports no JAX, so the field and device
checks of a sweep or a launch script start in a second; only `run`'s tracing, compiling and device count load it,
in `gandl.cost`), collecting every failure as
one message that names the field, its value and a value that would work: first every field against its rule
(`RULES`: every config field has one, and a field without one is refused as unknown), then what depends on
the devices and on several fields at once. For a TPU type (`--devices=v3-8`) with libtpu installed, `run`
then has XLA compile the real programs for that slice's topology (`gandl.cost`): per-core memory, FLOPs,
bytes and a roofline bound, from the executable itself; a config that does not fit in HBM is refused,
naming a batch that does. Otherwise it traces one full training step and one embedding batch on shapes
alone (`cost.estimate`): parameter counts, per-image FLOPs from XLA's cost analysis of the lowered
programs, and an estimate of per-device memory. `gandl.main` calls `run` first in every mode (`--mode
check` alone), `gandl.sweep` validates every run before launching any, and `launch/tpu.sh` checks the
config it would launch for the TPU type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import ml_collections

from gandl import errors
from gandl.data import screen
from gandl.data.synthetic.layouts import CONTROL_LAYOUTS
from gandl.data.vocabulary import STAINS, zeroshot_channels
from gandl.defaults import (
    POWER_OF_TWO,
    RETIRED,
    SHARDS_PATTERN,
    Config,
    Model,
    Rule,
    base_config,
    model_resolution,
    records_side,
    rules,
)
from gandl.features import registry

if TYPE_CHECKING:
    from gandl import cost



class ConfigCheckError(errors.ConfigError, ValueError):
    """A config that cannot run on the devices it was checked for; lists every failure."""

    def __init__(self, failures: list[str], num_devices: int | None = None):
        self.failures = failures
        self.num_devices = num_devices  # None: found by the field rules alone, on no device count
        lines = "\n".join(f"  - {f}" for f in failures)
        on = f" on {num_devices} device(s)" if num_devices is not None else ""
        super().__init__(f"the config cannot run{on}; {len(failures)} problem(s):\n{lines}")


def device_count(devices: str = "") -> int:
    """The device count a `--devices` value names: '' = JAX's own count, an integer, or a TPU type (v3-8)."""
    import jax  # the field and device checks (validate) run without JAX; counting needs it

    from gandl import cost
    if not devices:
        return jax.device_count()
    if devices.isdigit() and int(devices) > 0:
        return int(devices)
    return cost.tpu_slice(devices).num_devices


def simulate_devices(n: int) -> None:
    """Make JAX see `n` CPU devices, to check a config for a machine this one is not (before any JAX use, or
    with JAX already running on `n` CPU devices)."""
    import jax
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX has started: its devices must already be the ones asked for
        pass
    if jax.device_count() != n or jax.devices()[0].platform != "cpu":
        raise RuntimeError(f"cannot simulate {n} devices: JAX already runs on {jax.device_count()} "
                           "(XLA_FLAGS --xla_force_host_platform_device_count, or JAX used before the check)")


# ---------------------------------------------------------------------------------------------------------------
# Field rules


# Every config field (dotted path) and its rule, from the schema (gandl.defaults) with the registries its
# `registered` rules name bound here, above every layer that owns one; `validate` refuses a field without one as
# unknown.
REGISTRIES: dict[str, Collection[str]] = {"readers": screen.READERS, "presets": screen.PRESETS,
                                          "extractors": registry.EXTRACTORS, "control_layouts": CONTROL_LAYOUTS}
RULES: dict[str, Rule] = rules(REGISTRIES)


def fields(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a config as {dotted path: value} (sections are walked, tuples are values)."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):  # a section (ConfigDict or dict)
            out.update(fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _field_failures(config: ml_collections.ConfigDict) -> dict[str, str]:
    """{field: message} for every field whose value breaks its rule, or that has no rule."""
    defaults = fields(base_config())
    failures = {}
    for field, value in fields(config).items():
        rule = RULES.get(field)
        if rule is None:
            failures[field] = (f"{field}={value!r}: retired; use {RETIRED[field]}" if field in RETIRED else
                               f"{field}={value!r}: not a GAN-DL setting (no rule in gandl.check.RULES); remove it")
        elif not rule.ok(value):
            default = defaults.get(field, rule.example)
            good = default if rule.ok(default) else rule.example
            failures[field] = f"{field}={value!r}: must be {rule.wanted}; use {field}={good!r}"
    return failures


def check_fields(config: ml_collections.ConfigDict) -> Config:
    """The typed config the stages receive, once every field holds to its rule: each that breaks one is refused
    (`ConfigCheckError`) before any data is read or device counted, so a setting that cannot be (train.steps=-5)
    is said first, not hidden behind the data it would have read."""
    failures = list(_field_failures(config).values())
    if failures:
        raise ConfigCheckError(failures)
    try:
        return Config.from_mapping(config)
    except ValueError as error:  # a rule across a section's fields that it holds itself to (the model's)
        raise ConfigCheckError([str(error)]) from None


# ---------------------------------------------------------------------------------------------------------------
# Validation


def _source_channels(data: ml_collections.ConfigDict) -> int | None:
    """Channels of the training records before data.channels picks from them; None when unknown."""
    if data.shards and SHARDS_PATTERN.search(data.shards):
        return len(STAINS["rxrx1"])  # rxrx1-utils records
    return screen.channel_count(screen.Source.from_config(data))


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
    """Every reason `config` cannot run on `num_devices` devices (empty: it can), one message each.

    Every field is held to its rule first; a check across fields runs only when the fields it reads passed.
    """
    bad = _field_failures(config)
    failures = list(bad.values())
    if any(field.startswith("model.") for field in bad):
        return failures

    def ok(*names: str) -> bool:
        """Whether the fields a check reads passed their rules (a broken one is reported already)."""
        return not any(name in bad for name in names)

    if config.model.resolution is None:  # the model takes the training records' side
        if not ok("data.image_size", "data.crop_size", "data.shards", "data.root", "synthetic.image_size",
                  "data.rxrx1_utils_image_size"):
            return failures
        side = model_resolution(config)
        if side is None:
            return [*failures, "model.resolution=None: the config does not say the training records' side "
                               f"(data.shards converted elsewhere, or data.image_size=0 keeping each source's) on "
                               f"{num_devices} device(s); set model.resolution"]
        if not POWER_OF_TWO.ok(side):
            field = "data.crop_size" if config.data.crop_size else records_side(config, config.data.shards,
                                                                                 config.data.root)[1]
            return [*failures, f"{field}={side}: the model takes the training records' side unless model.resolution "
                               f"is set, and {side} px is not a power of two >= 8 (on {num_devices} device(s)); use "
                               f"{field}={2 ** max(3, round(math.log2(side)))} or set model.resolution"]
    try:
        model = Model.of_run(config)
    except (TypeError, ValueError) as err:
        return [*failures, f"model: {err} (on {num_devices} device(s)); fix the model section"]

    for check in (_size_failures_across, _channel_failures, _batch_failures, _objective_failures,
                  _reference_failures):
        failures += check(config, model, num_devices, ok)
    return failures


def _size_failures_across(config: ml_collections.ConfigDict, model: Model, n: int,
                          ok: Callable[..., bool]) -> list[str]:
    """Conversion never upscales; records reach the model by a whole area-downscale factor."""
    data, zeroshot, synthetic = config.data, config.zeroshot, config.synthetic
    if not ok("data.image_size", "synthetic.image_size", "data.crop_size", "data.rxrx1_utils_image_size"):
        return []
    failures = []
    synthetic_used = (not data.root and not data.shards) or (zeroshot.enabled and not zeroshot.root
                                                              and not zeroshot.shards)
    if synthetic_used and data.image_size > synthetic.image_size:
        failures.append(f"data.image_size={data.image_size}: conversion would upscale the "
                        f"{synthetic.image_size}-px synthetic screen (synthetic.image_size) on {n} device(s); "
                        f"use data.image_size<={synthetic.image_size} or synthetic.image_size={data.image_size}")
    side = records_side(config, data.shards, data.root)
    failures += _size_failures(side, data.crop_size, model.resolution, n, "training records")
    if zeroshot.enabled:
        zside = records_side(config, zeroshot.shards, zeroshot.root)
        if zside != side:  # the same sizes are reported once
            failures += _size_failures(zside, data.crop_size, model.resolution, n, "zero-shot records")
    return failures


def _channel_failures(config: ml_collections.ConfigDict, model: Model, n: int,
                      ok: Callable[..., bool]) -> list[str]:
    """The data's channels (after data.channels) and the zero-shot map's must be the model's."""
    data, zeroshot, failures = config.data, config.zeroshot, []
    source = _source_channels(data) if ok("data.kind", "data.channel_columns") else None
    if ok("data.channels") and data.channels:
        missing = [c for c in data.channels if source and not 1 <= c <= source]
        if missing:
            failures.append(f"data.channels={tuple(data.channels)}: channels {missing} do not exist in the "
                            f"{source}-channel {data.kind} data on {n} device(s); use 1-based channels in 1..{source}")
        elif len(data.channels) != model.num_channels:
            failures.append(f"data.channels={tuple(data.channels)}: {len(data.channels)} channels for a "
                            f"model.num_channels={model.num_channels} model on {n} device(s); name "
                            f"{model.num_channels} channels or set model.num_channels={len(data.channels)}")
    elif ok("data.channels") and source and source != model.num_channels:
        failures.append(f"model.num_channels={model.num_channels}: the {data.kind} data has {source} channels on {n} "
                        f"device(s); use model.num_channels={source} or pick {model.num_channels} with data.channels")
    if zeroshot.enabled and ok("zeroshot.channels"):
        zchannels = zeroshot_channels(zeroshot.channels)
        rxrx1 = len(STAINS["rxrx1"])
        if len(zchannels) != model.num_channels or not all(1 <= c <= rxrx1 for c in zchannels):
            failures.append(f"zeroshot.channels={tuple(zeroshot.channels)}: maps to {zchannels}, but the zero-shot "
                            f"set (RxRx1, {rxrx1} channels) must feed model.num_channels={model.num_channels} on {n} "
                            f"device(s); give {model.num_channels} channels in 1..{rxrx1}"
                            + (f", e.g. {zeroshot_channels(())}" if model.num_channels == 5 else
                               ", or zeroshot.enabled=False: the zero-shot set is an RxRx1-layout screen"))
    return failures


def _batch_failures(config: ml_collections.ConfigDict, model: Model, n: int,
                    ok: Callable[..., bool]) -> list[str]:
    """Whole mbstd groups per device (D main, D reg), the path-length share per device (G reg); embed batches
    split over the devices; a probed step has a checkpoint (kept: keep_period) for embed.step to name."""
    train, embed, failures = config.train, config.embed, []
    shrink = train.pl_batch_shrink if train.pl_weight > 0 else None
    group = model.mbstd_group_size
    if (ok("train.batch_size", "train.pl_weight", "train.pl_batch_shrink")
            and not _batch_ok(train.batch_size, n, group, shrink)):
        per = train.batch_size / n
        why = (f"{per:g} images per device" if train.batch_size % n else
               f"{int(per)} images per device hold no whole minibatch-stddev groups of model.mbstd_group_size={group}"
               + (f" or path-length batches (/ train.pl_batch_shrink={train.pl_batch_shrink})" if shrink else ""))
        alt = [g for g in range(group - 1, 0, -1) if _batch_ok(train.batch_size, n, g, shrink)]
        failures.append(f"train.batch_size={train.batch_size}: {why} on {n} device(s); use train.batch_size="
                        f"{_suggest(train.batch_size, lambda b: _batch_ok(b, n, group, shrink))}"
                        + (f" (or model.mbstd_group_size={alt[0]})" if alt else ""))
    if ok("embed.batch_size") and embed.batch_size % n:
        failures.append(f"embed.batch_size={embed.batch_size}: does not split over {n} device(s); use "
                        f"embed.batch_size={_suggest(embed.batch_size, lambda b: b % n == 0)}")
    probe, every = train.probe_every, train.checkpoint_every
    if ok("train.probe_every", "train.checkpoint_every") and probe and probe % every:
        failures.append(f"train.probe_every={probe}: not a multiple of train.checkpoint_every={every}, so probed "
                        f"steps would have no checkpoint to embed (on {n} device(s)); use train.probe_every="
                        f"{every * max(1, round(probe / every))}")
    return failures


def _objective_failures(config: ml_collections.ConfigDict, model: Model, n: int,
                        ok: Callable[..., bool]) -> list[str]:
    """The contrastive objective augments its own two views (every transform, p = 1) and has no D(real) signs for
    ADA to steer by: another augmentation would be ignored, so it is refused."""
    train = config.train
    if ok("train.objective", "train.augment") and train.objective == "contrastive" and train.augment != "none":
        return [f"train.augment={train.augment!r}: the contrastive objective augments its own views and has no "
                f"D(real) for ADA (on {n} device(s)); use train.augment='none' with train.objective='contrastive'"]
    return []


def _reference_failures(config: ml_collections.ConfigDict, model: Model, n: int,
                        ok: Callable[..., bool]) -> list[str]:
    """More than one initialisation of the random-init reference needs a random-init set to draw again."""
    embed = config.embed
    if (ok("embed.reference_inits", "embed.feature_sets") and embed.reference_inits > 1
            and not any(registry.get(name).drawn for name in embed.feature_sets)):
        return [f"embed.reference_inits={embed.reference_inits}: embed.feature_sets lists no random-init set to draw "
                f"again (on {n} device(s)); add one of {', '.join(registry.drawn_sets())} or use "
                "embed.reference_inits=1"]
    return []


# ---------------------------------------------------------------------------------------------------------------
# The check


def run(config: ml_collections.ConfigDict, devices: str = "", programs: tuple[str, ...] = (), traced: bool = True
        ) -> cost.Report | cost.Estimate | None:
    """Validate `config` for its devices (raising `ConfigCheckError` with every failure), then cost it (unless
    not `traced`: for modes that run no model).

    `devices` ('' = this machine's; a count or a TPU type: simulated on this CPU) is resolved after
    jax.distributed has started (per `train.distributed`), so a pod slice counts all of its devices. For a
    TPU type with libtpu installed, `programs` (of `cost.PROGRAMS`) are compiled for its topology and a
    config whose programs do not fit in HBM is refused; otherwise the programs are traced and estimated.
    """
    import jax  # tracing and compiling are `gandl.cost`'s, and only this step needs them

    from gandl import cost, sharding

    tpu = cost.tpu_slice(devices) if devices and not devices.isdigit() else None
    if devices:
        simulate_devices(device_count(devices))
    elif "train.distributed" not in _field_failures(config):  # a bad mode is reported below, with every other
        sharding.initialize_distributed(config.train.distributed)
    n = jax.device_count()
    failures = validate(config, n)
    if failures:
        raise ConfigCheckError(failures, n)
    if not traced:
        return None
    if tpu is None or not programs:
        return cost.estimate(config)
    if cost.libtpu_version() is None:
        return cost.estimate(config, note=f"libtpu is not installed (pip install -e \".[tpu]\"), so nothing was "
                                          f"compiled for {tpu.name}")
    model, t = Model.of_run(config), config.train
    shrink = t.pl_batch_shrink if t.pl_weight > 0 else None
    train_ok = lambda b: _batch_ok(b, n, model.mbstd_group_size, shrink)  # noqa: E731
    batch_ok = dict(step=train_ok, main_step=train_ok, embed=lambda b: b % n == 0)
    report = cost.compile_report(config, tpu, programs, batch_ok)
    failures = [_over_budget(config, tpu, c, batch_ok[c.measured.program]) for c in report.over()]
    if failures:
        raise ConfigCheckError(failures, n)
    return report


def _over_budget(config: ml_collections.ConfigDict, tpu: cost.Slice, compiled: cost.Compiled, ok) -> str:
    from gandl import cost
    """The message for a program that does not fit the slice's HBM, with a batch that does (compiled to see)."""
    m = compiled.measured
    field = cost.BATCH_FIELDS[m.program]
    fits = cost.fitting_batch(config, m.program, tpu, compiled, ok)
    fix = f"use {field}={fits}" if fits else "no batch fits: use model.dtype=bfloat16, a smaller model or a larger TPU"
    return (f"{field}={m.batch}: the {cost.PROGRAMS[m.program]} needs {m.total_bytes / cost.GIB:.2f} GiB per device, "
            f"over the {compiled.usable_bytes / cost.GIB:.2f} GiB of HBM XLA can use on a {tpu.chip.kind} device "
            f"({tpu.name}, {tpu.num_devices} devices); {fix}")
