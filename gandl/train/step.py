"""One StyleGAN2 training iteration as a single jitted, sharded function, built from four phase functions.

Phases, in stylegan2-ada-pytorch's order: G main (non-saturating loss, style mixing), G reg (path length,
every `pl_interval` steps), D main (logistic loss on the updated generator's fakes), D reg (R1 and the
one-sided Lipschitz penalty, every `r1_interval` steps), then the G weight EMA. Lazy regularisers are
scaled by their interval and Adam's lr and betas by c = k/(k+1) (`state.optimizers`). The lazy phases are
`lax.cond` calls inside one program, so there is one compilation and no host round trip per step.

Optional training options (`gandl.train.augment`, `gandl.train.contrastive`): with `train.augment` every
image D sees in G main, D main and D reg passes through the augmentation at the state's p (ADA tunes p from
D's signs on reals after each step); with `train.contrastive_weight` D main adds the NT-Xent loss of two
strongly augmented views of the reals, through the projection head (`state.head`, its own Adam). Their
random draws come from a stream of their own, so the other draws are those of a run without them.

As the original, w_avg is tracked on every mapping call that feeds a phase (G main, G reg, D main), and
the EMA ramp-up counts the images seen before the step (β = 0 at step 0: the EMA starts as G). One
deliberate difference: w_avg is the mean over the global batch, where the original keeps one per GPU
(its DDP does not broadcast buffers), so ours does not depend on the device count.

Data parallelism: the batch is sharded over the mesh's 'data' axis and parameters are replicated; XLA
inserts the gradient all-reduce. The discriminator sees the batch in consecutive chunks of its
minibatch-stddev group size, so each sample's group is the same on 1 device or 256.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from gandl.defaults import Train
from gandl.models.discriminator import Discriminator
from gandl.models.generator import Generator
from gandl.sharding import DATA_AXIS
from gandl.train import augment, contrastive, losses
from gandl.train.state import TrainState, head_optimizer, optimizers

Array = jax.Array
Metrics = dict[str, Array]
_BATCH = PartitionSpec(DATA_AXIS)

# The train-config fields the step depends on (the rest schedule the loop and need no recompilation).
STEP_FIELDS = ("g_lr", "d_lr", "adam_b1", "adam_b2", "adam_eps", "r1_gamma", "r1_interval", "lipschitz_weight",
               "pl_weight", "pl_interval", "pl_decay", "pl_batch_shrink", "style_mixing_prob", "ema_kimg",
               "ema_rampup", "augment", "augment_transforms", "ada_target", "ada_interval", "ada_kimg",
               "contrastive_weight", "contrastive_temperature", "objective")
_AUGMENT_STREAM = 1  # folded into the step's key for the augmentation draws


def step_config(train: Train) -> Train:
    """The train section with only what defines the step function (every other field at its default): jit caches
    the step on it, so runs that differ in their schedule alone share one compiled step."""
    return Train.from_mapping({k: getattr(train, k) for k in STEP_FIELDS})


class StepNoise(NamedTuple):
    """Every random draw of one step, from the state's key: latents and keys per phase, and the next key.

    `*_mix` keys drive style mixing, `*_noise` the synthesis noise inputs; all are independent.
    """

    next_key: Array
    g_z: Array
    g_mix: Array
    g_noise: Array
    pl_z: Array
    pl_mix: Array
    pl_noise: Array
    pl_projection: Array
    d_z: Array
    d_mix: Array
    d_noise: Array
    lipschitz: Array


def step_noise(rng: Array, batch: int, pl_batch: int, z_dim: int) -> StepNoise:
    """The draws of a step from raw key data `rng`; latents are split over the data axis like the batch.

    Call under `jax.set_mesh`. The values do not depend on the device count.
    """
    keys = list(jax.random.split(jax.random.wrap_key_data(rng), len(StepNoise._fields)))
    shapes = {"g_z": (batch, z_dim), "pl_z": (pl_batch, z_dim), "d_z": (batch, z_dim)}
    return StepNoise(**{
        name: jax.random.normal(key, shapes[name], jnp.float32, out_sharding=_BATCH) if name in shapes else key
        for name, key in zip(StepNoise._fields, keys)})


def grouped_logits(discriminator: Discriminator, d_params, images: Array, output: str = "logits") -> Array:
    """D logits [B] (or another D `output`, [B, F]) computed over consecutive chunks of the mbstd group size
    (device-count independent)."""
    b = images.shape[0]
    g = min(discriminator.config.mbstd_group_size, b)
    if b % g:
        raise ValueError(f"batch {b} is not a multiple of the minibatch-stddev group size {g}")
    chunks = jnp.reshape(images, (b // g, g, *images.shape[1:]), out_sharding=_BATCH)
    out = jax.vmap(lambda x: discriminator.apply({"params": d_params}, x, output=output))(chunks)
    return jnp.reshape(out, (b,) if output == "logits" else (b, -1), out_sharding=_BATCH)


class Augmentation(NamedTuple):
    """What augments the images of one phase: its key and the probability p of each transform."""

    key: Array
    p: Array

    def part(self, i: int) -> Augmentation:
        """Independent draws for the i-th set of images the phase shows D."""
        return Augmentation(jax.random.fold_in(self.key, i), self.p)


class Head(NamedTuple):
    """The contrastive projection head, its optimizer state and the key of this step's two views."""

    params: Any
    opt_state: Any
    key: Array


