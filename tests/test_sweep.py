"""gandl.sweep: expansion, naming, checks against the base config, a real local sweep and its summary."""

import json
import os
import time

import numpy as np
import pandas as pd
import pytest

from gandl import sweep

SMOKE = os.path.join(sweep.REPO_ROOT, "configs", "sweeps", "convert_smoke.py")


def test_expand_product_and_zip_groups():
    runs = sweep.expand({"product": {"a": [1, 2]},
                         "zip": [{"b": ["x", "y"], "c": [10, 20]}, {"d": [True]}]})
    assert runs == [{"a": 1, "b": "x", "c": 10, "d": True}, {"a": 1, "b": "y", "c": 20, "d": True},
                    {"a": 2, "b": "x", "c": 10, "d": True}, {"a": 2, "b": "y", "c": 20, "d": True}]
    assert sweep.expand({"zip": {"b": [1, 2], "c": [3, 4]}}) == [{"b": 1, "c": 3}, {"b": 2, "c": 4}]
    assert sweep.expand({}) == [{}]


@pytest.mark.parametrize("spec, message", [
    ({"zip": {"b": [1, 2], "c": [3]}}, "one length"),
    ({"product": {"a": [1]}, "zip": {"a": [2]}}, "swept twice"),
    ({"overrides": {"a": 0}, "product": {"a": [1]}}, "both fixed and swept"),
    ({"product": {"a": []}}, "at least one value"),
])
def test_expand_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        sweep.expand(spec)


def test_run_names_are_stable_and_unique():
    assert sweep.run_name({"train.g_lr": 1e-4, "data.augment": False}) == "train.g_lr=0.0001,data.augment=False"
    assert sweep.run_name({}) == "base"
    lossy = sweep.run_name({"data.channels": (1, 2, 3)})
    assert lossy.startswith("data.channels=_1,_2,_3_-") and lossy == sweep.run_name({"data.channels": [1, 2, 3]})
    assert lossy != sweep.run_name({"data.channels": (1, 2, 4)})
    assert len(sweep.run_name({"data.root": "x" * 500})) == sweep._MAX_NAME


def _write_sweep(tmp_path, spec: dict) -> str:
    path = tmp_path / "sweep.py"
    path.write_text(f"def get_sweep():\n    return {spec!r}\n")
    return str(path)


@pytest.mark.parametrize("overrides, message", [
    ({"train.no_such_field": 1}, "no_such_field"),
    ({"data.sites_per_shard": 1.5}, "sites_per_shard"),
])
def test_overrides_are_checked_against_the_base_config(tmp_path, overrides, message):
    path = _write_sweep(tmp_path, {"base": "configs/demo.py", "product": {k: [v] for k, v in overrides.items()}})
    with pytest.raises(ValueError, match=message):
        sweep.load_sweep(path)
    with pytest.raises(ValueError, match="needs 'base'"):
        sweep.load_sweep(_write_sweep(tmp_path, {"product": {}}))


def test_command_passes_every_override_and_the_mode(tmp_path):
    s = sweep.load_sweep(_write_sweep(tmp_path, {"base": "configs/demo.py", "overrides": {"data.channels": (1, 2)},
                                                 "product": {"data.kind": ["rxrx1"]}}))
    run, = s.runs
    assert sweep.command(s, run, "/w/r", "train", "local")[1:] == [
        "-m", "gandl.main", "--config", os.path.join(sweep.REPO_ROOT, "configs/demo.py"), "--workdir", "/w/r",
        "--mode", "train", "--config.data.channels=(1, 2)", "--config.data.kind=rxrx1"]
    assert sweep.command(s, run, "gs://b/r", "embed", "tpu", ["--spot"], "vm") == [
        "bash", sweep.TPU_LAUNCHER, "--name", "vm", "--workdir", "gs://b/r", "--config", "configs/demo.py",
        "--mode", "embed", "--spot", "--config.data.channels=(1, 2)", "--config.data.kind=rxrx1"]


def _write_scalars(logdir: str, steps: range, offset: float) -> None:
    from gandl._tf import tf

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for step in steps:
            tf.summary.scalar("g_loss", offset + step, step=step)
            tf.summary.scalar("d_loss", -step, step=step)
        tf.summary.image("samples/ema", np.zeros((1, 4, 4, 3), np.float32), step=steps[-1])
    writer.close()


