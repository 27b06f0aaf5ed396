"""Fault injection: kill -9 mid-convert and mid-embed, changed settings on resume, malformed inputs.

Each test reproduces one defect of issue 16 on a tiny screen and asserts the fixed behaviour. Jobs to
be killed run as subprocesses in a session of their own, so every process they start (pool workers, the
multiprocessing resource tracker) can be found by session id; every wait is bounded.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd
import pytest

from gandl import embed, main
from gandl.data import convert, generic, images, pipeline, rxrx, synthetic
from gandl.features import handcrafted
from gandl.models import init_variables
from gandl.models.config import ModelConfig

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
            f.write(synthetic.png_bytes(deep))
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
    for change, message in [(dict(options=options(channels=(1, 2, 3))), r"channels: \[\] -> \[1, 2, 3\]"),
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
    monkeypatch.setattr(embed, "restore_discriminator", lambda workdir, mesh, step: (model, d_params, 7, {}))
    workdir = str(tmp_path)
    folder = main.run_embed(cfg, workdir)
    npz = os.path.join(folder, "gandl.npz")
    mtime = os.stat(npz).st_mtime_ns

    cfg.embed.batch_size = 32  # does not change the export: reused
    main.run_embed(cfg, workdir)
    assert os.stat(npz).st_mtime_ns == mtime
    # A field no exported set uses does not matter; a set added later is exported alone, next to the others.
    cfg.embed.update(imagenet_weights="random", feature_sets=("gandl", "handcrafted", "random_d"))
    main.run_embed(cfg, workdir)
    assert os.stat(npz).st_mtime_ns == mtime and os.path.exists(os.path.join(folder, "random_d.npz"))
    cfg.embed.orientation_average = True
    with pytest.raises(RuntimeError, match="feature_sets.gandl.orientation_average: False -> True"):  # ExportError
        main.run_embed(cfg, workdir)
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
    with pytest.raises(ValueError, match=r"2 site ids .*ELSEWHERE-1_1_A01_1.*ELSEWHERE-1_1_A02_1"):
        main.run_analyze(cfg, str(tmp_path))
    assert not (tmp_path / "analysis").exists()


def test_a_refused_synthetic_screen_leaves_no_settings_file(tmp_path):
    """Issue item 8: `--num_compounds 1` writes no `synthetic.json`, so the next correct call is not refused."""
    common = ["--out", str(tmp_path / "raw"), "--image_size", "16", "--plates_per_cell_line", "1",
              "--sites_per_well", "1"]
    with pytest.raises(ValueError, match="num_compounds must be >= 3"):
        synthetic.main([*common, "--num_compounds", "1"])
    assert not (tmp_path / "raw" / "synthetic.json").exists()
    synthetic.main([*common, "--num_compounds", "3"])
    assert (tmp_path / "raw" / "synthetic.json").exists() and (tmp_path / "raw" / "metadata.csv").exists()

    # The same for a design error found while laying out the plates (rxrx1: more wells than a plate has).
    kwargs = dict(image_size=16, plates_per_cell_line=1, sites_per_well=1)
    with pytest.raises(ValueError, match="at most 384 wells"):
        synthetic.write_rxrx1(tmp_path / "raw_rxrx1", num_sirnas=400, **kwargs)
    assert not (tmp_path / "raw_rxrx1" / "synthetic.json").exists()
    assert (synthetic.write_rxrx1(tmp_path / "raw_rxrx1", **kwargs) / "metadata.csv").exists()
