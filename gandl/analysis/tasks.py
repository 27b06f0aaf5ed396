"""The analysis tasks, as lists the report iterates over: each turns one feature set into tables and figures.

A task is a function `(Inputs) -> Result` plus an entry in `SCREEN_TASKS` or `ZEROSHOT_TASKS`; adding an
analysis is one function and one entry. A task that cannot run on the data (no honest held-out split, a
class in one group, no controls, too few doses) raises, and the report records it as skipped with the
reason, running every other task; tasks that need a skipped one are skipped too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from gandl import defaults
from gandl.analysis import activity, classify, efficacy, hits, io, markup, plates, plots, qc, spaces, zeroshot
from gandl.analysis.io import JoinError, aggregate_wells, align
from gandl.analysis.markup import Block
from gandl.data.screen import ScreenSchema
from gandl.data.wells import plate_shape

# Control-site features of one cross-validation fold's extractor, their metadata, and the groups it held out.
FoldSet = tuple[np.ndarray, pd.DataFrame, Sequence[str]]


@dataclasses.dataclass(frozen=True)
class AnalysisConfig(defaults.Analysis):
    """Settings of the analysis: the schema's `gandl.defaults.Analysis` (fields, defaults, rules, checked on
    construction), with the well aggregate of the embed section (the analysis stage passes `embed.well_aggregate`)."""

    well_aggregate: str = defaults.setting_of(defaults.Embed, "well_aggregate")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a task sees: one feature set (normalised, at the configured level) and the earlier tasks' values."""

    features: np.ndarray
    metadata: pd.DataFrame
    config: AnalysisConfig
    folder: str  # the feature set's folder, relative to the report (figure links)
    earlier: dict[str, dict[str, Any]]  # task name -> Result.values of the tasks run before
    truth: pd.DataFrame | None = None
    sites: tuple[np.ndarray, pd.DataFrame] | None = None  # the raw site-level features: steps fitted per fold
    fold_sets: Sequence[FoldSet] | None = None  # per-fold control features of a label-fitted extractor
    unfitted: np.ndarray | None = None  # `features` before any step fitted on labels (cross-fitted steps)
    schema: ScreenSchema = io.default_schema()  # the screen's columns and controls (names in legends)
    draw: bool = True  # False: numbers only, no figures (a calibration analyses thousands of screens)
    _wells: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def wells(self, features: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
        """`aggregate_wells` of `features` (rows of `metadata`) by the configured statistic, once per array: the
        hit path's off-axis distances and the mAP profiles read the same wells of a screen."""
        if id(features) not in self._wells:  # the array is kept with its wells, so its id is not reused
            self._wells[id(features)] = features, aggregate_wells(features, self.metadata, self.config.well_aggregate)
        return self._wells[id(features)][1]


@dataclasses.dataclass
class Result:
    tables: dict[str, tuple[pd.DataFrame, bool]] = dataclasses.field(default_factory=dict)  # stem -> (table, index)
    figures: dict[str, bytes] = dataclasses.field(default_factory=dict)  # file name -> PNG
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # side-by-side rows: metric -> value
    blocks: list[Block] = dataclasses.field(default_factory=list)  # the task's part of the report
    notes: list[str] = dataclasses.field(default_factory=list)
    values: dict[str, Any] = dataclasses.field(default_factory=dict)  # for later tasks and notebooks


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    title: str  # the side-by-side row of a skipped task
    run: Callable[[Inputs], Result]
    needs: tuple[str, ...] = ()  # tasks whose values this one reads


def _control_names(schema: ScreenSchema) -> dict[str, str]:
    return {"C+": schema.positive_name, "C-": schema.negative_name}


def _common(config: AnalysisConfig) -> dict:
    return dict(c=config.c, seed=config.seed)


def _fold_features(fold_sets: Sequence[FoldSet], metadata: pd.DataFrame) -> tuple[list[np.ndarray], list]:
    """Per-fold features aligned to `metadata`'s rows (by site_id), and the groups each fold's model held out."""
    features, held_out = [], []
    for k, (f, meta, groups) in enumerate(fold_sets):
        try:
            features.append(align(f, meta["site_id"], metadata)[0])
        except JoinError as e:
            raise JoinError(f"per-fold features of fold {k} do not cover the screen's control sites: {e}") from e
        held_out.append(tuple(groups))
    return features, held_out


def controls_task(inp: Inputs) -> Result:
    """Table 1: C+ vs C-, cell line, and C+ vs C- within each line, by plate-held-out linear SVMs.

    Computed from the raw control sites so that every fitted step (TVN whitening, scaling, the SVM) is
    fitted on the training folds only; per-plate centring uses each plate's own controls, labels unused.
    """
    cfg = inp.config
    features, metadata = inp.sites
    controls = classify.control_mask(metadata)
    ctrl_meta = metadata[controls].reset_index(drop=True)

    def plate_step(f: np.ndarray) -> np.ndarray:
        return classify.plate_normalize(f, ctrl_meta, cfg.normalization)

    ctrl_x = plate_step(np.asarray(features)[controls])
    fold_x, held_out = (None, None) if inp.fold_sets is None else _fold_features(inp.fold_sets, ctrl_meta)
    fold_x = None if fold_x is None else [plate_step(f) for f in fold_x]
    table_meta = ctrl_meta
    if cfg.level == "well":
        ctrl_x, table_meta = aggregate_wells(ctrl_x, ctrl_meta, cfg.well_aggregate)
        fold_x = None if fold_x is None else [aggregate_wells(f, ctrl_meta, cfg.well_aggregate)[0] for f in fold_x]
    table1 = classify.classify_controls(ctrl_x, table_meta, n_splits=cfg.n_splits, group_by=cfg.group_by,
                                        whiten=cfg.normalization == "tvn", fold_features=fold_x,
                                        fold_held_out=held_out, **_common(cfg))
    summary = {f"{r.task}: {metric}": getattr(r, metric) for r in table1.itertuples()
               for metric in ("accuracy", "balanced_accuracy", "roc_auc")}
    out = Result(tables={"table1_controls": (table1, False)}, summary=summary,
                 blocks=[("heading", 3, "Table 1: control classification"), ("table", table1, False)],
                 notes=[f"Table 1: {r.task}: {r.status}" for r in table1.itertuples() if r.status != "ok"],
                 values=dict(table1=table1))
    if cfg.few_labels:
        few = classify.classify_few_labels(ctrl_x, table_meta, cfg.few_labels, draws=cfg.few_label_draws,
                                           n_splits=cfg.n_splits, group_by=cfg.group_by,
                                           whiten=cfg.normalization == "tvn", label_fitted=fold_x is not None,
                                           **_common(cfg))
        out.tables["table1_few_labels"] = (few, False)
        out.summary.update({f"{r.task}: {metric} @ k={r.k}": getattr(r, metric) for r in few.itertuples()
                            for metric in ("accuracy", "roc_auc")})
        out.blocks += [("heading", 3, f"Table 1 with k labelled control wells per class (mean, sd over "
                                      f"{cfg.few_label_draws} draws)"), ("table", few, False)]
        out.notes += [f"Table 1 @ k={r.k}: {r.task}: {r.status}" for r in few.itertuples() if r.status != "ok"]
        out.values["table1_few_labels"] = few
    return out


def highlighted(inp: Inputs) -> list[str]:
    """The compounds the figures draw: the schema's highlights this screen holds, else each cell line's top
    `top_k` by best mean score (the hit table's ranks)."""
    present = set(inp.metadata["perturbation"].unique())
    chosen = [c for c in inp.schema.highlight if c in present]
    hits = inp.earlier.get("dose_response", {}).get("hits")
    if chosen or hits is None or not len(hits):
        return chosen
    return list(dict.fromkeys(hits.sort_values(["rank", "group"]).loc[lambda t: t["rank"] <= inp.config.top_k,
                                                                             "perturbation"]))


def add_figure(out: Result, inp: Inputs, file: str, title: str, draw: Callable[[], bytes]) -> None:
    """Draw one figure of a task, with its report block, unless the inputs ask for numbers only."""
    if inp.draw:
        out.figures[file] = draw()
        out.blocks.append(("figure", title, f"{inp.folder}/{file}"))


def spaces_task(inp: Inputs) -> Result:
    """E²/C² spaces: the on/off-perturbation axes of one SVM on all controls (descriptive figures)."""
    cfg = inp.config
    axes = spaces.fit_axes(inp.features, inp.metadata, **_common(cfg))
    coords = spaces.coordinates(inp.features, inp.metadata, axes)
    threshold = float(axes.scale_on(axes.threshold))
    out = Result(tables={"spaces": (coords, False)}, values=dict(axes=axes, coordinates=coords))
    add_figure(out, inp, "fig3_controls.png", "E² controls (axis fitted on all controls: descriptive)",
               lambda: plots.controls_figure(coords[coords["role"] != "treated"], threshold,
                                             _control_names(inp.schema)))
    present = highlighted(inp)
    if present:
        add_figure(out, inp, "fig4_compounds.png", "C² compounds (axis fitted on all controls: descriptive)",
                   lambda: plots.compounds_figure(coords, present))
    return out


def _refuse_label_fitted(inp: Inputs, what: str) -> None:
    """An extractor fitted on the controls' labels saw every C- well a treated well would be tested against."""
    if inp.fold_sets is not None:
        raise ValueError(f"the feature extractor was fitted on every control's label, so its C- wells are no "
                         f"held-out reference for {what}")


def efficacy_task(inp: Inputs) -> Result:
    """Cross-fitted efficacy scores: every site scored by an axis fitted without its plate (or experiment).

    Fold k's SVM (with TVN whitening when configured) is fitted on the controls outside Table 1's held-out
    groups k and scores every site inside them; each fold's held-out controls anchor its scores per cell
    line (C- = -1, C+ = +1). Dose-response, Hill fits, hits and the truth agreement read these scores.
    """
    cfg = inp.config
    _refuse_label_fitted(inp, "efficacy scores")
    meta = inp.metadata
    role = io.control_role(meta)
    held_out = classify.control_folds(meta, n_splits=cfg.n_splits, group_by=cfg.group_by, seed=cfg.seed)
    conditions = classify.whitening_conditions(meta) if cfg.normalization == "tvn" else None
    decisions, fold = classify.crossfit_decision(
        inp.unfitted, (role == "C+").to_numpy(), role.isin(["C+", "C-"]).to_numpy(),
        io.plate_key(meta, cfg.group_by), held_out, c=cfg.c, seed=cfg.seed, conditions=conditions)
    scores, notes = efficacy.crossfit_efficacy(decisions, fold, meta)
    keep = [c for c in ("site_id", "well_id", "well", "group", "experiment", "plate", "perturbation",
                        "dose", "viability") if c in meta]
    table = meta[keep].assign(role=role.to_numpy(), model=fold,
                              decision=decisions[np.arange(len(fold)), fold], efficacy=scores)
    table["outlier_site"] = hits.site_outliers(table)
    return Result(tables={"efficacy": (table, False)}, notes=notes,
                  summary={"efficacy: models (folds + all-controls)": len(np.unique(fold))},
                  values=dict(efficacy=table, held_out=held_out))


# Plate maps: (wells column, file stem, what it shows, colour map, the value the colour scale centres on).
QC_MAPS = (("score", "efficacy", "efficacy score (well median)", "coolwarm", None),
           ("position", "position", "position effect (row + column)", "coolwarm", 0.0),
           ("viability", "viability", "viability (well median)", "viridis", None))


def _plate_maps(out: Result, inp: Inputs, wells: pd.DataFrame) -> None:
    """One small-multiples figure per map of `QC_MAPS` and cell line, the viability map only where the screen has
    the column."""
    shape = plate_shape(wells["row"].to_numpy(), wells["col"].to_numpy())
    for column, stem, label, cmap, centre in QC_MAPS:
        if column not in wells:
            continue
        for line, sub in wells.groupby("group", sort=True):
            add_figure(out, inp, f"qc_map_{stem}_{markup.slug(str(line))}.png", f"{line}: {label} by plate position",
                       lambda sub=sub, column=column, label=label, cmap=cmap, centre=centre:
                       plots.plate_maps_figure(sub, column, label, shape, cmap, centre))


def qc_task(inp: Inputs) -> Result:
    """Plate quality control (`gandl.analysis.qc`): per plate and cell line the controls' Z′ and SSMD and a status,
    the edge effect of the plate's position model, control drift in acquisition order, and plate maps."""
    wells, notes = qc.well_table(inp.earlier["efficacy"]["efficacy"], inp.sites[1] if inp.sites else inp.metadata)
    model = plates.position_effects(wells["score"], wells["plate_id"], wells["well"],
                                     (wells["role"] == "treated").to_numpy())
    if isinstance(model, str):
        notes.append(f"plate QC: no plate maps or edge effects: {model}")
        edges = None
    else:
        wells = qc.with_positions(wells, model)
        edges = qc.edge_effects(wells)
        notes += [f"plate QC: {note}" for note in model.notes]
        if "viability" not in wells:
            notes.append("plate QC: no viability map: the metadata has no 'viability' column")
    drift = qc.drift_table(wells)
    table = qc.plate_table(wells, drift, edges)
    notes += [f"plate QC: no drift measure for cell line {line}: {n} plates, fewer than {qc.MIN_OTHER_PLATES + 1}"
              for line, n in drift.groupby("group")["plate_id"].nunique().items() if n <= qc.MIN_OTHER_PLATES]
    counts = table["status"].value_counts()
    flagged = table["edge_flag"] | table["drift"] | (table["status"] != "good")
    shown = table.head(max(inp.config.top_k, int(flagged.sum())))
    text = (f"Z′ and SSMD of C+ over C- per plate and cell line, on well medians of the cross-fitted decision "
            "values, anchored once per cell line (median C- well = -1, median C+ well = +1); status from the "
            f"robust Z′ (median, MAD): fails below {qc.Z_FAIL:g}, marginal below {qc.Z_GOOD:g}, good above. "
            "edge_effect: the outer ring's position effect (median polish of the treated wells) minus the "
            f"interior's, flagged above {qc.EDGE_RATIO:g} x the plate's well noise and {qc.EDGE_Z:g} standard "
            f"errors; drift: a control median more than {qc.DRIFT_Z:g} robust sd from the line's other plates'. "
            f"{len(table) - int(flagged.sum())} of {len(table)} plates good and unflagged; worst first, every "
            "plate in qc_plates.csv.")
    out = Result(tables={"qc_plates": (table, False), "qc_drift": (drift, False)}, notes=notes,
                  summary={"plate QC: plates good / marginal / fails": " / ".join(
                               str(counts.get(k, 0)) for k in ("good", "marginal", "fails")),
                           "plate QC: plates with an edge effect": int(table["edge_flag"].sum()),
                           "plate QC: plates drifting": int(table["drift"].sum())},
                  blocks=[("heading", 3, "Plate quality control"), ("text", text),
                          ("table", shown, False)],
                  values=dict(qc_plates=table, qc_drift=drift, qc_wells=wells))
    if not isinstance(model, str):
        _plate_maps(out, inp, wells)
    add_figure(out, inp, "qc_drift.png", "control medians by plate, in acquisition order",
               lambda: plots.drift_figure(drift, _control_names(inp.schema)))
    return out


TRUTH_ROWS = (("auroc", "AUROC (best-dose score, active vs inert)"),
              ("spearman_active", "Spearman among truly active"),
              ("precision", "hit precision"), ("recall", "hit recall"),
              ("spearman_compound", "Spearman (best dose, all compounds)"),
              ("spearman_ceiling", "Spearman ceiling (ties among inert)"))
HIT_COLUMNS = ["group", "rank", "perturbation", "max_score", "best_dose", "estimate", "lcb", "q", "hit", "status",
               "max_off_axis", "min_viability", "ec50_uM", "emax", "fit_status", "toxic_drop"]


def hit_settings(cfg: AnalysisConfig) -> hits.HitSettings:
    """The hit rule's own settings out of the analysis config."""
    return hits.HitSettings(threshold=cfg.rescue_threshold, fdr=cfg.fdr, off_axis_limit=cfg.off_axis_limit,
                            viability_floor=cfg.viability_floor, position=cfg.position_correction,
                            flat_threshold=cfg.flat_threshold, toxic_threshold=cfg.toxic_threshold)


def dose_response_task(inp: Inputs) -> Result:
    """Rescue tests per compound and dose, the hit table, Hill fits, and agreement with a known truth.

    `gandl.analysis.hits`: plate-blocked moderated tests of "efficacy above the rescue threshold" on the
    cross-fitted decision values, position-corrected wells, and off-axis / cytotoxic doses set apart.
    """
    cfg = inp.config
    if not (inp.metadata["role"] == "treated").any():
        raise ValueError("the screen has no treated sites (the schema's treated query selects none): no dose to test")
    called = hits.call(inp.earlier["efficacy"]["efficacy"], inp.wells(inp.unfitted), hit_settings(cfg),
                       cfg.well_aggregate)
    dose_response, table = called["dose_response"], called["hits"]
    out = Result(tables={"dose_response": (dose_response, False), "hits": (table, False),
                         "hit_wells": (called["wells"], False), "hit_folds": (called["folds"], False)},
                 notes=called["notes"], values=dict(dose_response=dose_response, hits=table,
                                                    hit_wells=called["wells"], hit_folds=called["folds"]))
    for line, sub in table.groupby("group") if len(table) else ():
        out.summary[f"{line}: hits (rescue above {cfg.rescue_threshold:g}, q < {cfg.fdr:g})"] = int(sub["hit"].sum())
        out.summary[f"{line}: set apart (cytotoxic or off-axis)"] = int(sub["status"].isin(
            ["cytotoxic", "off-axis"]).sum())
        out.summary[f"{line}: Hill fits ok"] = int((~sub["fit_failed"]).sum())
        top = sub.nsmallest(1, "rank").iloc[0]
        out.summary[f"{line}: top compound"] = f"{top.perturbation} ({top.max_score:.2f})"
    if inp.truth is not None and len(dose_response):
        agreement = efficacy.truth_agreement(dose_response, inp.truth, table)
        out.summary["hidden efficacy: Spearman (dose points)"] = agreement["spearman_dose"]
        out.summary["hidden efficacy: Spearman (best dose per compound)"] = agreement["spearman_compound"]
        for line, values in agreement["per_line"].items():
            out.summary.update({f"{line}: hidden efficacy {label}": values[key] for key, label in TRUTH_ROWS})
        out.values["truth"] = agreement
    if len(table):
        out.blocks += [("heading", 3, f"Top {cfg.top_k} compounds per cell line"),
                       ("table", table[table["rank"] <= cfg.top_k][HIT_COLUMNS], False)]
        add_figure(out, inp, "fig5_dose_response.png", "dose-response", lambda: plots.dose_response_figure(
            dose_response, table, inp.schema.highlight, cfg.top_k))
        apart = table[table["status"].isin(["cytotoxic", "off-axis"])]
        if len(apart):
            out.blocks += [("heading", 3, "Rescue-like but not a rescue (cytotoxic or off the C- to C+ axis)"),
                           ("table", apart[HIT_COLUMNS], False)]
        few = table[table["fit_status"] == "too_few_doses"]
        out.notes += [f"Hill fit: {r.perturbation} ({r.group}) has {r.n_doses} dose(s), fewer than "
                      f"{efficacy.MIN_DOSES}: ranked, not fitted" for r in few.itertuples()]
    return out


MAP_ALPHA = 0.05  # q threshold of "phenotypically active", as in the JUMP Cell Painting papers


def activity_task(inp: Inputs) -> Result:
    """Phenotypic activity and consistency (copairs mAP) of every compound × dose × cell line, on well profiles.

    Well profiles are the means of the (normalised) sites of a well; activity ranks a group's replicate
    wells against its cell line's C- wells; consistency, of the active groups, against the other compounds.
    """
    cfg = inp.config
    _refuse_label_fitted(inp, "phenotypic activity")
    x, meta = (inp.features, inp.metadata) if cfg.level == "well" else inp.wells(inp.features)
    act = activity.phenotypic_activity(x, meta, alpha=MAP_ALPHA, seed=cfg.seed)
    compounds = activity.compound_table(act, MAP_ALPHA)
    out = Result(tables={"map_activity": (act, False), "map_compounds": (compounds, False)},
                 summary={"phenotypic activity (mAP vs C-): fraction with q < 0.05": activity.fraction_active(act)},
                 values=dict(activity=act, compounds=compounds))
    for line, sub in compounds.groupby("group"):
        out.summary[f"{line}: active compounds (mAP, compound q < 0.05)"] = int(sub["active"].sum())
    active = act[act["active"]]
    per_line = active.groupby("group")["perturbation"].nunique()
    if not (per_line >= 2).any():  # consistency compares a cell line's active compounds with each other
        out.notes.append("phenotypic consistency not computed: no cell line has two active compounds ("
                         + (", ".join(f"{line}: {n}" for line, n in per_line.items()) or "none active") + ")")
    else:
        consistency = activity.phenotypic_consistency(x, meta, active, alpha=MAP_ALPHA, seed=cfg.seed)
        out.tables["map_consistency"] = (consistency, False)
        out.values["consistency"] = consistency
        if len(consistency):
            out.summary["phenotypic consistency (active groups): fraction with q < 0.05"] = \
                activity.fraction_active(consistency)
    floor = act.attrs["p_floor"]
    out.blocks += [("heading", 3, "Phenotypic activity (mAP against C-)"),
                   ("text", f"Permutation p-values floor at {floor:.2g} ({round(1 / floor) - 1} draws), below half "
                            f"of Benjamini-Hochberg's first threshold {MAP_ALPHA / len(act):.2g} over the "
                            f"{len(act)} groups tested."),
                   ("table", compounds.head(2 * cfg.top_k), False)]
    add_figure(out, inp, "fig7_map_dose.png", "mAP against dose", lambda: plots.map_dose_figure(act, highlighted(inp)))
    return out


def zeroshot_task(inp: Inputs) -> Result:
    """Zero-shot cell typing: cell-type accuracy and confusion matrix on a set never seen in training."""
    cfg = inp.config
    summary, confusion = zeroshot.classify_cell_types(inp.features, inp.metadata, c=cfg.c, n_splits=cfg.n_splits,
                                                      seed=cfg.seed)
    rows = {f"{zeroshot.ZEROSHOT_TASK}: {m}": summary[m] for m in ("accuracy", "balanced_accuracy")}
    rows[f"{zeroshot.ZEROSHOT_TASK}: held out"] = summary["group_by"]
    out = Result(tables={"zeroshot_confusion": (confusion, True)}, summary=rows,
                 blocks=[("heading", 3, f"Zero-shot cell typing (held out: whole {summary['group_by']}s)"),
                         ("table", confusion, True)],
                 values=dict(summary=summary, confusion=confusion))
    add_figure(out, inp, "fig6_confusion.png", "confusion", lambda: plots.confusion_figure(confusion))
    if cfg.few_labels:
        few = zeroshot.classify_cell_types_few_labels(inp.features, inp.metadata, cfg.few_labels,
                                                      draws=cfg.few_label_draws, c=cfg.c, n_splits=cfg.n_splits,
                                                      seed=cfg.seed)
        out.tables["zeroshot_few_labels"] = (few, False)
        out.summary.update({f"{zeroshot.ZEROSHOT_TASK}: accuracy @ k={r.k}": r.accuracy for r in few.itertuples()})
        out.blocks += [("heading", 3, f"Zero-shot cell typing with k labelled wells per cell type (mean, sd over "
                                      f"{cfg.few_label_draws} draws)"), ("table", few, False)]
        out.notes += [f"zero-shot @ k={r.k}: {r.status}" for r in few.itertuples() if r.status != "ok"]
        out.values["zeroshot_few_labels"] = few
    return out


SCREEN_TASKS = (
    Task("controls", "Table 1 (control classification)", controls_task),
    Task("efficacy", "cross-fitted efficacy scores", efficacy_task),
    Task("qc", "plate quality control", qc_task, needs=("efficacy",)),
    Task("dose_response", "dose-response and hits", dose_response_task, needs=("efficacy",)),
    Task("spaces", "E²/C² spaces", spaces_task),
    Task("activity", "phenotypic activity (copairs mAP)", activity_task),
)
ZEROSHOT_TASKS = (
    Task("zeroshot", "zero-shot cell typing", zeroshot_task),
)
