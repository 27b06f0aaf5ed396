"""The run folder's layout: every stage finds its inputs and outputs through these functions.

  raw/               the synthetic screen, when no data.root is given (truth.csv beside metadata.csv)
  raw_rxrx1/         the synthetic zero-shot set, when no zeroshot.root / zeroshot.shards is given
  shards/            converted TFRecords of the screen (or data.shards)
  shards_rxrx1/      converted TFRecords of the zero-shot set (or zeroshot.shards)
  preview.png        one augmented training batch
  checkpoints/<step> orbax checkpoints        tensorboard/  scalars and samples     samples/  EMA grids
  probe.csv, probe_curve.png   the linear probe of D's features over training (train.probe_every)
  embeddings/step_<step>/{<feature set>.npz, .parquet, zeroshot/}
  analysis/          report.md, report.html, summary.csv, analysis.json, tables and figures
"""

from __future__ import annotations

import os

import ml_collections

from gandl._tf import tf


def raw(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.data.root or os.path.join(workdir, "raw")


def shards(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.data.shards or os.path.join(workdir, "shards")


def zeroshot_raw(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.zeroshot.root or os.path.join(workdir, "raw_rxrx1")


def zeroshot_shards(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.zeroshot.shards or os.path.join(workdir, "shards_rxrx1")


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


def comparator_fold(embeddings_dir: str, fold: int) -> str:
    """Where fold `fold`'s label-fitted comparator writes its control sites' features (its own export folder)."""
    return os.path.join(embeddings_dir, "imagenet_folds", f"fold{fold}")


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
