"""Efficacy scores, dose-response tables, four-parameter Hill fits, and agreement with a known truth.

Efficacy score: the on-perturbation value re-anchored per cell line so that the mean disease control (C-)
sits at -1 and the mean healthy control (C+) at +1; 0 is the efficacy threshold. Anchoring per cell line
removes the offset between HRCE and VERO on the shared axis.

Aggregation: sites are summarised into wells first, because the well is the replicate (sites of one well
share its compound dispensing, virus dose and seeding); per concentration the table reports the mean,
the SEM and n over wells. Hill curves are fitted on the well-level points, all curves of a screen at once
(`fit_hills`). The hit calls themselves live in `gandl.analysis.hits`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics

from gandl.analysis.io import control_role
from gandl.data.synthetic.truth import hidden_efficacy, hidden_toxicity

WELL_KEYS = ["perturbation", "group", "dose"]  # one dose point of one curve


def _anchored(on: np.ndarray, rows: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray | str:
    """`on[rows]` mapped so that mean(on[neg]) = -1 and mean(on[pos]) = +1, or the reason it cannot be."""
    if not pos.any() or not neg.any():
        return f"no {' or '.join(r for r, v in (('C+', pos), ('C-', neg)) if not v.any())} control sites"
    gap = on[pos].mean() - on[neg].mean()
    if not abs(gap) > 1e-12:
        return "C+ and C- controls have the same mean on-perturbation value"
    return -1.0 + 2.0 * (on[rows] - on[neg].mean()) / gap


def efficacy_scores(on: np.ndarray, metadata: pd.DataFrame) -> tuple[np.ndarray, dict[str, str]]:
    """Per-site efficacy scores and the cell lines that could not be scored (line -> reason).

    Within each cell line the affine map a*on + b puts mean(C-) at -1 and mean(C+) at +1. A line
    without both control kinds, or whose controls coincide on the axis, gets NaN scores and is listed.
    """
    on = np.asarray(on, np.float64)
    role = control_role(metadata).to_numpy()
    line = metadata["group"].astype(str).to_numpy()
    scores = np.full(len(on), np.nan)
    skipped = {}
    for name in pd.unique(line):
        rows = line == name
        value = _anchored(on, rows, rows & (role == "C+"), rows & (role == "C-"))
        if isinstance(value, str):
            skipped[str(name)] = value
        else:
            scores[rows] = value
    return scores, skipped


def crossfit_efficacy(decisions: np.ndarray, fold: np.ndarray, metadata: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Efficacy scores from cross-fitted axes (`classify.crossfit_decision`), and notes on what was not held out.

    `decisions[:, k]` is fold k's model's decision value for every row, `fold` the model that scores each
    row (the one that never saw its plate). Within each fold and cell line the anchors are the means of that
    fold's held-out control sites, scored like the treated wells beside them: no anchor, no score and no
    reference a hit is tested against comes from a model fitted on it. Where the held-out plates lack a
    control kind, its anchor comes from the fold's training controls (their scores are inflated by the
    fit, which only rescales the line's scores; noted); a line with neither kind is not scored (noted).
    """
    role = control_role(metadata).to_numpy()
    line = metadata["group"].astype(str).to_numpy()
    scores = np.full(len(fold), np.nan)
    notes = []
    for k in np.unique(fold):
        own, held = np.asarray(decisions[:, k], np.float64), fold == k
        source = "every control site" if k == decisions.shape[1] - 1 else "its training plates"
        for name in pd.unique(line[held]):
            rows = held & (line == name)
            anchors = []
            for kind in ("C+", "C-"):
                chosen = rows & (role == kind)
                if not chosen.any() and ((line == name) & (role == kind)).any():
                    chosen = (line == name) & (role == kind)
                    notes.append(f"efficacy: model {k}, cell line {name}: no {kind} sites on its held-out plates, "
                                 f"the {kind} anchor comes from {source}")
                anchors.append(chosen)
            value = _anchored(own, rows, *anchors)
            if isinstance(value, str):
                notes.append(f"efficacy: model {k}, cell line {name}: not scored ({value})")
            else:
                scores[rows] = value
    return scores, notes


