"""The RxRx readers: RxRx19a- and RxRx1-layout folders (metadata.csv + images/) into validated `Screen` objects.

The names they read (columns, conditions, stains, file layout) live in `gandl.data.vocabulary`. A reader
requires only the columns it uses and keeps every other column as metadata. Validation happens here,
before any image is touched, so a malformed `metadata.csv` fails in seconds rather than hours into a
conversion.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from gandl._tf import tf
from gandl.data import images, screen, tables
from gandl.data.screen import PRESETS, MetadataError, Screen
from gandl.data.vocabulary import (  # noqa: F401 (re-exported: the readers' names)
    ACTIVE,
    BLANK,
    CONDITIONS,
    MOCK,
    RXRX1_COLUMNS,
    RXRX1_REQUIRED,
    RXRX19A_COLUMNS,
    RXRX19A_REQUIRED,
    STAIN_TARGETS,
    STAINS,
    UV_INACTIVATED,
    channel_map,
    image_path,
)

_INT_COLUMNS = ("plate", "site", "sirna_id")
_FLOAT_COLUMNS = ("treatment_conc",)


def _rxrx_paths(root: str, df: pd.DataFrame, num_channels: int, nested_by_dataset: bool) -> np.ndarray:
    """Paths of every channel of every site.

    Some RxRx1 releases nest experiments under the dataset split (`images/train/HEPG2-01/...`); the
    first site decides which layout this copy uses.
    """
    folder = os.path.join(root, "images")
    nested = False
    if nested_by_dataset and len(df):
        first = df.iloc[0]
        nested = not tf.io.gfile.exists(image_path(folder, first.experiment, first.plate, first.well,
                                                   first.site, 1))
    paths = [[image_path(os.path.join(folder, r.dataset) if nested else folder, r.experiment, r.plate,
                         r.well, r.site, c + 1) for c in range(num_channels)]
             for r in df.itertuples(index=False)]
    return np.array(paths, dtype=str).reshape(len(df), num_channels)


def read_rxrx19a(root: str, metadata: str = "metadata.csv") -> Screen:
    """An RxRx19a-layout screen: `root/metadata.csv` and `root/images/{exp}/Plate{p}/{well}_s{s}_w{c}.png`."""
    source = os.path.join(root, metadata)
    df = tables.read_csv(source)
    tables.require_columns(df, RXRX19A_REQUIRED, source, "RxRx19a")
    tables.check_unique_ids(df, source)
    unknown = sorted(set(df["disease_condition"]) - set(CONDITIONS))
    if unknown:
        raise MetadataError(f"{source}: unknown disease_condition values {unknown}; expected exactly one of "
                            f"{list(CONDITIONS)} (blank = no condition)")
    df = tables.to_numbers(df, source, _INT_COLUMNS, _FLOAT_COLUMNS)
    treated = df["treatment"] != ""
    no_conc = treated & df["treatment_conc"].isna()
    if no_conc.any():
        row = int(np.flatnonzero(no_conc.to_numpy())[0])
        raise MetadataError(f"{source}: row {row + 2} has treatment {df['treatment'].iloc[row]!r} "
                            "but no treatment_conc")
    return Screen(screen.with_ids(df, PRESETS["rxrx19a"]), _rxrx_paths(root, df, len(STAINS["rxrx19a"]), False),
                  STAINS["rxrx19a"], source, images.FILES)


def read_rxrx1(root: str, metadata: str = "metadata.csv") -> Screen:
    """An RxRx1-layout screen (6 channels), with images under `images/{exp}` or `images/{dataset}/{exp}`."""
    source = os.path.join(root, metadata)
    df = tables.read_csv(source)
    tables.require_columns(df, RXRX1_REQUIRED, source, "RxRx1")
    tables.check_unique_ids(df, source)
    df = tables.to_numbers(df, source, _INT_COLUMNS, _FLOAT_COLUMNS)
    return Screen(screen.with_ids(df, PRESETS["rxrx1"]),
                  _rxrx_paths(root, df, len(STAINS["rxrx1"]), "dataset" in df.columns), STAINS["rxrx1"], source,
                  images.FILES)
