"""Per-fold exports of a label-fitted feature set: fold k's model never saw fold k's groups.

An extractor the registry marks `per_fold` learns the controls' labels (the ImageNet comparator), so Table 1
scores fold k only with the features of a model fitted without fold k's groups. The fold assignment is the
analysis' (`gandl.data.folds`): the embed stage draws it once and writes it beside the export (folds.json),
where the analysis reads it back.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gandl import workdir as layout
from gandl.data import folds, pipeline
from gandl.embed.records import ExportError, changes
from gandl.embed.stream import export, lazy
from gandl.features.base import FeatureFn


def record_folds(out_dir: str, assignment: Mapping[str, Any]) -> None:
    """Write `assignment` as `out_dir`'s folds.json; one holding out other groups is refused (the per-fold exports
    beside it were fitted for it)."""
    old = folds.read_folds(out_dir)
    new = json.loads(json.dumps(dict(assignment)))  # as read back from the file
    if old is not None and old["held_out"] != new["held_out"]:
        raise ExportError(f"{out_dir} holds per-fold exports of another fold assignment (changed: "
                          f"{'; '.join(changes(old, new))}); rerun with its analysis settings, or delete the folder "
                          "to export again")
    if old != new:
        folds.write_folds(out_dir, new)


def export_folds(spec: pipeline.RecordSpec, out_dir: str, name: str, assignment: Mapping[str, Any],
                 fitted_without: Callable[[tuple[str, ...]], FeatureFn], *, batch_size: int,
                 rows: Callable[[Mapping[str, np.ndarray]], np.ndarray], provenance: Mapping[str, Any],
                 feature_settings: Mapping[str, Any], options: pipeline.InputOptions = pipeline.InputOptions(),
                 part_batches: int = 32) -> list[str]:
    """Per fold k of `assignment` (`gandl.data.folds.assignment`), the `rows` (the control sites) of feature set
    `name` computed by `fitted_without(held_out[k])`, a model that never saw them; returns the npz paths.

    The assignment is recorded first (`record_folds`); each fold's export also records the groups it held
    out, so a rerun with another assignment is refused, naming it.
    """
    record_folds(out_dir, assignment)
    held_out_folds, group_by = assignment["held_out"], assignment["group_by"]
    paths = []
    for k, held_out in enumerate(held_out_folds):
        held_out = tuple(sorted(held_out))
        settings = dict(feature_settings, held_out=list(held_out), group_by=group_by, sites="controls")
        fn = lazy(functools.partial(fitted_without, held_out))
        paths.append(export(spec, layout.label_fold(out_dir, name, k), {name: fn}, batch_size=batch_size,
                            options=options, part_batches=part_batches, rows=rows, feature_settings={name: settings},
                            provenance=dict(provenance, fold=k, num_folds=len(held_out_folds),
                                            held_out=list(held_out), group_by=group_by))[name])
    return paths
