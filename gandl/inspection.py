"""Look at a run from a notebook: its checkpoint, EMA samples, losses, latent interpolations, embeddings.

`load_run(workdir)` rebuilds the full train state (G, D, G-EMA, optimizers) from the config saved in the
checkpoint, so it needs nothing but the workdir; the rest turns that state and the TensorBoard logs into
arrays and tables; `load_embeddings` gathers the exported feature sets with the run's analysis settings.
colab/inspect_training.ipynb and colab/analyze_embeddings.ipynb are thin layers over these functions.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from gandl import defaults, sharding
from gandl import workdir as layout
from gandl._tf import tf
from gandl.analysis import io as analysis_io
from gandl.analysis import report
from gandl.data import pipeline, render, screen
from gandl.data.screen import ScreenSchema
from gandl.embed import records
from gandl.models import build_models
from gandl.models.config import ModelConfig
from gandl.models.generator import Generator
from gandl.train import checkpoint, loop
from gandl.train import state as state_lib


@dataclasses.dataclass
class Run:
    config: defaults.Config  # the config saved with the checkpoint
    state: state_lib.TrainState
    step: int
    stains: tuple[str, ...]  # of the generator's output channels, for the RxRx colour map

    @property
    def model(self) -> ModelConfig:
        """The run's model, its side resolved from the saved data section unless the config set it."""
        return ModelConfig.of_run(self.config)


def _stains(config: defaults.Config, workdir: str) -> tuple[str, ...]:
    """Stain names from the run's shards; generic channel names when the shards are not at hand."""
    shards = layout.shards(config.data.shards, workdir)
    if tf.io.gfile.exists(os.path.join(shards, "manifest.json")) or config.data.shards:
        return pipeline.output_stains(pipeline.open_records(shards, config.data.rxrx1_utils_image_size),
                                      config.data.channels)
    return tuple(f"channel {i + 1}" for i in range(config.model.num_channels))


def load_run(workdir: str, step: int | None = None) -> Run:
    """The train state of checkpoint `step` (default: the latest), rebuilt from the config saved with it."""
    config, state, step = checkpoint.restore_run(workdir, sharding.make_mesh(), step)
    return Run(config, state, step, _stains(config, workdir))


def sample_grid(run: Run, num: int = 16, cols: int = 8, seed: int = 0) -> np.ndarray:
    """EMA generator samples for fixed latents, as one uint8 RGB grid in the RxRx colour map."""
    images = loop.samples(run.model, run.state, num, seed)
    return render.grid(render.to_rgb(images, run.stains), cols)


@functools.lru_cache(maxsize=8)
def _compiled_interpolation(model: ModelConfig, num: int):
    generator, _ = build_models(model)

    @jax.jit
    def interpolate_fn(params, buffers, z: jax.Array) -> jax.Array:
        variables = {"params": params, "buffers": buffers}
        ws = generator.apply(variables, z, method=Generator.map)
        t = jnp.linspace(0.0, 1.0, num)[:, None, None]
        return generator.apply(variables, (1.0 - t) * ws[0] + t * ws[1], noise_mode="const",
                               method=Generator.synthesize)

    return interpolate_fn


def interpolate(run: Run, num: int = 8, seed: int = 0) -> np.ndarray:
    """`num` EMA images [num, H, W, C] along the straight line in w between two latents drawn from `seed`."""
    if num < 2:
        raise ValueError(f"an interpolation needs at least its two ends, got num={num}")
    z = jax.random.normal(jax.random.key(seed), (2, run.config.model.z_dim))
    fn = _compiled_interpolation(run.model, num)
    return np.asarray(fn(run.state.ema_params, run.state.ema_buffers, z))


def interpolation_strip(run: Run, num: int = 8, seed: int = 0) -> np.ndarray:
    """`interpolate` rendered as one uint8 RGB row."""
    return render.grid(render.to_rgb(interpolate(run, num, seed), run.stains), cols=num)


def loss_history(workdir: str) -> pd.DataFrame:
    """Every scalar logged to `workdir/tensorboard`: one row per logged step, one column per tag.

    Event files are read in name (= creation) order, so after a resumed run the later value of a step wins.
    """
    rows: dict[int, dict[str, float]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(layout.tensorboard(workdir), "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    rows.setdefault(event.step, {})[value.tag] = float(tf.make_ndarray(value.tensor))
    if not rows:
        raise FileNotFoundError(f"no scalars logged in {layout.tensorboard(workdir)}: train first")
    return pd.DataFrame.from_dict(rows, orient="index").sort_index().rename_axis("step")


@dataclasses.dataclass
class Embeddings:
    folder: str  # workdir/embeddings/step_<step>
    sets: dict[str, tuple[np.ndarray, pd.DataFrame]]  # report name (GAN-DL, baselines) -> (features, metadata)
    zeroshot: dict[str, tuple[np.ndarray, pd.DataFrame]]  # the same for the zero-shot set (may be empty)
    config: report.AnalysisConfig  # the analysis settings of the run that exported them
    schema: ScreenSchema  # the run's screen schema (which columns and sites are what)


def load_embeddings(workdir: str) -> Embeddings:
    """The latest exported feature sets (GAN-DL and the baselines beside it) and the run's analysis config."""
    folder = layout.latest_embeddings(workdir)
    exported = [os.path.join(folder, f"{name}.npz") for name in records.exported_sets(folder)]
    if not exported:
        raise FileNotFoundError(f"no feature set in {folder}: run mode=embed first")
    with tf.io.gfile.GFile(exported[0], "rb") as f, np.load(io.BytesIO(f.read())) as npz:  # any set: the run's config
        provenance = json.loads(str(npz["provenance"]))
    run = defaults.saved_config(provenance["config"])
    config = report.AnalysisConfig(**defaults.values(run.analysis), well_aggregate=run.embed.well_aggregate)
    schema = screen.configured(run)
    return Embeddings(folder, analysis_io.load_feature_sets(folder),
                      analysis_io.load_feature_sets(layout.zeroshot_embeddings(folder)), config, schema)
