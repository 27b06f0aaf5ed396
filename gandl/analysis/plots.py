"""The paper's figures as PNG bytes: E² controls (3), C² compounds (4), dose-response (5), confusion (6), mAP;
and the plate QC's plate maps and control drift.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so plotting
changes no global backend state and works headless; each function returns PNG bytes that the caller
writes atomically.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import cm, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from gandl.analysis.efficacy import hill

ROLE_COLOURS = {"C+": "#2ca02c", "C-": "#d62728", "other": "#ff7f0e"}  # other: untreated, neither control
BACKGROUND_POINTS = 5000  # grey reference points per panel: more only overlap, and cost drawing time
TICK_LABELS = 50  # at most this many plate names along a panel's axis: more overlap at the figure's width


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _legend_below(ax) -> None:
    """Legend under the axes: never covers points, and costs nothing to place ('best' scans every point)."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))


def _background_lines(ax, curves: Sequence[tuple[np.ndarray, np.ndarray]], colour: str) -> None:
    """Every other compound as a thin line, all in one artist: a screen's thousand compounds drawn one
    `plot` each took seconds per figure."""
    segments = [np.column_stack([x, y]) for x, y in curves if len(x)]
    if segments:
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=0.7, zorder=1), autolim=True)
        ax.autoscale_view()


