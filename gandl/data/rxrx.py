"""Screen readers: RxRx19a / RxRx1 / generic metadata into validated `Screen`s, and control roles.

The names they read (columns, conditions, stains, file layout) live in `gandl.data.vocabulary`. A reader
requires only the columns it uses and keeps every other column as metadata.

Every reader returns a `Screen`: one metadata row per site plus one image path per channel, so the
converter never needs to know which screen format the sites came from. Validation happens here, before
any image is touched, so a malformed `metadata.csv` fails in seconds rather than hours into a conversion.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gandl._tf import tf
from gandl.data import images
from gandl.data.vocabulary import (  # noqa: F401 (re-exported: the readers' names)
    ACTIVE,
    BLANK,
    CONDITIONS,
    MOCK,
    RXRX1_COLUMNS,
    RXRX1_REQUIRED,
    RXRX19A_COLUMNS,
    RXRX19A_REQUIRED,
    SCREEN_KINDS,
    STAIN_TARGETS,
    STAINS,
    UV_INACTIVATED,
    channel_map,
    image_path,
)

# Names the stages after reading use for their own data: record keys (convert), batch keys (pipeline), npz
# entries (embed). A metadata column of one of these names would be overwritten or break a later stage.
RESERVED_COLUMNS = ("image", "height", "width", "channels", "index", "mask", "features", "provenance")

_INT_COLUMNS = ("plate", "site", "sirna_id")
_FLOAT_COLUMNS = ("treatment_conc",)


class MetadataError(ValueError):
    """A metadata table that cannot describe a screen; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Screen:
    """Sites of a screen: metadata rows and, per site, one image file per channel.

    Attributes:
      metadata: one row per site, with a unique `site_id` column and typed columns (ints, floats µM,
        strings with blanks kept as "").
      paths: [num_sites, num_channels] array of image paths (str), aligned with `metadata` rows.
      stains: stain name of each channel, in channel order.
      source: where the metadata came from, for error messages and provenance.
    """

    metadata: pd.DataFrame
    paths: np.ndarray
    stains: tuple[str, ...]
    source: str

    def __post_init__(self):
        if self.paths.shape != (len(self.metadata), len(self.stains)):
            raise MetadataError(f"{self.source}: {self.paths.shape[1]} image paths per site for "
                                f"{len(self.stains)} channels {self.stains}")
        clash = [c for c in self.metadata.columns if c in RESERVED_COLUMNS]
        if clash:
            raise MetadataError(f"{self.source}: metadata column {clash[0]!r} has a name GAN-DL uses for its own "
                                f"data ({', '.join(RESERVED_COLUMNS)}); rename it")

    @property
    def num_sites(self) -> int:
        return len(self.metadata)

    def subset(self, rows: np.ndarray) -> Screen:
        """The screen restricted to the given row positions (metadata index reset)."""
        return Screen(self.metadata.iloc[rows].reset_index(drop=True), self.paths[rows], self.stains,
                      self.source)


def read_csv(path: str) -> pd.DataFrame:
    """Read a CSV as strings with blanks kept as "" (never NaN), from local disk or gs://."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.NotFoundError:
        raise MetadataError(f"{path}: no such file") from None
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise MetadataError(f"{path}: not a readable CSV ({e})") from None


def _require_columns(df: pd.DataFrame, columns: Sequence[str], source: str, kind: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MetadataError(f"{source} is missing columns {missing}; {kind} metadata needs {list(columns)}")


def _check_unique_ids(df: pd.DataFrame, source: str, column: str = "site_id", show: int = 5) -> None:
    dup = df[column].duplicated(keep=False)
    if dup.any():
        groups = df.index[dup].groupby(df.loc[dup, column])
        listed = [f"{sid!r} (rows {', '.join(str(r + 2) for r in rows)})"
                  for sid, rows in list(groups.items())[:show]]
        raise MetadataError(f"{source} has {len(groups)} duplicate {column} values: {'; '.join(listed)}"
                            " (row numbers count the header as row 1)")
    empty = df[column] == ""
    if empty.any():
        raise MetadataError(f"{source}: empty {column} on rows {list(df.index[empty][:show] + 2)}")


def _to_numbers(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Typed copies of the numeric columns: ints stay ints, concentrations become float µM (blank = NaN)."""
    df = df.copy()
    for col in [c for c in _INT_COLUMNS + _FLOAT_COLUMNS if c in df.columns]:
        values = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
        bad = values.isna() & (df[col] != "")
        if col in _INT_COLUMNS:
            bad |= values.isna() | (values.notna() & (values != values.round()))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise MetadataError(f"{source}: column {col!r} row {row + 2} holds {df[col].iloc[row]!r}, "
                                f"not {'an integer' if col in _INT_COLUMNS else 'a number'}")
        df[col] = values.astype(np.int64) if col in _INT_COLUMNS else values.astype(np.float64)
    return df


