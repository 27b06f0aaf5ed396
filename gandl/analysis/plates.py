"""Where a well sits on its plate, and the plate-position effects estimated from the wells around it.

Plate readouts drift with position: edge wells evaporate faster, dispensers and incubators leave row and column
patterns. Most compounds of a screen are inert, so the treated wells of a plate estimate its row and column
effects (Tukey's median polish, the B-score's model: Brideau et al. 2003), and subtracting them leaves each
well's own effect. Controls are corrected with the same effects; where they sit in rows or columns no treated
well shares, their effect is not identified (`position_effects` says so and `confounded` names the plates).
"""

from __future__ import annotations

import dataclasses
import re
import warnings

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
    names = pd.Series(np.asarray(wells)).astype(str)
    parsed = names.str.extract(_WELL)
    bad = parsed[0].isna()
    if bad.any():
        return f"well {names[bad].iloc[0]!r} is not a row letter and column number such as 'B03'"
    rows = np.array([_row_index(r) for r in parsed[0]], np.int64)
    cols = parsed[1].astype(np.int64).to_numpy() - 1
    if (cols < 0).any():
        return f"well {names[cols < 0].iloc[0]!r} has column 0"
    return rows, cols


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


def median_polish(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                  iterations: int = 10) -> tuple[float, np.ndarray, np.ndarray]:
    """Tukey's median polish of the wells (values at (rows, cols)): overall + row effect + column effect.

    Returns (overall, row effects [R], column effects [C]); a row or column with no well gets NaN.
    """
    grid = np.full(shape, np.nan)
    grid[rows, cols] = values
    row_eff, col_eff, overall = np.zeros(shape[0]), np.zeros(shape[1]), 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows and columns give NaN medians
        for _ in range(iterations):
            r = np.nan_to_num(np.nanmedian(grid, axis=1))
            grid -= r[:, None]
            row_eff += r
            shift = np.median(col_eff)
            col_eff -= shift
            overall += shift
            c = np.nan_to_num(np.nanmedian(grid, axis=0))
            grid -= c[None, :]
            col_eff += c
            shift = np.median(row_eff)
            row_eff -= shift
            overall += shift
    present_rows = np.bincount(rows, minlength=shape[0])[: shape[0]] > 0
    present_cols = np.bincount(cols, minlength=shape[1])[: shape[1]] > 0
    return float(overall), np.where(present_rows, row_eff, np.nan), np.where(present_cols, col_eff, np.nan)


@dataclasses.dataclass(frozen=True)
class PositionModel:
    """Per-well position effects of a screen's plates and what could not be estimated."""

    effect: np.ndarray  # [N] row + column effect of each input row (0 where not estimated)
    identified: np.ndarray  # [N] bool: both its row's and its column's effect came from treated wells
    rows: np.ndarray  # [N] zero-based row, -1 without a position
    cols: np.ndarray  # [N] zero-based column, -1 without a position
    notes: tuple[str, ...] = ()


def _fill_by_edge(row_eff: np.ndarray, col_eff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN effects of rows and columns with no treated well, from the estimated rows and columns as far from the
    plate's edge (an edge effect reaches rows and columns alike); 0 where none is."""
    def distance(n: int) -> np.ndarray:
        return np.minimum(np.arange(n), n - 1 - np.arange(n))

    effects = np.r_[row_eff, col_eff]
    dist = np.r_[distance(len(row_eff)), distance(len(col_eff))]
    out = effects.copy()
    for i in np.flatnonzero(np.isnan(effects)):
        same = np.isfinite(effects) & (dist == dist[i])
        out[i] = np.mean(effects[same]) if same.any() else 0.0
    return out[: len(row_eff)], out[len(row_eff):]


def position_effects(values: np.ndarray, plate: np.ndarray, wells: pd.Series | np.ndarray, fit: np.ndarray,
                     min_wells: int = 24) -> PositionModel | str:
    """Row and column effects of every row's plate position, estimated by median polish of the `fit` rows.

    `values`: one value per well (e.g. its efficacy decision value), `plate`: its plate key, `fit`: the wells
    the effects are estimated from (the treated ones: most compounds are inert). A plate with fewer than
    `min_wells` fit wells gets no correction (noted). A row or column without fit wells takes the mean
    effect of the estimated rows and columns at its distance from the edge (an edge effect reaches both)
    and is marked not identified. Returns the reason instead when the wells are not plate positions.
    """
    positions = well_positions(wells)
    if isinstance(positions, str):
        return positions
    rows, cols = positions
    values, plate, fit = np.asarray(values, np.float64), np.asarray(plate).astype(str), np.asarray(fit, bool)
    effect, identified, notes = np.zeros(len(values)), np.zeros(len(values), bool), []
    shape = plate_shape(rows, cols)
    for name in pd.unique(plate):
        on = plate == name
        chosen = on & fit & np.isfinite(values)
        if chosen.sum() < min_wells:
            notes.append(f"plate {name}: {int(chosen.sum())} treated wells, fewer than {min_wells}: no position "
                         "correction")
            continue
        _, row_eff, col_eff = median_polish(values[chosen], rows[chosen], cols[chosen], shape)
        known = np.isfinite(row_eff)[rows[on]] & np.isfinite(col_eff)[cols[on]]
        row_fill, col_fill = _fill_by_edge(row_eff, col_eff)
        effect[on] = row_fill[rows[on]] + col_fill[cols[on]]
        identified[on] = known
    return PositionModel(effect, identified, rows, cols, tuple(notes))


def confounded(model: PositionModel, plate: np.ndarray, control: np.ndarray) -> list[str]:
    """Plates whose control wells all sit where no treated well shares their row or column, or all on the
    outer ring: their controls' position effect cannot be told from the controls' own signal."""
    plate, control = np.asarray(plate).astype(str), np.asarray(control, bool)
    shape = plate_shape(model.rows, model.cols)
    outer = edge_distance(model.rows, model.cols, shape) == 0
    out = []
    for name in pd.unique(plate[control]):
        on = control & (plate == name)
        if not model.identified[on].any():
            out.append(f"plate {name}: its control wells share no row or column with treated wells")
        elif outer[on].all():
            out.append(f"plate {name}: every control well is on the plate's outer ring")
    return out
