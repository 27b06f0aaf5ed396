"""Config sweeps: expand a sweep file into runs, run them (here or on Cloud TPU), tabulate their final metrics.

Usage::

  python -m gandl.sweep --sweep configs/sweeps/demo_regularizers.py --workdir /tmp/sweep [--mode train] [--dry_run]
      [--where train.r1_gamma=2.0 ...]   (only the runs with these swept values; the summary covers all done)
  python -m gandl.sweep --sweep configs/sweeps/rxrx19a_lr.py --workdir gs://BUCKET/sweep --launcher tpu \
      --launch_flags="--spot --zone=europe-west4-a"

A sweep file is a Python file whose `get_sweep()` returns a dict::

  base       the config file every run starts from, relative to the repository root (or absolute)
  overrides  {field: value}, the same for every run (optional)
  product    {field: [values]}: every combination (optional)
  zip        {field: [values]} whose lists have one length and advance together, or a list of such
             groups; groups combine with the product axes, every combination (optional)
  mode       the gandl.main mode when --mode is not given (optional; default train)
  spread_over  the swept fields that only draw chance (seeds): spread.md then gives each setting of the other
             swept fields its own rows, over those draws (optional; default: every done run pooled)

Fields are dotted config paths (`train.g_lr`). Every run's overrides are checked against the base config
(unknown fields, wrong types) and by the config check (gandl.check.validate: sizes, channels, batches for
the device count of the launcher's machine) before anything runs. A run's workdir is WORKDIR/<name>, the name
made of its swept fields (`data.sites_per_shard=16,train.g_lr=0.0001`), so it is stable across reruns; a run that
finished leaves `done_<mode>.json` there and is skipped next time. WORKDIR/summary.{csv,md} hold one row per
run: its swept values, the last value of every TensorBoard scalar (and its step) and the flattened
analysis/summary.csv, plus each learned feature set's paired gap to its random-init reference
(`GAN-DL blocks − random-init D blocks: <task>`); WORKDIR/spread.{csv,md} the mean, sd and range of every
analysis number and gap over the done runs (a sweep over seeds: configs/sweeps/demo_seeds.py);
WORKDIR/probe_gaps.{csv,png} the probe's gap to the random-init reference along training over those runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import pandas as pd

from gandl.defaults import call_in_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_LAUNCHER = os.path.join(REPO_ROOT, "launch", "tpu.sh")
_SWEEP_KEYS = {"base", "overrides", "product", "zip", "mode", "spread_over"}
_MAX_NAME = 120  # longer names are cut and made unique with a hash


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    swept: dict[str, Any]  # the fields this run varies (they name it)
    overrides: dict[str, Any]  # every override passed to gandl.main: fixed + swept


@dataclasses.dataclass(frozen=True)
class Sweep:
    base: str
    mode: str
    runs: list[Run]
    spread_over: tuple[str, ...] = ()  # swept fields of chance; the others set spread.md's groups


def cli_value(value: Any) -> str:
    """`value` as gandl.main's `--config.field=` flag parses it back (tuples as literals, strings raw)."""
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    if isinstance(value, str):
        return value
    return repr(value)


def run_name(swept: Mapping[str, Any]) -> str:
    """A stable folder name from the swept fields; lossy or long names get a hash of the exact values."""
    if not swept:
        return "base"
    exact = ",".join(f"{k}={cli_value(v)}" for k, v in swept.items())
    name = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", exact)
    if name != exact or len(name) > _MAX_NAME:
        name = f"{name[:_MAX_NAME - 9]}-{hashlib.sha1(exact.encode()).hexdigest()[:8]}"
    return name


def _zip_groups(spec: Any) -> list[dict[str, list]]:
    groups = [spec] if isinstance(spec, Mapping) else list(spec or ())
    for group in groups:
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"zip lists must have one length: {lengths}")
    return groups


