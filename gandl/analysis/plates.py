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
from scipy import stats

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

    effect: np.ndarray  # [N] ring + row + column effect of each input row (0 where not estimated)
    identified: np.ndarray  # [N] bool: its row's and column's effects (where fitted) came from treated wells
    rows: np.ndarray  # [N] zero-based row
    cols: np.ndarray  # [N] zero-based column
    corrected: tuple[str, ...] = ()  # per plate: which effects were removed, e.g. "HRCE-1_1: edge rings"
    notes: tuple[str, ...] = ()


RINGS = 3  # edge distance classes: the outer ring, the next, and the interior


def _pattern(values: np.ndarray, groups: np.ndarray, alpha: float) -> bool:
    """Whether `values` differ between `groups` (Kruskal-Wallis p < alpha over groups of 3 or more wells)."""
    samples = [values[groups == g] for g in np.unique(groups)]
    samples = [v for v in samples if len(v) >= 3]
    return len(samples) >= 2 and stats.kruskal(*samples).pvalue < alpha


def _plate_effects(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, fit: np.ndarray,
                   shape: tuple[int, int], always: bool, alpha: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One plate's effect per well, whether each well's row and column effects are identified, and what was
    removed: the edge rings' medians first (an edge effect reaches every well of a ring, controls included),
    then, on what is left, row and column effects by median polish, each only where its pattern is
    significant among the `fit` wells (or `always`)."""
    ring = np.minimum(edge_distance(rows, cols, shape), RINGS - 1)
    effect, identified, removed = np.zeros(len(values)), np.ones(len(values), bool), []
    if always or _pattern(values[fit], ring[fit], alpha):
        inner = values[fit & (ring == RINGS - 1)]
        base = np.median(inner) if len(inner) else np.median(values[fit])
        for k in range(RINGS):
            chosen = fit & (ring == k)
            effect[ring == k] = np.median(values[chosen]) - base if chosen.sum() >= 3 else 0.0
        removed.append("edge rings")
    rest = values - effect
    if always or _pattern(rest[fit], rows[fit], alpha) or _pattern(rest[fit], cols[fit], alpha):
        _, row_eff, col_eff = median_polish(rest[fit], rows[fit], cols[fit], shape)
        identified = np.isfinite(row_eff)[rows] & np.isfinite(col_eff)[cols]
        effect = effect + np.nan_to_num(row_eff)[rows] + np.nan_to_num(col_eff)[cols]
        removed.append("rows/columns")
    return effect, identified, removed


def position_effects(values: np.ndarray, plate: np.ndarray, wells: pd.Series | np.ndarray, fit: np.ndarray, *,
                     always: bool = False, alpha: float = 1e-3, min_wells: int = 24) -> PositionModel | str:
    """Plate-position effects of every row, estimated from the `fit` rows (the treated wells: most are inert).

    `values`: one value per well (e.g. its efficacy decision value), `plate`: its plate key. Per plate, the
    edge-ring effect and then row/column effects (median polish; the B-score's model) are estimated where
    their pattern is significant (Kruskal-Wallis p < `alpha`), or always with `always`: a correction fitted
    to a plate without a pattern only adds noise. A plate with fewer than `min_wells` fit wells is left as it
    is (noted). Returns the reason instead when the wells are not plate positions.
    """
    positions = well_positions(wells)
    if isinstance(positions, str):
        return positions
    rows, cols = positions
    values, plate, fit = np.asarray(values, np.float64), np.asarray(plate).astype(str), np.asarray(fit, bool)
    effect, identified, corrected, notes = np.zeros(len(values)), np.ones(len(values), bool), [], []
    shape = plate_shape(rows, cols)
    for name in pd.unique(plate):
        on = np.flatnonzero(plate == name)
        chosen = fit[on] & np.isfinite(values[on])
        if chosen.sum() < min_wells:
            notes.append(f"plate {name}: {int(chosen.sum())} treated wells, fewer than {min_wells}: no position "
                         "correction")
            continue
        effect[on], identified[on], removed = _plate_effects(np.nan_to_num(values[on]), rows[on], cols[on], chosen,
                                                             shape, always, alpha)
        if removed:
            corrected.append(f"{name}: {', '.join(removed)}")
    return PositionModel(effect, identified, rows, cols, tuple(corrected), tuple(notes))


def confounded(model: PositionModel, plate: np.ndarray, control: np.ndarray) -> list[str]:
    """Plates whose control wells all sit on the outer ring, or share no row or column with a treated well:
    their position effect is only known through the treated wells of the same ring, not from their own."""
    plate, control = np.asarray(plate).astype(str), np.asarray(control, bool)
    outer = edge_distance(model.rows, model.cols, plate_shape(model.rows, model.cols)) == 0
    out = []
    for name in pd.unique(plate[control]):
        on = control & (plate == name)
        if outer[on].all():
            out.append(f"plate {name}: every control well is on the plate's outer ring")
        elif not model.identified[on].any():
            out.append(f"plate {name}: its control wells share no row or column with treated wells")
    return out