def test_last_scalars_takes_the_last_step_across_a_resume(tmp_path):
    logdir = str(tmp_path / "tensorboard")
    assert sweep.last_scalars(logdir) == {}
    _write_scalars(logdir, range(1, 6), 0.0)
    assert sweep.last_scalars(logdir) == {"step": 5, "g_loss": 5.0, "d_loss": -5.0}
    # A resumed run: a later events file rewrites steps 4 and 5. Files are read in name order, whose first key
    # is the creation second (then a per-process counter that sorts as text), so the resume starts a second later,
    # as a real one does.
    time.sleep(1.1)
    _write_scalars(logdir, range(4, 8), 100.0)
    assert sweep.last_scalars(logdir) == {"step": 7, "g_loss": 107.0, "d_loss": -7.0}


@pytest.fixture
def native_pod_variable():
    """What libtpu leaves in the C library's environment (not in os.environ) once JAX has loaded it on a machine
    that is not a TPU VM."""
    os.putenv("CLOUD_TPU_TASK_ID", "WARNING: could not determine TPU worker number")
    yield
    os.unsetenv("CLOUD_TPU_TASK_ID")


@pytest.mark.slow
def test_local_convert_sweep_skips_finished_runs_and_summarizes(tmp_path, monkeypatch, capsys, native_pod_variable):
    workdir = str(tmp_path / "sweep")
    assert sweep.run_sweep(SMOKE, workdir) == []  # the runs did not take themselves for TPU pod workers
    shards = {}
    for n in (16, 32):
        run_dir = os.path.join(workdir, f"data.sites_per_shard={n}")
        with open(os.path.join(run_dir, "shards", "manifest.json")) as f:
            shards[n] = len(json.load(f)["shards"])
        with open(os.path.join(run_dir, "done_convert.json")) as f:
            assert "--config.data.sites_per_shard=" + str(n) in json.load(f)["command"]
    assert shards[16] > shards[32] >= 2  # the override reached gandl.main

    table = pd.read_csv(os.path.join(workdir, "summary.csv"))
    assert list(table["run"]) == ["data.sites_per_shard=16", "data.sites_per_shard=32"]
    assert list(table["data.sites_per_shard"]) == [16, 32] and set(table["status"]) == {"done"}
    with open(os.path.join(workdir, "summary.md")) as f:
        assert f.read().splitlines()[2].startswith("| data.sites_per_shard=16 | done | 16 |")

    # A rerun runs nothing; the summary picks up TensorBoard scalars and the analysis table of a run.
    run_dir = os.path.join(workdir, "data.sites_per_shard=32")
    _write_scalars(os.path.join(run_dir, "tensorboard"), range(1, 4), 0.5)
    os.makedirs(os.path.join(run_dir, "analysis"))
    pd.DataFrame({"task": ["C+ vs C-: accuracy"], "GAN-DL": [0.9], "handcrafted": [0.8]}).to_csv(
        os.path.join(run_dir, "analysis", "summary.csv"), index=False)
    monkeypatch.setattr(sweep.subprocess, "run", lambda *a, **k: pytest.fail(f"rerun ran {a}"))
    capsys.readouterr()
    assert sweep.run_sweep(SMOKE, workdir) == []
    assert capsys.readouterr().out.count("convert done, skipped") == 2
    table = pd.read_csv(os.path.join(workdir, "summary.csv")).set_index("run")
    row = table.loc["data.sites_per_shard=32"]
    assert (row["step"], row["g_loss"], row["d_loss"]) == (3, 3.5, -3.0)
    assert (row["GAN-DL: C+ vs C-: accuracy"], row["handcrafted: C+ vs C-: accuracy"]) == (0.9, 0.8)
    assert np.isnan(table.loc["data.sites_per_shard=16", "g_loss"])

    # Another mode is not done; a marker left by other settings is refused rather than skipped.
    s = sweep.load_sweep(SMOKE)
    assert not sweep.is_done(s, s.runs[1], run_dir, "train")
    with pytest.raises(ValueError, match="other settings"):
        sweep.is_done(s, s.runs[0], run_dir, "convert")  # runs[0] is sites_per_shard=16, run_dir holds 32


