"""StyleGAN2 generator: mapping network z → w (with tracked w_avg and truncation) and a skip synthesis network.

Variables: 'params' (trainable) and 'buffers' (`mapping/w_avg`, the tracked mean of w, and each synthesis
layer's `noise_const`). Both must be passed to `apply`; the w_avg update needs `mutable=['buffers']`.
Names mirror stylegan2-ada-pytorch's state dict (`mapping/fc0/weight`, `synthesis/b8/conv1/affine/bias`, …).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gandl.models import layers
from gandl.models.config import ModelConfig
from gandl.models.layers import Array, DType


def normalize_2nd_moment(x: Array, eps: float = 1e-8) -> Array:
    """Scale each row to unit mean square, so z's norm carries no information into the mapping."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def truncate(ws: Array, w_avg: Array, psi: float | Array, cutoff: int | None = None) -> Array:
    """Pull ws[:, :cutoff] towards w_avg: w_avg + ψ·(w − w_avg). A Python ψ == 1 leaves ws bit-exact."""
    if isinstance(psi, (int, float)) and psi == 1:
        return ws
    pulled = w_avg + psi * (ws - w_avg)
    if cutoff is None:
        return pulled
    return jnp.where((jnp.arange(ws.shape[1]) < cutoff)[None, :, None], pulled, ws)


def mix_styles(ws: Array, ws2: Array, cutoff: int | Array) -> Array:
    """Style mixing: layers [0, cutoff) take ws, layers [cutoff, num_ws) take ws2. `cutoff` may be traced."""
    return jnp.where((jnp.arange(ws.shape[1]) < cutoff)[None, :, None], ws, ws2)


def num_ws(resolution: int) -> int:
    """Number of w vectors the skip synthesis network consumes: 2 per block, b4 has one conv, plus last ToRGB."""
    return 2 * int(math.log2(resolution)) - 2


def _split_noise(flat: Array, resolutions: list[int]) -> list[Array]:
    """Cut one [B, Σ r²] draw into per-layer [B, r, r, 1] noise maps."""
    offsets = np.cumsum([0] + [r * r for r in resolutions])
    return [flat[:, a:b].reshape(-1, r, r, 1) for a, b, r in zip(offsets[:-1], offsets[1:], resolutions)]


