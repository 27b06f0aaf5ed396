"""The whole analysis of one or more feature sets, and the report folder it writes.

`analyze_screen` and `analyze_zeroshot` are pure (arrays in, tables out) for notebooks; `analyze` runs
them for every feature set given, e.g. {"GAN-DL": (features, metadata), "handcrafted": (...)}, and writes
tables (CSV + markdown), figures (PNG), `report.md` and a self-contained `report.html` (both rendered from
one list of blocks, `gandl.analysis.markup`), whose centre is a side-by-side table of every task for every
feature set. The tasks themselves are the lists in `gandl.analysis.tasks`; one that cannot run on the data
is a `skipped: <reason>` row, a line in analysis.json and a warning, never a dead job. Any [N, D]
features aligned with RxRx19a-style metadata run through it unchanged.

Layout of `out_dir` (e.g. `workdir/analysis/`)::

  report.md, report.html (figures embedded), summary.csv, analysis.json
  complete.json: written last, every file above and below with its size and checksum (gandl.fileio)
  <feature set>/table1_controls.{csv,md}, table1_few_labels.csv (with few_labels), spaces.parquet and
                efficacy.parquet (a row per site), dose_response.csv, hits.csv, hit_wells.csv,
                fig3_controls.png, fig4_compounds.png, fig5_dose_response.png,
                zeroshot_confusion.csv, fig6_confusion.png (when a zero-shot set is given),
                zeroshot_few_labels.csv (both, with few_labels), qc_plates.csv, qc_drift.csv, qc_drift.png,
                qc_map_<efficacy|position|viability>_<cell line>.png (plate maps), excluded_plates.csv (when
                the QC settings exclude plates)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from absl import logging

from gandl import fileio
from gandl.analysis import classify, io, markup, qc
from gandl.analysis.io import aggregate_wells
from gandl.analysis.tasks import SCREEN_TASKS, ZEROSHOT_TASKS, AnalysisConfig, FoldSet, Inputs, Result, Task
from gandl.data.screen import ScreenSchema
from gandl.data.vocabulary import RXRX1_LABEL

__all__ = ["AnalysisConfig", "analyze", "analyze_screen", "analyze_zeroshot"]

FeatureSet = tuple[np.ndarray, pd.DataFrame]
RECORD = "complete.json"


def _check_inputs(features: np.ndarray, metadata: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Fail at the door on inputs no step could use, naming what is wrong."""
    if np.ndim(features) != 2:
        raise ValueError(f"features must be [N, D], got shape {np.shape(features)}")
    if len(features) != len(metadata):
        raise ValueError(f"{len(features)} feature rows but {len(metadata)} metadata rows; align them by "
                         "site_id first (gandl.analysis.io.align)")
    missing = [c for c in columns if c not in metadata]
    if missing:
        raise ValueError(f"metadata is missing columns {missing}")
    if not np.isfinite(features).all():
        raise ValueError(f"features hold {int((~np.isfinite(features)).any(1).sum())} rows with NaN/inf values")


def run_tasks(tasks: Sequence[Task], inputs: Inputs, results: Mapping[str, Result] | None = None,
              skipped: Mapping[str, str] | None = None) -> tuple[dict[str, Result], dict[str, str]]:
    """Run `tasks` in order, but those `results` or `skipped` hold already (a run that goes on); returns the results
    and, for each task that could not run, the reason."""
    results, skipped = dict(results or {}), dict(skipped or {})
    for task in tasks:
        if task.name in results or task.name in skipped:
            continue
        blocked = [n for n in task.needs if n in skipped]
        if blocked:
            skipped[task.name] = f"needs {', '.join(blocked)}, which was skipped"
            continue
        try:
            results[task.name] = task.run(dataclasses.replace(
                inputs, earlier={n: r.values for n, r in results.items()}))
        except Exception as e:  # noqa: BLE001 - one task that cannot run must not end the analysis
            skipped[task.name] = f"{type(e).__name__}: {e}"
            logging.warning("analysis task %s skipped: %s", task.name, skipped[task.name])
    return results, skipped


