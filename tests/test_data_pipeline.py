"""tf.data pipelines: determinism, augmentation, sharding by process, eval order and padding, rxrx1-utils."""

import itertools
import os

import jax
import numpy as np
import pandas as pd
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gandl._tf import tf
from gandl.data import generic, pipeline, rxrx


def _take(ds, n: int) -> list[dict]:
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def _all_sites(spec: pipeline.RecordSpec, **kw) -> dict:
    """Every site once, without augmentation, concatenated over batches (padding dropped)."""
    batches = list(pipeline.eval_dataset(spec, pipeline.InputOptions(**kw), batch_size=8).as_numpy_iterator())
    keep = np.concatenate([b["mask"] for b in batches])
    return {k: np.concatenate([b[k] for b in batches])[keep] for k in batches[0]}


def test_train_batches_are_deterministic_for_a_seed(shards_dir):
    spec = pipeline.open_shards(shards_dir)
    a = _take(pipeline.train_dataset(spec, batch_size=6, seed=3), 4)
    b = _take(pipeline.train_dataset(spec, batch_size=6, seed=3), 4)
    c = _take(pipeline.train_dataset(spec, batch_size=6, seed=4), 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))
    img = a[0]["image"]
    assert img.shape == (6, 16, 16, 5) and img.dtype == np.float32
    assert img.min() >= -1.0 and img.max() <= 1.0 and img.max() > img.min()


def _dihedral(img: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(img, k) for k in range(4)]
    return turns + [t[:, ::-1] for t in turns]


def test_augmentation_is_a_dihedral_transform_of_a_real_site(shards_dir):
    spec = pipeline.open_shards(shards_dir)
    originals = _all_sites(spec)["image"]
    seen = set()
    for batch in _take(pipeline.train_dataset(spec, batch_size=8, seed=0), 6):
        for img in batch["image"]:
            matches = [(i, t) for i, o in enumerate(originals) for t, v in enumerate(_dihedral(o))
                       if np.array_equal(v, img)]
            assert matches, "an augmented image is not a flip/rotation of any site"
            seen.update(t for _, t in matches)
    assert len(seen) >= 5  # the group is actually sampled, not just the identity


def test_crop_and_channel_mapping(shards_dir):
    spec = pipeline.open_shards(shards_dir)
    options = pipeline.InputOptions(crop_size=8, channels=(5, 1))
    batch = _take(pipeline.train_dataset(spec, options, batch_size=4, seed=0), 1)[0]
    assert batch["image"].shape == (4, 8, 8, 2)
    assert pipeline.output_stains(spec, (5, 1)) == ("WGA", "Hoechst")
    full = _all_sites(spec)
    mapped = _all_sites(spec, channels=(5, 1))
    np.testing.assert_array_equal(mapped["image"][..., 0], full["image"][..., 4])
    np.testing.assert_array_equal(mapped["image"][..., 1], full["image"][..., 0])
    with pytest.raises(ValueError, match=r"channels \[6\] out of range"):
        pipeline.train_dataset(spec, pipeline.InputOptions(channels=(6,)), batch_size=4, seed=0)


def test_eval_yields_every_site_once_with_metadata(rxrx19a_dir, shards_dir):
    spec = pipeline.open_shards(shards_dir)
    metadata = rxrx.read_rxrx19a(rxrx19a_dir).metadata
    sites = _all_sites(spec)
    assert sorted(sites["index"]) == list(range(len(metadata)))
    row = metadata.iloc[sites["index"]]
    np.testing.assert_array_equal(sites["site_id"].astype(str), row["site_id"])
    np.testing.assert_array_equal(sites["plate"], row["plate"])
    np.testing.assert_allclose(sites["treatment_conc"], row["treatment_conc"].astype(np.float32))
    again = _all_sites(spec)
    np.testing.assert_array_equal(again["index"], sites["index"])  # stable order


