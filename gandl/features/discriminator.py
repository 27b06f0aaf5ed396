"""Discriminator features: the GAN-DL embedding (b4.fc), multiscale pooled statistics (with or without b4.fc),
trained or random-init.

Minibatch stddev would make a site's features depend on the other images in its batch, so features are
computed without it: with `embed.mbstd = "constant"` the stddev channel is that of a group of one (the
constant 1e-4, which D never saw in training); with "train" it is the mean group stddev D computes on real
training batches, measured once per parameter set on `embed.mbstd_batches` batches and recorded in the
export's settings. Either way an image's features are a function of that image alone. Optionally the
features of the 8 flips/rotations of a site are averaged (microscopy has no orientation).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from gandl import sharding
from gandl.data import pipeline
from gandl.defaults import MBSTD_MODES
from gandl.features.base import Context, FeatureFn, on_mesh
from gandl.models import build_models, init_variables
from gandl.models import layers as model_layers
from gandl.models.config import ModelConfig
from gandl.models.discriminator import blocks_dim, multiscale_dim

# Feature option -> the Discriminator method computing it.
OPTIONS = {"fc": "features", "multiscale": "multiscale_features", "blocks": "block_features"}


def dihedral_views(images: jax.Array) -> list[jax.Array]:
    """The 8 flips/rotations of NHWC images."""
    turns = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return turns + [jnp.flip(t, axis=2) for t in turns]


@functools.lru_cache(maxsize=8)
def compiled_features(model: ModelConfig, orientation_average: bool, option: str = "fc"):
    """jit({"params", "mbstd"}, images) -> features, shared by every parameter set of the same architecture.

    `mbstd` None computes the stddev channel with a group of one; an array [mbstd_num_channels] is fed instead.
    """
    _, discriminator = build_models(model)
    method = getattr(discriminator, OPTIONS[option])

    @jax.jit
    def features(variables, images: jax.Array) -> jax.Array:
        views = dihedral_views(images) if orientation_average else [images]
        out = [discriminator.apply({"params": variables["params"]}, v, 1, variables["mbstd"], method=method)
               for v in views]
        return jnp.mean(jnp.stack(out), axis=0)

    return features


def feature_fn(model: ModelConfig, d_params: Any, mesh: jax.sharding.Mesh, orientation_average: bool = False,
               option: str = "fc", mbstd_value: np.ndarray | None = None) -> FeatureFn:
    """Batch-independent D features of `option`, computed on the mesh; returns this process's rows as numpy."""
    if option not in OPTIONS:
        raise ValueError(f"unknown discriminator feature option {option!r}; known: {sorted(OPTIONS)}")
    mbstd = None if mbstd_value is None else jnp.asarray(mbstd_value, jnp.float32)
    return on_mesh(compiled_features(model, orientation_average, option), dict(params=d_params, mbstd=mbstd), mesh)


@functools.lru_cache(maxsize=8)
def _compiled_statistic(model: ModelConfig):
    _, discriminator = build_models(model)
    return jax.jit(lambda params, images: jnp.mean(discriminator.apply(
        {"params": params}, images, method=discriminator.mbstd_statistic), axis=0))


def training_mbstd(model: ModelConfig, d_params: Any, batches) -> np.ndarray:
    """The mean minibatch-stddev statistic [mbstd_num_channels] of D on `batches` (this process's real images),
    with the training group size, averaged over batches and processes."""
    fn = _compiled_statistic(model)
    values = [np.asarray(fn(d_params, np.asarray(b))) for b in batches]
    if not values:
        raise ValueError("no training batches to measure the minibatch-stddev statistic on (embed.mbstd_batches)")
    return np.mean(multihost_utils.process_allgather(np.mean(values, axis=0)), axis=0).astype(np.float32)


def init_key(seed: int, init: int = 0) -> jax.Array:
    """The key of a random-init D: the run's own draw (init 0), or its init-th other one, apart from every
    other seed's draws."""
    key = jax.random.key(seed + 1)
    return jax.random.fold_in(key, init) if init else key


@functools.lru_cache(maxsize=4)
def _variables(context: Context, random: bool, init: int = 0) -> tuple[Any, np.ndarray | None]:
    """(params, mbstd value or None) of the checkpoint's or the random-init D (at draw `init`); measured once per
    context."""
    settings = context.embed
    if settings.mbstd not in MBSTD_MODES:
        raise ValueError(f"embed.mbstd={settings.mbstd!r}: expected one of {MBSTD_MODES}")
    params = (init_variables(context.model, init_key(context.seed, init))[1]["params"] if random
              else context.d_params)
    if settings.mbstd == "constant" or context.model.mbstd_num_channels == 0:
        return params, None
    ds = pipeline.train_dataset(context.screen, context.options, seed=context.seed,
                                batch_size=sharding.local_batch_size(context.train_batch_size),
                                process_index=jax.process_index(), process_count=jax.process_count())
    files = pipeline.process_files(context.screen, jax.process_index(), jax.process_count())
    batches = (b["image"] for b in pipeline.batches(ds.take(settings.mbstd_batches), files))
    return params, training_mbstd(context.model, params, batches)


@dataclasses.dataclass(frozen=True)
class DiscriminatorFeatures:
    """An extractor: feature `option` of the checkpoint's D, or of the same architecture randomly initialised
    (what adversarial training adds is the difference), at initialisation draw `init`."""

    option: str
    random: bool
    init: int = 0

    def __call__(self, context: Context) -> FeatureFn:
        params, mbstd = _variables(context, self.random, self.init)
        return feature_fn(context.model, params, context.mesh, context.embed.orientation_average,
                          self.option, mbstd)

    def settings(self, context: Context) -> dict:
        """What the export's settings record says of these features: option, width, the mbstd value fed."""
        _, mbstd = _variables(context, self.random, self.init)
        dim = {"multiscale": multiscale_dim, "blocks": blocks_dim}.get(
            self.option, lambda m: model_layers.block_channels(4, m.channel_base, m.channel_max))(context.model)
        return dict(option=self.option, dim=dim, mbstd_value=None if mbstd is None else mbstd.tolist(),
                    **({"init": self.init} if self.init else {}))


trained = DiscriminatorFeatures("fc", random=False)
random_init = DiscriminatorFeatures("fc", random=True)
trained_multiscale = DiscriminatorFeatures("multiscale", random=False)
random_init_multiscale = DiscriminatorFeatures("multiscale", random=True)
trained_blocks = DiscriminatorFeatures("blocks", random=False)
random_init_blocks = DiscriminatorFeatures("blocks", random=True)