def _outcome(tasks: Sequence[Task], results: dict[str, Result], skipped: dict[str, str]) -> dict:
    """The flat dict notebooks read: every task's values, plus notes, skips and the task results."""
    out: dict = {}
    for result in results.values():
        out.update(result.values)
    notes = [note for result in results.values() for note in result.notes]
    notes += [f"{t.title}: skipped: {skipped[t.name]}" for t in tasks if t.name in skipped]
    return dict(out, notes=notes, skipped=skipped, results=results)


def protocol(config: AnalysisConfig, table1: pd.DataFrame | None, per_fold_extractor: bool | None) -> dict[str, str]:
    """For each table of a screen: which groups were held out and what was fitted where (report, analysis.json).

    `per_fold_extractor`: None for a fixed feature extractor, True when its Table 1 features came from
    per-fold models fitted without the held-out groups, False when no such features were given.
    """
    per_plate = {"none": "", "center_scale": "per-plate centring and scaling",
                 "tvn": "per-plate centring"}[config.normalization]
    folds = next((r.held_out for r in table1.itertuples() if r.held_out), "") if table1 is not None else ""
    fitted = (["TVN whitening"] if config.normalization == "tvn" else []) + ["isotropic scaling", "linear SVM"]
    if per_fold_extractor:
        fitted.insert(0, "the feature extractor's fine-tuning (one model per fold, on its training groups' controls)")
    table1_text = (f"held out: whole {config.group_by}s, one fold assignment for every task and feature set "
                   f"(folds: {folds or 'none'}); fitted on each fold's training groups only: {', '.join(fitted)}")
    if per_plate:
        table1_text += (f"; {per_plate} on each plate's own control sites, C+ and C- pooled, labels unused "
                        "(held-out plates included)")
    if per_fold_extractor is False:
        table1_text += "; not computed: this extractor was fitted on labels and no per-fold features were given"
    descriptive = ("no groups held out (descriptive): SVM normal and min-max range on all C+/C- controls, "
                   "off-axis PCA on every site"
                   + (f", {per_plate} and TVN whitening on all plates' controls" if config.normalization == "tvn"
                      else f", {per_plate} on each plate's controls" if per_plate else ""))
    crossfit = (f"cross-fitted: every site scored by a linear SVM fitted on the C+/C- controls of the other "
                f"{config.group_by}s (Table 1's folds; {config.group_by}s without controls by one SVM on all "
                "controls, which none of their sites trained)"
                + (", TVN whitening fitted with it" if config.normalization == "tvn" else "")
                + "; per fold and cell line the held-out controls anchor C- = -1 and C+ = +1 for display")
    hits = (crossfit + f"; the null is 'rescues less than the threshold' (efficacy {config.rescue_threshold:g}): "
            "per dose, each plate's wells (median of their sites, plate-position effects removed) minus that plate's "
            "reference point between its negative level (its C- wells, or its treated wells' median where that is "
            "higher) and its C+ wells, tested over plates by a moderated t (variances shrunk across the cell line's "
            "doses); folds whose held-out C+ - C- gap is not clearly positive are not tested; doses off the C- to C+ "
            f"axis (off-axis distance over {config.off_axis_limit:g}x the controls') or cytotoxic (cell-count proxy "
            f"under {config.viability_floor:g} of C-) are not eligible; `p`: Simes over a compound's eligible doses, "
            "`q`: Benjamini-Hochberg over compound x cell line (the FDR of the hit list); `dose_q`: over every dose")
    activity = ("well profiles as the descriptive path (" + (per_plate or "no normalisation")
                + (", TVN whitening on all controls" if config.normalization == "tvn" else "")
                + "); copairs mAP against the cell line's C- wells, permutation p, Benjamini-Hochberg q over "
                  "compound x dose x cell line")
    plate_qc = ("well medians of the efficacy task's cross-fitted decision values (each plate scored by the fold "
                "SVM fitted without it), anchored once per cell line on all its plates' control wells; position "
                "effects by median polish of each plate's treated wells; every plate, excluded ones included")
    if per_fold_extractor is not None:
        descriptive += "; features from one model fine-tuned on all control sites"
        crossfit = hits = activity = plate_qc = ("not computed: the feature extractor was fine-tuned on every "
                                                 "control's label, so no C- well is a held-out reference")
    tables = {"table1_controls": table1_text, "spaces": descriptive, "efficacy": crossfit,
              "dose_response": crossfit, "hits": hits, "map_activity": activity, "qc_plates": plate_qc,
              "qc_drift": plate_qc}
    if config.few_labels:
        tables["table1_few_labels"] = (
            f"Table 1's folds; fitted on k whole control wells per class (k in {tuple(config.few_labels)}) drawn "
            f"from each fold's training groups, {config.few_label_draws} seeded draws (mean, sd); every held-out "
            "control site scored" + ("; not computed: this extractor was fitted on every control's label"
                                     if per_fold_extractor is not None else ""))
    return tables


