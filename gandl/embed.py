"""Checkpoint + dataset -> embeddings.npz, profiles.parquet and .h5ad, and well profiles (gandl.profiles).

The GAN-DL embedding is the discriminator's epilogue fc output. Minibatch stddev would make it depend
on the other images in the batch, so features are computed with an mbstd group of one (the stddev
channel is then a constant): an image's embedding is a function of that image alone. Optionally the
features of the 8 flips/rotations of a site are averaged (microscopy has no orientation).

Export streams the eval pipeline (every site once), computes several feature sets in the same pass
(e.g. GAN-DL, a random-init discriminator, handcrafted statistics), and writes parts every few batches,
so memory stays bounded and an interrupted export resumes at the first missing part.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jax.experimental import multihost_utils
from tqdm import tqdm

import gandl
from gandl import fileio, profiles
from gandl._tf import tf
from gandl.analysis import baselines
from gandl.data import pipeline
from gandl.models import build_models
from gandl.models.config import ModelConfig
from gandl.train import checkpoint, sharding

FeatureFn = Callable[[np.ndarray], np.ndarray]  # this process's images [b, H, W, C] -> features [b, D]


def dihedral_views(images: jax.Array) -> list[jax.Array]:
    """The 8 flips/rotations of NHWC images."""
    turns = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return turns + [jnp.flip(t, axis=2) for t in turns]


@functools.lru_cache(maxsize=8)
def compiled_features(model: ModelConfig, orientation_average: bool):
    """jit(params, images) -> features, shared by every parameter set of the same architecture."""
    _, discriminator = build_models(model)

    @jax.jit
    def features(params, images: jax.Array) -> jax.Array:
        views = dihedral_views(images) if orientation_average else [images]
        out = [discriminator.apply({"params": params}, v, 1, method=discriminator.features) for v in views]
        return jnp.mean(jnp.stack(out), axis=0)

    return features


def discriminator_features(model: ModelConfig, d_params: Any, mesh: jax.sharding.Mesh,
                           orientation_average: bool = False) -> FeatureFn:
    """Batch-independent D embeddings, computed on the mesh; returns this process's rows as numpy."""
    return on_mesh(compiled_features(model, orientation_average), d_params, mesh)


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


def handcrafted(local_images: np.ndarray) -> np.ndarray:
    """Per-channel intensity and texture statistics of images in [-1, 1] (baseline features)."""
    return baselines.handcrafted_features([(local_images + 1.0) / 2.0])


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


def part_path(out_dir: str, name: str, part: int, process: int | None = None) -> str:
    """Where a process (default: this one) writes its `part`-th chunk of feature set `name`."""
    process = jax.process_index() if process is None else process
    return os.path.join(out_dir, "parts", name, f"part-{part:05d}-p{process:03d}.npz")


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _metadata_arrays(batch: Mapping[str, np.ndarray], keep: np.ndarray, spec: pipeline.RecordSpec) -> dict:
    """The batch's metadata columns (padding dropped): strings as unicode, numbers as float."""
    out = {}
    for name in [*spec.features, "site_id", "index"]:
        if name not in batch:
            continue
        values = batch[name][keep]
        out[name] = values.astype(str) if values.dtype.kind in "SO" else values.astype(np.float64)
    return out


def export(spec: pipeline.RecordSpec, out_dir: str, feature_fns: Mapping[str, FeatureFn], *, batch_size: int,
           provenance: Mapping[str, Any], channels: tuple[int, ...] = (), intensity: str = "auto",
           crop_size: int = 0, part_batches: int = 32, progress: bool = True) -> dict[str, str]:
    """Write `{out_dir}/{name}.npz` and `{name}.parquet` for each feature set; returns the npz paths.

    `batch_size` is global; each process exports its own files' sites into its parts, and process 0
    gathers the parts into the final files (sites in metadata order when the records carry `index`).
    """
    local = sharding.local_batch_size(batch_size)
    ds = pipeline.eval_dataset(spec, batch_size=local, process_index=jax.process_index(),
                               process_count=jax.process_count(), channels=channels, intensity=intensity,
                               crop_size=crop_size)
    total = pipeline.eval_num_batches(spec, local, jax.process_count())
    first_names = list(feature_fns)
    done = 0
    while tf.io.gfile.exists(part_path(out_dir, first_names[-1], done)):
        done += 1
    bar = tqdm(total=total, initial=done * part_batches, unit="batch", desc="embed", disable=not progress)
    buffers: dict[str, list[dict]] = {name: [] for name in feature_fns}
    part = done
    for i, batch in enumerate(ds.skip(done * part_batches).as_numpy_iterator(), start=done * part_batches):
        keep = batch["mask"]
        meta = _metadata_arrays(batch, keep, spec)
        for name, fn in feature_fns.items():
            buffers[name].append(dict(meta, features=fn(batch["image"])[keep].astype(np.float32)))
        bar.update(1)
        if (i + 1) % part_batches == 0:
            _flush(out_dir, part, buffers)
            part += 1
    if any(buffers.values()):
        _flush(out_dir, part, buffers)
    bar.close()
    multihost_utils.sync_global_devices("embeddings parts written")
    if jax.process_index() == 0:
        columns = ["site_id", *[c for c in spec.features if c != "site_id"]]
        for name in feature_fns:
            gather(out_dir, name, columns, dict(provenance, feature_set=name))
    multihost_utils.sync_global_devices("embeddings gathered")
    return {name: os.path.join(out_dir, f"{name}.npz") for name in feature_fns}


def _flush(out_dir: str, part: int, buffers: dict[str, list[dict]]) -> None:
    """Write each feature set's buffered batches as one part (the feature set listed last goes last)."""
    for name, rows in buffers.items():
        merged = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]} if rows else {}
        fileio.write_bytes(part_path(out_dir, name, part), npz_bytes(merged))
        rows.clear()


def gather(out_dir: str, name: str, columns: list[str], provenance: Mapping[str, Any],
           chunk_rows: int = 16384) -> None:
    """Merge every process's parts into the final npz (contract: DESIGN.md), parquet and h5ad, in bounded memory.

    Sites go into metadata order (`index`, else site_id); metadata columns keep the screen's order
    (`columns`), site_id first. Only the metadata is held whole: features pass through a local scratch
    file in output order and are streamed `chunk_rows` at a time into every file, so memory does not
    grow with the feature matrix (305,520 × 512 for RxRx19a; benchmarks/analysis.py). Sites with a
    `well_id` also give well profiles, `{name}_wells.parquet` / `.h5ad` (gandl.profiles).
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
                table = pa.table({**{f"Metadata_{k}": v[start:start + len(chunk)] for k, v in merged.items()},
                                  **{n: chunk[:, j] for j, n in enumerate(names)}})
                writer = writer or pq.ParquetWriter(local, table.schema)
                writer.write_table(table)
            writer.close()
        rows = profiles.FeatureRows(scratch, len(order), dim)
        profiles.write_h5ad(os.path.join(out_dir, f"{name}.h5ad"), rows, merged, provenance, chunk_rows=chunk_rows)
        if profiles.WELL in merged:
            profiles.write_well_profiles(os.path.join(out_dir, f"{name}_wells"), rows, merged, provenance,
                                         chunk_rows=chunk_rows)


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
