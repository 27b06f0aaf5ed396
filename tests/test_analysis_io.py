"""Embeddings npz loading, site_id joins and well aggregation."""

import numpy as np
import pandas as pd
import pytest

from gandl.analysis import io


def _metadata(n: int = 6) -> pd.DataFrame:
    wells = ["A01", "A01", "B02", "B02", "C03", "C03"][:n]
    return pd.DataFrame({
        "site_id": [f"E-1_1_{w}_{i % 2 + 1}" for i, w in enumerate(wells)],
        "well_id": [f"E-1_1_{w}" for w in wells], "cell_type": "HRCE", "experiment": "E-1", "plate": 1,
        "well": wells, "site": [i % 2 + 1 for i in range(n)], "disease_condition": "Mock", "treatment": "",
        "treatment_conc": np.nan, "SMILES": ""})


def test_load_embeddings_reads_the_npz_contract(tmp_path):
    # As the screen typed them: a float column of whole numbers stays float, a dose of 0.1 stays 0.1.
    meta = _metadata().assign(treatment_conc=[np.nan, 0.1, 0.3, 1.0, 3.0, 1.0],
                              Metadata_Dose_uM=[0.0, 1.0, 3.0, 1.0, 0.0, 10.0])
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    arrays = {c: (meta[c].to_numpy() if pd.api.types.is_numeric_dtype(meta[c]) else meta[c].to_numpy().astype(str))
              for c in meta}
    path = tmp_path / "emb.npz"
    np.savez(path, features=feats, provenance=np.array('{"step": 1}'), **arrays)
    loaded, loaded_meta = io.load_embeddings(str(path))
    np.testing.assert_array_equal(loaded, feats)
    assert loaded.dtype == np.float32
    assert "provenance" not in loaded_meta
    assert loaded_meta["plate"].dtype == np.int64 and loaded_meta["site"].tolist() == meta["site"].tolist()
    assert loaded_meta["treatment"].tolist() == [""] * 6
    assert loaded_meta["treatment_conc"].dtype == np.float64 and loaded_meta["treatment_conc"].iloc[1] == 0.1
    assert loaded_meta["treatment_conc"].iloc[3] == 1.0 and loaded_meta["treatment_conc"].dtype == np.float64
    pd.testing.assert_frame_equal(loaded_meta[meta.columns], meta, check_dtype=False)
    for column in meta.select_dtypes("number"):  # no float turned int, no int turned float
        assert loaded_meta[column].dtype == meta[column].dtype, column


def test_load_embeddings_rejects_npz_without_features(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, site_id=np.array(["a"]))
    with pytest.raises(io.JoinError, match="features"):
        io.load_embeddings(str(path))


def test_align_reorders_features_to_metadata():
    meta = _metadata()
    order = np.array([3, 0, 5, 1, 4, 2])
    feats = np.arange(6, dtype=np.float32)[order, None]
    aligned, out_meta = io.align(feats, meta["site_id"].to_numpy()[order], meta)
    np.testing.assert_array_equal(aligned[:, 0], np.arange(6))
    assert out_meta["site_id"].tolist() == meta["site_id"].tolist()


def test_align_lists_unmatched_ids():
    meta = _metadata()
    ids = meta["site_id"].to_numpy().copy()
    ids[2] = "ghost_site"
    with pytest.raises(io.JoinError, match="ghost_site") as err:
        io.align(np.zeros((6, 2), np.float32), ids, meta)
    assert meta["site_id"][2] in str(err.value)
    with pytest.raises(io.JoinError, match="duplicate"):
        io.align(np.zeros((6, 2), np.float32), np.concatenate([ids[:5], ids[:1]]), meta)


def test_aggregate_wells_means_sites():
    meta = _metadata()
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    wf, wm = io.aggregate_wells(feats, meta)
    np.testing.assert_allclose(wf, [[1, 2], [5, 6], [9, 10]])
    assert wm["site_id"].tolist() == wm["well_id"].tolist() == ["E-1_1_A01", "E-1_1_B02", "E-1_1_C03"]
    assert wm["n_sites"].tolist() == [2, 2, 2] and "site" not in wm


def test_plate_key():
    meta = pd.DataFrame({"experiment": ["A", "A", "B"], "plate": [1, 2, 1]})
    assert io.plate_key(meta).tolist() == ["A_1", "A_2", "B_1"]
    assert io.plate_key(meta, "experiment").tolist() == ["A", "A", "B"]


def test_well_medians_resist_one_outlying_site():
    features = np.array([[0.0, 1.0], [0.2, 1.2], [9.0, 50.0], [4.0, 4.0]], np.float32)
    meta = pd.DataFrame({"site_id": list("abcd"), "well_id": ["w1", "w1", "w1", "w2"], "site": [1, 2, 3, 1]})
    medians, wells = io.aggregate_wells(features, meta, "median")
    means, _ = io.aggregate_wells(features, meta, "mean")
    np.testing.assert_allclose(medians, [[0.2, 1.2], [4.0, 4.0]])
    np.testing.assert_allclose(means[0], [9.2 / 3, 52.2 / 3], rtol=1e-6)
    assert wells["n_sites"].tolist() == [3, 1] and wells["site_id"].tolist() == ["w1", "w2"]
    with pytest.raises(ValueError, match="well aggregate"):
        io.aggregate_wells(features, meta, "max")


def test_group_medians_equal_pandas_for_mixed_group_sizes_and_empty_groups():
    rng = np.random.default_rng(0)
    # sizes 1 to 9: the sorting network's (up to io.SMALL_GROUP) and NumPy's median beyond it
    sizes = [4] * 50 + [3] * 10 + [1, 0, 2, 0] + list(range(5, 10))
    codes = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(codes)
    x = rng.standard_normal((len(codes), 7)).astype(np.float32)
    x[np.flatnonzero(codes == 55)[1], 2] = np.nan  # a missing value makes its group's median missing, as pandas'
    ours = io.group_medians(x, codes, len(sizes), chunk=16)  # groups 61 and 63 hold no row
    theirs = pd.DataFrame(x).groupby(codes).median(skipna=False).reindex(range(len(sizes))).to_numpy()
    assert np.isnan(ours[55, 2]) and np.isfinite(ours[55, 1])
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_row_products_equal_a_float64_product_across_chunk_boundaries(chunk):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 9)).astype(np.float32)
    w = rng.normal(size=(9, 3))
    out = io.row_products(x, w, chunk=chunk)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(io.row_products(x, w[:, 0], chunk=chunk), x.astype(np.float64) @ w[:, 0], rtol=1e-12)
