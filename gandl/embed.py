"""Checkpoint + dataset -> embeddings.npz, profiles.parquet and .h5ad, and well profiles (gandl.profiles).

The feature functions come from `gandl.features` (the GAN-DL embedding, baselines, comparators). Export
streams the eval pipeline (every site once), computes several feature sets in the same pass (e.g. GAN-DL,
a random-init discriminator, handcrafted statistics), and writes parts every few batches, so memory stays
bounded. Parts are named by the sites they hold, so an interrupted export resumes at
its first missing site whatever the rerun's batch size; `export.json` records what the files depend
on, and a rerun with other settings is refused rather than handed the old files. A feature set is finished
only when its completion record (`{name}.complete.json`, gandl.fileio), written after its last file, still
matches every file it owes; a rerun redoes any other set.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

import gandl
from gandl import fileio, profiles, sharding
from gandl import workdir as layout
from gandl._tf import tf
from gandl.data import pipeline
from gandl.features.base import FeatureFn
from gandl.models.config import ModelConfig
from gandl.train import checkpoint


def restore_discriminator(workdir: str, mesh: jax.sharding.Mesh, step: int | None = None
                          ) -> tuple[ModelConfig, Any, int, dict]:
    """D parameters, model config, step and full config of a training checkpoint (default: the latest)."""
    config, state, step = checkpoint.restore_run(workdir, mesh, step)
    return ModelConfig.from_mapping(config.model), state.d_params, step, config.to_dict()


def code_version() -> str:
    """Package version plus the git commit of the source tree, when it is a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(gandl.__file__),
                                capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{gandl.__version__}+{commit}"


FORMAT = "gandl-embeddings/2"
SETTINGS = "export.json"
_PART = re.compile(r"part-(\d{9})-(\d{9})-of(\d{3})-p(\d{3})\.npz")


class ExportError(fileio.FileFault):
    """An export that cannot go on: its folder holds one made with other settings, or sites went missing."""


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


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


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


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for every differing entry, nested keys dotted."""
    out = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {_shown(a)} -> {_shown(b)}")
    return out


def _shown(value: Any, limit: int = 80) -> str:
    text = "(absent)" if value is _ABSENT else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _recorded_settings(out_dir: str, settings: Mapping[str, Any]) -> dict | None:
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
    changes = _changes({**old, "feature_sets": {n: {k: v for k, v in old["feature_sets"][n].items()
                                                    if k in new_sets[n]} for n in shared}},
                       {**settings, "feature_sets": {n: new_sets[n] for n in shared}})
    if changes:
        raise ExportError(f"{out_dir} holds an export made with other settings (changed: {'; '.join(changes)}); "
                          "rerun with its settings, or delete the folder to export again")
    return old


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
    settings = export_settings(spec, {name: (feature_settings or {}).get(name, {}) for name in feature_fns},
                               options, well_aggregate)
    paths = {name: os.path.join(out_dir, f"{name}.npz") for name in feature_fns}
    old = _recorded_settings(out_dir, settings)
    finished = _finished(out_dir, list(feature_fns), set(old["feature_sets"]) if old is not None else set())
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


def _finished(out_dir: str, names: list[str], recorded: set[str]) -> set[str]:
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

    Each set's parts are chained from position 0; the resume point is the furthest part boundary that all
    sets share (a kill can land between two sets' writes of one part). Parts beyond it are removed, so no
    site is held twice once the rerun writes its own, differently cut parts.
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
        while position in by_start:
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


def gather(out_dir: str, name: str, columns: list[str], provenance: Mapping[str, Any],
           chunk_rows: int = 16384, well_aggregate: str = "median") -> None:
    """Merge every process's parts into the final npz (contract: DESIGN.md), parquet and h5ad, in bounded memory.

    Sites go into metadata order (`index`, else site_id); metadata columns keep the screen's order
    (`columns`), site_id first. Only the metadata is held whole: features pass through a local scratch
    file in output order and are streamed `chunk_rows` at a time into every file, so memory does not
    grow with the feature matrix (305,520 × 512 for RxRx19a; benchmarks/analysis.py). Sites with a
    `well_id` also give well profiles, `{name}_wells.parquet` / `.h5ad` (gandl.profiles): each well the
    `well_aggregate` of its sites. The set's completion record, listing every file written, comes last.
    """
    pattern = os.path.join(out_dir, "parts", name, "part-*.npz")
    paths = sorted(tf.io.gfile.glob(pattern))
    if not paths:
        raise ValueError(f"no embedding parts match {pattern}")
    meta_parts = []
    for path in paths:
        with _open_npz(path) as part:
            meta_parts.append({k: part[k] for k in part.files if k != "features"})
    merged = {k: np.concatenate([m[k] for m in meta_parts]) for k in meta_parts[0]}
    ids, counts = np.unique(merged["site_id"], return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"the parts matching {pattern} hold {int((counts > 1).sum())} sites more than once, "
                         f"e.g. {list(ids[counts > 1][:5])}")
    order = np.argsort(merged["index"], kind="stable") if "index" in merged else np.argsort(merged["site_id"])
    if not len(order):
        raise ValueError(f"the parts matching {pattern} hold no sites")
    merged = {k: merged[k][order] for k in columns}
    destination = np.empty(len(order), np.int64)
    destination[order] = np.arange(len(order))  # row i of the concatenated parts goes to destination[i]
    with tempfile.TemporaryFile() as scratch:
        dim = _scatter_features(paths, destination, scratch)
        provenance_json = np.array(json.dumps(provenance, default=str))
        with fileio.written_locally(os.path.join(out_dir, f"{name}.npz")) as local, \
                zipfile.ZipFile(local, "w", zipfile.ZIP_STORED, allowZip64=True) as npz:
            for key, values in dict(merged, provenance=provenance_json).items():
                with npz.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, values, allow_pickle=False)
            with npz.open("features.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False,
                                                         "shape": (len(order), dim)})
                for _, chunk in _chunks(scratch, len(order), dim, chunk_rows):
                    f.write(chunk.tobytes())
        names = profiles.feature_names(dim)
        with fileio.written_locally(os.path.join(out_dir, f"{name}.parquet")) as local:
            writer = None
            for start, chunk in _chunks(scratch, len(order), dim, chunk_rows):
                table = pa.table({**profiles.metadata_table(merged, start, start + len(chunk)),
                                  **{n: chunk[:, j] for j, n in enumerate(names)}})
                writer = writer or pq.ParquetWriter(local, table.schema)
                writer.write_table(table)
            writer.close()
        rows = profiles.FeatureRows(scratch, len(order), dim)
        profiles.write_h5ad(os.path.join(out_dir, f"{name}.h5ad"), rows, merged, provenance, chunk_rows=chunk_rows)
        if profiles.WELL in merged:
            profiles.write_well_profiles(os.path.join(out_dir, f"{name}_wells"), rows, merged, provenance,
                                         aggregate=well_aggregate, chunk_rows=chunk_rows)
    owed = (".npz", ".parquet", ".h5ad") + (("_wells.parquet", "_wells.h5ad") if profiles.WELL in merged else ())
    fileio.write_record(completion_record(out_dir, name), [os.path.join(out_dir, f"{name}{ext}") for ext in owed],
                        feature_set=name)


@contextlib.contextmanager
def _open_npz(path: str) -> Iterator[np.lib.npyio.NpzFile]:
    """An npz from any tf.io.gfile path; members load on access, so metadata reads skip the features."""
    with tf.io.gfile.GFile(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
        yield npz


def _scatter_features(paths: list[str], destination: np.ndarray, scratch) -> int:
    """Write the parts' feature rows into `scratch` at their output rows; returns the feature width."""
    offset, dim = 0, None
    for path in paths:
        with _open_npz(path) as part:
            features = np.ascontiguousarray(part["features"], dtype="<f4")
        dim = features.shape[1] if dim is None else dim
        if features.shape[1] != dim:
            raise ValueError(f"{path}: {features.shape[1]} features per site, other parts have {dim}")
        for row, values in zip(destination[offset:offset + len(features)], features):
            scratch.seek(int(row) * dim * 4)
            scratch.write(values.tobytes())
        offset += len(features)
    return dim


