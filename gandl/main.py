"""GAN-DL entry point: one config file, one workdir, one mode.

  gandl --config configs/demo.py --workdir /tmp/gandl_demo --mode all
  gandl --config configs/demo.py --workdir /tmp/gandl_demo --mode preview --config.preview.num_images=16

(`gandl` is `python -m gandl.main`.) Modes: check, synth, convert, preview, train, embed, analyze, and all
(convert -> train -> embed -> analyze). Before any work every mode checks what it will use, so a mistake
costs seconds and one line: the config (gandl.check; the modes that run the model also trace its train
step and embedding, `check` runs only that), the screen's metadata and schema (config.screen) when it reads
the raw screen, and the shards when it reads them. The workdir's layout is `gandl.workdir`'s. Every mode
resumes: rerunning skips what is already complete. One run at a time works in a workdir
(`gandl.workdir.locked`); a damaged or held file ends a run with one line naming it (`gandl.fileio.FileFault`).
TensorFlow and JAX load only once a mode runs, so `gandl --help` and flag mistakes answer at once.
"""

from __future__ import annotations

import functools
import logging as pylogging
import os
import sys
from typing import TYPE_CHECKING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's / XLA's C++ INFO lines: set before they load

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

if TYPE_CHECKING:
    import ml_collections

    from gandl.data.screen import Screen

