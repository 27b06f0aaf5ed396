"""OME-Zarr high-content-screening plates as a screen (data.kind=ome_zarr), read with ome-zarr-py.

`data.root` names one plate, several (comma-separated) or a glob of them (`/data/run7/*.zarr`). A plate
(NGFF 0.4 or 0.5) lists its wells, each well its fields of view, each field a multiscale image whose
full-resolution level holds the channels (OMERO metadata names them; `data.stains` names them instead, and
unnamed ones are called c1..cN with a warning naming the plate). Every field becomes a site row (site_id
`{plate}_{well}_{field}`, well_id `{plate}_{well}`, plate, well, row, column, site) and every channel a
`Plane` reference that `PLANES` reads, so the converter treats plates like any other screen.

A plate map (`data.metadata`, a CSV; a relative path is looked up beside the plates) adds the treatment
columns: it is joined on `plate` and `well` (and `site`, the 1-based field, when it has that column); wells
are matched as row letter + column number, so `A01` and `A1` are one well. Every imaged well needs a row.
Fields must be 2-D (t and z of size 1: project stacks first) with 8- or 16-bit unsigned pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import numpy as np
import pandas as pd
from absl import logging
from ome_zarr.io import parse_url

from gandl._tf import tf
from gandl.data import images, tables
from gandl.data.screen import ChannelReader, MetadataError, Screen, ScreenNotFound

_GLOB = re.compile(r"[*?\[]")
_WELL = re.compile(r"([A-Za-z]+)0*([0-9]+)")
_LAYOUT = ("site_id", "well_id", "plate", "well", "row", "column", "site")  # the columns plates give each site


@dataclasses.dataclass(frozen=True)
class Plane:
    """One channel of one field: the field's full-resolution array and the channel's index on its 'c' axis."""

    array: str
    channel: int

    def __str__(self) -> str:
        return f"{self.array} (channel {self.channel})"


def _attrs(path: str) -> dict:
    """The OME-Zarr attributes of the group at `path` (0.5's "ome" namespace unwrapped by ome-zarr-py)."""
    location = parse_url(path, mode="r")
    if location is None:
        if not tf.io.gfile.exists(path):
            raise ScreenNotFound(f"{path}: no such plate")
        raise MetadataError(f"{path}: no OME-Zarr group there")
    return location.root_attrs


def _axes(multiscale: dict) -> tuple[str, ...]:
    """Axis names of a multiscale image (0.4+: a list of dicts; older: implicit tczyx)."""
    axes = multiscale.get("axes", ["t", "c", "z", "y", "x"])
    return tuple(a["name"] if isinstance(a, dict) else a for a in axes)


def _field(image_path: str, source: str) -> tuple[str, tuple[str, ...], int]:
    """The full-resolution array path of one field, its OMERO channel labels ("" when unnamed) and channel count."""
    attrs = _attrs(image_path)
    multiscales = attrs.get("multiscales")
    if not multiscales:
        raise MetadataError(f"{image_path}: a well field without multiscales metadata ({source})")
    axes = _axes(multiscales[0])
    if "c" not in axes:
        raise MetadataError(f"{image_path}: axes {axes} have no channel axis 'c'")
    dataset = multiscales[0]["datasets"][0]["path"]
    array = parse_url(image_path, mode="r").load(dataset)
    sizes = dict(zip(axes, array.shape))
    extra = {a: n for a, n in sizes.items() if a in "tz" and n != 1}
    if extra:
        raise MetadataError(f"{image_path}: {extra} planes; GAN-DL reads 2-D fields (project the stack first)")
    if np.dtype(array.dtype) not in images.SUPPORTED_DTYPES:
        raise MetadataError(f"{image_path}: {array.dtype} pixels; expected 8- or 16-bit unsigned")
    labels = tuple(c.get("label", "") for c in attrs.get("omero", {}).get("channels", []))
    return f"{image_path}/{dataset}", labels, sizes["c"]


def plate_paths(root: str) -> list[str]:
    """The plates `root` names: a path, a comma-separated list, or glob patterns (matches in sorted order)."""
    out = []
    for part in (p.strip().rstrip("/") for p in root.split(",")):
        if not part:
            continue
        matches = sorted(tf.io.gfile.glob(part)) if _GLOB.search(part) else [part]
        if not matches:
            raise ScreenNotFound(f"data.root: no plate matches {part!r}")
        out += [m.rstrip("/") for m in matches]
    if not out:
        raise ScreenNotFound("data.root names no OME-Zarr plate")
    return list(dict.fromkeys(out))


def _stains(path: str, labels: tuple[str, ...], count: int, stains: tuple[str, ...]) -> tuple[str, ...]:
    """Channel names of a plate: data.stains, else the OMERO labels, else c1..cN (with a warning)."""
    if stains:
        if len(stains) != count:
            raise MetadataError(f"{path}: {count} channels but data.stains names {len(stains)}: {stains}")
        return stains
    if len(labels) == count and all(labels):
        return labels
    logging.warning("%s: its OMERO metadata does not name all %d channels; calling them c1..c%d (name them with "
                    "data.stains)", path, count, count)
    return tuple(f"c{i + 1}" for i in range(count))


def read_plate(path: str, stains: tuple[str, ...] = ()) -> Screen:
    """Every field of every well of the OME-Zarr plate at `path` as a site, in the plate's well order."""
    path = path.rstrip("/")
    plate = _attrs(path).get("plate")
    if plate is None:
        raise MetadataError(f"{path}: an OME-Zarr group without plate metadata (not an HCS plate)")
    name = plate.get("name") or os.path.basename(path).removesuffix(".zarr")
    rows, columns = [r["name"] for r in plate["rows"]], [c["name"] for c in plate["columns"]]
    records, paths, channels = [], [], None
    for well in plate["wells"]:
        row, column = well["path"].split("/")
        if "rowIndex" in well:
            row, column = rows[well["rowIndex"]], columns[well["columnIndex"]]
        fields = _attrs(f"{path}/{well['path']}").get("well", {}).get("images", [])
        if not fields:
            raise MetadataError(f"{path}/{well['path']}: a well without fields of view")
        for site, field in enumerate(fields, start=1):
            array, labels, count = _field(f"{path}/{well['path']}/{field['path']}", path)
            if channels is None:
                channels = (labels, count)
            elif (labels, count) != channels:
                raise MetadataError(f"{array}: channels {labels or count}, other fields of {path} have "
                                    f"{channels[0] or channels[1]}")
            well_name = f"{row}{column}"
            records.append(dict(site_id=f"{name}_{well_name}_{site}", well_id=f"{name}_{well_name}", plate=name,
                                well=well_name, row=row, column=column, site=site))
            paths.append([Plane(array, c) for c in range(count)])
    if not records:
        raise MetadataError(f"{path}: the plate lists no wells")
    references = np.empty((len(paths), channels[1]), object)
    references[:] = paths
    return Screen(pd.DataFrame.from_records(records), references, _stains(path, *channels, tuple(stains)), path,
                  PLANES)


def _well_key(wells: pd.Series) -> pd.Series:
    """Wells as row letters + column number ('A01' -> 'A1'), so plate maps and plates spell them alike."""
    return wells.astype(str).str.strip().str.replace(_WELL, lambda m: f"{m[1].upper()}{m[2]}", regex=True)


def _plate_map(path: str, roots: list[str]) -> tuple[pd.DataFrame, str] | None:
    """The plate map `path` names (relative: beside the first plate) and where it is; None when a relative
    one is absent."""
    if not path:
        return None
    if not os.path.isabs(path) and "://" not in path:
        beside = os.path.join(os.path.dirname(roots[0]), path)
        if not tf.io.gfile.exists(beside):
            logging.warning("no plate map %s beside the plates: sites carry only the plates' own columns %s "
                            "(set data.metadata to a CSV with plate and well columns, or '' for none)", beside,
                            list(_LAYOUT))
            return None
        path = beside
    return tables.read_csv(path), path


def _join(sites: pd.DataFrame, table: pd.DataFrame, source: str, show: int = 3) -> pd.DataFrame:
    """Sites with the plate map's columns, joined on plate and well (and site when the map has it)."""
    tables.require_columns(table, ["plate", "well"], source, "an OME-Zarr plate map")
    keys = ["plate", "well"] + (["site"] if "site" in table.columns else [])
    clash = [c for c in table.columns if c in _LAYOUT and c not in keys]
    if clash:
        raise MetadataError(f"{source}: column {clash[0]!r} is one the plates give each site; rename it")
    table = table.copy()
    for col in table.columns.drop(keys):
        table[col] = tables.infer_numbers(table[col])
    table = tables.to_numbers(table, source, ints=["site"], floats=[])
    table["well"] = _well_key(table["well"])
    repeated = table.duplicated(keys, keep=False)
    if repeated.any():
        first = table.loc[repeated, keys].iloc[0].to_dict()
        raise MetadataError(f"{source}: {int(repeated.sum())} rows share their {'/'.join(keys)}, e.g. {first}")
    left = sites.assign(_well=_well_key(sites["well"]), plate=sites["plate"].astype(str))
    right = table.rename(columns={"well": "_well"}).assign(plate=table["plate"].astype(str), _row=True)
    joined = left.merge(right, on=["plate", "_well", *keys[2:]], how="left", sort=False)
    unmatched = joined["_row"].isna().to_numpy()
    if unmatched.any():
        wells = list(dict.fromkeys(joined.loc[unmatched, "well_id"]))
        raise MetadataError(f"{source} has no row for {len(wells)} imaged well(s) of the plates, e.g. {wells[:show]}; "
                            f"give every well a row (joined on {'/'.join(keys)})")
    unused = len(table) - len(joined[["plate", "_well", *keys[2:]]].drop_duplicates())
    if unused:
        logging.warning("%s: %d row(s) match no imaged field of the plates", source, unused)
    return joined.drop(columns=["_well", "_row"])


def read_plates(root: str, metadata: str = "", stains: tuple[str, ...] = ()) -> Screen:
    """The plates `root` names as one screen, joined with the plate map `metadata` when there is one."""
    plates = [read_plate(path, stains) for path in plate_paths(root)]
    first = plates[0]
    for plate in plates[1:]:
        if plate.stains != first.stains:
            raise MetadataError(f"{plate.source}: channels {plate.stains}, {first.source} has {first.stains}")
    names = pd.concat([p.metadata["plate"].drop_duplicates() for p in plates])
    if names.duplicated().any():
        raise MetadataError(f"data.root names plates of one name, {names[names.duplicated()].iloc[0]!r} "
                            f"({', '.join(p.source for p in plates)}): a plate name must identify its plate")
    sites = pd.concat([p.metadata for p in plates], ignore_index=True)
    plate_map = _plate_map(metadata, [p.source for p in plates])
    source = ", ".join(p.source for p in plates)
    if plate_map is not None:
        sites = _join(sites, *plate_map)
        source = f"{source} + {plate_map[1]}"
    return Screen(sites, np.concatenate([p.paths for p in plates]), first.stains, source, PLANES)


@functools.lru_cache(maxsize=16)
def _array(array_path: str):
    """The dask array and axis names of one field's full-resolution level (cached: channels share it)."""
    image_path, dataset = array_path.rsplit("/", 1)
    axes = _axes(_attrs(image_path)["multiscales"][0])
    return parse_url(image_path, mode="r").load(dataset), axes


def read_plane(plane: Plane) -> np.ndarray:
    """One channel of one field as a 2-D uint8/uint16 array."""
    try:
        array, axes = _array(plane.array)
        index = tuple(plane.channel if a == "c" else slice(None) if a in "yx" else 0 for a in axes)
        pixels = np.asarray(array[index].compute())
    except Exception as e:  # noqa: BLE001 (zarr's codecs raise many types for a damaged chunk: numcodecs' Zstd a
        # RuntimeError); all mean one unreadable plane, which data.skip_bad_sites may skip
        raise images.BadImageError(str(plane), f"unreadable OME-Zarr plane ({type(e).__name__}: {e})") from None
    if pixels.dtype not in images.SUPPORTED_DTYPES:
        raise images.BadImageError(str(plane), f"expected 8- or 16-bit unsigned pixels, got {pixels.dtype}")
    return pixels


def plane_exists(plane: Plane) -> bool:
    return images.exists(plane.array)


def plane_stamp(plane: Plane) -> str:
    """The stamps of every file of a plane's array (its chunks and metadata), in path order: a rewritten chunk
    changes them."""
    files = sorted(os.path.join(folder, name) for folder, _, names in tf.io.gfile.walk(plane.array) for name in names)
    return ";".join(f"{os.path.relpath(path, plane.array)}={images.stamp(path)}" for path in files)


PLANES = ChannelReader(read_plane, plane_exists, plane_stamp)  # `Screen.reader` of OME-Zarr plates
