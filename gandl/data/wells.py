"""Plate geometry: where a well sits (row, column, distance to the edge) from its name, and whether a screen's
controls sit where a plate-position effect could pass for their own signal.

Well names are a row letter and a column number ('B03'; 'AF48' on 1536-well plates). No TensorFlow, no analysis:
the config check warns about a layout (`layout_warnings`) before anything runs, and the analysis models it.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

_WELL = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")
PLATE_FORMATS = ((8, 12), (16, 24), (32, 48))  # 96-, 384- and 1536-well plates: (rows, columns)


def _row_index(letters: str) -> int:
    """A=0 .. Z=25, AA=26 .. AF=31 (1536-well plates)."""
    letters = letters.upper()
    return ord(letters[0]) - 65 if len(letters) == 1 else 26 * (ord(letters[0]) - 64) + ord(letters[1]) - 65


def well_positions(wells: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    """(row, column) of each well name ('B03', 'AF48'; zero-based), or the reason they are not plate positions.

    A screen whose wells are not named by row letter and column number (e.g. 'W001') has no layout to model.
    """
    names, inverse = np.unique(np.asarray(wells).astype(str), return_inverse=True)  # a plate's few hundred names
    parsed = pd.Series(names).str.extract(_WELL)
    bad = parsed[0].isna().to_numpy()
    if bad.any():
        return f"well {str(names[bad][0])!r} is not a row letter and column number such as 'B03'"
    rows = np.array([_row_index(r) for r in parsed[0]], np.int64)
    cols = parsed[1].astype(np.int64).to_numpy() - 1
    if (cols < 0).any():
        return f"well {str(names[cols < 0][0])!r} has column 0"
    return rows[inverse.reshape(-1)], cols[inverse.reshape(-1)]


def plate_shape(rows: np.ndarray, cols: np.ndarray) -> tuple[int, int]:
    """The smallest standard plate (96 / 384 / 1536 wells) holding these positions, else their bounding box."""
    need = (int(np.max(rows, initial=0)) + 1, int(np.max(cols, initial=0)) + 1)
    for shape in PLATE_FORMATS:
        if need[0] <= shape[0] and need[1] <= shape[1]:
            return shape
    return need


def edge_distance(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Wells between each well and the plate's nearest edge: 0 for the outer ring, 1 for the next, ..."""
    return np.minimum.reduce([rows, cols, shape[0] - 1 - rows, shape[1] - 1 - cols])


def layout_warnings(wells: pd.Series, plate: np.ndarray, role: np.ndarray) -> list[str]:
    """Plates whose C+ / C- wells all sit in the two outer rings, or share no row or column with a treated well: an
    edge or row/column effect there moves the controls apart from the compounds, and the analysis can only
    carry the treated wells' pattern over to them. One line per plate; none when wells are not positions."""
    positions = well_positions(wells)
    if isinstance(positions, str):
        return []
    rows, cols = positions
    plate, role = np.asarray(plate).astype(str), np.asarray(role).astype(str)
    outer = edge_distance(rows, cols, plate_shape(rows, cols)) <= 1
    control, treated = np.isin(role, ["C+", "C-"]), role == "treated"
    out = []
    for name in pd.unique(plate[control]):
        on = plate == name
        mine = on & control
        if outer[mine].all():
            out.append(f"plate {name}: every control well is in the plate's two outer rings")
        elif not (np.isin(rows[mine], rows[on & treated]) | np.isin(cols[mine], cols[on & treated])).any():
            out.append(f"plate {name}: its control wells share no row or column with a treated well")
    return out
