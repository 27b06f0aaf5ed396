"""Model configuration: the `model` section of an experiment config, shared by G, D and the converter."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from gandl import defaults


@dataclasses.dataclass(frozen=True)
class ModelConfig(defaults.Model):
    """StyleGAN2 hyper-parameters: the fields, defaults and rules of the schema's `gandl.defaults.Model`, their one
    source (the paper's 256 px variant is configs/rxrx19a.py).

    dtype is the compute dtype ("float32" or "bfloat16"); parameters, w_avg, the mapping network, mbstd
    statistics, images out of G, D's low-resolution blocks and its b4 epilogue (the embedding, the logits)
    stay float32 (see discriminator.block_dtype). conv_clamp None disables clamping. Checked on construction
    (`defaults.Model`: every field's rule, and the minibatch-stddev channels against the 4x4 block's).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resolution is None:
            raise ValueError("resolution=None: a model needs its side; ModelConfig.of_run(config) takes the training "
                             "records' side from a run's config")

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The jnp dtype named by `dtype`."""
        return jnp.dtype(self.dtype)