def expand(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The swept overrides of every run: the product of the product axes and the zip groups, last fastest."""
    axes = [[{field: v} for v in values] for field, values in (spec.get("product") or {}).items()]
    axes += [[dict(zip(group, values)) for values in zip(*group.values())] for group in _zip_groups(spec.get("zip"))]
    if not all(axes):
        raise ValueError("every product and zip list needs at least one value")
    fields = [f for axis in axes for f in axis[0]]
    fixed = set(spec.get("overrides") or {})
    repeated = {f for f in fields if fields.count(f) > 1} | (fixed & set(fields))
    if repeated:
        raise ValueError(f"fields swept twice or both fixed and swept: {sorted(repeated)}")
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*axes)]


def _base_path(base: str) -> str:
    return base if os.path.isabs(base) else os.path.join(REPO_ROOT, base)


def run_config(base: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
    """A run's config: its overrides applied to a locked copy of the base; unknown fields and bad types fail here."""
    config = ml_collections.ConfigDict(base)
    config.lock()
    try:
        config.update_from_flattened_dict(dict(run.overrides))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"run {run.name}: {e}") from e
    return config


def _launch_devices(launcher: str, launch_flags: Sequence[str]) -> int:
    """The device count the runs will see: this machine's, or the TPU type's that launch/tpu.sh creates."""
    from gandl import check, sharding

    if launcher == "local":
        sharding.skip_absent_tpu()  # no libtpu start-up lines where there is no TPU
        return check.device_count()
    tpu_type = "v3-8"  # launch/tpu.sh's default --type
    for i, flag in enumerate(launch_flags):
        if flag == "--type" and i + 1 < len(launch_flags):
            tpu_type = launch_flags[i + 1]
        elif flag.startswith("--type="):
            tpu_type = flag.removeprefix("--type=")
    return check.device_count(tpu_type)


def check_runs(sweep: Sweep, num_devices: int) -> None:
    """The config check's validation of every run for `num_devices` devices; one error listing every failure."""
    from gandl import check

    base = call_in_file(_base_path(sweep.base), "get_config")
    failures = [f"run {run.name}: {f}" for run in sweep.runs
                for f in check.validate(run_config(base, run), num_devices)]
    if failures:
        raise check.ConfigCheckError(failures, num_devices)


def load_sweep(path: str) -> Sweep:
    """Read, expand and check a sweep file."""
    spec = call_in_file(path, "get_sweep")
    unknown = set(spec) - _SWEEP_KEYS
    if unknown or "base" not in spec:
        raise ValueError(f"{path}: get_sweep() needs 'base' and may hold {sorted(_SWEEP_KEYS)}; got {sorted(spec)}")
    fixed = dict(spec.get("overrides") or {})
    runs = [Run(run_name(swept), swept, {**fixed, **swept}) for swept in expand(spec)]
    base_config = call_in_file(_base_path(spec["base"]), "get_config")
    for run in runs:
        run_config(base_config, run)
    spread_over = tuple(spec.get("spread_over") or ())
    unswept = [f for f in spread_over if runs and f not in runs[0].swept]
    if unswept:
        raise ValueError(f"{path}: spread_over names fields the sweep does not sweep: {unswept}")
    return Sweep(spec["base"], spec.get("mode") or "train", runs, spread_over)


def select(sweep: Sweep, where: Sequence[str]) -> list[Run]:
    """The runs whose swept values match `where`'s `field=value` clauses (every field named; of several values
    given for one field, any), in the sweep's order: a slice of a sweep to run now, the rest later."""
    swept = sweep.runs[0].swept if sweep.runs else {}
    wanted: dict[str, set[str]] = {}
    for clause in where:
        field, sep, value = clause.partition("=")
        if not sep or field not in swept:
            raise ValueError(f"--where {clause}: expected <swept field>=<value>; swept fields: {', '.join(swept)}")
        wanted.setdefault(field, set()).add(value)
    runs = [run for run in sweep.runs if all(cli_value(run.swept[f]) in values for f, values in wanted.items())]
    if not runs:
        values = {f: sorted({cli_value(run.swept[f]) for run in sweep.runs}) for f in wanted}
        raise ValueError(f"--where {' '.join(where)} selects no run; the swept values are {values}")
    return runs


