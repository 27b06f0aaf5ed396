"""Kill -9 at random moments of every stage, then rerun: is what the rerun leaves byte-identical to one clean run?

  python benchmarks/faults.py                          # 3 seeds x convert, train, embed, analyze (tiny config)
  python benchmarks/faults.py --seeds 1 --stages convert embed --out /tmp/faults

The tiny config (tests/tiny_config.py: 16 px, 5 channels, 20 train steps, a synthetic screen of 2 plates per cell
line) runs `gandl --mode M` once per stage, uninterrupted, in one workdir path (outputs that name their folder
then agree); the workdir before each stage is kept. Per seed and stage, the workdir before the stage is put back,
the stage is started as its own process group, killed with SIGKILL at a moment drawn uniformly over the clean
run's duration of that stage (start-up included: some kills land before anything is written; a stage that ended
first is started again from the snapshot and killed at half the moment, up to MAX_TRIES times: a loaded machine
makes the clean run slower than a trial), and rerun to the end. What the stage owes is then hashed (SHA-256)
against the clean run's:
  convert  the shard files, manifest.json, skipped_sites.csv (sidecars hold input stamps: written at other times)
  train    every array of the last checkpoint as restored (orbax's own files hold save times), and its step
  embed    every array of every npz under embeddings/ and every parquet file
  analyze  every table (csv) under analysis/
Printed: one row per stage: trials, kills that landed before the stage ended, reruns that failed, and trials whose
outputs are byte-identical to the clean run's, with the files that differed when some did.

  python benchmarks/faults.py --full-disk             # as root: each stage on a disk that fills up mid-way

With --full-disk, each stage instead runs from its snapshot on a tmpfs mounted at the workdir whose size leaves
room for a quarter, a half and three quarters of what the clean run's stage wrote (Linux, as root: `mount`): the
run must end with status 1 and one `gandl:` line on stderr, no traceback and no temporary file; the disk is then
given room (a remount) and the rerun must finish byte-identical to the clean run.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("convert", "train", "embed", "analyze")
MAX_TRIES = 4  # starts per trial until its kill lands before the stage ends
# The tiny run of tests/conftest.py's `tiny_run`, with more shards (more moments to land a kill between them).
OVERRIDES = ("--config.synthetic.seed=0", "--config.synthetic.image_size=16",
             "--config.synthetic.plates_per_cell_line=2", "--config.synthetic.sites_per_well=1",
             "--config.synthetic.num_compounds=3",
             "--config.zeroshot.synthetic.plates_per_cell_line=2", "--config.zeroshot.synthetic.sites_per_well=1",
             "--config.data.image_size=16", "--config.data.sites_per_shard=16", "--config.data.num_workers=2",
             "--config.train.steps=20", "--config.analysis.n_splits=2", "--config.analysis.few_labels=(2,)",
             "--config.analysis.few_label_draws=2")


def _command(workdir: str, stage: str) -> list[str]:
    return [sys.executable, "-m", "gandl.main", "--config", os.path.join(REPO, "tests", "tiny_config.py"),
            "--workdir", workdir, "--mode", stage, *OVERRIDES]


def _env() -> dict[str, str]:
    """The stages' environment: on the CPU, with the tests' unoptimised XLA back end (tests/conftest.py: it halves
    the tiny programs' compile time, which dominates every stage here; HLO and numerics are unchanged)."""
    paths = [REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), JAX_PLATFORMS="cpu",
                XLA_FLAGS=os.environ.get("XLA_FLAGS", "--xla_backend_optimization_level=0"))


def run_stage(workdir: str, stage: str, log: str) -> int:
    """Run `stage` in `workdir` to its end; its exit status."""
    with open(log, "ab") as out:
        return subprocess.run(_command(workdir, stage), cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                              timeout=1800).returncode