def _panels(n: int, rows: int = 1, size: float = 4.0) -> tuple[Figure, np.ndarray]:
    cols = max(1, -(-n // rows))
    fig = Figure(figsize=(size * cols, size * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    return fig, axes


def controls_figure(coords: pd.DataFrame, threshold: float | None = None,
                    names: dict[str, str] | None = None) -> bytes:
    """Figure 3: control sites in the E² plane (on-perturbation x, off-perturbation y), one panel per line.

    `threshold` is the SVM boundary on the scaled on-axis, drawn as a dashed line; `names` says what the
    screen calls C+ and C- (its schema's control names) for the legend.
    """
    names = {"other": "other untreated", **(names or {})}
    lines = sorted(coords["group"].astype(str).unique())
    fig, axes = _panels(len(lines))
    for ax, line in zip(axes, lines):
        sub = coords[coords["group"] == line]
        for role, colour in ROLE_COLOURS.items():
            pts = sub[sub["role"] == role]
            if len(pts):
                label = f"{role} ({names[role]})" if role in ("C+", "C-") and role in names else names.get(role, role)
                ax.scatter(pts["on"], pts["off"], s=8, c=colour, alpha=0.6, label=f"{label} (n={len(pts)})")
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", lw=0.8)
        ax.set(title=f"{line} controls", xlabel="on-perturbation", ylabel="off-perturbation", xlim=(-1.05, 1.05))
        _legend_below(ax)
    return _png(fig)


def compounds_figure(coords: pd.DataFrame, compounds: Sequence[str]) -> bytes:
    """Figure 4: sites of the given compounds in the C² plane, coloured by log10 concentration.

    Rows are compounds, columns cell lines; the controls are drawn in grey behind for reference.
    """
    lines = sorted(coords["group"].astype(str).unique())
    treated = coords[coords["perturbation"].isin(compounds)]
    norm = colors.Normalize(*np.log10(treated["dose"].agg(["min", "max"]).to_numpy()))
    fig = Figure(figsize=(4.0 * len(lines) + 1, 3.6 * len(compounds)), layout="constrained")
    axes = fig.subplots(len(compounds), len(lines), squeeze=False)
    for row, compound in zip(axes, compounds):
        for ax, line in zip(row, lines):
            ctrl = coords[(coords["group"] == line) & coords["role"].isin(["C+", "C-"])]
            ctrl = ctrl.iloc[::max(1, -(-len(ctrl) // BACKGROUND_POINTS))]  # every k-th: 30k sites look the same
            ax.scatter(ctrl["on"], ctrl["off"], s=5, c="0.8", label="controls")
            pts = treated[(treated["perturbation"] == compound) & (treated["group"] == line)]
            ax.scatter(pts["on"], pts["off"], s=12, c=np.log10(pts["dose"]), cmap="viridis", norm=norm)
            ax.set(title=f"{compound} — {line}", xlabel="on-perturbation", ylabel="off-perturbation",
                   xlim=(-1.05, 1.05))
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes.ravel().tolist(),
                 label="log10 concentration (µM)")
    return _png(fig)


def dose_response_figure(curves: pd.DataFrame, hits: pd.DataFrame, highlight: Sequence[str],
                         top_k: int = 5) -> bytes:
    """Figure 5: efficacy score vs log10 concentration per cell line.

    Highlighted compounds and each line's top-k ranked compounds get colour, error bars (SEM) and their
    Hill curve where the fit is 'ok'; every other compound is a thin grey line.
    """
    lines = sorted(curves["group"].astype(str).unique())
    fig, axes = _panels(len(lines), size=5.0)
    for ax, line in zip(axes, lines):
        line_hits = hits[hits["group"] == line]
        chosen = list(dict.fromkeys([c for c in highlight if c in set(line_hits["perturbation"])]
                                    + line_hits.nsmallest(top_k, "rank")["perturbation"].tolist()))
        palette = cm.tab10(np.linspace(0, 1, 10))
        _background_lines(ax, [(curve["log10_conc"].to_numpy(np.float64), curve["mean"].to_numpy(np.float64))
                               for treatment, curve in curves[curves["group"] == line].groupby("perturbation")
                               if treatment not in chosen], "0.75")
        for i, treatment in enumerate(chosen):
            curve = curves[(curves["group"] == line) & (curves["perturbation"] == treatment)]
            fit = line_hits[line_hits["perturbation"] == treatment].iloc[0]
            colour = palette[i % 10]
            ax.errorbar(curve["log10_conc"], curve["mean"], yerr=curve["sem"].fillna(0), fmt="o", ms=4,
                        color=colour, capsize=2, label=f"{treatment} ({fit['fit_status']})", zorder=3)
            if fit["fit_status"] == "ok":
                x = np.linspace(curve["log10_conc"].min(), curve["log10_conc"].max(), 100)
                y = hill(x, fit["bottom"], fit["emax"], np.log10(fit["ec50_uM"]), fit["hill_slope"])
                ax.plot(x, y, color=colour, lw=1.5, zorder=2)
        for level, style in ((1.0, ":"), (0.0, "--"), (-1.0, ":")):
            ax.axhline(level, color="k", ls=style, lw=0.8)
        ax.set(title=f"{line}: dose-response", xlabel="log10 concentration (µM)",
               ylabel="efficacy score (C- = -1, C+ = +1)")
        _legend_below(ax)
    return _png(fig)


def confusion_figure(confusion: pd.DataFrame, title: str = "Zero-shot cell typing") -> bytes:
    """Figure 6: row-normalised confusion matrix (true cell type by row) annotated with counts."""
    counts = confusion.to_numpy()
    fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(1.2 * len(confusion) + 2.5, 1.1 * len(confusion) + 1.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, f"{n}\n{fractions[i, j]:.0%}", ha="center", va="center", fontsize=8,
                color="white" if fractions[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(confusion.columns)), xticklabels=confusion.columns, yticks=range(len(confusion)),
           yticklabels=confusion.index, xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    return _png(fig)


def map_dose_figure(activity: pd.DataFrame, highlight: Sequence[str]) -> bytes:
    """Phenotypic activity (mAP vs C-) against log10 concentration per cell line.

    Highlighted compounds get colour, filled markers where active (q below the threshold) and open ones
    where not; every other compound is a thin grey line, so the highlighted ones read against the screen.
    """
    lines = sorted(activity["group"].astype(str).unique())
    fig, axes = _panels(len(lines), size=5.0)
    palette = cm.tab10(np.linspace(0, 1, 10))
    for ax, line in zip(axes, lines):
        rows = activity[activity["group"] == line].sort_values("dose")
        chosen = [c for c in dict.fromkeys(highlight) if c in set(rows["perturbation"])]
        _background_lines(ax, [(np.log10(curve["dose"].to_numpy(np.float64)),
                                curve["mAP"].to_numpy(np.float64))
                               for treatment, curve in rows.groupby("perturbation") if treatment not in chosen], "0.8")
        for i, treatment in enumerate(chosen):
            curve = rows[rows["perturbation"] == treatment]
            x, colour = np.log10(curve["dose"]), palette[i % 10]
            ax.plot(x, curve["mAP"], color=colour, lw=1.5, label=treatment, zorder=2)
            active = curve["active"].to_numpy(bool)
            ax.scatter(x[active], curve["mAP"][active], color=colour, s=25, zorder=3)
            ax.scatter(x[~active], curve["mAP"][~active], facecolors="white", edgecolors=colour, s=25, zorder=3)
        ax.set(title=f"{line}: phenotypic activity (filled: q < threshold)", xlabel="log10 concentration (µM)",
               ylabel="mAP against C- wells", ylim=(-0.02, 1.02))
        if chosen:
            _legend_below(ax)
    return _png(fig)


def probe_curve_figure(table: pd.DataFrame) -> bytes:
    """The probe over training: accuracy against images seen, one panel per task, one line per feature set.

    `table` holds gandl.probe's rows (images_seen, label, reference_label, reference_accuracy, task,
    accuracy); each feature set's random-init reference is a dashed line of the same colour.
    """
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = _panels(len(tasks), rows=1 if len(tasks) < 4 else max(2, -(-len(tasks) // 5)), size=4.0)
    palette = cm.tab10(np.linspace(0, 1, 10))
    for ax, task in zip(axes, tasks):
        rows = table[table["task"] == task]
        for i, (label, curve) in enumerate(rows.groupby("label", sort=False)):
            curve = curve.sort_values("images_seen")
            ax.plot(curve["images_seen"], curve["accuracy"], "o-", ms=3, color=palette[i % 10], label=label)
            reference = curve["reference_accuracy"].dropna()
            if len(reference):
                ax.axhline(reference.iloc[-1], color=palette[i % 10], ls="--", lw=1,
                           label=curve["reference_label"].iloc[-1])
        ax.set(title=task, xlabel="images seen", ylabel="plate-held-out accuracy", ylim=(0, 1.02))
        _legend_below(ax)
    for ax in axes[len(tasks):]:
        ax.set_axis_off()
    return _png(fig)


def probe_gap_figure(spread: pd.DataFrame, by: Sequence[str] = ()) -> bytes:
    """The probe's gap to the random-init reference over training, over runs: one row of panels per setting
    of the `by` columns, one panel per task, one line per feature set (mean over runs) in its min–max band.

    `spread` is gandl.analysis.probe_table.gap_spread's table. Above zero on the band's lower edge: training
    beat the same extractor on a random discriminator on every run at that step.
    """
    settings = list(spread.groupby(list(by), sort=False)) if by else [((), spread)]
    tasks = list(dict.fromkeys(spread["task"]))
    fig = Figure(figsize=(3.6 * len(tasks), 3.4 * len(settings) + 0.6), layout="constrained")
    axes = fig.subplots(len(settings), len(tasks), squeeze=False, sharey=True)
    palette = cm.tab10(np.linspace(0, 1, 10))
    for row, (key, here) in zip(axes, settings):
        name = ", ".join(f"{f}={v}" for f, v in zip(by, key))
        for ax, task in zip(row, tasks):
            for i, (label, curve) in enumerate(here[here["task"] == task].groupby("label", sort=False)):
                curve = curve.sort_values("images_seen")
                colour = palette[i % 10]
                ax.fill_between(curve["images_seen"], curve["gap_min"], curve["gap_max"], color=colour, alpha=0.2)
                ax.plot(curve["images_seen"], curve["gap_mean"], "o-", ms=3, color=colour,
                        label=f"{label} − {curve['reference_label'].iloc[0]} ({curve['runs'].max()} runs)")
            ax.axhline(0.0, color="0.3", lw=0.8)
            ax.set_title(task, fontsize=9)
            ax.set_xlabel("images seen")
        row[0].set_ylabel("\n".join([*textwrap.wrap(name, 40), "accuracy − random-init reference"]), fontsize=8)
        if row[0].has_data():
            _legend_below(row[0])
    return _png(fig)


def plate_maps_figure(wells: pd.DataFrame, value: str, label: str, shape: tuple[int, int], cmap: str = "coolwarm",
                      centre: float | None = None) -> bytes:
    """Small multiples of plate layouts: one tile per plate (`plate_id`, in the order given), each well (zero-based
    `row`, `col`) coloured by `value` on one scale for all tiles (2nd to 98th percentile, symmetric about `centre`
    when given), so a plate's edge ring or gradient reads against its neighbours.

    The tiles are one mosaic image on one axes: a screen's hundred plates as a hundred axes took most of the
    analysis' drawing time."""
    names = list(dict.fromkeys(wells["plate_id"]))
    finite = wells[value].to_numpy(np.float64)
    finite = finite[np.isfinite(finite)]
    low, high = np.percentile(finite, [2, 98]) if len(finite) else (0.0, 1.0)
    if centre is not None:
        half = max(abs(low - centre), abs(high - centre)) or 1.0
        low, high = centre - half, centre + half
    norm = colors.Normalize(low, high)
    cols = min(6, len(names))
    rows = -(-len(names) // cols)
    (h, w), gap, title = shape, max(2, shape[1] // 8), max(3, shape[0] // 4)  # gaps in wells: room for the names
    mosaic = np.full((rows * (h + title), cols * (w + gap)), np.nan)
    tile = pd.Series(np.arange(len(names)), index=names)[wells["plate_id"]].to_numpy()
    mosaic[tile // cols * (h + title) + title + wells["row"].to_numpy(),
           tile % cols * (w + gap) + wells["col"].to_numpy()] = wells[value].to_numpy(np.float64)
    fig = Figure(figsize=(2.2 * cols + 1.2, 1.9 * rows + 0.4))
    ax = fig.add_axes([0.02, 0.02, 0.84, 0.96])
    ax.imshow(mosaic, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
    for i, name in enumerate(names):
        ax.text(i % cols * (w + gap) + w / 2 - 0.5, i // cols * (h + title) + title - 1, name, fontsize=7,
                ha="center", va="bottom")
    # Row A at the top and column 1 on the left of every tile; the first tile names its corners.
    ax.text(-1, title, "A", fontsize=6, ha="right", va="center")
    ax.text(-1, title + h - 1, chr(64 + h) if h <= 26 else str(h), fontsize=6, ha="right", va="center")
    for col in (0, w - 1):
        ax.text(col, title + h - 0.5, str(col + 1), fontsize=6, ha="center", va="top")
    ax.set_axis_off()
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), cax=fig.add_axes([0.89, 0.1, 0.02, 0.8]), label=label)
    return _png(fig)


def drift_figure(drift: pd.DataFrame, names: dict[str, str] | None = None) -> bytes:
    """Control medians per plate in acquisition order, one panel per cell line: C+ and C- (`qc.drift_table`), the
    plates that drifted ringed, dotted lines between experiments."""
    names = names or {}
    lines = sorted(drift["group"].astype(str).unique())
    fig = Figure(figsize=(6.0 * len(lines), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(lines), squeeze=False).ravel())
    for ax, line in zip(axes, lines):
        rows = drift[drift["group"] == line].sort_values("order")
        x, flagged = np.arange(len(rows)), rows["drift"].to_numpy(bool)
        for role, prefix in (("C+", "pos"), ("C-", "neg")):
            y = rows[f"{prefix}_median"].to_numpy(np.float64)
            ax.plot(x, y, "o-", ms=4, color=ROLE_COLOURS[role], label=f"{role} ({names.get(role, role)})")
            ax.scatter(x[flagged], y[flagged], s=120, facecolors="none", edgecolors="k")
        experiment = rows["experiment"].astype(str).to_numpy()
        for boundary in np.flatnonzero(experiment[1:] != experiment[:-1]) + 0.5:
            ax.axvline(boundary, color="0.6", ls=":", lw=0.8)
        every = max(1, -(-len(x) // TICK_LABELS))
        ax.set_xticks(x[::every], rows["plate_id"].iloc[::every], rotation=90, fontsize=6)
        ax.set(title=f"{line} (ringed: drifted)", ylabel="control median (efficacy score of wells)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    return _png(fig)
