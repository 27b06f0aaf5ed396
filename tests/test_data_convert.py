"""Conversion to TFRecord shards: lossless content, determinism, parallelism, resume and bad inputs."""

import glob
import io
import os
import shutil
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gandl._tf import tf
from gandl.data import convert, generic, images, rxrx

TIF = os.path.join(os.path.dirname(__file__), "data", "nuclei_16bit.tif")


def _records(out_dir: str) -> list[tf.train.Example]:
    examples = []
    for path in sorted(glob.glob(os.path.join(out_dir, "shard-*.tfrecord"))):
        for raw in tf.data.TFRecordDataset(path):
            examples.append(tf.train.Example.FromString(raw.numpy()))
    return examples


def _shard_bytes(out_dir: str) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(out_dir, "shard-*.tfrecord")))}


def _pixels(example: tf.train.Example, dtype) -> np.ndarray:
    """A record's raw pixel bytes (zlib-compressed in the record) as a flat array."""
    return np.frombuffer(zlib.decompress(example.features.feature["image"].bytes_list.value[0]), dtype)


def _options(**kw) -> convert.ConvertOptions:
    return convert.ConvertOptions(**{"image_size": 16, "sites_per_shard": 16, "num_workers": 1, **kw})


def test_shards_hold_every_site_losslessly(rxrx19a_dir, shards_dir):
    screen = rxrx.read_rxrx19a(rxrx19a_dir)
    manifest = convert.fileio.read_json(os.path.join(shards_dir, convert.MANIFEST))
    assert manifest["num_sites"] == screen.num_sites and manifest["num_skipped"] == 0
    assert (manifest["height"], manifest["width"], manifest["channels"]) == (16, 16, 5)
    assert (manifest["source_height"], manifest["dtype"]) == (32, "uint8")
    assert manifest["features"]["treatment_conc"] == "float64" and manifest["features"]["plate"] == "int64"
    assert sum(s["num_sites"] for s in manifest["shards"]) == screen.num_sites

    examples = _records(shards_dir)
    by_index = {ex.features.feature["index"].int64_list.value[0]: ex for ex in examples}
    assert sorted(by_index) == list(range(screen.num_sites))
    for i in (0, screen.num_sites // 2, screen.num_sites - 1):
        f = by_index[i].features.feature
        stored = _pixels(by_index[i], np.uint8).reshape(16, 16, 5)
        source = np.stack([images.read(p) for p in screen.paths[i]], -1).astype(np.float64)
        expected = np.rint(source.reshape(16, 2, 16, 2, 5).mean(axis=(1, 3)))  # 2x2 area mean
        np.testing.assert_array_equal(stored, expected)
        assert f["site_id"].bytes_list.value[0].decode() == screen.metadata["site_id"][i]
        assert f["plate"].int64_list.value[0] == screen.metadata["plate"][i]
    # sites are dealt round-robin, so every shard samples every plate and cell line
    first_shard = _records_of(shards_dir, 0)
    assert len({ex.features.feature["cell_type"].bytes_list.value[0] for ex in first_shard}) == 2


def _records_of(out_dir: str, shard: int) -> list[tf.train.Example]:
    path = sorted(glob.glob(os.path.join(out_dir, "shard-*.tfrecord")))[shard]
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def test_channel_stats_are_exact(shards_dir):
    manifest = convert.fileio.read_json(os.path.join(shards_dir, convert.MANIFEST))
    pixels = np.concatenate([_pixels(ex, np.uint8).reshape(-1, 5) for ex in _records(shards_dir)])
    for c, stats in enumerate(manifest["channel_stats"]):
        assert stats["min"] == pixels[:, c].min() and stats["max"] == pixels[:, c].max()
        assert stats["mean"] == pytest.approx(pixels[:, c].mean())
        assert stats["p50"] == int(np.percentile(pixels[:, c], 50, method="inverted_cdf"))


@pytest.mark.slow
def test_conversion_is_deterministic_and_parallel_matches_serial(rxrx19a_dir, shards_dir, tmp_path):
    screen = rxrx.read_rxrx19a(rxrx19a_dir)
    convert.convert(screen, str(tmp_path / "par"), _options(num_workers=2), progress=False)
    assert _shard_bytes(str(tmp_path / "par")) == _shard_bytes(shards_dir)


def _corrupt_png(path: str) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_interrupted_conversion_resumes_to_the_same_shards(rxrx19a_dir, shards_dir, tmp_path):
    root = str(tmp_path / "screen")
    shutil.copytree(rxrx19a_dir, root)
    screen = rxrx.read_rxrx19a(root)
    num_shards = -(-screen.num_sites // 16)
    bad = screen.paths[num_shards - 1, 3]  # a site of the last shard, which is written last
    original = open(bad, "rb").read()
    _corrupt_png(bad)
    out = str(tmp_path / "out")
    with pytest.raises(convert.ConversionError, match=f"{bad}: unreadable image"):
        convert.convert(screen, out, _options(), progress=False)
    done = sorted(glob.glob(os.path.join(out, "shard-*.json")))
    assert done and not os.path.exists(os.path.join(out, convert.MANIFEST))
    mtimes = {p: os.stat(p).st_mtime_ns for p in done}
    open(os.path.join(out, convert.shard_name(0, num_shards) + ".tmp-dead"), "wb").write(b"partial")

    with open(bad, "wb") as f:
        f.write(original)
    convert.convert(screen, out, _options(), progress=False)
    assert _shard_bytes(out) == _shard_bytes(shards_dir)
    assert {p: os.stat(p).st_mtime_ns for p in done} == mtimes  # finished shards were not redone
    assert os.path.exists(os.path.join(out, convert.MANIFEST))


def test_skip_bad_sites_lists_them(rxrx19a_dir, tmp_path):
    root = str(tmp_path / "screen")
    shutil.copytree(rxrx19a_dir, root)
    screen = rxrx.read_rxrx19a(root)
    _corrupt_png(screen.paths[5, 0])
    os.remove(screen.paths[9, 2])
    manifest = convert.convert(screen, str(tmp_path / "out"), _options(skip_bad_sites=True), progress=False)
    assert manifest["num_sites"] == screen.num_sites - 2 and manifest["num_skipped"] == 2
    report = pd.read_csv(tmp_path / "out" / convert.SKIPPED)
    assert set(report["site_id"]) == {screen.metadata["site_id"][5], screen.metadata["site_id"][9]}
    assert set(report["path"]) == {screen.paths[5, 0], screen.paths[9, 2]}
    assert set(report["reason"]) == {"file not found", "unreadable image (OSError: image file is truncated)"}


def _replace_image(path: str, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((24, 24), np.uint8), "image size 24x24 differs from the screen's 32x32"),
    (np.zeros((32, 32, 3), np.uint8), "expected a single-channel 8- or 16-bit image, got PIL mode 'RGB'"),
    (np.zeros((32, 32), np.uint16), "uint16 pixels where the screen is uint8"),
])
def test_mismatched_images_stop_with_the_file_named(rxrx19a_dir, tmp_path, bad, message):
    root = str(tmp_path / "screen")
    shutil.copytree(rxrx19a_dir, root)
    screen = rxrx.read_rxrx19a(root)
    _replace_image(screen.paths[3, 1], bad)
    with pytest.raises(convert.ConversionError, match=f"{screen.paths[3, 1]}: {message}"):
        convert.convert(screen, str(tmp_path / "out"), _options(), progress=False)


