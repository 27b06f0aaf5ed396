"""The RxRx readers, their control roles and channel maps, and their validation errors."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from gandl.data import rxrx
from gandl.data import screen as screen_lib


def _copy_screen(src: str, dst) -> str:
    """A writable copy of a screen folder (metadata + images) for tests that break it."""
    out = os.path.join(dst, "screen")
    shutil.copytree(src, out)
    return out


def test_reads_rxrx19a_with_exact_columns_and_types(rxrx19a_dir):
    screen = rxrx.read_rxrx19a(rxrx19a_dir)
    md = screen.metadata
    assert tuple(md.columns) == rxrx.RXRX19A_COLUMNS
    assert md["plate"].dtype == np.int64 and md["site"].dtype == np.int64
    assert md["treatment_conc"].dtype == np.float64
    controls = md["treatment"] == ""
    assert md.loc[controls, "treatment_conc"].isna().all()
    assert (md.loc[~controls, "treatment_conc"] > 0).all()
    assert set(md["disease_condition"]) == set(rxrx.CONDITIONS)  # blanks kept as "" and not merged
    assert screen.stains == rxrx.STAINS["rxrx19a"]
    assert screen.paths.shape == (len(md), 5)
    first = md.iloc[0]
    assert screen.paths[0, 2] == os.path.join(rxrx19a_dir, "images", first.experiment, f"Plate{first.plate}",
                                              f"{first.well}_s{first.site}_w3.png")
    assert not screen_lib.missing_files(screen)


def test_control_roles(rxrx19a_dir):
    md = rxrx.read_rxrx19a(rxrx19a_dir).metadata
    roles = screen_lib.control_role(md)  # a table without a schema is read as RxRx19a's
    assert set(roles) == {"C+", "C-", "treated", "other"}
    assert (md.loc[roles == "C+", "disease_condition"] == rxrx.MOCK).all()
    assert ((md.loc[roles == "C-", "disease_condition"] == rxrx.ACTIVE)
            & (md.loc[roles == "C-", "treatment"] == "")).all()
    assert (md.loc[roles == "treated", "treatment"] != "").all()
    merged = screen_lib.control_role(md, schema=screen_lib.PRESETS["rxrx19a_uv"])
    assert (merged == "C+").sum() == (roles == "C+").sum() + (md["disease_condition"] == rxrx.UV_INACTIVATED).sum()


def test_channel_map_by_stain():
    assert rxrx.channel_map("rxrx1", "rxrx19a") == (1, 2, 3, 4, 6)
    assert rxrx.channel_map("rxrx19a", "rxrx19a") == (1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="MitoTracker"):
        rxrx.channel_map("rxrx19a", "rxrx1")


def _rewrite(root: str, edit) -> None:
    path = os.path.join(root, "metadata.csv")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(df).to_csv(path, index=False)


def test_missing_column_is_named(rxrx19a_dir, tmp_path):
    root = _copy_screen(rxrx19a_dir, tmp_path)
    _rewrite(root, lambda df: df.drop(columns=["treatment_conc"]))
    with pytest.raises(rxrx.MetadataError, match=r"metadata.csv is missing columns \['treatment_conc'\]"):
        rxrx.read_rxrx19a(root)


def test_optional_columns_may_be_missing(rxrx19a_dir, tmp_path):
    """Only the columns a reader uses are required: SMILES and well_id (derived) may be absent."""
    root = _copy_screen(rxrx19a_dir, tmp_path)
    full = rxrx.read_rxrx19a(root).metadata
    _rewrite(root, lambda df: df.drop(columns=["SMILES", "well_id"]))
    md = rxrx.read_rxrx19a(root).metadata
    assert "SMILES" not in md and list(md["well_id"]) == list(full["well_id"])


def test_duplicate_site_id_is_named(rxrx19a_dir, tmp_path):
    root = _copy_screen(rxrx19a_dir, tmp_path)
    _rewrite(root, lambda df: pd.concat([df, df.iloc[[3]]]))
    sid = pd.read_csv(os.path.join(rxrx19a_dir, "metadata.csv"))["site_id"][3]
    with pytest.raises(rxrx.MetadataError, match=f"duplicate site_id values: '{sid}' \\(rows 5, "):
        rxrx.read_rxrx19a(root)


def test_unknown_condition_and_bad_number_are_named(rxrx19a_dir, tmp_path):
    root = _copy_screen(rxrx19a_dir, tmp_path)
    _rewrite(root, lambda df: df.assign(disease_condition=df["disease_condition"].replace("Mock", "mock")))
    with pytest.raises(rxrx.MetadataError, match=r"unknown disease_condition values \['mock'\]"):
        rxrx.read_rxrx19a(root)

    def bad_conc(df):
        df.loc[df["treatment"] != "", "treatment_conc"] = "1,5"
        return df

    _rewrite(root, lambda df: df.assign(disease_condition=df["disease_condition"].replace("mock", "Mock")))
    _rewrite(root, bad_conc)
    with pytest.raises(rxrx.MetadataError, match=r"column 'treatment_conc' row \d+ holds '1,5', not a number"):
        rxrx.read_rxrx19a(root)


def test_missing_files_are_listed(rxrx19a_dir, tmp_path):
    root = _copy_screen(rxrx19a_dir, tmp_path)
    screen = rxrx.read_rxrx19a(root)
    gone = [screen.paths[2, 1], screen.paths[7, 4]]
    for p in gone:
        os.remove(p)
    with pytest.raises(rxrx.MetadataError, match="2 of .* image files are missing") as err:
        screen_lib.check_files(rxrx.read_rxrx19a(root))
    assert all(p in str(err.value) for p in gone)


def test_rxrx1_reader_finds_flat_and_nested_layouts(tmp_path):
    from gandl.data.synthetic import layouts

    root = str(layouts.write_rxrx1(tmp_path / "rxrx1", image_size=16, plates_per_cell_line=1, sites_per_well=1))
    screen = rxrx.read_rxrx1(root)
    assert tuple(screen.metadata.columns) == rxrx.RXRX1_COLUMNS
    assert screen.paths.shape[1] == 6 and not screen_lib.missing_files(screen)
    assert screen.metadata["cell_type"].nunique() == 4

    split = screen.metadata["dataset"].iloc[0]
    images = os.path.join(root, "images")
    nested = os.path.join(root, "nested_images")
    os.rename(images, nested)
    os.makedirs(images)
    os.rename(nested, os.path.join(images, split))
    moved = rxrx.read_rxrx1(root)
    assert moved.paths[0, 0].startswith(os.path.join(images, split) + os.sep)
    assert not screen_lib.missing_files(moved)

    # An RxRx1 table without the sirna_id / dataset columns still reads (nothing needs them).
    metadata = pd.read_csv(os.path.join(root, "metadata.csv"), dtype=str, keep_default_na=False)
    metadata.drop(columns=["sirna_id", "dataset"]).to_csv(os.path.join(root, "metadata.csv"), index=False)
    os.rename(os.path.join(images, split), nested)
    os.rmdir(images)
    os.rename(nested, images)
    trimmed = rxrx.read_rxrx1(root)
    assert "sirna_id" not in trimmed.metadata and not screen_lib.missing_files(trimmed)
