"""The data stage: the modes synth, convert and preview, from a run's config to files in its workdir."""

from __future__ import annotations

import ml_collections
from absl import logging

from gandl import workdir as layout
from gandl.data import convert, pipeline, render, rxrx
from gandl.data import screen as screen_lib


def synthesize(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Write the embedded synthetic screen into workdir/raw (a no-op once it is complete)."""
    from gandl.data.synthetic import layouts as synthetic  # only the demo needs the generator

    out = layout.raw(config.data.root, workdir)
    synthetic.write_rxrx19a(out, **config.synthetic.to_dict())
    return out


def _convert(screen: screen_lib.Screen, out: str, data: ml_collections.ConfigDict) -> dict:
    if not data.skip_bad_sites:
        screen_lib.check_files(screen)
    options = convert.ConvertOptions(image_size=data.image_size, sites_per_shard=data.sites_per_shard,
                                     skip_bad_sites=data.skip_bad_sites, num_workers=data.num_workers)
    manifest = convert.convert(screen, out, options)
    logging.info("%d sites in %d shards at %s (%d skipped)", manifest["num_sites"], len(manifest["shards"]), out,
                 manifest["num_skipped"])
    return manifest


def convert_zeroshot(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Shards of the zero-shot (RxRx1-layout) set: given, converted from zeroshot.root, or synthesized first."""
    zeroshot = config.zeroshot
    out = layout.zeroshot_shards(config.zeroshot.shards, workdir)
    if zeroshot.shards:
        return out
    root = layout.zeroshot_raw(config.zeroshot.root, workdir)
    if not zeroshot.root:
        from gandl.data.synthetic import layouts as synthetic

        synthetic.write_rxrx1(root, image_size=config.synthetic.image_size, **zeroshot.synthetic.to_dict())
    _convert(rxrx.read_rxrx1(root), out, config.data)
    return out


def convert_screen(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Raw screen -> shards (the synthetic screen is generated first when no data.root is configured), and
    the zero-shot set's shards when zero-shot cell typing is enabled."""
    screen = screen_lib.read_configured(config, config.data.root or synthesize(config, workdir))
    manifest = _convert(screen, layout.shards(config.data.shards, workdir), config.data)
    if config.zeroshot.enabled:
        convert_zeroshot(config, workdir)
    return manifest


def preview(config: ml_collections.ConfigDict, workdir: str) -> str:
    """A PNG grid of one (augmented) training batch, rendered with the RxRx colour map."""
    spec = pipeline.open_records(layout.shards(config.data.shards, workdir), config.data.rxrx1_utils_image_size)
    options = pipeline.InputOptions.from_config(config)
    ds = pipeline.train_dataset(spec, options, batch_size=config.preview.num_images, seed=config.seed)
    batch = next(ds.as_numpy_iterator())
    out = layout.preview(workdir)
    render.write_grid(out, batch["image"], pipeline.output_stains(spec, options.channels), config.preview.cols)
    logging.info("wrote %s", out)
    return out
