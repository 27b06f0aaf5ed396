"""The analysis stage (mode analyze): the run's embeddings -> report, tables and figures in workdir/analysis.

Before any statistic it checks what it reads: each export's completion records, the embeddings' site ids
against the screen's metadata, the ground truth's columns, and, for a
label-fitted feature set, its per-fold exports against folds.json.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import pandas as pd
from absl import logging

from gandl import defaults, fileio
from gandl import workdir as layout
from gandl._tf import tf
from gandl.analysis import io, probe_table, report
from gandl.data import rxrx, vocabulary
from gandl.data import screen as screen_lib
from gandl.data.synthetic.truth import TRUTH_COLUMNS
from gandl.embed import records
from gandl.features import registry


def read_truth(config: defaults.Config, workdir: str) -> pd.DataFrame | None:
    """The ground truth the analysis is scored against, or None.

    `analysis.truth` names one (it must exist and have the synthetic screen's truth.csv columns); without
    it, a `truth.csv` beside the screen's metadata is used only when its columns match that schema, and
    ignored with a warning saying why otherwise.
    """
    named = config.analysis.truth
    path = named or os.path.join(layout.raw(config.data.root, workdir), "truth.csv")
    if not tf.io.gfile.exists(path):
        if named:
            raise FileNotFoundError(f"analysis.truth={named!r}: no such file")
        return None
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            truth = pd.read_csv(f)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        if named:
            raise screen_lib.MetadataError(f"analysis.truth={named!r}: not a readable CSV ({e})") from None
        logging.warning("ignoring %s: not a readable CSV (%s)", path, e)
        return None
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        if named:
            raise screen_lib.MetadataError(f"analysis.truth={named!r} lacks the truth columns {missing} (expected "
                                           f"{TRUTH_COLUMNS})")
        logging.warning("ignoring %s: it lacks the truth columns %s of the synthetic screen's schema; name a ground "
                        "truth with analysis.truth", path, missing)
        return None
    return truth


def check_zeroshot_pairs(folder: str, zeroshot_folder: str) -> None:
    """Refuse a zero-shot feature set whose screen set is not exported (`ExportError` naming both folders), before
    anything is read: the report scores each set on both, and the export that lost one is redone by --mode embed."""
    alone = sorted(set(records.exported_sets(zeroshot_folder)) - set(records.exported_sets(folder)))
    if alone:
        raise records.ExportError(f"{zeroshot_folder} holds zero-shot feature sets {alone} that {folder} has no screen "
                                  "export of; run --mode embed (it resumes), or remove them")


def check_site_ids(sets: dict, read_metadata: Callable[[], screen_lib.Screen], show: int = 5) -> None:
    """Refuse embeddings holding sites that the screen (`read_metadata()`, when it is there) does not list.

    Such ids come from another screen or a stale folder; analysed, they would silently mix screens.
    Sites without embeddings are fine (skipped bad sites).
    """
    try:
        screen = read_metadata()
    except screen_lib.ScreenNotFound as e:
        logging.info("embedding site ids not checked: %s", e)
        return
    known = set(screen.metadata["site_id"].astype(str))
    for name, (_, meta) in sets.items():
        foreign = [s for s in meta["site_id"].astype(str) if s not in known]
        if foreign:
            raise ValueError(f"the {name} embeddings hold {len(foreign)} site ids that {screen.source} does not "
                             f"list, e.g. {foreign[:show]}: were they exported from another screen? Export again "
                             "(mode=embed) or point data.root at their screen")


def describe_source(config: defaults.Config, workdir: str, folder: str) -> str:
    """Which checkpoint the analysed embeddings come from and how it was chosen (the report's first line)."""
    step = layout.embedding_step(folder)
    how = (f"named by embed.step={step}" if config.embed.step >= 0
           else "the highest exported step, as embed.step=-1 asks")
    checkpoints = layout.checkpoint_steps(workdir)
    text = f"Features of the discriminator at training step {step} ({how}"
    text += f"; checkpoints reach step {checkpoints[-1]})." if checkpoints else ")."
    table = probe_table.read_table(layout.probe_table(workdir))
    return text if table is None else f"{text} {probe_table.describe_step(table, step)}"


NUCLEAR_PROXY = "gandl_nuclear_area"  # the metadata column `nuclear_proxy` adds: the nuclei's share of each site


def nuclear_proxy(sets: dict, folder: str, schema: screen_lib.ScreenSchema) -> screen_lib.ScreenSchema:
    """Give the hit calls a cell-count proxy where the screen names none: the nuclear stain's foreground fraction
    of each site, the share of the field inside nuclei (from a feature set that holds foreground fractions,
    `registry.foreground_columns`: the handcrafted one), added to every feature set's metadata as NUCLEAR_PROXY,
    and the schema that names it. Fewer cells, fewer nuclei; a dying cell's nucleus shrinks as it brightens
    (pyknosis), so the area falls with cell death where the stain's mean intensity barely moves. Unchanged when
    the schema names a readout or nothing provides one.
    """
    columns = {label: column for label, column in registry.foreground_columns().items() if label in sets}
    if schema.viability or not columns:
        return schema
    export = fileio.read_json(os.path.join(folder, records.SETTINGS))
    stains = [export["records"]["stains"][c - 1] for c in export["channels"]]
    nuclear = [i for i, stain in enumerate(stains) if stain in vocabulary.NUCLEAR_STAINS]
    if not nuclear:
        logging.info("no nuclear stain among %s: cytotoxicity is estimated only where screen.viability names a "
                     "readout", stains)
        return schema
    label, column = next(iter(columns.items()))
    features, meta = sets[label]
    proxy = pd.Series(features[:, column(len(stains), nuclear[0])], index=meta["site_id"].astype(str).to_numpy())
    for _, set_meta in sets.values():
        set_meta[NUCLEAR_PROXY] = set_meta["site_id"].astype(str).map(proxy).to_numpy()
    return dataclasses.replace(schema, viability=NUCLEAR_PROXY)


def run(config: defaults.Config, workdir: str) -> dict:
    """SVMs, E²/C² spaces, efficacy, dose-response, zero-shot and the report, for every feature set."""
    step = config.embed.step
    folder = layout.embeddings(workdir, step) if step >= 0 else layout.latest_embeddings(workdir)
    if not tf.io.gfile.isdir(folder):
        raise FileNotFoundError(f"embed.step={step}: no embeddings in {folder}; run mode=embed with it first")
    exported = [folder] + ([layout.zeroshot_embeddings(folder)] if config.zeroshot.enabled else [])
    for export in filter(tf.io.gfile.isdir, exported):  # only finished, intact sets are read
        records.check_finished(export)
    if config.zeroshot.enabled:
        check_zeroshot_pairs(folder, layout.zeroshot_embeddings(folder))
    truth = read_truth(config, workdir)
    sets, data = io.load_feature_sets(folder), config.data
    schema = screen_lib.configured(config)
    if data.root or not data.shards:  # the screen the shards were converted from
        source = screen_lib.Source.from_config(data, layout.raw(config.data.root, workdir))
        check_site_ids(sets, lambda: screen_lib.read_screen(source, schema))
    zeroshot = io.load_feature_sets(layout.zeroshot_embeddings(folder)) if config.zeroshot.enabled else None
    if zeroshot and not config.zeroshot.shards:
        zeroshot_root = layout.zeroshot_raw(config.zeroshot.root, workdir)
        check_site_ids(zeroshot, lambda: rxrx.read_rxrx1(zeroshot_root))
    schema = nuclear_proxy(sets, folder, schema)
    # Label-fitted sets: Table 1 scores them with their per-fold exports only.
    fold_sets = {extractor.label: io.load_fold_sets(folder, name) for name, extractor in registry.EXTRACTORS.items()
                 if extractor.per_fold and tf.io.gfile.exists(os.path.join(folder, f"{name}.npz"))}
    result = report.analyze(sets, layout.analysis(workdir),
                            report.AnalysisConfig(**defaults.values(config.analysis),
                                                  well_aggregate=config.embed.well_aggregate),
                            zeroshot_sets=zeroshot or None, truth=truth, fold_sets=fold_sets or None,
                            source=describe_source(config, workdir, folder), schema=schema)
    logging.info("report at %s", os.path.join(layout.analysis(workdir), "report.md"))
    return result