def test_processes_read_disjoint_files_and_step_together(shards_dir):
    spec = pipeline.open_shards(shards_dir)
    per_process = [pipeline.process_files(spec, p, 3) for p in range(3)]
    assert sorted(sum(per_process, ())) == sorted(spec.files)
    runs = [list(pipeline.eval_dataset(spec, batch_size=8, process_index=p, process_count=3)
                 .as_numpy_iterator()) for p in range(3)]
    assert len({len(r) for r in runs}) == 1  # same number of batches on every process
    indices = np.concatenate([b["index"][b["mask"]] for r in runs for b in r])
    assert sorted(indices) == list(range(sum(spec.shard_sizes)))
    last = runs[0][-1]
    assert last["image"].shape[0] == 8 and not last["image"][~last["mask"]].any()
    assert all(s == b"" for s in last["site_id"][~last["mask"]])
    with pytest.raises(ValueError, match="gets none of the"):
        pipeline.process_files(spec, len(spec.files), len(spec.files) + 1)


def test_batches_feed_a_global_sharded_array(shards_dir):
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    spec = pipeline.open_shards(shards_dir)
    local = _take(pipeline.train_dataset(spec, batch_size=16, seed=0), 1)[0]["image"]
    global_batch = jax.make_array_from_process_local_data(sharding, local)
    assert global_batch.shape == (16, 16, 16, 5)
    assert len(global_batch.addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(global_batch), local)


def _write_rxrx1_utils(path: str, sites: list[dict], size: int) -> None:
    """Records in the exact schema of Recursion's rxrx1-utils (GZIP, raw uint8 H×W×6 `image`)."""
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for s in sites:
            f = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[s["image"].tobytes()]))}
            for k in ("well", "well_type", "experiment", "cell_type"):
                f[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[s[k].encode()]))
            for k in ("plate", "site") + (("sirna",) if "sirna" in s else ()):
                f[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[s[k]]))
            w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())


def test_reads_rxrx1_utils_records_with_the_zero_shot_channel_map(tmp_path):
    rng = np.random.default_rng(0)
    sites = [dict(image=rng.integers(0, 256, (12, 12, 6), dtype=np.uint8), well=f"B{k + 2:02d}",
                  well_type="treatment", experiment="HUVEC-05", cell_type="HUVEC", plate=k % 4 + 1, site=1,
                  **({"sirna": 1100 + k} if k % 2 else {})) for k in range(5)]
    _write_rxrx1_utils(str(tmp_path / "a.tfrecord"), sites[:3], 12)
    _write_rxrx1_utils(str(tmp_path / "b.tfrecord"), sites[3:], 12)
    spec = pipeline.open_records(str(tmp_path / "*.tfrecord"), rxrx1_utils_size=12)
    channels = rxrx.channel_map("rxrx1", "rxrx19a")
    assert pipeline.output_stains(spec, channels) == rxrx.STAINS["rxrx19a"]
    out = _all_sites(spec, channels=channels)
    by_id = {sid.decode(): i for i, sid in enumerate(out["site_id"])}
    for s in sites:
        i = by_id[f"HUVEC-05_{s['plate']}_{s['well']}_1"]
        np.testing.assert_allclose(out["image"][i], s["image"][..., [0, 1, 2, 3, 5]] / 127.5 - 1.0, atol=1e-6)
        assert out["sirna"][i] == s.get("sirna", -1) and out["cell_type"][i] == b"HUVEC"

    wrong = pipeline.open_records(str(tmp_path / "*.tfrecord"), rxrx1_utils_size=16)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a.tfrecord.*expected 16x16x6"):
        _all_sites(wrong)


def test_16bit_shards_are_scaled_by_dataset_percentiles(tmp_path):
    from gandl.data import convert, images

    real = images.read(os.path.join(os.path.dirname(__file__), "data", "nuclei_16bit.tif"))
    names = []
    for k in range(4):
        images.tifffile.imwrite(tmp_path / f"s{k}.tif", real[k * 128:(k + 1) * 128, :128])
        names.append(f"s{k}.tif")
    pd.DataFrame({"site_id": names, "dna": names}).to_csv(tmp_path / "screen.csv", index=False)
    screen = generic.read_generic(str(tmp_path / "screen.csv"), ["dna"], stains=["Hoechst"])
    convert.convert(screen, str(tmp_path / "out"), convert.ConvertOptions(num_workers=1), progress=False)
    spec = pipeline.open_shards(str(tmp_path / "out"))
    auto = _all_sites(spec)["image"]
    assert auto.min() == -1.0 and auto.max() == 1.0  # the full [-1, 1] range is used
    assert 0.01 < (auto > 0).mean() < 0.5 and np.median(auto) < 0  # bright nuclei on a dark background
    by_dtype = _all_sites(spec, intensity="dtype")["image"]
    assert by_dtype.max() < -0.99  # why 16-bit data needs dataset statistics: full-range scaling is black


