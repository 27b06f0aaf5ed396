"""Fault injection: kill -9 mid-convert and mid-embed, outputs cut short or damaged after the fact, damaged shards
and checkpoints, changed settings on resume, two runs in one workdir, malformed inputs and impossible settings.

Each test reproduces one defect on a tiny screen and asserts the fixed behaviour. Jobs to
be killed run as subprocesses in a session of their own, so every process they start (pool workers, the
multiprocessing resource tracker) can be found by session id; every wait is bounded.
"""

import dataclasses
import errno
import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import anndata
import jax
import numpy as np
import pandas as pd
import pytest
import tifffile
from flax import struct

from gandl import check, embed, errors, fileio, profiles, sharding
from gandl import workdir as workdir_lib
from gandl.analysis import stage as analysis_stage
from gandl.data import convert, generic, images, pipeline, rxrx
from gandl.data import screen as screen_lib
from gandl.data.synthetic import cli, layouts
from gandl.defaults import Config
from gandl.features import handcrafted
from gandl.models import init_variables
from gandl.models.config import ModelConfig
from gandl.train import checkpoint, loop
from gandl.train import state as state_lib

pytestmark = pytest.mark.slow  # subprocesses killed and resumed: not in the inner loop (tests/conftest.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A cheap feature set beside the handcrafted one, so that an export writes two sets of parts.
FEATURES = {"handcrafted": handcrafted.feature_fn, "means": lambda x: x.mean(axis=(1, 2))}

CONVERT_JOB = """
import sys, time
from gandl.data import convert, images, rxrx

if __name__ == "__mp_main__":  # in a spawned pool worker: read slowly, so the kill lands mid-conversion
    _read = images.read

    def _slow_read(path):
        time.sleep(0.05)
        return _read(path)

    images.read = _slow_read

if __name__ == "__main__":
    convert.convert(rxrx.read_rxrx19a(sys.argv[1]), sys.argv[2],
                    convert.ConvertOptions(image_size=16, sites_per_shard=16, num_workers=2), progress=False)
"""

EMBED_JOB = """
import sys, time
from gandl import embed
from gandl.data import pipeline
from gandl.features import handcrafted


def slow_means(x):  # the test's `means` feature set, slowed so the kill lands between parts
    time.sleep(0.4)
    return x.mean(axis=(1, 2))


if __name__ == "__main__":
    embed.export(pipeline.open_shards(sys.argv[1]), sys.argv[2],
                 {"handcrafted": handcrafted.feature_fn, "means": slow_means}, batch_size=int(sys.argv[3]),
                 part_batches=1, provenance={}, progress=False)
"""


def _start(tmp_path, name: str, source: str, *args: str) -> subprocess.Popen:
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, str(script), *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # its own session: its descendants share the session id


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _session(sid: int) -> list[int]:
    """Live processes (not zombies) of a session."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.split("/")[2]))
    return pids


def _kill_session(proc: subprocess.Popen) -> None:
    """kill -9 of the job's process group (what is left of it after a failed test)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _temp_files(folder) -> list[str]:
    return glob.glob(os.path.join(str(folder), "**", "*.tmp-*"), recursive=True)


def _shard_bytes(out_dir) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(str(out_dir), "shard-*.tfrecord")))}


def _options(**kw) -> convert.ConvertOptions:
    return convert.ConvertOptions(**{"image_size": 16, "sites_per_shard": 16, "num_workers": 1, **kw})


def test_killed_conversion_leaves_no_process_and_its_rerun_no_temp_file(rxrx19a_dir, shards_dir, tmp_path):
    """Issue items 2 and 5: kill -9 of a 2-worker conversion ends its workers; the rerun cleans up."""
    out = tmp_path / "out"
    proc = _start(tmp_path, "convert_job", CONVERT_JOB, rxrx19a_dir, str(out))
    try:
        _wait_for(lambda: glob.glob(str(out / "shard-*.tmp-*")), 120, "a worker to start a shard", proc)
        assert len(_session(proc.pid)) >= 3  # the parent, two workers (and the resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _wait_for(lambda: not _session(proc.pid), 10, "every process of the killed conversion to end")
    finally:
        _kill_session(proc)
    assert not (out / convert.MANIFEST).exists()

    convert.convert(rxrx.read_rxrx19a(rxrx19a_dir), str(out), _options(), progress=False)
    assert not _temp_files(out)
    assert _shard_bytes(out) == _shard_bytes(shards_dir)  # the same shards as one uninterrupted conversion


