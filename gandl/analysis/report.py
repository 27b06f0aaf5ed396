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
from collections.abc import Mapping

import numpy as np
import pandas as pd

from gandl import fileio
from gandl._tf import tf
from gandl.analysis import classify, efficacy, plots, spaces, zeroshot
from gandl.analysis.io import aggregate_wells
from gandl.data.rxrx import RXRX19A_COLUMNS

FeatureSet = tuple[np.ndarray, pd.DataFrame]


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
    fdr: float = 0.05  # false discovery rate of the hit calls (Benjamini-Hochberg q below it)
    seed: int = 0

    def __post_init__(self):
        if self.normalization not in classify.NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {classify.NORMALIZATIONS}, got {self.normalization!r}")
        if self.level not in ("site", "well"):
            raise ValueError(f"level must be 'site' or 'well', got {self.level!r}")
        if self.group_by not in ("plate", "experiment"):
            raise ValueError(f"group_by must be 'plate' or 'experiment', got {self.group_by!r}")
        if not 0.0 < self.fdr < 1.0:
            raise ValueError(f"fdr must be in (0, 1), got {self.fdr!r}")


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


def analyze_screen(features: np.ndarray, metadata: pd.DataFrame,
                   config: AnalysisConfig = AnalysisConfig()) -> dict:
    """Table 1, E²/C² coordinates, efficacy scores, dose-response and hits for one RxRx19a feature set.

    Returns a dict of DataFrames (`table1`, `coordinates`, `dose_response`, `hits`), the fitted `axes`,
    and `notes`: what was skipped and why (e.g. a cell line without controls gets no efficacy scores).
    """
    _check_inputs(features, metadata, RXRX19A_COLUMNS)
    metadata = metadata.reset_index(drop=True)
    x = classify.normalize(features, metadata, config.normalization, uv_is_positive=config.uv_is_positive)
    if config.level == "well":
        x, metadata = aggregate_wells(x, metadata)
    common = dict(c=config.c, uv_is_positive=config.uv_is_positive, seed=config.seed)
    table1 = classify.classify_controls(x, metadata, n_splits=config.n_splits, group_by=config.group_by,
                                        **common)
    notes = [f"Table 1: {r.task}: {r.status}" for r in table1.itertuples() if r.status != "ok"]
    axes = spaces.fit_axes(x, metadata, **common)
    coords = spaces.coordinates(x, metadata, axes, config.uv_is_positive)
    scores, skipped = efficacy.efficacy_scores(coords["on"].to_numpy(), metadata, config.uv_is_positive)
    coords["efficacy"] = scores
    notes += [f"efficacy: cell line {line} skipped ({why})" for line, why in skipped.items()]
    wells = efficacy.well_scores(scores, metadata)
    controls = efficacy.control_wells(scores, metadata, config.uv_is_positive)
    hits = efficacy.hit_table(wells, controls, fdr=config.fdr, flat_threshold=config.flat_threshold,
                              toxic_threshold=config.toxic_threshold)
    if len(hits):
        few = hits[hits["fit_status"] == "too_few_doses"]
        notes += [f"Hill fit: {r.treatment} ({r.cell_type}) has {r.n_doses} dose(s), fewer than "
                  f"{efficacy.MIN_DOSES}: ranked, not fitted" for r in few.itertuples()]
    return dict(table1=table1, axes=axes, coordinates=coords, dose_response=efficacy.dose_response(wells),
                hits=hits, notes=notes)


def analyze_zeroshot(features: np.ndarray, metadata: pd.DataFrame,
                     config: AnalysisConfig = AnalysisConfig()) -> dict:
    """Cell-type accuracy and confusion matrix on an RxRx1-shaped feature set (after the channel map)."""
    _check_inputs(features, metadata, ("cell_type", "experiment", "plate"))
    summary, confusion = zeroshot.classify_cell_types(features, metadata, c=config.c, n_splits=config.n_splits,
                                                      group_by=config.group_by, seed=config.seed)
    return dict(summary=summary, confusion=confusion)


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
            col[f"{line}: hits (q < fdr, score > 0)"] = int(sub["hit"].sum())
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
        ("text", "Cross-validation holds out whole plates (or experiments); efficacy scores put the mean C- "
                 "control at -1 and the mean C+ control at +1 per cell line (0 = efficacy threshold)."),
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
                    "hill_slope", "r2", "fit_status", "toxic_drop", "best_dose", "q", "hit"]
            blocks += [("heading", 3, f"Top {config.top_k} compounds per cell line"),
                       ("table", hits[hits["rank"] <= config.top_k][cols], False),
                       ("figure", "dose-response", f"{folder}/fig5_dose_response.png")]
        if name in zeroshots:
            blocks += [("heading", 3, "Zero-shot cell typing"), ("table", zeroshots[name]["confusion"], True),
                       ("figure", "confusion", f"{folder}/fig6_confusion.png")]
        if result["notes"]:
            blocks += [("heading", 3, "Notes"), ("bullets", result["notes"])]
    return blocks


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
            truth: pd.DataFrame | None = None) -> dict:
    """Run every analysis on every feature set and write the report folder; returns the results.

    `feature_sets` maps a name to (features [N, D], RxRx19a metadata [N]); `zeroshot_sets` maps the same
    names to RxRx1-shaped (features, metadata) for zero-shot cell typing; `truth` (a synthetic screen's
    truth.csv) adds the agreement with the hidden efficacy. Returns {"summary", "screens", "zeroshot",
    "files"}.
    """
    if not feature_sets:
        raise ValueError("analyze needs at least one feature set")
    zeroshot_sets = zeroshot_sets or {}
    unknown = sorted(set(zeroshot_sets) - set(feature_sets))
    if unknown:
        raise ValueError(f"zero-shot sets {unknown} have no screen feature set of the same name")
    screens = {name: analyze_screen(f, m, config) for name, (f, m) in feature_sets.items()}
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
                  zeroshot={name: r["summary"] for name, r in zeroshots.items()})
    fileio.write_json(os.path.join(out_dir, "analysis.json"), record)
    blocks = _report_blocks(summary, screens, zeroshots, folders, config)
    fileio.write_text(os.path.join(out_dir, "report.md"), render_markdown(blocks))
    fileio.write_text(os.path.join(out_dir, "report.html"), render_html(blocks, out_dir))
    files += [os.path.join(out_dir, name) for name in ("analysis.json", "report.md", "report.html")]
    return dict(summary=summary, screens=screens, zeroshot=zeroshots, files=files)
