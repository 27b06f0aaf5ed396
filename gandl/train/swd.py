"""Sliced Wasserstein distance between real and generated images on Laplacian-pyramid patches.

The quality metric of Progressive GAN (Karras et al. 2018): it needs no pretrained network, which matters
for microscopy, where ImageNet features (as in FID) describe the wrong world. Each pyramid level compares
the distributions of local 7×7 patches, coarse levels measuring layout and fine levels texture.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(images: np.ndarray) -> np.ndarray:
    out = ndimage.convolve1d(images, _BINOMIAL, axis=1, mode="reflect")
    return ndimage.convolve1d(out, _BINOMIAL, axis=2, mode="reflect")


def laplacian_pyramid(images: np.ndarray, min_size: int = 16) -> list[np.ndarray]:
    """Band-pass levels of [N, H, W, C] images, finest first, down to `min_size` (the last is low-pass)."""
    levels, current = [], np.asarray(images, np.float32)
    while current.shape[1] > min_size:
        down = _blur(current)[:, ::2, ::2]
        up = _blur(np.repeat(np.repeat(down, 2, axis=1), 2, axis=2))
        levels.append(current - up)
        current = down
    levels.append(current)
    return levels


def patches(level: np.ndarray, per_image: int, rng: np.random.Generator, size: int = 7) -> np.ndarray:
    """`per_image` random size×size patches per image, flattened: [N * per_image, size*size*C]."""
    n, h, w, c = level.shape
    if min(h, w) < size:
        raise ValueError(f"pyramid level of {h}x{w} is smaller than the {size}x{size} patches")
    ys = rng.integers(0, h - size + 1, (n, per_image))
    xs = rng.integers(0, w - size + 1, (n, per_image))
    offsets = np.arange(size)
    rows = (ys[..., None, None] + offsets[:, None]).reshape(n, per_image, size, 1)
    cols = (xs[..., None, None] + offsets[None, :]).reshape(n, per_image, 1, size)
    out = level[np.arange(n)[:, None, None, None], rows, cols]  # [n, per_image, size, size, C]
    return out.reshape(n * per_image, -1)


def _normalize(desc: np.ndarray, channels: int) -> np.ndarray:
    """Zero mean and unit variance per image channel, over all patches and positions of one set."""
    d = desc.reshape(len(desc), -1, channels)
    return ((d - d.mean(axis=(0, 1))) / (d.std(axis=(0, 1)) + 1e-8)).reshape(len(desc), -1)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, directions: int = 512,
                       repeats: int = 4) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between projections of a and b."""
    if len(a) != len(b):
        raise ValueError(f"sliced Wasserstein needs equal-size sets, got {len(a)} and {len(b)}")
    total = 0.0
    for _ in range(repeats):
        dirs = rng.standard_normal((a.shape[1], directions)).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
        total += float(np.mean(np.abs(pa - pb)))
    return total / repeats


def swd_pyramid(reals: np.ndarray, fakes: np.ndarray, seed: int = 0, per_image: int = 64,
                min_size: int = 16) -> dict[str, float]:
    """SWD (×1e3, as customarily reported) per pyramid level, keyed by resolution, and their mean."""
    rng = np.random.default_rng(seed)
    channels = reals.shape[-1]
    out = {}
    for real_level, fake_level in zip(laplacian_pyramid(reals, min_size), laplacian_pyramid(fakes, min_size)):
        da = _normalize(patches(real_level, per_image, rng), channels)
        db = _normalize(patches(fake_level, per_image, rng), channels)
        out[f"swd_{real_level.shape[1]}px"] = 1e3 * sliced_wasserstein(da, db, rng)
    out["swd_mean"] = float(np.mean(list(out.values())))
    return out
