"""The random-init reference drawn at several initialisations (`embed.reference_inits`): named, exported, analysed,
and a learned set's gap taken to their mean."""

import os
import shutil

import jax
import numpy as np
import pandas as pd
import pytest

from gandl import sharding, sweep
from gandl.defaults import Config
from gandl.features import base, discriminator, registry
from gandl.models import ModelConfig, init_variables


def test_only_random_init_sets_are_drawn_again_and_their_draws_follow_them():
    names = registry.with_inits(("gandl_blocks", "random_d_blocks", "handcrafted"), 3)
    assert names == ("gandl_blocks", "random_d_blocks", "random_d_blocks@1", "random_d_blocks@2", "handcrafted")
    assert registry.with_inits(names, 1) == names  # one initialisation: the sets as listed
    assert registry.get("random_d_blocks@2").label == "random-init D blocks @2"
    for name in ("gandl_blocks@1", "random_d_blocks@0", "random_d_blocks@x", "handcrafted@1"):
        with pytest.raises(ValueError, match="only a random-init set"):
            registry.get(name)
    # A folder's file stems, in report order: anything that is not a feature set is passed over.
    stems = ["random_d_blocks@10", "handcrafted", "random_d_blocks@2", "gandl_blocks_wells", "random_d_blocks",
             "gandl_blocks", "gandl@1"]
    assert registry.ordered(stems) == ["gandl_blocks", "random_d_blocks", "random_d_blocks@2", "random_d_blocks@10",
                                       "handcrafted"]
    # A summary's labels in any order: the run's own draw first, then by initialisation; other sets' passed over.
    labels = ["random-init D blocks @10", "GAN-DL blocks", "random-init D blocks @2", "random-init D blocks",
              "random-init D", "random-init D blocks @1"]
    assert registry.reference_labels("random-init D blocks", reversed(labels)) == [
        "random-init D blocks", "random-init D blocks @1", "random-init D blocks @2", "random-init D blocks @10"]


@pytest.mark.slow
def test_each_initialisation_is_a_different_random_d_and_the_first_is_the_runs_own(tiny_config):
    model = ModelConfig.from_mapping(tiny_config.model)
    mesh = sharding.make_mesh()
    embed = base.EmbedSettings.from_config(Config.from_mapping(tiny_config).embed)

    def context(seed: int) -> base.Context:  # a random-init D with a constant stddev channel reads nothing else
        return base.Context(mesh, model, None, None, None, seed, embed, 16, base.Controls())

    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 5)).astype(np.float32)

    def features(name: str, seed: int) -> np.ndarray:
        return registry.build(name, context(seed))(images)

    own = discriminator.feature_fn(model, init_variables(model, jax.random.key(3 + 1))[1]["params"], mesh,
                                   option="blocks")(images)
    # Draw 0 is the run's own random-init D, as exported before draws existed: those exports stay valid.
    np.testing.assert_array_equal(features("random_d_blocks", 3), own)
    draws = [features(f"random_d_blocks@{i}", 3) for i in (1, 2)]
    np.testing.assert_array_equal(draws[0], features("random_d_blocks@1", 3))  # seeded
    others = [own, *draws, features("random_d_blocks", 4), features("random_d_blocks", 5)]
    for i in range(len(others)):
        for j in range(i):  # no draw of seed 3 is another seed's own random-init D
            assert not np.allclose(others[i], others[j]), (i, j)


def test_a_learned_sets_gap_is_to_the_mean_of_its_references_draws():
    columns = {"GAN-DL blocks: C+ vs C-: accuracy": 0.90, "random-init D blocks: C+ vs C-: accuracy": 0.70,
               "random-init D blocks @1: C+ vs C-: accuracy": 0.80,
               "random-init D blocks @2: C+ vs C-: accuracy": "0.9",  # summary.csv text columns: numbers as text
               "random-init D blocks @11: C+ vs C-: accuracy": 0.80,
               "GAN-DL blocks: HRCE vs VERO: accuracy": 0.95, "random-init D blocks: HRCE vs VERO: accuracy": 0.90,
               "random-init D blocks @1: HRCE vs VERO: accuracy": float("nan"),
               "random-init D: C+ vs C-: accuracy": 0.10}  # another extractor's reference: not a draw of this one
    # HRCE vs VERO lacks one draw's number: no gap there rather than a gap to the other draws alone.
    assert sweep.reference_gaps(columns) == pytest.approx({"GAN-DL blocks − random-init D blocks: C+ vs C-: "
                                                           "accuracy": 0.10})


@pytest.mark.slow
def test_the_reference_is_exported_and_analysed_at_every_initialisation(tiny_run, tmp_path):
    from gandl.analysis import stage as analysis_stage
    from gandl.embed import records
    from gandl.embed import stage as embed_stage

    cfg, run_dir, _ = tiny_run
    workdir = tmp_path / "run"
    for part in ("raw", "shards", "raw_rxrx1", "shards_rxrx1", "checkpoints"):  # the run before its export
        shutil.copytree(run_dir / part, workdir / part)
    cfg = cfg.copy_and_resolve_references()
    cfg.embed.update(feature_sets=("gandl", "random_d"), reference_inits=3)
    out = embed_stage.run(Config.from_mapping(cfg), str(workdir))
    assert records.exported_sets(out) == ["gandl", "random_d", "random_d@1", "random_d@2"]
    assert records.exported_sets(os.path.join(out, "zeroshot")) == records.exported_sets(out)
    sets = {name: np.load(os.path.join(out, f"{name}.npz"))["features"] for name in records.exported_sets(out)}
    np.testing.assert_array_equal(sets["random_d"], np.load(run_dir / "embeddings" / "step_20" / "random_d.npz")
                                  ["features"])  # the run's own draw, as the single-draw export had it
    assert not np.allclose(sets["random_d@1"], sets["random_d"]) and not np.allclose(sets["random_d@2"],
                                                                                       sets["random_d@1"])

    # One more draw: only it is exported, the finished ones are left as they are.
    stamp = os.stat(os.path.join(out, "random_d@1.npz")).st_mtime_ns
    cfg.embed.reference_inits = 4
    embed_stage.run(Config.from_mapping(cfg), str(workdir))
    assert records.exported_sets(out)[-1] == "random_d@3"
    assert os.stat(os.path.join(out, "random_d@1.npz")).st_mtime_ns == stamp

    analysis_stage.run(Config.from_mapping(cfg), str(workdir))
    summary = pd.read_csv(workdir / "analysis" / "summary.csv", index_col=0)
    draws = ["random-init D", "random-init D @1", "random-init D @2", "random-init D @3"]
    assert list(summary.columns) == ["GAN-DL", *draws]
    gaps = sweep.reference_gaps(sweep.analysis_columns(str(workdir / "analysis" / "summary.csv")))
    task = "C+ vs C- (all cell lines): accuracy @ k=2"
    values = summary.loc[task].astype(float)  # the summary also holds text rows: its numbers read as strings
    assert gaps[f"GAN-DL − random-init D: {task}"] == pytest.approx(values["GAN-DL"] - values[draws].mean())
    assert values[draws].std() > 0  # the draws differ: a mean over them is not one of them

    # A draw whose completion record went missing is refused by name, not analysed as it stands.
    os.remove(records.completion_record(out, "random_d@2"))
    with pytest.raises(records.ExportError, match="random_d@2"):
        analysis_stage.run(Config.from_mapping(cfg), str(workdir))
