"""The whole analysis of one or more feature sets, and the report folder it writes.

`analyze_screen` and `analyze_zeroshot` are pure (arrays in, tables out) for notebooks; `analyze` runs
them for every feature set given, e.g. {"GAN-DL": (features, metadata), "handcrafted": (...)}, and writes
tables (CSV + markdown), figures (PNG), `report.md` and a self-contained `report.html` (both rendered from
one list of blocks), whose centre is a side-by-side table of every task for every feature set. Any
[N, D] features aligned with RxRx19a-style metadata run through it unchanged.

Layout of `out_dir` (e.g. `workdir/analysis/`):
  report.md, report.html (figures embedded), summary.csv, analysis.json
  <feature set>/table1_controls.{csv,md}, spaces.csv, dose_response.csv, hits.csv,
                fig3_controls.png, fig4_compounds.png, fig5_dose_response.png,
                zeroshot_confusion.csv, fig6_confusion.png (when a zero-shot set is given)
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from gandl import fileio
from gandl._tf import tf
from gandl.analysis import classify, efficacy, plots, spaces, zeroshot
from gandl.analysis.io import JoinError, aggregate_wells, align
from gandl.data.rxrx import RXRX19A_COLUMNS

FeatureSet = tuple[np.ndarray, pd.DataFrame]
# Control-site features of one cross-validation fold's extractor, their metadata, and the groups it held out.
FoldSet = tuple[np.ndarray, pd.DataFrame, Sequence[str]]


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Settings of the analysis; the defaults follow the paper (per site, no normalisation, C = 1)."""

    normalization: str = "none"  # none | center_scale | tvn (see classify.normalize)
    level: str = "site"  # site | well: the unit SVMs and spaces see (dose-response always averages wells)
    c: float = 1.0  # SVM soft-margin constant
    n_splits: int = 5  # at most this many grouped folds
    group_by: str = "plate"  # plate | experiment: what a fold holds out
    uv_is_positive: bool = False  # count UV-inactivated virus wells as C+
    highlight: tuple[str, ...] = ("Remdesivir", "GS-441524", "Polydatin")  # Figures 4 and 5
    top_k: int = 5  # best-ranked compounds per cell line drawn in Figure 5 and listed in the report
    flat_threshold: float = 0.25  # Hill amplitude below which a curve is flat (score units)
    toxic_threshold: float = 0.5  # score drop after the peak that flags a toxic top dose
    seed: int = 0

    def __post_init__(self):
        if self.normalization not in classify.NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {classify.NORMALIZATIONS}, got {self.normalization!r}")
        if self.level not in ("site", "well"):
            raise ValueError(f"level must be 'site' or 'well', got {self.level!r}")
        if self.group_by not in ("plate", "experiment"):
            raise ValueError(f"group_by must be 'plate' or 'experiment', got {self.group_by!r}")


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


def _fold_features(fold_sets: Sequence[FoldSet], metadata: pd.DataFrame) -> tuple[list[np.ndarray], list]:
    """Per-fold features aligned to `metadata`'s rows (by site_id), and the groups each fold's model held out."""
    features, held_out = [], []
    for k, (f, meta, groups) in enumerate(fold_sets):
        _check_inputs(f, meta, ("site_id",))
        try:
            features.append(align(f, meta["site_id"], metadata)[0])
        except JoinError as e:
            raise JoinError(f"per-fold features of fold {k} do not cover the screen's control sites: {e}") from e
        held_out.append(tuple(groups))
    return features, held_out


def protocol(config: AnalysisConfig, table1: pd.DataFrame, per_fold_extractor: bool | None) -> dict[str, str]:
    """For each table of a screen: which groups were held out and what was fitted where (report, analysis.json).

    `per_fold_extractor`: None for a fixed feature extractor, True when its Table 1 features came from
    per-fold models fitted without the held-out groups, False when no such features were given.
    """
    per_plate = {"none": "", "center_scale": "per-plate centring and scaling",
                 "tvn": "per-plate centring"}[config.normalization]
    folds = next((r.held_out for r in table1.itertuples() if r.held_out), "")
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
                   "off-axis PCA on every site, efficacy anchors on each cell line's controls"
                   + (f", {per_plate} and TVN whitening on all plates' controls" if config.normalization == "tvn"
                      else f", {per_plate} on each plate's controls" if per_plate else ""))
    if per_fold_extractor is not None:
        descriptive += "; features from one model fine-tuned on all control sites"
    return {"table1_controls": table1_text, "spaces": descriptive, "dose_response": descriptive,
            "hits": descriptive}


