"""Streaming an export: the eval pipeline (every site once) through several feature functions in one pass,
written as resumable parts every few batches, so memory stays bounded.

Parts are named by the sites they hold, so an interrupted export resumes at its first missing site whatever
the rerun's batch size; `export.json` (gandl.embed.records) records what the files depend on; process 0
gathers the parts into the final files (gandl.embed.writers).
"""

from __future__ import annotations

import functools
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from gandl import fileio, profiles, sharding
from gandl._tf import tf
from gandl.data import pipeline
from gandl.embed import records
from gandl.embed.records import SETTINGS, ExportError
from gandl.embed.writers import gather, npz_bytes
from gandl.features.base import FeatureFn

_PART = re.compile(r"part-(\d{9})-(\d{9})-of(\d{3})-p(\d{3})\.npz")


def part_path(out_dir: str, name: str, start: int, end: int, process: int | None = None,
              process_count: int | None = None) -> str:
    """Where a process (default: this one) writes feature set `name` of the sites [start, end) of its stream.

    Positions count the sites of the process's eval stream (`pipeline.eval_dataset`, a fixed order). Parts
    are named by the sites they hold, not by a batch counter, so a rerun with another batch size or part
    length resumes exactly where they end; the process count in the name tells layouts apart.
    """
    process = jax.process_index() if process is None else process
    count = jax.process_count() if process_count is None else process_count
    return os.path.join(out_dir, "parts", name, f"part-{start:09d}-{end:09d}-of{count:03d}-p{process:03d}.npz")


def _metadata_arrays(batch: Mapping[str, np.ndarray], keep: np.ndarray, spec: pipeline.RecordSpec) -> dict:
    """The batch's metadata columns (padding dropped), as the screen typed them: strings as unicode, integers as
    int64, floats as float64."""
    out = {}
    for name in [*spec.features, "site_id", "index"]:
        if name not in batch:
            continue
        values = batch[name][keep]
        out[name] = np.char.decode(values.astype(bytes), "utf-8") if values.dtype.kind in "SO" else values
    return out


def lazy(make: Callable[[], FeatureFn]) -> FeatureFn:
    """A FeatureFn built on its first call, so a finished export skips a costly set-up (ImageNet fine-tuning)."""
    make = functools.cache(make)
    return lambda local_images: make()(local_images)


def export(spec: pipeline.RecordSpec, out_dir: str, feature_fns: Mapping[str, FeatureFn], *, batch_size: int,
           provenance: Mapping[str, Any], feature_settings: Mapping[str, Mapping[str, Any]] | None = None,
           options: pipeline.InputOptions = pipeline.InputOptions(), part_batches: int = 32,
           progress: bool = True, rows: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
           well_aggregate: str = "median") -> dict[str, str]:
    """Write `{out_dir}/{name}.npz` and `{name}.parquet` for each feature set; returns the npz paths.

    Sites with a `well_id` also give well profiles (`gandl.profiles`), each well the `well_aggregate` (median or
    mean) of its sites.

    `rows(batch)`, when given, picks the sites of a batch to write (e.g. only the controls); say so in
    `feature_settings`, since the settings record cannot see a function.

    `batch_size` is global; each process exports its own files' sites into its parts, and process 0
    gathers the parts into the final files (sites in metadata order when the records carry `index`).
    The first run records its settings (`export_settings`) in `export.json`; a rerun with the same ones
    resumes or returns the finished files, one with other ones is refused, naming what changed. A rerun that
    adds feature sets exports only those, next to the finished ones, and adds them to the record. A set is
    finished when its completion record matches its files (checked by process 0); one whose files are missing
    or differ is gathered again from its parts (or exported again without them), and temporary files that
    killed writers left are removed.
    """
    unknown = sorted(set(feature_settings or {}) - set(feature_fns))
    if unknown:
        raise ValueError(f"feature_settings for {unknown}, which are not among the feature sets {list(feature_fns)}")
    profiles.check_aggregate(well_aggregate)  # before any site is streamed
    settings = records.export_settings(spec, {name: (feature_settings or {}).get(name, {}) for name in feature_fns},
                               options, well_aggregate)
    paths = {name: os.path.join(out_dir, f"{name}.npz") for name in feature_fns}
    old = records.recorded_settings(out_dir, settings)
    finished = records.finished(out_dir, list(feature_fns), set(old["feature_sets"]) if old is not None else set())
    if len(finished) == len(feature_fns):
        if jax.process_index() == 0 and tf.io.gfile.isdir(out_dir):
            fileio.remove_temp_files(out_dir)
        return paths
    feature_fns = {name: fn for name, fn in feature_fns.items() if name not in finished}
    if old is not None:  # the record keeps its sets and gains the added ones
        settings = {**old, "feature_sets": {**old["feature_sets"], **settings["feature_sets"]}}
    if jax.process_index() == 0:
        _prepare_folder(out_dir, list(feature_fns), settings, old is not None)
    multihost_utils.sync_global_devices("embeddings folder prepared")

    local = sharding.local_batch_size(batch_size)
    me, count = jax.process_index(), jax.process_count()
    offset = _resume_offset(out_dir, list(feature_fns))
    own = sum(spec.shard_sizes[me::count]) if spec.shard_sizes is not None else None
    total = pipeline.eval_num_batches(spec, local, count)
    # Every process runs the same batches (the features are computed on the global mesh): from the batch
    # holding the least advanced process's first missing site, dropping the rows each already has.
    needed = total if own is not None and offset >= own else offset // local
    first = int(np.min(multihost_utils.process_allgather(np.int64(needed))))
    ds = pipeline.eval_dataset(spec, options, batch_size=local, process_index=me, process_count=count)
    bar = tqdm(total=total, initial=first, unit="batch", desc="embed", disable=not progress)
    buffers: dict[str, list[dict]] = {name: [] for name in feature_fns}
    held: list[np.ndarray] = []
    end = offset
    for i, batch in enumerate(pipeline.batches(ds.skip(first), pipeline.process_files(spec, me, count),
                                                    spec.compression), start=first):
        position = i * local + np.arange(local)
        new = batch["mask"] & (position >= offset)  # stream sites this run has not exported yet
        keep = new if rows is None else new & rows(batch)
        meta = _metadata_arrays(batch, keep, spec)
        for name, fn in feature_fns.items():
            buffers[name].append(dict(meta, features=fn(batch["image"])[keep].astype(np.float32)))
        held.append(position[new])
        bar.update(1)
        if (i + 1 - first) % part_batches == 0:
            end = _flush(out_dir, held, buffers, end)
    end = _flush(out_dir, held, buffers, end)
    bar.close()
    if own is not None and end != own:
        raise ExportError(f"process {me} exported sites up to {end} of the {own} its record files hold "
                          f"({list(spec.files[me::count])[:3]}...): a record file is shorter than its manifest says")
    multihost_utils.sync_global_devices("embeddings parts written")
    if jax.process_index() == 0:
        columns = ["site_id", *[c for c in spec.features if c != "site_id"]]
        for name in feature_fns:
            gather(out_dir, name, columns, dict(provenance, feature_set=name,
                                                feature_settings=settings["feature_sets"][name]),
                   well_aggregate=well_aggregate)
    multihost_utils.sync_global_devices("embeddings gathered")
    return paths


