"""Linear probe of the discriminator's features over training: when have they peaked?

Every `train.probe_every` steps the training loop hands the current discriminator to a `Probe`, which computes
each feature option of `train.probe_features` (registry names, e.g. gandl, gandl_multiscale) on a fixed subset
of control sites (`probe_sites`) and of the zero-shot set (`probe_zeroshot_sites`), and scores plate-held-out
linear SVMs with the analysis' own functions: Table 1's tasks (C+ vs C-, cell line, C+ vs C- per line) and
zero-shot cell typing, with every label and, for each k of `analysis.few_labels`, with k labelled wells per
class ("<task> @ k=<k>": the regime a feature learner is for). Each option's random-init reference (its
registry `reference`) does not change with training and is scored once, as the mean over its
`embed.reference_inits` initialisations (the analysis' reference, whose gap the sweeps report). Rows are appended to
workdir/probe.csv, the curve is redrawn as probe_curve.png, and the accuracies go to TensorBoard. The probe
sits above train and features: the loop only calls it (`gandl.main` passes it in), so nothing imports upward.
The table itself is `gandl.analysis.probe_table`'s (the report describes it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pandas as pd
from absl import logging

from gandl import defaults, fileio, sharding
from gandl import workdir as layout
from gandl._tf import tf
from gandl.analysis import classify, plots, zeroshot
from gandl.analysis.probe_table import append_rows
from gandl.analysis.tasks import AnalysisConfig
from gandl.data import pipeline, vocabulary
from gandl.data.screen import ScreenSchema, configured, screen_view
from gandl.features import base, registry
from gandl.models.config import ModelConfig


def fixed_subset(spec: pipeline.RecordSpec, options: pipeline.InputOptions, size: int, seed: int, *,
                 keep: Callable[[pd.DataFrame], np.ndarray] | None = None, batch_size: int = 64
                 ) -> tuple[np.ndarray, pd.DataFrame]:
    """(images, metadata) of `size` sites drawn with `seed` from those `keep(metadata)` selects, in eval order.

    One pass with bounded memory: each selected site gets a seeded random priority (in the stream's fixed
    order) and the `size` lowest are kept, a uniform sample without holding the screen; a site enters the
    buffer only when it beats the current cut, and the buffer is cut back whenever it doubles. Every
    process reads every file, so all hold the same subset.
    """
    rng = np.random.default_rng(seed)
    held: dict[str, list] = dict(images=[], meta=[], priority=[])
    cut, count = np.inf, 0

    def shrink() -> None:
        order = np.sort(np.argsort(np.concatenate(held["priority"]), kind="stable")[:size])
        held["images"] = [np.concatenate(held["images"])[order]]
        held["priority"] = [np.concatenate(held["priority"])[order]]
        held["meta"] = [pd.concat(held["meta"], ignore_index=True).iloc[order].reset_index(drop=True)]

    for batch in pipeline.batches(pipeline.eval_dataset(spec, options, batch_size=batch_size), spec.files,
                                 spec.compression):
        frame = pipeline.metadata_frame(batch)[batch["mask"]].reset_index(drop=True)
        rows = np.ones(len(frame), bool) if keep is None else np.asarray(keep(frame), bool)
        priority = rng.uniform(size=int(rows.sum()))
        enter = priority < cut
        held["images"].append(batch["image"][batch["mask"]][rows][enter])
        held["meta"].append(frame[rows][enter])
        held["priority"].append(priority[enter])
        count += int(enter.sum())
        if count > 2 * size:
            shrink()
            cut, count = float(held["priority"][0].max()), size
    if not count:
        raise ValueError(f"no sites to probe in {list(spec.files[:3])}...")
    shrink()
    return held["images"][0], held["meta"][0]


def features_of(fn: base.FeatureFn, images: np.ndarray, batch_size: int) -> np.ndarray:
    """`fn` over `images` in batches of `batch_size`, the last one padded (the features are per image)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
        out.append(fn(padded)[:len(chunk)])
    return np.concatenate(out)


