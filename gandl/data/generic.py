"""Bring-your-own screen (data.kind=generic): a CSV with one image-path column per channel and free metadata.

Any table a plate map or CellProfiler's LoadData module gives will do: every column that is not an image
path is kept as metadata (numbers as numbers, strings as strings, blanks as ""). Sites are named by a
`site_id` column when the table has one; otherwise `site_id` and `well_id` are derived from the plate,
well and site columns the screen schema names (`{plate}_{well}_{site}`, with `{experiment}_` first when the
schema names an experiment column).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from gandl.data import images, screen, tables
from gandl.data.screen import PRESETS, MetadataError, Screen, ScreenSchema


def read_generic(root: str, channel_columns: Sequence[str], stains: Sequence[str] = (),
                 schema: ScreenSchema | None = None, id_column: str = "site_id") -> Screen:
    """The screen the CSV at `root` lists; relative image paths are taken relative to the CSV's folder.

    `stains` name the channels (default: the column names); `schema` names the plate, well and site columns
    ids are derived from when the table has no `id_column`.
    """
    df = tables.read_csv(root)
    if not channel_columns:
        raise MetadataError(f"{root}: name at least one image-path column (data.channel_columns)")
    tables.require_columns(df, list(channel_columns), root, "this screen's")
    stains = tuple(stains) if stains else tuple(channel_columns)
    if len(stains) != len(channel_columns):
        raise MetadataError(f"{root}: {len(channel_columns)} channel columns but {len(stains)} stain names")
    rel = df[list(channel_columns)].to_numpy(dtype=str)
    blank = np.argwhere(rel == "")
    if len(blank):
        r, c = blank[0]
        raise MetadataError(f"{root}: row {r + 2} has an empty path in column {channel_columns[c]!r}")
    base = os.path.dirname(root)
    paths = np.vectorize(lambda p: p if os.path.isabs(p) or "://" in p else os.path.join(base, p),
                         otypes=[object])(rel).astype(str)
    meta = df.drop(columns=list(channel_columns))
    if id_column != "site_id":
        tables.require_columns(meta, [id_column], root, "this screen's")
        if "site_id" in meta.columns:
            raise MetadataError(f"{root}: both a 'site_id' column and the id column {id_column!r}; drop one")
        meta = meta.rename(columns={id_column: "site_id"})
    for col in meta.columns.drop(["site_id", "well_id"], errors="ignore"):
        meta[col] = tables.infer_numbers(meta[col])
    derived = "site_id" not in meta.columns
    try:
        meta = screen.with_ids(meta, schema or PRESETS["generic"])
        tables.check_unique_ids(meta, root)
    except MetadataError as e:
        if not derived:
            raise
        raise MetadataError(f"{root}: {e} (site_id derived from the screen.plate / well / site columns: add a "
                            "site_id column or point the schema at columns that name each site once)") from None
    return Screen(meta.reset_index(drop=True), paths.reshape(len(df), len(channel_columns)), stains, root,
                  images.FILES)
