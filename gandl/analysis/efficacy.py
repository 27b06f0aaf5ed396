"""Efficacy scores, dose-response tables, four-parameter Hill fits and the ranked hit table.

Efficacy score: the on-perturbation value re-anchored per cell line so that the mean disease control (C-)
sits at -1 and the mean healthy control (C+) at +1; 0 is the efficacy threshold. Anchoring per cell line
removes the offset between HRCE and VERO on the shared axis.

Aggregation: sites are averaged into wells first, because the well is the replicate (sites of one well
share its compound dispensing, virus dose and seeding); per concentration the table reports the mean,
the SEM and n over wells. Hill curves are fitted on the well-level points.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats

from gandl.data.rxrx import control_role


def efficacy_scores(on: np.ndarray, metadata: pd.DataFrame,
                    uv_is_positive: bool = False) -> tuple[np.ndarray, dict[str, str]]:
    """Per-site efficacy scores and the cell lines that could not be scored (line -> reason).

    Within each cell line the affine map a*on + b puts mean(C-) at -1 and mean(C+) at +1. A line
    without both control kinds, or whose controls coincide on the axis, gets NaN scores and is listed.
    """
    on = np.asarray(on, np.float64)
    role = control_role(metadata, uv_is_positive).to_numpy()
    line = metadata["cell_type"].astype(str).to_numpy()
    scores = np.full(len(on), np.nan)
    skipped = {}
    for name in pd.unique(line):
        rows = line == name
        pos, neg = on[rows & (role == "C+")], on[rows & (role == "C-")]
        if not len(pos) or not len(neg):
            missing = [r for r, v in (("C+", pos), ("C-", neg)) if not len(v)]
            skipped[str(name)] = f"no {' or '.join(missing)} control sites"
            continue
        gap = pos.mean() - neg.mean()
        if not abs(gap) > 1e-12:
            skipped[str(name)] = "C+ and C- controls have the same mean on-perturbation value"
            continue
        scores[rows] = -1.0 + 2.0 * (on[rows] - neg.mean()) / gap
    return scores, skipped


def well_scores(scores: np.ndarray, metadata: pd.DataFrame) -> pd.DataFrame:
    """Mean efficacy score per treated well: treatment, cell_type, treatment_conc, score, n_sites."""
    frame = metadata[["well_id", "treatment", "cell_type", "treatment_conc"]].copy()
    frame["score"] = scores
    frame = frame[(frame["treatment"] != "") & np.isfinite(frame["score"])]
    return (frame.groupby(["treatment", "cell_type", "treatment_conc", "well_id"], sort=True)["score"]
            .agg(score="mean", n_sites="size").reset_index())


def dose_response(wells: pd.DataFrame) -> pd.DataFrame:
    """Per compound x cell line x concentration: mean score, SEM and n over wells (SEM NaN when n = 1)."""
    out = (wells.groupby(["treatment", "cell_type", "treatment_conc"], sort=True)
           .agg(mean=("score", "mean"), sd=("score", "std"), n=("score", "size"), n_sites=("n_sites", "sum"))
           .reset_index())
    out.insert(3, "log10_conc", np.log10(out["treatment_conc"]))
    out["sem"] = out["sd"] / np.sqrt(out["n"])
    return out.drop(columns="sd")[["treatment", "cell_type", "treatment_conc", "log10_conc", "mean", "sem",
                                   "n", "n_sites"]]


def _rise(log_conc: np.ndarray, log_ec50: float, slope: float) -> tuple[np.ndarray, np.ndarray]:
    """(g, u): the logistic fraction g = 1 / (1 + u) of the way from bottom to top, u = 10^((ec50 - x) s)."""
    u = np.power(10.0, np.clip((log_ec50 - np.asarray(log_conc, np.float64)) * slope, -60.0, 60.0))
    return 1.0 / (1.0 + u), u


def hill(log_conc: np.ndarray, bottom: float, top: float, log_ec50: float, slope: float) -> np.ndarray:
    """Four-parameter logistic on log10 concentration: `bottom` at low dose, `top` at high dose."""
    return bottom + (top - bottom) * _rise(log_conc, log_ec50, slope)[0]


def _hill_jacobian(log_conc: np.ndarray, bottom: float, top: float, log_ec50: float,
                   slope: float) -> np.ndarray:
    """Analytic d hill / d (bottom, top, log_ec50, slope): ~10x fewer evaluations than finite differences."""
    x = np.asarray(log_conc, np.float64)
    g, u = _rise(x, log_ec50, slope)
    common = -(top - bottom) * g * g * u * np.log(10.0)
    return np.stack([1.0 - g, g, common * slope, common * (log_ec50 - x)], axis=1)


@dataclasses.dataclass(frozen=True)
class HillFit:
    """A dose-response fit; `status` is 'ok' or why the curve has no trustworthy EC50.

    Concentrations are µM; pEC50 = -log10(EC50 in mol/L). emax is the fitted top (the score at saturating
    dose); for a falling curve it is below `bottom`.
    """

    bottom: float
    top: float
    ec50_uM: float
    hill_slope: float
    r2: float
    status: str  # ok | flat | no_convergence | ec50_out_of_range | too_few_doses

    @property
    def failed(self) -> bool:
        return self.status != "ok"

    @property
    def pec50(self) -> float:
        return 6.0 - float(np.log10(self.ec50_uM))

    @property
    def emax(self) -> float:
        return self.top


MIN_DOSES = 4  # four parameters need at least four distinct concentrations


def fit_hill(log_conc: np.ndarray, response: np.ndarray, *, flat_threshold: float = 0.25,
             flat_p: float = 0.05, max_slope: float = 10.0, max_nfev: int = 400) -> HillFit:
    """Least-squares 4PL fit with bounds; never raises on data: a bad curve comes back with a status.

    Bounds: EC50 within one decade of the tested range, slope in [0.1, max_slope] (the sign of the effect
    lives in top - bottom), asymptotes within [-5, 5] score units. A curve whose fitted amplitude
    |top - bottom| is below `flat_threshold` (score units; the C- to C+ gap is 2) is 'flat': it has no
    EC50, and so is one the data cannot tell from a constant (extra-sum-of-squares F-test of the 4PL
    against the mean, p > `flat_p`, when there are more points than parameters): four parameters fit to
    noise always find some sigmoid. Pure noise can also leave the optimiser wandering along the flat
    ridge of (EC50, slope): a fit that does not converge within `max_nfev` evaluations is 'flat' when a
    one-way ANOVA finds no difference between doses (p > `flat_p`), else 'no_convergence'. An EC50 pinned
    to a bound is 'ec50_out_of_range'. Parameters are reported whenever a fit exists.
    """
    x, y = np.asarray(log_conc, np.float64), np.asarray(response, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    nan = float("nan")
    doses = np.unique(x)
    if len(doses) < MIN_DOSES:
        return HillFit(nan, nan, nan, nan, nan, "too_few_doses")
    lo, hi = doses[0] - 1.0, doses[-1] + 1.0
    p0 = [y[x == doses[0]].mean(), y[x == doses[-1]].mean(), float(np.median(doses)), 1.0]
    bounds = ([-5.0, -5.0, lo, 0.1], [5.0, 5.0, hi, max_slope])
    p0 = np.clip(p0, np.add(bounds[0], 1e-6), np.subtract(bounds[1], 1e-6))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(hill, x, y, p0=p0, bounds=bounds, jac=_hill_jacobian,
                                            x_scale="jac", max_nfev=max_nfev)
    except (RuntimeError, ValueError):
        groups = [y[x == d] for d in doses]
        p = stats.f_oneway(*groups).pvalue if all(len(g) > 1 for g in groups) else np.nan
        return HillFit(nan, nan, nan, nan, nan, "flat" if p > flat_p else "no_convergence")
    bottom, top, log_ec50, slope = (float(v) for v in params)
    residual = np.sum((y - hill(x, *params)) ** 2)
    total = np.sum((y - y.mean()) ** 2)
    r2 = float(1.0 - residual / total) if total > 0 else nan
    if not np.all(np.isfinite(params)):
        status = "no_convergence"
    elif abs(top - bottom) < flat_threshold or _no_better_than_constant(residual, total, len(y)) > flat_p:
        status = "flat"
    elif min(log_ec50 - lo, hi - log_ec50) < 1e-3 * (hi - lo):
        status = "ec50_out_of_range"
    else:
        status = "ok"
    ec50 = 10.0 ** log_ec50 if status != "flat" else nan
    return HillFit(bottom, top, ec50, slope, r2, status)


def _no_better_than_constant(residual: float, total: float, n: int, num_params: int = 4) -> float:
    """p-value of the F-test of a fitted curve against a constant; 0 when it cannot be computed."""
    dof = n - num_params
    if dof < 1 or total <= 0:
        return 0.0
    if residual <= 0:
        return 0.0
    f = ((total - residual) / (num_params - 1)) / (residual / dof)
    return float(stats.f.sf(f, num_params - 1, dof))


def curve_auc(log_conc: np.ndarray, means: np.ndarray) -> float:
    """Area between the mean-score curve and the C- level (-1) over the tested log10 range, per decade.

    Fit-free, so defined for every compound with two or more doses: 0 = no rescue at any dose, 2 = full
    rescue at every dose.
    """
    order = np.argsort(log_conc)
    x, y = np.asarray(log_conc)[order], np.asarray(means)[order] + 1.0
    if len(x) < 2 or x[-1] == x[0]:
        return float("nan")
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def toxic_drop(means: np.ndarray, sems: np.ndarray, threshold: float = 0.5) -> bool:
    """True when the score peaks below the top dose and then falls by more than `threshold` (and 2 SEM).

    That shape — rescue, then loss at the highest doses — is what cytotoxicity does to an antiviral
    readout; such compounds should not be ranked on their top-dose value alone.
    """
    means = np.asarray(means, np.float64)
    peak = int(np.nanargmax(means))
    if peak == len(means) - 1:
        return False
    drop = means[peak] - means[-1]
    noise = 2.0 * np.sqrt(np.nansum([np.asarray(sems)[peak] ** 2, np.asarray(sems)[-1] ** 2]))
    return bool(drop > max(threshold, noise))


def hit_table(wells: pd.DataFrame, *, flat_threshold: float = 0.25,
              toxic_threshold: float = 0.5) -> pd.DataFrame:
    """One row per compound x cell line: best dose, Hill fit, AUC, flags, and the rank within the line.

    Ranked by the best mean efficacy score over the tested doses (fit-free, so a flat or one-dose compound
    still gets a place); `hit` is True when that mean minus its SEM is above the 0 threshold.
    """
    rows = []
    curves = dose_response(wells)
    for (treatment, line), curve in curves.groupby(["treatment", "cell_type"], sort=True):
        points = wells[(wells["treatment"] == treatment) & (wells["cell_type"] == line)]
        fit = fit_hill(np.log10(points["treatment_conc"]), points["score"], flat_threshold=flat_threshold)
        best = int(np.argmax(curve["mean"].to_numpy()))
        best_sem = curve["sem"].iloc[best]
        rows.append(dict(
            treatment=treatment, cell_type=line, n_doses=len(curve), max_score=curve["mean"].iloc[best],
            sem_at_max=best_sem, conc_at_max_uM=curve["treatment_conc"].iloc[best],
            auc=curve_auc(curve["log10_conc"].to_numpy(), curve["mean"].to_numpy()),
            ec50_uM=fit.ec50_uM, pec50=fit.pec50 if np.isfinite(fit.ec50_uM) else np.nan, emax=fit.emax,
            bottom=fit.bottom, hill_slope=fit.hill_slope, r2=fit.r2, fit_status=fit.status,
            fit_failed=fit.failed,
            toxic_drop=toxic_drop(curve["mean"].to_numpy(), curve["sem"].to_numpy(), toxic_threshold),
            hit=bool(curve["mean"].iloc[best] - np.nan_to_num(best_sem) > 0.0)))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["rank"] = table.groupby("cell_type")["max_score"].rank(ascending=False, method="first").astype(int)
    return table.sort_values(["cell_type", "rank"]).reset_index(drop=True)


def truth_agreement(curves: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Spearman correlation of mean scores with a synthetic screen's hidden efficacy (dose points).

    For `gandl.data.synthetic` screens only: `truth` is their truth.csv. Also reports the correlation of
    each compound's best score with its hidden efficacy at the top dose.
    """
    from gandl.data.synthetic import hidden_efficacy

    hidden = np.array([hidden_efficacy(truth, r.treatment, r.cell_type, r.treatment_conc)
                       for r in curves.itertuples()])
    per_dose = stats.spearmanr(curves["mean"], hidden).statistic
    best = curves.assign(hidden=hidden).groupby(["treatment", "cell_type"])[["mean", "hidden"]].max()
    per_compound = stats.spearmanr(best["mean"], best["hidden"]).statistic
    return dict(spearman_dose=float(per_dose), spearman_compound=float(per_compound), n_points=len(curves),
                n_compounds=len(best))
