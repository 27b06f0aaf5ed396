"""What every extractor receives (`Context`) and returns (`FeatureFn`), and the mesh wrapper they share."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from gandl import defaults, sharding
from gandl.data import pipeline
from gandl.data.screen import ScreenSchema, configured, default_schema, plate_key, screen_view
from gandl.models.config import ModelConfig

FeatureFn = Callable[[np.ndarray], np.ndarray]  # this process's images [b, H, W, C] -> features [b, D]


LABELS = {"C+": 0, "C-": 1}  # the control labels a label-fitted extractor learns


@dataclasses.dataclass(frozen=True)
class Controls:
    """Which sites a label-fitted extractor learns from: C+ / C- controls outside the held-out groups."""

    held_out: tuple[str, ...] = ()  # groups (`plate_key` of a `screen_view`) a cross-validation fold tests on
    group_by: str = "plate"  # plate | experiment: what `held_out` names
    schema: ScreenSchema = default_schema()  # the screen's columns and control queries (`configured`)


def control_labels(batch: Mapping[str, np.ndarray], controls: Controls = Controls()) -> np.ndarray:
    """Per row of an eval batch: 0 for C+, 1 for C-, -1 for every other site, held-out groups and padding.

    Roles and groups come from the batch's `screen_view` under the run's schema, as the analysis' do, so a group
    held out here is the plate the analysis' fold names, whatever the screen calls its columns.
    """
    view = screen_view(pipeline.metadata_frame(batch), controls.schema)
    labels = view["role"].map(LABELS).fillna(-1).to_numpy(np.int32)
    if controls.held_out:
        labels[np.isin(plate_key(view, controls.group_by), controls.held_out)] = -1
    return np.where(batch["mask"], labels, -1)


@dataclasses.dataclass(frozen=True)
class EmbedSettings:
    """The `config.embed` fields extractors read (no defaults here: they are `gandl.defaults.base_config`'s)."""

    orientation_average: bool  # average the features of a site's 8 flips / rotations
    mbstd: str  # constant | train: the stddev channel D's features are computed with
    mbstd_batches: int  # real training batches the "train" statistic is measured on
    imagenet_weights: str  # the comparator's backbone weights (a state dict path, or "random")
    imagenet: Mapping[str, Any]  # the comparator's fine-tuning settings (gandl.features.imagenet.FineTuneConfig)

    @classmethod
    def from_config(cls, embed: defaults.Embed) -> EmbedSettings:
        values = defaults.values(embed)
        return cls(**{f.name: types.MappingProxyType(values[f.name]) if isinstance(values[f.name], dict)
                      else values[f.name] for f in dataclasses.fields(cls)})  # blocks read-only, as the rest


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """The run an extractor is built for: devices, trained discriminator, screen, and the settings it reads.

    Hashed by identity, so extractors can cache what they measure once per run (`functools.lru_cache`).
    """

    mesh: jax.sharding.Mesh
    model: ModelConfig  # the discriminator's architecture, as trained
    d_params: Any  # the checkpoint's discriminator parameters
    screen: pipeline.RecordSpec  # the training screen's records (comparators fine-tune on its controls)
    options: pipeline.InputOptions  # how the screen's records become images
    seed: int  # the run's seed (random-init references, fine-tuning)
    embed: EmbedSettings
    train_batch_size: int  # the global batch D was trained on (its minibatch-stddev statistic is measured so)
    controls: Controls  # the sites a label-fitted extractor may learn from (a fold's model: without its groups)

    @classmethod
    def of_run(cls, config: defaults.Config, mesh: jax.sharding.Mesh, model: ModelConfig, d_params: Any,
               screen: pipeline.RecordSpec, options: pipeline.InputOptions, group_by: str) -> Context:
        """The context of a run's config: its seed, embed settings, training batch and control definition (the
        screen's schema; `group_by`: what the folds hold out, `gandl.data.folds.FoldSettings`)."""
        return cls(mesh, model, d_params, screen, options, config.seed, EmbedSettings.from_config(config.embed),
                   config.train.batch_size, Controls(group_by=group_by, schema=configured(config)))


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
