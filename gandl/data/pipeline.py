"""tf.data pipelines over TFRecord shards: random batches for training, every site once for export.

Both read our converted shards (described by their `manifest.json`: zlib-compressed pixels in `image`) and
Recursion's rxrx1-utils RxRx1 TFRecords (GZIP files, raw pixel bytes in `image`). Batches are numpy
dicts of this process's part of the global batch, ready for `jax.make_array_from_process_local_data`.

Determinism: file order, shuffles and augmentations derive from the seed alone (stateless random ops
keyed by the element's position in the stream), so the same seed gives the same batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from gandl import defaults, fileio
from gandl._tf import tf
from gandl.data import convert
from gandl.data.screen import RESERVED_COLUMNS
from gandl.data.vocabulary import STAINS
from gandl.defaults import INTENSITIES

AUTOTUNE = tf.data.AUTOTUNE
_GLOB = re.compile(r"[*?\[]")
_READ_BUFFER = 8 << 20  # bytes per open file: large reads matter on gs://
_TF_TYPES = {"int64": tf.int64, "float64": tf.string, "string": tf.string}  # float64: its 8 little-endian bytes
_DEFAULTS = {"int64": -1, "float64": np.array(np.nan, "<f8").tobytes(), "string": ""}
RXRX1_UTILS_FEATURES = {"well": "string", "well_type": "string", "experiment": "string",
                        "cell_type": "string", "plate": "int64", "site": "int64", "sirna": "int64"}


class CorruptRecordsError(fileio.FileFault):
    """A record file that cannot be read to its end (truncated, overwritten): named with the record it fails at."""


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How records become model inputs, the same for every stage that reads them (built from `config.data`)."""

    channels: tuple[int, ...] = ()  # 1-based channels to read, in order; () = all
    intensity: str = "auto"  # auto | dtype | dataset: which raw values map to [-1, 1]
    crop_size: int = 0  # random crop in training, central crop in export; 0 = none
    resolution: int = 0  # the model's: area-downscale (after any crop) to this side; 0 = as stored
    augment: bool = True  # random flips and 90-degree turns in training
    shuffle_buffer: int = 1024  # training records shuffled within this many

    @classmethod
    def from_config(cls, config: defaults.RunConfig) -> InputOptions:
        """The options of a run's config: its `data` block, images brought to `model.resolution`."""
        data = config.data
        return cls(channels=tuple(data.channels), intensity=data.intensity, crop_size=data.crop_size,
                   resolution=defaults.model_resolution(config), augment=data.augment,
                   shuffle_buffer=data.shuffle_buffer)

    def replace(self, **changes) -> InputOptions:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """What a set of TFRecord files holds: image shape and dtype, stains, metadata schema, statistics."""

    files: tuple[str, ...]
    height: int
    width: int
    stains: tuple[str, ...]
    dtype: str
    features: dict[str, str]
    shard_sizes: tuple[int, ...] | None = None  # sites per file, when known (our shards)
    intensity_range: tuple[tuple[float, float], ...] | None = None  # per channel, from conversion stats
    has_index: bool = False
    compression: str = "GZIP"  # of the files ("" for ours)
    image_encoding: str = "raw"  # raw | zlib: how `image` holds the pixel bytes

    @property
    def num_channels(self) -> int:
        return len(self.stains)


def open_shards(data_dir: str) -> RecordSpec:
    """The spec of a converted shard folder, from its manifest (which only a finished conversion writes)."""
    path = os.path.join(data_dir, convert.MANIFEST)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: {data_dir} is not a finished conversion "
                                "(run the convert mode, which resumes an interrupted one)")
    m = fileio.read_json(path)
    if m.get("format") != convert.FORMAT:
        raise fileio.FileFault(f"{path}: shard format {m.get('format')!r}, this code reads {convert.FORMAT!r}; convert "
                               "the screen again into a new folder")
    return RecordSpec(
        files=tuple(os.path.join(data_dir, s["file"]) for s in m["shards"]), height=m["height"],
        width=m["width"], stains=tuple(m["stains"]), dtype=m["dtype"], features=m["features"],
        shard_sizes=tuple(s["num_sites"] for s in m["shards"]),
        intensity_range=tuple((s["p0.1"], s["p99.9"]) for s in m["channel_stats"]), has_index=True,
        compression="", image_encoding=m["image_encoding"])


