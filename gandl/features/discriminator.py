"""The GAN-DL embedding: the discriminator's epilogue fc output, batch-independent.

Minibatch stddev would make a site's features depend on the other images in its batch, so features are
computed with an mbstd group of one (the stddev channel is then a constant): an image's embedding is a
function of that image alone. Optionally the features of the 8 flips/rotations of a site are averaged
(microscopy has no orientation).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from gandl.features.base import Context, FeatureFn, on_mesh
from gandl.models import build_models, init_variables
from gandl.models.config import ModelConfig


def dihedral_views(images: jax.Array) -> list[jax.Array]:
    """The 8 flips/rotations of NHWC images."""
    turns = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return turns + [jnp.flip(t, axis=2) for t in turns]


@functools.lru_cache(maxsize=8)
def compiled_features(model: ModelConfig, orientation_average: bool):
    """jit(params, images) -> features, shared by every parameter set of the same architecture."""
    _, discriminator = build_models(model)

    @jax.jit
    def features(params, images: jax.Array) -> jax.Array:
        views = dihedral_views(images) if orientation_average else [images]
        out = [discriminator.apply({"params": params}, v, 1, method=discriminator.features) for v in views]
        return jnp.mean(jnp.stack(out), axis=0)

    return features


def feature_fn(model: ModelConfig, d_params: Any, mesh: jax.sharding.Mesh,
               orientation_average: bool = False) -> FeatureFn:
    """Batch-independent D embeddings, computed on the mesh; returns this process's rows as numpy."""
    return on_mesh(compiled_features(model, orientation_average), d_params, mesh)


def trained(context: Context) -> FeatureFn:
    """The checkpoint's discriminator: the GAN-DL embedding."""
    return feature_fn(context.model, context.d_params, context.mesh, context.config.embed.orientation_average)


def random_init(context: Context) -> FeatureFn:
    """The same architecture, randomly initialised: what adversarial training adds is the difference."""
    params = init_variables(context.model, jax.random.key(context.config.seed + 1))[1]["params"]
    return feature_fn(context.model, params, context.mesh, context.config.embed.orientation_average)