def command(sweep: Sweep, run: Run, run_dir: str, mode: str, launcher: str, launch_flags: Sequence[str] = (),
            tpu_name: str = "") -> list[str]:
    """The command that runs one run: gandl.main here, or launch/tpu.sh (which runs it on every TPU worker)."""
    overrides = [f"--config.{k}={cli_value(v)}" for k, v in run.overrides.items()]
    if launcher == "local":
        return [sys.executable, "-m", "gandl.main", "--config", _base_path(sweep.base), "--workdir", run_dir,
                "--mode", mode, *overrides]
    return ["bash", TPU_LAUNCHER, "--name", tpu_name, "--workdir", run_dir, "--config", sweep.base, "--mode", mode,
            *launch_flags, *overrides]


def _done_path(run_dir: str, mode: str) -> str:
    return os.path.join(run_dir, f"done_{mode}.json")


def is_done(sweep: Sweep, run: Run, run_dir: str, mode: str) -> bool:
    """Whether this run finished this mode; a marker left by other settings is an error, not a skip."""
    from gandl import fileio
    from gandl._tf import tf

    path = _done_path(run_dir, mode)
    if not tf.io.gfile.exists(path):
        return False
    record = fileio.read_json(path)
    if (record["base"], record["overrides"]) != (sweep.base, {k: cli_value(v) for k, v in run.overrides.items()}):
        raise ValueError(f"{path} records other settings ({record['base']}, {record['overrides']}); "
                         "use another --workdir or delete that run")
    return True


def _mark_done(sweep: Sweep, run: Run, run_dir: str, mode: str, cmd: list[str]) -> None:
    from gandl import fileio

    fileio.write_json(_done_path(run_dir, mode), dict(
        base=sweep.base, mode=mode, overrides={k: cli_value(v) for k, v in run.overrides.items()},
        command=shlex.join(cmd)))


def last_scalars(logdir: str) -> dict[str, float]:
    """The last value of every TensorBoard scalar in `logdir` (by step; a resumed run's rewrites win), plus
    `step`, the last step seen. Empty when there is no log."""
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.util import tensor_util

    from gandl._tf import tf  # before tensorboard, so that it reads gs:// through tf.io.gfile

    if not tf.io.gfile.isdir(logdir):
        return {}
    acc = plugin_event_accumulator.EventAccumulator(logdir, size_guidance={plugin_event_accumulator.TENSORS: 1})
    acc.Reload()
    values, steps = {}, []
    for tag in acc.Tags()[plugin_event_accumulator.TENSORS]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        event = acc.Tensors(tag)[-1]
        values[tag] = float(tensor_util.make_ndarray(event.tensor_proto))
        steps.append(event.step)
    return {"step": max(steps), **values} if steps else {}


def analysis_columns(path: str) -> dict[str, Any]:
    """analysis/summary.csv (tasks × feature sets) flattened to `<feature set>: <task>` columns."""
    from gandl._tf import tf

    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        table = pd.read_csv(f, index_col=0)
    return {f"{column}: {task}": value for column in table.columns for task, value in table[column].items()}


def reference_gaps(columns: Mapping[str, Any]) -> dict[str, float]:
    """Each learned feature set minus its random-init reference (the same extractor on an untrained D), task by
    task, as `<set> − <reference>: <task>` columns: the paired difference within one run, so that spread.md
    gives its mean, sd and worst seed (whether training beat chance on every draw, not just on average). A
    reference exported at several initialisations (`embed.reference_inits`) is their mean."""
    from gandl.features import registry

    labels = {key.split(": ", 1)[0] for key in columns}
    gaps = {}
    for extractor in registry.EXTRACTORS.values():
        if not extractor.reference:
            continue
        reference = registry.get(extractor.reference).label
        draws = registry.reference_labels(reference, labels)
        for key, value in columns.items():
            set_label, task = key.split(": ", 1)
            if set_label != extractor.label:
                continue
            # summary.csv columns that also hold text (a top compound) are read as text: numbers as strings.
            level = pd.to_numeric(pd.Series([columns.get(f"{d}: {task}") for d in draws], dtype=object),
                                  errors="coerce")
            gap = pd.to_numeric(value, errors="coerce") - (level.mean() if level.notna().all() else float("nan"))
            if pd.notna(gap):
                gaps[f"{extractor.label} − {reference}: {task}"] = float(gap)
    return gaps