def dose_response(wells: pd.DataFrame) -> pd.DataFrame:
    """Per compound x cell line x concentration: mean score, SEM and n over wells (SEM NaN when n = 1)."""
    out = (wells.groupby(WELL_KEYS, sort=True)
           .agg(mean=("score", "mean"), sd=("score", "std"), n=("score", "size"), n_sites=("n_sites", "sum"))
           .reset_index())
    out.insert(3, "log10_conc", np.log10(out["dose"]))
    out["sem"] = out["sd"] / np.sqrt(out["n"])
    return out.drop(columns="sd")[["perturbation", "group", "dose", "log10_conc", "mean", "sem",
                                   "n", "n_sites"]]


def _rise(log_conc: np.ndarray, log_ec50, slope) -> tuple[np.ndarray, np.ndarray]:
    """(g, u): the logistic fraction g = 1 / (1 + u) of the way from bottom to top, u = 10^((ec50 - x) s)."""
    u = np.power(10.0, np.clip((log_ec50 - np.asarray(log_conc, np.float64)) * slope, -60.0, 60.0))
    return 1.0 / (1.0 + u), u


def hill(log_conc: np.ndarray, bottom, top, log_ec50, slope) -> np.ndarray:
    """Four-parameter logistic on log10 concentration: `bottom` at low dose, `top` at high dose.

    Parameters broadcast against `log_conc` (scalars, or [C, 1] columns for a [C, D] dose grid).
    """
    return bottom + (top - bottom) * _rise(log_conc, log_ec50, slope)[0]


def _hill_jacobian(log_conc: np.ndarray, bottom, top, log_ec50, slope) -> np.ndarray:
    """Analytic d hill / d (bottom, top, log_ec50, slope), stacked on a new last axis."""
    x = np.asarray(log_conc, np.float64)
    g, u = _rise(x, log_ec50, slope)
    common = -(top - bottom) * g * g * u * np.log(10.0)
    return np.stack(np.broadcast_arrays(1.0 - g, g, common * slope, common * (log_ec50 - x)), axis=-1)


MIN_DOSES = 4  # four parameters need at least four distinct concentrations
HILL_COLUMNS = ["bottom", "top", "ec50_uM", "pec50", "hill_slope", "r2", "fit_status"]