def _none_ran(reason: str, config: AnalysisConfig, per_fold: bool | None) -> dict:
    """The outcome of a screen no task can run on: every task skipped with `reason`."""
    return dict(_outcome(SCREEN_TASKS, {}, {t.name: reason for t in SCREEN_TASKS}),
                protocol=protocol(config, None, per_fold))


def _inputs(features: np.ndarray, site_metadata: pd.DataFrame, config: AnalysisConfig, truth: pd.DataFrame | None,
            folder: str, fold_sets: Sequence[FoldSet] | None, schema: ScreenSchema, draw: bool = True
            ) -> Inputs | str:
    """What the screen tasks see (normalised, at the configured level), or the reason no task can run."""
    if len(features) and not np.ptp(features, axis=0).any():
        return "every site has the same features (constant images?): no variance to analyse"
    try:
        unfitted = classify.plate_normalize(features, site_metadata, config.normalization)
        metadata = site_metadata
        if config.level == "well":
            unfitted, metadata = aggregate_wells(unfitted, site_metadata, config.well_aggregate)
        x = (classify.normalize(unfitted, metadata, "tvn", centred=True)
             if config.normalization == "tvn" else unfitted)
    except ValueError as e:  # e.g. a normalisation without the controls it needs: no task can run
        return f"{config.normalization} normalisation: {e}"
    return Inputs(x, metadata, config, folder, {}, truth, (features, site_metadata), fold_sets, unfitted, schema, draw)


QC_TASKS = [t for t in SCREEN_TASKS if t.name in ("efficacy", "qc")]  # the plate QC and the task it reads


def _kept_folds(fold_sets: Sequence[FoldSet] | None, keep: set[str]) -> list[FoldSet] | None:
    """Per-fold control features of the kept sites (by site_id) only."""
    if fold_sets is None:
        return None
    kept = [np.isin(meta["site_id"].astype(str), list(keep)) for _, meta, _ in fold_sets]
    return [(np.asarray(f)[k], meta[k].reset_index(drop=True), groups) for (f, meta, groups), k in zip(fold_sets, kept)]


def _exclusion(dropped: pd.DataFrame, lost: list[str]) -> Result:
    """The report's account of the plates left out: which, why, and what that changed."""
    notes = [f"cell line {line}: every plate excluded, so only the plate quality control has numbers for it"
             for line in lost]
    text = ("Every table and figure of this feature set but the plate quality control was computed without these "
            "plates' sites (Table 1, the efficacy fits and anchors, dose-response and hits, spaces, activity); "
            "the plate quality control covers every plate. The other plates' numbers changed only through the "
            "fits (normalisation, fold SVMs, anchors, hit tests) the excluded plates no longer contribute to.")
    return Result(tables={"excluded_plates": (dropped, False)}, notes=notes,
                  blocks=[("heading", 3, "Excluded plates"), ("text", text), ("table", dropped, False),
                          *([("bullets", notes)] if notes else [])],
                  values=dict(excluded_plates=dropped))


