"""Plate quality control: did each plate's controls separate, is there a position pattern, did a plate drift?

Everything reads the cross-fitted decision values of the efficacy task (each plate scored by the one fold model
that never saw it), as well medians (the well is the replicate; the median keeps a bad site from moving it),
anchored once per cell line over all its plates: median C- well = -1, median C+ well = +1 (`well_table`). Not the
efficacy task's per-fold anchoring: a fold that holds out a single plate of a line anchors that plate on its own
controls, which puts any two control means at -1 and +1, swapped or drifted alike.

Assay quality (`separation`): the Z′-factor (Zhang et al. 1999) in its classic (mean, sd) and robust (median,
MAD scaled to sd) forms, and the strictly standardised mean difference of the controls (SSMD, Zhang 2007). The
status reads the robust Z′ (`status`): below 0 the control bands overlap (fails), 0 to 0.5 marginal, 0.5 and
above good, the usual screening thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import special

from gandl.analysis import io, plates
from gandl.data.wells import edge_distance, plate_shape, well_positions

Z_FAIL, Z_GOOD = 0.0, 0.5  # robust Z′ below Z_FAIL fails, below Z_GOOD is marginal
DRIFT_Z = 3.5  # robust z of a plate's control median against the other plates' beyond which it drifted
MIN_OTHER_PLATES = 5  # plates of a line a drift z is measured against: the MAD of fewer is mostly chance
EDGE_RATIO = 0.5  # outer-ring effect, in units of the plate's well noise (robust sd), that is large
EDGE_Z = 3.5  # ... and in units of its standard error under noise alone, that is beyond chance
# The standard error of the median-polish ring-minus-interior effect over that of a difference of well means,
# sqrt(1/n_outer + 1/n_inner) well sd, measured on normal noise: 1.6-1.7 in 384-well layouts, 1.8 in a 96-well one.
# With it, pure noise flagged 0 of 900 384-well plates and 1 of 300 96-well ones; a ring shifted by 1 sd, 94% of
# 384-well plates.
EDGE_SE = 1.7
STATUS_ORDER = ("fails", "too few controls", "marginal", "good")  # worst first
_NORMAL_MAD = special.ndtri(0.75)  # the MAD of standard normal data: a MAD over it estimates the sd
_MEDIAN_SE = np.sqrt(np.pi / 2)  # standard error of a normal sample's median, in sd / sqrt(n)


def _mad(values: np.ndarray) -> float:
    """Median absolute deviation scaled to the standard deviation of normal data; NaN without values.
    (`scipy.stats.median_abs_deviation(scale="normal")`'s value, without its ~0.7 ms of argument handling: the QC
    asks it for every well's plate neighbourhood.)"""
    if not len(values):
        return float("nan")
    return float(np.median(np.abs(values - np.median(values)))) / _NORMAL_MAD


def _anchored(wells: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Each well's decision value mapped per cell line so that the line's median C- well sits at -1 and its median
    C+ well at +1; medians over all its plates' wells, so that a swapped or failed plate does not move the others'
    anchors. NaN for a line without both kinds, or whose medians coincide (noted)."""
    score, notes = np.full(len(wells), np.nan), []
    for line, rows in wells.groupby("group", sort=False).groups.items():
        frame = wells.loc[rows]
        pos, neg = (frame.loc[frame["role"] == kind, "decision"].median() for kind in ("C+", "C-"))
        if not abs(pos - neg) > 0:  # also NaN: a kind without wells
            notes.append(f"plate QC: cell line {line}: no C+ and C- wells to anchor its scores on")
            continue
        score[wells.index.get_indexer(rows)] = -1.0 + 2.0 * (frame["decision"] - neg) / (pos - neg)
    return score, notes


def well_table(scores: pd.DataFrame, sites: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per well, and notes on the cell lines whose wells could not be anchored.

    `scores`: the efficacy task's table (site_id, well_id, group, experiment, plate, role, decision, ...);
    `sites`: the site metadata (`well`, and `viability` when the screen has it). Columns: plate_id
    ('{experiment}_{plate}'), group, experiment, plate, well_id, role, n_sites, decision (median of the
    sites'), score (that median anchored per cell line, `_anchored`), well (its position name), viability (median).
    """
    wells = (scores.assign(plate_id=io.plate_key(scores)).groupby("well_id", sort=False)
             .agg(plate_id=("plate_id", "first"), group=("group", "first"),
                  experiment=("experiment", "first"), plate=("plate", "first"), role=("role", "first"),
                  n_sites=("site_id", "size"), decision=("decision", "median"))
             .reset_index())
    extra = {"viability": ("viability", "median")} if "viability" in sites else {}
    wells = wells.merge(sites.groupby("well_id", sort=False).agg(well=("well", "first"), **extra).reset_index(),
                        on="well_id", how="left")
    score, notes = _anchored(wells)
    return wells.assign(score=score), notes


def _z_prime(centre_pos: float, centre_neg: float, spread_pos: float, spread_neg: float) -> float:
    """1 - 3 (s+ + s-) / |m+ - m-| where C+ sits above C-; with the gap taken C+ minus C-, controls in the wrong
    order give Z′ below -1 (Zhang's absolute gap would call a swapped plate good)."""
    gap = centre_pos - centre_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return float((gap - 3.0 * (spread_pos + spread_neg)) / np.abs(gap))


def separation(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """z_prime_robust (median, MAD), z_prime (mean, sd) and ssmd ((m+ - m-) / sqrt(v+ + v-)) of C+ over C- wells;
    NaN with fewer than two wells of either kind."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if min(len(pos), len(neg)) < 2:
        return dict(z_prime_robust=np.nan, z_prime=np.nan, ssmd=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ssmd = (pos.mean() - neg.mean()) / np.sqrt(pos.var(ddof=1) + neg.var(ddof=1))
    return dict(z_prime_robust=_z_prime(np.median(pos), np.median(neg), _mad(pos), _mad(neg)),
                z_prime=_z_prime(pos.mean(), neg.mean(), pos.std(ddof=1), neg.std(ddof=1)), ssmd=float(ssmd))


def status(z_prime: float) -> str:
    """The plate's verdict from its robust Z′ (`Z_FAIL`, `Z_GOOD`)."""
    if np.isnan(z_prime):
        return "too few controls"
    return "fails" if z_prime < Z_FAIL else "marginal" if z_prime < Z_GOOD else "good"


def with_positions(table: pd.DataFrame, model: plates.PositionModel) -> pd.DataFrame:
    """`table` (one row per well) with each well's row, col (zero-based) and position effect (edge rings, rows,
    columns: `plates.position_effects` on the same rows, 0 where its plate shows no pattern)."""
    rows, cols = well_positions(table["well"])
    return table.assign(row=rows, col=cols, position=model.effect)


def edge_effects(wells: pd.DataFrame) -> pd.DataFrame:
    """Per plate: edge_effect, the mean position effect of the outer-ring wells minus the interior's (score units),
    edge_noise, the robust sd of the treated wells' scores once
    their position effect is removed, and edge_flag: the effect is large (above `EDGE_RATIO` of the noise) and
    beyond chance (above `EDGE_Z` standard errors, `EDGE_SE`: small plates need a larger effect)."""
    rows, cols = wells["row"].to_numpy(), wells["col"].to_numpy()
    outer = edge_distance(rows, cols, plate_shape(rows, cols)) == 0
    frame = wells.assign(outer=outer, residual=wells["score"] - wells["position"])
    out = []
    for plate_id, plate in frame.groupby("plate_id", sort=False):
        edge = plate.loc[plate["outer"], "position"].mean() - plate.loc[~plate["outer"], "position"].mean()
        treated = plate[plate["role"] == "treated"]
        noise = _mad(treated["residual"].dropna().to_numpy())
        with np.errstate(divide="ignore"):
            se = EDGE_SE * noise * np.sqrt(1 / treated["outer"].sum() + 1 / (~treated["outer"]).sum())
        out.append(dict(plate_id=plate_id, edge_effect=edge, edge_noise=noise,
                        edge_flag=bool(abs(edge) > max(EDGE_RATIO * noise, EDGE_Z * se))))
    return pd.DataFrame(out, columns=["plate_id", "edge_effect", "edge_noise", "edge_flag"])


def _robust_z(values: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Each value's distance from the median of the others in their MAD, the scale never below `floor` (the value's
    own sampling error: the MAD of a handful of plates can be near zero by chance); NaN with too few others."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        others = np.delete(values, i)
        others = others[np.isfinite(others)]
        if len(others) >= MIN_OTHER_PLATES:
            with np.errstate(divide="ignore", invalid="ignore"):
                out[i] = (values[i] - np.median(others)) / np.fmax(_mad(others), floor[i])
    return out


PLATE_KEYS = ["plate_id", "group", "experiment", "plate"]


def drift_table(wells: pd.DataFrame) -> pd.DataFrame:
    """Control medians per plate and cell line in acquisition order (experiment, plate): pos_median, neg_median
    (of the C+ and C- well scores), pos_z and neg_z (robust z against the line's other plates, `_robust_z`, its
    floor the plate median's standard error), drift (either absolute z above `DRIFT_Z`)."""
    controls = wells[wells["role"].isin(["C+", "C-"]) & wells["score"].notna()]
    per_plate = (controls.groupby([*PLATE_KEYS, "role"], sort=False)["score"]
                 .agg(median="median", se=lambda s: _MEDIAN_SE * _mad(s.to_numpy()) / np.sqrt(len(s)))
                 .reset_index().assign(z=np.nan))
    for _, group in per_plate.groupby(["group", "role"]):
        per_plate.loc[group.index, "z"] = _robust_z(group["median"].to_numpy(), group["se"].to_numpy())
    wide = per_plate.pivot(index=PLATE_KEYS, columns="role", values=["median", "z"])
    out = pd.DataFrame({f"{prefix}_{stat}": wide[(stat, role)] if (stat, role) in wide else np.nan
                        for stat in ("median", "z") for role, prefix in (("C+", "pos"), ("C-", "neg"))},
                       index=wide.index)
    out["drift"] = (out["pos_z"].abs() > DRIFT_Z) | (out["neg_z"].abs() > DRIFT_Z)
    out = out.reset_index().sort_values(["experiment", "plate", "group"], kind="stable").reset_index(drop=True)
    return out.assign(order=np.arange(len(out)))


def plate_table(wells: pd.DataFrame, drift: pd.DataFrame, edges: pd.DataFrame | None = None) -> pd.DataFrame:
    """qc_plates: per plate and cell line the control wells (n_pos, n_neg), `separation`, `status`, the edge
    statistics (`edge_effects`; NaN without plate positions) and the drift flag, worst plates first."""
    rows = []
    for key, plate in wells.groupby(PLATE_KEYS, sort=False):
        pos = plate.loc[plate["role"] == "C+", "score"].dropna().to_numpy()
        neg = plate.loc[plate["role"] == "C-", "score"].dropna().to_numpy()
        rows.append(dict(zip(PLATE_KEYS, key), n_pos=len(pos), n_neg=len(neg), **separation(pos, neg)))
    table = pd.DataFrame(rows)
    table["status"] = table["z_prime_robust"].map(status)
    edges = edges if edges is not None else pd.DataFrame(
        dict(plate_id=table["plate_id"], edge_effect=np.nan, edge_noise=np.nan, edge_flag=False))
    table = table.merge(edges, on="plate_id", how="left").merge(drift[[*PLATE_KEYS[:2], "drift"]],
                                                                on=PLATE_KEYS[:2], how="left")
    table[["edge_flag", "drift"]] = table[["edge_flag", "drift"]].fillna(False).astype(bool)
    severity = table["status"].map(STATUS_ORDER.index) - 0.5 * (table["edge_flag"] | table["drift"])
    return (table.assign(_severity=severity).sort_values(["_severity", "z_prime_robust"], kind="stable")
            .drop(columns="_severity").reset_index(drop=True))


def check_excluded(exclude: Sequence[str], plate_ids: Sequence[str]) -> None:
    """Refuse `exclude_plates` entries the screen does not have: a typo would otherwise exclude nothing."""
    unknown = sorted(set(exclude) - set(plate_ids))
    if unknown:
        known = sorted(set(plate_ids))
        raise ValueError(f"analysis.exclude_plates names plates this screen does not have: {unknown}; plates are "
                         f"named {{experiment}}_{{plate}} (qc_plates.csv's plate_id), e.g. {known[:3]}")


def excluded_plates(exclude: Sequence[str], min_z_prime: float | None,
                    table: pd.DataFrame | None) -> pd.DataFrame:
    """plate_id and reason of every plate the settings exclude: those named, and those whose robust Z′ (any cell
    line's, from the QC `table`) is below `min_z_prime`. Plates without a Z′ (too few controls) are kept."""
    reasons = {plate: "named in exclude_plates" for plate in exclude}
    if min_z_prime is not None and table is not None:
        for row in table[table["z_prime_robust"] < min_z_prime].itertuples():
            reasons.setdefault(row.plate_id, f"robust Z′ {row.z_prime_robust:.2f} ({row.group}) below "
                                             f"min_z_prime={min_z_prime:g}")
    return pd.DataFrame({"plate_id": list(reasons), "reason": list(reasons.values())})


def lost_groups(plate_ids: np.ndarray, groups: np.ndarray, excluded: Sequence[str]) -> list[str]:
    """The groups (cell lines) every one of whose plates is excluded."""
    kept = set(groups[~np.isin(plate_ids, list(excluded))])
    return sorted(set(groups) - kept)
