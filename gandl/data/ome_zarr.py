"""OME-Zarr high-content-screening plates as a screen (data.kind=ome_zarr), read with ome-zarr-py.

A plate (NGFF 0.4 or 0.5) lists its wells, each well its fields of view, each field a multiscale image
whose full-resolution level holds the channels (OMERO metadata names them). Every field becomes a site
row (site_id `{plate}_{well}_{field}`, well_id `{plate}_{well}`, plate, well, row, column, site) and
every channel a reference `{level-0 array}#channel={c}` that `gandl.data.images.read` resolves here,
so the converter treats a plate like any other screen. Fields must be 2-D (t and z of size 1: project
stacks first) with 8- or 16-bit unsigned pixels.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pandas as pd
from ome_zarr.io import parse_url

from gandl.data import images
from gandl.data.rxrx import MetadataError, Screen

CHANNEL = images.OME_ZARR_CHANNEL


def _attrs(path: str) -> dict:
    """The OME-Zarr attributes of the group at `path` (0.5's "ome" namespace unwrapped by ome-zarr-py)."""
    location = parse_url(path, mode="r")
    if location is None:
        raise MetadataError(f"{path}: no OME-Zarr group there")
    return location.root_attrs


def _field(image_path: str, source: str) -> tuple[str, tuple[str, ...]]:
    """The full-resolution array path of one field and its channel labels; checks axes."""
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
    labels = [c.get("label", "") for c in attrs.get("omero", {}).get("channels", [])]
    if len(labels) != sizes["c"] or not all(labels):
        labels = [f"c{i + 1}" for i in range(sizes["c"])]  # OMERO names missing or incomplete: by index
    return f"{image_path}/{dataset}", tuple(labels)


def _axes(multiscale: dict) -> tuple[str, ...]:
    """Axis names of a multiscale image (0.4+: a list of dicts; older: implicit tczyx)."""
    axes = multiscale.get("axes", ["t", "c", "z", "y", "x"])
    return tuple(a["name"] if isinstance(a, dict) else a for a in axes)


def read_plate(path: str) -> Screen:
    """Every field of every well of the OME-Zarr plate at `path` as a site, in the plate's well order."""
    path = path.rstrip("/")
    plate = _attrs(path).get("plate")
    if plate is None:
        raise MetadataError(f"{path}: an OME-Zarr group without plate metadata (not an HCS plate)")
    name = plate.get("name") or os.path.basename(path).removesuffix(".zarr")
    rows, columns = [r["name"] for r in plate["rows"]], [c["name"] for c in plate["columns"]]
    records, paths, stains = [], [], None
    for well in plate["wells"]:
        row, column = well["path"].split("/")
        if "rowIndex" in well:
            row, column = rows[well["rowIndex"]], columns[well["columnIndex"]]
        fields = _attrs(f"{path}/{well['path']}").get("well", {}).get("images", [])
        if not fields:
            raise MetadataError(f"{path}/{well['path']}: a well without fields of view")
        for site, field in enumerate(fields, start=1):
            array, labels = _field(f"{path}/{well['path']}/{field['path']}", path)
            if stains is None:
                stains = labels
            elif labels != stains:
                raise MetadataError(f"{array}: channels {labels}, other fields of {path} have {stains}")
            well_name = f"{row}{column}"
            records.append(dict(site_id=f"{name}_{well_name}_{site}", well_id=f"{name}_{well_name}", plate=name,
                                well=well_name, row=row, column=column, site=site))
            paths.append([f"{array}{CHANNEL}{c}" for c in range(len(labels))])
    if not records:
        raise MetadataError(f"{path}: the plate lists no wells")
    metadata = pd.DataFrame.from_records(records)
    return Screen(metadata, np.array(paths, dtype=str), stains, path)


@functools.lru_cache(maxsize=16)
def _array(array_path: str):
    """The dask array and axis names of one field's full-resolution level (cached: channels share it)."""
    image_path, dataset = array_path.rsplit("/", 1)
    axes = _axes(_attrs(image_path)["multiscales"][0])
    return parse_url(image_path, mode="r").load(dataset), axes


def read_plane(reference: str) -> np.ndarray:
    """One channel of one field, from a `{array}#channel={c}` reference, as a 2-D uint8/uint16 array."""
    array_path, _, channel = reference.rpartition(CHANNEL)
    try:
        array, axes = _array(array_path)
        index = tuple(int(channel) if a == "c" else slice(None) if a in "yx" else 0 for a in axes)
        plane = np.asarray(array[index].compute())
    except (OSError, KeyError, ValueError, IndexError) as e:
        raise images.BadImageError(reference, f"unreadable OME-Zarr plane ({type(e).__name__}: {e})") from None
    if plane.dtype not in images.SUPPORTED_DTYPES:
        raise images.BadImageError(reference, f"expected 8- or 16-bit unsigned pixels, got {plane.dtype}")
    return plane
