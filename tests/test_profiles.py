"""AnnData and well-profile exports: exact round trips through anndata, pandas and pyarrow; bounded reads."""

import json
import os
import tempfile

import anndata
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gandl import embed, fileio, profiles


def _sites(rng, wells=7, sites_per_well=3, dim=5):
    """Site metadata in the npz style (unicode strings, float numbers), sites of a well scattered."""
    n = wells * sites_per_well
    well = np.repeat(np.arange(wells), sites_per_well)
    shuffle = rng.permutation(n)
    well, site = well[shuffle], np.tile(np.arange(1, sites_per_well + 1), wells)[shuffle]
    meta = {
        "site_id": np.array([f"P1_W{w}_{s}" for w, s in zip(well, site)]),
        "well_id": np.array([f"P1_W{w}" for w in well]),
        "cell_type": np.where(well < 4, "HRCE", "VERO"),
        "treatment": np.where(well % 2 == 0, "", np.char.add("cpd", well.astype(str))),
        "treatment_conc": np.where(well % 2 == 0, np.nan, 0.1 * well),
        "site": site.astype(np.float64),
    }
    return meta, rng.normal(size=(n, dim)).astype(np.float32)


def test_feature_rows_read_any_rows_from_a_file():
    features = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    with tempfile.TemporaryFile() as f:
        f.write(features.tobytes())
        rows = profiles.FeatureRows(f, 50, 4)
        idx = np.array([7, 3, 4, 5, 49, 0, 3])
        np.testing.assert_array_equal(rows.take(idx), features[idx])
        np.testing.assert_array_equal(rows.take(np.arange(50)), features)


def test_gather_writes_h5ad_and_well_profiles_that_round_trip_exactly(tmp_path):
    meta, features = _sites(np.random.default_rng(1))
    out = str(tmp_path)
    order = np.random.default_rng(2).permutation(len(features))  # parts arrive out of metadata order
    meta_with_index = dict(meta, index=np.arange(len(features), dtype=np.float64))
    for part, rows in enumerate(np.array_split(order, 3)):
        arrays = {k: v[rows] for k, v in meta_with_index.items()}
        fileio.write_bytes(embed.part_path(out, "gandl", part, 0),
                           embed.npz_bytes(dict(arrays, features=features[rows])))
    provenance = {"step": 3, "feature_set": "gandl"}
    embed.gather(out, "gandl", list(meta), provenance, chunk_rows=4)  # small chunks: many blocks

    sites = anndata.read_h5ad(os.path.join(out, "gandl.h5ad"))
    assert sites.X.dtype == np.float32
    np.testing.assert_array_equal(sites.X, features)
    np.testing.assert_array_equal(sites.obs_names.to_numpy(str), meta["site_id"])
    assert list(sites.obs.columns) == [c for c in meta if c != "site_id"]
    for k in ("well_id", "cell_type", "treatment"):
        np.testing.assert_array_equal(sites.obs[k].to_numpy(str), meta[k])
    np.testing.assert_array_equal(sites.obs["treatment_conc"].to_numpy(), meta["treatment_conc"])
    assert json.loads(sites.uns["provenance"]) == provenance
    assert list(sites.var_names) == profiles.feature_names(5)

    wells = pd.read_parquet(os.path.join(out, "gandl_wells.parquet"))
    arrow = pq.read_table(os.path.join(out, "gandl_wells.parquet")).to_pandas()
    pd.testing.assert_frame_equal(wells, arrow)
    assert list(wells.columns) == ["Metadata_well_id", "Metadata_cell_type", "Metadata_treatment",
                                   "Metadata_treatment_conc", "Metadata_n_sites", *profiles.feature_names(5)]
    expected_wells = list(dict.fromkeys(meta["well_id"]))  # first-seen order
    assert wells["Metadata_well_id"].tolist() == expected_wells
    for _, row in wells.iterrows():
        mine = meta["well_id"] == row["Metadata_well_id"]
        np.testing.assert_array_equal(row[profiles.feature_names(5)].to_numpy(np.float32),
                                      np.median(features[mine], axis=0))
        assert row["Metadata_n_sites"] == 3 and row["Metadata_cell_type"] == meta["cell_type"][mine][0]
    well_ad = anndata.read_h5ad(os.path.join(out, "gandl_wells.h5ad"))
    np.testing.assert_array_equal(well_ad.X, wells[profiles.feature_names(5)].to_numpy())
    assert well_ad.obs_names.tolist() == expected_wells
    assert json.loads(well_ad.uns["provenance"])["aggregation"] == "median over the sites of each well_id"
    np.testing.assert_array_equal(well_ad.obs["n_sites"].to_numpy(), wells["Metadata_n_sites"].to_numpy())


