"""Object-store paths: every file goes through tf.io.gfile, so a `ram://` filesystem stands in for gs://."""

import numpy as np
import pytest

from gandl import fileio, workdir
from gandl._tf import tf
from gandl.data import convert, pipeline, render, rxrx


def test_shards_manifests_and_figures_on_a_non_local_filesystem(rxrx19a_dir):
    screen = rxrx.read_rxrx19a(rxrx19a_dir).subset(np.arange(12))
    out = "ram://gandl_test/shards"
    manifest = convert.convert(screen, out, convert.ConvertOptions(image_size=16, sites_per_shard=4, num_workers=1),
                               progress=False)
    assert manifest["num_sites"] == 12 and tf.io.gfile.exists(f"{out}/manifest.json")
    spec = pipeline.open_shards(out)
    assert spec.files[0].startswith("ram://")
    batch = next(pipeline.train_dataset(spec, batch_size=4, seed=0).as_numpy_iterator())
    assert batch["image"].shape == (4, 16, 16, 5)
    render.write_grid("ram://gandl_test/preview.png", batch["image"], spec.stains)
    assert tf.io.gfile.stat("ram://gandl_test/preview.png").length > 100
    fileio.write_json("ram://gandl_test/x.json", {"a": 1})
    assert fileio.read_json("ram://gandl_test/x.json") == {"a": 1}
    # Completion records and the workdir lock work there too.
    assert convert.convert(screen, out, convert.ConvertOptions(image_size=16, sites_per_shard=4, num_workers=1),
                           progress=False) == manifest
    assert fileio.verify_record(f"{out}/manifest.json") == [] and set(manifest["files"]) == {
        convert.shard_name(k, 3) for k in range(3)}
    with workdir.locked("ram://gandl_test/run", "train"):
        with pytest.raises(workdir.WorkdirInUse, match="in use by another GAN-DL run \\(--mode train"):
            with workdir.locked("ram://gandl_test/run", "embed"):
                pass
    assert not tf.io.gfile.exists(workdir.lock_file("ram://gandl_test/run"))
