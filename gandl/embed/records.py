"""What an export's files depend on (`export.json`) and when a feature set is finished (its completion record).

A rerun with other settings is refused, naming what changed, rather than handed the old files; a feature set
is finished only when its completion record (`{name}.complete.json`, gandl.fileio), written after its last
file, still matches every file it owes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from gandl import fileio
from gandl._tf import tf
from gandl.data import pipeline
from gandl.features import registry

FORMAT = "gandl-embeddings/2"
SETTINGS = "export.json"


class ExportError(fileio.FileFault):
    """An export that cannot go on: its folder holds one made with other settings, or sites went missing."""


def completion_record(out_dir: str, name: str) -> str:
    """Where feature set `name`'s completion record lies: written last, it lists every file the set owes."""
    return os.path.join(out_dir, f"{name}.complete.json")


def export_settings(spec: pipeline.RecordSpec, feature_settings: Mapping[str, Mapping[str, Any]],
                    options: pipeline.InputOptions = pipeline.InputOptions(), well_aggregate: str = "median") -> dict:
    """What an export's files depend on, as recorded in its `export.json`: records, pipeline options, feature sets.

    `feature_settings` says what each feature set is (checkpoint, orientation averaging, ...): a function
    cannot say it itself. Batch size, part length and process count are left out: they change no value.
    Channels are recorded as the list read (every channel when none are named), so spelling out the default
    is no change.
    """
    record = {"format": FORMAT,
              "records": {"files": list(spec.files), "height": spec.height, "width": spec.width,
                          "stains": list(spec.stains), "dtype": spec.dtype, "features": dict(spec.features),
                          "shard_sizes": spec.shard_sizes, "intensity_range": spec.intensity_range},
              "channels": _channels(options.channels, len(spec.stains)), "intensity": options.intensity,
              "crop_size": options.crop_size, "well_aggregate": well_aggregate,
              "feature_sets": {name: dict(value) for name, value in feature_settings.items()}}
    return json.loads(json.dumps(record, default=str))  # tuples as lists: as read back from the file


def _channels(channels: Sequence[int], num_channels: int) -> list[int]:
    """The 1-based channels a pipeline reads: `channels`, or all of them when empty."""
    return list(channels) or list(range(1, num_channels + 1))


_ABSENT = object()


def changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every differing entry, nested keys dotted."""
    out = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {_shown(a)} -> {_shown(b)}")
    return out


def _shown(value: Any, limit: int = 80) -> str:
    text = "(absent)" if value is _ABSENT else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def recorded_settings(out_dir: str, settings: Mapping[str, Any]) -> dict | None:
    """The settings `out_dir`'s export.json records (None: no export yet), after refusing a changed one.

    Only what both name is compared: records, pipeline options and each feature set both hold. A feature set
    the record lacks is an addition (exported next to the finished ones), one the request lacks stays put.
    Of a set's settings, those this code records are compared: a field an older record also holds is one
    that does not shape the set (the registry's `embed_fields`).
    """
    path = os.path.join(out_dir, SETTINGS)
    if not tf.io.gfile.exists(path):
        return None
    old = fileio.read_json(path)
    old["channels"] = _channels(old["channels"], len(old["records"]["stains"]))  # records before the explicit list
    new_sets = settings["feature_sets"]
    shared = [name for name in new_sets if name in old.get("feature_sets", {})]
    changed = changes({**old, "feature_sets": {n: {k: v for k, v in old["feature_sets"][n].items()
                                                   if k in new_sets[n]} for n in shared}},
                      {**settings, "feature_sets": {n: new_sets[n] for n in shared}})
    if changed:
        raise ExportError(f"{out_dir} holds an export made with other settings (changed: {'; '.join(changed)}); "
                          "rerun with its settings, or delete the folder to export again")
    return old


def exported_sets(out_dir: str) -> list[str]:
    """The feature sets `out_dir` holds an npz of, in registry order (a random-init set's other initialisations,
    `<name>@<i>`, right after it); none for a folder that is not there."""
    if not tf.io.gfile.isdir(out_dir):
        return []
    return registry.ordered(f.removesuffix(".npz") for f in tf.io.gfile.listdir(out_dir) if f.endswith(".npz"))


def check_finished(out_dir: str) -> None:
    """Refuse an export a reader must not take, in one line naming the file and what to do: an `export.json` of
    another format or none, or a feature set (those the folder holds an npz of, and those the record lists)
    whose completion record is missing or no longer matches its files. A reader that took the npz as it is
    would analyse an unfinished or damaged set without a word."""
    path = os.path.join(out_dir, SETTINGS)
    try:
        recorded = fileio.read_json(path) if tf.io.gfile.exists(path) else {}
    except ValueError as e:
        raise ExportError(f"{path}: unreadable ({e}); run --mode embed to export again") from None
    if recorded.get("format") != FORMAT:
        found = f"of format {recorded['format']!r}" if "format" in recorded else "without a format"
        raise ExportError(f"{path}: an export settings record {found}, this GAN-DL reads {FORMAT!r}; delete "
                          f"{out_dir} and run --mode embed to export again")
    sets = registry.ordered([*recorded.get("feature_sets", {}), *exported_sets(out_dir)])
    for name in sets:
        problems = fileio.verify_record(completion_record(out_dir, name))
        if problems != []:
            raise ExportError(f"feature set {name} in {out_dir} is not finished ("
                              f"{'; '.join(problems) if problems else 'no completion record'}): "
                              "run --mode embed to export it again")


def finished(out_dir: str, names: list[str], recorded: set[str]) -> set[str]:
    """The sets among `names` that the settings record holds (`recorded`) and whose completion record matches their
    files, as process 0 finds them (it says why any other is exported again); every process gets its answer, as
    another may read the settings record after process 0 has written it."""
    intact = np.zeros(len(names), np.int32)  # summed over processes by the broadcast
    if jax.process_index() == 0:
        for i, name in enumerate(names):
            if name not in recorded:
                continue
            problems = fileio.verify_record(completion_record(out_dir, name))
            intact[i] = problems == []
            if not intact[i]:
                logging.warning("feature set %s in %s is not finished (%s): exporting it again", name, out_dir,
                                "; ".join(problems) if problems else "no completion record")
    intact = multihost_utils.broadcast_one_to_all(intact)
    return {name for name, ok in zip(names, intact) if ok}