def kill_stage(workdir: str, stage: str, after_s: float, log: str) -> bool:
    """Start `stage` and kill -9 its process group after `after_s` seconds; whether it was still running then."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(_command(workdir, stage), cwd=REPO, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=after_s)
            return False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return True


def _file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _array_hash(array: np.ndarray) -> str:
    return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + np.ascontiguousarray(array).tobytes()
                          ).hexdigest()


def _npz_hashes(path: str) -> dict[str, str]:
    with np.load(path, allow_pickle=False) as npz:
        return {f"{path}:{key}": _array_hash(npz[key]) for key in npz.files}


def _checkpoint_hashes(workdir: str) -> dict[str, str]:
    """Hashes of the last checkpoint's restored arrays, computed in a fresh process (JAX and orbax load there)."""
    script = ("import sys, hashlib, jax, numpy as np\n"
              "from gandl import sharding\nfrom gandl.train import checkpoint\n"
              "_, state, step = checkpoint.restore_run(sys.argv[1], sharding.make_mesh())\n"
              "print('step', step)\n"
              "for path, leaf in jax.tree_util.tree_leaves_with_path(state):\n"
              "    a = np.asarray(leaf)\n"
              "    print(jax.tree_util.keystr(path), hashlib.sha256(a.dtype.str.encode() + a.tobytes()).hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", script, workdir], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=600)
    if out.returncode:
        return {"checkpoint": f"unreadable (status {out.returncode})"}
    return dict(line.rsplit(" ", 1) for line in out.stdout.splitlines() if line.strip())


def outputs(workdir: str, stage: str) -> dict[str, str]:
    """What `stage` owes in `workdir`, as {name: SHA-256}."""
    def under(*patterns: str) -> list[str]:
        return sorted(p for pattern in patterns for p in glob.glob(os.path.join(workdir, pattern), recursive=True))

    if stage == "convert":
        return {p: _file_hash(p) for p in under("shards/*.tfrecord", "shards/manifest.json", "shards/skipped_sites.csv",
                                                "shards_rxrx1/*.tfrecord", "shards_rxrx1/manifest.json")}
    if stage == "train":
        return _checkpoint_hashes(workdir)
    if stage == "embed":
        hashes = {p: _file_hash(p) for p in under("embeddings/**/*.parquet")}
        for path in under("embeddings/**/*.npz"):
            if f"{os.sep}parts{os.sep}" not in path:
                hashes.update(_npz_hashes(path))
        return hashes
    return {p: _file_hash(p) for p in under("analysis/**/*.csv")}


def _restore(snapshot: str, workdir: str) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(snapshot, workdir, symlinks=True)  # copy2: modification times kept, as a moved workdir has them


def clean_run(root: str, workdir: str, stages: list[str], log: str) -> tuple[dict, dict, dict]:
    """Every stage once, uninterrupted: (snapshot folder before each stage, its outputs' hashes, its seconds)."""
    snapshots, reference, seconds = {}, {}, {}
    os.makedirs(workdir)
    for stage in STAGES[:max(STAGES.index(s) for s in stages) + 1]:
        snapshots[stage] = os.path.join(root, f"before_{stage}")
        shutil.copytree(workdir, snapshots[stage], symlinks=True)
        start = time.monotonic()
        if run_stage(workdir, stage, log):
            raise SystemExit(f"the clean run failed in --mode {stage}; see {log}")
        seconds[stage] = time.monotonic() - start
        reference[stage] = outputs(workdir, stage)
    return snapshots, reference, seconds


def trial(stage: str, seed: int, snapshot: str, workdir: str, reference: dict, seconds: float, log: str) -> dict:
    """One kill at a random moment of `stage`, then its rerun, compared with the clean run."""
    after = float(np.random.default_rng([seed, STAGES.index(stage)]).uniform(0.5, seconds)) * 2
    for _ in range(MAX_TRIES):
        after /= 2
        _restore(snapshot, workdir)
        if killed := kill_stage(workdir, stage, after, log):
            break
    status = run_stage(workdir, stage, log)
    got = outputs(workdir, stage) if status == 0 else {}
    differing = sorted(k for k in reference.keys() | got.keys() if reference.get(k) != got.get(k))
    return dict(stage=stage, seed=seed, after_s=after, killed=killed, status=status, identical=not differing,
                differing=differing)


FULL_DISK_SHARES = (0.25, 0.5, 0.75)  # of the stage's own writes, the room the full disk leaves


def _bytes(folder: str) -> int:
    """What `folder`'s files take on disk (whole blocks, as `du` counts them)."""
    return sum(os.stat(os.path.join(root, name)).st_blocks * 512 for root, _, names in os.walk(folder)
               for name in names)


def _used(folder: str) -> int:
    disk = os.statvfs(folder)
    return (disk.f_blocks - disk.f_bfree) * disk.f_frsize


