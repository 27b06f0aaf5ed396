"""Where the noise in the ladder's gap comes from, and how many seeds a 2-point gap needs.

  python benchmarks/ladder_power.py --workdir /tmp/ladder                 # every done run of the ladder sweep
  python benchmarks/ladder_power.py --workdir /tmp/ladder --draws 40 --boot 300

The gap is the ladder's: per run, the k-label accuracy of the trained block statistics minus the random-init
reference's, averaged over the four screen tasks (C+ vs C- with both lines, HRCE vs VERO, C+ vs C- within each
line), in points. Per learner, pooled (root mean square) over the ladder's points, printed and written to
WORKDIR/power.{csv,md}:
  - label draws: the sd of one draw of k labelled wells per class (`--draws` draws per run, the same wells for both
    sets, as the analysis draws them), and of the mean of the analysis' `analysis.few_label_draws`;
  - test wells: the sd of the gap over a bootstrap of the held-out control wells (`--boot`), the analysis' own draws;
  - reference initialisation: the sd of the reference's accuracy over its initialisations within a run
    (`embed.reference_inits`), and of their mean;
  - runs: the sd over seeds at each point of the gap to the run's own reference draw, to the mean of its draws,
    and of the trained set's accuracy alone;
and, for each of the two gaps, the seeds a 95 % t-interval of ±2 points needs at that sd. The first two rows
are what a larger or smaller screen changes; the last rows are what more seeds buy down.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np
import pandas as pd
from scipy import stats

from gandl import fileio, inspection, sweep
from gandl.analysis import classify, io
from gandl.analysis.markup import markdown_table
from gandl.analysis.zeroshot import ZEROSHOT_TASK
from gandl.defaults import call_in_file
from gandl.features import registry

LEARNED, REFERENCE = "GAN-DL blocks", "random-init D blocks"
LEARNERS = {"gan": "GAN-DL", "contrastive": "SSL twin"}


def screen_accuracies(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per run (the summary's rows), the four-task mean k-label accuracy in points of the trained set and of each
    of the reference's initialisations (columns `learned`, `reference 0`, `reference 1`, ...)."""
    def mean_over_tasks(label: str) -> pd.Series:
        columns = [c for c in table.columns if c.startswith(f"{label}: ") and c.endswith(f": accuracy @ k={k}")
                   and not c.startswith(f"{label}: {ZEROSHOT_TASK}:")]
        return 100 * table[columns].apply(pd.to_numeric, errors="coerce").mean(axis=1, skipna=False)

    draws = registry.reference_labels(REFERENCE, {c.split(": ", 1)[0] for c in table.columns})
    return pd.DataFrame({"learned": mean_over_tasks(LEARNED),
                         **{f"reference {i}": mean_over_tasks(label) for i, label in enumerate(draws)}})


def evaluation_noise(run_dir: str, k: int, draws: int, boot: int) -> dict:
    """The sd of a run's four-task mean gap (points; trained set minus the run's own reference draw) over `draws`
    draws of k labelled wells per class (both sets given the same wells, seeded as the analysis seeds them), and
    over `boot` resamplings of the held-out control wells (the gap averaged over the analysis' own draws)."""
    embeddings = inspection.load_embeddings(run_dir)
    config = embeddings.config
    if config.normalization != "none" or config.level != "site":
        raise ValueError(f"{run_dir}: the breakdown reads site-level runs without normalisation (the ladder's)")
    sets = {}
    for label in (LEARNED, REFERENCE):
        x, metadata = embeddings.sets[label]
        view = io.screen_view(metadata, embeddings.schema)
        controls = classify.control_mask(view)
        sets[label], metadata = np.asarray(x)[controls], view[controls].reset_index(drop=True)
    groups = classify.plate_key(metadata, config.group_by)
    wells = metadata["well_id"].astype(str).to_numpy()  # as the analysis names them: its draws, drawn again
    held_out = classify.control_folds(metadata, n_splits=config.n_splits, group_by=config.group_by, seed=config.seed)
    by_draw, by_well = [], []
    for _, mask, labels in classify.control_tasks(metadata):
        correct = np.zeros((draws, 2, mask.sum()))
        for draw in range(draws):
            for i, label in enumerate((LEARNED, REFERENCE)):  # one generator per set: the same wells for both
                rng = np.random.default_rng(np.random.SeedSequence([config.seed, k, draw]))
                result = classify.cross_validate(
                    sets[label][mask], labels, groups[mask], c=config.c, seed=config.seed, held_out=held_out,
                    labelled=functools.partial(classify.draw_wells, labels=labels, wells=wells[mask], k=k, rng=rng))
                correct[draw, i] = result.predicted == result.labels
        gap = correct[:, 0] - correct[:, 1]  # [draws, sites]
        by_draw.append(100 * gap.mean(axis=1))
        by_well.append(pd.Series(gap[:config.few_label_draws].mean(axis=0)).groupby(wells[mask]))
    rng = np.random.default_rng(0)
    resampled = np.zeros(boot)
    for task in by_well:
        sums, counts = task.sum().to_numpy(), task.size().to_numpy()
        picks = rng.integers(0, len(sums), (boot, len(sums)))
        resampled += 100 * sums[picks].sum(axis=1) / counts[picks].sum(axis=1) / len(by_well)
    return dict(draw_sd=float(np.mean(by_draw, axis=0).std(ddof=1)), wells_sd=float(resampled.std(ddof=1)),
                analysis_draws=config.few_label_draws)


