"""Embeddings in, aligned tables out: the npz contract, joins by site_id, and well aggregation.

Every analysis function takes a float32 feature matrix [N, D] and a metadata DataFrame with one row per
feature row. This module is where those two are made to agree, so that a mismatch (a feature file from
another screen, a filtered metadata table) fails here with the offending ids named, not later as a
silently shifted row.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
from scipy import sparse

from gandl import workdir as layout
from gandl._tf import tf
from gandl.data import folds, screen
from gandl.data.screen import (  # noqa: F401 (the analysis reads them from here)
    VIEW_COLUMNS,
    WELL_AGGREGATES,
    ScreenSchema,
    control_role,
    default_schema,
    plate_key,
    screen_view,
)
from gandl.embed import records
from gandl.features import registry


def neither_note(metadata: pd.DataFrame, view: pd.DataFrame, schema: ScreenSchema) -> list[str]:
    """The note naming the sites of `view` (`screen_view(metadata, schema)`) that are neither controls nor treatments.

    They are in no compound table, hit list or mAP table; the note says so, with their perturbations, so a well
    the schema left out (or forgot to declare a control) is seen rather than silently missing.
    """
    other = view["role"].to_numpy() == screen.OTHER
    if not other.any():
        return []
    values = (pd.Series(metadata[schema.perturbation].to_numpy()[other]).dropna().astype(str)
              if schema.perturbation else pd.Series([], dtype=str))
    named = ", ".join(sorted(set(values) - {""})) or "none"
    return [f"{int(other.sum())} sites of role other (perturbations: {named}) are neither controls nor treatments: "
            "left out of compounds, hits and mAP"]


def output_names(schema: ScreenSchema) -> dict[str, str]:
    """Analysis column -> the screen's own name, for the tables a report writes (only names that differ)."""
    return {field: getattr(schema, field) for field in VIEW_COLUMNS
            if getattr(schema, field) and getattr(schema, field) != field}


class JoinError(ValueError):
    """Features and metadata that do not describe the same sites."""