def _mount(workdir: str, size: int, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", workdir], check=True, capture_output=True)


def full_disk_trial(stage: str, share: float, snapshot: str, workdir: str, reference: dict, grows: int,
                    log: str) -> dict:
    """`stage` from its snapshot on a disk with room for `share` of its writes, then again with room to spare."""
    if os.path.ismount(workdir):
        subprocess.run(["umount", workdir], check=True)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    _mount(workdir, 4 * (_bytes(snapshot) + grows) + 2**26)
    try:
        shutil.copytree(snapshot, workdir, symlinks=True, dirs_exist_ok=True)
        _mount(workdir, _used(workdir) + int(share * grows), remount=True)  # room for `share` of the stage's writes
        out = subprocess.run(_command(workdir, stage), cwd=REPO, env=_env(), capture_output=True, text=True,
                             timeout=1800)
        with open(log, "a") as f:
            f.write(out.stderr)
        said = [line for line in out.stderr.splitlines() if line.startswith("gandl:")]
        tracebacks = out.stderr.count("Traceback (most recent call last)")
        temps = glob.glob(os.path.join(workdir, "**", "*.tmp-*"), recursive=True)
        _mount(workdir, 4 * (_bytes(snapshot) + grows) + 2**26, remount=True)
        status = run_stage(workdir, stage, log)
        got = outputs(workdir, stage) if status == 0 else {}
    finally:
        subprocess.run(["umount", workdir], check=False)
    differing = sorted(k for k in reference.keys() | got.keys() if reference.get(k) != got.get(k))
    return dict(stage=stage, share=share, full_status=out.returncode, said=said, tracebacks=tracebacks,
                temps=len(temps), status=status, identical=not differing, differing=differing)


def full_disk_table(results: list[dict]) -> str:
    lines = ["| stage | room left (share of its writes) | status on the full disk | `gandl:` lines | tracebacks | "
             "temporary files | rerun with room | byte-identical |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['share']:.2f} | {r['full_status']} | {len(r['said'])} | {r['tracebacks']} | "
              f"{r['temps']} | {r['status']} | {'yes' if r['identical'] else 'no: ' + ', '.join(r['differing'][:3])} |"
              for r in results]
    return "\n".join(lines)


def table(results: list[dict], seconds: dict) -> str:
    lines = ["| stage | clean run (s) | trials | killed mid-stage | reruns failed | byte-identical | differing |",
             "|---|---|---|---|---|---|---|"]
    for stage in STAGES:
        rows = [r for r in results if r["stage"] == stage]
        if not rows:
            continue
        differing = sorted({os.path.basename(d) for r in rows for d in r["differing"]})
        lines.append(f"| {stage} | {seconds[stage]:.0f} | {len(rows)} | {sum(r['killed'] for r in rows)} | "
                     f"{sum(r['status'] != 0 for r in rows)} | {sum(r['identical'] for r in rows)}/{len(rows)} | "
                     f"{', '.join(differing[:4]) + (' ...' if len(differing) > 4 else '') or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="kill moments drawn per stage")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--out", default="", help="folder for workdirs, snapshots and the log ('' = a temporary one)")
    parser.add_argument("--full-disk", action="store_true", help="stages on a disk that fills up (root: mount)")
    args = parser.parse_args()
    if args.full_disk and os.geteuid() != 0:
        sys.exit("--full-disk mounts a tmpfs at the workdir: run it as root")
    root = args.out or tempfile.mkdtemp(prefix="gandl_faults_")
    workdir, log = os.path.join(root, "work"), os.path.join(root, "runs.log")
    snapshots, reference, seconds = clean_run(root, workdir, args.stages, log)
    if args.full_disk:
        after = {**{s: snapshots[n] for s, n in zip(STAGES, STAGES[1:]) if n in snapshots}, args.stages[-1]: workdir}
        grows = {s: _bytes(after[s]) - _bytes(snapshots[s]) for s in args.stages}
        results = [full_disk_trial(s, share, snapshots[s], workdir, reference[s], grows[s], log)
                   for s in args.stages for share in FULL_DISK_SHARES]
        for r in results:
            print(f"{r['stage']} room {r['share']:.2f}: {r['said'][:1] or 'no gandl: line'}", flush=True)
        print(full_disk_table(results))
        print(f"(tiny config; workdirs and {log} in {root})")
        return
    results = []
    for stage in args.stages:
        for seed in range(args.seeds):
            result = trial(stage, seed, snapshots[stage], workdir, reference[stage], seconds[stage], log)
            print(f"{stage} seed {seed}: kill at {result['after_s']:.1f} s "
                  f"({'mid-stage' if result['killed'] else 'after it ended'}), rerun status {result['status']}, "
                  f"{'byte-identical' if result['identical'] else 'differs: ' + ', '.join(result['differing'][:3])}",
                  flush=True)
            results.append(result)
    print(table(results, seconds))
    print(f"(tiny config, {args.seeds} seed(s); workdirs and {log} in {root})")


if __name__ == "__main__":
    main()
