"""Linear probe of the discriminator's features over training: when have they peaked?

Every `train.probe_every` steps the training loop hands the current discriminator to a `Probe`, which
computes each feature option of `train.probe_features` (registry names, e.g. gandl, gandl_multiscale) on a
fixed subset of control sites (`probe_sites`) and of the zero-shot set (`probe_zeroshot_sites`), and scores
plate-held-out linear SVMs with the analysis' own functions: Table 1's tasks (C+ vs C-, cell line, C+ vs C-
per line) and zero-shot cell typing. Each option's random-init reference (its registry `reference`) does not
change with training and is scored once. Rows are appended to workdir/probe.csv, the curve is redrawn as
probe_curve.png, and the accuracies go to TensorBoard. The probe sits above train and features: the loop
only calls it (`gandl.main` passes it in), so nothing imports upward. The table itself is
`gandl.analysis.probe_table`'s (the report describes it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import pandas as pd
from absl import logging

from gandl import fileio
from gandl import workdir as layout
from gandl._tf import tf
from gandl.analysis import classify, plots, zeroshot
from gandl.analysis.probe_table import append_rows
from gandl.data import pipeline, rxrx
from gandl.features import base, registry
from gandl.models.config import ModelConfig
from gandl.train import sharding

ZEROSHOT_TASK = "zero-shot cell type"


def _decoded(values: np.ndarray) -> np.ndarray:
    return values.astype(str) if values.dtype.kind in "SO" else values


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
        frame = pd.DataFrame({k: _decoded(batch[k][batch["mask"]]) for k in [*spec.features, "site_id"]
                              if k in batch})
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


def score(features: np.ndarray, metadata: pd.DataFrame, zeroshot_features: np.ndarray | None,
          zeroshot_metadata: pd.DataFrame | None, a: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """(task, accuracy, status) rows: Table 1 on the control subset, zero-shot cell typing on its subset."""
    table = classify.classify_controls(features, metadata, c=a.c, n_splits=a.n_splits, group_by=a.group_by,
                                       uv_is_positive=a.uv_is_positive, seed=a.seed)
    rows = [dict(task=r.task, accuracy=float(r.accuracy), status=r.status) for r in table.itertuples()]
    if zeroshot_features is not None:
        try:
            summary, _ = zeroshot.classify_cell_types(zeroshot_features, zeroshot_metadata, c=a.c,
                                                      n_splits=a.n_splits, seed=a.seed)
            rows.append(dict(task=ZEROSHOT_TASK, accuracy=summary["accuracy"], status="ok"))
        except classify.CVError as e:
            rows.append(dict(task=ZEROSHOT_TASK, accuracy=float("nan"), status=f"skipped: {e}"))
    return rows


class Probe:
    """The training loop's probe callback: `probe(step, d_params)` -> TensorBoard scalars."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        t = config.train
        for name in t.probe_features:
            registry.get(name)
        self.config, self.workdir = config, workdir
        self.model = ModelConfig.from_mapping(config.model)
        self.batch_size = sharding.local_batch_size(config.embed.batch_size)
        self.options = pipeline.InputOptions.from_config(config)
        self.spec = pipeline.open_records(layout.shards(config, workdir), config.data.rxrx1_utils_image_size)
        self.references: dict[str, list[dict[str, Any]]] = {}  # random-init rows: they do not change

    @functools.cached_property
    def subsets(self) -> tuple[np.ndarray, pd.DataFrame, np.ndarray | None, pd.DataFrame | None]:
        """(control images, their metadata, zero-shot images, their metadata), drawn at the first probe (a
        finished run that is only resumed never reads them)."""
        config, t = self.config, self.config.train
        images, metadata = fixed_subset(self.spec, self.options, t.probe_sites, config.seed, batch_size=self.batch_size,
                                        keep=lambda m: classify.control_mask(m, config.analysis.uv_is_positive))
        zimages = zmetadata = None
        zshards = layout.zeroshot_shards(config, self.workdir)
        if config.zeroshot.enabled and tf.io.gfile.glob(f"{zshards}/*"):
            zspec = pipeline.open_records(zshards, config.data.rxrx1_utils_image_size)
            zchannels = tuple(config.zeroshot.channels) or rxrx.channel_map("rxrx1", "rxrx19a")
            zimages, zmetadata = fixed_subset(zspec, self.options.replace(channels=zchannels),
                                              t.probe_zeroshot_sites, config.seed, batch_size=self.batch_size)
        elif config.zeroshot.enabled:
            logging.warning("probe: no zero-shot shards at %s; probing without zero-shot cell typing", zshards)
        logging.info("probe: %d control sites, %d zero-shot sites", len(metadata),
                     0 if zmetadata is None else len(zmetadata))
        return images, metadata, zimages, zmetadata

    def _score(self, name: str, context: base.Context) -> list[dict[str, Any]]:
        fn = registry.build(name, context)
        images, metadata, zimages, zmetadata = self.subsets
        zf = None if zimages is None else features_of(fn, zimages, self.batch_size)
        return score(features_of(fn, images, self.batch_size), metadata, zf, zmetadata, self.config.analysis)

    def __call__(self, step: int, d_params: Any) -> dict[str, float]:
        context = base.Context(self.config, sharding.make_mesh(), self.model, d_params, self.spec, self.options)
        rows, scalars = [], {}
        for name in self.config.train.probe_features:
            reference = registry.get(name).reference
            if reference and reference not in self.references:
                self.references[reference] = self._score(reference, context)
            by_task = {r["task"]: r for r in self.references.get(reference, [])}
            for row in self._score(name, context):
                ref = by_task.get(row["task"], {})
                rows.append(dict(row, step=step, images_seen=step * self.config.train.batch_size,
                                 feature_set=name, label=registry.get(name).label,
                                 reference_label=registry.get(reference).label if reference else "",
                                 reference_accuracy=ref.get("accuracy", float("nan"))))
                for key, value in ((name, row["accuracy"]), (reference, ref.get("accuracy", float("nan")))):
                    if key and math.isfinite(value):
                        scalars[f"probe/{row['task']}/{key}"] = value
        if jax.process_index() == 0:
            table = append_rows(layout.probe_table(self.workdir), rows)
            fileio.write_bytes(layout.probe_curve(self.workdir), plots.probe_curve_figure(table))
        logging.info("probe at step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in scalars.items()))
        return scalars