def _without_plates(dropped: pd.DataFrame, inputs: Inputs, fold_sets: Sequence[FoldSet] | None,
                    ) -> tuple[dict[str, Result], dict[str, str]]:
    """Every screen task but the QC again, on the sites of the plates not `dropped`."""
    features, site_metadata = inputs.sites
    keep = ~np.isin(io.plate_key(site_metadata), dropped["plate_id"])
    kept_sites = set(site_metadata.loc[keep, "site_id"].astype(str))
    rest = [t for t in SCREEN_TASKS if t.name != "qc"]
    rerun = (_inputs(features[keep], site_metadata[keep].reset_index(drop=True), inputs.config, inputs.truth,
                     inputs.folder, _kept_folds(fold_sets, kept_sites), inputs.schema, inputs.draw)
             if keep.any() else "every plate is excluded")
    if isinstance(rerun, str):
        return {}, {t.name: rerun for t in rest}
    return run_tasks(rest, rerun)


def analyze_screen(features: np.ndarray, metadata: pd.DataFrame, config: AnalysisConfig = AnalysisConfig(),
                   truth: pd.DataFrame | None = None, folder: str = "features",
                   fold_sets: Sequence[FoldSet] | None = None, schema: ScreenSchema | None = None,
                   draw: bool = True) -> dict:
    """Table 1, E²/C² coordinates, efficacy scores, plate QC, dose-response and hits for one RxRx19a feature set.

    `fold_sets` (for an extractor fitted on the controls' labels, e.g. the ImageNet comparator) holds,
    per fold of `classify.control_folds`, (features, metadata, held-out groups) of the control sites from a
    model fitted without those groups; Table 1 is computed from them, everything else from `features`.
    An empty sequence marks such an extractor without per-fold features: its Table 1 is skipped.
    `draw=False` computes every number but draws no figure (a calibration runs thousands of screens).
    With `config.exclude_plates` or `config.min_z_prime`, the plate QC runs on every plate and every other task
    again without the plates they exclude (`excluded_plates`); an unknown plate name raises ValueError.
    Returns the tasks' values (`table1`, `axes`, `coordinates`, `dose_response`, `hits`, `qc_plates`, for the
    tasks that ran), `protocol` (what was held out and fitted where, per table), `notes`, `skipped` (task ->
    reason) and `results`.
    """
    schema = schema or io.default_schema()
    _check_inputs(features, metadata, ())
    site_metadata = io.screen_view(metadata, schema)
    neither = io.neither_note(metadata, site_metadata, schema)
    qc.check_excluded(config.exclude_plates, io.plate_key(site_metadata))
    per_fold = None if fold_sets is None else bool(fold_sets)
    inputs = _inputs(np.asarray(features), site_metadata, config, truth, folder, fold_sets, schema, draw)
    if isinstance(inputs, str):
        return _none_ran(inputs, config, per_fold)
    excluding = bool(config.exclude_plates) or config.min_z_prime is not None
    results, skipped = run_tasks(QC_TASKS if excluding else [], inputs)
    table = results["qc"].values["qc_plates"] if "qc" in results else None
    dropped = qc.excluded_plates(config.exclude_plates, config.min_z_prime, table)
    extra: dict[str, Result] = {}
    if len(dropped):
        qc_ran, qc_skipped = ({n: v for n, v in d.items() if n == "qc"} for d in (results, skipped))
        results, skipped = _without_plates(dropped, inputs, fold_sets)
        results.update(qc_ran)
        skipped.update(qc_skipped)
        extra["excluded"] = _exclusion(dropped, qc.lost_groups(io.plate_key(site_metadata),
                                                               site_metadata["group"].to_numpy(),
                                                               dropped["plate_id"]))
    else:
        results, skipped = run_tasks(SCREEN_TASKS, inputs, results, skipped)
    ordered = {}
    for task in SCREEN_TASKS:  # the report's order; the exclusions right after the QC that made them
        ordered.update({task.name: results[task.name]} if task.name in results else {})
        ordered.update(extra if task.name == "qc" else {})
    outcome = _outcome(SCREEN_TASKS, ordered, skipped)
    if config.min_z_prime is not None and table is None:
        outcome["notes"].append("min_z_prime not applied: the plate quality control was skipped")
    record = protocol(config, outcome.get("table1"), per_fold)
    if len(dropped):
        ids = ", ".join(dropped["plate_id"])
        record = {name: text if name.startswith("qc_") else f"{text}; without the excluded plates ({ids})"
                  for name, text in record.items()}
    return dict(outcome, notes=neither + outcome["notes"], protocol=record)


