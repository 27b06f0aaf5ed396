"""GAN-DL entry point: one config file, one workdir, one mode.

  python -m gandl.main --config configs/demo.py --workdir /tmp/gandl_demo --mode all
  python -m gandl.main --config configs/demo.py --workdir /tmp/gandl_demo --mode preview \
      --config.preview.num_images=16

Modes: synth, convert, preview, train, embed, analyze, and all (convert -> train -> embed -> analyze).
Workdir layout: raw/ (the synthetic screen, when no data.root is given), shards/ (converted
TFRecords), preview.png, checkpoints/<step>, tensorboard/, samples/, embeddings/step_<step>/
({gandl,random_d,handcrafted}.npz/.parquet, zeroshot/), analysis/ (report.md, report.html, tables,
figures). Every mode resumes: rerunning skips what is already complete.
"""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from gandl._tf import tf
from gandl.data import convert, pipeline, render, rxrx

# Exit status of a run stopped by SIGTERM/preemption after checkpointing (EX_TEMPFAIL: rerun to resume),
# so launchers and sweeps can tell it from a finished run.
EXIT_INTERRUPTED = 75

# Feature sets exported and analysed side by side: file stem -> name in the report.
FEATURE_SETS = {"gandl": "GAN-DL", "random_d": "random-init D", "handcrafted": "handcrafted",
                "imagenet": "ImageNet DenseNet121"}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (local or gs://).")
_MODE = flags.DEFINE_enum("mode", "all", ["synth", "convert", "preview", "train", "embed", "analyze", "all"],
                          "What to run.")


def raw_screen_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.data.root or os.path.join(workdir, "raw")


def shards_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.data.shards or os.path.join(workdir, "shards")


def synthesize(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Write the embedded synthetic screen into workdir/raw (a no-op once it is complete)."""
    from gandl.data import synthetic  # only the demo needs the generator

    out = os.path.join(workdir, "raw")
    synthetic.write_rxrx19a(out, **config.synthetic.to_dict())
    return out


def _convert(screen: rxrx.Screen, out: str, d: ml_collections.ConfigDict) -> dict:
    if not d.skip_bad_sites:
        rxrx.check_files(screen)
    options = convert.ConvertOptions(image_size=d.image_size, sites_per_shard=d.sites_per_shard,
                                     skip_bad_sites=d.skip_bad_sites, num_workers=d.num_workers)
    manifest = convert.convert(screen, out, options)
    logging.info("%d sites in %d shards at %s (%d skipped)", manifest["num_sites"], len(manifest["shards"]), out,
                 manifest["num_skipped"])
    return manifest


def run_convert(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Raw screen -> shards; the synthetic screen is generated first when no data.root is configured."""
    d = config.data
    root = d.root or synthesize(config, workdir)
    screen = rxrx.read_screen(d.kind, root, metadata=d.metadata, channel_columns=d.channel_columns,
                              stains=d.stains)
    return _convert(screen, shards_path(config, workdir), d)


def zeroshot_shards(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Shards of the zero-shot (RxRx1-layout) set: given, converted from zeroshot.root, or synthesized."""
    z = config.zeroshot
    if z.shards:
        return z.shards
    root = z.root
    if not root:
        from gandl.data import synthetic

        root = str(synthetic.write_rxrx1(os.path.join(workdir, "raw_rxrx1"), image_size=config.synthetic.image_size,
                                         **z.synthetic.to_dict()))
    out = os.path.join(workdir, "shards_rxrx1")
    _convert(rxrx.read_rxrx1(root), out, config.data)
    return out


def run_train(config: ml_collections.ConfigDict, workdir: str):
    """Train (or resume) the StyleGAN2 on the shards."""
    from gandl.train import loop

    return loop.train(config, workdir)


def run_embed(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Export the latest checkpoint's D embeddings (plus baselines) of the screen and the zero-shot set."""
    import jax

    from gandl import embed
    from gandl.models import init_variables
    from gandl.train import sharding

    e, d = config.embed, config.data
    sharding.initialize_distributed(config.train.distributed)
    mesh = sharding.make_mesh()
    model, d_params, step, _ = embed.restore_discriminator(workdir, mesh, e.step if e.step >= 0 else None)
    checkpoint = os.path.join(workdir, "checkpoints", str(step))
    fns = {"gandl": embed.discriminator_features(model, d_params, mesh, e.orientation_average)}
    described = {"gandl": dict(checkpoint=checkpoint, orientation_average=e.orientation_average)}
    if e.random_baseline:
        random_d = init_variables(model, jax.random.key(config.seed + 1))[1]["params"]
        fns["random_d"] = embed.discriminator_features(model, random_d, mesh, e.orientation_average)
        described["random_d"] = dict(seed=config.seed + 1, orientation_average=e.orientation_average)
    if e.handcrafted:
        fns["handcrafted"] = embed.handcrafted
    out = os.path.join(workdir, "embeddings", f"step_{step}")
    provenance = dict(checkpoint=checkpoint, step=step, config=config.to_dict(), code_version=embed.code_version())
    targets = [(shards_path(config, workdir), out, d.channels)]
    if config.zeroshot.enabled:
        zchannels = tuple(config.zeroshot.channels) or rxrx.channel_map("rxrx1", "rxrx19a")
        targets.append((zeroshot_shards(config, workdir), os.path.join(out, "zeroshot"), zchannels))
    if e.imagenet_weights:  # fine-tuned on the screen's controls, then applied to every set; only if needed
        from gandl.analysis import imagenet

        spec = pipeline.open_records(targets[0][0], d.rxrx1_utils_image_size)
        fns["imagenet"] = embed.lazy(lambda: imagenet.fine_tune_comparator(
            spec, imagenet.FineTuneConfig(**e.imagenet.to_dict()), mesh, e.imagenet_weights, config.seed,
            channels=d.channels, intensity=d.intensity, crop_size=d.crop_size))
        described["imagenet"] = dict(e.imagenet.to_dict(), weights=e.imagenet_weights, seed=config.seed,
                                     fine_tuned_on=targets[0][0], channels=list(d.channels))
    for source, target, channels in targets:
        embed.export(pipeline.open_records(source, d.rxrx1_utils_image_size), target, fns, batch_size=e.batch_size,
                     channels=channels, intensity=d.intensity, crop_size=d.crop_size, part_batches=e.part_batches,
                     feature_settings=described, provenance=dict(provenance, dataset=source, channels=list(channels)))
    logging.info("embeddings in %s", out)
    return out


def latest_embeddings(workdir: str) -> str:
    folder = os.path.join(workdir, "embeddings")
    steps = sorted(int(n.strip("/").removeprefix("step_")) for n in tf.io.gfile.listdir(folder)
                   if n.startswith("step_")) if tf.io.gfile.isdir(folder) else []
    if not steps:
        raise FileNotFoundError(f"no embeddings in {folder}: run mode=embed first")
    return os.path.join(folder, f"step_{steps[-1]}")


def load_feature_sets(folder: str, sub: str = "") -> dict:
    """Report name -> (features, metadata) of every feature set exported in `folder/sub`."""
    from gandl.analysis import io as analysis_io

    paths = {name: os.path.join(folder, sub, f"{stem}.npz") for stem, name in FEATURE_SETS.items()}
    return {name: analysis_io.load_embeddings(p) for name, p in paths.items() if tf.io.gfile.exists(p)}


def check_site_ids(sets: dict, source: str, read_metadata, show: int = 5) -> None:
    """Refuse embeddings holding sites that the screen's metadata (`source`, when present) does not list.

    Such ids come from another screen or a stale folder; analysed, they would silently mix screens.
    Sites without embeddings are fine (skipped bad sites).
    """
    if not tf.io.gfile.exists(source):
        logging.info("no screen metadata at %s: embedding site ids not checked", source)
        return
    known = set(read_metadata()["site_id"].astype(str))
    for name, (_, meta) in sets.items():
        foreign = [s for s in meta["site_id"].astype(str) if s not in known]
        if foreign:
            raise ValueError(f"the {name} embeddings hold {len(foreign)} site ids that {source} does not list, "
                             f"e.g. {foreign[:show]}: were they exported from another screen? Export again "
                             "(mode=embed) or point data.root at their screen")


def run_analyze(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """SVMs, E²/C² spaces, efficacy, dose-response, zero-shot and the report, for every feature set."""
    import pandas as pd

    from gandl.analysis import report

    folder = latest_embeddings(workdir)
    truth_path = os.path.join(config.data.root or os.path.join(workdir, "raw"), "truth.csv")
    truth = None
    if tf.io.gfile.exists(truth_path):  # the synthetic screen's hidden truth
        with tf.io.gfile.GFile(truth_path) as f:
            truth = pd.read_csv(f)
    sets, d = load_feature_sets(folder), config.data
    if d.root or not d.shards:  # the screen the shards were converted from
        root = raw_screen_path(config, workdir)
        check_site_ids(sets, root if d.kind == "generic" else os.path.join(root, d.metadata),
                       lambda: rxrx.read_screen(d.kind, root, metadata=d.metadata, channel_columns=d.channel_columns,
                                                stains=d.stains).metadata)
    zeroshot = load_feature_sets(folder, "zeroshot") if config.zeroshot.enabled else None
    if zeroshot and not config.zeroshot.shards:
        zroot = config.zeroshot.root or os.path.join(workdir, "raw_rxrx1")
        check_site_ids(zeroshot, os.path.join(zroot, "metadata.csv"), lambda: rxrx.read_rxrx1(zroot).metadata)
    result = report.analyze(sets, os.path.join(workdir, "analysis"),
                            report.AnalysisConfig(**config.analysis.to_dict()), zeroshot_sets=zeroshot or None,
                            truth=truth)
    logging.info("report at %s", os.path.join(workdir, "analysis", "report.md"))
    return result


def run_all(config: ml_collections.ConfigDict, workdir: str):
    """The main job: convert -> train -> embed -> analyze, each resuming where it stopped.

    Returns the analysis results, or the train result when training was interrupted.
    """
    run_convert(config, workdir)
    result = run_train(config, workdir)
    if result.stopped_early:
        return result
    run_embed(config, workdir)
    return run_analyze(config, workdir)


def run_preview(config: ml_collections.ConfigDict, workdir: str) -> str:
    """A PNG grid of one (augmented) training batch, rendered with the RxRx colour map."""
    d = config.data
    spec = pipeline.open_records(shards_path(config, workdir), d.rxrx1_utils_image_size)
    ds = pipeline.train_dataset(spec, batch_size=config.preview.num_images, seed=config.seed,
                                channels=d.channels, intensity=d.intensity, crop_size=d.crop_size,
                                augment=d.augment, shuffle_buffer=d.shuffle_buffer)
    batch = next(ds.as_numpy_iterator())
    out = os.path.join(workdir, "preview.png")
    render.write_grid(out, batch["image"], pipeline.output_stains(spec, d.channels), config.preview.cols)
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    result = MODES[_MODE.value](_CONFIG.value, _WORKDIR.value)
    if getattr(result, "stopped_early", False):
        logging.warning("training stopped early (SIGTERM/preemption) with a checkpoint; rerun to resume")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