def _rxrx_paths(root: str, df: pd.DataFrame, num_channels: int, nested_by_dataset: bool) -> np.ndarray:
    """Paths of every channel of every site.

    Some RxRx1 releases nest experiments under the dataset split (`images/train/HEPG2-01/...`); the
    first site decides which layout this copy uses.
    """
    images = os.path.join(root, "images")
    nested = False
    if nested_by_dataset and len(df):
        first = df.iloc[0]
        nested = not tf.io.gfile.exists(image_path(images, first.experiment, first.plate, first.well,
                                                   first.site, 1))
    paths = [[image_path(os.path.join(images, r.dataset) if nested else images, r.experiment, r.plate,
                         r.well, r.site, c + 1) for c in range(num_channels)]
             for r in df.itertuples(index=False)]
    return np.array(paths, dtype=str).reshape(len(df), num_channels)


def _with_well_id(df: pd.DataFrame) -> pd.DataFrame:
    """`well_id` (`{experiment}_{plate}_{well}`, the releases' spelling) derived when a table lacks it."""
    if "well_id" in df.columns:
        return df
    well_id = df["experiment"] + "_" + df["plate"].astype(str) + "_" + df["well"]
    return df.assign(well_id=well_id)[["site_id", "well_id", *df.columns.drop("site_id")]]


def read_rxrx19a(root: str, metadata: str = "metadata.csv") -> Screen:
    """An RxRx19a-layout screen: `root/metadata.csv` and `root/images/{exp}/Plate{p}/{well}_s{s}_w{c}.png`."""
    source = os.path.join(root, metadata)
    df = read_csv(source)
    _require_columns(df, RXRX19A_REQUIRED, source, "RxRx19a")
    _check_unique_ids(df, source)
    unknown = sorted(set(df["disease_condition"]) - set(CONDITIONS))
    if unknown:
        raise MetadataError(f"{source}: unknown disease_condition values {unknown}; expected exactly one of "
                            f"{list(CONDITIONS)} (blank = no condition)")
    df = _to_numbers(df, source)
    treated = df["treatment"] != ""
    no_conc = treated & df["treatment_conc"].isna()
    if no_conc.any():
        row = int(np.flatnonzero(no_conc.to_numpy())[0])
        raise MetadataError(f"{source}: row {row + 2} has treatment {df['treatment'].iloc[row]!r} "
                            "but no treatment_conc")
    return Screen(_with_well_id(df), _rxrx_paths(root, df, len(STAINS["rxrx19a"]), False), STAINS["rxrx19a"], source)


def read_rxrx1(root: str, metadata: str = "metadata.csv") -> Screen:
    """An RxRx1-layout screen (6 channels), with images under `images/{exp}` or `images/{dataset}/{exp}`."""
    source = os.path.join(root, metadata)
    df = read_csv(source)
    _require_columns(df, RXRX1_REQUIRED, source, "RxRx1")
    _check_unique_ids(df, source)
    df = _to_numbers(df, source)
    return Screen(_with_well_id(df), _rxrx_paths(root, df, len(STAINS["rxrx1"]), "dataset" in df.columns),
                  STAINS["rxrx1"], source)


