"""Embedding export: batch independence, orientation averaging, the npz/parquet contract, resume."""

import json
import os

import jax
import numpy as np
import pandas as pd
import pytest

from gandl import embed, sharding
from gandl.data import pipeline, rxrx
from gandl.features import discriminator, handcrafted
from gandl.models import init_variables
from gandl.models.config import ModelConfig

MODEL = ModelConfig(resolution=16, num_channels=5, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256,
                    channel_max=32, mbstd_group_size=4)


@pytest.fixture(scope="module")
def features_fn():
    mesh = sharding.make_mesh()
    d_params = init_variables(MODEL, jax.random.key(0))[1]["params"]
    return mesh, d_params, discriminator.feature_fn(MODEL, d_params, mesh)


def test_an_embedding_does_not_depend_on_the_rest_of_its_batch(features_fn):
    _, _, fn = features_fn
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (8, 16, 16, 5)).astype(np.float32)
    b = a.copy()
    b[1:] = rng.uniform(-1, 1, (7, 16, 16, 5))  # same first image, different batch mates
    fa, fb = fn(a), fn(b)
    assert fa.shape == (8, 32)  # the epilogue width of this tiny config (512 at StyleGAN2's widths)
    np.testing.assert_allclose(fa[0], fb[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(fa[1], fb[1])


def test_orientation_average_is_invariant_to_flips_and_turns(features_fn):
    mesh, d_params, _ = features_fn
    fn = discriminator.feature_fn(MODEL, d_params, mesh, orientation_average=True)
    x = np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 5)).astype(np.float32)
    turned = np.rot90(x, 1, axes=(1, 2))[:, :, ::-1].copy()
    np.testing.assert_allclose(fn(x), fn(turned), rtol=1e-4, atol=1e-5)


def test_export_writes_the_npz_contract_and_profiles(features_fn, rxrx19a_dir, shards_dir, tmp_path):
    _, _, fn = features_fn
    spec = pipeline.open_shards(shards_dir)
    out = str(tmp_path / "emb")
    paths = embed.export(spec, out, {"gandl": fn, "handcrafted": handcrafted.feature_fn}, batch_size=16,
                         provenance={"step": 7, "checkpoint": "ckpt/7"}, part_batches=2, progress=False)
    metadata = rxrx.read_rxrx19a(rxrx19a_dir).metadata
    with np.load(paths["gandl"], allow_pickle=False) as npz:
        assert npz["features"].dtype == np.float32 and npz["features"].shape == (len(metadata), 32)
        np.testing.assert_array_equal(npz["site_id"], metadata["site_id"].to_numpy(str))  # metadata order
        assert npz["site_id"].dtype.kind == "U" and npz["treatment"].dtype.kind == "U"
        assert npz["plate"].dtype == np.int64 and npz["treatment_conc"].dtype == np.float64  # as the screen typed them
        np.testing.assert_array_equal(npz["plate"], metadata["plate"])
        np.testing.assert_array_equal(npz["treatment_conc"], metadata["treatment_conc"])  # exactly, NaN included
        provenance = json.loads(str(npz["provenance"]))
        assert provenance["step"] == 7 and provenance["feature_set"] == "gandl"
        gandl_features = npz["features"]
    profiles = pd.read_parquet(os.path.join(out, "gandl.parquet"))
    assert list(profiles.columns[:2]) == ["Metadata_site_id", "Metadata_well_id"]
    assert profiles.columns[-1] == "GANDL_0031" and len(profiles) == len(metadata)
    np.testing.assert_array_equal(profiles.filter(like="GANDL_").to_numpy(), gandl_features)
    with np.load(paths["handcrafted"], allow_pickle=False) as npz:
        assert npz["features"].shape[0] == len(metadata)

    # An interrupted export resumes from its parts: drop the last part and the results, rerun.
    parts = sorted(os.listdir(os.path.join(out, "parts", "handcrafted")))
    os.remove(os.path.join(out, "parts", "handcrafted", parts[-1]))
    os.remove(paths["gandl"])
    os.remove(paths["handcrafted"])  # a set whose files are all there counts as finished and is left alone
    calls = []

    def counting(images):
        calls.append(len(images))
        return fn(images)

    embed.export(spec, out, {"gandl": counting, "handcrafted": handcrafted.feature_fn}, batch_size=16,
                 provenance={"step": 7}, part_batches=2, progress=False)
    assert 0 < len(calls) <= 2  # only the missing part's batches were computed again
    with np.load(paths["gandl"], allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["features"], gandl_features, rtol=1e-6)


@pytest.mark.slow
def test_64px_rxrx1_utils_records_embed_through_a_32px_model(tmp_path):
    from test_data_pipeline import _rxrx1_utils_sites, _write_rxrx1_utils

    _write_rxrx1_utils(str(tmp_path / "r.tfrecord"), _rxrx1_utils_sites(np.random.default_rng(3), 64, 5), 64)
    spec = pipeline.open_records(str(tmp_path / "*.tfrecord"), rxrx1_utils_size=64)
    model = ModelConfig(**{**MODEL.__dict__, "resolution": 32})
    mesh = sharding.make_mesh()
    fn = discriminator.feature_fn(model, init_variables(model, jax.random.key(0))[1]["params"], mesh)
    options = pipeline.InputOptions(channels=rxrx.channel_map("rxrx1", "rxrx19a"), resolution=model.resolution)
    paths = embed.export(spec, str(tmp_path / "emb"), {"gandl": fn}, batch_size=8, provenance={}, options=options,
                         progress=False)
    with np.load(paths["gandl"], allow_pickle=False) as npz:
        assert npz["features"].shape == (5, 32) and np.isfinite(npz["features"]).all()
        assert npz["features"].std(axis=0).max() > 0  # five different sites, five different embeddings
