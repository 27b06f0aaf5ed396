"""Profiles in the field's formats: AnnData (.h5ad) and well-level consensus profiles, in bounded memory.

Image-based profiling tools read AnnData (scanpy and friends) or `Metadata_` + feature-column tables
(pycytominer, copairs). Each exported feature set is written as `{name}.h5ad` (X float32 sites ×
features, obs the metadata indexed by site_id, uns["provenance"] the provenance JSON), and when the sites
carry a `well_id`, as well-level consensus profiles: the median (or mean: `embed.well_aggregate`) of each
feature over the well's sites, with the metadata that is constant within the well and `n_sites`, as
`{name}_wells.parquet` and `{name}_wells.h5ad` (obs indexed by well_id). Parquet tables name metadata
columns `Metadata_<column>` (a column already so named keeps its name) and features `GANDL_0000...`.

Features are read `chunk_rows` rows at a time from anything with `.shape` and `.take(rows, axis=0)`: a
numpy array, or `FeatureRows` over a scratch file of float32 rows (what the export's gather holds), so
an RxRx19a-size export (305,520 × 512) never holds its feature matrix in memory. Only the metadata is
held whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO, Protocol

import anndata
import anndata.io
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gandl import fileio
from gandl.data.screen import WELL_AGGREGATES, SettingError, check_aggregate, profile_column  # noqa: F401 (the stages' names)

WELL = "well_id"
N_SITES = "n_sites"  # the well profiles' site count (a reserved metadata name: gandl.data.screen)
AGGREGATES = dict(zip(WELL_AGGREGATES, (np.median, np.mean)))  # a well's profile from its sites


class Rows(Protocol):
    """A [rows, dim] float32 feature source read by row index (numpy arrays qualify)."""

    shape: tuple[int, ...]

    def take(self, indices: np.ndarray, axis: int = 0) -> np.ndarray: ...


class FeatureRows:
    """float32 rows stored C-order in an open binary file, read with pread: never mapped, so memory stays flat."""

    def __init__(self, file: BinaryIO, rows: int, dim: int):
        file.flush()  # reads bypass the file object's buffer
        self._fd, self.shape = file.fileno(), (rows, dim)

    def take(self, indices: np.ndarray, axis: int = 0) -> np.ndarray:
        """The rows at `indices` (any order, repeats allowed); contiguous runs are read in one call."""
        if axis != 0:
            raise ValueError("FeatureRows reads whole rows (axis=0)")
        indices = np.asarray(indices, np.int64)
        dim = self.shape[1]
        out = np.empty((len(indices), dim), "<f4")
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        for run in np.split(np.arange(len(indices)), np.flatnonzero(np.diff(ordered) != 1) + 1):
            if len(run):
                data = os.pread(self._fd, len(run) * dim * 4, int(ordered[run[0]]) * dim * 4)
                out[order[run]] = np.frombuffer(data, "<f4").reshape(len(run), dim)
        return out


def feature_names(dim: int) -> list[str]:
    """Feature column names of every GANDL table (`GANDL_0000`, ...). pycytominer infers features only from
    CellProfiler's compartment prefixes, which a learned whole-site embedding has none of: hand it these
    names (`features=[c for c in table if c.startswith("GANDL_")]`)."""
    return [f"GANDL_{j:04d}" for j in range(dim)]


def metadata_table(columns: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows [start, stop) of the metadata columns under their profile-table names (`Metadata_<column>`)."""
    return {profile_column(k): v[start:stop] for k, v in columns.items()}


def _obs(metadata: Mapping[str, np.ndarray], index: str) -> pd.DataFrame:
    """The metadata as an AnnData obs frame indexed by `index`; strings as object arrays (see _legacy_strings)."""
    def column(values: np.ndarray) -> np.ndarray:
        return values.astype(object) if values.dtype.kind in "OUS" else values

    with _legacy_strings():
        return pd.DataFrame({k: column(v) for k, v in metadata.items() if k != index},
                            index=pd.Index(column(metadata[index]), name=index))


@contextlib.contextmanager
def _legacy_strings() -> Iterator[None]:
    """pandas' object-dtype strings while writing: anndata 0.12 (the last line for Python 3.11) cannot write
    pandas 3's string arrays; anndata 0.13 can, once the project moves to Python 3.12."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infer_string.*")
        with pd.option_context("future.infer_string", False):
            yield


def _create_h5ad(f: h5py.File, obs: pd.DataFrame, dim: int, provenance: Mapping[str, Any]) -> h5py.Dataset:
    """Write obs, var, uns of an AnnData file and return its empty X dataset (float32, dense) to fill."""
    f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
    with _legacy_strings():
        anndata.io.write_elem(f, "obs", obs)
        anndata.io.write_elem(f, "var", pd.DataFrame(index=pd.Index(feature_names(dim), dtype=object)))
        anndata.io.write_elem(f, "uns", {"provenance": json.dumps(provenance, default=str)})
    x = f.create_dataset("X", shape=(len(obs), dim), dtype="<f4", chunks=(max(1, min(len(obs), 4096)), dim))
    x.attrs["encoding-type"], x.attrs["encoding-version"] = "array", "0.2.0"  # anndata's dense array spec
    return x


def _h5ad_bytes(obs: pd.DataFrame, rows: int, dim: int) -> int:
    """An upper bound of an h5ad file's size: X, the metadata as Python holds it (more than HDF5 stores), 1 MiB."""
    return rows * dim * 4 + int(obs.memory_usage(deep=True).sum()) + 2**20