def _hill_at(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """hill on a [C, D] grid for [C, 4] parameters."""
    return hill(x, *(theta[:, k, None] for k in range(4)))


def _least_squares(x: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray, lower: np.ndarray,
                   upper: np.ndarray, max_iter: int, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Batched bounded Levenberg-Marquardt: min over theta of sum_d w (y - hill(x, theta))^2, per row.

    x, y, w: [C, D] (w = 0 on padding); theta, lower, upper: [C, 4]. Marquardt's diagonal scaling plays
    the role of curve_fit's x_scale='jac'; a parameter on a bound whose gradient points outward is held
    there for the step (active set), every other step is projected back into the box. A curve stops when
    a step lowers its cost by less than `tol` relatively or moves it by less than `tol` (curve_fit's ftol /
    xtol); each iteration works on the curves still running. Returns (theta, converged).
    """
    theta, sw = theta.copy(), np.sqrt(w)
    residual = sw * (y - _hill_at(x, theta))
    cost = np.sum(residual ** 2, axis=1)
    damping = np.full(len(theta), 1e-3)
    converged = np.zeros(len(theta), bool)
    running = np.arange(len(theta))
    for _ in range(max_iter):
        if not running.size:
            break
        th, lo, hi, r = theta[running], lower[running], upper[running], residual[running]
        jac = sw[running, :, None] * _hill_jacobian(x[running], *(th[:, k, None] for k in range(4)))
        grad = np.einsum("cdk,cd->ck", jac, r)  # descent direction of the cost: J^T r
        held = ((th <= lo) & (grad < 0)) | ((th >= hi) & (grad > 0))
        free = ~held
        normal = np.einsum("cdk,cdl->ckl", jac, jac) * (free[:, :, None] & free[:, None, :])
        diag = np.maximum(np.diagonal(normal, axis1=1, axis2=2), 1e-12)
        system = normal + (damping[running, None] * diag + held)[:, :, None] * np.eye(4)
        step = np.linalg.solve(system, np.where(free, grad, 0.0)[..., None])[..., 0]
        trial = np.clip(th + step, lo, hi)
        trial_residual = sw[running] * (y[running] - _hill_at(x[running], trial))
        trial_cost = np.sum(trial_residual ** 2, axis=1)
        better = trial_cost < cost[running]
        moved = np.linalg.norm(trial - th, axis=1)
        done = ((better & (cost[running] - trial_cost <= tol * cost[running]))
                | (moved <= tol * (tol + np.linalg.norm(th, axis=1))))
        accept = running[better]
        theta[accept], residual[accept], cost[accept] = trial[better], trial_residual[better], trial_cost[better]
        damping[running] = np.clip(np.where(better, damping[running] * 0.3, damping[running] * 10.0),
                                   1e-12, 1e12)
        converged[running[done]] = True
        running = running[~done]
    return theta, converged


def _dose_grid(curve: np.ndarray, log_conc: np.ndarray, response: np.ndarray,
               labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Points -> padded grid: per curve (row) and distinct dose (column) the dose, mean response and count.

    Least squares on the points equals count-weighted least squares on the dose means plus the points'
    sum of squares about their dose means (`within`), which is all a Hill fit, its F-test and the ANOVA
    need. Returns (x, mean, count, within, total) with `total` the points' sum of squares about their mean.
    """
    frame = pd.DataFrame({"curve": np.searchsorted(labels, curve), "x": log_conc, "y": response})
    frame = frame[np.isfinite(frame["x"]) & np.isfinite(frame["y"])]
    points = frame.groupby(["curve", "x"], sort=True)["y"].agg(["mean", "size", "var"]).reset_index()
    row, col = points["curve"].to_numpy(), points.groupby("curve").cumcount().to_numpy()
    shape = (len(labels), max(int(col.max()) + 1, 1) if len(col) else 1)
    x, mean, count = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    x[row, col], mean[row, col], count[row, col] = points["x"], points["mean"], points["size"]
    within = np.bincount(row, (points["var"].fillna(0.0) * (points["size"] - 1)).to_numpy(), len(labels))
    with np.errstate(invalid="ignore"):
        grand = np.sum(count * mean, axis=1) / np.sum(count, axis=1)
    total = within + np.sum(count * (mean - grand[:, None]) ** 2, axis=1)
    return x, mean, count, within, total


def fit_hills(curve: np.ndarray, log_conc: np.ndarray, response: np.ndarray, *, flat_threshold: float = 0.25,
              flat_p: float = 0.05, max_slope: float = 10.0, max_iter: int = 400) -> pd.DataFrame:
    """Bounded least-squares 4PL fits of every curve at once; never raises on data: a bad curve gets a status.

    `curve` labels each (log10 concentration, response) point; one row per distinct label (sorted) comes
    back with bottom, top, ec50_uM, pec50, hill_slope, r2 and fit_status: ok | flat | no_convergence |
    ec50_out_of_range | too_few_doses. Concentrations are µM; pEC50 = -log10(EC50 in mol/L); the fitted
    top is the score at saturating dose (below `bottom` for a falling curve).

    Bounds: EC50 within one decade of the tested range, slope in [0.1, max_slope] (the sign of the effect
    lives in top - bottom), asymptotes within [-5, 5] score units. A curve whose fitted amplitude
    ``|top - bottom|`` is below `flat_threshold` (score units; the C- to C+ gap is 2) is 'flat': it has no
    EC50, and so is one the data cannot tell from a constant (extra-sum-of-squares F-test of the 4PL
    against the mean, p > `flat_p`, when there are more points than parameters): four parameters fit to
    noise always find some sigmoid. Pure noise can also leave the optimiser wandering along the flat
    ridge of (EC50, slope): a fit that does not converge within `max_iter` iterations is 'flat' when a
    one-way ANOVA finds no difference between doses (p > `flat_p`, every dose with 2+ points), else
    'no_convergence', and gets no parameters. An EC50 pinned to a bound is 'ec50_out_of_range'.
    """
    labels = np.unique(np.asarray(curve))
    x, mean, count, within, total = _dose_grid(np.asarray(curve), np.asarray(log_conc, np.float64),
                                               np.asarray(response, np.float64), labels)
    out = pd.DataFrame(np.nan, index=pd.Index(labels, name="curve"), columns=HILL_COLUMNS)
    out["fit_status"] = "too_few_doses"
    doses = (count > 0).sum(axis=1)
    fit = np.flatnonzero(doses >= MIN_DOSES)
    if not fit.size:
        return out
    x, mean, count, within, total, doses = x[fit], mean[fit], count[fit], within[fit], total[fit], doses[fit]
    present = count > 0
    first, last = x[:, 0], x[np.arange(len(fit)), doses - 1]
    lower = np.stack([np.full(len(fit), -5.0), np.full(len(fit), -5.0), first - 1.0, np.full(len(fit), 0.1)], 1)
    upper = np.stack([np.full(len(fit), 5.0), np.full(len(fit), 5.0), last + 1.0, np.full(len(fit), max_slope)], 1)
    start = np.stack([mean[:, 0], mean[np.arange(len(fit)), doses - 1],
                      np.nanmedian(np.where(present, x, np.nan), axis=1), np.ones(len(fit))], 1)
    start = np.clip(start, lower + 1e-6, upper - 1e-6)
    theta, converged = _least_squares(x, mean, count, start, lower, upper, max_iter)
    n = count.sum(axis=1)
    residual = within + np.sum(count * (mean - _hill_at(x, theta)) ** 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(total > 0, 1.0 - residual / total, np.nan)
        f = ((total - residual) / 3.0) / (residual / (n - 4))
        f_p = np.where((n > 4) & (total > 0) & (residual > 0), stats.f.sf(f, 3, n - 4), 0.0)
        anova = stats.f.sf(((total - within) / (doses - 1)) / (within / (n - doses)), doses - 1, n - doses)
    anova = np.where(np.all((count == 0) | (count >= 2), axis=1), anova, np.nan)
    bottom, top, log_ec50, slope = theta.T
    span = upper[:, 2] - lower[:, 2]
    status = np.select(
        [~converged & (anova > flat_p), ~converged,
         (np.abs(top - bottom) < flat_threshold) | (f_p > flat_p),
         np.minimum(log_ec50 - lower[:, 2], upper[:, 2] - log_ec50) < 1e-3 * span],
        ["flat", "no_convergence", "flat", "ec50_out_of_range"], "ok")
    theta[~converged] = np.nan
    ec50 = np.where(status == "flat", np.nan, 10.0 ** theta[:, 2])
    rows = labels[fit]
    out.loc[rows, ["bottom", "top", "hill_slope"]] = theta[:, [0, 1, 3]]
    out.loc[rows, "ec50_uM"], out.loc[rows, "pec50"] = ec50, 6.0 - np.log10(ec50)
    out.loc[rows, "r2"] = np.where(converged, r2, np.nan)
    out.loc[rows, "fit_status"] = status
    return out


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
    if not np.isfinite(means).any():
        return False
    peak = int(np.nanargmax(means))
    if peak == len(means) - 1:
        return False
    drop = means[peak] - means[-1]
    noise = 2.0 * np.sqrt(np.nansum([np.asarray(sems)[peak] ** 2, np.asarray(sems)[-1] ** 2]))
    return bool(drop > max(threshold, noise))


def simes(p: np.ndarray) -> float:
    """Simes' combination of p-values: min over i of n p_(i) / i (NaNs left out; NaN when none is finite).

    It tests "no dose has an effect" and stays valid under the positive dependence of doses that share plates
    and their references (Sarkar 1998), where Fisher's or Stouffer's independence would not.
    """
    return float(grouped_simes(np.asarray(p, np.float64), np.zeros(len(p), np.int64), 1)[0])


def grouped_simes(p: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """`simes` of each group's p-values at once (`group`: codes 0 .. groups - 1), for thousands of compounds."""
    finite = np.isfinite(p)
    p, group = np.asarray(p, np.float64)[finite], np.asarray(group)[finite]
    order = np.lexsort((p, group))
    p, group = p[order], group[order]
    n = np.bincount(group, minlength=groups)
    rank = np.arange(1, len(p) + 1) - (np.cumsum(n) - n)[group]
    out = np.full(groups, np.inf)
    np.minimum.at(out, group, p * n[group] / rank)
    return np.where(n > 0, out, np.nan)


ACTIVE_EFFICACY = 0.5  # hidden efficacy at which a compound is truly above the threshold (half-way to C+)


def _line_truth(best: pd.DataFrame, hits: pd.DataFrame | None) -> dict[str, Any]:
    """Agreement of one cell line's best-dose scores (`mean`) and hit calls with the hidden best-dose efficacy.

    Truly active: hidden efficacy >= ACTIVE_EFFICACY at some tested dose; inert: 0 at every dose (in between
    counts for neither AUROC class). The Spearman over all compounds is capped below 1 by the inert
    compounds' tie (`spearman_ceiling`: its value for scores in the truth's order with the ties broken).
    Precision alone hides which compounds the false hits are; a hit call fooled by dying cells calls toxic
    ones, so the false hits are named, and the hits with hidden `toxicity` > 0 at some tested dose too.
    """
    active, inert = best["hidden"] >= ACTIVE_EFFICACY, best["hidden"] == 0
    nan = float("nan")
    out = dict(spearman_compound=float(stats.spearmanr(best["mean"], best["hidden"]).statistic),
               spearman_ceiling=float(stats.spearmanr(best["hidden"], stats.rankdata(best["hidden"], "ordinal"))
                                      .statistic),
               auroc=nan, spearman_active=nan, precision=nan, recall=nan, n_active=int(active.sum()),
               n_inert=int(inert.sum()), false_hits=[], cytotoxic_hits=[])
    if active.any() and inert.any():
        out["auroc"] = float(metrics.roc_auc_score(np.r_[np.ones(active.sum()), np.zeros(inert.sum())],
                                                   np.r_[best.loc[active, "mean"], best.loc[inert, "mean"]]))
    if active.sum() >= 3:
        out["spearman_active"] = float(stats.spearmanr(best.loc[active, "mean"], best.loc[active, "hidden"])
                                       .statistic)
    if hits is not None and len(hits):
        called = set(hits.loc[hits["hit"], "perturbation"])
        true = set(best.index[active])
        out["precision"] = len(called & true) / len(called) if called else nan
        out["recall"] = len(called & true) / len(true) if true else nan
        out["false_hits"] = sorted(called - true)
        out["cytotoxic_hits"] = sorted(called & set(best.index[best["toxicity"] > 0]))
    out["n_cytotoxic_hits"] = len(out["cytotoxic_hits"])
    return out


def truth_agreement(curves: pd.DataFrame, truth: pd.DataFrame, hits: pd.DataFrame | None = None) -> dict[str, Any]:
    """How a feature set's scores and hits agree with a synthetic screen's hidden efficacy.

    For `gandl.data.synthetic` screens only: `truth` is their truth.csv, `curves` the dose-response table
    (mean score per compound x cell line x dose), `hits` the hit table. Pooled over cell lines: the Spearman
    of the dose points and of each compound's best (maximum over doses) mean score with its maximum hidden
    efficacy over the tested doses (the two maxima may sit at different doses). `per_line`, where the
    efficacy axis is anchored: that Spearman and its ceiling, the AUROC of the best-dose score for truly
    active against inert compounds, the Spearman among the truly active, the hits' precision and recall
    against the truly active, and the hits that are not truly active (`false_hits`) or are cytotoxic at a
    tested dose (`cytotoxic_hits`, `n_cytotoxic_hits`) by name (`_line_truth`).
    """
    hidden, toxicity = (np.array([fn(truth, r.perturbation, r.group, r.dose) for r in curves.itertuples()])
                        for fn in (hidden_efficacy, hidden_toxicity))
    scored = curves.assign(hidden=hidden, toxicity=toxicity)
    scored = scored[np.isfinite(scored["mean"].to_numpy(np.float64))]  # unscored: a fold without a clear C+ - C- gap
    if len(scored) < 3:
        return dict(spearman_dose=float("nan"), spearman_compound=float("nan"), n_points=len(scored),
                    n_compounds=0, per_line={})
    best = scored.groupby(["perturbation", "group"])[["mean", "hidden", "toxicity"]].max()
    per_line = {}
    for line, frame in best.groupby(level="group"):
        line_hits = None if hits is None else hits[hits["group"] == line]
        per_line[str(line)] = _line_truth(frame.droplevel("group"), line_hits)
    return dict(spearman_dose=float(stats.spearmanr(scored["mean"], scored["hidden"]).statistic),
                spearman_compound=float(stats.spearmanr(best["mean"], best["hidden"]).statistic),
                n_points=len(curves), n_compounds=len(best), per_line=per_line)
