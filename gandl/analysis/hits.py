"""Hit calls: a compound is a hit where it rescues, not merely where it differs from the disease control.

The null of every test is "rescues less than the threshold" (`threshold` on the efficacy scale: C- = -1,
C+ = +1; 0 = half way). Each dose is tested on the cross-fitted decision values of its wells, blocked by
plate: on each plate its wells are compared with that plate's own reference, a point between the plate's
negative level and its C+ wells (`plate_references`), so plate effects, the fold models' scales and the
reference wells' noise all enter the replicate-to-replicate variance that the test estimates from the
compound's own plates. That variance is moderated across all doses of the cell line (Smyth 2004's empirical
Bayes), so a compound more variable than the controls is judged by its own spread and a dose on few plates
still has degrees of freedom. Wells are the median of their sites (one artefact site moves nothing), and
their plate-position effects are removed first (`gandl.analysis.plates`, median polish of the treated wells).

A hit must also look like the positive control: a dose whose wells sit far from the controls away from the
C- -> C+ axis (`off_axis`: the paper's off-perturbation distance, against the controls' own spread) or that
kills cells (`viability`: a cell-count proxy below `viability_floor` of the C- wells) is not counted;
such compounds are listed apart with the reason. Per compound and cell line, Simes' rule combines the p of
its eligible doses and Benjamini-Hochberg over compounds x cell lines controls the hit list's FDR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

from gandl.analysis import efficacy, plates
from gandl.analysis.io import plate_key
from gandl.data import wells
from gandl.defaults import POSITIONS

GAP_P = 0.01  # a fold's held-out C+ - C- gap is "clearly positive" below this one-sided Welch p
MIN_TREATED_FOR_BASELINE = 20  # treated wells a plate needs before their median guards the negative level
KEYS = ["perturbation", "group", "dose"]
CURVE = ["perturbation", "group"]


@dataclasses.dataclass(frozen=True)
class HitSettings:
    """The hit rule's settings (AnalysisConfig fields of the same names)."""

    threshold: float = 0.0  # rescue_threshold: efficacy a hit must exceed (C- = -1, C+ = +1)
    fdr: float = 0.05
    off_axis_limit: float = 1.5  # off-axis distance / the controls' median distance above which a dose is off-axis
    viability_floor: float = 0.7  # cell-count proxy / C- level below which a dose is cytotoxic
    position: str = "auto"  # auto | on | off: remove row/column effects (auto: where the layout allows)
    flat_threshold: float = 0.25
    toxic_threshold: float = 0.5


# ---------------------------------------------------------------------------------------------------------------
# Wells


def well_table(sites: pd.DataFrame, how: str = "median") -> pd.DataFrame:
    """One row per well of the efficacy task's site table: its decision value (`how` of its sites), role,
    compound, dose, plate_id, model, n_sites, and its viability proxy when the sites carry one."""
    frame = sites.assign(plate_id=plate_key(sites))
    values = ["decision"] + (["viability"] if "viability" in frame else [])
    keys = ["well_id", "group", "plate_id", "well", "role", "perturbation", "dose", "model"]
    frame = frame[np.isfinite(frame["decision"].to_numpy())]
    out = frame.groupby(keys, sort=True, dropna=False)[values].agg(how)
    out["n_sites"] = frame.groupby(keys, sort=True, dropna=False).size()
    return out.reset_index()


def site_outliers(sites: pd.DataFrame, limit: float = 5.0) -> np.ndarray:
    """Sites whose decision value sits more than `limit` robust sds from their well's median (an out-of-focus
    field, debris, a bubble): flagged in the efficacy table; the well's median already ignores them.

    The sd is the MAD of all sites' (nonzero) deviations from their well medians within the cell line, scaled to
    a normal sd. A well of one site has no deviation to judge.
    """
    value = sites["decision"].to_numpy(np.float64)
    deviation = value - sites.groupby("well_id")["decision"].transform("median").to_numpy(np.float64)
    single = sites.groupby("well_id")["decision"].transform("size").to_numpy() < 2
    usable = ~single & (deviation != 0)  # the median site of an odd-sized well deviates by 0 by construction
    scale = pd.Series(np.where(usable, deviation, np.nan)).groupby(sites["group"].to_numpy()).transform(
        lambda d: stats.median_abs_deviation(d.dropna(), scale="normal") if d.notna().any() else np.nan)
    with np.errstate(invalid="ignore"):
        return ~single & (np.abs(deviation) > limit * scale.to_numpy())