def rxrx1_utils_spec(pattern: str, rxrx1_utils_size: int = 512) -> RecordSpec:
    """Recursion's published RxRx1 TFRecords (GZIP, uint8 H×W×6 `image`, `rxrx1_utils_size` px a side), matched by
    a glob pattern."""
    files = tuple(sorted(tf.io.gfile.glob(pattern)))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern!r}")
    return RecordSpec(files=files, height=rxrx1_utils_size, width=rxrx1_utils_size, stains=STAINS["rxrx1"],
                      dtype="uint8", features=dict(RXRX1_UTILS_FEATURES))


def open_records(source: str, rxrx1_utils_size: int = 512) -> RecordSpec:
    """A shard folder (has manifest.json) or else rxrx1-utils TFRecord files (a file or a glob) of images
    `rxrx1_utils_size` px a side (`data.rxrx1_utils_image_size`; the shards' manifest gives theirs)."""
    if tf.io.gfile.exists(os.path.join(source, convert.MANIFEST)):
        return open_shards(source)
    if not _GLOB.search(source) and (tf.io.gfile.isdir(source) or not tf.io.gfile.exists(source)):
        raise FileNotFoundError(f"{source}: no converted shards there (no {convert.MANIFEST}); run --mode convert "
                                "first (it resumes an interrupted conversion), or point data.shards at them")
    return rxrx1_utils_spec(source, rxrx1_utils_size)


def output_stains(spec: RecordSpec, channels: Sequence[int] = ()) -> tuple[str, ...]:
    """Stains of the pipeline's output channels after selection/mapping (1-based `channels`)."""
    _check_channels(spec, channels)
    return tuple(spec.stains[c - 1] for c in channels) if channels else spec.stains


def _check_channels(spec: RecordSpec, channels: Sequence[int]) -> None:
    bad = [c for c in channels if not 1 <= c <= spec.num_channels]
    if bad:
        raise ValueError(f"channels {bad} out of range: the records have {spec.num_channels} channels "
                         f"{spec.stains} (channels are 1-based)")