def test_a_different_conversion_refuses_the_folder(rxrx19a_dir, tmp_path):
    screen = rxrx.read_rxrx19a(rxrx19a_dir)
    subset = screen.subset(np.arange(8))
    convert.convert(subset, str(tmp_path / "out"), _options(), progress=False)
    with pytest.raises(convert.ConversionError, match=r"different conversion \(changed: \['image_size'\]\)"):
        convert.convert(subset, str(tmp_path / "out"), _options(image_size=8), progress=False)


def test_16bit_tiff_ingest_keeps_16_bits(tmp_path):
    real = images.read(TIF)
    assert real.dtype == np.uint16 and real.max() == 235
    paths = []
    for k in range(4):  # four sites cut from the real image, as TIFF and 16-bit PNG channels
        tile = real[(k // 2) * 256:(k // 2 + 1) * 256, (k % 2) * 256:(k % 2 + 1) * 256]
        tif, png = tmp_path / f"s{k}_dna.tif", tmp_path / f"s{k}_dna2.png"
        buf = io.BytesIO()
        images.tifffile.imwrite(buf, tile)
        tif.write_bytes(buf.getvalue())
        Image.fromarray(tile).save(png)
        paths.append((tif.name, png.name, tile))
    pd.DataFrame({"site_id": [f"s{k}" for k in range(4)], "a": [p[0] for p in paths],
                  "b": [p[1] for p in paths]}).to_csv(tmp_path / "screen.csv", index=False)
    screen = generic.read_generic(str(tmp_path / "screen.csv"), ["a", "b"], stains=["Hoechst", "Hoechst"])
    manifest = convert.convert(screen, str(tmp_path / "out"), _options(image_size=0, sites_per_shard=2),
                               progress=False)
    assert manifest["dtype"] == "uint16" and manifest["height"] == 256
    stats = manifest["channel_stats"][0]
    assert stats["max"] == real.max() and stats["p99.9"] < 300  # the real image uses a sliver of 16 bits
    by_id = {ex.features.feature["site_id"].bytes_list.value[0].decode(): ex for ex in _records(str(tmp_path / "out"))}
    for k, (_, _, tile) in enumerate(paths):
        stored = _pixels(by_id[f"s{k}"], "<u2")
        np.testing.assert_array_equal(stored.reshape(256, 256, 2), np.stack([tile, tile], -1))


def test_downscale_is_an_antialiased_area_mean():
    img = np.zeros((30, 30), np.uint16)
    img[::2, ::2] = 1000  # a pixel-level checkerboard: naive subsampling would alias it to 1000 or 0
    small = images.downscale(img, 15)
    np.testing.assert_array_equal(small, np.full((15, 15), 250))  # each 2x2 block holds one dot
    odd = images.downscale(img, 7)
    assert abs(float(odd.mean()) - float(img.mean())) < 25 and odd.std() < 100
    with pytest.raises(ValueError, match="upscale"):
        images.downscale(img, 40)


def test_shards_are_a_tfds_dataset_with_every_feature(rxrx19a_dir, shards_dir):
    """`tfds.builder_from_directory` on a finished conversion decodes images and metadata as stored."""
    import tensorflow_datasets as tfds

    screen = rxrx.read_rxrx19a(rxrx19a_dir)
    builder = tfds.builder_from_directory(shards_dir)
    assert builder.info.splits["train"].num_examples == screen.num_sites
    by_index = {int(ex["index"]): ex for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
    assert sorted(by_index) == list(range(screen.num_sites))
    mine = {int(ex["index"][i]): ex["image"][i] for ex in _records_batches(shards_dir) for i in range(len(ex["index"]))}
    for i in (0, screen.num_sites - 1):
        site, row = by_index[i], screen.metadata.iloc[i]
        assert site["image"].dtype == np.uint8 and site["image"].shape == (16, 16, 5)
        np.testing.assert_array_equal(site["image"], mine[i])
        assert site["site_id"].decode() == row["site_id"] and site["plate"] == row["plate"]
        assert site["treatment_conc"].dtype == np.float64
        np.testing.assert_array_equal(site["treatment_conc"], row["treatment_conc"])  # NaN for controls too


def _records_batches(shards_dir: str):
    """The pipeline's own reading of the shards (raw pixel values: intensity 'dtype' maps them linearly)."""
    from gandl.data import pipeline

    spec = pipeline.open_shards(shards_dir)
    for batch in pipeline.eval_dataset(spec, pipeline.InputOptions(intensity="dtype"), batch_size=64,
                                       num_batches=None).as_numpy_iterator():
        keep = batch["mask"]
        yield {"index": batch["index"][keep],
               "image": np.rint((batch["image"][keep] + 1.0) * 127.5).astype(np.uint8)}


def test_metadata_numbers_round_trip_exactly_through_shards(tmp_path):
    """Doses such as 0.1 come back as 0.1 (not float32's 0.10000000149011612), integers as integers."""
    from gandl.data import pipeline

    tile = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(tile).save(tmp_path / "a.png")
    doses = [0.1, 0.3, 1e-7, 123456789.123, float("nan")]
    table = pd.DataFrame({"site_id": [f"s{k}" for k in range(5)], "dna": ["a.png"] * 5, "dose": doses,
                          "count": [1, 2, 3, 2**40, -5], "note": ["", "a b", "é", "x", ""]})
    table.to_csv(tmp_path / "s.csv", index=False)
    screen = generic.read_generic(str(tmp_path / "s.csv"), ["dna"])
    convert.convert(screen, str(tmp_path / "out"), _options(image_size=0, sites_per_shard=2), progress=False)
    batch = next(pipeline.eval_dataset(pipeline.open_shards(str(tmp_path / "out")), batch_size=8).as_numpy_iterator())
    order = np.argsort(batch["index"][batch["mask"]])
    np.testing.assert_array_equal(batch["dose"][batch["mask"]][order], screen.metadata["dose"].to_numpy())
    assert batch["count"].dtype == np.int64
    np.testing.assert_array_equal(batch["count"][batch["mask"]][order], [1, 2, 3, 2**40, -5])
    assert [v.decode() for v in batch["note"][batch["mask"]][order]] == ["", "a b", "é", "x", ""]


def test_shards_of_an_older_format_are_refused_by_name(rxrx19a_dir, shards_dir, tmp_path):
    """Format-1 shards held float32 metadata: they are neither read nor resumed into."""
    from gandl.data import pipeline

    old = tmp_path / "old"
    shutil.copytree(shards_dir, old)
    for name in (convert.MANIFEST, convert.CONVERSION):
        record = convert.fileio.read_json(str(old / name))
        convert.fileio.write_json(str(old / name), dict(record, format="gandl-shards/1"))
    with pytest.raises(convert.fileio.FileFault,
                       match="shard format 'gandl-shards/1', this code reads 'gandl-shards/2'; convert"):
        pipeline.open_shards(str(old))
    with pytest.raises(convert.ConversionError, match=r"changed: \['format'\]"):
        convert.convert(rxrx.read_rxrx19a(rxrx19a_dir), str(old), _options(), progress=False)