def read_generic(csv_path: str, channel_columns: Sequence[str], stains: Sequence[str] | None = None,
                 id_column: str = "site_id") -> Screen:
    """Bring-your-own screen: a CSV with an id column, one image-path column per channel, free metadata.

    Relative image paths are taken relative to the CSV's folder. Every other column is kept as metadata,
    numeric-looking columns as numbers.
    """
    df = read_csv(csv_path)
    if not channel_columns:
        raise MetadataError(f"{csv_path}: name at least one image-path column (channel_columns)")
    _require_columns(df, [id_column, *channel_columns], csv_path, "this screen's")
    _check_unique_ids(df, csv_path, id_column)
    stains = tuple(stains) if stains else tuple(channel_columns)
    if len(stains) != len(channel_columns):
        raise MetadataError(f"{csv_path}: {len(channel_columns)} channel columns but {len(stains)} stain names")
    rel = df[list(channel_columns)].to_numpy(dtype=str)
    blank = np.argwhere(rel == "")
    if len(blank):
        r, c = blank[0]
        raise MetadataError(f"{csv_path}: row {r + 2} has an empty path in column {channel_columns[c]!r}")
    base = os.path.dirname(csv_path)
    paths = np.vectorize(lambda p: p if os.path.isabs(p) or "://" in p else os.path.join(base, p),
                         otypes=[object])(rel).astype(str)
    meta = df.drop(columns=list(channel_columns)).rename(columns={id_column: "site_id"})
    for col in meta.columns.drop("site_id"):
        meta[col] = _infer_numbers(meta[col])
    return Screen(meta.reset_index(drop=True), paths.reshape(len(df), len(channel_columns)), stains, csv_path)


def _infer_numbers(column: pd.Series) -> pd.Series:
    """A free metadata column as int64 or float64 when every non-blank value is a number, else unchanged."""
    filled = column[column != ""]
    numbers = pd.to_numeric(filled, errors="coerce")
    if filled.empty or numbers.isna().any():
        return column
    if len(filled) == len(column) and (numbers == numbers.round()).all():
        return numbers.astype(np.int64)
    return pd.to_numeric(column.replace("", np.nan)).astype(np.float64)


def read_screen(kind: str, path: str, *, metadata: str = "metadata.csv",
                channel_columns: Sequence[str] = (), stains: Sequence[str] = ()) -> Screen:
    """Dispatch on the configured screen kind: 'rxrx19a', 'rxrx1' (folders), 'generic' (a CSV path) or
    'ome_zarr' (an OME-Zarr HCS plate)."""
    if kind == "rxrx19a":
        return read_rxrx19a(path, metadata)
    if kind == "rxrx1":
        return read_rxrx1(path, metadata)
    if kind == "generic":
        return read_generic(path, channel_columns, stains or None)
    if kind == "ome_zarr":
        from gandl.data import ome_zarr  # zarr and dask load only for plates

        return ome_zarr.read_plate(path)
    raise ValueError(f"unknown screen kind {kind!r}; expected one of {SCREEN_KINDS}")


def missing_files(screen: Screen) -> list[str]:
    """Image paths of the screen that do not exist, in site then channel order."""
    return [p for p in screen.paths.ravel() if not images.exists(p)]


def check_files(screen: Screen, show: int = 5) -> None:
    """Fail early, listing the first few missing image files, before a long conversion starts."""
    missing = missing_files(screen)
    if missing:
        listed = "\n  ".join(missing[:show])
        raise MetadataError(f"{screen.source}: {len(missing)} of {screen.paths.size} image files are "
                            f"missing, e.g.\n  {listed}")


def control_role(metadata: pd.DataFrame, uv_is_positive: bool = False) -> pd.Series:
    """Role of each RxRx19a site: 'C+' (healthy control), 'C-' (disease control), 'UV', 'treated', 'blank'.

    C+ is Mock with no treatment (and UV-inactivated virus too when `uv_is_positive`); C- is Active
    SARS-CoV-2 with no treatment. Any site with a treatment is 'treated', whatever its condition.
    """
    cond = metadata["disease_condition"]
    role = pd.Series("blank", index=metadata.index, dtype=object)
    role[cond == MOCK] = "C+"
    role[cond == UV_INACTIVATED] = "C+" if uv_is_positive else "UV"
    role[cond == ACTIVE] = "C-"
    role[metadata["treatment"] != ""] = "treated"
    return role


def plate_key(metadata: pd.DataFrame, by: str = "plate") -> np.ndarray:
    """The cross-validation group of each row: `experiment_plate` (by='plate') or `experiment`.

    Sites of one plate share its batch effects (stain gain, illumination), so a plate is the smallest
    unit that may be held out.
    """
    if by == "plate":
        return (metadata["experiment"].astype(str) + "_" + metadata["plate"].astype(str)).to_numpy()
    if by == "experiment":
        return metadata["experiment"].astype(str).to_numpy()
    raise ValueError(f"group_by must be 'plate' or 'experiment', got {by!r}")