def _intensity_bounds(spec: RecordSpec, intensity: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) raw values that map to -1 and +1.

    'dtype' uses the pixel type's full range (right for 8-bit screens such as RxRx19a); 'dataset' uses
    the converted screen's 0.1/99.9 percentiles, needed for 16-bit images that use a sliver of the range;
    'auto' picks 'dtype' for 8-bit and 'dataset' for 16-bit.
    """
    if intensity == "auto":
        intensity = "dtype" if spec.dtype == "uint8" else "dataset"
    if intensity == "dtype":
        hi = float(np.iinfo(spec.dtype).max)
        return np.zeros(spec.num_channels, np.float32), np.full(spec.num_channels, hi, np.float32)
    if intensity == "dataset":
        if spec.intensity_range is None:
            raise ValueError("intensity='dataset' needs converted shards with statistics (manifest.json)")
        lo, hi = np.array(spec.intensity_range, np.float32).T
        return lo, np.maximum(hi, lo + 1.0)
    raise ValueError(f"unknown intensity mode {intensity!r}; expected one of {INTENSITIES}")


def downscale_factor(spec: RecordSpec, crop_size: int, resolution: int) -> int:
    """The whole factor that area-downscales the records (after any crop) to `resolution` px; 1 when it is 0.

    Only whole factors: the box filter of conversion (gandl.data.images.downscale) is then an exact block mean.
    """
    side = crop_size or spec.height
    if crop_size and crop_size > min(spec.height, spec.width):
        raise ValueError(f"crop_size {crop_size} exceeds the {spec.height}x{spec.width} images of {spec.files[0]}")
    if not resolution or resolution == side:
        return 1
    what = f"crop_size {crop_size} of the" if crop_size else "the"
    if spec.height != spec.width and not crop_size:
        raise ValueError(f"{what} {spec.height}x{spec.width} records of {spec.files[0]} are not square: they cannot "
                         f"be area-downscaled to {resolution} px; set data.crop_size")
    if resolution > side or side % resolution:
        fits = [side // k for k in range(1, side + 1) if side % k == 0 and side // k >= 8]
        raise ValueError(f"{what} {spec.height}x{spec.width} records of {spec.files[0]} cannot be area-downscaled to "
                         f"{resolution} px: {side} is not a whole multiple of {resolution} (sizes that divide it: "
                         f"{fits}); choose model.resolution / data.crop_size to match")
    return side // resolution


def _finish(image: tf.Tensor, factor: int) -> tf.Tensor:
    """Box-filter downscale by a whole `factor` (before clipping, as conversion averages raw values), then clip."""
    if factor > 1:
        image = tf.nn.avg_pool2d(image[None], factor, factor, "VALID")[0]
    return tf.clip_by_value(image, -1.0, 1.0)


def _parser(spec: RecordSpec, channels: Sequence[int], intensity: str, with_metadata: bool):
    """A function (serialized record, file name) -> dict with a float32 H×W×C image, linearly mapped so that the
    intensity bounds are ±1 (clipped by `_finish`, after crop and downscale)."""
    _check_channels(spec, channels)
    desc = {"image": tf.io.FixedLenFeature([], tf.string)}
    if with_metadata:
        desc.update({k: tf.io.FixedLenFeature([], _TF_TYPES[v], default_value=_DEFAULTS[v])
                     for k, v in spec.features.items()})
        if spec.has_index:
            desc["index"] = tf.io.FixedLenFeature([], tf.int64)
    lo, hi = _intensity_bounds(spec, intensity)
    idx = [c - 1 for c in channels] if channels else list(range(spec.num_channels))
    lo, scale = tf.constant(lo[idx]), tf.constant(2.0 / (hi[idx] - lo[idx]))
    shape = [spec.height, spec.width, spec.num_channels]
    size = int(np.prod(shape))
    derive_site_id = with_metadata and "site_id" not in spec.features
    floats = [k for k, v in spec.features.items() if with_metadata and v == "float64"]

    def parse(record: tf.Tensor, filename: tf.Tensor) -> dict[str, tf.Tensor]:
        ex = tf.io.parse_single_example(record, desc)
        for name in floats:
            ex[name] = tf.reshape(tf.io.decode_raw(ex[name], tf.float64, little_endian=True), [])
        data = ex.pop("image")
        if spec.image_encoding == "zlib":
            data = tf.io.decode_compressed(data, "ZLIB")
        pixels = tf.io.decode_raw(data, tf.as_dtype(spec.dtype), little_endian=True)
        check = tf.debugging.Assert(tf.equal(tf.size(pixels), size), [
            "a record in", filename, "holds", tf.size(pixels), f"pixels, expected {spec.height}x{spec.width}"
            f"x{spec.num_channels} = {size} (wrong image size or channel count for these records)"])
        with tf.control_dependencies([check]):
            image = tf.gather(tf.reshape(pixels, shape), idx, axis=-1)
        image = (tf.cast(image, tf.float32) - lo) * scale - 1.0
        if derive_site_id:  # rxrx1-utils records carry the parts of the id, not the id
            ex["site_id"] = tf.strings.join([ex["experiment"], tf.strings.as_string(ex["plate"]), ex["well"],
                                             tf.strings.as_string(ex["site"])], "_")
        return dict(ex, image=image)

    return parse


def _records(filenames: tf.data.Dataset, cycle_length: int, compression: str) -> tf.data.Dataset:
    """(record, file name) pairs, interleaved over `cycle_length` files at a time in a fixed order."""
    def read(f: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(f, compression, buffer_size=_READ_BUFFER).map(lambda r: (r, f))

    return filenames.interleave(read, cycle_length=cycle_length, num_parallel_calls=AUTOTUNE, deterministic=True)


def batches(ds: tf.data.Dataset, files: Sequence[str], compression: str = "") -> Iterator:
    """`ds`'s elements as numpy; a damaged file among `files` (those `ds` reads) stops it with a
    `CorruptRecordsError` naming the file, rather than TensorFlow's DataLossError, which names none."""
    it = ds.as_numpy_iterator()
    while True:
        try:
            element = next(it)
        except StopIteration:
            return
        except tf.errors.DataLossError as e:
            raise CorruptRecordsError(_locate_damage(files, e, compression)) from None
        yield element


