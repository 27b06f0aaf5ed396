"""What every extractor receives (`Context`) and returns (`FeatureFn`), and the mesh wrapper they share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from gandl import sharding
from gandl.data import pipeline
from gandl.models.config import ModelConfig

FeatureFn = Callable[[np.ndarray], np.ndarray]  # this process's images [b, H, W, C] -> features [b, D]


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """The run an extractor is built for: its config, devices, trained discriminator and screen.

    Hashed by identity, so extractors can cache what they measure once per run (`functools.lru_cache`).
    """

    config: ml_collections.ConfigDict  # the run's config (seed, config.embed settings)
    mesh: jax.sharding.Mesh
    model: ModelConfig  # the discriminator's architecture, as trained
    d_params: Any  # the checkpoint's discriminator parameters
    screen: pipeline.RecordSpec  # the training screen's records (comparators fine-tune on its controls)
    options: pipeline.InputOptions  # how the screen's records become images


def on_mesh(features: Callable[[Any, jax.Array], jax.Array], variables: Any, mesh: jax.sharding.Mesh) -> FeatureFn:
    """A FeatureFn running jitted `features(variables, global_images)` on the mesh, returning this process's rows."""

    compiled_for: set[tuple] = set()

    def fn(local_images: np.ndarray) -> np.ndarray:
        with jax.set_mesh(mesh):
            images = sharding.global_batch(local_images, mesh)
            if images.shape not in compiled_for:
                sharding.compile_in_step(features, variables, images, name=f"features {images.shape}")
                compiled_for.add(images.shape)
            out = features(variables, images)
            return np.asarray(multihost_utils.global_array_to_host_local_array(
                out, mesh, jax.sharding.PartitionSpec(sharding.DATA_AXIS)))

    return fn
