"""One StyleGAN2 training iteration as a single jitted, sharded function.

Phases, as in StyleGAN2: G main (non-saturating loss, style mixing, w_avg update), G reg (path length,
every `pl_interval` steps), D main (logistic loss), D reg (R1 and the one-sided Lipschitz penalty, every
`r1_interval` steps), then the G weight EMA. The lazy phases are `lax.cond`s inside one program, so
there is one compilation and no host round trip per step.

Data parallelism: the batch is sharded over the mesh's 'data' axis and parameters are replicated; XLA
inserts the gradient all-reduce. The discriminator sees the batch in consecutive chunks of its
minibatch-stddev group size, so each sample's group is the same on 1 device or 256.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec

from gandl.models.discriminator import Discriminator
from gandl.models.generator import Generator
from gandl.train import losses
from gandl.train.sharding import DATA_AXIS
from gandl.train.state import TrainState, optimizers

Array = jax.Array
_BATCH = PartitionSpec(DATA_AXIS)

# The train-config fields the step depends on (the rest schedule the loop and need no recompilation).
STEP_FIELDS = ("g_lr", "d_lr", "adam_b1", "adam_b2", "adam_eps", "r1_gamma", "r1_interval", "lipschitz_weight",
               "pl_weight", "pl_interval", "pl_decay", "pl_batch_shrink", "style_mixing_prob", "ema_kimg",
               "ema_rampup")


def step_config(train: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The hashable part of the train config that defines the step function."""
    return ml_collections.FrozenConfigDict({k: train[k] for k in STEP_FIELDS})


def _sharded_normal(key: Array, shape: tuple[int, ...]) -> Array:
    """Latents split over the data axis like the batch (the values do not depend on the device count)."""
    return jax.random.normal(key, shape, jnp.float32, out_sharding=_BATCH)


