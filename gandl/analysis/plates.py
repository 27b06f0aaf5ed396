"""Plate-position effects, estimated from the wells around each well (the geometry: `gandl.data.wells`).

Plate readouts drift with position: edge wells evaporate faster, dispensers and incubators leave row and column
patterns. Most compounds of a screen are inert, so the treated wells of a plate estimate its edge-ring, row and
column effects (Tukey's median polish, the B-score's model: Brideau et al. 2003), and subtracting them leaves each
well's own effect. Controls are corrected with the same effects: where they sit only on the edge or in rows and
columns no treated well shares, that is all that can be known of theirs (`gandl.data.wells.layout_warnings`).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
from scipy import special, stats

from gandl.data.wells import edge_distance, plate_shape, well_positions


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
    corrected: tuple[str, ...] = ()  # per plate: which effects were removed, e.g. "HRCE-1_1: edge rings"
    notes: tuple[str, ...] = ()


RINGS = 3  # edge distance classes: the outer ring, the next, and the interior


def kruskal_p(values: np.ndarray, groups: np.ndarray, min_size: int = 3) -> float:
    """Kruskal-Wallis p-value of `values` between `groups` of `min_size` or more (NaN with fewer than two, or
    all values tied): the tie-corrected H of `scipy.stats.kruskal`, from one ranking and per-group rank sums,
    because the analysis asks it three times per plate and scipy's argument handling costs ~2 ms a call."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= min_size
    if (counts >= min_size).sum() < 2:
        return float("nan")
    ranks, group = stats.rankdata(values[keep]), inverse[keep]
    n, sizes = len(ranks), counts[counts >= min_size]
    sums = np.bincount(group, ranks, minlength=len(counts))[counts >= min_size]
    ties = stats.tiecorrect(ranks)
    if ties == 0:
        return float("nan")
    h = (12.0 / (n * (n + 1)) * np.sum(sums**2 / sizes) - 3.0 * (n + 1)) / ties
    return float(special.chdtrc(len(sizes) - 1, h))


def _pattern(values: np.ndarray, groups: np.ndarray, alpha: float) -> bool:
    """Whether `values` differ between `groups` (Kruskal-Wallis p < alpha over groups of 3 or more wells)."""
    return kruskal_p(values, groups) < alpha


def _plate_effects(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, fit: np.ndarray,
                   shape: tuple[int, int], always: bool, alpha: float) -> tuple[np.ndarray, list[str]]:
    """One plate's effect per well and what was removed: the edge rings' medians first (an edge effect reaches
    every well of a ring, controls included), then, on what is left, row and column effects by median polish,
    each only where its pattern is significant among the `fit` wells (or `always`)."""
    ring = np.minimum(edge_distance(rows, cols, shape), RINGS - 1)
    effect, removed = np.zeros(len(values)), []
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
        effect = effect + np.nan_to_num(row_eff)[rows] + np.nan_to_num(col_eff)[cols]
        removed.append("rows/columns")
    return effect, removed


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
    effect, corrected, notes = np.zeros(len(values)), [], []
    shape = plate_shape(rows, cols)
    for name in pd.unique(plate):
        on = np.flatnonzero(plate == name)
        chosen = fit[on] & np.isfinite(values[on])
        if chosen.sum() < min_wells:
            notes.append(f"plate {name}: {int(chosen.sum())} treated wells, fewer than {min_wells}: no position "
                         "correction")
            continue
        effect[on], removed = _plate_effects(np.nan_to_num(values[on]), rows[on], cols[on], chosen,
                                                             shape, always, alpha)
        if removed:
            corrected.append(f"{name}: {', '.join(removed)}")
    return PositionModel(effect, tuple(corrected), tuple(notes))
