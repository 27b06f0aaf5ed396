"""The run folder's layout: every stage finds its inputs and outputs through these functions.

  raw/               the synthetic screen, when no data.root is given (truth.csv beside metadata.csv)
  raw_rxrx1/         the synthetic zero-shot set, when no zeroshot.root / zeroshot.shards is given
  shards/            converted TFRecords of the screen (or data.shards)
  shards_rxrx1/      converted TFRecords of the zero-shot set (or zeroshot.shards)
  preview.png        one augmented training batch
  checkpoints/<step> orbax checkpoints        tensorboard/  scalars and samples     samples/  EMA grids
  probe.csv, probe_curve.png   the linear probe of D's features over training (train.probe_every)
  embeddings/step_<step>/{<feature set>.npz, .parquet, zeroshot/, folds.json, <label-fitted set>_folds/fold<k>/}
  analysis/          report.md, report.html, summary.csv, analysis.json, tables and figures
  gandl.lock         while a run works in the folder: its pid, host and mode (`locked`)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

from absl import logging

from gandl import fileio
from gandl._tf import tf

LOCK = "gandl.lock"
# The lock's holder rewrites its heartbeat every REFRESH_S; a lock from another host is stale after STALE_S
# without one (a run on a VM that was preempted or recreated under another name).
REFRESH_S, STALE_S = 60.0, 600.0


class WorkdirInUse(fileio.FileFault):
    """Another run holds the workdir: two runs in one folder would do the work twice and race on its files."""


def raw(root: str, workdir: str) -> str:
    """The raw screen: `data.root`, or the synthetic one's folder."""
    return root or os.path.join(workdir, "raw")


def shards(given: str, workdir: str) -> str:
    """The screen's records: `data.shards`, or the converted ones' folder."""
    return given or os.path.join(workdir, "shards")


def zeroshot_raw(root: str, workdir: str) -> str:
    """The zero-shot set: `zeroshot.root`, or the synthetic one's folder."""
    return root or os.path.join(workdir, "raw_rxrx1")


def zeroshot_shards(given: str, workdir: str) -> str:
    """The zero-shot set's records: `zeroshot.shards`, or the converted ones' folder."""
    return given or os.path.join(workdir, "shards_rxrx1")


def preview(workdir: str) -> str:
    return os.path.join(workdir, "preview.png")