def load_embeddings(npz_path: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Features [N, D] float32 and the metadata columns stored beside them in an embeddings npz.

    The npz holds `features`, `site_id` and every metadata column as the screen typed it (strings as unicode,
    integers as int64, floats as float64); `provenance` and any other non-[N] entry are not metadata and are
    left out. Values come back exactly as stored.
    """
    with tf.io.gfile.GFile(npz_path, "rb") as f, np.load(f, allow_pickle=False) as npz:  # no whole-file copy
        if "features" not in npz or "site_id" not in npz:
            raise JoinError(f"{npz_path}: an embeddings npz needs 'features' and 'site_id', "
                            f"found {sorted(npz.files)}")
        features = np.asarray(npz["features"], dtype=np.float32)
        if features.ndim != 2:
            raise JoinError(f"{npz_path}: 'features' must be [N, D], got shape {features.shape}")
        n = len(features)
        columns = {k: npz[k] for k in npz.files if k != "features" and npz[k].ndim == 1 and len(npz[k]) == n}
    meta = pd.DataFrame({"site_id": columns.pop("site_id").astype(str)})
    for name, values in columns.items():
        meta[name] = values.astype(str) if values.dtype.kind in "US" else values
    return features, meta


def align(features: np.ndarray, site_ids: np.ndarray | pd.Series, metadata: pd.DataFrame,
          show: int = 5) -> tuple[np.ndarray, pd.DataFrame]:
    """Rows of `features` reordered to match `metadata` by site_id; both must cover the same sites.

    Returns (features in metadata order, metadata with a fresh index). Raises `JoinError` listing the
    first unmatched ids on either side and any duplicate ids, because a partial join would quietly drop
    wells and bias every control mean computed afterwards.
    """
    ids = pd.Index(np.asarray(site_ids).astype(str))
    if len(ids) != len(features):
        raise JoinError(f"{len(features)} feature rows but {len(ids)} site ids")
    meta_ids = pd.Index(metadata["site_id"].astype(str))
    for name, index in (("features", ids), ("metadata", meta_ids)):
        if index.has_duplicates:
            raise JoinError(f"{name} has duplicate site_id values, e.g. "
                            f"{list(index[index.duplicated()].unique()[:show])}")
    only_features = ids.difference(meta_ids)
    only_meta = meta_ids.difference(ids)
    if len(only_features) or len(only_meta):
        raise JoinError(
            f"embeddings and metadata do not join on site_id: {len(only_features)} feature rows without "
            f"metadata (e.g. {list(only_features[:show])}), {len(only_meta)} metadata rows without "
            f"features (e.g. {list(only_meta[:show])})")
    order = ids.get_indexer(meta_ids)
    return np.asarray(features, dtype=np.float32)[order], metadata.reset_index(drop=True)


def group_means(features: np.ndarray, codes: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean row of `features` per group code (0..num_groups-1) and the group sizes; empty groups give NaN.

    Linear in N: a sparse group-by-row indicator times the features, never a per-group Python loop.
    """
    n = len(codes)
    dtype = np.result_type(features.dtype, np.float32)  # float32 stays float32: no N x D float64 copy
    indicator = sparse.csr_matrix((np.ones(n, dtype), (codes, np.arange(n))), shape=(num_groups, n))
    sums = np.asarray(indicator @ features, dtype=np.float64)
    counts = np.bincount(codes, minlength=num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def row_products(features: np.ndarray, weights: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """`features @ weights` in float64, `chunk` rows at a time: NumPy would cast a whole float32 screen matrix
    to float64 first (a second, twice as large copy of it) to multiply it by a float64 vector."""
    x = np.asarray(features)
    w = np.asarray(weights, np.float64)
    out = np.empty((len(x), *w.shape[1:]))
    for start in range(0, len(x), chunk):
        out[start:start + chunk] = x[start:start + chunk].astype(np.float64) @ w
    return out


SMALL_GROUP = 8  # up to this many rows a group's median comes from a sorting network


def group_medians(features: np.ndarray, codes: np.ndarray, num_groups: int, chunk: int = 8192) -> np.ndarray:
    """Median row of `features` per group code (0..num_groups-1); empty groups give NaN.

    Groups of one size are gathered into a [groups, size, D] block and reduced at once, `chunk` groups at a time
    (wells hold a handful of sites): a pandas group-by median of a screen's 512 columns took a minute.
    """
    x = np.asarray(features)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=num_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((num_groups, x.shape[1]), np.nan, np.result_type(x.dtype, np.float32))
    for size in np.unique(counts[counts > 0]):
        groups = np.flatnonzero(counts == size)
        for part in np.array_split(groups, -(-len(groups) // chunk)):
            block = x[order[starts[part][:, None] + np.arange(size)]]
            out[part] = _small_median(block) if size <= SMALL_GROUP else np.median(block, axis=1)
    return out


def _small_median(block: np.ndarray) -> np.ndarray:
    """`np.median(block, axis=1)` of a [groups, size, D] block with a small size, as an odd-even transposition
    sort of its `size` slices: element-wise minima and maxima over whole [groups, D] slices, where NumPy's median
    partitions every short strided lane on its own (8x slower for wells of 4 sites)."""
    rows = list(np.moveaxis(block, 1, 0))
    for sweep in range(len(rows)):
        for i in range(sweep % 2, len(rows) - 1, 2):
            rows[i], rows[i + 1] = np.minimum(rows[i], rows[i + 1]), np.maximum(rows[i], rows[i + 1])
    middle = len(rows) // 2
    return rows[middle] if len(rows) % 2 else (rows[middle - 1] + rows[middle]) / 2


def aggregate_wells(features: np.ndarray, metadata: pd.DataFrame, how: str = "mean") -> tuple[np.ndarray, pd.DataFrame]:
    """Feature vector per well (well_id: the `how` of its sites, "mean" or "median") and the well's metadata
    (its first site's), with `n_sites`; the same statistic as the exported well profiles' `embed.well_aggregate`.

    The well's `site_id` becomes its `well_id`, so the aggregated table still satisfies the id contract.
    """
    if how not in WELL_AGGREGATES:
        raise ValueError(f"well aggregate must be one of {WELL_AGGREGATES}, got {how!r}")
    codes, wells = pd.factorize(metadata["well_id"].astype(str), sort=False)
    counts = np.bincount(codes, minlength=len(wells))
    values = group_medians(features, codes, len(wells)) if how == "median" else group_means(features, codes,
                                                                                              len(wells))[0]
    first = np.full(len(wells), len(codes), np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    meta = metadata.iloc[first].drop(columns=[c for c in ("site", "site_id") if c in metadata])
    meta = meta.reset_index(drop=True)
    meta.insert(0, "site_id", meta["well_id"].astype(str))
    meta["n_sites"] = counts
    return values.astype(np.float32), meta


def load_feature_sets(folder: str) -> dict[str, tuple[np.ndarray, pd.DataFrame]]:
    """Report label -> (features, metadata) of every feature set exported in `folder`, in registry order (a
    random-init set's other initialisations right after it)."""
    return {registry.get(name).label: load_embeddings(os.path.join(folder, f"{name}.npz"))
            for name in records.exported_sets(folder)}


def load_fold_sets(folder: str, name: str) -> list[tuple[np.ndarray, pd.DataFrame, list[str]]]:
    """(features, metadata, held-out groups) of label-fitted feature set `name`'s per-fold exports in `folder`, in
    fold order: fold k of the assignment recorded in `folder` (folds.json, `gandl.data.folds`), as far as its
    exports go; none without a recorded assignment.

    (`gandl.embed.folds.export_folds` writes them to `gandl.workdir.label_fold(folder, name, k)/{name}.npz`.)
    """
    assignment = folds.read_folds(folder)
    sets = []
    for k, held_out in enumerate(assignment["held_out"] if assignment else []):
        path = os.path.join(layout.label_fold(folder, name, k), f"{name}.npz")
        if not tf.io.gfile.exists(path):
            break
        with tf.io.gfile.GFile(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            fitted_without = json.loads(str(npz["provenance"])).get("held_out") if "provenance" in npz else None
        if fitted_without != list(held_out):
            raise ValueError(f"{path}: its model held out {fitted_without}, but fold {k} of "
                             f"{os.path.join(folder, folds.FOLDS)} holds out {list(held_out)}; export again "
                             "(mode=embed)")
        sets.append((*load_embeddings(path), list(held_out)))
    return sets
