"""Adaptive discriminator augmentation (Karras et al. 2020, stylegan2-ada-pytorch) for microscopy images.

Every image D sees, real or fake, in every phase, passes through `augment` with probability `p` per transform
and per image, so D cannot memorise the few thousand sites of a screen; the generator is not pushed to produce
augmented images because the augmentation is applied to both sides and differentiated through for fakes.
Only transforms that keep what a fluorescence image means are used, in the original's order::

  geometry   x-flip, 90-degree rotation (microscopy has no orientation), integer translation by up to 1/8 of
             the side with reflect padding: pixels move but none is resampled or invented from nothing
  intensity  per-channel brightness (an offset) and contrast (a scale about the channel's mean): each stain on
             its own, never mixed with another (no hue, saturation or luma flip)
  noise      additive Gaussian noise of a per-image random strength
  cutout     a square of half the side filled with each channel's mean

Reflect rather than zero padding: in [-1, 1] zero is mid-grey, not background, so a zero border would be an
artefact D could key on, and a wrapped (circular) shift would cut cells in half at a visible seam; reflection
continues the texture past the edge as the original does.

`p` is tuned from D's outputs on reals (`AdaState`, `adjust`): r_t = E[sign(D(real))] over the last
`interval` steps is pushed toward a target, moving p by ± (images seen) / (kimg · 1000).
Pure JAX: explicit keys, traced p, jit-able, and the random draws follow the batch's sharding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import PartitionSpec

from gandl.defaults import AUGMENT_TRANSFORMS as TRANSFORMS  # config.train.augment_transforms, in the order applied

Array = jax.Array

# stylegan2-ada-pytorch's magnitudes for the transforms kept here.
TRANSLATE_MAX = 0.125  # fraction of the side
BRIGHTNESS_STD = 0.2  # additive, in [-1, 1] units
CONTRAST_STD = 0.5  # log2 of the scale
NOISE_STD = 0.1
CUTOUT_SIZE = 0.5  # fraction of the side
_DRAWS = ("xflip", "xflip_f", "rot90", "rot90_k", "translate", "translate_t", "brightness", "brightness_b", "contrast",
          "contrast_c", "noise", "noise_sigma", "noise_n", "cutout", "cutout_c")


@struct.dataclass
class AdaState:
    """The augmentation's part of the train state: checkpointed, so a resumed run continues with the same p."""

    p: Array  # float32 scalar in [0, 1]: the probability each transform is applied to an image
    signs: Array  # float32: sum of sign(D(real)) since p was last adjusted
    count: Array  # float32: real images counted in `signs`


def init(p: float) -> AdaState:
    return AdaState(p=jnp.float32(p), signs=jnp.float32(0), count=jnp.float32(0))


def accumulate(state: AdaState, mean_sign: Array, count: int) -> AdaState:
    """Add a batch of `count` reals whose logits' mean sign is `mean_sign` to the overfitting statistic."""
    return state.replace(signs=state.signs + mean_sign * count, count=state.count + count)


def adjust(state: AdaState, target: float, kimg: float) -> AdaState:
    """Move p toward r_t = target by (images counted) / (kimg · 1000), clipped to [0, 1]; reset the statistic.

    r_t above the target means D is confident on reals (overfitting): p rises; below it, p falls. At this rate
    p goes from 0 to 1 in `kimg` thousand images, as the original's ada_kimg.
    """
    rt = state.signs / jnp.maximum(state.count, 1.0)
    p = jnp.clip(state.p + jnp.sign(rt - target) * state.count / (kimg * 1000.0), 0.0, 1.0)
    return init(0.0).replace(p=p.astype(jnp.float32))


def _uniform(key: Array, shape: tuple[int, ...], spec: PartitionSpec | None) -> Array:
    return jax.random.uniform(key, shape, jnp.float32, out_sharding=spec)


def _normal(key: Array, shape: tuple[int, ...], spec: PartitionSpec | None) -> Array:
    return jax.random.normal(key, shape, jnp.float32, out_sharding=spec)


def _reflect(i: Array, n: int) -> Array:
    """Index `i` in [-(n-1), 2(n-1)] reflected into [0, n) without repeating the edge (numpy's 'reflect')."""
    i = jnp.abs(i)
    return jnp.where(i > n - 1, 2 * (n - 1) - i, i)