def augmentation_keys(rng: Array) -> tuple[Array, Array, Array, Array]:
    """Keys of G main, D main, D reg and the contrastive views, from their own stream of the step's key."""
    key = jax.random.fold_in(jax.random.wrap_key_data(rng), _AUGMENT_STREAM)
    return tuple(jax.random.split(key, 4))


class Phases(NamedTuple):
    """The four phases as pure functions; each returns only what it may change, plus its metrics::

      g_main(g_params, g_buffers, g_opt_state, d_params, z, mix_key, noise_key, aug=None)
          -> (g_params, g_buffers, g_opt_state, metrics)
      g_reg(g_params, g_buffers, g_opt_state, pl_mean, z, mix_key, noise_key, projection_key)
          -> (g_params, g_buffers, g_opt_state, pl_mean, metrics)
      d_main(d_params, d_opt_state, g_params, g_buffers, reals, z, mix_key, noise_key, aug=None, head=None)
          -> (d_params, d_opt_state, g_buffers, fakes, head, metrics)
      d_reg(d_params, d_opt_state, reals, fakes, lipschitz_key, aug=None) -> (d_params, d_opt_state, metrics)
      d_contrastive(d_params, d_opt_state, reals, head) -> (d_params, d_opt_state, head, metrics)

    `aug` (an `Augmentation`, or None: no augmentation) augments every image D sees in the phase, differentiably;
    `head` (a `Head`, or None) adds the contrastive loss to D main and returns the updated head; `d_contrastive`
    is the contrastive objective's only phase (`train.objective='contrastive'`): that loss alone, no generator.
    """

    g_main: Callable[..., tuple[Any, Any, Any, Metrics]]
    g_reg: Callable[..., tuple[Any, Any, Any, Array, Metrics]]
    d_main: Callable[..., tuple[Any, Any, Any, Array, Any, Metrics]]
    d_reg: Callable[..., tuple[Any, Any, Metrics]]
    d_contrastive: Callable[..., tuple[Any, Any, Any, Metrics]]


