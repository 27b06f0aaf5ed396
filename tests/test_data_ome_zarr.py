"""OME-Zarr HCS plates written by ome-zarr-py: read as a screen, converted like any other, bad input named."""

import logging

import numpy as np
import pandas as pd
import pytest
import zarr
from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

from gandl.data import convert, images, pipeline, screen
from gandl.data import ome_zarr as ome

STAINS = ["Hoechst", "ConA", "Phalloidin"]
WELLS = ["A/1", "A/2", "B/1"]


def _plate(path, dtype=np.uint16, fields=2, size=16, labels=STAINS, z=1, name="P7") -> dict:
    """A small plate (3 wells × `fields` fields, 3 channels) and its pixels by (well, field)."""
    rng = np.random.default_rng(0)
    root = zarr.open_group(str(path), mode="w")
    write_plate_metadata(root, ["A", "B"], ["1", "2"], WELLS, field_count=fields, name=name)
    pixels = {}
    for well in WELLS:
        row, column = well.split("/")
        group = root.require_group(row).require_group(column)
        write_well_metadata(group, [str(f) for f in range(fields)])
        for f in range(fields):
            data = rng.integers(0, np.iinfo(dtype).max, (len(labels), z, size, size), dtype=dtype)
            pixels[well, f] = data
            window = {"min": 0, "max": int(np.iinfo(dtype).max), "start": 0, "end": int(np.iinfo(dtype).max)}
            write_image(data if z > 1 else data[:, 0], group.require_group(str(f)), axes="czyx" if z > 1 else "cyx",
                        scale_factors=(), omero={"channels": [
                            {"label": s, "color": "FFFFFF", "window": window} for s in labels]})
    return pixels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_plate_reads_as_sites_with_omero_channels_and_converts(tmp_path, dtype):
    pixels = _plate(tmp_path / "plate.zarr", dtype)
    plate = screen.read_screen(screen.Source("ome_zarr", str(tmp_path / "plate.zarr")))
    assert plate.stains == tuple(STAINS) and plate.num_sites == 6
    meta = plate.metadata
    assert meta["site_id"].tolist()[:2] == ["P7_A1_1", "P7_A1_2"] and meta["well_id"].iloc[-1] == "P7_B1"
    assert meta["site"].tolist() == [1, 2] * 3 and set(meta["plate"]) == {"P7"}
    screen.check_files(plate)  # channel references count as existing files
    for i, (well, field) in enumerate([(w, f) for w in WELLS for f in range(2)]):
        for c in range(3):
            plane = plate.reader.read(plate.paths[i, c])
            assert plane.dtype == dtype
            np.testing.assert_array_equal(plane, pixels[well, field][c, 0])

    out = tmp_path / "shards"
    manifest = convert.convert(plate, str(out), convert.ConvertOptions(sites_per_shard=4, num_workers=1),
                               progress=False)
    assert manifest["num_sites"] == 6 and manifest["dtype"] == np.dtype(dtype).name
    assert manifest["stains"] == STAINS and manifest["height"] == 16
    spec = pipeline.open_shards(str(out))
    options = pipeline.InputOptions(intensity="dtype")
    batch = next(pipeline.eval_dataset(spec, options, batch_size=6).as_numpy_iterator())
    assert batch["image"].shape == (6, 16, 16, 3)


def test_plates_ome_zarr_cannot_describe_are_refused_with_the_reason(tmp_path):
    _plate(tmp_path / "stack.zarr", z=3)
    with pytest.raises(screen.MetadataError, match="'z': 3.*project the stack"):
        ome.read_plate(str(tmp_path / "stack.zarr"))
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(screen.MetadataError, match="without plate metadata"):
        ome.read_plate(str(tmp_path / "plain.zarr"))
    with pytest.raises(images.BadImageError, match="unreadable OME-Zarr plane"):
        ome.read_plane(ome.Plane(str(tmp_path / "missing.zarr/A/1/0/0"), 0))


def test_several_plates_join_their_plate_map_on_plate_and_well(tmp_path):
    for name in ("P1", "P2"):
        _plate(tmp_path / f"{name}.zarr", name=name)
    table = pd.DataFrame({"plate": ["P1", "P1", "P1", "P2", "P2", "P2"], "well": ["A01", "A02", "B01"] * 2,
                          "compound": ["DMSO", "cpd", "cpd", "DMSO", "cpd", ""], "dose": [0, 0.1, 0.3, 0, 0.1, 0.3]})
    table.to_csv(tmp_path / "plate_map.csv", index=False)
    plates = screen.read_screen(screen.Source("ome_zarr", str(tmp_path / "*.zarr"), "plate_map.csv"))
    meta = plates.metadata
    assert plates.num_sites == 12 and meta["plate"].tolist() == ["P1"] * 6 + ["P2"] * 6
    assert meta["well"].tolist()[:2] == ["A1", "A1"] and meta["dose"].iloc[2] == 0.1  # A01 in the map is A1
    assert meta["compound"].tolist()[-2:] == ["", ""] and meta["dose"].dtype == np.float64
    listed = screen.read_screen(screen.Source("ome_zarr", f"{tmp_path / 'P2.zarr'}, {tmp_path / 'P1.zarr'}", ""))
    assert listed.metadata["plate"].iloc[0] == "P2" and "compound" not in listed.metadata  # no plate map: none joined

    table.iloc[:5].to_csv(tmp_path / "plate_map.csv", index=False)
    with pytest.raises(screen.MetadataError, match=r"plate_map.csv has no row for 1 imaged well\(s\) of the plates, "
                                                   r"e.g. \['P2_B1'\]"):
        screen.read_screen(screen.Source("ome_zarr", str(tmp_path / "*.zarr"), "plate_map.csv"))
    pd.concat([table, table.iloc[[1]]]).to_csv(tmp_path / "plate_map.csv", index=False)
    with pytest.raises(screen.MetadataError, match=r"2 rows share their plate/well, e.g. \{'plate': 'P1', 'well'"):
        screen.read_screen(screen.Source("ome_zarr", str(tmp_path / "*.zarr"), "plate_map.csv"))
    with pytest.raises(screen.ScreenNotFound, match="no plate matches"):
        screen.read_screen(screen.Source("ome_zarr", str(tmp_path / "*.ome.zarr")))


def test_unnamed_channels_are_named_by_data_stains_or_by_index_with_a_warning(tmp_path, caplog):
    _plate(tmp_path / "bare.zarr", labels=["", "", ""])
    with caplog.at_level(logging.WARNING):
        plate = ome.read_plate(str(tmp_path / "bare.zarr"))
    assert plate.stains == ("c1", "c2", "c3")
    assert any(str(tmp_path / "bare.zarr") in r.getMessage() and "c1..c3" in r.getMessage() for r in caplog.records)
    assert ome.read_plate(str(tmp_path / "bare.zarr"), ("DNA", "Actin", "RNA")).stains == ("DNA", "Actin", "RNA")
    with pytest.raises(screen.MetadataError, match="3 channels but data.stains names 2"):
        ome.read_plate(str(tmp_path / "bare.zarr"), ("DNA", "Actin"))
