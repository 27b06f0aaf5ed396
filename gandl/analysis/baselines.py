"""Comparators that need no neural network: Recursion's published embeddings and handcrafted features.

Any feature matrix aligned with the screen's metadata runs through the same analysis as GAN-DL's, so a
baseline only has to produce [N, D] features and site ids.

* `load_published_embeddings`: RxRx19a's released embeddings, either one `embeddings.csv` (`site_id` and
  1024 feature columns) or a zip of per-experiment CSVs with `feature_0 ... feature_1023`.
* `handcrafted_features`: per-channel intensity distribution and texture statistics plus cross-channel
  correlations, computed batch by batch from [N, H, W, C] images, so memory is bounded by one batch.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from gandl._tf import tf
from gandl.data import images as image_io

_FEATURE_COLUMN = re.compile(r"^feature_(\d+)$")


def _read_embedding_csv(handle, source: str, chunksize: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Features and site ids of one CSV, read in row chunks so only one chunk is ever held as text/objects.

    Columns `feature_<i>` (ordered by i) are the features when present; otherwise every column but
    `site_id`, which must then all be numeric.
    """
    feats, ids = [], []
    columns = None
    for chunk in pd.read_csv(handle, chunksize=chunksize, dtype={"site_id": str}, keep_default_na=False):
        if columns is None:
            if "site_id" not in chunk:
                raise ValueError(f"{source}: no site_id column (columns start {list(chunk.columns[:5])})")
            named = sorted((int(m.group(1)), c) for c in chunk.columns if (m := _FEATURE_COLUMN.match(c)))
            columns = [c for _, c in named] or [c for c in chunk.columns if c != "site_id"]
            if not columns:
                raise ValueError(f"{source}: no feature columns besides site_id")
        try:
            values = chunk[columns].apply(pd.to_numeric, errors="raise").to_numpy(np.float32)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: non-numeric feature values ({e})") from None
        feats.append(values)
        ids.append(chunk["site_id"].astype(str).to_numpy())
    if columns is None:
        raise ValueError(f"{source}: empty file")
    return feats, ids


def load_published_embeddings(path: str, chunksize: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, D], site_id [N]) from a published embeddings CSV or zip of CSVs.

    Join them to the screen's metadata with `gandl.analysis.io.align`. Every CSV of a zip must have the
    same number of features.
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    if zipfile.is_zipfile(io.BytesIO(data)):
        feats, ids = [], []
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = sorted(n for n in archive.namelist() if n.lower().endswith(".csv")
                             and not n.startswith("__MACOSX/"))
            if not members:
                raise ValueError(f"{path}: a zip without CSV files")
            for name in members:
                with archive.open(name) as handle:
                    f_part, i_part = _read_embedding_csv(handle, f"{path}:{name}", chunksize)
                feats += f_part
                ids += i_part
    else:
        feats, ids = _read_embedding_csv(io.BytesIO(data), path, chunksize)
    widths = sorted({f.shape[1] for f in feats})
    if len(widths) > 1:
        raise ValueError(f"{path}: CSVs disagree on the number of features: {widths}")
    return np.concatenate(feats), np.concatenate(ids)


def read_site_images(paths: np.ndarray, channels: Sequence[int] | None = None,
                     batch_size: int = 64) -> Iterator[np.ndarray]:
    """Batches [B, H, W, C] of site images from a [N, num_channels] path array (`Screen.paths`).

    `channels` are 1-based and select/reorder channels, e.g. (1, 2, 3, 4, 6) to view RxRx1 as RxRx19a.
    """
    cols = [c - 1 for c in channels] if channels else list(range(paths.shape[1]))
    for start in range(0, len(paths), batch_size):
        yield np.stack([np.stack([image_io.read(str(p)) for p in row[cols]], axis=-1)
                        for row in paths[start:start + batch_size]])


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_PER_CHANNEL = (["mean", "std", "skew"] + [f"q{int(q * 100):02d}" for q in QUANTILES]
                + ["bright_fraction", "gradient", "laplacian", "gradient_coarse"])


def feature_names(num_channels: int) -> list[str]:
    """Names of the columns `handcrafted_features` returns for images with this many channels."""
    names = [f"w{c + 1}_{s}" for c in range(num_channels) for s in _PER_CHANNEL]
    return names + [f"corr_w{a + 1}_w{b + 1}" for a in range(num_channels) for b in range(a + 1, num_channels)]


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


def handcrafted_features(batches: Iterable[np.ndarray]) -> np.ndarray:
    """Intensity and texture statistics per site, [N, len(feature_names(C))] float32.

    Per channel: mean, std, skewness, quantiles, fraction of bright (> 2 x median) pixels, mean gradient
    magnitude at full and half resolution, mean |Laplacian|; plus Pearson correlations between channels.
    Batches are consumed one at a time: memory is one batch plus the [N, F] result.
    """
    parts = [_batch_features(np.asarray(batch)) for batch in batches]
    if not parts:
        raise ValueError("no images: handcrafted_features got an empty stream of batches")
    return np.concatenate(parts)