def analyze_screen(features: np.ndarray, metadata: pd.DataFrame, config: AnalysisConfig = AnalysisConfig(),
                   fold_sets: Sequence[FoldSet] | None = None) -> dict:
    """Table 1, E²/C² coordinates, efficacy scores, dose-response and hits for one RxRx19a feature set.

    `fold_sets` (for an extractor fitted on the controls' labels, e.g. the ImageNet comparator) holds,
    per fold of `classify.control_folds`, (features, metadata, held-out groups) of the control sites from a
    model fitted without those groups; Table 1 is computed from them, everything else from `features`.
    An empty sequence marks such an extractor without per-fold features: its Table 1 is skipped.
    Returns a dict of DataFrames (`table1`, `coordinates`, `dose_response`, `hits`), the fitted `axes`,
    `protocol` (what was held out and fitted where, per table) and `notes`: what was skipped and why.
    """
    _check_inputs(features, metadata, RXRX19A_COLUMNS)
    metadata = metadata.reset_index(drop=True)
    common = dict(c=config.c, uv_is_positive=config.uv_is_positive, seed=config.seed)
    controls = classify.control_mask(metadata, config.uv_is_positive)
    ctrl_meta = metadata[controls].reset_index(drop=True)
    plate_step = lambda f: classify.plate_normalize(f, ctrl_meta, config.normalization)  # noqa: E731
    ctrl_x = plate_step(np.asarray(features)[controls])
    fold_x, held_out = (None, None) if fold_sets is None else _fold_features(fold_sets, ctrl_meta)
    fold_x = None if fold_x is None else [plate_step(f) for f in fold_x]
    table_meta = ctrl_meta
    if config.level == "well":
        ctrl_x, table_meta = aggregate_wells(ctrl_x, ctrl_meta)
        fold_x = None if fold_x is None else [aggregate_wells(f, ctrl_meta)[0] for f in fold_x]
    table1 = classify.classify_controls(ctrl_x, table_meta, n_splits=config.n_splits, group_by=config.group_by,
                                        whiten=config.normalization == "tvn", fold_features=fold_x,
                                        fold_held_out=held_out, **common)
    notes = [f"Table 1: {r.task}: {r.status}" for r in table1.itertuples() if r.status != "ok"]
    x = classify.normalize(features, metadata, config.normalization, uv_is_positive=config.uv_is_positive)
    if config.level == "well":
        x, metadata = aggregate_wells(x, metadata)
    axes = spaces.fit_axes(x, metadata, **common)
    coords = spaces.coordinates(x, metadata, axes, config.uv_is_positive)
    scores, skipped = efficacy.efficacy_scores(coords["on"].to_numpy(), metadata, config.uv_is_positive)
    coords["efficacy"] = scores
    notes += [f"efficacy: cell line {line} skipped ({why})" for line, why in skipped.items()]
    wells = efficacy.well_scores(scores, metadata)
    hits = efficacy.hit_table(wells, flat_threshold=config.flat_threshold,
                              toxic_threshold=config.toxic_threshold)
    if len(hits):
        few = hits[hits["fit_status"] == "too_few_doses"]
        notes += [f"Hill fit: {r.treatment} ({r.cell_type}) has {r.n_doses} dose(s), fewer than "
                  f"{efficacy.MIN_DOSES}: ranked, not fitted" for r in few.itertuples()]
    return dict(table1=table1, axes=axes, coordinates=coords, dose_response=efficacy.dose_response(wells),
                hits=hits, notes=notes,
                protocol=protocol(config, table1, None if fold_sets is None else bool(fold_sets)))