def make_phases(generator: Generator, discriminator: Discriminator, train: Train) -> Phases:
    """The phase functions for a model pair and the step fields of a train config."""
    g_tx, d_tx = optimizers(train)
    head_tx = head_optimizer(train)
    transforms = tuple(train.augment_transforms)

    def d_fn(d_params, aug: Augmentation | None = None, output: str = "logits") -> Callable[[Array], Array]:
        if aug is None:
            return lambda x: grouped_logits(discriminator, d_params, x, output)
        return lambda x: grouped_logits(discriminator, d_params, augment.augment(x, aug.key, aug.p, transforms),
                                        output)

    def contrastive_loss(d_params, head_params, reals: Array, key: Array) -> Array:
        """NT-Xent of two strongly augmented views (every transform at p = 1) of the reals, on D's fc features."""
        views = [contrastive.project(head_params, d_fn(d_params, Augmentation(k, jnp.float32(1)), "fc")(reals))
                 for k in jax.random.split(key)]
        return contrastive.nt_xent(*views, train.contrastive_temperature)

    def mapping(g_params, g_buffers, z: Array, mix_key: Array) -> tuple[Array, dict]:
        """ws with style mixing, and the buffers with w_avg updated from z's ws."""
        ws, updated = generator.apply({"params": g_params, "buffers": g_buffers}, z, mix_key, train.style_mixing_prob,
                                      True, method=Generator.map_mixed, mutable=["buffers"])
        return ws, updated["buffers"]

    def synthesize(g_params, g_buffers, ws: Array, noise_key: Array) -> Array:
        return generator.apply({"params": g_params, "buffers": g_buffers}, ws, "random",
                               method=Generator.synthesize, rngs={"noise": noise_key})

    def apply(tx: optax.GradientTransformation, grads, opt_state, params) -> tuple[Any, Any]:
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def stepped(head: Head, grads) -> Head:
        """The contrastive head after one step of its own Adam."""
        return head._replace(**dict(zip(("params", "opt_state"), apply(head_tx, grads, head.opt_state, head.params))))

    def g_main(g_params, g_buffers, g_opt_state, d_params, z, mix_key, noise_key, aug=None):
        def loss(p):
            ws, buffers = mapping(p, g_buffers, z, mix_key)
            return losses.g_nonsaturating_loss(d_fn(d_params, aug)(synthesize(p, buffers, ws, noise_key))), buffers

        (g_loss, buffers), grads = jax.value_and_grad(loss, has_aux=True)(g_params)
        g_params, g_opt_state = apply(g_tx, grads, g_opt_state, g_params)
        return g_params, buffers, g_opt_state, dict(g_loss=g_loss, g_grad_norm=optax.tree.norm(grads))

    def g_reg(g_params, g_buffers, g_opt_state, pl_mean, z, mix_key, noise_key, projection_key):
        def loss(p):
            ws, buffers = mapping(p, g_buffers, z, mix_key)
            penalty, new_mean = losses.path_length_penalty(
                lambda w: synthesize(p, buffers, w, noise_key), ws, projection_key, pl_mean, train.pl_decay)
            return penalty * train.pl_weight * train.pl_interval, (penalty, new_mean, buffers)

        (_, (penalty, pl_mean, buffers)), grads = jax.value_and_grad(loss, has_aux=True)(g_params)
        g_params, g_opt_state = apply(g_tx, grads, g_opt_state, g_params)
        return g_params, buffers, g_opt_state, pl_mean, dict(pl_penalty=penalty)

    def d_main(d_params, d_opt_state, g_params, g_buffers, reals, z, mix_key, noise_key, aug=None, head=None):
        ws, g_buffers = mapping(g_params, g_buffers, z, mix_key)
        fakes = jax.lax.stop_gradient(synthesize(g_params, g_buffers, ws, noise_key))

        def loss(trained):
            p, head_params = trained
            real_logits = d_fn(p, None if aug is None else aug.part(0))(reals)
            fake_logits = d_fn(p, None if aug is None else aug.part(1))(fakes)
            gan = losses.d_logistic_loss(real_logits, fake_logits)
            metrics = dict(d_loss=gan, d_real=jnp.mean(real_logits), d_fake=jnp.mean(fake_logits),
                           d_real_sign=jnp.mean(jnp.sign(real_logits)))  # r_t, ADA's overfitting heuristic
            if head is None:
                return gan, metrics
            con = contrastive_loss(p, head_params, reals, head.key)
            return gan + train.contrastive_weight * con, dict(metrics, contrastive_loss=con)

        (_, metrics), (grads, head_grads) = jax.value_and_grad(loss, has_aux=True)(
            (d_params, None if head is None else head.params))
        d_params, d_opt_state = apply(d_tx, grads, d_opt_state, d_params)
        if head is not None:
            head = stepped(head, head_grads)
        return d_params, d_opt_state, g_buffers, fakes, head, dict(metrics, d_grad_norm=optax.tree.norm(grads))

    def d_reg(d_params, d_opt_state, reals, fakes, lipschitz_key, aug=None):
        def loss(p):
            r1 = losses.r1_penalty(d_fn(p, aug), reals)
            lip = losses.lipschitz_penalty(d_fn(p, aug), reals, fakes, lipschitz_key)
            return (r1 * train.r1_gamma / 2 + lip * train.lipschitz_weight) * train.r1_interval, (r1, lip)

        (_, (r1, lip)), grads = jax.value_and_grad(loss, has_aux=True)(d_params)
        d_params, d_opt_state = apply(d_tx, grads, d_opt_state, d_params)
        return d_params, d_opt_state, dict(r1=r1, lipschitz=lip)

    def d_contrastive(d_params, d_opt_state, reals, head):
        con, (grads, head_grads) = jax.value_and_grad(
            lambda trained: contrastive_loss(*trained, reals, head.key))((d_params, head.params))
        d_params, d_opt_state = apply(d_tx, grads, d_opt_state, d_params)
        metrics = dict(contrastive_loss=con, d_grad_norm=optax.tree.norm(grads))
        return d_params, d_opt_state, stepped(head, head_grads), metrics

    return Phases(g_main, g_reg, d_main, d_reg, d_contrastive)


