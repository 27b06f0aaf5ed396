"""The probe's table (probe.csv): one row per probed step, feature set and task; read by the report.

The probe (`gandl.probe`, above the analysis) appends to it during training; the analysis stage describes
the analysed checkpoint with it (`describe_step`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from gandl import fileio
from gandl._tf import tf

COLUMNS = ["step", "images_seen", "feature_set", "label", "task", "accuracy", "status", "reference_label",
           "reference_accuracy"]


def read_table(path: str) -> pd.DataFrame | None:
    """The probe table at `path`, None when there is none; one of other columns is refused."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        table = pd.read_csv(f)
    if list(table.columns) != COLUMNS:
        raise ValueError(f"{path}: columns {list(table.columns)}, expected {COLUMNS}; move it away to start anew")
    return table


def append_rows(path: str, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Add rows to the probe table at `path` (atomically), replacing any earlier rows of the same steps
    (a resumed run probes again the steps after its checkpoint); returns the whole table."""
    new = pd.DataFrame(list(rows), columns=COLUMNS)
    old = read_table(path)
    if old is not None:
        new = pd.concat([old[~old["step"].isin(new["step"])], new], ignore_index=True)
    new = new.sort_values("step", kind="stable").reset_index(drop=True)
    buf = io.StringIO()
    new.to_csv(buf, index=False)
    fileio.write_text(path, buf.getvalue())
    return new


def describe_step(table: pd.DataFrame, step: int) -> str:
    """What the probe says of checkpoint `step`, for the report: each option's mean accuracy over its tasks
    there, its random-init reference and its best probed step. Picking `embed.step` from this curve uses the
    control labels, so the report says so."""
    ok = table[table["status"] == "ok"]
    if ok.empty:
        return "The probe table has no scored rows."
    parts = []
    for _, rows in ok.groupby("feature_set", sort=False):
        means = rows.groupby("step")["accuracy"].mean()
        best = int(means.idxmax())
        here = f"{means[step]:.3f} at this step" if step in means.index else "not probed at this step"
        reference = rows.groupby("task")["reference_accuracy"].first().mean()
        parts.append(f"{rows['label'].iloc[0]} {here} (random-init {reference:.3f}; best probed step {best}, "
                     f"{means[best]:.3f})")
    return (f"Probe (probe.csv; mean plate-held-out accuracy over its {ok['task'].nunique()} tasks): "
            + "; ".join(parts) + ". A step picked from this curve is chosen on the control sites' labels, which "
            "Table 1 also scores: its numbers at that step are optimistic by that choice.")


def gap_spread(tables: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Each feature set's lead over its random-init reference along training, over runs (a sweep's seeds).

    `tables` stacks probe tables with a `run` column and the `by` columns (the sweep's settings). One row per
    setting, feature set, task and probed step: how many runs probed it, the mean accuracy of the set and of
    its reference, and the gap (set − reference) as mean, sd, min and max: whether training beat a random
    discriminator on every run, and from when. Rows without a scored reference are left out.
    """
    ok = tables[(tables["status"] == "ok") & tables["reference_accuracy"].notna()]
    ok = ok.assign(gap=ok["accuracy"] - ok["reference_accuracy"])
    keys = [*by, "label", "reference_label", "task", "images_seen"]
    out = ok.groupby(keys, sort=False).agg(
        runs=("run", "nunique"), accuracy=("accuracy", "mean"), reference_accuracy=("reference_accuracy", "mean"),
        gap_mean=("gap", "mean"), gap_sd=("gap", "std"), gap_min=("gap", "min"), gap_max=("gap", "max"))
    return out.reset_index()