def checkpoints(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def tensorboard(workdir: str) -> str:
    return os.path.join(workdir, "tensorboard")


def probe_table(workdir: str) -> str:
    return os.path.join(workdir, "probe.csv")


def probe_curve(workdir: str) -> str:
    return os.path.join(workdir, "probe_curve.png")


def samples(workdir: str) -> str:
    return os.path.join(workdir, "samples")


def embeddings(workdir: str, step: int) -> str:
    return os.path.join(workdir, "embeddings", f"step_{step}")


def zeroshot_embeddings(embeddings_dir: str) -> str:
    return os.path.join(embeddings_dir, "zeroshot")


def label_fold(embeddings_dir: str, feature_set: str, fold: int) -> str:
    """Where fold `fold`'s model of a label-fitted feature set writes its control sites' features (its own export
    folder); the fold assignment is `embeddings_dir`'s folds.json (gandl.data.folds)."""
    return os.path.join(embeddings_dir, f"{feature_set}_folds", f"fold{fold}")


def _numbered(folder: str, prefix: str = "") -> list[int]:
    """The sorted N of `folder`'s entries named `<prefix>N`."""
    if not tf.io.gfile.isdir(folder):
        return []
    names = (n.strip("/").removeprefix(prefix) for n in tf.io.gfile.listdir(folder) if n.startswith(prefix))
    return sorted(int(n) for n in names if n.isdigit())


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps with a checkpoint folder, ascending."""
    return _numbered(checkpoints(workdir))


def embedding_step(embeddings_dir: str) -> int:
    """The training step an embeddings folder (`embeddings(workdir, step)`) holds."""
    return int(os.path.basename(embeddings_dir.rstrip("/")).removeprefix("step_"))


def latest_embeddings(workdir: str) -> str:
    """The embeddings folder of the highest exported step."""
    steps = _numbered(os.path.join(workdir, "embeddings"), "step_")
    if not steps:
        raise FileNotFoundError(f"no embeddings in {os.path.join(workdir, 'embeddings')}: run mode=embed first")
    return embeddings(workdir, steps[-1])


def analysis(workdir: str) -> str:
    return os.path.join(workdir, "analysis")


def lock_file(workdir: str) -> str:
    return os.path.join(workdir, LOCK)


@contextlib.contextmanager
def locked(workdir: str, mode: str, hold: bool = True) -> Iterator[None]:
    """Hold `workdir` for one run (`mode` names it to a second run, which is refused) while the block runs.

    The lock file records the owner's pid, host, boot and process start time and a heartbeat the owner renews
    every REFRESH_S; a lock whose owner ended on this host (a killed run, a reused pid), or one from another
    host without a heartbeat for STALE_S, is taken over, logged. Exclusive on local disks (a hard link to a
    written file); on gs:// a check before the write, so two runs started in the same second may both pass.
    `hold` False (every process of a multi-process run but the first) takes nothing.
    """
    if not hold:
        yield
        return
    path, me = lock_file(workdir), _owner(mode)
    tf.io.gfile.makedirs(workdir)
    for attempt in range(3):
        if _create(path, me):
            break
        owner = _read(path)
        if owner is None:  # released meanwhile
            time.sleep(0.1 * (attempt + 1))
            continue
        if not _ended(owner):
            raise WorkdirInUse(f"{workdir} is in use by another GAN-DL run ({_describe(owner)}); wait for it to end, "
                               f"or if it is gone, delete {path}")
        logging.warning("taking over %s from a run that ended (%s)", path,
                        _describe(owner) if _pid(owner) is not None else "the file names no process")
        tf.io.gfile.remove(path)
    else:
        raise WorkdirInUse(f"{workdir}: could not take {path}; another run is starting there")
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(path, me, stop), name="workdir-lock-heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        if _mine(_read(path), me):
            tf.io.gfile.remove(path)


def _beat(path: str, me: dict, stop: threading.Event) -> None:
    """Renew the lock's heartbeat until `stop`, while the lock is still this run's."""
    while not stop.wait(REFRESH_S):
        if _mine(_read(path), me):
            fileio.write_text(path, json.dumps(dict(me, heartbeat=time.time()), indent=1) + "\n")


def _mine(owner: dict | None, me: dict) -> bool:
    return owner is not None and all(owner.get(k) == me[k] for k in ("pid", "host", "boot", "started"))


def _owner(mode: str) -> dict:
    pid = os.getpid()
    return {"mode": mode, "pid": pid, "host": socket.gethostname(), "boot": _boot_id(), "started": _start_ticks(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "heartbeat": time.time()}


def _describe(owner: dict) -> str:
    return f"--mode {owner.get('mode')}, pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}"


def _create(path: str, owner: dict) -> bool:
    """Write the lock file unless one exists; True when this call wrote it."""
    text = json.dumps(owner, indent=1) + "\n"
    if "://" in path:
        if tf.io.gfile.exists(path):
            return False
        fileio.write_text(path, text)
        return True
    tmp = fileio.temp_path(path)
    with fileio.named_faults(path), open(tmp, "w") as f:  # a read-only workdir: one line naming the lock file
        f.write(text)
    try:
        os.link(tmp, path)  # atomic: fails when the lock exists
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


def _read(path: str) -> dict | None:
    """The lock's owner; None when there is no lock, {} when the file names none (empty, cut short, not JSON)."""
    try:
        owner = fileio.read_json(path)
    except tf.errors.NotFoundError:
        return None
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _pid(owner: dict) -> int | None:
    try:
        return int(owner["pid"])
    except (KeyError, ValueError, TypeError):
        return None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), to tell a reused pid from the lock's owner."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _ended(owner: dict) -> bool:
    """Whether the lock's owner has ended: its process is gone (on this host), its heartbeat stopped (elsewhere), or
    the lock names no process (a file this code cannot have left whole: locks are written complete, then linked)."""
    pid = _pid(owner)
    if pid is None:
        return True
    if owner.get("host") != socket.gethostname():
        try:
            return time.time() - float(owner["heartbeat"]) > STALE_S
        except (KeyError, ValueError, TypeError):
            return False
    if owner.get("boot") and owner["boot"] != _boot_id():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive under another user
    return bool(owner.get("started")) and owner["started"] != _start_ticks(pid)