def analyze_zeroshot(features: np.ndarray, metadata: pd.DataFrame,
                     config: AnalysisConfig = AnalysisConfig()) -> dict:
    """Cell-type accuracy and confusion matrix on an RxRx1-shaped feature set (after the channel map).

    Experiments are held out when every cell type spans several, else plates (`zeroshot.zeroshot_group`).
    """
    _check_inputs(features, metadata, ("cell_type", "experiment", "plate"))
    summary, confusion = zeroshot.classify_cell_types(features, metadata, c=config.c, n_splits=config.n_splits,
                                                      seed=config.seed)
    text = (f"held out: whole {summary['group_by']}s (folds: {summary['held_out']}); fitted on each fold's "
            "training groups only: isotropic scaling, linear SVM; the feature extractor never saw an RxRx1 "
            "label (the ImageNet comparator: the model fine-tuned on all RxRx19a controls)")
    return dict(summary=summary, confusion=confusion, protocol=text)


def summary_table(screens: Mapping[str, dict], zeroshots: Mapping[str, dict] | None = None,
                  truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """Side-by-side table: one row per task and metric, one column per feature set."""
    columns = {}
    for name, result in screens.items():
        col = {}
        for r in result["table1"].itertuples():
            for metric in ("accuracy", "balanced_accuracy", "roc_auc"):
                col[f"{r.task}: {metric}"] = getattr(r, metric)
        hits = result["hits"]
        for line, sub in hits.groupby("cell_type") if len(hits) else ():
            col[f"{line}: hits (score > 0)"] = int(sub["hit"].sum())
            col[f"{line}: Hill fits ok"] = int((~sub["fit_failed"]).sum())
            top = sub.nsmallest(1, "rank").iloc[0]
            col[f"{line}: top compound"] = f"{top.treatment} ({top.max_score:.2f})"
        if truth is not None:
            agreement = efficacy.truth_agreement(result["dose_response"], truth)
            col["hidden efficacy: Spearman (dose points)"] = agreement["spearman_dose"]
            col["hidden efficacy: Spearman (best dose per compound)"] = agreement["spearman_compound"]
        if zeroshots and name in zeroshots:
            for metric in ("accuracy", "balanced_accuracy"):
                col[f"zero-shot cell type: {metric}"] = zeroshots[name]["summary"][metric]
            col["zero-shot cell type: held out"] = zeroshots[name]["summary"]["group_by"]
        columns[name] = col
    return pd.DataFrame(columns).rename_axis("task")


def _cell(v) -> str:
    """A table cell as text: floats to 3 decimals, NaN as '—'."""
    if isinstance(v, (float, np.floating)):
        return "—" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(frame: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured markdown table (floats to 3 decimals, NaN as '—')."""
    frame = frame.reset_index() if index else frame
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_table(frame: pd.DataFrame, index: bool = True) -> str:
    """The same table as `markdown_table`, as an HTML <table>."""
    frame = frame.reset_index() if index else frame
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>\n"
                   for row in frame.itertuples(index=False))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "features"


def _write_csv(path: str, frame: pd.DataFrame, index: bool = False) -> str:
    fileio.write_text(path, frame.to_csv(index=index))
    return path


def _highlighted(coords: pd.DataFrame, config: AnalysisConfig) -> list[str]:
    """The highlighted compounds this screen holds (Figure 4 draws only these; absent ones are skipped)."""
    return [c for c in config.highlight if c in set(coords["treatment"])]


def screen_figures(result: dict, config: AnalysisConfig = AnalysisConfig()) -> dict[str, bytes]:
    """Figures 3-5 of an `analyze_screen` result as PNG bytes, by file name (4 and 5 only when drawable)."""
    coords = result["coordinates"]
    threshold = float(result["axes"].scale_on(result["axes"].threshold))
    figures = {"fig3_controls.png": plots.controls_figure(coords[coords["role"] != "treated"], threshold)}
    present = _highlighted(coords, config)
    if present:
        figures["fig4_compounds.png"] = plots.compounds_figure(coords, present)
    if len(result["hits"]):
        figures["fig5_dose_response.png"] = plots.dose_response_figure(result["dose_response"], result["hits"],
                                                                       config.highlight, config.top_k)
    return figures


def _write_screen(result: dict, folder: str, config: AnalysisConfig) -> list[str]:
    """Tables and Figures 3-5 of one feature set; returns the paths written."""
    files = [_write_csv(os.path.join(folder, "table1_controls.csv"), result["table1"]),
             _write_csv(os.path.join(folder, "spaces.csv"), result["coordinates"]),
             _write_csv(os.path.join(folder, "dose_response.csv"), result["dose_response"]),
             _write_csv(os.path.join(folder, "hits.csv"), result["hits"])]
    path = os.path.join(folder, "table1_controls.md")
    fileio.write_text(path, markdown_table(result["table1"], index=False))
    files.append(path)
    for name, png in screen_figures(result, config).items():
        fileio.write_bytes(os.path.join(folder, name), png)
        files.append(os.path.join(folder, name))
    return files


# The report as a list of blocks, rendered to markdown and to HTML from the same structure:
# ("heading", level, text) | ("text", str) | ("table", DataFrame, show index) | ("figure", alt, path
# relative to the report) | ("bullets", [str]).
Block = tuple


def _report_blocks(summary: pd.DataFrame, screens: Mapping[str, dict], zeroshots: Mapping[str, dict],
                   folders: Mapping[str, str], config: AnalysisConfig) -> list[Block]:
    blocks: list[Block] = [
        ("heading", 1, "GAN-DL analysis"),
        ("text", f"Settings: {', '.join(f'{k}={v}' for k, v in dataclasses.asdict(config).items())}."),
        ("text", "Cross-validation holds out whole plates (or experiments): every fitted step of a Table 1 "
                 "or zero-shot number is fitted on the training folds only"
                 + (" (the per-plate normalisation uses each plate's own control sites, C+ and C- pooled, "
                    "labels unused, held-out plates included)" if config.normalization != "none" else "")
                 + "; efficacy scores put the mean C- control at -1 and the mean C+ control at +1 per cell "
                   "line (0 = efficacy threshold). Each feature set's Protocol lists what was held out and "
                   "fitted where, per table."),
        ("heading", 2, "Side by side"), ("table", summary, True)]
    for name, result in screens.items():
        folder = folders[name]
        blocks += [("heading", 2, name), ("heading", 3, "Table 1: control classification"),
                   ("table", result["table1"], False), ("figure", "E² controls", f"{folder}/fig3_controls.png")]
        if _highlighted(result["coordinates"], config):
            blocks.append(("figure", "C² compounds", f"{folder}/fig4_compounds.png"))
        hits = result["hits"]
        if len(hits):
            cols = ["cell_type", "rank", "treatment", "max_score", "auc", "ec50_uM", "pec50", "emax",
                    "hill_slope", "r2", "fit_status", "toxic_drop", "hit"]
            blocks += [("heading", 3, f"Top {config.top_k} compounds per cell line"),
                       ("table", hits[hits["rank"] <= config.top_k][cols], False),
                       ("figure", "dose-response", f"{folder}/fig5_dose_response.png")]
        if name in zeroshots:
            held = zeroshots[name]["summary"]["group_by"]
            blocks += [("heading", 3, f"Zero-shot cell typing (held out: whole {held}s)"),
                       ("table", zeroshots[name]["confusion"], True),
                       ("figure", "confusion", f"{folder}/fig6_confusion.png")]
        lines = [f"{table}: {text}" for table, text in _protocol_record(name, screens, zeroshots).items()]
        blocks += [("heading", 3, "Protocol"), ("bullets", lines)]
        if result["notes"]:
            blocks += [("heading", 3, "Notes"), ("bullets", result["notes"])]
    return blocks


def _protocol_record(name: str, screens: Mapping[str, dict], zeroshots: Mapping[str, dict]) -> dict[str, str]:
    """Table name -> what was held out and fitted where, for one feature set (report and analysis.json)."""
    record = dict(screens[name]["protocol"])
    if name in zeroshots:
        record["zeroshot_confusion"] = zeroshots[name]["protocol"]
    return record


def render_markdown(blocks: list[Block]) -> str:
    """report.md: figures are links relative to the report."""
    parts = []
    for kind, *args in blocks:
        if kind == "heading":
            parts.append(f"{'#' * args[0]} {args[1]}\n")
        elif kind == "text":
            parts.append(f"{args[0]}\n")
        elif kind == "table":
            parts.append(markdown_table(*args))
        elif kind == "figure":
            parts.append(f"![{args[0]}]({args[1]})\n")
        else:
            parts.append("".join(f"- {item}\n" for item in args[0]))
    return "\n".join(parts)


_HTML_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
               "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
               "th:first-child,td:first-child{text-align:left}img{max-width:100%}")


def render_html(blocks: list[Block], report_dir: str) -> str:
    """report.html: one self-contained page, figures read from `report_dir` and embedded as data URIs."""
    parts = []
    for kind, *args in blocks:
        if kind == "heading":
            parts.append(f"<h{args[0]}>{html.escape(args[1])}</h{args[0]}>")
        elif kind == "text":
            parts.append(f"<p>{html.escape(args[0])}</p>")
        elif kind == "table":
            parts.append(html_table(*args))
        elif kind == "figure":
            with tf.io.gfile.GFile(os.path.join(report_dir, args[1]), "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            parts.append(f'<img alt="{html.escape(args[0])}" src="data:image/png;base64,{data}">')
        else:
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in args[0]) + "</ul>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>GAN-DL analysis</title>'
            f"<style>{_HTML_STYLE}</style></head>\n<body>\n{body}\n</body>\n</html>\n")


def analyze(feature_sets: Mapping[str, FeatureSet], out_dir: str, config: AnalysisConfig = AnalysisConfig(),
            *, zeroshot_sets: Mapping[str, FeatureSet] | None = None,
            truth: pd.DataFrame | None = None, fold_sets: Mapping[str, Sequence[FoldSet]] | None = None) -> dict:
    """Run every analysis on every feature set and write the report folder; returns the results.

    `feature_sets` maps a name to (features [N, D], RxRx19a metadata [N]); `zeroshot_sets` maps the same
    names to RxRx1-shaped (features, metadata) for zero-shot cell typing; `truth` (a synthetic screen's
    truth.csv) adds the agreement with the hidden efficacy. Returns {"summary", "screens", "zeroshot",
    "files"}. `fold_sets` maps a name to its per-fold control features (see `analyze_screen`): an extractor
    fitted on the controls' labels must come with them (an empty list skips its Table 1).
    """
    if not feature_sets:
        raise ValueError("analyze needs at least one feature set")
    zeroshot_sets = zeroshot_sets or {}
    unknown = sorted(set(zeroshot_sets) - set(feature_sets))
    if unknown:
        raise ValueError(f"zero-shot sets {unknown} have no screen feature set of the same name")
    fold_sets = fold_sets or {}
    unknown = sorted(set(fold_sets) - set(feature_sets))
    if unknown:
        raise ValueError(f"per-fold sets {unknown} have no screen feature set of the same name")
    screens = {name: analyze_screen(f, m, config, fold_sets.get(name)) for name, (f, m) in feature_sets.items()}
    zeroshots = {name: analyze_zeroshot(f, m, config) for name, (f, m) in zeroshot_sets.items()}
    summary = summary_table(screens, zeroshots, truth)
    folders = {name: _slug(name) for name in feature_sets}
    if len(set(folders.values())) < len(folders):
        raise ValueError(f"feature set names {list(folders)} collide as folder names {list(folders.values())}")
    files = []
    for name, result in screens.items():
        files += _write_screen(result, os.path.join(out_dir, folders[name]), config)
    for name, result in zeroshots.items():
        folder = os.path.join(out_dir, folders[name])
        files.append(_write_csv(os.path.join(folder, "zeroshot_confusion.csv"), result["confusion"], index=True))
        fileio.write_bytes(os.path.join(folder, "fig6_confusion.png"), plots.confusion_figure(result["confusion"]))
        files.append(os.path.join(folder, "fig6_confusion.png"))
    files.append(_write_csv(os.path.join(out_dir, "summary.csv"), summary, index=True))
    record = dict(config=dataclasses.asdict(config), folders=folders,
                  notes={name: r["notes"] for name, r in screens.items()},
                  zeroshot={name: r["summary"] for name, r in zeroshots.items()},
                  protocol={name: _protocol_record(name, screens, zeroshots) for name in screens})
    fileio.write_json(os.path.join(out_dir, "analysis.json"), record)
    blocks = _report_blocks(summary, screens, zeroshots, folders, config)
    fileio.write_text(os.path.join(out_dir, "report.md"), render_markdown(blocks))
    fileio.write_text(os.path.join(out_dir, "report.html"), render_html(blocks, out_dir))
    files += [os.path.join(out_dir, name) for name in ("analysis.json", "report.md", "report.html")]
    return dict(summary=summary, screens=screens, zeroshot=zeroshots, files=files)