def geometry_indices(side: int, flip: Array, turns: Array, shift: Array) -> tuple[Array, Array]:
    """Source pixel (row, column) of every output pixel, each [B, side, side].

    The image is x-flipped where `flip` [B] is set, then rotated by `turns` [B] quarter turns (as jnp.rot90 on
    axes (1, 2)), then shifted by `shift` [B, 2] whole pixels (rows, columns) with reflect padding. Index
    arithmetic only, elementwise per image, so it keeps the batch's sharding.
    """
    last = side - 1
    i = _reflect(jnp.arange(side)[None, :, None] - shift[:, 0, None, None], side)  # [B, side, 1]
    j = _reflect(jnp.arange(side)[None, None, :] - shift[:, 1, None, None], side)  # [B, 1, side]
    i, j = jnp.broadcast_arrays(i, j)
    k = turns[:, None, None]
    # rot90 once maps output (i, j) to source (j, last - i); k turns compose it k times.
    rows = jnp.select([k == 0, k == 1, k == 2], [i, j, last - i], last - j)
    cols = jnp.select([k == 0, k == 1, k == 2], [j, last - i, last - j], i)
    cols = jnp.where(flip[:, None, None], last - cols, cols)
    return rows, cols


def augment(images: Array, key: Array, p: Array | float, transforms: tuple[str, ...] = TRANSFORMS) -> Array:
    """`images` [B, H, W, C] (square) with each of `transforms` applied to each image with probability `p`.

    Differentiable in the images (gathers, affine maps, masks), so G's gradient flows through it. The draws
    are made for the whole batch with its sharding, so they do not depend on the device count.
    """
    b, h, w, c = images.shape
    if h != w:
        raise ValueError(f"augmentation needs square images, got {h} x {w}")
    unknown = set(transforms) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"unknown augmentation transforms {sorted(unknown)}; known: {TRANSFORMS}")
    layout = jax.typeof(images).sharding.spec
    spec = PartitionSpec(layout[0]) if len(layout) and layout[0] is not None else None  # None: unsharded
    keys = dict(zip(_DRAWS, jax.random.split(key, len(_DRAWS))))
    p = jnp.asarray(p, jnp.float32)

    def on(name: str, shape: tuple[int, ...] = ()) -> Array:
        """Per-image Bernoulli(p) decision of transform `name` (never, if not asked for), broadcastable to `shape`."""
        return ((_uniform(keys[name], (b,), spec) < p) & (name in transforms)).reshape((b,) + (1,) * len(shape))

    flip = on("xflip") & (_uniform(keys["xflip_f"], (b,), spec) < 0.5)  # as the original: p × a fair coin
    turns = jnp.where(on("rot90"), jax.random.randint(keys["rot90_k"], (b,), 0, 4, out_sharding=spec), 0)
    max_shift = int(math.floor(TRANSLATE_MAX * h))
    shift = jnp.round((_uniform(keys["translate_t"], (b, 2), spec) * 2 - 1) * TRANSLATE_MAX * h)
    shift = jnp.where(on("translate", (1,)), jnp.clip(shift, -max_shift, max_shift), 0).astype(jnp.int32)
    rows, cols = geometry_indices(h, flip, turns, shift)
    x = jax.vmap(lambda image, r, c: image[r, c])(images, rows, cols)

    pixel = (1, 1, 1)
    x = jnp.where(on("brightness", pixel), x + BRIGHTNESS_STD * _normal(keys["brightness_b"], (b, 1, 1, c), spec), x)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = jnp.exp2(CONTRAST_STD * _normal(keys["contrast_c"], (b, 1, 1, c), spec))
    x = jnp.where(on("contrast", pixel), (x - mean) * scale + mean, x)
    sigma = jnp.abs(_normal(keys["noise_sigma"], (b, 1, 1, 1), spec)) * NOISE_STD
    x = jnp.where(on("noise", pixel), x + sigma * _normal(keys["noise_n"], x.shape, spec), x)
    centre = _uniform(keys["cutout_c"], (b, 2), spec)
    coords = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    outside_rows = jnp.abs(coords[None, :] - centre[:, :1]) >= CUTOUT_SIZE / 2  # [B, H]
    outside_cols = jnp.abs(coords[None, :] - centre[:, 1:]) >= CUTOUT_SIZE / 2
    inside = ~(outside_rows[:, :, None] | outside_cols[:, None, :])[..., None]  # [B, H, W, 1]
    return jnp.where(on("cutout", pixel) & inside, jnp.mean(x, axis=(1, 2), keepdims=True), x)