def write_h5ad(path: str, features: Rows, metadata: Mapping[str, np.ndarray], provenance: Mapping[str, Any], *,
               index: str = "site_id", chunk_rows: int = 16384) -> None:
    """`features` [N, D] with their metadata columns ([N] each, `index` the unique id) as an .h5ad file."""
    rows, dim = features.shape
    obs = _obs(metadata, index)
    if len(obs) != rows:
        raise ValueError(f"{path}: {rows} feature rows for {len(obs)} metadata rows")
    with fileio.written_locally(path, _h5ad_bytes(obs, rows, dim)) as local, h5py.File(local, "w") as f:
        x = _create_h5ad(f, obs, dim, provenance)
        for start in range(0, rows, chunk_rows):
            stop = min(rows, start + chunk_rows)
            x[start:stop] = features.take(np.arange(start, stop), axis=0)


def well_metadata(metadata: Mapping[str, np.ndarray], by: str = WELL) -> tuple[pd.DataFrame, np.ndarray]:
    """Metadata of each well (columns constant within every well, first-seen well order) plus `n_sites`,
    and each site's well number."""
    if N_SITES in metadata:
        raise ValueError(f"a metadata column is named {N_SITES!r}, the well profiles' site count; rename it")
    frame = pd.DataFrame(dict(metadata))
    codes, wells = pd.factorize(frame[by], sort=False)
    constant = frame.groupby(codes, sort=True).nunique(dropna=False).max() <= 1
    first = frame.groupby(codes, sort=True).head(1)
    out = first.loc[:, constant[constant].index].reset_index(drop=True)
    out[N_SITES] = np.bincount(codes).astype(np.int64)
    return out, codes


def _well_profiles(features: Rows, codes: np.ndarray, chunk_rows: int, aggregate: str):
    """(first well, profiles [n, D]) blocks: each well's per-feature median or mean over its sites, wells in code
    order."""
    reduce = AGGREGATES[aggregate]
    counts = np.bincount(codes)
    order = np.argsort(codes, kind="stable")
    ends = np.concatenate([[0], np.cumsum(counts)])
    first = 0
    while first < len(counts):
        last = max(first + 1, int(np.searchsorted(ends, ends[first] + chunk_rows, side="right")) - 1)
        last = min(last, len(counts))
        block = features.take(order[ends[first]:ends[last]], axis=0)
        profiles = np.empty((last - first, block.shape[1]), np.float32)
        local = ends[first:last] - ends[first]
        for k in np.unique(counts[first:last]):  # wells with k sites at once: a [n, k, D] reduction
            wells = np.flatnonzero(counts[first:last] == k)
            profiles[wells] = reduce(block[local[wells, None] + np.arange(k)], axis=1)
        yield first, profiles
        first = last


def write_well_profiles(stem: str, features: Rows, metadata: Mapping[str, np.ndarray],
                        provenance: Mapping[str, Any], *, by: str = WELL, aggregate: str = "median",
                        chunk_rows: int = 16384) -> None:
    """Well-level consensus profiles (the median or mean over sites) as `{stem}.parquet` and `{stem}.h5ad`."""
    check_aggregate(aggregate)
    wells, codes = well_metadata(metadata, by)
    dim = features.shape[1]
    names = feature_names(dim)
    provenance = dict(provenance, aggregation=f"{aggregate} over the sites of each {by}")
    columns = {k: wells[k].to_numpy() for k in wells.columns}
    obs = _obs(columns, by)
    size = _h5ad_bytes(obs, len(obs), dim)  # the parquet file beside it takes at most about as much
    with fileio.written_locally(f"{stem}.parquet", 2 * size) as parquet_local, \
            fileio.written_locally(f"{stem}.h5ad", size) as h5ad_local, h5py.File(h5ad_local, "w") as f:
        x = _create_h5ad(f, obs, dim, provenance)
        writer = None
        for first, profiles in _well_profiles(features, codes, chunk_rows, aggregate):
            stop = first + len(profiles)
            x[first:stop] = profiles
            table = pa.table({**metadata_table(columns, first, stop),
                              **{n: profiles[:, j] for j, n in enumerate(names)}})
            writer = writer or pq.ParquetWriter(parquet_local, table.schema)
            writer.write_table(table)
        writer.close()
