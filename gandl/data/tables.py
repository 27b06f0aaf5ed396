"""Metadata tables as the readers read them: CSV bytes -> a DataFrame of strings, checked before any image.

Every value is read as a string with blanks kept as "" (never NaN), so a reader decides which columns are
numbers. The checks here are those every reader shares: text encoding (with the byte and line of a bad
byte), header names (duplicates are refused, not renamed `x.1`), required columns, unique ids, numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gandl._tf import tf
from gandl.data.screen import MetadataError, ScreenNotFound


def read_csv(path: str) -> pd.DataFrame:
    """Read a CSV (local or gs://) as strings with blanks kept as ""."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.NotFoundError:
        raise ScreenNotFound(f"{path}: no such file") from None
    return parse_csv(data, path)


def parse_csv(data: bytes, source: str) -> pd.DataFrame:
    """CSV bytes (UTF-8, an optional byte-order mark) as a DataFrame of strings; `source` names it in errors."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise MetadataError(f"{source}: not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} (line "
                            f"{line}); save the table as UTF-8") from None
    header = next(csv.reader(io.StringIO(text)), [])
    seen: dict[str, list[int]] = {}
    for position, name in enumerate(header, start=1):
        seen.setdefault(name, []).append(position)
    repeated = {name: at for name, at in seen.items() if len(at) > 1}
    if repeated:
        name, at = next(iter(repeated.items()))
        raise MetadataError(f"{source}: column {name!r} appears {len(at)} times in the header (columns "
                            f"{', '.join(map(str, at))}); give each column its own name")
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise MetadataError(f"{source}: not a readable CSV ({e})") from None
    if table.empty:  # every later check would look at a first row that is not there
        raise MetadataError(f"{source}: a header and no rows (columns: {', '.join(header)}); the table lists no site")
    return table


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str, kind: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MetadataError(f"{source} is missing columns {missing}; {kind} metadata needs {list(columns)}")


def check_unique_ids(df: pd.DataFrame, source: str, column: str = "site_id", show: int = 5) -> None:
    """Refuse duplicate or empty ids, naming them and their rows (counting the header as row 1)."""
    values = df[column].astype(str)
    dup = values.duplicated(keep=False)
    if dup.any():
        groups = df.index[dup].groupby(values[dup])
        listed = [f"{sid!r} (rows {', '.join(str(r + 2) for r in rows)})"
                  for sid, rows in list(groups.items())[:show]]
        raise MetadataError(f"{source} has {len(groups)} duplicate {column} values: {'; '.join(listed)}"
                            " (row numbers count the header as row 1)")
    empty = values == ""
    if empty.any():
        raise MetadataError(f"{source}: empty {column} on rows {list(df.index[empty][:show] + 2)}")


def to_numbers(df: pd.DataFrame, source: str, ints: Sequence[str], floats: Sequence[str]) -> pd.DataFrame:
    """Typed copies of the named numeric columns present: ints as int64, floats as float64 (blank = NaN)."""
    df = df.copy()
    for col in [c for c in (*ints, *floats) if c in df.columns]:
        values = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
        bad = values.isna() & (df[col] != "")
        if col in ints:
            bad |= values.isna() | (values.notna() & (values != values.round()))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise MetadataError(f"{source}: column {col!r} row {row + 2} holds {df[col].iloc[row]!r}, "
                                f"not {'an integer' if col in ints else 'a number'}")
        df[col] = values.astype(np.int64) if col in ints else values.astype(np.float64)
    return df


def infer_numbers(column: pd.Series) -> pd.Series:
    """A free metadata column as int64 when every value is written as a plain integer, float64 when every
    non-blank value is a number (blank = NaN), else unchanged.

    Only what reads back the same: zero-padded integers ("007") stay strings, so a plate "007" is not renamed
    7, and "1.0" is a float.
    """
    filled = column[column != ""]
    numbers = pd.to_numeric(filled, errors="coerce")
    if filled.empty or numbers.isna().any() or filled.str.fullmatch(r"[-+]?0[0-9]+").any():
        return column
    if len(filled) == len(column) and filled.str.fullmatch(r"-?(0|[1-9][0-9]*)").all():
        return numbers.astype(np.int64)
    return pd.to_numeric(column.replace("", np.nan)).astype(np.float64)
