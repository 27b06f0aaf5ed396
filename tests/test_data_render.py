"""RGB composites with the RxRx colour map, grids, and the preview command."""

import numpy as np
import pytest
from PIL import Image

from gandl.data import render
from gandl.data import stage as data_stage
from gandl.defaults import Config, base_config


def test_stains_take_their_rxrx_colours():
    img = np.zeros((2, 4, 4, 3), np.float32)
    img[0, ..., 0] = 1.0  # only Hoechst in the first image
    img[1, ..., 2] = 1.0  # only Phalloidin in the second
    rgb = render.to_rgb(img, ["Hoechst", "ConA", "Phalloidin"], percentiles=(0, 100))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(rgb[0, 0, 0], render.STAIN_RGB["Hoechst"])
    np.testing.assert_array_equal(rgb[1, 0, 0], render.STAIN_RGB["Phalloidin"])
    assert render.stain_colours(["Hoechst", "mystery"]).shape == (2, 3)
    with pytest.raises(ValueError, match="expected \\[N, H, W, 2\\]"):
        render.to_rgb(img, ["Hoechst", "ConA"])


def test_grid_layout():
    tiles = np.arange(5 * 2 * 3 * 3, dtype=np.uint8).reshape(5, 2, 3, 3)
    g = render.grid(tiles, cols=2, pad=1)
    assert g.shape == (3 * 2 + 2, 2 * 3 + 1, 3)
    np.testing.assert_array_equal(g[3:5, 4:7], tiles[3])
    assert not g[2].any() and not g[:, 3].any()  # padding rows and columns are black


def test_preview_mode_converts_the_synthetic_screen_and_writes_a_grid(tmp_path, tiny_screen):
    config = base_config()
    config.synthetic.update(tiny_screen)
    config.data.update(image_size=16, sites_per_shard=32, num_workers=1)
    config.model.resolution = 16  # the preview shows what the model is fed
    config.zeroshot.enabled = False
    config.preview.update(num_images=6, cols=3)
    workdir = str(tmp_path)
    manifest = data_stage.convert_screen(Config.from_mapping(config), workdir)
    assert manifest["num_sites"] > 0 and (tmp_path / "raw" / "metadata.csv").exists()
    out = data_stage.preview(Config.from_mapping(config), workdir)
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 16 + 2, 3 * 16 + 4, 3) and grid.std() > 10
    # a rerun resumes: nothing is redone, same manifest
    again = data_stage.convert_screen(Config.from_mapping(config), workdir)
    assert again == manifest