def seeds_for(sd: float, half_width: float = 2.0) -> int | None:
    """The fewest seeds whose 95 % t-interval around a mean of values with this sd is within ±`half_width` (None
    without an sd: one seed per point)."""
    if not np.isfinite(sd):
        return None
    n = 2
    while stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) > half_width:
        n += 1
    return n


def breakdown(runs: pd.DataFrame) -> pd.DataFrame:
    """Per learner, each noise source's sd (points of four-task mean gap), pooled (root mean square) over the
    ladder's points; the seeds a ±2-point interval needs at each of the two gaps' sd over seeds."""
    def rms(values: pd.Series) -> float:
        return float(np.sqrt(np.nanmean(np.square(values.to_numpy(float)))))

    draws = [c for c in runs.columns if c.startswith("reference ")]
    runs = runs.assign(own=runs["learned"] - runs["reference 0"], mean=runs["learned"] - runs[draws].mean(axis=1),
                       init_sd=runs[draws].std(axis=1, ddof=1) if len(draws) > 1 else np.nan)
    rows = []
    for objective, part in runs.groupby("objective", sort=False):
        by_point = part.groupby("point")
        over = {column: rms(by_point[column].std(ddof=1).dropna()) for column in ("own", "mean", "learned")}
        analysis_draws = int(part["analysis_draws"].iloc[0])
        learner = LEARNERS.get(objective, objective)
        rows += [(learner, "label draws: one draw of k wells per class", rms(part["draw_sd"]), None),
                 (learner, f"label draws: the mean of the analysis' {analysis_draws}",
                  rms(part["draw_sd"]) / np.sqrt(analysis_draws), None),
                 (learner, "test wells: bootstrap of the held-out control wells", rms(part["wells_sd"]), None),
                 (learner, "reference: one initialisation (sd over a run's draws)", rms(part["init_sd"]), None),
                 (learner, f"reference: the mean of {len(draws)} draws", rms(part["init_sd"]) / np.sqrt(len(draws)),
                  None),
                 (learner, "seeds: the trained set's accuracy alone", over["learned"], None),
                 (learner, "seeds: the gap to the run's own reference draw", over["own"], seeds_for(over["own"])),
                 (learner, f"seeds: the gap to the mean of {len(draws)} reference draws", over["mean"],
                  seeds_for(over["mean"]))]
    out = pd.DataFrame(rows, columns=["learner", "source", "sd (points)", "seeds for ±2 points"])
    out["seeds for ±2 points"] = out["seeds for ±2 points"].map(lambda n: "" if pd.isna(n) else str(int(n)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=os.path.join(sweep.REPO_ROOT, "configs", "sweeps", "ladder.py"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--draws", type=int, default=20, help="label draws per run for their spread")
    parser.add_argument("--boot", type=int, default=200, help="bootstrap resamplings of the test wells")
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    spec = call_in_file(args.sweep, "get_sweep")
    k = spec["overrides"]["analysis.few_labels"][0]
    loaded = sweep.load_sweep(args.sweep)
    table = sweep.summarize(loaded, workdir, loaded.mode)
    point_fields = [f for f in spec["zip"][0] if f in table.columns]
    done = table[table["status"] == "done"].reset_index(drop=True)
    accuracies = screen_accuracies(done, k)
    rows = []
    for i, run in done.iterrows():
        try:
            noise = evaluation_noise(os.path.join(workdir, run["run"]), k, args.draws, args.boot)
        except (OSError, ValueError, KeyError) as e:
            print(f"# skipped {run['run']}: {e}", file=sys.stderr)
            continue
        rows.append(dict(noise, **accuracies.loc[i], objective=run["train.objective"],
                         point=",".join(f"{f}={run[f]}" for f in point_fields)))
    if not rows:
        print(f"no finished ladder run in {workdir}", file=sys.stderr)
        return 1
    out = breakdown(pd.DataFrame(rows))
    text = (f"Noise in the ladder's gap (four screen tasks, k = {k}), sd in accuracy points, pooled over "
            f"{len(rows)} runs\n\n{markdown_table(out.round(2), index=False)}\n")
    print(text)
    fileio.write_text(os.path.join(workdir, "power.csv"), out.to_csv(index=False))
    fileio.write_text(os.path.join(workdir, "power.md"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
