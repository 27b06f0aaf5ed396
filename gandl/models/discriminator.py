"""StyleGAN2 residual discriminator; `features()` is the GAN-DL embedding (the epilogue fc output).

Input images are NHWC float in [-1, 1]. Parameter names mirror stylegan2-ada-pytorch (`b256/fromrgb/weight`,
`b4/conv`, `b4/fc`, `b4/out`); the epilogue's fc kernel is stored for an NHWC flatten (see convert.py).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from gandl.models import layers
from gandl.models.config import ModelConfig
from gandl.models.layers import Array, DType

_RESIDUAL_GAIN = math.sqrt(0.5)  # skip + main branch, each scaled by √½, keeps the variance.
# Blocks that may compute in the reduced `dtype`, counted from the top: stylegan2-ada-pytorch's paper256 /
# stylegan2 configs use num_fp16_res=4. At 256 px they hold ~93% of D's FLOPs; the low-resolution blocks and
# the b4 epilogue (mbstd, conv, fc: the embedding) are cheap and stay float32.
REDUCED_PRECISION_BLOCKS = 4


def block_dtype(res: int, resolution: int, dtype: DType) -> DType:
    """The compute dtype of block b{res}: `dtype` for the top blocks, float32 below them and in the epilogue.

    As stylegan2-ada-pytorch's `fp16_resolution = max(2 ** (log2(resolution) + 1 - num_fp16_res), 8)`:
    blocks at res >= that resolution use reduced precision (so b8 is float32 only from 128 px up).
    """
    threshold = max(resolution // 2 ** (REDUCED_PRECISION_BLOCKS - 1), 8)
    return dtype if res >= threshold else jnp.float32


class DiscriminatorBlock(nn.Module):
    """(fromrgb at the top block) → conv0 → conv1 with ×2 FIR downsampling, plus a downsampling 1×1 skip."""

    tmp_features: int
    out_features: int
    conv_clamp: float | None
    dtype: DType

    @nn.compact
    def __call__(self, x: Array, from_rgb: bool) -> Array:
        conv = dict(conv_clamp=self.conv_clamp, dtype=self.dtype)
        if from_rgb:
            x = layers.Conv2d(self.tmp_features, 1, name="fromrgb", **conv)(x)
        skip = layers.Conv2d(
            self.out_features, 1, lrelu=False, down=2, use_bias=False, gain=_RESIDUAL_GAIN, dtype=self.dtype,
            name="skip",
        )(x)
        x = layers.Conv2d(self.tmp_features, 3, name="conv0", **conv)(x)
        x = layers.Conv2d(self.out_features, 3, down=2, gain=_RESIDUAL_GAIN, name="conv1", **conv)(x)
        return skip + x


class DiscriminatorEpilogue(nn.Module):
    """4×4 head, all float32 as in stylegan2-ada-pytorch: mbstd → 3×3 conv → fc (the embedding) → out (logit)."""

    features: int
    mbstd_num_channels: int
    conv_clamp: float | None

    @nn.compact
    def __call__(self, x: Array, mbstd_group_size: int, return_features: bool) -> Array:
        x = x.astype(jnp.float32)
        if self.mbstd_num_channels > 0:
            x = layers.minibatch_stddev(x, mbstd_group_size, self.mbstd_num_channels)
        x = layers.Conv2d(self.features, 3, conv_clamp=self.conv_clamp, name="conv")(x)
        x = layers.Dense(self.features, lrelu=True, name="fc")(x.reshape(x.shape[0], -1))
        if return_features:
            return x
        return layers.Dense(1, name="out")(x)


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: blocks b{resolution} … b8, then the b4 epilogue.

    `mbstd_group_size` (call time) overrides the configured group size. With 1, the stddev channel is the
    constant 1e-4 (the √1e-8 floor), so each image's logit/features depend on that image only.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, mbstd_group_size: int | None = None, return_features: bool = False) -> Array:
        """Images [B, H, W, C] → logits [B, 1] (or the [B, channels(4)] embedding if return_features)."""
        cfg = self.config
        if x.shape[1:] != (cfg.resolution, cfg.resolution, cfg.num_channels):
            raise ValueError(f"expected [B, {cfg.resolution}, {cfg.resolution}, {cfg.num_channels}], got {x.shape}")
        for log2 in range(int(math.log2(cfg.resolution)), 2, -1):
            res = 2**log2
            block = DiscriminatorBlock(
                layers.block_channels(res, cfg.channel_base, cfg.channel_max),
                layers.block_channels(res // 2, cfg.channel_base, cfg.channel_max),
                cfg.conv_clamp, block_dtype(res, cfg.resolution, cfg.compute_dtype), name=f"b{res}",
            )
            x = block(x, from_rgb=res == cfg.resolution)
        epilogue = DiscriminatorEpilogue(
            layers.block_channels(4, cfg.channel_base, cfg.channel_max), cfg.mbstd_num_channels, cfg.conv_clamp,
            name="b4",
        )
        group = cfg.mbstd_group_size if mbstd_group_size is None else mbstd_group_size
        return epilogue(x, group, return_features)

    def features(self, x: Array, mbstd_group_size: int | None = None) -> Array:
        """The GAN-DL embedding: b4.fc output after its lrelu·√2, before b4.out; float32 [B, channels(4)]."""
        return self(x, mbstd_group_size, return_features=True)