def few_label_task(task: str, k: int) -> str:
    """The probe table's name of `task` fitted on k labelled wells per class."""
    return f"{task} @ k={k}"


def score(features: np.ndarray, metadata: pd.DataFrame, zeroshot_features: np.ndarray | None,
          zeroshot_metadata: pd.DataFrame | None, analysis: AnalysisConfig) -> list[dict[str, Any]]:
    """(task, accuracy, status) rows: Table 1 on the control subset, zero-shot cell typing on its subset, and
    both again at each of `analysis.few_labels` labelled wells per class (mean over its draws)."""
    common = dict(c=analysis.c, n_splits=analysis.n_splits, seed=analysis.seed)
    table = classify.classify_controls(features, metadata, group_by=analysis.group_by, **common)
    rows = [dict(task=r.task, accuracy=float(r.accuracy), status=r.status) for r in table.itertuples()]
    few = [classify.classify_few_labels(features, metadata, analysis.few_labels, draws=analysis.few_label_draws,
                                        group_by=analysis.group_by, **common)] if analysis.few_labels else []
    if zeroshot_features is not None:
        try:
            summary, _ = zeroshot.classify_cell_types(zeroshot_features, zeroshot_metadata, **common)
            rows.append(dict(task=zeroshot.ZEROSHOT_TASK, accuracy=summary["accuracy"], status="ok"))
        except classify.CVError as e:
            rows.append(dict(task=zeroshot.ZEROSHOT_TASK, accuracy=float("nan"), status=f"skipped: {e}"))
        if analysis.few_labels:
            few.append(zeroshot.classify_cell_types_few_labels(
                zeroshot_features, zeroshot_metadata, analysis.few_labels, draws=analysis.few_label_draws, **common))
    rows += [dict(task=few_label_task(r.task, r.k), accuracy=float(r.accuracy), status=r.status)
             for t in few for r in t.itertuples()]
    return rows


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """What the probe reads of a run's config, typed once (`Probe.from_config`)."""

    feature_sets: tuple[str, ...]  # train.probe_features: registry names
    sites: int  # control sites probed (train.probe_sites)
    zeroshot_sites: int  # zero-shot sites probed (train.probe_zeroshot_sites)
    batch_size: int  # global batch the features are computed in (embed.batch_size)
    train_batch_size: int  # images per training step (the table's images_seen)
    seed: int
    reference_inits: int  # embed.reference_inits: a reference line is the mean over this many random-init draws
    analysis: AnalysisConfig  # Table 1's and zero-shot typing's settings
    schema: ScreenSchema  # the screen's columns and controls (`screen.configured`): what the probe's sites are
    zeroshot_shards: str  # the zero-shot set's records; "" = zero-shot cell typing off
    zeroshot_channels: tuple[int, ...]  # its channels feeding the model's
    rxrx1_utils_image_size: int  # the image side of rxrx1-utils records


