"""Published-embeddings loader and handcrafted features."""

import zipfile

import numpy as np
import pandas as pd
import pytest

from gandl.analysis import baselines
from gandl.data import images as image_io
from gandl.features import handcrafted


def _frame(ids, width, start=0.0, prefix="feature_"):
    values = start + np.arange(len(ids) * width, dtype=np.float64).reshape(len(ids), width) / 8
    frame = pd.DataFrame(values, columns=[f"{prefix}{i}" for i in range(width)])
    frame.insert(0, "site_id", ids)
    return frame, values


def test_loads_a_single_embeddings_csv(tmp_path):
    frame, values = _frame(["HRCE-1_1_A01_1", "HRCE-1_1_A01_2", "VERO-1_1_B02_1"], 1024, prefix="")
    frame.to_csv(tmp_path / "embeddings.csv", index=False)
    feats, ids = baselines.load_published_embeddings(str(tmp_path / "embeddings.csv"), chunksize=2)
    assert feats.shape == (3, 1024) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, values, rtol=1e-6)
    assert ids.tolist() == frame["site_id"].tolist()


def test_loads_a_zip_of_per_experiment_csvs_ordering_feature_columns(tmp_path):
    a, va = _frame(["HRCE-1_1_A01_1", "HRCE-1_1_A01_2"], 12)
    b, vb = _frame(["VERO-1_1_A01_1"], 12, start=100)
    b = b[["site_id"] + [f"feature_{i}" for i in reversed(range(12))]]  # shuffled column order
    b.insert(1, "experiment", "VERO-1")  # extra metadata columns are not features
    with zipfile.ZipFile(tmp_path / "embeddings.zip", "w") as z:
        z.writestr("embeddings/HRCE-1.csv", a.to_csv(index=False))
        z.writestr("embeddings/VERO-1.csv", b.to_csv(index=False))
    feats, ids = baselines.load_published_embeddings(str(tmp_path / "embeddings.zip"))
    np.testing.assert_allclose(feats, np.concatenate([va, vb]), rtol=1e-6)
    assert ids.tolist() == ["HRCE-1_1_A01_1", "HRCE-1_1_A01_2", "VERO-1_1_A01_1"]


def test_published_loader_errors(tmp_path):
    pd.DataFrame({"id": ["a"], "x": [1.0]}).to_csv(tmp_path / "noid.csv", index=False)
    with pytest.raises(ValueError, match="no site_id"):
        baselines.load_published_embeddings(str(tmp_path / "noid.csv"))
    pd.DataFrame({"site_id": ["a"], "x": ["high"]}).to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(ValueError, match="non-numeric"):
        baselines.load_published_embeddings(str(tmp_path / "text.csv"))
    with zipfile.ZipFile(tmp_path / "mixed.zip", "w") as z:
        z.writestr("a.csv", _frame(["a"], 4)[0].to_csv(index=False))
        z.writestr("b.csv", _frame(["b"], 5)[0].to_csv(index=False))
    with pytest.raises(ValueError, match="disagree"):
        baselines.load_published_embeddings(str(tmp_path / "mixed.zip"))


def test_handcrafted_features_known_values_and_batch_independence():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    images[0] = 51  # a flat image: mean 0.2, no spread, no texture
    whole = handcrafted.features([images])
    split = handcrafted.features([images[:2], images[2:5], images[5:]])
    names = handcrafted.feature_names(3)
    assert whole.shape == (7, len(names)) and len(set(names)) == len(names)
    np.testing.assert_allclose(whole, split, rtol=1e-5, atol=1e-6)  # a site's features ignore its batch
    flat = dict(zip(names, whole[0]))
    assert flat["w1_mean"] == pytest.approx(0.2, abs=1e-5) and flat["w2_q50"] == pytest.approx(0.2, abs=1e-5)
    assert max(abs(flat["w3_std"]), flat["w1_gradient"], flat["w2_laplacian"]) < 1e-6
    noisy = dict(zip(names, whole[1]))
    assert noisy["w1_gradient"] > noisy["w1_gradient_coarse"] > 0  # white noise fades when pooled
    assert abs(noisy["corr_w1_w2"]) < 0.2
    both = images[1:2].copy()
    both[..., 1] = both[..., 0]
    assert dict(zip(names, handcrafted.features([both])[0]))["corr_w1_w2"] == pytest.approx(1.0)


def test_read_site_images_applies_the_channel_map(tmp_path):
    from PIL import Image

    paths = []
    for site in range(3):
        row = []
        for ch in range(6):
            path = tmp_path / f"s{site}_w{ch + 1}.png"
            Image.fromarray(np.full((8, 8), 10 * site + ch + 1, np.uint8)).save(path)
            row.append(str(path))
        paths.append(row)
    batches = list(image_io.read_site_images(np.array(paths), channels=(1, 2, 3, 4, 6), batch_size=2))
    assert [b.shape for b in batches] == [(2, 8, 8, 5), (1, 8, 8, 5)]
    assert batches[1][0, 0, 0].tolist() == [21, 22, 23, 24, 26]