def analyze_zeroshot(features: np.ndarray, metadata: pd.DataFrame, config: AnalysisConfig = AnalysisConfig(),
                     folder: str = "features") -> dict:
    """Cell-type accuracy and confusion matrix on an RxRx1-shaped feature set (after the channel map).

    Experiments are held out when every cell type spans several, else plates (`zeroshot.zeroshot_group`).
    """
    wells = ("well_id",) if config.few_labels else ()
    _check_inputs(features, metadata, (RXRX1_LABEL, "experiment", "plate", *wells))
    inputs = Inputs(np.asarray(features), metadata.reset_index(drop=True), config, folder, {})
    outcome = _outcome(ZEROSHOT_TASKS, *run_tasks(ZEROSHOT_TASKS, inputs))
    held = outcome["summary"]["group_by"] if "summary" in outcome else "group"
    folds = outcome["summary"]["held_out"] if "summary" in outcome else "none"
    text = (f"held out: whole {held}s (folds: {folds}); fitted on each fold's training groups only: isotropic "
            "scaling, linear SVM; the feature extractor never saw an RxRx1 label (the ImageNet comparator: the "
            "model fine-tuned on all RxRx19a controls)")
    protocol = {"zeroshot_confusion": text}
    if config.few_labels:
        protocol["zeroshot_few_labels"] = (
            f"the same folds; fitted on k whole wells per cell type (k in {tuple(config.few_labels)}) drawn from "
            f"each fold's training groups, {config.few_label_draws} seeded draws (mean, sd); every held-out site "
            "scored")
    return dict(outcome, protocol=protocol)


def figures(outcome: dict) -> dict[str, bytes]:
    """The PNG figures of an `analyze_screen` / `analyze_zeroshot` outcome, by file name."""
    return {file: png for result in outcome["results"].values() for file, png in result.figures.items()}


def summary_table(screens: Mapping[str, dict], zeroshots: Mapping[str, dict]) -> pd.DataFrame:
    """Side-by-side table: one row per task and metric, one column per feature set; skipped tasks say why."""
    columns = {}
    for name in screens:
        col: dict = {}
        for tasks, outcome in ((SCREEN_TASKS, screens[name]), (ZEROSHOT_TASKS, zeroshots.get(name))):
            if outcome is None:
                continue
            for task in tasks:
                if task.name in outcome["skipped"]:
                    col[task.title] = f"skipped: {outcome['skipped'][task.name]}"
                else:
                    col.update(outcome["results"][task.name].summary)
        columns[name] = col
    return pd.DataFrame(columns).rename_axis("task")


# A row per site: Parquet (at RxRx19a's 305,520 sites 0.2 s and 8 MB a table, against 2 s and 37 MB as CSV).
SITE_TABLES = frozenset({"spaces", "efficacy"})


def _table_file(stem: str) -> str:
    return f"{stem}.parquet" if stem in SITE_TABLES else f"{stem}.csv"


def _table_data(stem: str, table: pd.DataFrame, index: bool) -> bytes | str:
    """A table's file contents: CSV text, or Parquet bytes for the site-level tables (object columns as strings,
    so that a column mixing numbers and names from a notebook's metadata still writes)."""
    if stem not in SITE_TABLES:
        return table.to_csv(index=index)
    objects = {c: "string" for c, dtype in table.dtypes.items() if dtype is np.dtype(object)}
    return table.astype(objects).to_parquet(index=index)


