"""Published comparators: RxRx19a's released embeddings, loaded to run through the same analysis.

Any feature matrix aligned with the screen's metadata runs through the same analysis as GAN-DL's, so a
baseline only has to produce [N, D] features and site ids. `load_published_embeddings` reads either one
`embeddings.csv` (`site_id` and 1024 feature columns) or a zip of per-experiment CSVs with
`feature_0 ... feature_1023`. (Extractors computed from images, such as the handcrafted statistics, live
in `gandl.features`.)
"""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pandas as pd

from gandl._tf import tf

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
