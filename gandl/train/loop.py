"""The training loop: input, jitted steps, logging, samples, SWD, checkpoints, preemption, NaN guard.

Resuming is exact: the state (parameters, optimizer moments, EMA, path-length mean, PRNG key) comes
from the checkpoint, and the input stream is a pure function of (seed, step): every `checkpoint_every`
steps it restarts from a seed derived from the step, so a run resumed at step s reads the same batches
as one that never stopped. Host synchronisation happens only at log, sample and checkpoint steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gandl import defaults, fileio, sharding
from gandl import workdir as layout
from gandl._tf import tf
from gandl.data import pipeline, render
from gandl.defaults import Train
from gandl.models import build_models
from gandl.models.config import ModelConfig
from gandl.train import checkpoint, swd
from gandl.train import state as state_lib
from gandl.train import step as step_lib

InputFn = Callable[[int], Iterator[np.ndarray]]  # start step -> this process's batches of images
# (step, D parameters) -> scalars to log: a probe of D's features, called every train.probe_every steps.
ProbeFn = Callable[[int, object], dict[str, float]]
LOSSES = ("g_loss", "d_loss", "contrastive_loss")  # a non-finite one stops the run


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or parameter; the last checkpoint on disk predates it and is intact."""


@functools.lru_cache(maxsize=8)
def compiled_step(model: ModelConfig, step_config: Train, mesh: jax.sharding.Mesh):
    """The jitted train step (`step_config`: `step.step_config`'s), cached so that reruns in one process
    (notebooks, tests) reuse the build."""
    generator, discriminator = build_models(model)
    return jax.jit(step_lib.make_train_step(generator, discriminator, step_config), donate_argnums=0)