def _write_outcome(outcome: dict, out_dir: str, folder: str, files: list[str],
                   names: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """Every table (CSV, or Parquet for a row per site; Table 1 also as markdown) and figure of one outcome,
    their paths appended to `files`; returns the figures by their path relative to the report. `names` renames
    the analysis' columns to the screen's own (`io.output_names`)."""
    figures = {}
    for result in outcome["results"].values():
        texts = {_table_file(stem): _table_data(stem, table.rename(columns=names or {}), index)
                 for stem, (table, index) in result.tables.items()}
        if "table1_controls" in result.tables:
            texts["table1_controls.md"] = markup.markdown_table(*result.tables["table1_controls"])
        for file, data in texts.items():
            write = fileio.write_bytes if isinstance(data, bytes) else fileio.write_text
            write(os.path.join(out_dir, folder, file), data)
            files.append(os.path.join(out_dir, folder, file))
        for file, png in result.figures.items():
            fileio.write_bytes(os.path.join(out_dir, folder, file), png)
            files.append(os.path.join(out_dir, folder, file))
            figures[f"{folder}/{file}"] = png
    return figures


def _report_blocks(summary: pd.DataFrame, screens: Mapping[str, dict], zeroshots: Mapping[str, dict],
                   config: AnalysisConfig, schema: ScreenSchema, source: str = "") -> list[markup.Block]:
    columns = ", ".join(f"{field} = {column}" for field, column in schema.columns().items())
    blocks: list[markup.Block] = [
        ("heading", 1, "GAN-DL analysis"), *([("text", source)] if source else []),
        ("text", f"Settings: {', '.join(f'{k}={v}' for k, v in dataclasses.asdict(config).items())}."),
        ("text", f"Screen: C+ = {schema.positive_name} ({schema.positive or 'none declared'}), C- = "
                 f"{schema.negative_name} ({schema.negative or 'none declared'}); columns: {columns}. "
                 "\"cell line\" below is the screen's biological group."),
        ("text", "Cross-validation holds out whole plates (or experiments): every fitted step of a Table 1 "
                 "or zero-shot number is fitted on the training folds only"
                 + (" (the per-plate normalisation uses each plate's own control sites, C+ and C- pooled, "
                    "labels unused, held-out plates included)" if config.normalization != "none" else "")
                 + "; efficacy scores are cross-fitted (each site scored by an axis fitted without its "
                   f"{config.group_by}) and put the mean C- control at -1 and the mean C+ control at +1 per "
                   "cell line (0 = efficacy threshold); hits control the false discovery rate per compound x cell "
                   "line. Each feature set's Protocol lists what was held out and fitted where, per table."),
        ("heading", 2, "Side by side"), ("table", summary, True)]
    names = io.output_names(schema)  # the tasks' tables in the screen's own column names, as in their files
    for name, outcome in screens.items():
        blocks.append(("heading", 2, name))
        for result in [*outcome["results"].values(), *(zeroshots[name]["results"].values() if name in zeroshots
                                                       else ())]:
            blocks += [("table", block[1].rename(columns=names), *block[2:]) if block[0] == "table" else block
                       for block in result.blocks]
        lines = [f"{table}: {text}" for table, text in _protocol_record(name, screens, zeroshots).items()]
        blocks += [("heading", 3, "Protocol"), ("bullets", lines)]
        notes = outcome["notes"] + (zeroshots[name]["notes"] if name in zeroshots else [])
        if notes:
            blocks += [("heading", 3, "Notes"), ("bullets", notes)]
    return blocks


def _protocol_record(name: str, screens: Mapping[str, dict], zeroshots: Mapping[str, dict]) -> dict[str, str]:
    """Table name -> what was held out and fitted where, for one feature set (report and analysis.json)."""
    record = dict(screens[name]["protocol"])
    if name in zeroshots:
        record.update(zeroshots[name]["protocol"])
    return record


def analyze(feature_sets: Mapping[str, FeatureSet], out_dir: str, config: AnalysisConfig = AnalysisConfig(),
            *, zeroshot_sets: Mapping[str, FeatureSet] | None = None,
            truth: pd.DataFrame | None = None, fold_sets: Mapping[str, Sequence[FoldSet]] | None = None,
            source: str = "", schema: ScreenSchema | None = None) -> dict:
    """Run every analysis task on every feature set and write the report folder; returns the results.

    `source` says where the features come from (e.g. which checkpoint, and how it was chosen): the report's
    first line and analysis.json's `source`.
    `feature_sets` maps a name to (features [N, D], RxRx19a metadata [N]); `zeroshot_sets` maps the same
    names to RxRx1-shaped (features, metadata) for zero-shot cell typing; `truth` (a synthetic screen's
    truth.csv) adds the agreement with the hidden efficacy. Returns {"summary", "screens", "zeroshot",
    "skipped", "files"}. `fold_sets` maps a name to its per-fold control features (see `analyze_screen`): an
    extractor fitted on the controls' labels must come with them (an empty list skips its Table 1). `schema`
    says which metadata columns and sites are what (default RxRx19a's); the tables use the screen's own names.
    """
    schema = schema or io.default_schema()
    if not feature_sets:
        raise ValueError("analyze needs at least one feature set")
    zeroshot_sets = zeroshot_sets or {}
    unknown = sorted(set(zeroshot_sets) - set(feature_sets))
    if unknown:
        raise ValueError(f"zero-shot sets {unknown} have no screen feature set of the same name")
    folders = {name: markup.slug(name) for name in feature_sets}
    if len(set(folders.values())) < len(folders):
        raise ValueError(f"feature set names {list(folders)} collide as folder names {list(folders.values())}")
    fold_sets = fold_sets or {}
    unknown = sorted(set(fold_sets) - set(feature_sets))
    if unknown:
        raise ValueError(f"per-fold sets {unknown} have no screen feature set of the same name")
    screens = {name: analyze_screen(f, m, config, truth, folders[name], fold_sets.get(name), schema)
               for name, (f, m) in feature_sets.items()}
    zeroshots = {name: analyze_zeroshot(f, m, config, folders[name]) for name, (f, m) in zeroshot_sets.items()}
    summary = summary_table(screens, zeroshots)
    figures: dict[str, bytes] = {}
    files: list[str] = []
    for name, outcome in screens.items():
        figures.update(_write_outcome(outcome, out_dir, folders[name], files, io.output_names(schema)))
    for name, outcome in zeroshots.items():
        figures.update(_write_outcome(outcome, out_dir, folders[name], files))
    fileio.write_text(os.path.join(out_dir, "summary.csv"), summary.to_csv(index=True))
    skipped = {name: {**screens[name]["skipped"], **(zeroshots[name]["skipped"] if name in zeroshots else {})}
               for name in feature_sets}
    record = dict(source=source, config=dataclasses.asdict(config), folders=folders, skipped=skipped,
                  notes={name: r["notes"] for name, r in screens.items()},
                  zeroshot={name: r["summary"] for name, r in zeroshots.items() if "summary" in r},
                  protocol={name: _protocol_record(name, screens, zeroshots) for name in screens})
    fileio.write_json(os.path.join(out_dir, "analysis.json"), record)
    blocks = _report_blocks(summary, screens, zeroshots, config, schema, source)
    fileio.write_text(os.path.join(out_dir, "report.md"), markup.render_markdown(blocks))
    fileio.write_text(os.path.join(out_dir, "report.html"), markup.render_html(blocks, figures))
    skips = [f"{name}: {task}: {why}" for name, tasks in skipped.items() for task, why in tasks.items()]
    if skips:
        logging.warning("analysis finished with %d skipped task(s):\n  %s", len(skips), "\n  ".join(skips))
    files += [os.path.join(out_dir, n) for n in ("summary.csv", "analysis.json", "report.md", "report.html")]
    for folder in {"", *folders.values()}:  # what writers killed in an earlier run left
        fileio.remove_temp_files(os.path.join(out_dir, folder))
    fileio.write_record(os.path.join(out_dir, RECORD), files, source=source)  # last: the analysis is complete
    return dict(summary=summary, screens=screens, zeroshot=zeroshots, skipped=skipped, files=files)
