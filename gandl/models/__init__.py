"""StyleGAN2 (skip G, residual D) in Flax, with stylegan2-ada-pytorch weight conversion.

`build_models` and `init_variables` are what the trainer uses; see docs/method.md, "Model", for the API.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gandl.models.config import ModelConfig
from gandl.models.discriminator import Discriminator
from gandl.models.generator import Generator, mix_styles

__all__ = ["Discriminator", "Generator", "ModelConfig", "build_models", "init_variables", "mix_styles"]


def _as_config(config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    return config if isinstance(config, ModelConfig) else ModelConfig.from_mapping(config)


def build_models(config: ModelConfig | Mapping[str, Any]) -> tuple[Generator, Discriminator]:
    """The generator and discriminator modules for a model config (ModelConfig, dict or ConfigDict)."""
    cfg = _as_config(config)
    return Generator(cfg), Discriminator(cfg)


def init_variables(config: ModelConfig | Mapping[str, Any], key: jax.Array) -> tuple[dict, dict]:
    """Fresh G variables ({'params', 'buffers'}) and D variables ({'params'}) for a model config.

    Jitted, and the compiled initialiser is kept per config: op-by-op initialisation compiles every
    distinct parameter shape separately, and recompiling for every new run or restore is slow too.
    """
    return _initializer(_as_config(config))(key)


@functools.lru_cache(maxsize=16)
def _initializer(cfg: ModelConfig) -> Callable[[jax.Array], tuple[dict, dict]]:
    generator, discriminator = build_models(cfg)

    @jax.jit
    def init(key: jax.Array) -> tuple[dict, dict]:
        key_g, key_d = jax.random.split(key)
        g_vars = generator.init({"params": key_g}, jnp.zeros((1, cfg.z_dim)), noise_mode="const")
        d_vars = discriminator.init(key_d, jnp.zeros((1, cfg.resolution, cfg.resolution, cfg.num_channels)))
        return dict(g_vars), dict(d_vars)

    return init