@functools.lru_cache(maxsize=8)
def _compiled_sampler(model: ModelConfig):
    generator, _ = build_models(model)
    return jax.jit(lambda params, buffers, latents: generator.apply(
        {"params": params, "buffers": buffers}, latents, noise_mode="const"))


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.floating)]))


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What the loop reads of a run's config, typed once at the train stage's boundary (`from_config`)."""

    model: ModelConfig
    train: Train  # config.train: schedule, optimisers, regularisers, checkpoints
    inputs: pipeline.InputOptions  # how the records become training images
    seed: int
    shards: str  # the records trained on (gandl.workdir.shards)
    rxrx1_utils_image_size: int  # the image side of rxrx1-utils records, when `shards` names such
    preview: tuple[int, int]  # (images, columns) of the EMA sample grids
    record: Mapping[str, Any]  # the whole config, saved with every checkpoint (the embed stage restores from it)

    @classmethod
    def from_config(cls, config: defaults.Config, workdir: str) -> TrainSettings:
        return cls(ModelConfig.of_run(config), config.train,
                   pipeline.InputOptions.from_config(config), config.seed, layout.shards(config.data.shards, workdir),
                   config.data.rxrx1_utils_image_size, (config.preview.num_images, config.preview.cols),
                   defaults.values(config))


def shard_input_fn(settings: TrainSettings, spec: pipeline.RecordSpec, process_index: int | None = None,
                   process_count: int | None = None) -> InputFn:
    """Batches of one process (default: this one) from its files, restarted every `checkpoint_every` steps."""
    schedule = settings.train
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local = sharding.local_batch_size(schedule.batch_size, process_count)
    files = pipeline.process_files(spec, process_index, process_count)

    def batches(start: int) -> Iterator[np.ndarray]:
        chunk = schedule.checkpoint_every
        first = start - start % chunk
        while True:
            ds = pipeline.train_dataset(
                spec, settings.inputs, batch_size=local,
                seed=int(np.random.SeedSequence([settings.seed, first]).generate_state(1)[0]),
                process_index=process_index, process_count=process_count)
            it = pipeline.batches(ds.skip(start - first), files, spec.compression)  # a damaged shard is named
            for _ in range(first + chunk - start):
                yield next(it)["image"]
            start = first = first + chunk

    return batches


def _check_data(settings: TrainSettings, spec: pipeline.RecordSpec) -> None:
    model, inputs = settings.model, settings.inputs
    pipeline.downscale_factor(spec, inputs.crop_size, model.resolution)  # a size that does not divide fails here
    stains = pipeline.output_stains(spec, inputs.channels)
    if len(stains) != model.num_channels:
        raise ValueError(f"the model has {model.num_channels} channels but the data gives {len(stains)} "
                         f"({stains}); set model.num_channels or data.channels")


class _Writer:
    """TensorBoard scalars and images from process 0 only."""

    def __init__(self, logdir: str):
        self.writer = tf.summary.create_file_writer(logdir) if jax.process_index() == 0 else None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer:
            with self.writer.as_default(step=step):
                for k, v in values.items():
                    tf.summary.scalar(k, v)
            self.writer.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if self.writer:
            with self.writer.as_default(step=step):
                tf.summary.image(name, image[None])
            self.writer.flush()


class _StopFlag:
    """SIGTERM (preemption, `kill`) or Ctrl-C (SIGINT) asks the loop to checkpoint and exit at the next step; a
    second Ctrl-C stops at once (KeyboardInterrupt: the last checkpoint stands), as a compile can outlast patience.

    Under jax.distributed the runtime's own SIGTERM notifier must stay installed: it tells every process,
    and they agree on one step to stop at (`Checkpointer.reached_preemption`). So the flag takes the signals
    only in a plain single-process run.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, distributed: bool):
        self.requested = False
        self._previous = {} if distributed else {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.warning("%s: saving a checkpoint and stopping (Ctrl-C again stops at once)",
                        signal.Signals(signum).name)
        self.requested = True

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclasses.dataclass
class TrainResult:
    state: state_lib.TrainState
    step: int
    stopped_early: bool  # by SIGTERM, Ctrl-C or a preemption notice
    history: list[dict[str, float]]  # logged metrics, one dict per log step


def samples(model: ModelConfig, state: state_lib.TrainState, num: int, seed: int) -> np.ndarray:
    """Images of the EMA generator for fixed latents, [num, H, W, C] in about [-1, 1]."""
    latents = jax.random.normal(jax.random.key(seed), (num, model.z_dim))
    return np.asarray(_compiled_sampler(model)(state.ema_params, state.ema_buffers, latents))


def train(settings: TrainSettings, workdir: str, input_fn: InputFn | None = None,
          spec: pipeline.RecordSpec | None = None, probe: ProbeFn | None = None) -> TrainResult:
    """Train (or resume) in `workdir` until `train.steps`; returns the final state and history.

    `input_fn(start_step)` may replace the shard pipeline (each item: this process's batch of images).
    `probe(step, d_params)`, when given, runs between steps every `train.probe_every` steps (gandl.probe:
    it lives above this layer, so the caller passes it in); its scalars go to TensorBoard.
    """
    schedule, model = settings.train, settings.model
    distributed = sharding.initialize_distributed(schedule.distributed)
    mesh = sharding.make_mesh()
    if input_fn is None:
        spec = spec or pipeline.open_records(settings.shards, settings.rxrx1_utils_image_size)
        _check_data(settings, spec)
        input_fn = shard_input_fn(settings, spec)
    stains = (pipeline.output_stains(spec, settings.inputs.channels) if spec
              else tuple(f"channel {i + 1}" for i in range(model.num_channels)))

    ckpt = checkpoint.Checkpointer(workdir, schedule.checkpoint_every, schedule.keep_checkpoints,
                                  keep_period=schedule.probe_every if probe is not None else 0)
    writer = _Writer(layout.tensorboard(workdir))
    stop = _StopFlag(distributed)
    history: list[dict[str, float]] = []
    generating = schedule.objective == "gan"  # the contrastive objective leaves G untrained: no samples, no SWD
    try:
        with jax.set_mesh(mesh):
            state = state_lib.create(model, schedule, settings.seed, mesh)
            start = 0
            if ckpt.latest_step() is not None:  # the newest intact checkpoint; damaged newer ones are set aside
                abstract = checkpoint.abstract_like(state)

                def template(saved: dict) -> state_lib.TrainState:
                    checkpoint.check_options(saved, schedule, ckpt.directory)
                    checkpoint.check_model(saved, model, settings.seed, ckpt.directory)
                    return abstract

                state, _, start = ckpt.restore_intact(template, set_aside=True)
                logging.info("resumed from step %d", start)
            if start >= schedule.steps:  # finished: nothing to compile
                return TrainResult(state, start, False, history)
            train_step = compiled_step(model, step_lib.step_config(schedule), mesh)
            batches = (sharding.global_batch(local, mesh) for local in input_fn(start))
            first = next(batches)
            sharding.compile_in_step(train_step, state, first, name="train step")
            batches = itertools.chain([first], batches)
            pending: list[dict[str, jax.Array]] = []
            last_time, last_step = time.time(), start
            step = start
            while step < schedule.steps:
                state, metrics = train_step(state, next(batches))
                step += 1
                pending.append(metrics)
                preempted = stop.requested or (distributed and ckpt.reached_preemption(step))
                saving = step % schedule.checkpoint_every == 0 or step == schedule.steps or preempted
                if step % schedule.log_every == 0 or saving:
                    history.append(_log(step, schedule, pending, last_time, last_step, writer))
                    pending, last_time, last_step = [], time.time(), step
                if generating and (step % schedule.sample_every == 0 or step == schedule.steps):
                    _write_samples(settings, workdir, state, step, stains, writer)
                if generating and schedule.swd_every and step % schedule.swd_every == 0 and spec is not None:
                    writer.scalars(step, swd_metrics(settings, state, spec))
                if probe is not None and schedule.probe_every and step % schedule.probe_every == 0:
                    writer.scalars(step, probe(step, state.d_params))
                if saving:
                    if not bool(_all_finite(state)):
                        raise TrainingDiverged(f"non-finite parameters at step {step}; the last checkpoint "
                                               f"(step {ckpt.latest_step()}) is intact")
                    ckpt.save(step, state, dict(settings.record), force=True)
                if preempted:
                    ckpt.wait()
                    logging.info("stopped at step %d with a checkpoint; rerun to resume", step)
                    return TrainResult(state, step, True, history)
            ckpt.wait()
            return TrainResult(state, step, False, history)
    finally:
        _finish(ckpt, failing=sys.exc_info()[1] is not None)
        stop.restore()


def _log(step: int, schedule: Train, pending: list[dict], since: float, since_step: int,
         writer: _Writer) -> dict[str, float]:
    """Average the steps since the last log, stop on non-finite losses, write scalars and a progress line."""
    host = jax.device_get(pending)
    values = {k: float(np.nanmean([logged[k] for logged in host])) if not all(np.isnan([logged[k] for logged in host]))
              else float("nan") for k in host[0]}
    for i, logged in enumerate(host):
        bad = [k for k in LOSSES if k in logged and not np.isfinite(logged[k])]
        if bad:
            raise TrainingDiverged(f"non-finite {' and '.join(bad)} at step {since_step + i + 1}; stopping. The last "
                                   "checkpoint on disk predates it and is intact")
    elapsed = max(time.time() - since, 1e-9)
    values["images_per_s"] = (step - since_step) * schedule.batch_size / elapsed
    values["step_time_s"] = elapsed / (step - since_step)
    eta = (schedule.steps - step) * values["step_time_s"]
    progress = (step, schedule.steps, values["images_per_s"], time.strftime("%H:%M:%S", time.gmtime(eta)))
    if "g_loss" in values:
        logging.info("step %d/%d | %.1f img/s | ETA %s | G %.3f D %.3f | D(real) %.2f D(fake) %.2f", *progress,
                     values["g_loss"], values["d_loss"], values["d_real"], values["d_fake"])
    else:
        logging.info("step %d/%d | %.1f img/s | ETA %s | NT-Xent %.3f", *progress, values["contrastive_loss"])
    writer.scalars(step, {k: v for k, v in values.items() if np.isfinite(v)})
    return dict(values, step=step)


def _finish(ckpt: checkpoint.Checkpointer, failing: bool) -> None:
    """Wait for pending saves and close. In a run that is already failing (a sample grid on a full disk), a pending
    save failing on the same disk must not replace the run's own fault in the one line the user reads."""
    for step in (ckpt.wait, ckpt.close):
        with contextlib.suppress(fileio.FileFault) if failing else contextlib.nullcontext():
            step()


def _write_samples(settings: TrainSettings, workdir: str, state: state_lib.TrainState, step: int,
                   stains: tuple[str, ...], writer: _Writer) -> None:
    num, cols = settings.preview
    images = samples(settings.model, state, num, seed=settings.seed)
    if jax.process_index() == 0:
        grid = render.write_grid(os.path.join(layout.samples(workdir), f"step_{step:08d}.png"), images, stains, cols)
        writer.image(step, "samples/ema", grid)


def swd_metrics(settings: TrainSettings, state: state_lib.TrainState, spec: pipeline.RecordSpec) -> dict:
    """SWD between `swd_images` real sites (eval order, no augmentation) and as many EMA samples."""
    wanted = settings.train.swd_images
    ds = pipeline.eval_dataset(spec, settings.inputs, batch_size=64)
    reals = []
    for batch in pipeline.batches(ds, spec.files, spec.compression):
        reals.append(batch["image"][batch["mask"]])
        if sum(len(r) for r in reals) >= wanted:
            break
    reals = np.concatenate(reals)[:wanted]
    fakes = np.concatenate([samples(settings.model, state, min(64, len(reals) - i), seed=10_000 + i)
                            for i in range(0, len(reals), 64)])
    return swd.swd_pyramid(reals, fakes, seed=settings.seed)
