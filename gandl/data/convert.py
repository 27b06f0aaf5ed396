"""Raw screen -> TFRecord shards, the format every later stage streams from, and a TFDS dataset.

Why our own writer rather than a tfds builder: a screen conversion is hours of decoding, so it must
resume shard by shard, report skipped sites and keep 16-bit data 16-bit. The finished folder is still a
TFDS dataset (`tfds.builder_from_directory(folder).as_dataset(split="train")` decodes every feature), so
records are what TFDS' `Tensor` features read: TFRecord files (uncompressed: TFDS reads no GZIP files),
`image` = the zlib-compressed raw little-endian pixel bytes of an H×W×C array, metadata as features that
round-trip exactly (int64 as int64, floats as their 8 little-endian float64 bytes, strings as UTF-8), plus
`height`, `width`, `channels` and the site's row `index` in the metadata table.

Layout of an output folder::

  conversion.json              what is being converted (checked on resume): metadata, image paths relative to
                               their common folder (a moved screen or workdir resumes), sizes, options
  shard-00000-of-00012.tfrecord   + shard-00000-of-00012.json (sidecar, written after its shard: sites,
                               skips, histograms, the shard's size and checksum, and the stamp of its input
                               files: their sizes and modification times)
  features.json, dataset_info.json   the TFDS metadata
  manifest.json                written last: shapes, dtype, stains, feature schema, per-channel stats, and
                               every shard's and TFDS file's size and checksum (the conversion's completion record)
  skipped_sites.csv            only when bad sites were skipped on request

A rerun checks the files against these records (gandl.fileio): a finished conversion whose shards all
match its manifest is returned untouched (a read-only folder can be reused); a shard that does not match
its sidecar (truncated, overwritten), or whose input files changed since (a repaired image: a site skipped as
unreadable is read again), is written again.

Site i goes to shard i mod num_shards, so every shard samples every plate: a process that reads a
subset of shards (multi-host training) still sees the whole screen.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import math
import multiprocessing
import os
import threading
import time
import zlib
from typing import Any

import numpy as np
import pandas as pd
from absl import logging
from tqdm import tqdm

from gandl import fileio
from gandl._tf import tf
from gandl.data import images
from gandl.data.screen import ChannelReader, Screen

FORMAT = "gandl-shards/2"
MANIFEST = "manifest.json"
CONVERSION = "conversion.json"
SKIPPED = "skipped_sites.csv"
PERCENTILES = (0.1, 1.0, 50.0, 99.0, 99.9)
PROBE_SITES = 16  # sites whose majority shape and dtype is the screen's


class ConversionError(fileio.FileFault):
    """A conversion stopped on bad input; finished shards are kept and a rerun resumes."""


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """How to convert. `image_size` 0 keeps full resolution; otherwise sites are area-downscaled."""

    image_size: int = 0
    sites_per_shard: int = 256
    skip_bad_sites: bool = False
    num_workers: int = 0  # 0: one per CPU core


SHARD_TEMPLATE = "shard-{SHARD_X_OF_Y}.tfrecord"  # the files, in TFDS' template syntax (one split: "train")


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.tfrecord"


def _sidecar(shard_file: str) -> str:
    return shard_file.removesuffix(".tfrecord") + ".json"


def feature_schema(metadata: pd.DataFrame) -> dict[str, str]:
    """Record feature type of each metadata column: 'int64', 'float64' or 'string'."""
    kinds = {}
    for col, dtype in metadata.dtypes.items():
        if pd.api.types.is_integer_dtype(dtype):
            kinds[col] = "int64"
        elif pd.api.types.is_float_dtype(dtype):
            kinds[col] = "float64"
        else:
            kinds[col] = "string"
    return kinds


def _feature(kind: str, value: Any) -> tf.train.Feature:
    """One metadata value as a record feature that reads back exactly (a FloatList would hold float32)."""
    if kind == "int64":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    if kind == "float64":
        return _bytes(np.float64(value).astype("<f8").tobytes())
    return _bytes(str(value).encode("utf-8"))


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def serialize_site(image: np.ndarray, index: int, row: dict[str, Any], schema: dict[str, str]) -> bytes:
    """One site as a tf.train.Example: zlib-compressed raw little-endian H×W×C pixels plus its metadata."""
    h, w, c = image.shape
    features = {name: _feature(kind, row[name]) for name, kind in schema.items()}
    features.update(
        image=_bytes(zlib.compress(np.ascontiguousarray(image.astype(image.dtype.newbyteorder("<"))).tobytes())),
        height=_feature("int64", h), width=_feature("int64", w), channels=_feature("int64", c),
        index=_feature("int64", index))
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(
        deterministic=True)  # sorted map keys: the same site gives the same bytes in any process


@dataclasses.dataclass(frozen=True)
class _ShardTask:
    """Everything one worker needs to write one shard, picklable for a spawned process."""

    path: str
    indices: list[int]
    rows: list[dict[str, Any]]
    paths: list[list[Any]]  # channel references, read by `reader`
    reader: ChannelReader
    schema: dict[str, str]
    source_shape: tuple[int, int]
    dtype: str
    image_size: int
    skip_bad_sites: bool
    inputs: str  # the stamp of the channel files it is written from (`_inputs`), kept in its sidecar


def load_site(paths: list[Any], reader: ChannelReader, source_shape: tuple[int, int], dtype: np.dtype,
              image_size: int) -> np.ndarray:
    """Read, validate and downscale every channel of one site (its references, read by `reader`) into H×W×C."""
    channels = []
    for path in paths:
        arr = reader.read(path)
        if arr.shape != source_shape:
            raise images.BadImageError(str(path), f"image size {arr.shape[1]}x{arr.shape[0]} differs from the "
                                             f"screen's {source_shape[1]}x{source_shape[0]}")
        if arr.dtype != dtype:
            raise images.BadImageError(str(path), f"{arr.dtype} pixels where the screen is {dtype}")
        channels.append(images.downscale(arr, image_size) if image_size else arr)
    return np.stack(channels, axis=-1)


def _write_shard(task: _ShardTask) -> dict[str, Any]:
    """Write one shard atomically, then its sidecar (the shard's completion record, with its checksum).

    A failing shard removes its temporary file (an I/O error names the shard); one killed outright leaves it to
    the rerun's clean-up.
    """
    dtype = np.dtype(task.dtype)
    bins = np.iinfo(dtype).max + 1
    hist = None
    skipped, written = [], 0
    tmp = fileio.temp_path(task.path)
    with fileio.named_faults(task.path), fileio.discarded_on_error(tmp):
        with tf.io.TFRecordWriter(tmp) as writer:
            for index, row, paths in zip(task.indices, task.rows, task.paths):
                try:
                    site = load_site(paths, task.reader, task.source_shape, dtype, task.image_size)
                except images.BadImageError as e:
                    if not task.skip_bad_sites:
                        raise
                    skipped.append({"site_id": row["site_id"], "path": e.path, "reason": e.reason})
                    continue
                writer.write(serialize_site(site, index, row, task.schema))
                counts = np.stack([np.bincount(site[..., c].ravel(), minlength=bins)
                                   for c in range(site.shape[-1])])
                hist = counts if hist is None else hist + counts
                written += 1
        fileio.commit(tmp, task.path)
    sparse = [] if hist is None else [
        {"values": np.flatnonzero(h).tolist(), "counts": h[h > 0].tolist()} for h in hist]
    return fileio.write_record(_sidecar(task.path), [task.path], num_sites=written, skipped=skipped,
                               histograms=sparse, inputs=task.inputs)


def _probe_rows(num_sites: int) -> np.ndarray:
    """Rows whose sites decide the screen's image shape and dtype: PROBE_SITES spread evenly over it."""
    return np.unique(np.linspace(0, num_sites - 1, min(num_sites, PROBE_SITES)).round().astype(np.int64))


def _probe(screen: Screen, skip_bad_sites: bool) -> tuple[tuple[int, int], np.dtype]:
    """Shape and dtype of the screen: those of most of PROBE_SITES readable sites spread over it.

    Not the first site's: one odd site (16-bit in an 8-bit screen) would decide, and with skip_bad_sites
    every other site would be skipped. Unreadable sites are passed over for the next ones in row order.
    """
    sample = _probe_rows(screen.num_sites)
    order = np.concatenate([sample, np.setdiff1d(np.arange(screen.num_sites), sample)])
    kinds: collections.Counter = collections.Counter()
    example = {}
    for i in order:
        try:
            first = screen.reader.read(screen.paths[i, 0])
            load_site(list(screen.paths[i]), screen.reader, first.shape, first.dtype, 0)
        except images.BadImageError:
            if not skip_bad_sites:
                raise
            continue
        kind = (first.shape, first.dtype)
        kinds[kind] += 1
        example.setdefault(kind, str(screen.paths[i, 0]))
        if kinds.total() == PROBE_SITES:
            break
    if not kinds:
        raise ConversionError(f"{screen.source}: no readable site in the screen")
    (kind, count), *others = kinds.most_common()
    if others and others[0][1] == count:
        listed = "; ".join(f"{n} {d.name} {s[1]}x{s[0]} (e.g. {example[(s, d)]})" for (s, d), n in kinds.most_common())
        raise ConversionError(f"{screen.source}: no majority image format among {kinds.total()} sites spread over "
                              f"the screen: {listed}; make the screen's files agree")
    return kind
def _relative(references: np.ndarray) -> list[str]:
    """Channel references as text relative to their common folder: what names them wherever the screen is."""
    texts = [str(r) for r in references.ravel()]
    root = os.path.dirname(os.path.commonpath(texts)) if len(set(texts)) == 1 else os.path.commonpath(texts)
    return [os.path.relpath(text, root) for text in texts]


def _fingerprint(screen: Screen, options: ConvertOptions, shape: tuple[int, int], dtype: np.dtype) -> dict:
    """What the shards are a conversion of, compared on resume; no absolute path, so a screen or workdir copied or
    moved elsewhere resumes (image contents are the shards' own `_inputs`)."""
    digest = hashlib.sha256()
    for chunk in (screen.metadata.to_csv(index=False), "\n".join(_relative(screen.paths))):
        digest.update(chunk.encode("utf-8"))
    return {"format": FORMAT, "stains": list(screen.stains),
            "num_sites": screen.num_sites, "content_sha256": digest.hexdigest(),
            "source_height": int(shape[0]), "source_width": int(shape[1]), "dtype": dtype.name,
            "image_size": options.image_size, "sites_per_shard": options.sites_per_shard}


def _stamps(screen: Screen, workers: int = 16) -> np.ndarray:
    """Every channel reference's stamp ([sites, channels]), read in parallel: on gs:// each is a request."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return np.array(list(pool.map(screen.reader.stamp, screen.paths.ravel())), object).reshape(screen.paths.shape)


def _inputs(stamps: np.ndarray) -> str:
    """One shard's input stamp: a digest of the stamps of its sites' files, in order."""
    return hashlib.sha256("\n".join(stamps.ravel()).encode("utf-8")).hexdigest()


def _check_resume(out_dir: str, fingerprint: dict) -> None:
    path = os.path.join(out_dir, CONVERSION)
    if not tf.io.gfile.exists(path):
        fileio.write_json(path, fingerprint)
        return
    previous = fileio.read_json(path)
    changed = [k for k in fingerprint if previous.get(k) != fingerprint[k]]
    if changed:
        raise ConversionError(f"{out_dir} holds shards of a different conversion (changed: {changed}); "
                              "write to a new folder or delete it")


def channel_stats(histograms: np.ndarray, stains: tuple[str, ...]) -> list[dict[str, float]]:
    """Exact per-channel intensity statistics from summed pixel histograms ([C, bins])."""
    stats = []
    values = np.arange(histograms.shape[1])
    for stain, h in zip(stains, histograms):
        cdf = np.cumsum(h) / h.sum()
        nz = np.flatnonzero(h)
        entry = {"stain": stain, "min": int(nz[0]), "max": int(nz[-1]),
                 "mean": float((values * h).sum() / h.sum())}
        entry.update({f"p{q:g}": int(np.searchsorted(cdf, q / 100.0)) for q in PERCENTILES})
        stats.append(entry)
    return stats


def _merge_histograms(sidecars: list[dict], num_channels: int, bins: int) -> np.ndarray:
    total = np.zeros((num_channels, bins), np.int64)
    for sc in sidecars:
        for c, h in enumerate(sc["histograms"]):
            np.add.at(total[c], h["values"], h["counts"])
    return total


def convert(screen: Screen, out_dir: str, options: ConvertOptions = ConvertOptions(), *,
            progress: bool = True) -> dict[str, Any]:
    """Convert a screen to shards in `out_dir`, resuming any earlier run; returns the manifest.

    A missing, corrupt or mismatched channel file stops the conversion with an error naming it (shards
    already written are kept), unless `options.skip_bad_sites`, which lists such sites in
    `skipped_sites.csv` instead.
    """
    if screen.num_sites == 0:
        raise ConversionError(f"{screen.source}: the screen has no sites")
    shape, dtype = _probe(screen, options.skip_bad_sites)
    if options.image_size:
        if shape[0] != shape[1]:
            raise ConversionError(f"{screen.source}: sites are {shape[1]}x{shape[0]}, not square; convert "
                                  "at full resolution (image_size=0)")
        if options.image_size > shape[0]:
            raise ConversionError(f"{screen.source}: image_size {options.image_size} exceeds the sites' "
                                  f"{shape[0]} px")
    tf.io.gfile.makedirs(out_dir)
    _check_resume(out_dir, _fingerprint(screen, options, shape, dtype))
    num_shards = math.ceil(screen.num_sites / options.sites_per_shard)
    schema = feature_schema(screen.metadata)
    records = screen.metadata.to_dict("records")
    stamps = _stamps(screen)
    tasks = []
    for k in range(num_shards):
        idx = list(range(k, screen.num_sites, num_shards))
        tasks.append(_ShardTask(
            path=os.path.join(out_dir, shard_name(k, num_shards)), indices=idx,
            rows=[records[i] for i in idx], paths=[list(screen.paths[i]) for i in idx], reader=screen.reader,
            schema=schema,
            source_shape=tuple(int(s) for s in shape), dtype=dtype.name, image_size=options.image_size,
            skip_bad_sites=options.skip_bad_sites, inputs=_inputs(stamps[idx])))
    manifest_path = os.path.join(out_dir, MANIFEST)
    if fileio.verify_record(manifest_path) == [] and not any(_inputs_changed(t) for t in tasks):
        return fileio.read_json(manifest_path)  # finished, every shard as recorded and its inputs unchanged
    fileio.remove_temp_files(out_dir)  # of shards a killed run was writing
    pending = [t for t in tasks if not _intact(t)]
    _run(pending, options.num_workers or os.cpu_count() or 1,
         tqdm(total=screen.num_sites, initial=screen.num_sites - sum(len(t.indices) for t in pending),
              unit="site", desc="convert", disable=not progress, smoothing=0.1))
    return _finish(screen, out_dir, tasks, shape, dtype, options, schema)


def _inputs_changed(task: _ShardTask) -> bool:
    """Whether the task's shard was written (its sidecar is there) from input files that have changed since."""
    path = _sidecar(task.path)
    return tf.io.gfile.exists(path) and fileio.read_json(path).get("inputs") != task.inputs


def _intact(task: _ShardTask) -> bool:
    """Whether the task's shard was written, still matches the size and checksum its sidecar records and was
    written from the input files as they are now (says why not)."""
    problems = fileio.verify_record(_sidecar(task.path))
    if problems == [] and _inputs_changed(task):
        problems = [f"{task.path}: its input files changed since it was written (a repaired or replaced image)"]
    if problems:
        logging.warning("%s: writing the shard again", "; ".join(problems))
    return problems == []


def _run(tasks: list[_ShardTask], num_workers: int, bar: tqdm) -> None:
    """Write shards, in parallel when asked; on the first failure stop the rest and explain."""
    done = 0
    try:
        if num_workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                _write_shard(task)
                bar.update(len(task.indices))
                done += 1
            return
        ctx = multiprocessing.get_context("spawn")  # fork after TensorFlow started threads can deadlock
        with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(tasks)), mp_context=ctx,
                                                    initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_write_shard, t): t for t in tasks}
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
                    bar.update(len(futures[future].indices))
                    done += 1
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    except images.BadImageError as e:
        raise ConversionError(
            f"conversion stopped at a bad image: {e}\nShards finished so far are kept and a rerun resumes; "
            "fix or remove the file, or set skip_bad_sites to skip such sites and list them.") from e
    finally:
        bar.close()