def _rxrx1_utils_sites(rng: np.random.Generator, size: int, n: int) -> list[dict]:
    return [dict(image=rng.integers(0, 256, (size, size, 6), dtype=np.uint8), well=f"C{k + 2:02d}",
                 well_type="treatment", experiment="RPE-03", cell_type="RPE", plate=k % 2 + 1, site=k % 2 + 1)
            for k in range(n)]


def test_64px_rxrx1_utils_records_are_area_downscaled_to_a_32px_model(tmp_path):
    from gandl.data import images

    sites = _rxrx1_utils_sites(np.random.default_rng(1), 64, 4)
    _write_rxrx1_utils(str(tmp_path / "r.tfrecord"), sites, 64)
    spec = pipeline.open_records(str(tmp_path / "*.tfrecord"), rxrx1_utils_size=64)
    channels = rxrx.channel_map("rxrx1", "rxrx19a")
    out = _all_sites(spec, channels=channels, resolution=32)
    assert out["image"].shape == (4, 32, 32, 5)
    by_id = {sid.decode(): i for i, sid in enumerate(out["site_id"])}
    for s in sites:
        got = out["image"][by_id[f"RPE-03_{s['plate']}_{s['well']}_{s['site']}"]]
        raw = s["image"][..., [c - 1 for c in channels]]
        block_mean = raw.reshape(32, 2, 32, 2, 5).mean(axis=(1, 3)) / 127.5 - 1.0
        np.testing.assert_allclose(got, block_mean, atol=1e-5)
        # The conversion's filter, which also rounds to the pixel type: within half a grey level.
        converted = np.stack([images.downscale(raw[..., c], 32) for c in range(5)], -1) / 127.5 - 1.0
        np.testing.assert_allclose(got, converted, atol=1.0 / 255 + 1e-6)

    train = _take(pipeline.train_dataset(spec, pipeline.InputOptions(channels=channels, resolution=32), batch_size=2,
                                         seed=0), 1)[0]
    assert train["image"].shape == (2, 32, 32, 5) and -1.0 <= train["image"].min() < train["image"].max() <= 1.0
    # A 16-px central crop of the 64-px records, downscaled 2x to 8 px.
    crop = _all_sites(spec, channels=channels, crop_size=16, resolution=8)["image"]
    assert crop.shape == (4, 8, 8, 5)


@pytest.mark.parametrize("kw, message", [
    (dict(resolution=24), r"r.tfrecord cannot be area-downscaled to 24 px: 64 is not a whole multiple of 24"),
    (dict(resolution=128), r"cannot be area-downscaled to 128 px"),
    (dict(crop_size=48, resolution=32), r"crop_size 48 of the 64x64 records .* 48 is not a whole multiple of 32"),
    (dict(crop_size=80, resolution=32), r"crop_size 80 exceeds the 64x64 images"),
])
def test_record_sizes_that_do_not_divide_are_rejected_in_both_pipelines(tmp_path, kw, message):
    _write_rxrx1_utils(str(tmp_path / "r.tfrecord"), _rxrx1_utils_sites(np.random.default_rng(2), 64, 1), 64)
    spec = pipeline.open_records(str(tmp_path / "*.tfrecord"), rxrx1_utils_size=64)
    with pytest.raises(ValueError, match=message):
        pipeline.eval_dataset(spec, pipeline.InputOptions(**kw), batch_size=1)
    with pytest.raises(ValueError, match=message):
        pipeline.train_dataset(spec, pipeline.InputOptions(**kw), batch_size=1, seed=0)


def test_our_shards_are_downscaled_too(shards_dir):
    spec = pipeline.open_shards(shards_dir)  # 16 px
    full = _all_sites(spec)["image"]
    half = _all_sites(spec, resolution=8)["image"]
    np.testing.assert_allclose(half, full.reshape(-1, 8, 2, 8, 2, 5).mean(axis=(2, 4)), atol=1e-6)