def test_well_profiles_take_uneven_wells_and_h5ad_checks_row_counts(tmp_path):
    meta, features = _sites(np.random.default_rng(3), wells=4, sites_per_well=2)
    keep = np.flatnonzero(meta["well_id"] != meta["well_id"][0]).tolist() + [0]  # one well loses a site
    meta = {k: v[keep] for k, v in meta.items()}
    profiles.write_well_profiles(str(tmp_path / "w"), features[keep], meta, {}, chunk_rows=3)
    wells = pd.read_parquet(tmp_path / "w.parquet")
    assert sorted(wells["Metadata_n_sites"]) == [1, 2, 2, 2]
    assert "Metadata_site" not in wells  # varies within a well: not well metadata
    with pytest.raises(ValueError, match="3 feature rows for"):
        profiles.write_h5ad(str(tmp_path / "x.h5ad"), features[:3], meta, {})


def test_well_profiles_take_the_mean_when_asked_and_keep_metadata_names(tmp_path):
    meta, features = _sites(np.random.default_rng(4), wells=3, sites_per_well=3)
    meta = dict(meta, Metadata_Plate=np.array(["P1"] * len(features)))  # already in the profile convention
    profiles.write_well_profiles(str(tmp_path / "w"), features, meta, {}, aggregate="mean")
    wells = pd.read_parquet(tmp_path / "w.parquet")
    assert "Metadata_Plate" in wells and "Metadata_Metadata_Plate" not in wells
    for _, row in wells.iterrows():
        mine = meta["well_id"] == row["Metadata_well_id"]
        np.testing.assert_allclose(row[profiles.feature_names(5)].to_numpy(np.float32), features[mine].mean(axis=0),
                                   rtol=1e-6)
    assert json.loads(anndata.read_h5ad(tmp_path / "w.h5ad").uns["provenance"])["aggregation"] == \
        "mean over the sites of each well_id"
    with pytest.raises(ValueError, match="embed.well_aggregate='max': expected one of"):
        profiles.write_well_profiles(str(tmp_path / "x"), features, meta, {}, aggregate="max")


def test_a_disk_without_room_for_the_anndata_files_is_refused_before_hdf5_writes(tmp_path, monkeypatch):
    """HDF5 cannot fail cleanly on a full disk (its close crashed the interpreter in `--mode embed`): the h5ad and
    well-profile writers ask for their room first and refuse in one FileFault naming the file; nothing is left."""
    meta, features = _sites(np.random.default_rng(0))
    real = os.statvfs(tmp_path)

    class Full:
        f_bavail, f_frsize = 16, real.f_frsize  # a few blocks: less than the 1 MiB every file asks beyond its data

    monkeypatch.setattr(os, "statvfs", lambda path: Full)
    with pytest.raises(fileio.FileFault, match=rf"{tmp_path / 'w.parquet'}: cannot write it \(it needs about"):
        profiles.write_well_profiles(str(tmp_path / "w"), features, meta, {})
    with pytest.raises(fileio.FileFault, match=rf"{tmp_path / 'x.h5ad'}: cannot write it \(it needs about"):
        profiles.write_h5ad(str(tmp_path / "x.h5ad"), features, meta, {})
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(os, "statvfs", lambda path: real)
    profiles.write_well_profiles(str(tmp_path / "w"), features, meta, {})
    assert sorted(os.listdir(tmp_path)) == ["w.h5ad", "w.parquet"]
