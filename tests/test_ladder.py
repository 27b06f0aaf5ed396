"""benchmarks/ladder.py and ladder_power.py: the compute ladder's table and its noise breakdown from a sweep summary,
and both scripts at tiny size."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from gandl.sweep import REPO_ROOT


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ladder, power = _script("ladder"), _script("ladder_power")

START = {"train.steps": 4000, "model.channel_max": 32, "model.resolution": 32, "data.image_size": 32}
GAP = "GAN-DL blocks − random-init D blocks: {}: accuracy @ k=8"
REF, HAND = "random-init D blocks: {}: accuracy @ k=8", "handcrafted: {}: accuracy @ k=8"
ZEROSHOT = "zero-shot cell type"


def _summary(third_seed: bool = False) -> pd.DataFrame:
    """Runs of a ladder: the start point for both objectives and two seeds, the steps axis for GAN-DL (the gap grows
    by 1.5 and 2.5 points per doubling of the steps on seeds 1 and 2, task B's 4 points above task A's), a run that
    did not finish and, with `third_seed`, a third seed far above the others at the start point only."""
    rows = []
    for objective in ("gan", "contrastive"):
        for seed in (1, 2):
            for steps in ((1000, 2000, 4000) if objective == "gan" else (4000,)):
                slope = 2 + seed - 1.5  # seed 1: 1.5 points per doubling, seed 2: 2.5
                gap = (0.01 * (1 + slope * np.log2(steps / 1000) + seed - 1.5)
                       + (0.05 if objective == "contrastive" else 0))
                rows.append({"run": f"{objective}-{steps}-{seed}", "status": "done", "train.objective": objective,
                             "seed": seed,
                             **dict(START, **{"train.steps": steps}),
                             GAP.format("A"): gap, REF.format("A"): 0.6, HAND.format("A"): 0.9,
                             GAP.format("B"): gap + 0.04, REF.format("B"): 0.7, HAND.format("B"): 0.8,
                             GAP.format(ZEROSHOT): -0.5 * seed, REF.format(ZEROSHOT): 0.6, HAND.format(ZEROSHOT): 0.9})
    rows.append(dict(rows[0], run="unfinished", status="not done", **{GAP.format("A"): 5.0, "train.steps": 8000}))
    if third_seed:
        rows.append(dict(rows[2], run="gan-4000-3", seed=3, **{GAP.format("A"): 0.3, GAP.format("B"): 0.34}))
    return pd.DataFrame(rows)


def test_the_ladder_pairs_each_run_with_its_reference_and_puts_the_start_point_on_every_axis():
    table = ladder.ladder_table(_summary(), START, 8)
    steps = table[table["axis"] == "training steps"].set_index(["budget", "learner"])
    assert list(steps.index) == [(1000, "GAN-DL"), (2000, "GAN-DL"), (4000, "GAN-DL"), (4000, "SSL twin")]
    assert steps.loc[(4000, "GAN-DL"), "gap"] == pytest.approx(5 + 2)  # points, mean over tasks A (+5) and B (+9)
    assert steps.loc[(4000, "GAN-DL"), ZEROSHOT] == "-75.0 ± 35.4"  # shown, and left out of the screen's mean
    assert steps.loc[(4000, "GAN-DL"), "A"] == "+5.0 ± 2.1" and steps.loc[(4000, "GAN-DL"), "B"] == "+9.0 ± 2.1"
    assert steps.loc[(4000, "SSL twin"), "gap"] == pytest.approx(12)
    assert steps.loc[(1000, "GAN-DL"), "lead"] == pytest.approx((30 + 10) / 2)  # handcrafted over the reference
    assert set(table["seeds"]) == {2}  # the unfinished run counts nowhere
    # the start point alone stands for the axes no run moved
    widths = table[table["axis"] == "channels per block"]
    assert list(widths["budget"]) == [32, 32] and list(widths["learner"]) == ["GAN-DL", "SSL twin"]
    for third_seed in (False, True):  # a seed run at one budget only moves the slope nowhere
        rates = ladder.slopes(_summary(third_seed), START, 8).set_index(["axis", "learner"])
        assert rates.loc[("training steps", "GAN-DL"), "points per doubling"] == pytest.approx(2.0)
        assert rates.loc[("training steps", "GAN-DL"), "seeds"] == 2
        assert rates.loc[("training steps", "GAN-DL"), "each seed's"] == "+1.5, +2.5"
        assert np.isnan(rates.loc[("training steps", "SSL twin"), "points per doubling"])  # one budget: no slope


def test_the_handcrafted_lead_is_over_the_mean_of_the_references_draws():
    table = _summary()
    for draw, level in ((1, 0.5), (2, 0.4)):  # embed.reference_inits = 3: the reference's level is 0.5 on task A
        for task in ("A", "B", ZEROSHOT):
            table[f"random-init D blocks @{draw}: {task}: accuracy @ k=8"] = level
    rows = ladder.ladder_table(table, START, 8).set_index(["axis", "budget", "learner"])
    # task A: 0.9 - mean(0.6, 0.5, 0.4) = 40 points; task B: 0.8 - mean(0.7, 0.5, 0.4) = 26.7 points
    assert rows.loc[("training steps", 1000, "GAN-DL"), "lead"] == pytest.approx((40 + 80 / 3) / 2)


def test_the_power_breakdown_separates_the_references_draws_from_the_seeds():
    # Two points, three seeds each: the trained set moves by ±1 between seeds, the reference's own draw by ±3 around
    # a mean over its 4 draws that moves by ±0.5; each run's draws spread with sd 2.
    rows = []
    for point in ("a", "b"):
        for seed, (learned, level) in enumerate(((80, 70.5), (81, 70), (79, 69.5))):
            delta = (3, -3, 0)[seed]  # the run's own draw, off its draws' mean `level`
            draws = [level + delta, *(level - delta / 3 + d for d in (-2, 0, 2))]
            rows.append({"objective": "gan", "point": point, "learned": learned, "draw_sd": 1.0,
                         "wells_sd": 0.5, "analysis_draws": 4,
                         **{f"reference {i}": value for i, value in enumerate(draws)}})
    table = power.breakdown(pd.DataFrame(rows)).set_index("source")
    sd = table["sd (points)"]
    assert sd["label draws: the mean of the analysis' 4"] == pytest.approx(0.5)
    assert sd["seeds: the trained set's accuracy alone"] == pytest.approx(1.0)
    assert sd["seeds: the gap to the mean of 4 reference draws"] == pytest.approx(np.std([9.5, 11, 9.5], ddof=1))
    assert sd["seeds: the gap to the run's own reference draw"] > 3 * sd["seeds: the gap to the mean of 4 reference "
                                                                          "draws"]
    assert power.seeds_for(2.71) == 10 and power.seeds_for(1.7) == 6 and power.seeds_for(float("nan")) is None


@pytest.mark.slow
def test_the_ladder_script_runs_unchanged_at_tiny_size(tmp_path):
    """The GPU ladder's script, on this CPU, at the tiny sweep's size: both objectives train, embed and are analysed;
    the table names both learners and the figure is written."""
    command = [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "ladder.py"),
               "--sweep", os.path.join(REPO_ROOT, "configs", "sweeps", "ladder_tiny.py"), "--workdir", str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| GAN-DL |" in out.stdout and "| SSL twin |" in out.stdout
    assert (tmp_path / "ladder.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "ladder.csv")
    assert set(table["learner"]) == {"GAN-DL", "SSL twin"} and table["gap"].notna().all()
    again = subprocess.run(command + ["--no-run"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    text = (tmp_path / "ladder.md").read_text().strip()
    assert again.returncode == 0 and text in again.stdout and text in out.stdout
    # The reference at 3 initialisations; its spread and the evaluation's are measured on the finished runs.
    noise = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "ladder_power.py"),
                            *command[2:], "--draws", "3", "--boot", "20"], capture_output=True, text=True,
                           cwd=REPO_ROOT, timeout=600)
    assert noise.returncode == 0, noise.stderr[-3000:]
    table = pd.read_csv(tmp_path / "power.csv").set_index(["learner", "source"])["sd (points)"]
    for learner in ("GAN-DL", "SSL twin"):
        assert table[(learner, "reference: one initialisation (sd over a run's draws)")] > 0
        assert table[(learner, "test wells: bootstrap of the held-out control wells")] >= 0
