"""Model configuration: the `model` section of an experiment config, shared by G, D and the converter."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from gandl.defaults import base_config

_BASE = base_config().model
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """StyleGAN2 hyper-parameters; the defaults are `gandl.defaults.base_config().model`'s, their one source (the
    paper's 256 px variant is configs/rxrx19a.py).

    dtype is the compute dtype ("float32" or "bfloat16"); parameters, w_avg, the mapping network, mbstd
    statistics, images out of G, D's low-resolution blocks and its b4 epilogue (the embedding, the logits)
    stay float32 (see discriminator.block_dtype). conv_clamp None disables clamping.
    """

    resolution: int = _BASE.resolution
    num_channels: int = _BASE.num_channels
    z_dim: int = _BASE.z_dim
    w_dim: int = _BASE.w_dim
    mapping_layers: int = _BASE.mapping_layers
    channel_base: int = _BASE.channel_base
    channel_max: int = _BASE.channel_max
    conv_clamp: float | None = _BASE.conv_clamp
    mbstd_group_size: int = _BASE.mbstd_group_size
    mbstd_num_channels: int = _BASE.mbstd_num_channels
    dtype: str = _BASE.dtype
    mapping_lr_multiplier: float = _BASE.mapping_lr_multiplier
    w_avg_beta: float = _BASE.w_avg_beta

    def __post_init__(self) -> None:
        res = self.resolution
        if res < 8 or res & (res - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {res}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.mbstd_num_channels and min(self.channel_base // 4, self.channel_max) % self.mbstd_num_channels:
            raise ValueError("mbstd_num_channels must divide the 4x4 block's channel count")

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The jnp dtype named by `dtype`."""
        return jnp.dtype(DTYPES[self.dtype])

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> ModelConfig:
        """Build from a dict or ml_collections.ConfigDict; unknown keys are an error (typos must not pass)."""
        values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**values)
