"""Model configuration: the `model` section of an experiment config, shared by G, D and the converter."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from gandl import defaults


@dataclasses.dataclass(frozen=True)
class ModelConfig(defaults.Model):
    """StyleGAN2 hyper-parameters: the fields, defaults and rules of the schema's `gandl.defaults.Model`, their one
    source (the paper's 256 px variant is configs/rxrx19a.py).

    dtype is the compute dtype ("float32" or "bfloat16"); parameters, w_avg, the mapping network, mbstd
    statistics, images out of G, D's low-resolution blocks and its b4 epilogue (the embedding, the logits)
    stay float32 (see discriminator.block_dtype). conv_clamp None disables clamping.
    """

    def __post_init__(self) -> None:
        defaults.validate_section(self)
        if self.mbstd_num_channels and min(self.channel_base // 4, self.channel_max) % self.mbstd_num_channels:
            raise ValueError("mbstd_num_channels must divide the 4x4 block's channel count")

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The jnp dtype named by `dtype`."""
        return jnp.dtype(self.dtype)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> ModelConfig:
        """Build from a dict or ml_collections.ConfigDict; unknown keys are an error (typos must not pass)."""
        values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**values)