class MappingNetwork(nn.Module):
    """z → normalise → `num_layers` equalized-lr FC layers (lr_mul 0.01, lrelu) → w, broadcast to num_ws."""

    w_dim: int
    num_ws: int
    num_layers: int
    lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995

    @nn.compact
    def __call__(
        self,
        z: Array,
        truncation_psi: float | Array = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> Array:
        x = normalize_2nd_moment(z.astype(jnp.float32))
        for idx in range(self.num_layers):
            x = layers.Dense(self.w_dim, lrelu=True, lr_multiplier=self.lr_multiplier, name=f"fc{idx}")(x)
        w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,), jnp.float32)
        if update_w_avg:  # w_avg ← lerp(mean(w), w_avg, β), as PyTorch's training-mode forward does.
            batch_mean = jnp.mean(jax.lax.stop_gradient(x), axis=0)
            w_avg.value = batch_mean + self.w_avg_beta * (w_avg.value - batch_mean)
        ws = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
        return truncate(ws, w_avg.value, truncation_psi, truncation_cutoff)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (const | up-conv0) → conv1 → ToRGB added to the upsampled image."""

    features: int
    resolution: int
    num_channels: int
    conv_clamp: float | None
    dtype: DType

    @nn.compact
    def __call__(
        self, x: Array | None, img: Array | None, ws: Array, noise_mode: str, noises: list[Array | None]
    ) -> tuple[Array, Array]:
        conv_kwargs = dict(resolution=self.resolution, conv_clamp=self.conv_clamp, dtype=self.dtype)
        if x is None:
            const = self.param(
                "const", nn.initializers.normal(1.0), (self.resolution, self.resolution, self.features)
            )
            x = jnp.broadcast_to(const.astype(self.dtype), (ws.shape[0],) + const.shape)
            idx = 0
        else:
            conv0 = layers.SynthesisLayer(self.features, up=2, name="conv0", **conv_kwargs)
            x = conv0(x, ws[:, 0], noise_mode, noises[0])
            idx = 1
        conv1 = layers.SynthesisLayer(self.features, name="conv1", **conv_kwargs)
        x = conv1(x, ws[:, idx], noise_mode, noises[idx])
        torgb = layers.ToRGB(self.num_channels, conv_clamp=self.conv_clamp, dtype=self.dtype, name="torgb")
        y = torgb(x, ws[:, idx + 1])
        y = y.astype(jnp.float32)
        return x, y if img is None else layers.upsample2d(img) + y


class SynthesisNetwork(nn.Module):
    """Blocks b4 … b{resolution}; each block reads one w per conv plus one for its ToRGB, which is the w of
    the next block's conv0 (so num_ws = 2·log2(resolution) − 2)."""

    resolution: int
    num_channels: int
    channel_base: int
    channel_max: int
    conv_clamp: float | None = 256.0
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, ws: Array, noise_mode: str = "random") -> Array:
        resolutions = [2**log2 for log2 in range(2, int(math.log2(self.resolution)) + 1)]
        layer_resolutions = [res for res in resolutions for _ in range(1 if res == 4 else 2)]
        noises = _split_noise(
            jax.random.normal(self.make_rng("noise"), (ws.shape[0], sum(r * r for r in layer_resolutions))),
            layer_resolutions,
        ) if noise_mode == "random" else [None] * len(layer_resolutions)
        x, img, w_idx = None, None, 0
        for res in resolutions:
            block = SynthesisBlock(
                layers.block_channels(res, self.channel_base, self.channel_max), res, self.num_channels,
                self.conv_clamp, self.dtype, name=f"b{res}",
            )
            num_conv = 1 if res == 4 else 2
            x, img = block(x, img, ws[:, w_idx : w_idx + num_conv + 1], noise_mode, noises[w_idx : w_idx + num_conv])
            w_idx += num_conv
        return img


class Generator(nn.Module):
    """Mapping + synthesis. Images are NHWC float32 (≈[-1, 1]).

    noise_mode: 'random' (needs `rngs={'noise': key}`), 'const' (the stored noise_const maps) or 'none'.
    update_w_avg: update the tracked w_avg from this batch (apply with `mutable=['buffers']`).
    """

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.mapping = MappingNetwork(
            cfg.w_dim, num_ws(cfg.resolution), cfg.mapping_layers, cfg.mapping_lr_multiplier, cfg.w_avg_beta
        )
        self.synthesis = SynthesisNetwork(
            cfg.resolution, cfg.num_channels, cfg.channel_base, cfg.channel_max, cfg.conv_clamp, cfg.compute_dtype
        )

    def __call__(
        self,
        z: Array,
        truncation_psi: float | Array = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        update_w_avg: bool = False,
    ) -> Array:
        return self.synthesis(self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg), noise_mode)

    def map(
        self,
        z: Array,
        truncation_psi: float | Array = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> Array:
        """z [B, z_dim] → ws [B, num_ws, w_dim]."""
        return self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg)

    def synthesize(self, ws: Array, noise_mode: str = "random") -> Array:
        """ws [B, num_ws, w_dim] → images [B, H, W, C]."""
        return self.synthesis(ws, noise_mode)

    def map_mixed(self, z: Array, key: Array, mixing_prob: float, update_w_avg: bool = False) -> Array:
        """Training-time style mixing: with probability `mixing_prob`, layers from a random cutoff in
        [1, num_ws) take the ws of a second latent drawn from `key` (which never updates w_avg)."""
        key_z, key_cutoff, key_apply = jax.random.split(key, 3)
        ws = self.mapping(z, update_w_avg=update_w_avg)
        ws2 = self.mapping(jax.random.normal(key_z, z.shape, jnp.float32))
        count = ws.shape[1]
        cutoff = jax.random.randint(key_cutoff, (), 1, count)
        cutoff = jnp.where(jax.random.uniform(key_apply) < mixing_prob, cutoff, count)
        return mix_styles(ws, ws2, cutoff)
