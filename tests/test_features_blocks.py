"""The intermediate-block feature set: D's pooled block statistics without the 4x4 head."""

import jax
import numpy as np
import pytest

from gandl import sharding
from gandl.features import discriminator, registry
from gandl.models import ModelConfig, init_variables
from gandl.models.discriminator import blocks_dim, multiscale_dim


@pytest.mark.slow
def test_block_features_are_the_multiscale_features_without_the_head(tiny_config):
    model = ModelConfig.from_mapping(tiny_config.model)
    params = init_variables(model, jax.random.key(0))[1]["params"]
    mesh = sharding.make_mesh()
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 5)).astype(np.float32)
    blocks = discriminator.feature_fn(model, params, mesh, option="blocks")(images)
    multiscale = discriminator.feature_fn(model, params, mesh, option="multiscale")(images)
    assert blocks.shape == (8, blocks_dim(model)) == (8, multiscale_dim(model) - 32) == (8, 2 * (32 + 32))
    np.testing.assert_allclose(blocks, multiscale[:, :-32], rtol=1e-5, atol=1e-6)
    # No block sees the minibatch stddev, so the statistic fed to the head changes nothing here.
    fed = discriminator.feature_fn(model, params, mesh, option="blocks", mbstd_value=np.array([0.3], np.float32))
    np.testing.assert_allclose(fed(images), blocks, rtol=1e-6)


def test_block_feature_sets_are_registered_as_a_trained_and_random_init_pair():
    trained, random = registry.get("gandl_blocks"), registry.get("random_d_blocks")
    assert trained.reference == "random_d_blocks" and not random.reference
    assert registry._resolve("gandl_blocks") == discriminator.DiscriminatorFeatures("blocks", random=False)
    assert registry._resolve("random_d_blocks") == discriminator.DiscriminatorFeatures("blocks", random=True)