def _locate_damage(files: Sequence[str], error: tf.errors.DataLossError, compression: str) -> str:
    """Which of `files` are damaged, and at which record (`error` read from one of them): each is read again."""
    damaged = {}
    for path in files:
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path, compression, buffer_size=_READ_BUFFER):
                count += 1
        except tf.errors.DataLossError as e:
            damaged[path] = f"record {count + 1} unreadable: {_reason(e)}"
    if not damaged:
        shown = f"{list(files)[:3]}{'...' if len(files) > 3 else ''}"
        return f"a record file among {shown} could not be read ({_reason(error)})"
    ours = tf.io.gfile.exists(os.path.join(os.path.dirname(next(iter(damaged))), convert.MANIFEST))
    fix = ("convert again: --mode convert checks every shard against its checksum and rewrites a damaged one" if ours
           else "replace them with intact copies")
    listed = "; ".join(f"{path} ({why})" for path, why in damaged.items())
    return f"damaged record file{'s' if len(damaged) > 1 else ''}: {listed}; {fix}"


def _reason(error: tf.errors.OpError) -> str:
    """TensorFlow's own words, without the op and function names around them."""
    return error.message.split("}}")[-1].split("[Op:")[0].strip()


def process_files(spec: RecordSpec, process_index: int, process_count: int) -> tuple[str, ...]:
    """This process's files: every process_count-th, so processes read disjoint parts of the screen."""
    files = spec.files[process_index::process_count]
    if not files:
        raise ValueError(f"process {process_index} of {process_count} gets none of the {len(spec.files)} "
                         "record files; convert with fewer sites per shard so every process has one")
    return files