def grouped_logits(discriminator: Discriminator, d_params, images: Array) -> Array:
    """D logits [B] computed over consecutive chunks of the mbstd group size (device-count independent)."""
    b = images.shape[0]
    g = min(discriminator.config.mbstd_group_size, b)
    if b % g:
        raise ValueError(f"batch {b} is not a multiple of the minibatch-stddev group size {g}")
    chunks = jnp.reshape(images, (b // g, g, *images.shape[1:]), out_sharding=_BATCH)
    logits = jax.vmap(lambda x: discriminator.apply({"params": d_params}, x))(chunks)
    return jnp.reshape(logits, (b,), out_sharding=_BATCH)


def make_train_step(generator: Generator, discriminator: Discriminator, train: ml_collections.ConfigDict
                    ) -> Callable[[TrainState, Array], tuple[TrainState, dict[str, Array]]]:
    """The pure step function (state, reals [B, H, W, C] in [-1, 1]) -> (state, metrics).

    Jit it and call it under `jax.set_mesh(mesh)`: latents and D chunks are laid out on the mesh's
    'data' axis, which must divide the batch (and the batch must hold whole mbstd groups per device).
    """
    g_tx, d_tx = optimizers(train)

    def d_fn(d_params) -> Callable[[Array], Array]:
        return lambda x: grouped_logits(discriminator, d_params, x)

    def mapping(g_params, g_buffers, z: Array, key: Array, update_w_avg: bool) -> tuple[Array, dict]:
        """ws with style mixing, and the buffers (w_avg updated when asked)."""
        ws, updated = generator.apply({"params": g_params, "buffers": g_buffers}, z, key, train.style_mixing_prob,
                                      update_w_avg, method=Generator.map_mixed, mutable=["buffers"])
        return ws, updated["buffers"]

    def synthesize(g_params, g_buffers, ws: Array, key: Array) -> Array:
        return generator.apply({"params": g_params, "buffers": g_buffers}, ws, "random",
                               method=Generator.synthesize, rngs={"noise": key})

    def generate(g_params, g_buffers, z: Array, key: Array, update_w_avg: bool) -> tuple[Array, dict]:
        """Images from latents with style mixing and random noise, and the buffers."""
        k_map, k_noise = jax.random.split(key)
        ws, buffers = mapping(g_params, g_buffers, z, k_map, update_w_avg)
        return synthesize(g_params, buffers, ws, k_noise), buffers

    def step(state: TrainState, reals: Array) -> tuple[TrainState, dict[str, Array]]:
        batch = reals.shape[0]
        key, k_gz, k_g, k_pl, k_plz, k_dz, k_d, k_lip = jax.random.split(jax.random.wrap_key_data(state.rng), 8)
        z_dim = generator.config.z_dim

        # G main: fool the discriminator.
        def g_main_loss(g_params):
            fakes, buffers = generate(g_params, state.g_buffers, _sharded_normal(k_gz, (batch, z_dim)), k_g, True)
            return losses.g_nonsaturating_loss(d_fn(state.d_params)(fakes)), buffers

        (g_loss, g_buffers), g_grads = jax.value_and_grad(g_main_loss, has_aux=True)(state.g_params)
        g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)

        # G reg: path-length regularisation on a smaller batch, every pl_interval steps.
        def g_reg(operand):
            g_params, g_opt_state, pl_mean = operand
            z = _sharded_normal(k_plz, (batch // train.pl_batch_shrink, z_dim))

            k_map, k_noise, k_proj = jax.random.split(k_pl, 3)

            def loss(p):
                ws, _ = mapping(p, g_buffers, z, k_map, False)
                penalty, new_mean = losses.path_length_penalty(
                    lambda w: synthesize(p, g_buffers, w, k_noise), ws, k_proj, pl_mean, train.pl_decay)
                return penalty * train.pl_weight * train.pl_interval, (penalty, new_mean)

            (_, (penalty, new_mean)), grads = jax.value_and_grad(loss, has_aux=True)(g_params)
            updates, g_opt_state = g_tx.update(grads, g_opt_state, g_params)
            return (optax.apply_updates(g_params, updates), g_opt_state, new_mean), penalty

        def skip_g_reg(operand):
            return operand, jnp.float32(jnp.nan)

        g_reg_on = train.pl_weight > 0  # a disabled regulariser is not even compiled
        (g_params, g_opt_state, pl_mean), pl_penalty = jax.lax.cond(
            g_reg_on & (state.step % max(train.pl_interval, 1) == 0), g_reg if g_reg_on else skip_g_reg,
            skip_g_reg, (g_params, g_opt_state, state.pl_mean))

        # D main: tell reals from the updated generator's fakes.
        fakes, _ = generate(g_params, g_buffers, _sharded_normal(k_dz, (batch, z_dim)), k_d, False)
        fakes = jax.lax.stop_gradient(fakes)

        def d_main_loss(d_params):
            real_logits, fake_logits = d_fn(d_params)(reals), d_fn(d_params)(fakes)
            return losses.d_logistic_loss(real_logits, fake_logits), (jnp.mean(real_logits), jnp.mean(fake_logits))

        (d_loss, (d_real, d_fake)), d_grads = jax.value_and_grad(d_main_loss, has_aux=True)(state.d_params)
        d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
        d_params = optax.apply_updates(state.d_params, d_updates)

        # D reg: R1 on reals and the one-sided Lipschitz penalty on interpolates, every r1_interval steps.
        def d_reg(operand):
            d_params, d_opt_state = operand

            def loss(p):
                r1 = losses.r1_penalty(d_fn(p), reals)
                lip = losses.lipschitz_penalty(d_fn(p), reals, fakes, k_lip)
                total = (r1 * train.r1_gamma / 2 + lip * train.lipschitz_weight) * train.r1_interval
                return total, (r1, lip)

            (_, (r1, lip)), grads = jax.value_and_grad(loss, has_aux=True)(d_params)
            updates, d_opt_state = d_tx.update(grads, d_opt_state, d_params)
            return (optax.apply_updates(d_params, updates), d_opt_state), (r1, lip)

        def skip_d_reg(operand):
            return operand, (jnp.float32(jnp.nan), jnp.float32(jnp.nan))

        d_reg_on = train.r1_gamma > 0 or train.lipschitz_weight > 0
        (d_params, d_opt_state), (r1, lip) = jax.lax.cond(
            d_reg_on & (state.step % max(train.r1_interval, 1) == 0), d_reg if d_reg_on else skip_d_reg,
            skip_d_reg, (d_params, d_opt_state))

        # G EMA, with the half-life ramped up over the first images.
        beta = losses.ema_beta(batch, (state.step + 1).astype(jnp.float32) * batch, train.ema_kimg, train.ema_rampup)
        ema_params = jax.tree.map(lambda e, p: p + beta * (e - p), state.ema_params, g_params)

        new_state = state.replace(
            step=state.step + 1, g_params=g_params, g_buffers=g_buffers, ema_params=ema_params,
            ema_buffers=g_buffers, d_params=d_params, g_opt_state=g_opt_state, d_opt_state=d_opt_state,
            pl_mean=pl_mean, rng=jax.random.key_data(key))
        metrics = dict(g_loss=g_loss, d_loss=d_loss, d_real=d_real, d_fake=d_fake, r1=r1, lipschitz=lip,
                       pl_penalty=pl_penalty, pl_mean=pl_mean, g_grad_norm=optax.tree.norm(g_grads),
                       d_grad_norm=optax.tree.norm(d_grads), ema_beta=beta)
        return new_state, metrics

    return step