def _prepare_folder(out_dir: str, names: list[str], settings: Mapping[str, Any], recorded: bool) -> None:
    """Record the settings of a new or grown export, and remove what no resume of `names` can use (process 0,
    before any part).

    Parts without a settings record are of unknown settings; parts of another process count index other
    streams; temporary files are what killed writers left.
    """
    tf.io.gfile.makedirs(out_dir)
    fileio.remove_temp_files(out_dir)
    if not recorded and tf.io.gfile.exists(os.path.join(out_dir, "parts")):
        tf.io.gfile.rmtree(os.path.join(out_dir, "parts"))
    fileio.write_json(os.path.join(out_dir, SETTINGS), settings)  # new, or with sets added
    if not recorded:
        return
    count = jax.process_count()
    for name in names:
        folder = os.path.join(out_dir, "parts", name)
        fileio.remove_temp_files(folder)
        for path in tf.io.gfile.glob(os.path.join(folder, "part-*.npz")):
            m = _PART.fullmatch(os.path.basename(path))
            if m is None or int(m[3]) != count:
                tf.io.gfile.remove(path)


def _resume_offset(out_dir: str, names: list[str]) -> int:
    """How many leading sites of this process's stream every feature set holds in parts; removes its other parts.

    Each set's parts are chained from position 0, up to the first damaged one (`_readable`); the resume point is
    the furthest part boundary that all sets share (a kill can land between two sets' writes of one part). Parts
    beyond it are removed, so no site is held twice once the rerun writes its own, differently cut parts.
    """
    me, count = jax.process_index(), jax.process_count()
    chains, found = {}, {}
    for name in names:
        found[name] = tf.io.gfile.glob(os.path.join(out_dir, "parts", name, f"part-*-of{count:03d}-p{me:03d}.npz"))
        by_start: dict[int, list[tuple[int, str]]] = {}
        for path in found[name]:
            m = _PART.fullmatch(os.path.basename(path))
            if m and int(m[2]) > int(m[1]):
                by_start.setdefault(int(m[1]), []).append((int(m[2]), path))
        chain, position = [], 0
        while position in by_start and _readable(max(by_start[position])[1]):
            position, path = max(by_start[position])
            chain.append((position, path))
        chains[name] = chain
    offset = max(set.intersection(*[{0, *(end for end, _ in chain)} for chain in chains.values()]))
    for name in names:
        kept = {path for end, path in chains[name] if end <= offset}
        for path in found[name]:
            if path not in kept:
                tf.io.gfile.remove(path)
    return offset


def _readable(path: str) -> bool:
    """Whether every array of a part reads back, checksums included; a damaged one is named (and its sites are
    exported again), since gathered it would fail every rerun the same way."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            for key in npz.files:
                npz[key]
        return True
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        logging.warning("%s: a damaged embedding part (%s): exporting its sites again", path, error)
        return False


def _flush(out_dir: str, held: list[np.ndarray], buffers: dict[str, list[dict]], start: int) -> int:
    """Write the buffered rows as one part per feature set (the set listed last goes last); returns their end.

    `held` lists the stream positions the buffered rows came from (those `rows` dropped included):
    consecutive, as the stream drops no site.
    """
    positions = np.concatenate(held) if held else np.zeros(0, np.int64)
    held.clear()
    if len(positions):
        start, end = int(positions[0]), int(positions[-1]) + 1
        for name, rows in buffers.items():
            merged = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
            fileio.write_bytes(part_path(out_dir, name, start, end), npz_bytes(merged))
        start = end
    for rows in buffers.values():
        rows.clear()
    return start
