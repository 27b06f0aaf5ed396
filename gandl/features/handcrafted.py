"""Handcrafted features: per-channel intensity distribution and texture statistics, cross-channel correlations.

A baseline that needs no network. Computed batch by batch from [N, H, W, C] images, so memory is bounded
by one batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gandl.features.base import Context, FeatureFn

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_PER_CHANNEL = (["mean", "std", "skew"] + [f"q{int(q * 100):02d}" for q in QUANTILES]
                + ["bright_fraction", "gradient", "laplacian", "gradient_coarse"])


def feature_names(num_channels: int) -> list[str]:
    """Names of the columns `features` returns for images with this many channels."""
    names = [f"w{c + 1}_{s}" for c in range(num_channels) for s in _PER_CHANNEL]
    return names + [f"corr_w{a + 1}_w{b + 1}" for a in range(num_channels) for b in range(a + 1, num_channels)]


def foreground_column(num_channels: int, channel: int) -> int:
    """The column of `features` holding channel `channel`'s (0-based) foreground fraction: its bright pixels'
    share, for a nuclear stain the nuclei's share of the field (what cell loss shrinks)."""
    return feature_names(num_channels).index(f"w{channel + 1}_bright_fraction")


def _batch_features(batch: np.ndarray) -> np.ndarray:
    """Features of one [B, H, W, C] batch (integer or float pixels; integers scaled by their dtype max)."""
    scale = np.iinfo(batch.dtype).max if batch.dtype.kind in "ui" else 1.0
    x = batch.astype(np.float32) / np.float32(scale)
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c)
    mean = flat.mean(1)
    centred = flat - mean[:, None]
    std = np.sqrt((centred ** 2).mean(1))
    safe = np.maximum(std, 1e-6)
    skew = (centred ** 3).mean(1) / safe ** 3
    quant = np.moveaxis(np.quantile(flat, QUANTILES, axis=1), 0, -1)  # [B, C, Q]
    bright = (flat > 2.0 * quant[:, None, :, 2]).mean(1)  # objects: pixels over twice the median
    gx, gy = np.diff(x, axis=2)[:, :-1], np.diff(x, axis=1)[:, :, :-1]
    gradient = np.sqrt(gx ** 2 + gy ** 2).mean((1, 2))
    lap = (x[:, 1:-1, 1:-1] * 4 - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
    laplacian = np.abs(lap).mean((1, 2))
    coarse = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
    cgx, cgy = np.diff(coarse, axis=2)[:, :-1], np.diff(coarse, axis=1)[:, :, :-1]
    gradient_coarse = np.sqrt(cgx ** 2 + cgy ** 2).mean((1, 2))
    per_channel = np.concatenate([mean[..., None], std[..., None], skew[..., None], quant, bright[..., None],
                                  gradient[..., None], laplacian[..., None], gradient_coarse[..., None]], -1)
    normed = centred / safe[:, None]
    corr = np.einsum("bpi,bpj->bij", normed, normed) / (h * w)
    upper = np.triu_indices(c, k=1)
    return np.concatenate([per_channel.reshape(b, -1), corr[:, upper[0], upper[1]]], 1).astype(np.float32)


def features(batches: Iterable[np.ndarray]) -> np.ndarray:
    """Intensity and texture statistics per site, [N, len(feature_names(C))] float32.

    Per channel: mean, std, skewness, quantiles, fraction of bright (> 2 x median) pixels, mean gradient
    magnitude at full and half resolution, mean `|Laplacian|`; plus Pearson correlations between channels.
    Batches are consumed one at a time: memory is one batch plus the [N, F] result.
    """
    parts = [_batch_features(np.asarray(batch)) for batch in batches]
    if not parts:
        raise ValueError("no images: handcrafted.features got an empty stream of batches")
    return np.concatenate(parts)


def feature_fn(local_images: np.ndarray) -> np.ndarray:
    """The statistics of pipeline images, mapped from [-1, 1] back to [0, 1]."""
    return features([(local_images + 1.0) / 2.0])


def extractor(context: Context) -> FeatureFn:
    """Needs nothing of the run: the statistics are fixed."""
    return feature_fn