class Probe:
    """The training loop's probe callback: `probe(step, d_params)` -> TensorBoard scalars."""

    def __init__(self, settings: ProbeSettings, workdir: str, context: base.Context):
        """`context` is the run's extractor context, without devices and parameters (each probe sets them)."""
        for name in settings.feature_sets:
            registry.get(name)
        self.settings, self.workdir, self.context = settings, workdir, context
        self.batch_size = sharding.local_batch_size(settings.batch_size)
        self.references: dict[str, dict[str, float]] = {}  # random-init accuracies: they do not change

    @classmethod
    def from_config(cls, config: defaults.Config, workdir: str) -> Probe:
        train = config.train
        settings = ProbeSettings(
            tuple(train.probe_features), train.probe_sites, train.probe_zeroshot_sites, config.embed.batch_size,
            train.batch_size, config.seed, config.embed.reference_inits,
            AnalysisConfig(**defaults.values(config.analysis)), configured(config),
            layout.zeroshot_shards(config.zeroshot.shards, workdir) if config.zeroshot.enabled else "",
            vocabulary.zeroshot_channels(config.zeroshot.channels),
            config.data.rxrx1_utils_image_size)
        spec = pipeline.open_records(layout.shards(config.data.shards, workdir), config.data.rxrx1_utils_image_size)
        context = base.Context.of_run(config, None, ModelConfig.of_run(config), None, spec,
                                      pipeline.InputOptions.from_config(config), settings.analysis.group_by)
        return cls(settings, workdir, context)

    @functools.cached_property
    def subsets(self) -> tuple[np.ndarray, pd.DataFrame, np.ndarray | None, pd.DataFrame | None]:
        """(control images, their metadata, zero-shot images, their metadata), drawn at the first probe (a
        finished run that is only resumed never reads them). The controls' metadata is the screen's `screen_view`:
        the analysis' column names and roles, whatever the screen's own."""
        settings, options = self.settings, self.context.options
        images, metadata = fixed_subset(
            self.context.screen, options, settings.sites, settings.seed, batch_size=self.batch_size,
            keep=lambda meta: classify.control_mask(screen_view(meta, settings.schema)))
        metadata = screen_view(metadata, settings.schema)
        zimages = zmetadata = None
        zshards = settings.zeroshot_shards
        if zshards and tf.io.gfile.glob(f"{zshards}/*"):
            zspec = pipeline.open_records(zshards, settings.rxrx1_utils_image_size)
            zimages, zmetadata = fixed_subset(zspec, options.replace(channels=settings.zeroshot_channels),
                                              settings.zeroshot_sites, settings.seed, batch_size=self.batch_size)
        elif zshards:
            logging.warning("probe: no zero-shot shards at %s; probing without zero-shot cell typing", zshards)
        logging.info("probe: %d control sites, %d zero-shot sites", len(metadata),
                     0 if zmetadata is None else len(zmetadata))
        return images, metadata, zimages, zmetadata

    def _score(self, name: str, context: base.Context) -> list[dict[str, Any]]:
        fn = registry.build(name, context)
        images, metadata, zimages, zmetadata = self.subsets
        zf = None if zimages is None else features_of(fn, zimages, self.batch_size)
        return score(features_of(fn, images, self.batch_size), metadata, zf, zmetadata, self.settings.analysis)

    def _reference(self, name: str, context: base.Context) -> dict[str, float]:
        """Task -> random-init set `name`'s accuracy, the mean over its `reference_inits` draws (NaN where one
        was skipped)."""
        draws = [{r["task"]: r["accuracy"] for r in self._score(n, context)}
                 for n in registry.with_inits((name,), self.settings.reference_inits)]
        return {task: float(np.mean([d.get(task, np.nan) for d in draws])) for task in draws[0]}

    def __call__(self, step: int, d_params: Any) -> dict[str, float]:
        context = dataclasses.replace(self.context, mesh=sharding.make_mesh(), d_params=d_params)
        rows, scalars = [], {}
        for name in self.settings.feature_sets:
            reference = registry.get(name).reference
            if reference and reference not in self.references:
                self.references[reference] = self._reference(reference, context)
            by_task = self.references.get(reference, {})
            for row in self._score(name, context):
                level = by_task.get(row["task"], float("nan"))
                rows.append(dict(row, step=step, images_seen=step * self.settings.train_batch_size,
                                 feature_set=name, label=registry.get(name).label,
                                 reference_label=registry.get(reference).label if reference else "",
                                 reference_accuracy=level))
                for key, value in ((name, row["accuracy"]), (reference, level)):
                    if key and math.isfinite(value):
                        scalars[f"probe/{row['task']}/{key}"] = value
        if jax.process_index() == 0:
            table = append_rows(layout.probe_table(self.workdir), rows)
            fileio.write_bytes(layout.probe_curve(self.workdir), plots.probe_curve_figure(table))
        logging.info("probe at step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in scalars.items()))
        return scalars
