"""An export's final files: every process's parts merged into `{name}.npz`, `.parquet`, `.h5ad` and well profiles.

Memory stays bounded: only the metadata is held whole, features pass through a local scratch file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gandl import fileio, profiles
from gandl._tf import tf
from gandl.embed.records import completion_record


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def gather(out_dir: str, name: str, columns: list[str], provenance: Mapping[str, Any],
           chunk_rows: int = 16384, well_aggregate: str = "median") -> None:
    """Merge every process's parts into the final npz (its contract: docs/outputs.md), parquet and h5ad, in
    bounded memory.

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


def read_metadata(npz_path: str) -> pd.DataFrame:
    """The metadata columns of an exported npz, strings as `str` (as `gandl.analysis.io.load_embeddings` reads
    them); the features are not read."""
    with _open_npz(npz_path) as npz:
        columns = {k: npz[k] for k in npz.files if k not in ("features", "provenance")}
    return pd.DataFrame({k: v.astype(str) if v.dtype.kind in "US" else v for k, v in columns.items()})
