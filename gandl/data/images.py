"""Single-channel microscopy image files: decoding 8/16-bit PNG and TIFF, and antialiased downscaling.

Screens store one grayscale file per channel. Anything else (RGB, palette, float, 32-bit, a truncated
file) is refused with `BadImageError` naming the file: a silently wrong image would poison training and
every embedding computed from it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import numpy as np
import tifffile
from PIL import Image

from gandl import errors
from gandl._tf import tf
from gandl.data.screen import ChannelReader

SUPPORTED_DTYPES = (np.uint8, np.uint16)


class BadImageError(errors.DataError, ValueError):
    """An image file that is missing, unreadable, or not what the screen says it is."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)  # both in args, so the error survives pickling out of a worker
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _decode_pil(data: bytes, path: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes fully: a truncated file raises here instead of returning a partial image
        if im.mode in ("L", "I;16", "I;16B", "I;16L"):
            return np.asarray(im).astype(np.uint8 if im.mode == "L" else np.uint16)
        if im.mode == "I":  # some encoders store 16-bit grayscale as 32-bit ints
            arr = np.asarray(im)
            if arr.min() >= 0 and arr.max() <= 0xFFFF:
                return arr.astype(np.uint16)
        raise BadImageError(path, f"expected a single-channel 8- or 16-bit image, got PIL mode {im.mode!r} "
                                  f"of {len(im.getbands())} band(s)")


def decode(data: bytes, path: str) -> np.ndarray:
    """Decode one channel file's bytes into a 2-D uint8/uint16 array; `path` names it in errors."""
    is_tiff = data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    try:
        arr = tifffile.imread(io.BytesIO(data)) if is_tiff else _decode_pil(data, path)
    except BadImageError:
        raise
    except Exception as e:  # decoders raise many types for corrupt data; all mean the same to a screen
        raise BadImageError(path, f"unreadable image ({type(e).__name__}: {e})") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise BadImageError(path, f"expected a single-channel image, got shape {arr.shape}")
    if arr.dtype not in SUPPORTED_DTYPES:
        raise BadImageError(path, f"expected 8- or 16-bit unsigned pixels, got {arr.dtype}")
    return arr


def read(path: str) -> np.ndarray:
    """Read one channel file (local or gs://) as a 2-D uint8/uint16 array."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.NotFoundError:
        raise BadImageError(path, "file not found") from None
    except (OSError, tf.errors.OpError) as e:  # a folder, no permission, a failing disk: named like a bad file
        raise BadImageError(path, f"unreadable ({e.strerror if isinstance(e, OSError) else e.message})") from None
    if not data:
        raise BadImageError(path, "empty file")
    return decode(data, path)


def downscale(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average a square 2-D image to `size`×`size`, rounding back to its own integer dtype.

    Area averaging (a box filter over each output pixel's footprint) is the antialiased downscale that
    preserves mean intensity, which is what fluorescence measurements are made of.
    """
    h, w = image.shape
    if (h, w) == (size, size):
        return image
    if h != w:
        raise ValueError(f"cannot resize a non-square {h}x{w} image to {size}x{size}")
    if size > h:
        raise ValueError(f"refusing to upscale a {h}x{w} image to {size}x{size}")
    if h % size == 0:  # exact block mean: fast, and identical to the box filter
        f = h // size
        out = image.reshape(size, f, size, f).mean(axis=(1, 3), dtype=np.float64)
    else:
        out = np.asarray(Image.fromarray(image.astype(np.float32))
                         .resize((size, size), Image.Resampling.BOX))
    info = np.iinfo(image.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)


def read_site_images(paths: np.ndarray, channels: Sequence[int] | None = None,
                     batch_size: int = 64) -> Iterator[np.ndarray]:
    """Batches [B, H, W, C] of site images from a [N, num_channels] array of file paths (`Screen.paths` of a
    file-based screen).

    `channels` are 1-based and select/reorder channels, e.g. (1, 2, 3, 4, 6) to view RxRx1 as RxRx19a.
    """
    cols = [c - 1 for c in channels] if channels else list(range(paths.shape[1]))
    for start in range(0, len(paths), batch_size):
        yield np.stack([np.stack([read(str(p)) for p in row[cols]], axis=-1)
                        for row in paths[start:start + batch_size]])


def exists(path: str) -> bool:
    """Whether a channel file (local or gs://) exists."""
    return tf.io.gfile.exists(path)


def stamp(path: str) -> str:
    """A channel file's size and modification time ("" when it cannot be statted, so a file that appears changes
    it): a repaired or replaced file is told from the one a shard was converted from without reading either."""
    try:
        status = tf.io.gfile.stat(path)
    except tf.errors.OpError:
        return ""
    return f"{status.length}:{status.mtime_nsec}"


FILES = ChannelReader(read, exists, stamp)  # `Screen.reader` of the readers whose channels are image files