def test_a_failed_shard_removes_its_temp_file_and_a_rerun_removes_stale_ones(rxrx19a_dir, shards_dir, tmp_path):
    """Issue item 5: after a bad-image stop no `shard-*.tmp-*` stays, nor after the rerun of a killed one."""
    root = tmp_path / "screen"
    shutil.copytree(rxrx19a_dir, root)
    screen = rxrx.read_rxrx19a(str(root))
    bad = screen.paths[2, 1]  # a site of shard 2
    original = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(original[: len(original) // 2])
    out = tmp_path / "out"
    with pytest.raises(convert.ConversionError, match="unreadable image"):
        convert.convert(screen, str(out), _options(), progress=False)
    assert not _temp_files(out)

    stale = out / (convert.shard_name(4, 5) + ".tmp-0badf00d")  # what a kill -9 mid-shard leaves
    stale.write_bytes(b"partial")
    with open(bad, "wb") as f:
        f.write(original)
    convert.convert(screen, str(out), _options(), progress=False)
    assert not _temp_files(out)
    assert _shard_bytes(out) == _shard_bytes(shards_dir)


def test_one_odd_site_does_not_decide_the_bit_depth(rxrx19a_dir, tmp_path):
    """Issue item 3: site 0 in 16 bit, the 69 others in 8 bit: the screen is 8-bit and site 0 is skipped."""
    root = tmp_path / "screen"
    shutil.copytree(rxrx19a_dir, root)
    screen = rxrx.read_rxrx19a(str(root))
    for path in screen.paths[0]:
        deep = images.read(path).astype(np.uint16) * 257
        with open(path, "wb") as f:
            f.write(layouts.png_bytes(deep))
    assert images.read(screen.paths[0, 0]).dtype == np.uint16

    manifest = convert.convert(screen, str(tmp_path / "skip"), _options(skip_bad_sites=True), progress=False)
    assert manifest["dtype"] == "uint8"
    assert (manifest["num_sites"], manifest["num_skipped"]) == (screen.num_sites - 1, 1)
    skipped = pd.read_csv(tmp_path / "skip" / convert.SKIPPED)
    assert list(skipped["site_id"]) == [screen.metadata["site_id"][0]]
    with pytest.raises(convert.ConversionError, match=f"{screen.paths[0, 0]}: uint16 pixels where the screen is uint8"):
        convert.convert(screen, str(tmp_path / "stop"), _options(), progress=False)


@pytest.mark.parametrize("column", ["image", "height", "width", "channels", "index", "mask"])
def test_metadata_columns_named_like_record_keys_are_refused_at_read_time(rxrx19a_dir, tmp_path, column):
    """Issue item 4: a generic screen's `height` (or `image`, `index`, ...) column fails when read, named."""
    screen = rxrx.read_rxrx19a(rxrx19a_dir)
    table = pd.DataFrame({"site_id": screen.metadata["site_id"], column: 1})
    for c in range(screen.paths.shape[1]):
        table[f"w{c + 1}"] = screen.paths[:, c]
    csv = tmp_path / "screen.csv"
    table.to_csv(csv, index=False)
    channels = [f"w{c + 1}" for c in range(screen.paths.shape[1])]
    with pytest.raises(rxrx.MetadataError, match=f"{csv}: metadata column '{column}'"):
        generic.read_generic(str(csv), channels)
    table.rename(columns={column: f"my_{column}"}).to_csv(csv, index=False)
    assert f"my_{column}" in generic.read_generic(str(csv), channels).metadata.columns


def _load(path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "provenance"}


def test_embed_killed_and_resumed_with_another_batch_size_equals_an_uninterrupted_export(shards_dir, tmp_path):
    """Issue items 1 and 6: parts are keyed by the sites they hold; a changed setting is refused, named."""
    spec = pipeline.open_shards(shards_dir)
    reference = embed.export(spec, str(tmp_path / "reference"), FEATURES, batch_size=16, part_batches=1,
                             provenance={}, progress=False)
    out = tmp_path / "out"
    proc = _start(tmp_path, "embed_job", EMBED_JOB, shards_dir, str(out), "16")
    try:
        _wait_for(lambda: len(glob.glob(str(out / "parts" / "means" / "part-*.npz"))) >= 2, 120,
                  "two parts of the export", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_session(proc)
    assert not (out / "means.npz").exists()  # killed before the end

    resumed = embed.export(spec, str(out), FEATURES, batch_size=32, part_batches=2, provenance={}, progress=False)
    for name in FEATURES:
        expected, got = _load(reference[name]), _load(resumed[name])
        assert len(got["site_id"]) == sum(spec.shard_sizes)
        assert expected.keys() == got.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
        assert len(pd.read_parquet(out / f"{name}.parquet")) == sum(spec.shard_sizes)
    assert not _temp_files(out)

    # An export is reused when nothing that shapes it changed, refused (naming it) when something did,
    # finished or not (here: its last file lost, as by a kill during the gather).
    os.remove(resumed["means"])
    with pytest.raises(embed.ExportError, match=r"crop_size: 0 -> 8"):
        embed.export(spec, str(out), FEATURES, batch_size=32, options=pipeline.InputOptions(crop_size=8),
                     provenance={}, progress=False)
    embed.export(spec, str(out), FEATURES, batch_size=16, part_batches=5, provenance={}, progress=False)
    np.testing.assert_array_equal(_load(resumed["means"])["features"], _load(reference["means"])["features"])
    mtime = os.stat(resumed["means"]).st_mtime_ns

    def never_built():
        raise AssertionError("a finished export built a lazy feature set")

    embed.export(spec, str(out), dict(FEATURES, means=embed.lazy(never_built)), batch_size=16, provenance={},
                 progress=False)
    assert os.stat(resumed["means"]).st_mtime_ns == mtime
    options = pipeline.InputOptions
    for change, message in [(dict(options=options(channels=(1, 2, 3))), r"channels: \[1, 2, 3, 4, 5\] -> \[1, 2, 3\]"),
                            (dict(options=options(intensity="dataset")), "intensity: 'auto' -> 'dataset'"),
                            (dict(feature_settings={"means": {"orientation_average": True}}),
                             r"feature_sets.means.orientation_average: \(absent\) -> True")]:
        with pytest.raises(embed.ExportError, match=message):
            embed.export(spec, str(out), FEATURES, batch_size=16, provenance={}, progress=False, **change)
    # A subset of the finished sets is returned as it is; an added set is exported alone, next to them, and
    # recorded; a changed setting of a finished set is still refused when a set is added.
    assert embed.export(spec, str(out), {"means": embed.lazy(never_built)}, batch_size=16, provenance={},
                        progress=False) == {"means": resumed["means"]}
    maxima = lambda x: x.max(axis=(1, 2))  # noqa: E731
    with pytest.raises(embed.ExportError, match=r"feature_sets.means.orientation_average: \(absent\) -> True"):
        embed.export(spec, str(out), dict(FEATURES, maxima=maxima), batch_size=16, provenance={}, progress=False,
                     feature_settings={"means": {"orientation_average": True}})
    added = embed.export(spec, str(out), dict(FEATURES, means=embed.lazy(never_built), maxima=maxima),
                         batch_size=16, part_batches=3, provenance={}, progress=False)
    assert os.stat(resumed["means"]).st_mtime_ns == mtime
    alone = embed.export(spec, str(tmp_path / "alone"), {"maxima": maxima}, batch_size=16, provenance={},
                         progress=False)
    for key, value in _load(alone["maxima"]).items():
        np.testing.assert_array_equal(_load(added["maxima"])[key], value, err_msg=key)
    with open(out / embed.SETTINGS) as f:
        record = json.load(f)
    assert sorted(record["feature_sets"]) == ["handcrafted", "maxima", "means"]
    # An older record that also holds a field which does not shape the set is still this export.
    record["feature_sets"]["means"]["imagenet_weights"] = ""
    with open(out / embed.SETTINGS, "w") as f:
        json.dump(record, f)
    assert embed.export(spec, str(out), {"means": embed.lazy(never_built)}, batch_size=16, provenance={},
                        progress=False) == {"means": resumed["means"]}
    assert not _temp_files(out)


def test_mode_embed_refuses_a_finished_export_made_with_other_settings(tiny_config, shards_dir, tmp_path,
                                                                      monkeypatch):
    """Issue item 6: `embed.orientation_average=True` on a finished export is refused, not silently reused;
    a feature set added to it is exported alone.

    A freshly initialised discriminator stands in for the checkpoint (restoring one is tested elsewhere).
    """
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.shards = shards_dir
    cfg.zeroshot.enabled = False
    cfg.embed.feature_sets = ("gandl", "handcrafted")
    model = ModelConfig.from_mapping(cfg.model)
    d_params = init_variables(model, jax.random.key(0))[1]["params"]
    monkeypatch.setattr(embed.stage, "restore_discriminator", lambda workdir, mesh, step: (model, d_params, 7, {}))
    workdir = str(tmp_path)
    folder = embed.run(Config.from_mapping(cfg), workdir)
    npz = os.path.join(folder, "gandl.npz")
    mtime = os.stat(npz).st_mtime_ns

    cfg.embed.batch_size = 32  # does not change the export: reused
    embed.run(Config.from_mapping(cfg), workdir)
    assert os.stat(npz).st_mtime_ns == mtime
    # A field no exported set uses does not matter; a set added later is exported alone, next to the others.
    cfg.embed.update(imagenet_weights="random", feature_sets=("gandl", "handcrafted", "random_d"))
    embed.run(Config.from_mapping(cfg), workdir)
    assert os.stat(npz).st_mtime_ns == mtime and os.path.exists(os.path.join(folder, "random_d.npz"))
    cfg.embed.orientation_average = True
    with pytest.raises(RuntimeError, match="feature_sets.gandl.orientation_average: False -> True"):  # ExportError
        embed.run(Config.from_mapping(cfg), workdir)
    assert os.stat(npz).st_mtime_ns == mtime


def test_mode_analyze_refuses_embeddings_of_sites_the_screen_does_not_have(tiny_config, rxrx19a_dir, tmp_path):
    """Issue item 7: embeddings holding foreign site ids fail `--mode analyze`, naming a few of them."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.root = rxrx19a_dir
    cfg.zeroshot.enabled = False
    metadata = rxrx.read_rxrx19a(rxrx19a_dir).metadata
    arrays = {c: metadata[c].to_numpy(np.float64) if pd.api.types.is_numeric_dtype(metadata[c])
              else metadata[c].to_numpy(str) for c in metadata}
    ids = list(arrays["site_id"])
    ids[3], ids[7] = "ELSEWHERE-1_1_A01_1", "ELSEWHERE-1_1_A02_1"
    arrays["site_id"] = np.array(ids)
    folder = tmp_path / "embeddings" / "step_0"
    folder.mkdir(parents=True)
    features = np.random.default_rng(0).normal(size=(len(metadata), 8)).astype(np.float32)
    np.savez(folder / "gandl.npz", features=features, **arrays)
    fileio.write_json(str(folder / embed.SETTINGS), {"format": embed.records.FORMAT, "feature_sets": {"gandl": {}}})
    fileio.write_record(embed.completion_record(str(folder), "gandl"), [str(folder / "gandl.npz")])
    with pytest.raises(ValueError, match=r"2 site ids .*ELSEWHERE-1_1_A01_1.*ELSEWHERE-1_1_A02_1"):
        analysis_stage.run(Config.from_mapping(cfg), str(tmp_path))
    assert not (tmp_path / "analysis").exists()


def test_analyze_reads_only_feature_sets_whose_completion_record_verifies(tiny_config, shards_dir, tmp_path):
    """Issue #32 item 1: a damaged npz, a set without its completion record (an unfinished export) and an
    export.json of an older format are each named in one line before anything is read or written."""
    folder = tmp_path / "embeddings" / "step_0"
    embed.export(pipeline.open_shards(shards_dir), str(folder),
                 {"handcrafted": handcrafted.feature_fn, "random_d": FEATURES["means"]}, batch_size=16,
                 provenance={}, progress=False)
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.shards = shards_dir
    cfg.zeroshot.enabled = False
    npz = folder / "handcrafted.npz"
    original = npz.read_bytes()
    npz.write_bytes(original[:1000] + bytes(b ^ 0xFF for b in original[1000:1100]) + original[1100:])
    with pytest.raises(embed.ExportError, match=rf"feature set handcrafted in {folder} is not finished \({npz}: "
                                                r"its checksum differs.*run --mode embed"):
        analysis_stage.run(Config.from_mapping(cfg), str(tmp_path))
    npz.write_bytes(original)
    record = folder / embed.completion_record("", "random_d")
    kept = record.read_bytes()
    record.unlink()
    with pytest.raises(embed.ExportError, match=r"feature set random_d .* \(no completion record\)"):
        analysis_stage.run(Config.from_mapping(cfg), str(tmp_path))
    record.write_bytes(kept)
    settings = json.loads((folder / embed.SETTINGS).read_text())
    (folder / embed.SETTINGS).write_text(json.dumps(dict(settings, format="gandl-embeddings/1")))
    with pytest.raises(embed.ExportError, match=rf"{folder / embed.SETTINGS}: .* of format 'gandl-embeddings/1', "
                                                "this GAN-DL reads 'gandl-embeddings/2'"):
        analysis_stage.run(Config.from_mapping(cfg), str(tmp_path))
    assert not (tmp_path / "analysis").exists()


def test_a_refused_synthetic_screen_leaves_no_settings_file(tmp_path):
    """Issue item 8: `--num_compounds 1` writes no `synthetic.json`, so the next correct call is not refused."""
    common = ["--out", str(tmp_path / "raw"), "--image_size", "16", "--plates_per_cell_line", "1",
              "--sites_per_well", "1"]
    with pytest.raises(ValueError, match="num_compounds must be >= 3"):
        cli.main([*common, "--num_compounds", "1"])
    assert not (tmp_path / "raw" / "synthetic.json").exists()
    cli.main([*common, "--num_compounds", "3"])
    assert (tmp_path / "raw" / "synthetic.json").exists() and (tmp_path / "raw" / "metadata.csv").exists()

    # The same for a design error found while laying out the plates (rxrx1: more wells than a plate has).
    kwargs = dict(image_size=16, plates_per_cell_line=1, sites_per_well=1)
    with pytest.raises(ValueError, match="at most 384 wells"):
        layouts.write_rxrx1(tmp_path / "raw_rxrx1", num_sirnas=400, **kwargs)
    assert not (tmp_path / "raw_rxrx1" / "synthetic.json").exists()
    assert (layouts.write_rxrx1(tmp_path / "raw_rxrx1", **kwargs) / "metadata.csv").exists()


# ---------------------------------------------------------------------------------------------------------------
# Completion verified, corrupt inputs named, one run per workdir, impossible settings refused up front.


def _h5ad_content(path) -> tuple:
    data = anndata.read_h5ad(path)
    return data.X, data.obs.reset_index(), data.uns["provenance"]


def _assert_same_export(out, reference, names) -> None:
    for name in names:
        for key, value in _load(reference / f"{name}.npz").items():
            np.testing.assert_array_equal(_load(out / f"{name}.npz")[key], value, err_msg=f"{name}.npz {key}")
        for stem in (name, f"{name}_wells"):
            pd.testing.assert_frame_equal(pd.read_parquet(out / f"{stem}.parquet"),
                                          pd.read_parquet(reference / f"{stem}.parquet"))
            got, expected = _h5ad_content(out / f"{stem}.h5ad"), _h5ad_content(reference / f"{stem}.h5ad")
            np.testing.assert_array_equal(got[0], expected[0])
            pd.testing.assert_frame_equal(got[1], expected[1])
            assert got[2] == expected[2]
        assert fileio.verify_record(embed.completion_record(str(out), name)) == []


@pytest.mark.parametrize("writer", ["write_h5ad", "write_well_profiles"])
def test_an_export_stopped_in_its_h5ad_or_well_profiles_is_finished_by_the_rerun(shards_dir, tmp_path, monkeypatch,
                                                                                 writer):
    """npz and parquet written, then the h5ad (or the last set's well profiles) killed mid-write: the rerun does
    not take the set for finished; it writes what is missing and removes what the killed writer left."""
    spec = pipeline.open_shards(shards_dir)
    reference = tmp_path / "reference"
    embed.export(spec, str(reference), FEATURES, batch_size=16, provenance={}, progress=False)
    out = tmp_path / "out"
    real = getattr(profiles, writer)

    def killed(path, *args, **kwargs):  # the last set's writer dies as kill -9 leaves it: a partial temporary
        if "means" not in os.path.basename(path):
            return real(path, *args, **kwargs)
        target = path if writer == "write_h5ad" else f"{path}.h5ad"
        with open(fileio.temp_path(target), "wb") as f:
            f.write(b"\x89HDF partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(profiles, writer, killed)
    with pytest.raises(RuntimeError, match="killed"):
        embed.export(spec, str(out), FEATURES, batch_size=16, provenance={}, progress=False)
    monkeypatch.setattr(profiles, writer, real)
    assert (out / "means.npz").exists() and (out / "means.parquet").exists() and _temp_files(out)
    assert not (out / embed.completion_record("", "means")).exists()
    mtime = os.stat(out / "handcrafted.npz").st_mtime_ns

    embed.export(spec, str(out), FEATURES, batch_size=16, provenance={}, progress=False)
    _assert_same_export(out, reference, FEATURES)
    assert not _temp_files(out)
    assert os.stat(out / "handcrafted.npz").st_mtime_ns == mtime  # the finished set is left alone


def test_a_damaged_export_file_is_written_again(shards_dir, tmp_path, caplog):
    """A finished set's file overwritten in place (same size) or deleted: the rerun checks every file against the
    set's completion record, names the damage and gathers that set again."""
    spec = pipeline.open_shards(shards_dir)
    reference = tmp_path / "reference"
    embed.export(spec, str(reference), FEATURES, batch_size=16, provenance={}, progress=False)
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    damaged = out / "means_wells.parquet"
    data = bytearray(damaged.read_bytes())
    data[100:120] = bytes(20)
    damaged.write_bytes(bytes(data))
    (out / "handcrafted.h5ad").unlink()

    with caplog.at_level("WARNING"):
        embed.export(spec, str(out), FEATURES, batch_size=16, provenance={}, progress=False)
    _assert_same_export(out, reference, FEATURES)
    assert f"{damaged}: its checksum differs" in caplog.text and f"{out / 'handcrafted.h5ad'}: missing" in caplog.text


def _damage_shards(folder) -> tuple[str, str]:
    """Truncate shard 2 to 60% and overwrite 200 bytes of shard 3: the two faults a copy or a disk leaves."""
    truncated, overwritten = (os.path.join(str(folder), convert.shard_name(k, 5)) for k in (2, 3))
    os.truncate(truncated, int(os.path.getsize(truncated) * 0.6))
    with open(overwritten, "r+b") as f:
        f.seek(5000)
        f.write(bytes(200))
    return truncated, overwritten


def test_damaged_shards_are_named_by_their_readers_and_rewritten_by_convert(rxrx19a_dir, shards_dir, tiny_config,
                                                                           tmp_path, caplog):
    out = tmp_path / "shards"
    shutil.copytree(shards_dir, out)
    truncated, overwritten = _damage_shards(out)
    spec = pipeline.open_shards(str(out))
    named = rf"damaged record files: {truncated} \(record \d+ unreadable: truncated record.*{overwritten} " \
            r"\(record \d+ unreadable: corrupted record.*--mode convert"
    with pytest.raises(pipeline.CorruptRecordsError, match=named):  # the export
        embed.export(spec, str(tmp_path / "emb"), FEATURES, batch_size=16, provenance={}, progress=False)
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.shards = str(out)
    with pytest.raises(pipeline.CorruptRecordsError, match=named):  # training's input
        settings = loop.TrainSettings.from_config(Config.from_mapping(cfg), "")
        for _, _ in zip(range(20), loop.shard_input_fn(settings, spec)(0)):
            pass

    with caplog.at_level("WARNING"):
        manifest = convert.convert(rxrx.read_rxrx19a(rxrx19a_dir), str(out), _options(), progress=False)
    assert _shard_bytes(out) == _shard_bytes(shards_dir)
    assert manifest["num_sites"] == 70 and fileio.verify_record(str(out / convert.MANIFEST)) == []
    assert f"{truncated}: " in caplog.text and f"{overwritten}: its checksum differs" in caplog.text


def test_a_finished_shard_set_is_reused_without_writing(rxrx19a_dir, shards_dir, tmp_path, monkeypatch):
    """A complete, intact conversion (e.g. on a read-only disk) is returned as it is: no file is written."""
    out = tmp_path / "shards"
    shutil.copytree(shards_dir, out)

    def no_write(path, data):
        raise PermissionError(f"read-only: {path}")

    monkeypatch.setattr(fileio, "write_bytes", no_write)
    manifest = convert.convert(rxrx.read_rxrx19a(rxrx19a_dir), str(out), _options(), progress=False)
    assert manifest == json.loads((out / convert.MANIFEST).read_text())


def test_a_damaged_embedding_part_is_named_and_exported_again(shards_dir, tmp_path, caplog):
    """Issue #32 item 2: bytes flipped in a part of an unfinished set: the rerun names the part, exports its sites
    again and gathers the same set as an undamaged export (no rerun fails on it forever)."""
    spec = pipeline.open_shards(shards_dir)
    reference = tmp_path / "reference"
    embed.export(spec, str(reference), FEATURES, batch_size=16, part_batches=1, provenance={}, progress=False)
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    part = sorted((out / "parts" / "means").glob("part-*.npz"))[2]
    data = bytearray(part.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 16])
    part.write_bytes(bytes(data))
    (out / "means.npz").unlink()
    with caplog.at_level("WARNING"):
        embed.export(spec, str(out), FEATURES, batch_size=16, part_batches=1, provenance={}, progress=False)
    assert f"{part}: a damaged embedding part" in caplog.text
    for key, value in _load(reference / "means.npz").items():
        np.testing.assert_array_equal(_load(out / "means.npz")[key], value, err_msg=key)
    assert fileio.verify_record(embed.completion_record(str(out), "means")) == []


def test_the_default_channels_spelled_out_are_no_change(shards_dir, tmp_path):
    spec = pipeline.open_shards(shards_dir)
    out = tmp_path / "out"
    paths = embed.export(spec, str(out), FEATURES, batch_size=16, provenance={}, progress=False)
    mtime = os.stat(paths["means"]).st_mtime_ns
    every = pipeline.InputOptions(channels=(1, 2, 3, 4, 5))
    assert embed.export(spec, str(out), FEATURES, batch_size=16, options=every, provenance={}, progress=False) == paths
    record = json.loads((out / embed.SETTINGS).read_text())
    record["channels"] = []  # as records made before channels were spelled out hold them
    (out / embed.SETTINGS).write_text(json.dumps(record))
    assert embed.export(spec, str(out), FEATURES, batch_size=16, options=every, provenance={}, progress=False) == paths
    assert os.stat(paths["means"]).st_mtime_ns == mtime
    with pytest.raises(embed.ExportError, match=r"channels: \[1, 2, 3, 4, 5\] -> \[1, 2, 3, 4, 4\]"):
        embed.export(spec, str(out), FEATURES, batch_size=16, options=every.replace(channels=(1, 2, 3, 4, 4)),
                     provenance={}, progress=False)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as a write() says it: no file named


def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(rxrx19a_dir, shards_dir, tmp_path, monkeypatch):
    """Issue #32 item 5: ENOSPC while a shard, an export's file or a checkpoint is written is one FileFault naming
    the file (the entry point's one line, exit 1), every temporary file goes, and the rerun finishes the job."""
    screen = rxrx.read_rxrx19a(rxrx19a_dir)
    out = tmp_path / "shards"
    real_commit = fileio.commit
    monkeypatch.setattr(fileio, "commit", lambda tmp, to: (_disk_full if "shard-" in to else real_commit)(tmp, to))
    with pytest.raises(fileio.FileFault, match=rf"{out / convert.shard_name(0, 5)}: cannot write it \(No space left"):
        convert.convert(screen, str(out), _options(), progress=False)
    monkeypatch.setattr(fileio, "commit", _disk_full)
    with pytest.raises(fileio.FileFault, match=rf"{tmp_path / 'a.json'}: cannot write it \(No space left"):
        fileio.write_json(str(tmp_path / "a.json"), {})
    assert not _temp_files(tmp_path)
    monkeypatch.setattr(fileio, "commit", real_commit)
    convert.convert(screen, str(out), _options(), progress=False)
    assert _shard_bytes(out) == _shard_bytes(shards_dir) and not _temp_files(out)

    real_wells = profiles.write_well_profiles

    def wells_on_a_full_disk(stem, *args, **kwargs):
        with fileio.written_locally(f"{stem}.parquet") as local:
            with open(local, "wb") as f:
                f.write(b"PAR1 partial")
            _disk_full()

    monkeypatch.setattr(profiles, "write_well_profiles", wells_on_a_full_disk)
    spec = pipeline.open_shards(shards_dir)
    export = tmp_path / "export"
    with pytest.raises(fileio.FileFault, match=rf"{export / 'handcrafted_wells.parquet'}: cannot write it"):
        embed.export(spec, str(export), FEATURES, batch_size=16, provenance={}, progress=False)
    assert not _temp_files(export)
    monkeypatch.setattr(profiles, "write_well_profiles", real_wells)
    embed.export(spec, str(export), FEATURES, batch_size=16, provenance={}, progress=False)
    assert all(fileio.verify_record(embed.completion_record(str(export), n)) == [] for n in FEATURES)


def test_a_checkpoint_save_on_a_full_disk_is_one_line(tiny_config, shards_dir, tmp_path, monkeypatch):
    """Issue #32 item 5: tensorstore's ENOSPC, wrapped by orbax in a ValueError, is a FileFault naming the folder
    and the file; a save that fails for another reason is not mistaken for one."""
    cfg, _, state = _finished_at_step_1(tiny_config, shards_dir)
    ckpt = checkpoint.Checkpointer(str(tmp_path), 1)
    full = ValueError('RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": No space left on device '
                      "[os_error_code='28']")
    monkeypatch.setattr(ckpt.manager, "save", lambda *a, **k: (_ for _ in ()).throw(full))
    with pytest.raises(fileio.FileFault, match=rf"{tmp_path / 'checkpoints'}: cannot write a checkpoint .*x/_sharding"
                                               ".*No space left"):
        ckpt.save(1, state, cfg.to_dict(), force=True)
    monkeypatch.setattr(ckpt.manager, "save", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        ckpt.save(1, state, cfg.to_dict(), force=True)
    ckpt.close()


def _finished_at_step_1(tiny_config, shards_dir) -> tuple:
    """(config, mesh, fresh state) of a run of one step: resumed at step 1 it is finished, so no step compiles."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.shards = shards_dir
    cfg.train.steps = 1
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        return cfg, mesh, state_lib.create(ModelConfig.of_run(cfg), cfg.train, cfg.seed, mesh)


def test_a_damaged_latest_checkpoint_is_named_and_training_resumes_from_the_one_before(tiny_config, shards_dir,
                                                                                      tmp_path, caplog):
    """Half of the latest checkpoint's array data lost: one line names its step, folder and file, training goes on
    from the checkpoint before it (the damaged one set aside, so that step can be saved again), and with no intact
    checkpoint left it stops naming them, never silently starting from step 0."""
    cfg, _, state = _finished_at_step_1(tiny_config, shards_dir)
    at = {step: state.replace(pl_mean=state.pl_mean + step) for step in (1, 2)}
    ckpt = checkpoint.Checkpointer(str(tmp_path), 1)
    for step, value in at.items():
        ckpt.save(step, value, cfg.to_dict(), force=True)
    ckpt.close()

    def damage(step: int) -> str:
        folder = tmp_path / "checkpoints" / str(step)
        assert fileio.verify_record(str(folder / checkpoint.RECORD)) == []
        data = max((p for p in (folder / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        os.truncate(data, data.stat().st_size // 2)
        return f"the checkpoint of step {step} in {folder} is damaged: {data}: "

    named = damage(2)
    with caplog.at_level("WARNING"):
        resumed = loop.train(loop.TrainSettings.from_config(Config.from_mapping(cfg), str(tmp_path)), str(tmp_path))
    assert named in caplog.text and "using step 1, the newest intact checkpoint" in caplog.text
    assert resumed.step == 1 and float(resumed.state.pl_mean) == 1.0
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2.damaged"]

    # The run that resumes saves the damaged step anew, with its completion record.
    ckpt = checkpoint.Checkpointer(str(tmp_path), 1)
    ckpt.save(2, at[2], cfg.to_dict(), force=True)
    ckpt.wait()
    named = damage(2)
    template = checkpoint.abstract_like(state)
    restored, _, step = ckpt.restore_intact(lambda saved: template, set_aside=True)
    assert step == 1 and ckpt.save(2, at[2], cfg.to_dict(), force=True)
    ckpt.close()
    assert fileio.verify_record(str(tmp_path / "checkpoints" / "2" / checkpoint.RECORD)) == []

    for step in (1, 2):
        damage(step)
    with pytest.raises(checkpoint.CorruptCheckpointError, match=r"no intact checkpoint in .*steps \[2, 1\]"):
        loop.train(loop.TrainSettings.from_config(Config.from_mapping(cfg), str(tmp_path)), str(tmp_path))


def test_ctrl_c_in_training_saves_a_checkpoint_and_stops(tiny_config, shards_dir, tmp_path):
    """Issue #32 item 3: SIGINT, like SIGTERM, makes the loop checkpoint the step it is at and stop early (the entry
    point's exit 75), not a traceback that loses the steps since the last checkpoint."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.shards = shards_dir
    cfg.train.update(steps=30, checkpoint_every=10)
    settings = loop.TrainSettings.from_config(Config.from_mapping(cfg), str(tmp_path))
    source = loop.shard_input_fn(settings, pipeline.open_shards(shards_dir))

    def ctrl_c_at_batch_3(start):
        for i, batch in enumerate(source(start)):
            if i == 3:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    handler = signal.getsignal(signal.SIGINT)
    result = loop.train(settings, str(tmp_path), input_fn=ctrl_c_at_batch_3, spec=pipeline.open_shards(shards_dir))
    assert result.stopped_early and result.step == 4
    assert workdir_lib.checkpoint_steps(str(tmp_path)) == [4]
    assert signal.getsignal(signal.SIGINT) == handler


@struct.dataclass
class _StateBeforeOptions:
    """The train state as saved before the training options (ADA, the contrastive head) existed."""

    step: jax.Array
    g_params: Any
    g_buffers: Any
    ema_params: Any
    ema_buffers: Any
    d_params: Any
    g_opt_state: Any
    d_opt_state: Any
    pl_mean: jax.Array
    rng: jax.Array


_OPTION_FIELDS = ("augment", "augment_p", "ada_target", "ada_interval", "ada_kimg", "augment_transforms",
                  "contrastive_weight", "contrastive_temperature", "objective")


def test_a_checkpoint_from_before_the_training_options_restores_without_them(tiny_config, shards_dir, tmp_path):
    """A checkpoint of the old state layout, its config without the options' fields, resumes a run without the
    options and restores for the embed stage, array for array; a run with ADA on is refused in one line."""
    cfg, mesh, state = _finished_at_step_1(tiny_config, shards_dir)
    old = _StateBeforeOptions(**{f.name: getattr(state, f.name) for f in dataclasses.fields(_StateBeforeOptions)})
    old = old.replace(pl_mean=old.pl_mean + 3, d_params=jax.tree.map(lambda x: x + 1, old.d_params))
    saved = cfg.to_dict()
    for field in _OPTION_FIELDS:
        del saved["train"][field]
    ckpt = checkpoint.Checkpointer(str(tmp_path), 1)
    ckpt.save(1, old, saved, force=True)
    ckpt.close()

    def assert_restored(restored: state_lib.TrainState) -> None:
        assert restored.augment is None and restored.head is None and restored.head_opt_state is None
        expected, got = jax.tree.leaves(old), jax.tree.leaves(restored)
        assert len(expected) == len(got)
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    resumed = loop.train(loop.TrainSettings.from_config(Config.from_mapping(cfg), str(tmp_path)), str(tmp_path))
    assert resumed.step == 1
    assert_restored(resumed.state)
    config, restored, step = checkpoint.restore_run(str(tmp_path), mesh)
    assert step == 1 and config.train.augment == "none" and config.train.contrastive_weight == 0
    assert_restored(restored)

    cfg.train.augment = "ada"
    with pytest.raises(checkpoint.OptionsChanged, match=r"saved with train.objective='gan', train.augment='none', "
                                                          r"train.contrastive_weight=0.0, this run has "
                                                          r"train.objective='gan', train.augment='ada'"):
        loop.train(loop.TrainSettings.from_config(Config.from_mapping(cfg), str(tmp_path)), str(tmp_path))
    cfg.train.update(augment="none", objective="contrastive")  # the same state layout, D trained for another loss
    with pytest.raises(checkpoint.OptionsChanged, match=r"this run has train.objective='contrastive'"):
        loop.train(loop.TrainSettings.from_config(Config.from_mapping(cfg), str(tmp_path)), str(tmp_path))


def test_a_resume_with_another_model_or_seed_is_refused_naming_the_field(tiny_config, shards_dir, tmp_path):
    """Issue #32 item 4: a changed model field is refused before orbax reads an array, a changed seed rather than
    silently ignored (the saved PRNG state would go on), each named in one line."""
    cfg, _, state = _finished_at_step_1(tiny_config, shards_dir)
    ckpt = checkpoint.Checkpointer(str(tmp_path), 1)
    ckpt.save(1, state, cfg.to_dict(), force=True)
    ckpt.close()
    for field, value, said in [("model.z_dim", 16, "model.z_dim=32 -> 16"), ("seed", 7, "seed=0 -> 7")]:
        changed = cfg.copy_and_resolve_references()
        changed.update_from_flattened_dict({field: value})
        with pytest.raises(checkpoint.OptionsChanged, match=rf"saved with other settings \({said}\)"):
            loop.train(loop.TrainSettings.from_config(Config.from_mapping(changed), str(tmp_path)), str(tmp_path))
    assert loop.train(loop.TrainSettings.from_config(Config.from_mapping(cfg), str(tmp_path)), str(tmp_path)).step == 1


def test_a_second_run_in_a_workdir_is_refused_naming_the_first(tmp_path, caplog, monkeypatch):
    workdir = str(tmp_path / "run")
    with workdir_lib.locked(workdir, "train"):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
        result = subprocess.run([sys.executable, "-m", "gandl.main", "--config", "tests/tiny_config.py", "--workdir",
                                 workdir, "--mode", "convert"], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 1, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"gandl: {workdir} is in use by another GAN-DL run (--mode train, pid {os.getpid()}")
        assert "Traceback" not in result.stderr and os.listdir(workdir) == [workdir_lib.LOCK]
    assert not os.listdir(workdir)  # released

    ended = subprocess.Popen(["true"])
    ended.wait()
    with open(workdir_lib.lock_file(workdir), "w") as f:  # what a killed run leaves
        json.dump(dict(workdir_lib._owner("embed"), pid=ended.pid), f)
    with caplog.at_level("WARNING"), workdir_lib.locked(workdir, "analyze"):
        assert json.loads(open(workdir_lib.lock_file(workdir)).read())["mode"] == "analyze"
    assert f"from a run that ended (--mode embed, pid {ended.pid}" in caplog.text

    # Another host's run cannot be asked whether it lives: its lock holds until its heartbeat is STALE_S old.
    elsewhere = dict(workdir_lib._owner("train"), host="elsewhere", pid=1)
    with open(workdir_lib.lock_file(workdir), "w") as f:
        json.dump(elsewhere, f)
    with pytest.raises(workdir_lib.WorkdirInUse, match="pid 1 on elsewhere"):
        with workdir_lib.locked(workdir, "embed"):
            pass
    with open(workdir_lib.lock_file(workdir), "w") as f:
        json.dump(dict(elsewhere, heartbeat=time.time() - workdir_lib.STALE_S - 1), f)
    monkeypatch.setattr(workdir_lib, "REFRESH_S", 0.05)
    with workdir_lib.locked(workdir, "embed"):
        first = json.loads(open(workdir_lib.lock_file(workdir)).read())["heartbeat"]
        _wait_for(lambda: json.loads(open(workdir_lib.lock_file(workdir)).read())["heartbeat"] > first, 10,
                  "the holder to renew its heartbeat")
    assert not os.listdir(workdir)


def test_every_impossible_setting_is_refused_at_once(tiny_config):
    cfg = tiny_config.copy_and_resolve_references()
    bad = {"data.image_size": -3, "train.log_every": 0, "train.checkpoint_every": 0, "train.steps": -5,
           "embed.batch_size": 0, "embed.part_batches": 0, "data.intensity": "bogus", "embed.mbstd": "bogus",
           "data.kind": "bogus", "analysis.n_splits": 1, "train.sample_every": 0,
           "embed.feature_sets": ("gandl", "bogus")}
    cfg.update_from_flattened_dict(bad)
    with pytest.raises(check.ConfigCheckError) as info:
        check.run(cfg)
    assert len(info.value.failures) == len(bad)
    for field, value in bad.items():
        assert any(f.startswith(f"{field}={value!r}: must be") and "; use " in f for f in info.value.failures), field


# ---------------------------------------------------------------------------------------------------------------
# Issue #32, round three: the exit status says the class of fault; inputs that printed tracebacks are one line.


def _gandl(tmp_path, *args: str, config: str = "tests/tiny_config.py") -> tuple[int, str]:
    """(exit status, its message: the one `gandl:` line and the config check's list after it) of a `gandl` run in a
    fresh workdir; fails on a traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
    result = subprocess.run([sys.executable, "-m", "gandl.main", "--config", config, "--workdir",
                             str(tmp_path / "run"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("gandl: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return result.returncode, result.stderr[result.stderr.index(lines[0]):]


@pytest.mark.parametrize("args,status,said", [
    (("--mode", "check", "--config.screen.preset=bogus"), 2, "gandl: screen.preset='bogus': no such preset"),
    (("--mode", "check", "--devices", "v3-12"), 2, "12 is not a power-of-two number of TensorCores"),
    # The config's mistake is said before the data's: the fresh workdir has no shards either.
    (("--mode", "train", "--config.train.steps=-5"), 2, "train.steps=-5: must be an integer >= 1"),
    (("--mode", "preview"), 1, "shards: no converted shards there"),
])
def test_the_exit_status_says_the_class_of_fault(tmp_path, args, status, said):
    """Issue #32 round 3 item 1: a mistake in the config or the command line exits 2, one in the data (or an
    outside fault) 1, each in one line without a traceback."""
    got, line = _gandl(tmp_path, *args)
    assert got == status and said in line, line


def test_a_config_file_with_a_string_where_a_number_goes_is_one_line(tmp_path):
    config = tmp_path / "typed.py"
    config.write_text("import tiny_config\n\n\ndef get_config():\n    c = tiny_config.get_config()\n"
                      "    c.data.image_size = '32'\n    return c\n")
    status, line = _gandl(tmp_path, "--mode", "check", config=str(config))
    assert status == 2 and f"--config={config}" in line and "'image_size'" in line and "<class 'str'>" in line, line


def _one_line(error: BaseException, *named: str) -> str:
    """`error` as the entry point says it: a data fault (exit 1) in one line naming each of `named`."""
    text = str(error)
    assert errors.exit_status(error) == errors.EXIT_DATA and "\n" not in text, (type(error), text)
    assert all(name in text for name in named), text
    return text


def test_a_truncated_tiff_met_while_probing_the_screen_is_one_line(rxrx19a_dir, tmp_path):
    """Issue #32 round 3 item 2: the probe's BadImageError (not wrapped in a ConversionError) was a traceback."""
    root = tmp_path / "screen"
    shutil.copytree(rxrx19a_dir, root)
    bad = rxrx.read_rxrx19a(str(root)).paths[0, 0]  # site 0 is among the probed ones
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, np.zeros((32, 32), np.uint8))
    with open(bad, "wb") as f:
        f.write(tiff.getvalue()[:200])
    status, line = _gandl(tmp_path, "--mode", "convert", "--config.data.kind=rxrx19a", f"--config.data.root={root}",
                          "--config.data.image_size=16", "--config.data.num_workers=1")
    assert status == 1 and line.startswith(f"gandl: {bad}: unreadable image"), line


def test_a_metadata_table_with_a_header_and_no_rows_is_named(tmp_path):
    csv = tmp_path / "screen.csv"
    csv.write_text("site_id,plate,well,site,dose,w1\n")
    with pytest.raises(screen_lib.MetadataError) as info:
        generic.read_generic(str(csv), ["w1"])
    _one_line(info.value, str(csv), "a header and no rows")


def test_an_image_path_naming_a_folder_is_a_bad_image(rxrx19a_dir, tmp_path):
    """A generic screen's image column naming a folder: one line naming it; skip_bad_sites skips that site."""
    source = rxrx.read_rxrx19a(rxrx19a_dir)
    table = pd.DataFrame({"site_id": source.metadata["site_id"]})
    for c in range(source.paths.shape[1]):
        table[f"w{c + 1}"] = source.paths[:, c]
    folder = tmp_path / "not_an_image"
    folder.mkdir()
    table.loc[5, "w2"] = str(folder)
    csv = tmp_path / "screen.csv"
    table.to_csv(csv, index=False)
    sites = generic.read_generic(str(csv), [f"w{c + 1}" for c in range(source.paths.shape[1])])
    with pytest.raises(images.BadImageError) as info:  # met by the probe: the site is among those it reads
        convert.convert(sites, str(tmp_path / "stop"), _options(), progress=False)
    _one_line(info.value, f"{folder}: unreadable", "Is a directory")
    manifest = convert.convert(sites, str(tmp_path / "skip"), _options(skip_bad_sites=True), progress=False)
    assert manifest["num_skipped"] == 1
    assert pd.read_csv(tmp_path / "skip" / convert.SKIPPED)["path"].tolist() == [str(folder)]


def test_a_corrupt_ome_zarr_chunk_is_named_and_skippable(tmp_path):
    """numcodecs' `Zstd decompression error` (a RuntimeError) was a traceback: now a bad image naming the plate's
    well and field, which data.skip_bad_sites skips."""
    from test_data_ome_zarr import _plate

    _plate(tmp_path / "plate.zarr")
    chunk = next(p for p in (tmp_path / "plate.zarr" / "A" / "2" / "1").rglob("*") if p.is_file() and "zarr" not in
                 p.name and p.name[0] != ".")
    data = chunk.read_bytes()
    chunk.write_bytes(data[:4] + bytes(b ^ 0x5A for b in data[4:]))
    plate = screen_lib.read_screen(screen_lib.Source("ome_zarr", str(tmp_path / "plate.zarr")))
    with pytest.raises(images.BadImageError) as info:
        plate.reader.read(plate.paths[3, 0])
    _one_line(info.value, str(tmp_path / "plate.zarr" / "A" / "2" / "1"), "unreadable OME-Zarr plane")
    options = convert.ConvertOptions(sites_per_shard=4, num_workers=1, skip_bad_sites=True)
    manifest = convert.convert(plate, str(tmp_path / "shards"), options, progress=False)
    assert (manifest["num_sites"], manifest["num_skipped"]) == (5, 1)
    assert pd.read_csv(tmp_path / "shards" / convert.SKIPPED)["site_id"].tolist() == ["P7_A2_2"]


def test_a_wrong_ground_truth_fails_in_the_config_check(tiny_config, tmp_path):
    """analysis.truth naming a CSV without the truth columns failed after "config check passed", at the end of a
    run; it is now part of the check (and a file that is no CSV is named as well)."""
    truth = tmp_path / "truth.csv"
    truth.write_text("compound,score\nA,1\n")
    status, line = _gandl(tmp_path, "--mode", "check", f"--config.analysis.truth={truth}")
    assert status == 1 and line.startswith(f"gandl: analysis.truth={str(truth)!r} lacks the truth columns"), line
    cfg = tiny_config.copy_and_resolve_references()
    cfg.analysis.truth = str(truth)
    truth.write_bytes(b"\xff\xfe\x00garbage\x00\n\x00")
    with pytest.raises(screen_lib.MetadataError) as info:
        analysis_stage.read_truth(cfg, str(tmp_path))
    _one_line(info.value, f"analysis.truth={str(truth)!r}")


def test_shards_of_an_older_format_are_one_line(shards_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(shards_dir, old)
    manifest = json.loads((old / convert.MANIFEST).read_text())
    (old / convert.MANIFEST).write_text(json.dumps(dict(manifest, format="gandl-shards/1")))
    with pytest.raises(fileio.FileFault) as info:
        pipeline.open_shards(str(old))
    _one_line(info.value, str(old / convert.MANIFEST), "shard format 'gandl-shards/1'")


def test_a_zero_shot_set_without_its_screen_set_is_named_before_reading(tiny_config, shards_dir, tmp_path):
    folder = tmp_path / "embeddings" / "step_0"
    spec = pipeline.open_shards(shards_dir)
    embed.export(spec, str(folder), {"handcrafted": handcrafted.feature_fn}, batch_size=16, provenance={},
                 progress=False)
    zeroshot = workdir_lib.zeroshot_embeddings(str(folder))
    embed.export(spec, zeroshot, {"handcrafted": handcrafted.feature_fn, "random_d": FEATURES["means"]},
                 batch_size=16, provenance={}, progress=False)
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.shards = cfg.zeroshot.shards = shards_dir
    with pytest.raises(embed.ExportError) as info:
        analysis_stage.run(Config.from_mapping(cfg), str(tmp_path))
    _one_line(info.value, zeroshot, "['random_d']", str(folder))
    assert not (tmp_path / "analysis").exists()


@pytest.mark.parametrize("dose,said", [("", "holds 'nan' for site"), ("-1", "holds '-1.0' for site"),
                                       ("inf", "holds 'inf' for site")])
def test_a_treated_site_without_a_possible_dose_is_refused_naming_it(rxrx19a_dir, dose, said):
    """A blank dose silently dropped the site from dose-response; -1 and inf were accepted."""
    sites = rxrx.read_rxrx19a(rxrx19a_dir)
    schema = screen_lib.PRESETS["rxrx19a"]
    metadata = sites.metadata.copy()
    treated = int(np.flatnonzero(screen_lib.control_role(metadata, schema=schema).to_numpy() == screen_lib.TREATED)[3])
    metadata["treatment_conc"] = metadata["treatment_conc"].astype(object)
    metadata.loc[treated, "treatment_conc"] = dose
    metadata["treatment_conc"] = pd.to_numeric(metadata["treatment_conc"].replace("", np.nan))
    screen_lib.validate(sites.metadata, schema, sites.source)
    with pytest.raises(screen_lib.MetadataError) as info:
        screen_lib.validate(metadata, schema, sites.source)
    _one_line(info.value, "screen.dose='treatment_conc'", said, repr(metadata["site_id"][treated]), sites.source)


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"mode": "train"}'])
def test_a_lock_file_naming_no_process_is_taken_over(tmp_path, caplog, content):
    """An empty or garbage gandl.lock (a disk that lost the write) blocked the workdir for ever."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / workdir_lib.LOCK).write_text(content)
    with caplog.at_level("WARNING"), workdir_lib.locked(str(workdir), "embed"):
        assert json.loads((workdir / workdir_lib.LOCK).read_text())["pid"] == os.getpid()
    assert "the file names no process" in caplog.text and not os.listdir(workdir)


def test_a_checkpoint_without_its_completion_record_gets_one_when_restored(tiny_config, shards_dir, tmp_path):
    """Killed between orbax's commit and the record: the rerun that restores it whole writes the record, so later
    damage to it is named instead of surfacing as an orbax error."""
    cfg, _, state = _finished_at_step_1(tiny_config, shards_dir)
    ckpt = checkpoint.Checkpointer(str(tmp_path), 1)
    ckpt.save(1, state, cfg.to_dict(), force=True)
    ckpt.close()
    record = tmp_path / "checkpoints" / "1" / checkpoint.RECORD
    record.unlink()
    assert loop.train(loop.TrainSettings.from_config(Config.from_mapping(cfg), str(tmp_path)), str(tmp_path)).step == 1
    assert fileio.verify_record(str(record)) == []


def test_a_skipped_site_whose_file_is_repaired_is_converted_by_the_rerun(rxrx19a_dir, shards_dir, tmp_path):
    """Issue #32 round 3 item 3: the conversion's fingerprint hashed metadata and paths, not the images, so a site
    skipped as unreadable stayed skipped after its file was repaired. Each shard now records the sizes and
    modification times of its input files, and a shard whose inputs changed is written again."""
    root = tmp_path / "screen"
    shutil.copytree(rxrx19a_dir, root)
    screen = rxrx.read_rxrx19a(str(root))
    bad = screen.paths[2, 1]  # a site of shard 2, not among the probed ones
    original = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(original[: len(original) // 2])
    out = tmp_path / "out"
    assert convert.convert(screen, str(out), _options(skip_bad_sites=True), progress=False)["num_skipped"] == 1
    with open(bad, "wb") as f:
        f.write(original)
    manifest = convert.convert(screen, str(out), _options(skip_bad_sites=True), progress=False)
    assert (manifest["num_sites"], manifest["num_skipped"]) == (screen.num_sites, 0)
    assert _shard_bytes(out) == _shard_bytes(shards_dir) and not (out / convert.SKIPPED).exists()


def test_a_moved_workdir_repairs_its_damaged_shards(rxrx19a_dir, shards_dir, tmp_path):
    """The fingerprint pinned absolute paths: a workdir moved elsewhere (its screen with it) was refused as "shards of
    a different conversion"; paths are now relative to the screen's folder."""
    before, after = tmp_path / "before", tmp_path / "after"
    shutil.copytree(rxrx19a_dir, before / "raw")
    convert.convert(rxrx.read_rxrx19a(str(before / "raw")), str(before / "shards"), _options(), progress=False)
    os.rename(before, after)
    _damage_shards(after / "shards")
    convert.convert(rxrx.read_rxrx19a(str(after / "raw")), str(after / "shards"), _options(), progress=False)
    assert _shard_bytes(after / "shards") == _shard_bytes(shards_dir)
    assert fileio.verify_record(str(after / "shards" / convert.MANIFEST)) == []


def test_a_failing_run_reports_its_own_fault_not_the_pending_save_that_fails_after_it():
    """Issue #32: a sample grid that could not be written on a full disk was reported as 'cannot write a checkpoint'
    (the pending save failed on the same disk while the run unwound, and replaced the first fault). A failing run's
    wait and close still run, quietly; a run that ends well still raises what they raise."""
    calls = []

    class Pending:
        def wait(self):
            calls.append("wait")
            raise fileio.FileFault("checkpoints: cannot write a checkpoint (No space left on device)")

        def close(self):
            calls.append("close")

    with pytest.raises(fileio.FileFault, match="samples/step_1.png"):
        try:
            raise fileio.FileFault("samples/step_1.png: cannot write it (No space left on device)")
        finally:
            loop._finish(Pending(), failing=True)
    assert calls == ["wait", "close"]
    with pytest.raises(fileio.FileFault, match="cannot write a checkpoint"):
        loop._finish(Pending(), failing=False)


def test_a_read_only_workdir_is_one_line_naming_the_lock_file(tmp_path, monkeypatch):
    """Issue #32 item 3 (a read-only workdir): the first file a run writes there is its lock; the fault names it, not
    the lock's temporary file, and is the entry point's one line (a FileFault, exit 1)."""
    real_open = open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and "w" in (args[0] if args else kwargs.get("mode", "r")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    lock = workdir_lib.lock_file(str(tmp_path))
    with pytest.raises(fileio.FileFault, match=rf"^{lock}: cannot write it \(Read-only file system\)$"):
        with workdir_lib.locked(str(tmp_path), "train"):
            pass
    assert errors.exit_status(fileio.FileFault(lock)) == errors.EXIT_DATA