def _dihedral_crop(image: tf.Tensor, seed: tf.Tensor, augment: bool, crop_size: int) -> tf.Tensor:
    """A random element of the dihedral group (flips and 90° turns) and an optional random crop."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if augment:
        k = tf.random.stateless_uniform([], seeds[0], minval=0, maxval=4, dtype=tf.int32)
        image = tf.image.stateless_random_flip_left_right(tf.image.rot90(image, k), seeds[1])
    if crop_size:
        image = tf.image.stateless_random_crop(image, [crop_size, crop_size, image.shape[-1]], seeds[2])
    return image


def train_dataset(spec: RecordSpec, options: InputOptions = InputOptions(), *, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, cycle_length: int = 8) -> tf.data.Dataset:
    """An endless stream of this process's training batches: {"image": float32 [B, H, W, C] in [-1, 1]}.

    `batch_size` is the per-process batch (global batch / process count); partial batches are dropped so
    every step has the same shape. Crops (`crop_size`, in record pixels) are area-downscaled to `options.resolution`
    (the model's resolution; 0 = as stored) by a whole factor (`downscale_factor`).
    """
    channels, intensity, crop_size = options.channels, options.intensity, options.crop_size
    augment, shuffle_buffer = options.augment, options.shuffle_buffer
    factor = downscale_factor(spec, crop_size, options.resolution)
    files = process_files(spec, process_index, process_count)
    seed = int(seed) * 1009 + process_index  # each process its own stream, all fixed by the seed
    parse = _parser(spec, channels, intensity, with_metadata=False)
    filenames = tf.data.Dataset.from_tensor_slices(list(files)).shuffle(len(files), seed=seed).repeat()
    ds = _records(filenames, min(cycle_length, len(files)), spec.compression).shuffle(shuffle_buffer, seed=seed + 1)
    ds = ds.map(lambda r, f: parse(r, f)["image"], num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.enumerate().map(
        lambda i, img: {"image": _finish(_dihedral_crop(img, tf.stack([tf.constant(seed, tf.int64), i]), augment,
                                                        crop_size), factor)},
        num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def eval_num_batches(spec: RecordSpec, batch_size: int, process_count: int) -> int | None:
    """Batches per process for a full pass: the largest process's count, so all processes step together."""
    if spec.shard_sizes is None:
        return None
    return max(math.ceil(sum(spec.shard_sizes[p::process_count]) / batch_size) for p in range(process_count))


def eval_dataset(spec: RecordSpec, options: InputOptions = InputOptions(), *, batch_size: int,
                 process_index: int = 0, process_count: int = 1, num_batches: int | None = None) -> tf.data.Dataset:
    """Every site of this process's files exactly once, in a stable order, with its metadata.

    Batches are padded to `batch_size` with `mask` False on the padding; with `num_batches` (by default
    the count of the busiest process, when the files' sizes are known) fully masked batches are appended
    so every process yields the same number of batches. Crops, if any, are central; images are then
    area-downscaled to `options.resolution` as in `train_dataset`; no augmentation.
    """
    crop_size = options.crop_size
    factor = downscale_factor(spec, crop_size, options.resolution)
    files = process_files(spec, process_index, process_count)
    parse = _parser(spec, options.channels, options.intensity, with_metadata=True)

    def prepare(record: tf.Tensor, filename: tf.Tensor) -> dict[str, tf.Tensor]:
        ex = parse(record, filename)
        if crop_size:
            ex["image"] = tf.image.resize_with_crop_or_pad(ex["image"], crop_size, crop_size)
        return dict(ex, image=_finish(ex["image"], factor), mask=tf.constant(True))

    ds = _records(tf.data.Dataset.from_tensor_slices(list(files)), min(4, len(files)), spec.compression)
    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).map(lambda b: _pad_batch(b, batch_size))
    if num_batches is None:
        num_batches = eval_num_batches(spec, batch_size, process_count)
    if num_batches is not None:
        empty = tf.nest.map_structure(lambda s: _blank(s.shape, s.dtype), ds.element_spec)
        ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat()).take(num_batches)
    return ds.prefetch(AUTOTUNE)


def metadata_frame(batch: dict[str, np.ndarray]) -> pd.DataFrame:
    """An eval batch's metadata as a table, one row per row of the batch (padding included): every column its
    records carry, strings decoded, so the screen's schema can be applied to it as to the table it came from."""
    return pd.DataFrame({k: np.char.decode(v.astype(bytes), "utf-8") if v.dtype.kind in "SO" else v
                         for k, v in batch.items() if k not in RESERVED_COLUMNS})


def _blank(shape, dtype: tf.DType) -> tf.Tensor:
    """Zeros, False or empty strings: what padding holds."""
    return tf.fill(shape, "") if dtype == tf.string else tf.zeros(shape, dtype)


def _pad_batch(batch: dict[str, tf.Tensor], batch_size: int) -> dict[str, tf.Tensor]:
    """Pad a partial batch to `batch_size` rows: zeros, empty strings, mask False."""

    def pad(x: tf.Tensor) -> tf.Tensor:
        missing = batch_size - tf.shape(x)[0]
        out = tf.concat([x, _blank(tf.concat([[missing], tf.shape(x)[1:]], 0), x.dtype)], 0)
        return tf.ensure_shape(out, [batch_size, *x.shape[1:]])

    return tf.nest.map_structure(pad, batch)

