"""GAN-DL entry point: one config file, one workdir, one mode.

  python -m gandl.main --config configs/demo.py --workdir /tmp/gandl_demo --mode convert
  python -m gandl.main --config configs/demo.py --workdir /tmp/gandl_demo --mode preview \
      --config.preview.num_images=16

Workdir layout: raw/ (the synthetic screen, when no data.root is given), shards/ (converted
TFRecords), preview.png. Every mode resumes: rerunning skips what is already complete.
"""

from __future__ import annotations

import os

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from gandl.data import convert, pipeline, render, rxrx

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (local or gs://).")
_MODE = flags.DEFINE_enum("mode", "convert", ["synth", "convert", "preview"], "What to run.")


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


def run_convert(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Raw screen -> shards; the synthetic screen is generated first when no data.root is configured."""
    d = config.data
    root = d.root or synthesize(config, workdir)
    screen = rxrx.read_screen(d.kind, root, metadata=d.metadata, channel_columns=d.channel_columns,
                              stains=d.stains)
    if not d.skip_bad_sites:
        rxrx.check_files(screen)
    options = convert.ConvertOptions(image_size=d.image_size, sites_per_shard=d.sites_per_shard,
                                     skip_bad_sites=d.skip_bad_sites, num_workers=d.num_workers)
    manifest = convert.convert(screen, shards_path(config, workdir), options)
    logging.info("%d sites in %d shards at %s (%d skipped)", manifest["num_sites"], len(manifest["shards"]),
                 shards_path(config, workdir), manifest["num_skipped"])
    return manifest


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
}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    MODES[_MODE.value](_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
