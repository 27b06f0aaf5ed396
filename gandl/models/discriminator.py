"""StyleGAN2 residual discriminator; `features()` is the GAN-DL embedding (the epilogue fc output),
`multiscale_features()` the pooled statistics of every block plus that embedding.

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


OUTPUTS = ("logits", "fc", "multiscale", "blocks", "mbstd")


class DiscriminatorEpilogue(nn.Module):
    """4×4 head, all float32 as in stylegan2-ada-pytorch: mbstd → 3×3 conv → fc (the embedding) → out (logit)."""

    features: int
    mbstd_num_channels: int
    conv_clamp: float | None

    @nn.compact
    def __call__(self, x: Array, mbstd_group_size: int, output: str, mbstd_value: Array | None = None) -> Array:
        x = x.astype(jnp.float32)
        if output == "mbstd":
            return layers.minibatch_stddev_statistic(x, mbstd_group_size, self.mbstd_num_channels)
        if self.mbstd_num_channels > 0:
            x = (layers.minibatch_stddev(x, mbstd_group_size, self.mbstd_num_channels) if mbstd_value is None
                 else layers.append_constant_channels(x, mbstd_value))
        x = layers.Conv2d(self.features, 3, conv_clamp=self.conv_clamp, name="conv")(x)
        x = layers.Dense(self.features, lrelu=True, name="fc")(x.reshape(x.shape[0], -1))
        if output != "logits":
            return x
        return layers.Dense(1, name="out")(x)


def spatial_moments(x: Array) -> Array:
    """Mean and standard deviation over space of NHWC maps, [B, 2C] float32 (global pooled statistics)."""
    x = x.astype(jnp.float32)
    return jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.std(x, axis=(1, 2))], axis=-1)


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: blocks b{resolution} … b8, then the b4 epilogue.

    `mbstd_group_size` (call time) overrides the configured group size. With 1, the stddev channel is the
    constant 1e-4 (the √1e-8 floor), so each image's logit/features depend on that image only; so they do
    with `mbstd_value` ([mbstd_num_channels]), a fixed statistic fed in place of the batch's.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, mbstd_group_size: int | None = None, output: str = "logits",
                 mbstd_value: Array | None = None) -> Array:
        """Images [B, H, W, C] → one of `OUTPUTS`: logits [B, 1], the fc embedding [B, channels(4)], the
        multiscale features [B, multiscale_dim], the blocks' alone [B, blocks_dim], or the minibatch-stddev
        statistic [B/G, F]."""
        cfg = self.config
        if x.shape[1:] != (cfg.resolution, cfg.resolution, cfg.num_channels):
            raise ValueError(f"expected [B, {cfg.resolution}, {cfg.resolution}, {cfg.num_channels}], got {x.shape}")
        if output not in OUTPUTS:
            raise ValueError(f"unknown discriminator output {output!r}; known: {OUTPUTS}")
        pooled = []
        for log2 in range(int(math.log2(cfg.resolution)), 2, -1):
            res = 2**log2
            block = DiscriminatorBlock(
                layers.block_channels(res, cfg.channel_base, cfg.channel_max),
                layers.block_channels(res // 2, cfg.channel_base, cfg.channel_max),
                cfg.conv_clamp, block_dtype(res, cfg.resolution, cfg.compute_dtype), name=f"b{res}",
            )
            x = block(x, from_rgb=res == cfg.resolution)
            if output in ("multiscale", "blocks"):
                pooled.append(spatial_moments(x))
        if output == "blocks":
            return jnp.concatenate(pooled, axis=-1)
        epilogue = DiscriminatorEpilogue(
            layers.block_channels(4, cfg.channel_base, cfg.channel_max), cfg.mbstd_num_channels, cfg.conv_clamp,
            name="b4",
        )
        group = cfg.mbstd_group_size if mbstd_group_size is None else mbstd_group_size
        out = epilogue(x, group, output, mbstd_value)
        return jnp.concatenate([*pooled, out], axis=-1) if output == "multiscale" else out

    def features(self, x: Array, mbstd_group_size: int | None = None, mbstd_value: Array | None = None) -> Array:
        """The GAN-DL embedding: b4.fc output after its lrelu·√2, before b4.out; float32 [B, channels(4)]."""
        return self(x, mbstd_group_size, output="fc", mbstd_value=mbstd_value)

    def multiscale_features(self, x: Array, mbstd_group_size: int | None = None,
                            mbstd_value: Array | None = None) -> Array:
        """Mean and stddev over space of every block's output (b{resolution} … b8), then b4.fc: [B, D].

        Global pooled statistics of every scale, as Radford et al. (2016) use a DCGAN discriminator's
        features: the fc embedding sees only the 4×4 head, these also keep what the early blocks detect.
        """
        return self(x, mbstd_group_size, output="multiscale", mbstd_value=mbstd_value)

    def block_features(self, x: Array, mbstd_group_size: int | None = None, mbstd_value: Array | None = None
                       ) -> Array:
        """Mean and stddev over space of every block's output (b{resolution} … b8) without the 4×4 head: what
        the intermediate blocks learned, apart from the epilogue that is trained hardest to tell real from fake.
        The arguments of the other outputs are accepted and unused (no block sees the minibatch stddev)."""
        return self(x, mbstd_group_size, output="blocks", mbstd_value=mbstd_value)

    def mbstd_statistic(self, x: Array, mbstd_group_size: int | None = None) -> Array:
        """The minibatch-stddev statistic the epilogue computes for this batch, [B/G, mbstd_num_channels]."""
        return self(x, mbstd_group_size, output="mbstd")


def blocks_dim(cfg: ModelConfig) -> int:
    """Width of `Discriminator.block_features`: 2 × each block's output channels."""
    return 2 * sum(layers.block_channels(2 ** (log2 - 1), cfg.channel_base, cfg.channel_max)
                   for log2 in range(int(math.log2(cfg.resolution)), 2, -1))


def multiscale_dim(cfg: ModelConfig) -> int:
    """Width of `Discriminator.multiscale_features`: the blocks' statistics plus the fc width."""
    return blocks_dim(cfg) + layers.block_channels(4, cfg.channel_base, cfg.channel_max)
