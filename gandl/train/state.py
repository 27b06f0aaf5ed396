"""The train state: G, D and G-EMA variables, both optimizers, the path-length mean and the PRNG key, and the
optional training options' own state (the augmentation probability, the contrastive head).

Everything a resumed run needs to continue exactly like an uninterrupted one lives here, as arrays, so
orbax saves and restores it in one piece. It is saved as a tree of its fields without the options that are off
(`saved_tree`), so a run without them saves and restores the layout of checkpoints from before they existed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from gandl import sharding
from gandl.defaults import Train
from gandl.models import init_variables
from gandl.models.config import ModelConfig
from gandl.models.layers import block_channels
from gandl.train import augment, contrastive, losses


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: iterations done
    g_params: Any
    g_buffers: Any  # w_avg and the constant noise maps
    ema_params: Any  # exponential moving average of g_params: the generator that is sampled and exported
    ema_buffers: Any
    d_params: Any
    g_opt_state: Any
    d_opt_state: Any
    pl_mean: jax.Array  # running mean of path lengths
    rng: jax.Array  # raw key data (uint32), so checkpoints need no special key handling
    augment: augment.AdaState | None = None  # train.augment != "none": p and the r_t statistic
    head: Any = None  # train.contrastive_weight > 0: the contrastive projection head's parameters (not D's)
    head_opt_state: Any = None


def optimizers(train: Train) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """Adam for G and D with StyleGAN2's lazy-regularisation rescaling of lr and betas."""

    def adam(lr: float, interval: int) -> optax.GradientTransformation:
        lr, b1, b2 = losses.lazy_regularization_adam(lr, train.adam_b1, train.adam_b2, interval)
        return optax.adam(lr, b1=b1, b2=b2, eps=train.adam_eps)

    g_interval = train.pl_interval if train.pl_weight > 0 else 0
    d_interval = train.r1_interval if (train.r1_gamma > 0 or train.lipschitz_weight > 0) else 0
    return adam(train.g_lr, g_interval), adam(train.d_lr, d_interval)


def options(train: Train) -> dict[str, Any]:
    """What a state for `train` holds and what its parameters learnt from: the augmentation's p, the contrastive
    head (ContraD's term, or the contrastive objective alone), the objective."""
    return {"augment": train.augment != "none",
            "head": train.contrastive_weight > 0 or train.objective == "contrastive",
            "objective": train.objective}


def saved_tree(state: TrainState) -> dict[str, Any]:
    """The fields orbax saves: all but the options' that are off (None), which a checkpoint from before the
    options existed does not have either."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if getattr(state, f.name) is not None}


def head_optimizer(train: Train) -> optax.GradientTransformation:
    """Adam for the contrastive head, with D's settings; the head has no lazy regulariser to rescale for."""
    return optax.adam(train.d_lr, b1=train.adam_b1, b2=train.adam_b2, eps=train.adam_eps)


def create(model: ModelConfig, train: Train, seed: int, mesh: Mesh) -> TrainState:
    """A fresh state, replicated over the mesh; identical on every process for the same seed."""
    init_key, rng = jax.random.split(jax.random.key(seed))
    g_vars, d_vars = init_variables(model, init_key)
    g_tx, d_tx = optimizers(train)
    on = options(train)
    head = (contrastive.init_head(jax.random.fold_in(init_key, 1), block_channels(4, model.channel_base,
                                                                                   model.channel_max))
            if on["head"] else None)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), g_params=g_vars["params"], g_buffers=g_vars["buffers"],
        ema_params=jax.tree.map(jnp.copy, g_vars["params"]),  # own buffers: the step donates the state
        ema_buffers=jax.tree.map(jnp.copy, g_vars["buffers"]), d_params=d_vars["params"],
        g_opt_state=g_tx.init(g_vars["params"]), d_opt_state=d_tx.init(d_vars["params"]),
        pl_mean=jnp.zeros((), jnp.float32), rng=jax.random.key_data(rng),
        augment=augment.init(train.augment_p) if on["augment"] else None,
        head=head, head_opt_state=None if head is None else head_optimizer(train).init(head))
    return jax.device_put(state, sharding.replicated(mesh))