def make_train_step(generator: Generator, discriminator: Discriminator, train: Train
                    ) -> Callable[[TrainState, Array], tuple[TrainState, Metrics]]:
    """The pure step function (state, reals [B, H, W, C] in [-1, 1]) -> (state, metrics).

    Jit it and call it under `jax.set_mesh(mesh)`: latents and D chunks are laid out on the mesh's
    'data' axis, which must divide the batch (and the batch must hold whole mbstd groups per device).
    """
    phases = make_phases(generator, discriminator, train)
    if train.objective == "contrastive":
        return _contrastive_step(phases)
    g_reg_on = train.pl_weight > 0  # a disabled regulariser is not even compiled
    d_reg_on = train.r1_gamma > 0 or train.lipschitz_weight > 0

    def step(state: TrainState, reals: Array) -> tuple[TrainState, Metrics]:
        batch = reals.shape[0]
        n = step_noise(state.rng, batch, batch // train.pl_batch_shrink, generator.config.z_dim)
        g_aug, d_aug, reg_aug, views = augmentation_keys(state.rng)
        p = None if state.augment is None else state.augment.p
        g_aug, d_aug, reg_aug = ((None,) * 3 if p is None else
                                 (Augmentation(g_aug, p), Augmentation(d_aug, p), Augmentation(reg_aug, p)))
        head = None if state.head is None else Head(state.head, state.head_opt_state, views)

        g_params, g_buffers, g_opt_state, g_metrics = phases.g_main(
            state.g_params, state.g_buffers, state.g_opt_state, state.d_params, n.g_z, n.g_mix, n.g_noise, g_aug)

        def g_reg(operand):
            *out, metrics = phases.g_reg(*operand, n.pl_z, n.pl_mix, n.pl_noise, n.pl_projection)
            return tuple(out), metrics

        def skip_g_reg(operand):
            return operand, dict(pl_penalty=jnp.float32(jnp.nan))

        (g_params, g_buffers, g_opt_state, pl_mean), pl_metrics = jax.lax.cond(
            g_reg_on & (state.step % max(train.pl_interval, 1) == 0), g_reg if g_reg_on else skip_g_reg,
            skip_g_reg, (g_params, g_buffers, g_opt_state, state.pl_mean))

        d_params, d_opt_state, g_buffers, fakes, head, d_metrics = phases.d_main(
            state.d_params, state.d_opt_state, g_params, g_buffers, reals, n.d_z, n.d_mix, n.d_noise, d_aug, head)

        def d_reg(operand):
            *out, metrics = phases.d_reg(*operand, reals, fakes, n.lipschitz, reg_aug)
            return tuple(out), metrics

        def skip_d_reg(operand):
            return operand, dict(r1=jnp.float32(jnp.nan), lipschitz=jnp.float32(jnp.nan))

        (d_params, d_opt_state), d_reg_metrics = jax.lax.cond(
            d_reg_on & (state.step % max(train.r1_interval, 1) == 0), d_reg if d_reg_on else skip_d_reg,
            skip_d_reg, (d_params, d_opt_state))

        # G EMA: the half-life ramps up with the images seen before this step, as the original's cur_nimg.
        beta = losses.ema_beta(batch, state.step.astype(jnp.float32) * batch, train.ema_kimg, train.ema_rampup)
        ema_params = jax.tree.map(lambda e, p: p + beta * (e - p), state.ema_params, g_params)

        ada, option_metrics = state.augment, {}
        if ada is not None:
            if train.augment == "ada":  # p moves every ada_interval steps, from the signs of D(augmented reals)
                ada = augment.accumulate(ada, d_metrics["d_real_sign"], batch)
                ada = jax.lax.cond((state.step + 1) % train.ada_interval == 0,
                                   lambda a: augment.adjust(a, train.ada_target, train.ada_kimg), lambda a: a, ada)
            option_metrics["augment_p"] = ada.p
        new_state = state.replace(
            step=state.step + 1, g_params=g_params, g_buffers=g_buffers, ema_params=ema_params,
            ema_buffers=g_buffers, d_params=d_params, g_opt_state=g_opt_state, d_opt_state=d_opt_state,
            pl_mean=pl_mean, rng=jax.random.key_data(n.next_key), augment=ada,
            head=None if head is None else head.params, head_opt_state=None if head is None else head.opt_state)
        metrics = dict(**g_metrics, **pl_metrics, **d_metrics, **d_reg_metrics, **option_metrics, pl_mean=pl_mean,
                       ema_beta=beta)
        return new_state, metrics

    return step


def _contrastive_step(phases: Phases) -> Callable[[TrainState, Array], tuple[TrainState, Metrics]]:
    """The self-supervised twin's step: D and the head learn from two augmented views of the reals, nothing else
    (G, its EMA and optimiser state pass through unchanged, so a checkpoint has the GAN's layout)."""

    def step(state: TrainState, reals: Array) -> tuple[TrainState, Metrics]:
        next_key, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
        views = augmentation_keys(state.rng)[3]  # the GAN step's contrastive views draw from the same stream
        d_params, d_opt_state, head, metrics = phases.d_contrastive(
            state.d_params, state.d_opt_state, reals, Head(state.head, state.head_opt_state, views))
        return state.replace(step=state.step + 1, d_params=d_params, d_opt_state=d_opt_state,
                             rng=jax.random.key_data(next_key), head=head.params,
                             head_opt_state=head.opt_state), metrics

    return step
