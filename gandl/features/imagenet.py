"""The ImageNet comparator: DenseNet-121 fine-tuned on the labelled controls, penultimate features exported.

Fine-tuning learns the controls' labels, so a model that saw a plate's controls must not score them: Table 1
is computed from one model per cross-validation fold, fine-tuned without that fold's groups (`Controls`),
and only the descriptive outputs (spaces, efficacy, dose-response) and zero-shot use the all-controls model.

The paper compares GAN-DL with an ImageNet-pretrained DenseNet-121 whose 5 → 3 channel 1×1 conv and head
are fine-tuned to tell healthy (C+: Mock, untreated) from infected (C-: Active SARS-CoV-2, untreated)
control sites; its 1024-d penultimate features then go through the same analysis as GAN-DL's.

Controls are picked by their metadata from the export stream (`pipeline.eval_dataset`, every site once),
pooled and shuffled a few batches at a time, so memory stays bounded on the full screen. With the
backbone frozen (the default) its BatchNorm uses the ImageNet running statistics; with
`train_backbone=True` it runs in training mode and its running statistics follow the controls.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from gandl import defaults, sharding
from gandl.data import pipeline
from gandl.features.base import LABELS, Context, Controls, FeatureFn, control_labels, on_mesh
from gandl.models import densenet

RANDOM = "random"  # `weights` value for a randomly initialised backbone (tests, demos without weights)


@dataclasses.dataclass(frozen=True)
class FineTuneConfig(defaults.Imagenet):
    """Fine-tuning settings: `config.embed.imagenet`, the schema's `gandl.defaults.Imagenet` (its defaults)."""


