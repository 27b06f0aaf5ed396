"""The compute ladder: how the trained-minus-random-init gap of D's features moves with compute, GAN vs SSL twin.

  python benchmarks/ladder.py --workdir /tmp/ladder                           # configs/sweeps/ladder.py (CPU)
  python benchmarks/ladder.py --sweep configs/sweeps/ladder_gpu.py --workdir /tmp/ladder_gpu   # one GPU
  python benchmarks/ladder.py --workdir /tmp/ladder --no-run                  # tabulate what is done

Runs the sweep's unfinished runs (`gandl.sweep`: each one the whole job on the morphology-only bed), then reads
every finished run's analysis: per run, each task's k-label accuracy of the trained block statistics minus that
of the same statistics of a random-init D (the paired gap within one screen), and the handcrafted set's lead over
the same reference. Printed and written to WORKDIR/ladder.{csv,md,png}:
  - per axis, budget and objective (gan: GAN-DL; contrastive: the self-supervised twin), each task's gap as
    mean ± sd over the seeds (in accuracy points), their mean over the screen's tasks (zero-shot, whose gap moves
    by 12-14 points between seeds, is shown apart and left out of it), and the handcrafted lead;
  - per axis and objective, the slope: points of gap per doubling of the budget (least squares on log2 scale
    within each seed, over the seeds run at two or more budgets), and each such seed's own slope (their spread is
    the slope's uncertainty);
  - the figure: one panel per axis, the mean gap over tasks against the budget, both objectives, the handcrafted
    lead as a dashed line.
An axis is the start point's field that a run changes (the model's side carries the data's with it).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys

import numpy as np
import pandas as pd

from gandl import fileio, sweep
from gandl.analysis.markup import markdown_table
from gandl.analysis.zeroshot import ZEROSHOT_TASK
from gandl.defaults import call_in_file
from gandl.features import registry

LEARNED, REFERENCE, HANDCRAFTED = "GAN-DL blocks", "random-init D blocks", "handcrafted"
LEARNERS = {"gan": "GAN-DL", "contrastive": "SSL twin"}
AXIS_NAMES = {"train.steps": "training steps", "model.channel_max": "channels per block",
              "model.resolution": "model side (px)"}


def run_points(table: pd.DataFrame, start: dict) -> pd.DataFrame:
    """Each done run's axis (the start point's field it changes; every axis for the start point itself) and
    budget there, one row per (run, axis)."""
    rows = []
    fields = [f for f in start if f != "data.image_size"]  # follows model.resolution
    for _, run in table[table["status"] == "done"].iterrows():
        moved = [f for f in fields if run[f] != start[f]]
        for axis in moved or fields:
            rows.append(dict(run=run["run"], axis=axis, budget=float(run[axis]), objective=run["train.objective"],
                             seed=run.get("seed", 0)))
    return pd.DataFrame(rows, columns=["run", "axis", "budget", "objective", "seed"])


def run_gaps(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per run and task: the learned blocks' k-label accuracy gap to their random-init reference (the mean over its
    initialisations, with `embed.reference_inits` > 1) and the handcrafted set's, in accuracy points."""
    pattern = re.compile(rf"^{re.escape(LEARNED)} − {re.escape(REFERENCE)}: (.+): accuracy @ k={k}$")
    rows = []
    for column in table.columns:
        task = pattern.match(column)
        if task is None:
            continue
        task = task.group(1)
        labels = registry.reference_labels(REFERENCE, {c.split(": ", 1)[0] for c in table.columns})
        reference = table[[f"{label}: {task}: accuracy @ k={k}" for label in labels]].apply(
            pd.to_numeric, errors="coerce").mean(axis=1, skipna=False)  # over its initialisations, when several
        handcrafted = pd.to_numeric(table.get(f"{HANDCRAFTED}: {task}: accuracy @ k={k}"), errors="coerce")
        rows.append(pd.DataFrame({"run": table["run"], "task": task,
                                  "gap": 100 * pd.to_numeric(table[column], errors="coerce"),
                                  "handcrafted_lead": 100 * (handcrafted - reference)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["run", "task", "gap",
                                                                                 "handcrafted_lead"])


def ladder_table(table: pd.DataFrame, start: dict, k: int) -> pd.DataFrame:
    """One row per axis, budget and objective: each task's gap (mean ± sd over seeds), the mean over the screen's
    tasks and the handcrafted lead, and the number of seeds."""
    gaps = run_gaps(table, k).merge(run_points(table, start), on="run")
    if gaps.empty:
        return pd.DataFrame()
    gaps = _in_order(gaps, start)
    per_run = (_screen_tasks(gaps).groupby(["axis", "budget", "objective", "run"], sort=False)
               [["gap", "handcrafted_lead"]].mean())
    rows = []
    for (axis, budget, objective), part in gaps.groupby(["axis", "budget", "objective"], sort=False):
        row = dict(axis=AXIS_NAMES.get(axis, axis), budget=_number(budget), learner=LEARNERS.get(objective, objective))
        for task, values in part.groupby("task", sort=False)["gap"]:
            row[task] = _mean_sd(values)
        runs = per_run.loc[(axis, budget, objective)]
        row.update({"mean over screen tasks": _mean_sd(runs["gap"]),
                    "handcrafted lead": _mean_sd(runs["handcrafted_lead"]),
                    "seeds": len(runs), "gap": runs["gap"].mean(), "gap_sd": runs["gap"].std(ddof=1),
                    "lead": runs["handcrafted_lead"].mean()})
        rows.append(row)
    return pd.DataFrame(rows)


def _screen_tasks(gaps: pd.DataFrame) -> pd.DataFrame:
    return gaps[gaps["task"] != ZEROSHOT_TASK]


def slopes(table: pd.DataFrame, start: dict, k: int) -> pd.DataFrame:
    """Points of mean gap (over the screen's tasks) per doubling of each axis' budget, per objective: least squares
    on log2(budget) within each seed (the seed as a fixed effect: a screen's own level cancels, and a seed run at
    one budget only, such as the start point's extra seeds, moves nothing), over the seeds run at two or more
    budgets (NaN without one)."""
    gaps = _screen_tasks(_in_order(run_gaps(table, k).merge(run_points(table, start), on="run"), start))
    per_run = gaps.groupby(["axis", "objective", "seed", "run", "budget"], sort=False)["gap"].mean().reset_index()
    rows = []
    per_run["x"] = np.log2(per_run["budget"].to_numpy(float))
    for (axis, objective), part in per_run.groupby(["axis", "objective"], sort=False):
        by_seed = part.groupby("seed")
        dx = (part["x"] - by_seed["x"].transform("mean")).to_numpy()
        dy = (part["gap"] - by_seed["gap"].transform("mean")).to_numpy()
        paired = by_seed["budget"].transform("nunique").to_numpy() > 1
        slope = float(dx @ dy / (dx @ dx)) if paired.any() else float("nan")
        seeds = part["seed"].to_numpy()
        each = [dx[seeds == s] @ dy[seeds == s] / (dx[seeds == s] @ dx[seeds == s]) for s in np.unique(seeds[paired])]
        rows.append({"axis": AXIS_NAMES.get(axis, axis), "learner": LEARNERS.get(objective, objective),
                     "points per doubling": slope, "each seed's": ", ".join(f"{v:+.1f}" for v in each),
                     "seeds": len(each), "runs": int(paired.sum())})
    return pd.DataFrame(rows)


def ladder_figure(rows: pd.DataFrame) -> bytes:
    """One panel per axis: the mean gap over tasks against the budget (log2), one line per learner with the seeds'
    sd as bars, the handcrafted lead dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axes_names = list(dict.fromkeys(rows["axis"]))
    fig = Figure(figsize=(4.2 * len(axes_names), 3.6), layout="constrained")
    panels = np.atleast_1d(fig.subplots(1, len(axes_names), squeeze=False).ravel())
    for ax, name in zip(panels, axes_names):
        part = rows[rows["axis"] == name]
        for learner, line in part.groupby("learner", sort=False):
            line = line.sort_values("budget")
            budget = line["budget"].astype(float)
            ax.errorbar(budget, line["gap"], yerr=line["gap_sd"].fillna(0), marker="o", capsize=3, label=learner)
            ax.plot(budget, line["lead"], ls="--", color=ax.lines[-1].get_color(), alpha=0.5,
                    label=f"handcrafted (runs of {learner})")
        ax.axhline(0, color="0.3", lw=0.8)
        ax.axhline(2, color="0.6", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set(title=name, xlabel=name, ylabel="points over random-init D (screen tasks)")
    panels[0].legend(fontsize=7)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _in_order(gaps: pd.DataFrame, start: dict) -> pd.DataFrame:
    """Rows by axis (the start point's order), budget and learner (GAN-DL first)."""
    order = {**{f: i for i, f in enumerate(start)}, **{o: i for i, o in enumerate(LEARNERS)}}
    return gaps.sort_values(["axis", "budget", "objective"], key=lambda c: c if c.name == "budget" else c.map(order),
                            kind="stable")


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _mean_sd(values: pd.Series) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return ""
    return f"{values.mean():+.1f} ± {values.std(ddof=1):.1f}" if len(values) > 1 else f"{values.mean():+.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=os.path.join(sweep.REPO_ROOT, "configs", "sweeps", "ladder.py"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--no-run", action="store_true", help="only tabulate the runs already done")
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    spec = call_in_file(args.sweep, "get_sweep")  # the ladder's own structure: its start point and label budget
    start = {field: values[0] for field, values in spec["zip"][0].items()}
    k = spec["overrides"]["analysis.few_labels"][0]
    failed = [] if args.no_run else sweep.run_sweep(args.sweep, workdir)
    loaded = sweep.load_sweep(args.sweep)
    table = sweep.summarize(loaded, workdir, loaded.mode)
    rows, rates = ladder_table(table, start, k), slopes(table, start, k)
    if rows.empty:
        print(f"no finished run in {workdir} with k = {k} label numbers yet", file=sys.stderr)
        return 1
    shown = rows.drop(columns=["gap", "gap_sd", "lead"])
    text = (f"Trained minus random-init D block statistics, accuracy points at k = {k} labelled wells (mean ± sd over "
            f"seeds), and the handcrafted set's lead over the same reference\n\n{markdown_table(shown, index=False)}"
            f"\n\nPoints of gap (mean over the screen's tasks) per doubling of each axis\n\n"
            f"{markdown_table(rates.round(2), index=False)}\n")
    print(text)
    fileio.write_text(os.path.join(workdir, "ladder.csv"), rows.to_csv(index=False))
    fileio.write_text(os.path.join(workdir, "ladder.md"), text)
    fileio.write_bytes(os.path.join(workdir, "ladder.png"), ladder_figure(rows))
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