def test_spread_summarises_each_analysis_number_over_the_done_runs(tmp_path):
    table = pd.DataFrame({"run": ["a", "b", "c"], "status": ["done", "done", "not done"], "synthetic.seed": [1, 2, 3],
                          "g_loss": [1.0, 2.0, 3.0],
                          "GAN-DL: C+ vs C-: accuracy": [0.9, 0.8, 0.0],
                          "handcrafted: C+ vs C-: accuracy": [1.0, 1.0, 0.0],
                          "GAN-DL: HRCE: top compound": ["X (1.0)", "Y (0.9)", ""]})
    over = sweep.spread(table)
    assert over.loc["C+ vs C-: accuracy", "GAN-DL"] == "0.850 ± 0.071 (0.800–0.900)"  # run c is not done
    assert over.loc["C+ vs C-: accuracy", "handcrafted"] == "1.000 ± 0.000 (1.000–1.000)"
    assert list(over.index) == ["C+ vs C-: accuracy"]  # scalars, swept values and text cells are left out
    paths = sweep.write_summary(table, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["summary.csv", "summary.md", "spread.csv", "spread.md"]
    with open(paths[3]) as f:
        assert "| C+ vs C-: accuracy | 0.850 ± 0.071 (0.800–0.900) |" in f.read()
    one = table.assign(status=["done", "not done", "not done"])
    assert len(sweep.write_summary(one, str(tmp_path / "one"))) == 2


def test_spread_over_seeds_keeps_each_setting_apart():
    table = pd.DataFrame({"run": list("abcd"), "status": ["done"] * 4, "synthetic.seed": [1, 2, 1, 2],
                          "train.augment": ["none", "none", "ada", "ada"],
                          "GAN-DL: C+ vs C-: accuracy": [0.9, 0.8, 0.6, 0.7]})
    over = sweep.spread(table, by=["train.augment"])
    assert list(over["setting"]) == ["train.augment=none", "train.augment=ada"]
    assert list(over["GAN-DL"]) == ["0.850 ± 0.071 (0.800–0.900)", "0.650 ± 0.071 (0.600–0.700)"]


def test_learned_sets_are_paired_with_their_random_init_reference_run_by_run(tmp_path):
    def summary(run: str, trained: list, random_init: list) -> dict:
        path = tmp_path / run / "summary.csv"
        path.parent.mkdir()
        pd.DataFrame({"GAN-DL blocks": trained, "random-init D blocks": random_init, "handcrafted": [0.9, 0.9, "-"]},
                     index=["C+ vs C-: accuracy @ k=8", "zero-shot cell type: accuracy", "HRCE: top compound"]
                     ).to_csv(path)
        return sweep.analysis_columns(str(path))

    # Text in a column (a top compound) makes pandas read its numbers as strings; they still pair.
    columns = [summary("a", [0.80, 0.7, "X (1.0)"], [0.75, 0.6, "Y (0.2)"]),
               summary("b", [0.70, 0.9, "X (0.9)"], [0.72, 0.6, "Z (0.1)"])]
    gaps = [sweep.reference_gaps(c) for c in columns]
    assert gaps[0] == pytest.approx({"GAN-DL blocks − random-init D blocks: C+ vs C-: accuracy @ k=8": 0.05,
                                     "GAN-DL blocks − random-init D blocks: zero-shot cell type: accuracy": 0.1})
    table = pd.DataFrame([{"run": r, "status": "done", **c, **g} for r, c, g in zip("ab", columns, gaps)])
    over = sweep.spread(table)
    # The worst seed shows: trained ahead by 1.5 points on average, behind by 2 on run b.
    assert over.loc["C+ vs C-: accuracy @ k=8", "GAN-DL blocks − random-init D blocks"] == \
        "0.015 ± 0.049 (-0.020–0.050)"
    assert sweep.reference_gaps({"GAN-DL blocks: C+ vs C-: accuracy": 0.8}) == {}  # no reference column, no gap


def test_probe_gaps_over_seeds_per_setting_from_the_done_runs(tmp_path):
    from gandl.analysis import probe_table

    def run(augment: str, seed: int) -> sweep.Run:
        swept = {"train.augment": augment, "seed": seed}
        return sweep.Run(sweep.run_name(swept), swept, swept)

    def probe(r: sweep.Run, gaps: dict, done: bool = True) -> None:
        """Probe rows at two steps: the learned set at reference + gap; a set without reference; a failed task."""
        rows = [dict(step=step, images_seen=16 * step, feature_set="gandl_blocks", label="GAN-DL blocks", task=task,
                     accuracy=0.6 + gap * step / 1000, status="ok", reference_label="random-init D blocks",
                     reference_accuracy=0.6) for (task, gap) in gaps.items() for step in (500, 1000)]
        rows += [dict(rows[0], feature_set="handcrafted", label="handcrafted", reference_label="",
                      reference_accuracy=float("nan")),
                 dict(rows[0], task="zero-shot cell type", accuracy=float("nan"), status="skipped: one class")]
        os.makedirs(tmp_path / r.name)
        pd.DataFrame(rows, columns=probe_table.COLUMNS).to_csv(tmp_path / r.name / "probe.csv", index=False)
        if done:
            sweep._mark_done(s, r, str(tmp_path / r.name), "all", ["true"])

    runs = [run("none", 1), run("none", 2), run("ada", 1), run("ada", 2), run("ada", 3)]
    s = sweep.Sweep(base="configs/demo.py", mode="all", runs=runs, spread_over=("seed",))
    probe(runs[0], {"C+ vs C-": 0.10, "C+ vs C- @ k=8": -0.04})
    probe(runs[1], {"C+ vs C-": 0.02, "C+ vs C- @ k=8": 0.00})
    probe(runs[2], {"C+ vs C-": -0.06, "C+ vs C- @ k=8": 0.02})
    probe(runs[3], {"C+ vs C-": 0.00, "C+ vs C- @ k=8": 0.04})
    probe(runs[4], {"C+ vs C-": 0.50, "C+ vs C- @ k=8": 0.50}, done=False)  # not done: left out

    paths = sweep.write_probe_spread(s, str(tmp_path), "all", ["train.augment"])
    assert [os.path.basename(p) for p in paths] == ["probe_gaps.csv", "probe_gaps.png", "probe_gaps_k8.png"]
    table = pd.read_csv(paths[0])
    assert set(table["label"]) == {"GAN-DL blocks"} and set(table["task"]) == {"C+ vs C-", "C+ vs C- @ k=8"}
    at = table.set_index(["train.augment", "task", "images_seen"])
    none, ada = at.loc[("none", "C+ vs C-", 16000)], at.loc[("ada", "C+ vs C- @ k=8", 8000)]
    assert none["runs"] == 2 and ada["runs"] == 2
    assert (none["gap_mean"], none["gap_min"], none["gap_max"]) == pytest.approx((0.06, 0.02, 0.10))
    assert (ada["gap_mean"], ada["gap_min"], ada["gap_max"]) == pytest.approx((0.015, 0.01, 0.02))
    assert ada["reference_accuracy"] == pytest.approx(0.6) and ada["accuracy"] == pytest.approx(0.615)
    assert sweep.write_probe_spread(s, str(tmp_path / "empty"), "all", ["train.augment"]) == []


def test_where_runs_a_slice_of_the_sweep_and_bad_clauses_get_one_line(tmp_path, capsys):
    regularizers = os.path.join(sweep.REPO_ROOT, "configs", "sweeps", "demo_regularizers.py")

    def dry(*where: str) -> tuple[int, list[str], str]:
        flags = [f"--where={w}" for w in where]
        rc = sweep.main(["--sweep", regularizers, "--workdir", str(tmp_path), "--dry_run", *flags])
        out, err = capsys.readouterr()
        return rc, [line.split("] ")[1] for line in out.splitlines() if line.startswith("# [")], err

    rc, runs, _ = dry("train.r1_gamma=2.0", "train.pl_weight=2.0")
    assert rc == 0 and runs == ["train.r1_gamma=2.0,train.lipschitz_weight=1.0,train.pl_weight=2.0"]
    rc, runs, _ = dry("train.lipschitz_weight=0.0", "train.r1_gamma=0.5", "train.r1_gamma=2.0")  # one field: any
    assert rc == 0 and runs == ["train.r1_gamma=0.5,train.lipschitz_weight=0.0,train.pl_weight=0.0",
                                "train.r1_gamma=2.0,train.lipschitz_weight=0.0,train.pl_weight=0.0"]
    assert len(dry()[1]) == 4
    rc, runs, err = dry("train.g_lr=0.001")
    assert (rc, runs) == (2, []) and err.count("\n") == 1 and "train.g_lr" in err and "train.r1_gamma" in err
    rc, runs, err = dry("train.r1_gamma=2")
    assert (rc, runs) == (2, []) and err.count("\n") == 1 and "selects no run" in err and "'0.5', '2.0'" in err
