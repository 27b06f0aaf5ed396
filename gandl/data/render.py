"""Channels -> RGB previews with the RxRx colour map, and image grids.

Fluorescence sites have 5-6 channels; people look at them as one RGB composite where each stain has
the colour Recursion's rxrx1-utils gives it (Hoechst blue, ConA green, Phalloidin red, Syto14 cyan,
MitoTracker magenta, WGA yellow). Stains are matched by name, so RxRx1 and RxRx19a render alike.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from gandl import fileio

STAIN_RGB = {
    "Hoechst": (19, 0, 249), "ConA": (42, 255, 31), "Phalloidin": (255, 0, 25),
    "Syto14": (45, 255, 252), "MitoTracker": (250, 0, 253), "WGA": (254, 255, 40),
}
_OTHER_RGB = ((0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0))


def stain_colours(stains: Sequence[str]) -> np.ndarray:
    """[C, 3] colours in [0, 1]: the RxRx map for known stains, primaries in order for the rest."""
    others = iter(_OTHER_RGB * (len(stains) // len(_OTHER_RGB) + 1))
    return np.array([STAIN_RGB.get(s) or next(others) for s in stains], np.float32) / 255.0


def to_rgb(images: np.ndarray, stains: Sequence[str], percentiles: tuple[float, float] = (1.0, 99.5)
           ) -> np.ndarray:
    """Composite [N, H, W, C] images (any numeric range) into uint8 [N, H, W, 3].

    Each channel is stretched between its percentiles over the whole batch, not per image, so that a
    brighter or dimmer condition still looks brighter or dimmer next to its neighbours.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != len(stains):
        raise ValueError(f"expected [N, H, W, {len(stains)}] images for stains {list(stains)}, got {images.shape}")
    lo, hi = np.percentile(images, percentiles, axis=(0, 1, 2))
    norm = np.clip((images - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0)
    rgb = np.clip(norm @ stain_colours(stains), 0.0, 1.0)
    return np.rint(rgb * 255).astype(np.uint8)


def grid(rgb: np.ndarray, cols: int = 8, pad: int = 2) -> np.ndarray:
    """Tile [N, H, W, 3] images row by row into one image with `pad` black pixels between them."""
    n, h, w, c = rgb.shape
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    out = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, c), rgb.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = rgb[i]
    return out


def write_png(path: str, image: np.ndarray) -> None:
    """Encode an array as PNG and write it atomically (local or gs://)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    fileio.write_bytes(path, buf.getvalue())


def write_grid(path: str, images: np.ndarray, stains: Sequence[str], cols: int = 8) -> np.ndarray:
    """Render a batch with the RxRx colour map, tile it and save it as a PNG; returns the grid."""
    tiles = grid(to_rgb(images, stains), cols)
    write_png(path, tiles)
    return tiles