def _chunks(scratch, rows: int, dim: int, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 [n, dim]) blocks of the scratch file, in order."""
    scratch.seek(0)
    for start in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - start)
        yield start, np.frombuffer(scratch.read(n * dim * 4), "<f4").reshape(n, dim)


def export_folds(spec: pipeline.RecordSpec, out_dir: str, folds: Sequence[Sequence[str]],
                 fine_tuned: Callable[[tuple[str, ...]], FeatureFn], *, batch_size: int,
                 controls: Callable[[Mapping[str, np.ndarray]], np.ndarray], provenance: Mapping[str, Any],
                 feature_settings: Mapping[str, Any], group_by: str,
                 options: pipeline.InputOptions = pipeline.InputOptions(), part_batches: int = 32) -> list[str]:
    """Per fold k, the control sites' features of a model fitted without the groups `folds[k]`.

    For extractors that learn the controls' labels (the ImageNet comparator): Table 1 scores fold k only
    with `fine_tuned(folds[k])`, which never saw it. `folds` is the analysis' fold assignment
    (`gandl.analysis.classify.control_folds`); each fold's export records the groups it held out, so a
    rerun with another assignment is refused, naming it.
    """
    paths = []
    for k, held_out in enumerate(folds):
        held_out = tuple(sorted(held_out))
        settings = dict(feature_settings, held_out=list(held_out), group_by=group_by, sites="controls")
        fn = lazy(functools.partial(fine_tuned, held_out))
        paths.append(export(spec, layout.comparator_fold(out_dir, k), {"imagenet": fn},
                            batch_size=batch_size, options=options, part_batches=part_batches, rows=controls,
                            feature_settings={"imagenet": settings},
                            provenance=dict(provenance, fold=k, num_folds=len(folds), held_out=list(held_out),
                                            group_by=group_by))["imagenet"])
    return paths
