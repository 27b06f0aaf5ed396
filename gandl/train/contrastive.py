"""A contrastive discriminator head (ContraD, Jeong & Shin 2021): SimCLR on D's penultimate features.

Two strongly augmented views of each real image (`augment.augment` at p = 1) go through D up to b4.fc, then a
small projection head; the NT-Xent loss (Chen et al. 2020) pulls a site's two views together against every
other view in the batch. Added to D's loss with a weight, it asks D's embedding to tell sites apart by what
survives the augmentations (shape, arrangement, texture) instead of only telling reals from fakes. The head
is trained with D but lives beside it (`TrainState.head`), so D's parameters and exported features keep
their form; the head is discarded at export, as SimCLR's is.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

Array = jax.Array

PROJECTION_DIM = 128  # SimCLR's and ContraD's output width


class ProjectionHead(nn.Module):
    """fc features [B, F] -> [B, PROJECTION_DIM]: Dense(F), lrelu, Dense, as SimCLR's 2-layer MLP."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.leaky_relu(nn.Dense(x.shape[-1], name="hidden")(x), 0.2)
        return nn.Dense(PROJECTION_DIM, name="out")(x)


def init_head(key: Array, features: int) -> dict:
    """Parameters of the projection head on `features`-wide D embeddings."""
    return ProjectionHead().init(key, jnp.zeros((1, features), jnp.float32))["params"]


def project(head_params: dict, features: Array) -> Array:
    """Unit-norm projections of D's fc features, [B, PROJECTION_DIM]."""
    z = ProjectionHead().apply({"params": head_params}, features.astype(jnp.float32))
    return z / jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True) + 1e-12)


def nt_xent(z1: Array, z2: Array, temperature: float) -> Array:
    """SimCLR's NT-Xent loss of unit-norm views z1, z2 [B, d]: row i of z1 and of z2 are a positive pair.

    Each of the 2B views is classified among the other 2B - 1 by cosine similarity / temperature; the loss is
    the mean cross-entropy of picking its pair. Batch-sharded inputs stay sharded: every row meets a
    replicated copy of all views, so the similarity matrix is split by rows.
    """
    z = jnp.concatenate([z1, z2], axis=0)
    n = z.shape[0]
    everyone = jax.sharding.reshard(z, PartitionSpec()) if _sharded(z) else z
    logits = (z @ everyone.T) / temperature  # [2B, 2B]
    rows = jnp.arange(n)[:, None]
    logits = jnp.where(rows == jnp.arange(n)[None, :], -jnp.inf, logits)  # a view is not its own pair
    positive = jnp.sum(z1 * z2, axis=-1) / temperature
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1)) - jnp.mean(positive)


def _sharded(x: Array) -> bool:
    return any(axis is not None for axis in jax.typeof(x).sharding.spec)