def control_batches(spec: pipeline.RecordSpec, batch_size: int, pool_batches: int, seed: int,
                    options: pipeline.InputOptions, controls: Controls = Controls()
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's `controls` as full (images, labels) batches of `batch_size`, shuffled within pools.

    A last partial batch is dropped.
    """
    rng = np.random.default_rng(seed)
    ds = pipeline.eval_dataset(spec, options, batch_size=batch_size, process_index=jax.process_index(),
                               process_count=jax.process_count())
    images, labels = [], []
    files = pipeline.process_files(spec, jax.process_index(), jax.process_count())
    for batch in itertools.chain(pipeline.batches(ds, files, spec.compression), [None]):
        if batch is not None:
            y = control_labels(batch, controls)
            images.append(batch["image"][y >= 0])
            labels.append(y[y >= 0])
        pooled = sum(len(y) for y in labels)
        if pooled >= pool_batches * batch_size or (batch is None and pooled):
            order = rng.permutation(pooled)
            x, y = np.concatenate(images)[order], np.concatenate(labels)[order]
            full = pooled - pooled % batch_size
            for start in range(0, full, batch_size):
                yield x[start:start + batch_size], y[start:start + batch_size]
            images, labels = [x[full:]], [y[full:]]


def _global_batches(batches: Iterator[tuple[np.ndarray, np.ndarray]], mesh: jax.sharding.Mesh
                    ) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Global batches while every process still has one (processes hold different numbers of controls)."""
    for local in itertools.chain(batches, itertools.repeat(None)):
        if not multihost_utils.process_allgather(np.array(local is not None)).all():
            return
        yield sharding.global_batch(local[0], mesh), sharding.global_batch(local[1], mesh)


def _loss(model: densenet.DenseNet, variables: Mapping[str, Any], images: jax.Array, labels: jax.Array,
          train: bool) -> tuple[jax.Array, tuple[jax.Array, Any]]:
    """Mean cross-entropy of the head on C+ / C-, with its accuracy and the (possibly updated) BN stats."""
    (_, logits), updates = model.apply(variables, images, train, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (jnp.mean(jnp.argmax(logits, -1) == labels), updates["batch_stats"])


def initial_variables(model: densenet.DenseNet, weights: str, key: jax.Array,
                      image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Random variables, with the backbone from torchvision ImageNet weights unless `weights` is 'random'."""
    variables = densenet.init(model, key, image_shape)
    return variables if weights == RANDOM else densenet.load_imagenet(weights, variables)


def evaluate(model: densenet.DenseNet, variables: Mapping[str, Any], spec: pipeline.RecordSpec,
             mesh: jax.sharding.Mesh, settings: FineTuneConfig, options: pipeline.InputOptions,
             controls: Controls = Controls()) -> tuple[float, float]:
    """(mean loss, accuracy) of the head on every full batch of controls, BatchNorm in inference mode."""
    @jax.jit
    def metrics(v: Mapping[str, Any], images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss, (accuracy, _) = _loss(model, v, images, labels, False)
        return loss, accuracy

    results = []
    with jax.set_mesh(mesh):
        local = sharding.local_batch_size(settings.batch_size)
        batches = control_batches(spec, local, settings.pool_batches, 0, options, controls)
        for images, labels in _global_batches(batches, mesh):
            results.append([float(m) for m in metrics(variables, images, labels)])
    if not results:
        raise ValueError(f"no full batch of {settings.batch_size} control sites (C+ / C-) in {spec.files[0]}…")
    return tuple(np.mean(results, axis=0))


def fine_tune(model: densenet.DenseNet, variables: Mapping[str, Any], spec: pipeline.RecordSpec,
              mesh: jax.sharding.Mesh, settings: FineTuneConfig, seed: int, options: pipeline.InputOptions,
              controls: Controls = Controls()) -> dict[str, Any]:
    """Adam on the `controls`' C+ / C- cross-entropy for `settings.epochs` passes; returns the new variables."""
    trainable = lambda path, _: settings.train_backbone or path[0].key in ("adapter", "classifier")  # noqa: E731
    labels = jax.tree_util.tree_map_with_path(lambda p, v: "train" if trainable(p, v) else "frozen",
                                              variables["params"])
    tx = optax.multi_transform({"train": optax.adam(settings.learning_rate), "frozen": optax.set_to_zero()}, labels)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(p):
            return _loss(model, {"params": p, "batch_stats": batch_stats}, images, labels, settings.train_backbone)

        (_, (_, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    with jax.set_mesh(mesh):
        variables = jax.device_put(dict(variables), sharding.replicated(mesh))
        params, batch_stats = variables["params"], variables["batch_stats"]
        opt_state = tx.init(params)
        local = sharding.local_batch_size(settings.batch_size)
        for epoch in range(settings.epochs):
            batches = control_batches(spec, local, settings.pool_batches, seed * 1009 + epoch, options,
                                      controls)
            for images, labels in _global_batches(batches, mesh):
                params, batch_stats, opt_state = step(params, batch_stats, opt_state, images, labels)
    return {"params": params, "batch_stats": batch_stats}


def feature_fn(model: densenet.DenseNet, variables: Mapping[str, Any], mesh: jax.sharding.Mesh) -> FeatureFn:
    """This process's images → their 1024-d penultimate features (BatchNorm in inference mode), on the mesh."""
    return on_mesh(jax.jit(lambda v, images: model.apply(v, images)[0]), variables, mesh)


def fine_tune_comparator(spec: pipeline.RecordSpec, settings: FineTuneConfig, mesh: jax.sharding.Mesh, weights: str,
                         seed: int, options: pipeline.InputOptions, controls: Controls = Controls()) -> FeatureFn:
    """The comparator's feature function: backbone from `weights` (a torchvision densenet121 state dict as
    .npz/.pt, or 'random'), adapter and 2-class head fine-tuned on the `controls` of `spec`.

    Table 1 needs one such model per cross-validation fold, with that fold's groups in `controls.held_out`
    (their labels would otherwise be learnt, and scored on); the spaces, efficacy and dose-response use
    one fine-tuned on all controls.

    `options` are the export's pipeline options, so the comparator is trained on exactly the images it
    later embeds.
    """
    model = densenet.DenseNet(blocks=tuple(settings.blocks), num_classes=len(LABELS))
    crop = options.crop_size
    height, width = (crop, crop) if crop else (spec.height, spec.width)
    channels = len(pipeline.output_stains(spec, options.channels))
    variables = initial_variables(model, weights, jax.random.key(seed), (height, width, channels))
    return feature_fn(model, fine_tune(model, variables, spec, mesh, settings, seed, options, controls), mesh)


def extractor(context: Context) -> FeatureFn:
    """The comparator of `embed.imagenet_weights`, fine-tuned on the controls of `context.controls`: all of the
    screen's, or those outside a fold's held-out groups (the registry marks it `per_fold`: gandl.embed.folds)."""
    settings = context.embed
    if not settings.imagenet_weights:
        raise ValueError("embed.feature_sets lists the ImageNet comparator but embed.imagenet_weights is empty: give "
                         f"a torchvision densenet121 state dict (.npz/.pt) or {RANDOM!r}")
    return fine_tune_comparator(context.screen, FineTuneConfig(**settings.imagenet), context.mesh,
                                settings.imagenet_weights, context.seed, context.options, context.controls)
