"""The embed stage (mode embed): a checkpoint's discriminator and the run's extractors -> every feature set of
`embed.feature_sets` for the screen and the zero-shot set, plus per-fold exports of label-fitted sets."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
from typing import Any

import jax
from absl import logging

import gandl
from gandl import defaults, sharding
from gandl import workdir as layout
from gandl.data import folds, pipeline, vocabulary
from gandl.data.screen import screen_view
from gandl.embed import writers
from gandl.embed.folds import export_folds
from gandl.embed.stream import export, lazy
from gandl.features import base, registry
from gandl.models.config import ModelConfig
from gandl.train import checkpoint


def restore_discriminator(workdir: str, mesh: jax.sharding.Mesh, step: int | None = None
                          ) -> tuple[ModelConfig, Any, int, dict]:
    """D parameters, model config, step and full config of a training checkpoint (default: the latest)."""
    config, state, step = checkpoint.restore_run(workdir, mesh, step)
    return ModelConfig.of_run(config), state.d_params, step, defaults.values(config)


def code_version() -> str:
    """Package version plus the git commit of the source tree, when it is a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(gandl.__file__),
                                capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{gandl.__version__}+{commit}"


def run(config: defaults.Config, workdir: str) -> str:
    """Export every feature set of `embed.feature_sets` (the random-init ones at `embed.reference_inits`
    initialisations) for the screen and the zero-shot set; returns the folder.

    The discriminator comes from the latest (or `embed.step`) checkpoint; an extractor is built only when
    some target still lacks its feature set. A finished export with other settings is refused; one that
    lacks some of the sets gets them added.
    """
    settings = config.embed
    sharding.initialize_distributed(config.train.distributed)
    mesh = sharding.make_mesh()
    model, d_params, step, _ = restore_discriminator(workdir, mesh, settings.step if settings.step >= 0 else None)
    out = layout.embeddings(workdir, step)
    options = pipeline.InputOptions.from_config(config)
    targets = [(layout.shards(config.data.shards, workdir), out, options)]
    if config.zeroshot.enabled:
        channels = vocabulary.zeroshot_channels(config.zeroshot.channels)
        targets.append((layout.zeroshot_shards(config.zeroshot.shards, workdir), layout.zeroshot_embeddings(out),
                        options.replace(channels=channels)))
    screen = pipeline.open_records(targets[0][0], config.data.rxrx1_utils_image_size)
    fold_settings = folds.FoldSettings.of(config.analysis)  # the analysis' folds, which per-fold fits must use
    context = base.Context.of_run(config, mesh, model, d_params, screen, options, fold_settings.group_by)
    checkpoint_dir = os.path.join(layout.checkpoints(workdir), str(step))
    # What each feature set is, for the exports' settings records: its extractor, the checkpoint and the
    # embed fields that shape its values (so sets can be added to a finished export, see stream.export).
    embed_values = defaults.values(settings)
    names = registry.with_inits(settings.feature_sets, settings.reference_inits)
    described = {name: dict(extractor=registry.get(name).target, checkpoint=checkpoint_dir, seed=config.seed,
                            **{k: embed_values[k] for k in registry.get(name).embed_fields},
                            **registry.settings(name, context))  # e.g. the width, the mbstd value D is fed
                 for name in names}
    # Built on first use: a finished export skips costly set-ups (a comparator's fine-tuning).
    fns = {name: lazy(functools.partial(registry.build, name, context)) for name in names}
    provenance = dict(checkpoint=checkpoint_dir, step=step, config=defaults.values(config), code_version=code_version())
    for source, target, target_options in targets:
        spec = pipeline.open_records(source, config.data.rxrx1_utils_image_size)
        export(spec, target, fns, batch_size=settings.batch_size, options=target_options,
               part_batches=settings.part_batches, feature_settings=described,
               well_aggregate=settings.well_aggregate,
               provenance=dict(provenance, dataset=source, channels=list(target_options.channels)))
    for name in names:
        if registry.get(name).per_fold:
            export_label_folds(config.embed, fold_settings, context, out, name, described[name], provenance)
    logging.info("embeddings in %s", out)
    return out


def export_label_folds(embed: defaults.Embed, fold_settings: folds.FoldSettings, context: base.Context, out: str,
                       name: str, described: dict, provenance: dict) -> None:
    """Label-fitted feature set `name`, one model per fold of the analysis' folds, never one that saw the fold.

    The folds are drawn once, from the exported sites as the screen's schema reads them (the analysis' view), with
    the analysis' settings, and recorded as folds.json.
    """
    metadata = screen_view(writers.read_metadata(os.path.join(out, f"{name}.npz")), context.controls.schema)
    try:
        assignment = folds.assignment(metadata, fold_settings)
    except folds.CVError as error:
        logging.warning("no per-fold %s models (its Table 1 will be skipped): %s", registry.get(name).label, error)
        return

    def fitted_without(held_out: tuple[str, ...]):
        return registry.build(name, dataclasses.replace(
            context, controls=dataclasses.replace(context.controls, held_out=held_out)))

    export_folds(context.screen, out, name, assignment, fitted_without, batch_size=embed.batch_size,
                 rows=lambda batch: base.control_labels(batch, context.controls) >= 0, provenance=provenance,
                 feature_settings=described, options=context.options, part_batches=embed.part_batches)