def correct_positions(table: pd.DataFrame, mode: str) -> tuple[pd.DataFrame, list[str]]:
    """`table` with its decision values less their plate-position effect (`position_effect`), and notes.

    mode 'auto' corrects, on plates with at least 24 treated wells at parseable positions, the edge-ring and
    row/column patterns that are significant there; 'on' fits both on every plate with 3 (else it raises);
    'off' none. Notes say what was corrected where, and which plates' controls are confounded with position.
    """
    if mode not in POSITIONS:
        raise ValueError(f"position correction must be one of {POSITIONS}, got {mode!r}")
    table = table.assign(position_effect=0.0)
    if mode == "off":
        return table, []
    model = plates.position_effects(table["decision"].to_numpy(), table["plate_id"].to_numpy(), table["well"],
                                    (table["role"] == "treated").to_numpy(), always=mode == "on",
                                    min_wells=24 if mode == "auto" else 3)
    if isinstance(model, str):
        if mode == "on":
            raise ValueError(f"position correction asked for, but {model}")
        return table, [f"no plate-position correction: {model}"]
    if mode == "on" and model.notes:
        raise ValueError(f"position correction asked for, but {model.notes[0]}")
    table["position_effect"] = model.effect
    table["decision"] = table["decision"] - model.effect
    warnings = wells.layout_warnings(table["well"], table["plate_id"].to_numpy(), table["role"].to_numpy())
    return table, ([f"position: {n}" for n in model.notes] + [f"position corrected: {c}" for c in model.corrected]
                   + [f"controls confounded with position: {w}" for w in warnings])


# ---------------------------------------------------------------------------------------------------------------
# References


def fold_gaps(table: pd.DataFrame) -> pd.DataFrame:
    """Per model (fold) x cell line: its held-out C+ and C- wells, their gap and whether it is clearly positive.

    The wells a fold model scores are the plates it never saw, so their C+ - C- gap is an honest check that
    its axis points from disease to health there; a fold where it does not (one-sided Welch p >= GAP_P) has no
    efficacy scale, and its plates are reported and left untested rather than mirrored.
    """
    rows = []
    for (model, line), group in table.groupby(["model", "group"], sort=True):
        pos = group.loc[group["role"] == "C+", "decision"].to_numpy()
        neg = group.loc[group["role"] == "C-", "decision"].to_numpy()
        gap, p = np.nan, np.nan
        if len(pos) >= 2 and len(neg) >= 2:
            gap = float(pos.mean() - neg.mean())
            p = float(stats.ttest_ind(pos, neg, equal_var=False, alternative="greater").pvalue)
        rows.append(dict(model=model, group=line, n_pos=len(pos), n_neg=len(neg), neg_mean=neg.mean()
                         if len(neg) else np.nan, gap=gap, gap_p=p, usable=bool(gap > 0 and p < GAP_P)))
    return pd.DataFrame(rows)


VEHICLE_P = 0.01  # the treated wells sit above the C- wells (Simes over the line's plates) below this p


def _vehicle_lines(table: pd.DataFrame) -> set[str]:
    """Cell lines whose treated wells sit above their C- wells on the same plates (one-sided Mann-Whitney per plate
    with enough treated wells, Simes over the line's plates): a shift every compound shares."""
    shifted = set()
    for line, group in table.groupby("group"):
        p = []
        for _, plate in group.groupby("plate_id"):
            treated = plate.loc[plate["role"] == "treated", "decision"].to_numpy()
            neg = plate.loc[plate["role"] == "C-", "decision"].to_numpy()
            if len(treated) >= MIN_TREATED_FOR_BASELINE and len(neg) >= 2:
                p.append(stats.mannwhitneyu(treated, neg, alternative="greater").pvalue)
        if p and efficacy.simes(np.array(p)) < VEHICLE_P:
            shifted.add(str(line))
    return shifted


