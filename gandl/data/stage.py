"""The data stage: the modes synth, convert and preview, from a run's config to files in its workdir."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging

from gandl import defaults, fileio
from gandl import workdir as layout
from gandl.data import convert, pipeline, render, rxrx
from gandl.data import screen as screen_lib


def synthesize(config: defaults.Config, workdir: str) -> str:
    """Write the embedded synthetic screen into workdir/raw (a no-op once it is complete)."""
    from gandl.data.synthetic import layouts as synthetic  # only the demo needs the generator

    out = layout.raw(config.data.root, workdir)
    _write_synthetic(synthetic.write_rxrx19a, out, **defaults.values(config.synthetic))
    return out


def _write_synthetic(write: Callable[..., object], out: str, **settings: Any) -> None:
    """`write(out, **settings)`: a synthetic screen's writer, its I/O errors naming `out`, its temporaries swept."""
    with fileio.named_faults(out), _temp_files_swept(out):
        write(out, **settings)


@contextlib.contextmanager
def _temp_files_swept(folder: str) -> Iterator[None]:
    """Remove the synthetic writer's temporary files (`.<name>.<pid>.tmp`) from `folder` before the block (what
    a killed run left) and after it fails (what this one left): one run writes the folder at a time (the lock)."""
    def sweep() -> None:
        for path in glob.glob(os.path.join(glob.escape(folder), "**", ".*.*.tmp"), recursive=True):
            os.remove(path)

    sweep()
    try:
        yield
    except BaseException:
        sweep()
        raise


def _convert(screen: screen_lib.Screen, out: str, data: defaults.Data) -> dict:
    if not data.skip_bad_sites:
        screen_lib.check_files(screen)
    options = convert.ConvertOptions(image_size=data.image_size, sites_per_shard=data.sites_per_shard,
                                     skip_bad_sites=data.skip_bad_sites, num_workers=data.num_workers)
    manifest = convert.convert(screen, out, options)
    logging.info("%d sites in %d shards at %s (%d skipped)", manifest["num_sites"], len(manifest["shards"]), out,
                 manifest["num_skipped"])
    return manifest


def convert_zeroshot(config: defaults.Config, workdir: str) -> str:
    """Shards of the zero-shot (RxRx1-layout) set: given, converted from zeroshot.root, or synthesized first."""
    zeroshot = config.zeroshot
    out = layout.zeroshot_shards(config.zeroshot.shards, workdir)
    if zeroshot.shards:
        return out
    root = layout.zeroshot_raw(config.zeroshot.root, workdir)
    if not zeroshot.root:
        from gandl.data.synthetic import layouts as synthetic

        _write_synthetic(synthetic.write_rxrx1, root, image_size=config.synthetic.image_size,
                         **defaults.values(zeroshot.synthetic))
    _convert(rxrx.read_rxrx1(root), out, config.data)
    return out


def convert_screen(config: defaults.Config, workdir: str) -> dict:
    """Raw screen -> shards (the synthetic screen is generated first when no data.root is configured), and
    the zero-shot set's shards when zero-shot cell typing is enabled."""
    screen = screen_lib.read_configured(config, config.data.root or synthesize(config, workdir))
    manifest = _convert(screen, layout.shards(config.data.shards, workdir), config.data)
    if config.zeroshot.enabled:
        convert_zeroshot(config, workdir)
    return manifest


def preview(config: defaults.Config, workdir: str) -> str:
    """A PNG grid of one (augmented) training batch, rendered with the RxRx colour map."""
    spec = pipeline.open_records(layout.shards(config.data.shards, workdir), config.data.rxrx1_utils_image_size)
    options = pipeline.InputOptions.from_config(config)
    ds = pipeline.train_dataset(spec, options, batch_size=config.preview.num_images, seed=config.seed)
    batch = next(ds.as_numpy_iterator())
    out = layout.preview(workdir)
    render.write_grid(out, batch["image"], pipeline.output_stains(spec, options.channels), config.preview.cols)
    logging.info("wrote %s", out)
    return out