def summarize(sweep: Sweep, workdir: str, mode: str) -> pd.DataFrame:
    """One row per run: name, status of `mode`, swept values, final TensorBoard scalars, analysis summary."""
    from gandl import workdir as layout

    rows = []
    for run in sweep.runs:
        run_dir = os.path.join(workdir, run.name)
        analysis = analysis_columns(os.path.join(layout.analysis(run_dir), "summary.csv"))
        rows.append({"run": run.name, "status": "done" if is_done(sweep, run, run_dir, mode) else "not done",
                     **run.swept, **last_scalars(layout.tensorboard(run_dir)), **analysis, **reference_gaps(analysis)})
    return pd.DataFrame(rows)


def spread(table: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Each analysis number over the done runs, as task x feature set cells "mean ± sd (min–max)".

    For sweeps over seeds (screen, zero-shot set, training): how far a number moves when only chance does.
    Columns are `summarize`'s `<feature set>: <task>`; text cells (a top compound) are left out. With `by`
    (swept fields), each setting of them gets its own rows, named in a leading `setting` column.
    """
    done = table[table["status"] == "done"]
    if by and not done.empty:
        groups = [_spread_cells(group).assign(setting=",".join(f"{f}={cli_value(v)}" for f, v in zip(by, key)))
                  for key, group in done.groupby(list(by), sort=False)]
        frame = pd.concat(groups)
        frame = frame[["setting", *[c for c in frame.columns if c != "setting"]]]
        frame.index.name = "task (mean ± sd (min–max) over the runs of each setting)"
        return frame
    frame = _spread_cells(done)
    frame.index.name = f"task (mean ± sd (min–max) over {len(done)} runs)"
    return frame


def _spread_cells(done: pd.DataFrame) -> pd.DataFrame:
    cells: dict[str, dict[str, str]] = {}
    for column in done.columns:
        values = pd.to_numeric(done[column], errors="coerce").dropna()
        if ": " not in column or values.empty:
            continue
        feature_set, task = column.split(": ", 1)
        sd = values.std(ddof=1) if len(values) > 1 else float("nan")
        cells.setdefault(task, {})[feature_set] = (f"{values.mean():.3f} ± {sd:.3f} "
                                                   f"({values.min():.3f}–{values.max():.3f})")
    return pd.DataFrame.from_dict(cells, orient="index")


def write_summary(table: pd.DataFrame, workdir: str, by: Sequence[str] = ()) -> list[str]:
    """summary.csv for tools and summary.md for reading, atomically (local or gs://); with two or more done
    runs that have analysis numbers, spread.csv / spread.md (`spread`) too."""
    from gandl import fileio
    from gandl.analysis.markup import markdown_table

    paths = [os.path.join(workdir, "summary.csv"), os.path.join(workdir, "summary.md")]
    fileio.write_text(paths[0], table.to_csv(index=False))
    fileio.write_text(paths[1], markdown_table(table, index=False))
    over = spread(table, by)
    if (table["status"] == "done").sum() >= 2 and not over.empty:
        paths += [os.path.join(workdir, "spread.csv"), os.path.join(workdir, "spread.md")]
        fileio.write_text(paths[2], over.to_csv())
        fileio.write_text(paths[3], markdown_table(over, index=True))
    return paths


def write_probe_spread(sweep: Sweep, workdir: str, mode: str, by: Sequence[str] = ()) -> list[str]:
    """probe_gaps.csv: every probed feature set's gap to its random-init reference along training, over the
    done runs of each setting (`probe_table.gap_spread`), and one figure of it per label budget:
    probe_gaps.png (all labels), probe_gaps_k<k>.png (k labelled wells per class). Nothing without a probe."""
    from gandl import fileio
    from gandl import workdir as layout
    from gandl.analysis import plots, probe_table

    tables = []
    for run in sweep.runs:
        run_dir = os.path.join(workdir, run.name)
        table = probe_table.read_table(layout.probe_table(run_dir)) if is_done(sweep, run, run_dir, mode) else None
        if table is not None:
            tables.append(table.assign(run=run.name, **{f: cli_value(run.swept[f]) for f in by}))
    spread = probe_table.gap_spread(pd.concat(tables, ignore_index=True), by) if tables else pd.DataFrame()
    if spread.empty:
        return []
    paths = [os.path.join(workdir, "probe_gaps.csv")]
    fileio.write_text(paths[0], spread.to_csv(index=False))
    budget = spread["task"].str.extract(r" @ k=(\d+)$", expand=False).fillna("")
    for k, part in spread.groupby(budget, sort=False):
        paths.append(os.path.join(workdir, f"probe_gaps{'_k' + k if k else ''}.png"))
        fileio.write_bytes(paths[-1], plots.probe_gap_figure(part, by))
    return paths


def run_sweep(sweep_path: str, workdir: str, mode: str | None = None, launcher: str = "local",
              launch_flags: Sequence[str] = (), tpu_name: str = "", dry_run: bool = False,
              where: Sequence[str] = ()) -> list[str]:
    """Run every unfinished run (of those `where` selects: `select`) one after another, then write the summary
    of every run; returns the failed runs' names.

    With dry_run, print the commands (and which runs would be skipped) and run nothing.
    """
    sweep = load_sweep(sweep_path)
    runs = select(sweep, where)
    mode = mode or sweep.mode
    if launcher == "tpu" and not workdir.startswith("gs://"):
        raise ValueError("--launcher tpu needs a gs:// --workdir: the TPU workers write there")
    if launcher == "local" and "://" not in workdir:
        workdir = os.path.abspath(workdir)
    tpu_name = tpu_name or "gandl-" + re.sub(r"[^a-z0-9-]", "-", os.path.splitext(os.path.basename(sweep_path))[0])
    check_runs(sweep, _launch_devices(launcher, launch_flags))  # every run, before any is launched
    failed = []
    for i, run in enumerate(runs):
        run_dir = os.path.join(workdir, run.name)
        cmd = command(sweep, run, run_dir, mode, launcher, launch_flags, tpu_name)
        if is_done(sweep, run, run_dir, mode):
            print(f"# [{i + 1}/{len(runs)}] {run.name}: {mode} done, skipped", flush=True)
            continue
        print(f"# [{i + 1}/{len(runs)}] {run.name}\n{shlex.join(cmd)}", flush=True)
        if dry_run:
            continue
        # env: Python's view of the environment, not the C library's, where libtpu (loaded by JAX on any machine
        # with the tpu extra) writes CLOUD_TPU_TASK_ID and others that would make every run take itself for a
        # pod worker.
        if subprocess.run(cmd, cwd=REPO_ROOT, env=dict(os.environ)).returncode == 0:
            _mark_done(sweep, run, run_dir, mode, cmd)
        else:
            failed.append(run.name)
    if not dry_run:
        by = [f for f in (sweep.runs[0].swept if sweep.spread_over else ()) if f not in sweep.spread_over]
        for path in [*write_summary(summarize(sweep, workdir, mode), workdir, by),
                     *write_probe_spread(sweep, workdir, mode, by)]:
            print(f"# wrote {path}", flush=True)
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gandl.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", required=True, help="a sweep file (configs/sweeps/*.py)")
    parser.add_argument("--workdir", required=True, help="the sweep's folder: one workdir per run, the summary")
    parser.add_argument("--mode", help="gandl.main mode of every run (default: the sweep's, else train)")
    parser.add_argument("--launcher", choices=("local", "tpu"), default="local",
                        help="local: gandl.main here, one run after another; tpu: launch/tpu.sh per run")
    parser.add_argument("--launch_flags", default="", help="extra launch/tpu.sh flags, e.g. '--spot --type=v3-32'")
    parser.add_argument("--tpu_name", default="", help="the TPU VM every run uses (default: gandl-<sweep file>)")
    parser.add_argument("--dry_run", "--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="run only the runs with this swept value (repeatable; one field's values: any of them); "
                             "the summary still covers every finished run")
    args = parser.parse_args(argv)
    try:
        failed = run_sweep(args.sweep, args.workdir, args.mode, args.launcher, shlex.split(args.launch_flags),
                           args.tpu_name, args.dry_run, args.where)
    except ValueError as e:  # a bad sweep file, override, --where or done marker: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