def plate_references(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per plate: its negative level, C+ level and the threshold's reference point between them (decision units).

    The negative level is the median of the plate's C- wells, or of its treated wells where the line's treated
    wells sit clearly above its C- wells (`_vehicle_lines`) and the plate holds at least
    MIN_TREATED_FOR_BASELINE of them: most compounds are inert, so a shift shared by every treated well (a
    vehicle, a dispensing effect) is not rescue. Only a clear shift counts: taking the higher of two noisy
    medians on every plate would raise the bar by their noise.
    """
    fraction = (threshold + 1.0) / 2.0
    med = table.groupby(["plate_id", "role"])["decision"].median().unstack()
    count = table.groupby(["plate_id", "role"]).size().unstack().fillna(0)
    line = table.groupby("plate_id")["group"].first().reindex(med.index).astype(str)
    out = pd.DataFrame(index=med.index)
    neg = med.get("C-", pd.Series(np.nan, index=med.index))
    treated = med.get("treated", pd.Series(np.nan, index=med.index)).where(
        (count.get("treated", 0) >= MIN_TREATED_FOR_BASELINE) & line.isin(_vehicle_lines(table)))
    out["negative"] = np.where(treated > neg, treated, neg)
    out["vehicle_shift"] = (treated - neg).where(treated > neg, 0.0)
    out["positive"] = med.get("C+", pd.Series(np.nan, index=med.index))
    out["reference"] = out["negative"] + fraction * (out["positive"] - out["negative"])
    return out.reset_index()


# ---------------------------------------------------------------------------------------------------------------
# The test


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (Newton's iteration of Smyth 2004)."""
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = special.polygamma(1, y)
        step = tri * (1.0 - tri / x) / special.polygamma(2, y)
        y += step
        if -step / y < 1e-8:
            break
    return float(y)


def squeeze_variances(s2: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Empirical-Bayes moderated variances (Smyth 2004): (posterior s², total df, prior s0², prior d0).

    The prior is a scaled inverse chi-square fitted to every finite positive s² by moments of log s²; a
    variance with 0 df takes the prior's. With fewer than three variances, or none positive, there is no
    prior (d0 = 0) and each variance stands alone.
    """
    s2, df = np.asarray(s2, np.float64), np.asarray(df, np.float64)
    ok = (df > 0) & np.isfinite(s2) & (s2 > 0)
    if ok.sum() < 3:
        return np.where(df > 0, s2, np.nan), df, np.nan, 0.0
    half = df[ok] / 2.0
    e = np.log(s2[ok]) - special.digamma(half) + np.log(half)
    excess = np.var(e, ddof=1) - np.mean(special.polygamma(1, half))
    if excess > 0:
        d0 = 2.0 * _trigamma_inverse(excess)
        s0 = float(np.exp(e.mean() + special.digamma(d0 / 2.0) - np.log(d0 / 2.0)))
    else:
        d0, s0 = np.inf, float(np.exp(e.mean()))
    d0 = min(d0, 1e6)
    own = np.where(df > 0, np.nan_to_num(s2), 0.0)
    return (d0 * s0 + df * own) / (d0 + df), df + d0, s0, float(d0)


def dose_tests(table: pd.DataFrame, gaps: pd.DataFrame, refs: pd.DataFrame, threshold: float,
               level: float = 0.95) -> pd.DataFrame:
    """Per compound x cell line x dose: the rescue estimate, its lower confidence bound and the one-sided p of
    "efficacy above `threshold`", from its wells' plate-blocked contrasts.

    On each plate the dose's wells (their mean) minus the plate's reference point, divided by its fold's
    held-out C+ - C- gap over 2, is that plate's rescue beyond the threshold in efficacy units (the gap only
    scales: its sign is checked, `fold_gaps`); the plates are the replicates. Their mean is tested against 0
    with a moderated t (`squeeze_variances` over every dose of the cell line). Doses on plates without both
    control kinds, or scored by a fold whose gap is not clearly positive, are not tested (p NaN, `untested`
    says why).
    """
    treated = table[table["role"] == "treated"].merge(refs[["plate_id", "reference"]], on="plate_id", how="left")
    treated = treated.merge(gaps[["model", "group", "gap", "usable"]], on=["model", "group"], how="left")
    why = np.select([~treated["usable"].fillna(False).astype(bool), treated["reference"].isna()],
                    ["its fold's held-out C+ - C- gap is not clearly positive", "its plate lacks C+ or C- wells"], "")
    treated["excess"] = np.where(why == "", 2.0 * (treated["decision"] - treated["reference"]) / treated["gap"],
                                 np.nan)
    per_plate = (treated.dropna(subset=["excess"]).groupby(KEYS + ["plate_id"], sort=True)["excess"].mean()
                 .reset_index())
    out = treated.assign(why=why).groupby(KEYS, sort=True).agg(n_wells=("well_id", "size"),
                                                               untested=("why", "max")).reset_index()
    stat = per_plate.groupby(KEYS, sort=True)["excess"].agg(n_plates="size", excess="mean", s2="var").reset_index()
    out = out.merge(stat, on=KEYS, how="left").fillna({"n_plates": 0})
    out["n_plates"] = out["n_plates"].astype(int)
    out["estimate"], out["lcb"], out["t"], out["df"], out["p"] = np.nan, np.nan, np.nan, np.nan, np.nan
    for _, rows in out.groupby("group").groups.items():
        sub = out.loc[rows]
        s2, df, _, _ = squeeze_variances(sub["s2"].to_numpy(), np.maximum(sub["n_plates"].to_numpy() - 1, 0))
        se = np.sqrt(s2 / sub["n_plates"].to_numpy())
        with np.errstate(divide="ignore", invalid="ignore"):
            t = sub["excess"].to_numpy() / se
        good = np.isfinite(t) & (df > 0) & (sub["n_plates"].to_numpy() > 0)
        out.loc[rows, "t"] = np.where(good, t, np.nan)
        out.loc[rows, "df"] = np.where(good, df, np.nan)
        out.loc[rows, "p"] = np.where(good, stats.t.sf(np.where(good, t, 0.0), np.where(good, df, 1.0)), np.nan)
        out.loc[rows, "estimate"] = threshold + sub["excess"].to_numpy()
        out.loc[rows, "lcb"] = np.where(good, threshold + sub["excess"].to_numpy()
                                        - stats.t.ppf(level, np.where(good, df, 1.0)) * se, np.nan)
    out["untested"] = np.where(out["p"].isna() & (out["untested"] == ""),
                               "no replicate plate to estimate its variance", out["untested"])
    out["untested"] = np.where(out["p"].notna(), "", out["untested"])
    return out.drop(columns="s2")


# ---------------------------------------------------------------------------------------------------------------
# Is the rescue the positive control's phenotype?


def _distances_to_positive(residual: np.ndarray, plate: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Each well's distance to the median C+ residual of its plate (of the whole line where a plate has fewer
    than 3 C+ wells); a C+ well's own plate centre leaves it out, so it is measured like any other well."""
    line_centre = np.median(residual[positive], axis=0)
    dist = np.empty(len(residual))
    for name in pd.unique(plate):
        on = plate == name
        own = np.flatnonzero(on & positive)
        centre = np.median(residual[own], axis=0) if len(own) >= 3 else line_centre
        dist[on] = np.linalg.norm(residual[on] - centre, axis=1)
        for i in own if len(own) >= 4 else ():
            dist[i] = np.linalg.norm(residual[i] - np.median(residual[own[own != i]], axis=0))
    return dist


def well_off_axis(x: np.ndarray, meta: pd.DataFrame) -> pd.DataFrame:
    """Per well: its distance from the positive control away from the C- -> C+ direction, over C+'s own spread.

    Per cell line the well profiles are put on the controls' robust scale (median and MAD per dimension), the
    direction from the C- to the C+ median profile is projected out, and each well's distance to its plate's
    C+ wells (`_distances_to_positive`) is divided by the median of the C+ wells' own distances, so C+ wells
    sit near 1 (`control_off_axis`). A rescue moves a well along the axis to C+; toxicity and off-target
    effects move it away from C+ (the paper's off-perturbation space).
    """
    plate_id = plate_key(meta)
    role_all = meta["role"].to_numpy()
    ratio, positive_ratio = np.full(len(meta), np.nan), np.full(len(meta), np.nan)
    for line in pd.unique(meta["group"]):
        rows = (meta["group"] == line).to_numpy()
        role = role_all[rows]
        if (role == "C+").sum() < 2 or not (role == "C-").any():
            continue
        control = np.isin(role, ["C+", "C-"])
        z = x[rows]  # a copy, made robust z-scores and then the residual in place
        # The controls' robust spread, floored at a tenth of every well's: a dimension (nearly) constant in the
        # controls must not turn a small change into a huge distance.
        scale = np.maximum(stats.median_abs_deviation(z[control], axis=0, scale="normal"), 0.1 * z.std(axis=0))
        z -= np.median(z[control], axis=0)
        z /= np.where(scale > 1e-12, scale, 1.0)
        axis = np.median(z[role == "C+"], axis=0) - np.median(z[role == "C-"], axis=0)
        norm = np.linalg.norm(axis)
        if norm > 0:  # the residual off the axis
            z -= np.outer(z @ axis / norm, axis / norm).astype(z.dtype)
        dist = _distances_to_positive(z, plate_id[rows], role == "C+")
        spread = np.median(dist[role == "C+"])
        ratio[rows] = dist / spread if spread > 0 else np.nan
        positive_ratio[rows] = np.where(role == "C+", ratio[rows], np.nan)
    return pd.DataFrame({"well_id": meta["well_id"].astype(str), "off_axis": ratio, "control_off_axis": positive_ratio})


def off_axis_limits(table: pd.DataFrame, limit: float) -> pd.Series:
    """Per cell line: the off-axis ratio above which a dose is off-axis, `limit` or the 99th percentile of its
    C+ wells' own ratios when that is higher (few dimensions make distances noisy)."""
    quantile = table.groupby("group")["control_off_axis"].quantile(0.99)
    return np.maximum(quantile.fillna(limit), limit)


def dose_flags(table: pd.DataFrame, settings: HitSettings) -> pd.DataFrame:
    """Per compound x cell line x dose: median off-axis ratio and viability ratio of its wells, and the flags.

    Viability: each well's cell-count proxy over the median of its plate's C- wells; a dose is cytotoxic when
    its median ratio is below `viability_floor` and below the C- wells' ratios (one-sided Welch p < 0.05).
    """
    limits = off_axis_limits(table, settings.off_axis_limit)
    treated = table[table["role"] == "treated"]
    out = treated.groupby(KEYS, sort=True)["off_axis"].median().rename("off_axis").reset_index()
    out["off_axis_flag"] = out["off_axis"] > out["group"].map(limits)
    out["viability"], out["cytotoxic"] = np.nan, False
    if "viability" in table:
        neg = table[table["role"] == "C-"].groupby("plate_id")["viability"].median()
        ratio = table["viability"] / table["plate_id"].map(neg)
        table = table.assign(viability_ratio=ratio)
        ref = (table[table["role"] == "C-"].groupby("group")["viability_ratio"]
               .agg(ref_mean="mean", ref_var="var", ref_n="count", ref_min="min"))
        flags = (table[table["role"] == "treated"].groupby(KEYS, sort=True)["viability_ratio"]
                 .agg(viability="median", mean="mean", var="var", n="count").reset_index()
                 .join(ref, on="group"))
        with np.errstate(divide="ignore", invalid="ignore"):
            welch = stats.ttest_ind_from_stats(
                flags["mean"].to_numpy(np.float64), np.sqrt(flags["var"].to_numpy(np.float64)),
                flags["n"].to_numpy(np.float64), flags["ref_mean"].to_numpy(np.float64),
                np.sqrt(flags["ref_var"].to_numpy(np.float64)), flags["ref_n"].to_numpy(np.float64),
                equal_var=False, alternative="less").pvalue
        single = flags["viability"] < flags["ref_min"]  # one well: below every C- well
        p = np.where((flags["n"] >= 2) & (flags["ref_n"] >= 2), welch,
                     np.where(single & (flags["ref_n"] >= 2), 0.0, 1.0))
        flags["cytotoxic"] = (flags["viability"] < settings.viability_floor) & (p < 0.05)
        flags = flags[KEYS + ["viability", "cytotoxic"]]
        out = out.drop(columns=["viability", "cytotoxic"]).merge(flags, on=KEYS, how="left")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Tables


def display_scores(table: pd.DataFrame, gaps: pd.DataFrame) -> np.ndarray:
    """Each well's efficacy score for tables and figures: its fold's held-out control means at -1 / +1.

    Display only: the test reads the plate-blocked contrasts. Wells of a fold whose gap is not clearly
    positive get NaN (never a mirrored scale).
    """
    merged = table[["model", "group"]].merge(gaps, on=["model", "group"], how="left")
    score = -1.0 + 2.0 * (table["decision"].to_numpy() - merged["neg_mean"].to_numpy()) / merged["gap"].to_numpy()
    return np.where(merged["usable"].fillna(False).to_numpy(bool), score, np.nan)


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q of the finite entries of `p` (NaN elsewhere)."""
    q = np.full(len(p), np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = stats.false_discovery_control(p[finite], method="bh")
    return q


def dose_table(table: pd.DataFrame, tests: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """The dose-response table: per compound x cell line x dose the mean display score, SEM and counts, the
    rescue test (estimate, lcb, p, and q: Benjamini-Hochberg over every tested dose) and the flags."""
    treated = table[table["role"] == "treated"]
    curves = efficacy.dose_response(treated.rename(columns={"efficacy": "score"}))
    out = curves.merge(tests, on=KEYS, how="left").merge(flags, on=KEYS, how="left")
    out["q"] = _bh(out["p"].to_numpy())
    return out


def _status(row: pd.Series, fdr: float) -> str:
    if not np.isfinite(row["p"]):
        return "not tested: " + (row["why"] or "no eligible dose")
    if row["q"] >= fdr:
        return "no rescue above the threshold"
    return "hit"


def _curves(doses: pd.DataFrame, curve: np.ndarray, columns: Sequence[str]) -> list[tuple[np.ndarray, ...]]:
    """Each curve's dose rows of `columns`, in curve order (`curve`: its code per row) and then row order: NumPy
    slices, because iterating thousands of pandas groups costs seconds at RxRx19a scale."""
    order = np.argsort(curve, kind="stable")
    bounds = np.cumsum(np.bincount(curve))[:-1]
    split = [np.split(doses[c].to_numpy(np.float64)[order], bounds) for c in columns]
    return list(zip(*split))


def hit_table(table: pd.DataFrame, doses: pd.DataFrame, settings: HitSettings) -> pd.DataFrame:
    """One row per compound x cell line: best dose, its estimate and lower bound, p (Simes over the eligible
    doses), q (BH over compounds x cell lines), hit, flags, status, Hill fit, AUC, and the rank in its line.

    Eligible doses are tested and neither off-axis nor cytotoxic. `status` says why a compound is not a hit;
    one whose rescue test passes only at ineligible doses is 'cytotoxic' or 'off-axis', listed apart.
    """
    if doses.empty:
        return pd.DataFrame()
    eligible = doses["p"].notna() & ~doses["off_axis_flag"].fillna(False).astype(bool) \
        & ~doses["cytotoxic"].fillna(False).astype(bool)
    doses = doses.assign(eligible=eligible, p_eligible=doses["p"].where(eligible))
    by_curve = doses.groupby(CURVE, sort=True)
    peak = doses.loc[doses.assign(m=doses["mean"].fillna(-np.inf)).groupby(CURVE, sort=True)["m"].idxmax()]
    peak = peak.reset_index(drop=True)
    out = peak[CURVE].assign(n_doses=by_curve.size().to_numpy(), max_score=peak["mean"], sem_at_max=peak["sem"],
                             conc_at_max_uM=peak["dose"])
    curve = by_curve.ngroup().to_numpy()
    curves = _curves(doses, curve, ("log10_conc", "mean", "sem"))
    out["auc"] = [efficacy.curve_auc(x, m) for x, m, _ in curves]
    out["toxic_drop"] = [efficacy.toxic_drop(m, e, settings.toxic_threshold) for _, m, e in curves]
    best = (doses.assign(neg=-doses["estimate"]).sort_values(CURVE + ["p_eligible", "neg"], na_position="last")
            .drop_duplicates(CURVE).sort_values(CURVE).reset_index(drop=True))
    out["best_dose"] = best["dose"].where(best["eligible"]).to_numpy()
    out["estimate"] = best["estimate"].where(best["eligible"]).to_numpy()
    out["lcb"] = best["lcb"].where(best["eligible"]).to_numpy()
    out["dose_p"], out["dose_q"] = best["p_eligible"].to_numpy(), best["q"].where(best["eligible"]).to_numpy()
    out["p"] = efficacy.grouped_simes(doses["p_eligible"].to_numpy(), curve, len(out))
    out["q"] = _bh(out["p"].to_numpy())
    out["hit"] = out["q"] < settings.fdr
    any_rescue = efficacy.grouped_simes(doses["p"].to_numpy(), curve, len(out))
    flagged = by_curve.agg(off_axis=("off_axis_flag", "any"), cytotoxic=("cytotoxic", "any"),
                           why=("untested", "max"), max_off_axis=("off_axis", "max"),
                           min_viability=("viability", "min"))
    out = pd.concat([out, flagged.reset_index(drop=True)], axis=1)
    out["status"] = [_status(r, settings.fdr) for _, r in out.iterrows()]
    # A compound whose every dose together passes the rescue test but whose passing doses are flagged.
    rescued_unless_flagged = (_bh(any_rescue) < settings.fdr) & ~out["hit"].to_numpy()
    out.loc[rescued_unless_flagged & out["cytotoxic"].to_numpy(bool), "status"] = "cytotoxic"
    out.loc[rescued_unless_flagged & out["off_axis"].to_numpy(bool) & ~out["cytotoxic"].to_numpy(bool),
            "status"] = "off-axis"
    treated = table[(table["role"] == "treated") & np.isfinite(table["efficacy"])]
    fits = efficacy.fit_hills(treated.groupby(CURVE, sort=True).ngroup().to_numpy(),
                              np.log10(treated["dose"].to_numpy()), treated["efficacy"].to_numpy(),
                              flat_threshold=settings.flat_threshold)
    fitted = (treated[CURVE].drop_duplicates().sort_values(CURVE).reset_index(drop=True)
              .join(fits.reset_index(drop=True).rename(columns={"top": "emax"})))
    out = out.drop(columns="why").merge(fitted, on=CURVE, how="left")
    out["fit_status"] = out["fit_status"].fillna("too_few_doses")
    out["fit_failed"] = out["fit_status"] != "ok"
    out["rank"] = out.groupby("group")["max_score"].rank(ascending=False, method="first",
                                                             na_option="bottom").astype(int)
    return out.sort_values(["group", "rank"]).reset_index(drop=True)


def call(sites: pd.DataFrame, profiles: tuple[np.ndarray, pd.DataFrame], settings: HitSettings,
         how: str = "median") -> dict:
    """The whole hit path from the efficacy task's site table: wells, position correction, fold checks,
    references, dose tests, flags, the dose-response and hit tables, and notes.

    `profiles`: the well profiles (features, metadata by `well_id`; `aggregate_wells` by `how` of the unfitted,
    plate-normalised sites) the off-axis distances are measured in.
    """
    table, notes = correct_positions(well_table(sites, how), settings.position)
    gaps = fold_gaps(table)
    for r in gaps[~gaps["usable"]].itertuples():
        notes.append(f"hits: model {r.model}, cell line {r.group}: held-out C+ - C- gap {r.gap:.3g} "
                     f"(Welch p = {r.gap_p:.2g}, {r.n_pos} C+ and {r.n_neg} C- wells) is not clearly positive: its "
                     "plates' compounds are not tested")
    refs = plate_references(table, settings.threshold)
    for r in refs[refs["vehicle_shift"] > 0].itertuples():
        notes.append(f"hits: plate {r.plate_id}: its treated wells' median sits above its C- wells by "
                     f"{r.vehicle_shift:.3g} (decision units): the negative level is the treated median")
    table["efficacy"] = display_scores(table, gaps)
    table = table.merge(well_off_axis(*profiles)[["well_id", "off_axis", "control_off_axis"]],
                        on="well_id", how="left")
    doses = dose_table(table, dose_tests(table, gaps, refs, settings.threshold), dose_flags(table, settings))
    if "viability" not in table:
        notes.append("hits: no cell-count proxy (a `viability` column): cytotoxicity not estimated, only off-axis "
                     "profiles are set apart")
    return dict(wells=table, folds=gaps, references=refs, dose_response=doses,
                hits=hit_table(table, doses, settings), notes=notes)