# Exit status of a run stopped by SIGTERM/preemption after checkpointing (EX_TEMPFAIL: rerun to resume),
# so launchers and sweeps can tell it from a finished run.
EXIT_INTERRUPTED = 75

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file; any of its fields can be "
                                          "overridden with --config.FIELD=VALUE, e.g. --config.data.root=/data/screen",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (local or gs://).")
_MODE = flags.DEFINE_enum("mode", "all", ["check", "synth", "convert", "preview", "train", "embed", "analyze", "all"],
                          "What to run; every mode checks the config (and the data it reads) first, `check` only "
                          "that.")
_DEVICES = flags.DEFINE_string("devices", "", "Check for this many devices (8) or a TPU type (v3-8), simulated on "
                               "this CPU; '' = the devices JAX finds here.")
_COMPILE = flags.DEFINE_list("compile", ["step", "main_step", "embed"],
                             "With --mode check and a TPU type in --devices (and libtpu installed): the programs XLA "
                             "compiles for its topology: step (every phase due), main_step, embed; '' for none "
                             "(the traced estimate). Results are kept in a report cache ($GANDL_COST_CACHE).")


def synthesize(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Write the embedded synthetic screen into workdir/raw (a no-op once it is complete)."""
    from gandl import workdir as layout
    from gandl.data.synthetic import layouts as synthetic  # only the demo needs the generator

    out = layout.raw(config, workdir)
    synthetic.write_rxrx19a(out, **config.synthetic.to_dict())
    return out


def _convert(screen: Screen, out: str, d: ml_collections.ConfigDict) -> dict:
    from gandl.data import convert
    from gandl.data import screen as screen_lib

    if not d.skip_bad_sites:
        screen_lib.check_files(screen)
    options = convert.ConvertOptions(image_size=d.image_size, sites_per_shard=d.sites_per_shard,
                                     skip_bad_sites=d.skip_bad_sites, num_workers=d.num_workers)
    manifest = convert.convert(screen, out, options)
    logging.info("%d sites in %d shards at %s (%d skipped)", manifest["num_sites"], len(manifest["shards"]), out,
                 manifest["num_skipped"])
    return manifest


def convert_zeroshot(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Shards of the zero-shot (RxRx1-layout) set: given, converted from zeroshot.root, or synthesized first."""
    from gandl import workdir as layout
    from gandl.data import rxrx

    z = config.zeroshot
    out = layout.zeroshot_shards(config, workdir)
    if z.shards:
        return out
    root = layout.zeroshot_raw(config, workdir)
    if not z.root:
        from gandl.data.synthetic import layouts as synthetic

        synthetic.write_rxrx1(root, image_size=config.synthetic.image_size, **z.synthetic.to_dict())
    _convert(rxrx.read_rxrx1(root), out, config.data)
    return out


def read_screen(config: ml_collections.ConfigDict, root: str | None = None) -> Screen:
    """The screen config.data names (or the one at `root`), its schema (config.screen) checked against its
    metadata and its channels against the model: what convert will read, refused in one line if it cannot be.

    Reads metadata and channel references only, never pixels.
    """
    from gandl.data import screen as screen_lib

    d = config.data
    source = screen_lib.Source.from_config(d, root)
    schema = screen_lib.from_config(config.screen.to_dict(), d.kind)
    screen = screen_lib.read_screen(source, schema)
    screen_lib.validate(screen.metadata, schema, screen.source)
    stains, wanted = screen.stains, config.model.num_channels
    channels = tuple(d.channels) or tuple(range(1, len(stains) + 1))
    if not all(1 <= c <= len(stains) for c in channels):
        raise screen_lib.MetadataError(f"data.channels={channels}: {screen.source} has {len(stains)} channels "
                                       f"{stains}; name channels in 1..{len(stains)}")
    if len(channels) != wanted:
        picked = f" read as data.channels={channels}" if d.channels else ""
        pick = f" or pick {wanted} of them with data.channels" if wanted < len(stains) else ""
        raise screen_lib.MetadataError(f"model.num_channels={wanted}: {screen.source} has {len(stains)} channels "
                                       f"{stains}{picked}; set model.num_channels={len(channels)}{pick}")
    return screen


def run_convert(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Raw screen -> shards (the synthetic screen is generated first when no data.root is configured), and
    the zero-shot set's shards when zero-shot cell typing is enabled."""
    from gandl import workdir as layout

    d = config.data
    screen = read_screen(config, d.root or synthesize(config, workdir))
    manifest = _convert(screen, layout.shards(config, workdir), d)
    if config.zeroshot.enabled:
        convert_zeroshot(config, workdir)
    return manifest


def run_train(config: ml_collections.ConfigDict, workdir: str):
    """Train (or resume) the StyleGAN2 on the shards."""
    from gandl.train import loop

    probe = None
    if config.train.probe_every:  # the probe sits above train (it uses features and analysis): passed in
        from gandl import probe as probe_lib

        probe = probe_lib.Probe(config, workdir)
    return loop.train(config, workdir, probe=probe)


def run_embed(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Export every feature set of `embed.feature_sets` for the screen and the zero-shot set.

    The discriminator comes from the latest (or `embed.step`) checkpoint; an extractor is built only when
    some target still lacks its feature set. A finished export with other settings is refused; one that
    lacks some of the sets gets them added.
    """
    from gandl import embed, sharding
    from gandl import workdir as layout
    from gandl.data import pipeline, rxrx
    from gandl.features import base, registry

    e, d = config.embed, config.data
    sharding.initialize_distributed(config.train.distributed)
    mesh = sharding.make_mesh()
    model, d_params, step, _ = embed.restore_discriminator(workdir, mesh, e.step if e.step >= 0 else None)
    out = layout.embeddings(workdir, step)
    options = pipeline.InputOptions.from_config(config)
    targets = [(layout.shards(config, workdir), out, options)]
    if config.zeroshot.enabled:
        zchannels = tuple(config.zeroshot.channels) or rxrx.channel_map("rxrx1", "rxrx19a")
        targets.append((layout.zeroshot_shards(config, workdir), layout.zeroshot_embeddings(out),
                        options.replace(channels=zchannels)))
    screen = pipeline.open_records(targets[0][0], d.rxrx1_utils_image_size)
    context = base.Context(config, mesh, model, d_params, screen, options)
    checkpoint = os.path.join(layout.checkpoints(workdir), str(step))
    # What each feature set is, for the exports' settings records: its extractor, the checkpoint and the
    # embed fields that shape its values (so sets can be added to a finished export, see embed.export).
    described = {name: dict(extractor=registry.get(name).target, checkpoint=checkpoint, seed=config.seed,
                            **{k: e.to_dict()[k] for k in registry.get(name).embed_fields},
                            **registry.settings(name, context))  # e.g. the width, the mbstd value D is fed
                 for name in e.feature_sets}
    # Built on first use: a finished export skips costly set-ups (the comparator's fine-tuning).
    fns = {name: embed.lazy(functools.partial(registry.build, name, context)) for name in e.feature_sets}
    provenance = dict(checkpoint=checkpoint, step=step, config=config.to_dict(), code_version=embed.code_version())
    for source, target, target_options in targets:
        spec = pipeline.open_records(source, d.rxrx1_utils_image_size)
        embed.export(spec, target, fns, batch_size=e.batch_size, options=target_options, part_batches=e.part_batches,
                     feature_settings=described, well_aggregate=e.well_aggregate,
                     provenance=dict(provenance, dataset=source, channels=list(target_options.channels)))
    if "imagenet" in e.feature_sets:
        _export_comparator_folds(config, context, out, described["imagenet"], provenance)
    logging.info("embeddings in %s", out)
    return out


def _export_comparator_folds(config: ml_collections.ConfigDict, context, out: str, described: dict,
                             provenance: dict) -> None:
    """Table 1's ImageNet comparator: one model per fold of the analysis' folds, never one that saw the fold."""
    from gandl import embed
    from gandl.analysis import classify
    from gandl.analysis import io as analysis_io
    from gandl.features import imagenet

    a, e = config.analysis, config.embed
    _, meta = analysis_io.load_embeddings(os.path.join(out, "imagenet.npz"))
    try:
        folds = classify.control_folds(meta, n_splits=a.n_splits, group_by=a.group_by, seed=a.seed,
                                       uv_is_positive=a.uv_is_positive)
    except classify.CVError as error:
        logging.warning("no per-fold ImageNet comparators (its Table 1 will be skipped): %s", error)
        return
    settings = imagenet.FineTuneConfig(**e.imagenet.to_dict())
    every_control = imagenet.Controls(uv_is_positive=a.uv_is_positive)

    def fine_tuned(held_out: tuple[str, ...]):
        controls = imagenet.Controls(held_out, a.group_by, a.uv_is_positive)
        return imagenet.fine_tune_comparator(context.screen, settings, context.mesh, e.imagenet_weights, config.seed,
                                             context.options, controls)

    embed.export_folds(context.screen, out, folds, fine_tuned, batch_size=e.batch_size,
                       controls=lambda batch: imagenet.control_labels(batch, every_control) >= 0,
                       provenance=provenance, feature_settings=described, group_by=a.group_by,
                       options=context.options, part_batches=e.part_batches)


def read_truth(config: ml_collections.ConfigDict, workdir: str):
    """The ground truth the analysis is scored against, or None.

    `analysis.truth` names one (it must exist and have the synthetic screen's truth.csv columns); without
    it, a `truth.csv` beside the screen's metadata is used only when its columns match that schema, and
    ignored with a warning saying why otherwise.
    """
    import pandas as pd

    from gandl import workdir as layout
    from gandl._tf import tf
    from gandl.data.synthetic.truth import TRUTH_COLUMNS

    named = config.analysis.truth
    path = named or os.path.join(layout.raw(config, workdir), "truth.csv")
    if not tf.io.gfile.exists(path):
        if named:
            raise FileNotFoundError(f"analysis.truth={named!r}: no such file")
        return None
    with tf.io.gfile.GFile(path) as f:
        truth = pd.read_csv(f)
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        if named:
            raise ValueError(f"analysis.truth={named!r} lacks the truth columns {missing} (expected {TRUTH_COLUMNS})")
        logging.warning("ignoring %s: it lacks the truth columns %s of the synthetic screen's schema; name a ground "
                        "truth with analysis.truth", path, missing)
        return None
    return truth


def check_site_ids(sets: dict, read_metadata, show: int = 5) -> None:
    """Refuse embeddings holding sites that the screen's metadata (`read_metadata()`, when it is there) does not
    list.

    Such ids come from another screen or a stale folder; analysed, they would silently mix screens.
    Sites without embeddings are fine (skipped bad sites).
    """
    from gandl.data.screen import ScreenNotFound

    try:
        metadata, source = read_metadata()
    except ScreenNotFound as e:
        logging.info("embedding site ids not checked: %s", e)
        return
    known = set(metadata["site_id"].astype(str))
    for name, (_, meta) in sets.items():
        foreign = [s for s in meta["site_id"].astype(str) if s not in known]
        if foreign:
            raise ValueError(f"the {name} embeddings hold {len(foreign)} site ids that {source} does not list, "
                             f"e.g. {foreign[:show]}: were they exported from another screen? Export again "
                             "(mode=embed) or point data.root at their screen")


def run_analyze(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """SVMs, E²/C² spaces, efficacy, dose-response, zero-shot and the report, for every feature set."""
    from gandl import workdir as layout
    from gandl._tf import tf
    from gandl.analysis import io as analysis_io
    from gandl.analysis import report
    from gandl.data import rxrx
    from gandl.data import screen as screen_lib
    from gandl.features import registry

    step = config.embed.step
    folder = layout.embeddings(workdir, step) if step >= 0 else layout.latest_embeddings(workdir)
    if not tf.io.gfile.isdir(folder):
        raise FileNotFoundError(f"embed.step={step}: no embeddings in {folder}; run mode=embed with it first")
    truth = read_truth(config, workdir)
    sets, d = analysis_io.load_feature_sets(folder), config.data
    schema = screen_lib.from_config(config.screen.to_dict(), d.kind)
    if config.analysis.uv_is_positive and schema == screen_lib.PRESETS["rxrx19a"]:
        schema = screen_lib.PRESETS["rxrx19a_uv"]  # the one RxRx19a knob the probe and the comparator read too
    if d.root or not d.shards:  # the screen the shards were converted from
        source = screen_lib.Source.from_config(d, layout.raw(config, workdir))
        check_site_ids(sets, lambda: _metadata(screen_lib.read_screen(source, schema)))
    zeroshot = analysis_io.load_feature_sets(layout.zeroshot_embeddings(folder)) if config.zeroshot.enabled else None
    if zeroshot and not config.zeroshot.shards:
        zroot = layout.zeroshot_raw(config, workdir)
        check_site_ids(zeroshot, lambda: _metadata(rxrx.read_rxrx1(zroot)))
    fold_sets = None
    if tf.io.gfile.exists(os.path.join(folder, "imagenet.npz")):  # fitted on labels: Table 1 needs its folds
        fold_sets = {registry.get("imagenet").label: analysis_io.load_fold_sets(folder)}
    result = report.analyze(sets, layout.analysis(workdir),
                            report.AnalysisConfig(**config.analysis.to_dict(),
                                                  well_aggregate=config.embed.well_aggregate),
                            zeroshot_sets=zeroshot or None,
                            truth=truth, fold_sets=fold_sets, source=describe_source(config, workdir, folder),
                            schema=schema)
    logging.info("report at %s", os.path.join(layout.analysis(workdir), "report.md"))
    return result


def _metadata(screen: Screen) -> tuple:
    return screen.metadata, screen.source


def describe_source(config: ml_collections.ConfigDict, workdir: str, folder: str) -> str:
    """Which checkpoint the analysed embeddings come from and how it was chosen (the report's first line)."""
    from gandl import probe as probe_lib
    from gandl import workdir as layout

    step = layout.embedding_step(folder)
    how = (f"named by embed.step={step}" if config.embed.step >= 0
           else "the highest exported step, as embed.step=-1 asks")
    checkpoints = layout.checkpoint_steps(workdir)
    text = f"Features of the discriminator at training step {step} ({how}"
    text += f"; checkpoints reach step {checkpoints[-1]})." if checkpoints else ")."
    table = probe_lib.read_table(layout.probe_table(workdir))
    return text if table is None else f"{text} {probe_lib.describe_step(table, step)}"


def run_all(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """The main job: convert -> train -> embed -> analyze, each resuming where it stopped.

    Returns the analysis results, or None when training was interrupted (SIGTERM / preemption).
    """
    run_convert(config, workdir)
    if run_train(config, workdir).stopped_early:
        return None
    run_embed(config, workdir)
    return run_analyze(config, workdir)


def run_preview(config: ml_collections.ConfigDict, workdir: str) -> str:
    """A PNG grid of one (augmented) training batch, rendered with the RxRx colour map."""
    from gandl import workdir as layout
    from gandl.data import pipeline, render

    d = config.data
    spec = pipeline.open_records(layout.shards(config, workdir), d.rxrx1_utils_image_size)
    options = pipeline.InputOptions.from_config(config)
    ds = pipeline.train_dataset(spec, options, batch_size=config.preview.num_images, seed=config.seed)
    batch = next(ds.as_numpy_iterator())
    out = layout.preview(workdir)
    render.write_grid(out, batch["image"], pipeline.output_stains(spec, options.channels), config.preview.cols)
    logging.info("wrote %s", out)
    return out


MODES = {
    "synth": synthesize,
    "convert": run_convert,
    "preview": run_preview,
    "train": run_train,
    "embed": run_embed,
    "analyze": run_analyze,
    "all": run_all,
}


class _OwnInfoOnly(pylogging.Filter):
    """Below WARNING, pass GAN-DL's own records only: orbax, absl, TensorFlow, JAX and copairs log through
    the same handler and would bury the progress lines."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def quiet_third_party_logs() -> None:
    """GAN-DL's INFO lines and progress bars stay; other libraries' INFO goes unless --verbosity > 0 asks."""
    if logging.get_verbosity() <= logging.INFO:
        handler = logging.get_absl_handler()
        if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
            handler.addFilter(_OwnInfoOnly())


def precheck(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
    """What `mode` will read, checked before anything slow: the raw screen, its schema and channels (modes that
    read it, when data.root names one; the synthetic screen is checked as it is converted), or the shards."""
    from gandl.data import screen as screen_lib

    d = config.data
    screen_lib.from_config(config.screen.to_dict(), d.kind)  # a preset or field that does not exist
    if mode in ("check", "embed", "all"):
        from gandl import profiles

        profiles.check_aggregate(config.embed.well_aggregate)
    if mode in ("check", "convert", "all") and d.root:
        read_screen(config)
    if mode in ("preview", "train", "embed"):
        from gandl import workdir as layout
        from gandl.data import pipeline

        pipeline.open_records(layout.shards(config, workdir), d.rxrx1_utils_image_size)


# Modes that run the model: the config check traces their train step and embedding program first.
_TRACED = ("check", "train", "embed", "all")


# The errors that mean a mistake in the config or the data (said in one line), not a fault of the code. A module
# not imported yet cannot have raised its error, so checking one loads nothing.
_USER_ERRORS = (("gandl.data.screen", "MetadataError"), ("gandl.check", "ConfigCheckError"),
                ("gandl.data.convert", "ConversionError"), ("gandl.embed", "ExportError"),
                ("gandl.profiles", "SettingError"), ("gandl.fileio", "FileFault"))


def _user_error(error: Exception) -> bool:
    kinds = [getattr(sys.modules[module], name) for module, name in _USER_ERRORS if module in sys.modules]
    return isinstance(error, (FileNotFoundError, *kinds))


def _config(name: str = "config") -> ml_collections.ConfigDict:
    """The --config file's config; a file that cannot be loaded is said in one line."""
    try:
        config = _CONFIG.value
        config.keys()  # a config file that failed to load raises on first use
        return config
    except OSError as e:
        reason = str(e).strip().splitlines()[-1].strip()
        sys.exit(f"gandl: --{name}={config_flags.get_config_filename(flags.FLAGS[name])}: cannot load it ({reason})")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    quiet_third_party_logs()
    mode = _MODE.value
    if _DEVICES.value and mode != "check":
        raise app.UsageError("--devices simulates devices for --mode check only")
    from gandl import cost

    unknown = sorted(set(_COMPILE.value) - set(cost.PROGRAMS))
    if unknown:
        raise app.UsageError(f"--compile: unknown programs {unknown}; choose from {', '.join(cost.PROGRAMS)}")
    if _DEVICES.value and not _DEVICES.value.isdigit():
        try:
            cost.tpu_slice(_DEVICES.value)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    config = _config()
    try:
        precheck(config, _WORKDIR.value, mode)
        from gandl import check  # a config that cannot run here fails now, with every reason

        report = check.run(config, _DEVICES.value, tuple(_COMPILE.value), traced=mode in _TRACED)
        print(report or f"config check passed (--mode {mode} runs no model: nothing traced)", flush=True)
        if mode == "check":
            return
        import jax  # started by the check (with jax.distributed when configured): the first process holds the lock

        from gandl import workdir as layout

        with layout.locked(_WORKDIR.value, mode, hold=jax.process_index() == 0):
            result = MODES[mode](config, _WORKDIR.value)
    except Exception as e:
        if not _user_error(e):
            raise
        checked = type(e).__name__ == "ConfigCheckError"  # about the config file: named first
        where = f"{config_flags.get_config_filename(flags.FLAGS['config'])}: " if checked else ""
        sys.exit(f"gandl: {where}{e}")
    if (mode == "train" and result.stopped_early) or (mode == "all" and result is None):
        logging.warning("training stopped early (SIGTERM/preemption) with a checkpoint; rerun to resume")
        sys.exit(EXIT_INTERRUPTED)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with --help answered on stdout (exit 0) and flag or config-override mistakes said in
    one line."""
    if any(a in ("-h", "-?", "--help", "--helpshort") for a in argv[1:]):
        print(__doc__)
        print(flags.FLAGS.module_help(sys.modules[__name__]))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"gandl: {e} (try --help)")
    except Exception as e:  # noqa: BLE001 (a --config.field override the config lacks, or a value it cannot take)
        cause = e
        while cause.args and isinstance(cause.args[0], BaseException):  # config_flags wraps the KeyError it met
            cause = cause.args[0]
        text = cause.args[0] if cause.args and isinstance(cause.args[0], str) else str(cause)
        sys.exit(f"gandl: a --config override cannot apply: {' '.join(text.split())}")


def run() -> None:
    """The `gandl` command."""
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