def _exit_with_parent(parent: int, poll_s: float = 0.2) -> None:
    """Pool-worker initializer: end the worker once its parent is gone, even by kill -9.

    Without it a killed conversion's workers (and so the multiprocessing resource tracker) live on as
    orphans, still writing shards beside a rerun.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _finish(screen: Screen, out_dir: str, tasks: list[_ShardTask], shape: tuple[int, int],
            dtype: np.dtype, options: ConvertOptions, schema: dict[str, str]) -> dict[str, Any]:
    sidecars = [fileio.read_json(_sidecar(t.path)) for t in tasks]
    skipped = [s for sc in sidecars for s in sc["skipped"]]
    files, skipped_path = [t.path for t in tasks], os.path.join(out_dir, SKIPPED)
    if skipped:
        files.append(skipped_path)
        fileio.write_text(skipped_path, pd.DataFrame(skipped).to_csv(index=False))
    elif tf.io.gfile.exists(skipped_path):  # an earlier run's list: its sites were repaired and are in the shards now
        tf.io.gfile.remove(skipped_path)
    num_sites = sum(sc["num_sites"] for sc in sidecars)
    if num_sites == 0:
        raise ConversionError(f"{screen.source}: every site was skipped; see {SKIPPED}")
    size = options.image_size or None
    manifest = {
        "format": FORMAT, "source": screen.source, "stains": list(screen.stains),
        "height": size or int(shape[0]), "width": size or int(shape[1]), "channels": len(screen.stains),
        "dtype": dtype.name, "source_height": int(shape[0]), "source_width": int(shape[1]),
        "num_sites": num_sites, "num_skipped": len(skipped), "image_encoding": "zlib",
        "shards": [{"file": os.path.basename(t.path), "num_sites": sc["num_sites"]}
                   for t, sc in zip(tasks, sidecars)],
        "features": schema,
        "channel_stats": channel_stats(
            _merge_histograms(sidecars, len(screen.stains), np.iinfo(dtype).max + 1), screen.stains),
    }
    files += write_tfds_metadata(out_dir, manifest)
    return fileio.write_record(os.path.join(out_dir, MANIFEST), files, **manifest)


def write_tfds_metadata(out_dir: str, manifest: dict[str, Any]) -> list[str]:
    """Make the shards a TFDS dataset (features.json, dataset_info.json): every record feature, typed; returns
    the files written.

    `tfds.builder_from_directory(out_dir).as_dataset(split="train")` then yields the uint8/uint16 images and
    the metadata as stored. TFDS loads only here, at the end of a conversion. A file system TFDS cannot
    address (e.g. TensorFlow's ram://) gets no TFDS metadata, with a warning: the shards serve GAN-DL as ever.
    """
    from etils import epath

    try:
        epath.Path(out_dir)
    except KeyError:
        logging.warning("%s: TFDS cannot address this file system; the shards get no TFDS metadata", out_dir)
        return []
    import tensorflow_datasets as tfds

    scalar = {"int64": tfds.features.Tensor(shape=(), dtype=np.int64),
              "float64": tfds.features.Tensor(shape=(), dtype=np.float64, encoding="bytes"),
              "string": tfds.features.Text()}
    shape = (manifest["height"], manifest["width"], manifest["channels"])
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=shape, dtype=np.dtype(manifest["dtype"]), encoding="zlib"),
        **{k: scalar["int64"] for k in ("height", "width", "channels", "index")},
        **{name: scalar[kind] for name, kind in manifest["features"].items()}})
    template = tfds.core.ShardedFileTemplate(data_dir=out_dir, template=SHARD_TEMPLATE, dataset_name="gandl_screen",
                                             split="train", filetype_suffix="tfrecord")
    split = tfds.core.SplitInfo(name="train", shard_lengths=[s["num_sites"] for s in manifest["shards"]],
                                num_bytes=sum(tf.io.gfile.stat(os.path.join(out_dir, s["file"])).length
                                              for s in manifest["shards"]), filename_template=template)
    tfds.folder_dataset.write_metadata(data_dir=out_dir, features=features, split_infos=[split],
                                       filename_template=template, check_data=False,
                                       description=f"GAN-DL shards of {manifest['source']} ({FORMAT})")
    return [os.path.join(out_dir, name) for name in ("features.json", "dataset_info.json")]
