"""StyleGAN2 losses and regularisers as pure functions of networks passed in as callables.

Each function takes the network as `images -> logits` (or `ws -> images`) so it can be tested against a
toy function with a known gradient, and so the step functions decide what is differentiated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def d_logistic_loss(real_logits: Array, fake_logits: Array) -> Array:
    """Discriminator loss of the logistic GAN: softplus(D(fake)) + softplus(-D(real)), batch mean."""
    return jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))


def g_nonsaturating_loss(fake_logits: Array) -> Array:
    """Generator's non-saturating loss: softplus(-D(G(z))), batch mean."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def _input_gradients(d_fn: Callable[[Array], Array], images: Array) -> Array:
    """d(sum of logits)/d(images): each logit depends on its own image only for D without mbstd mixing."""
    return jax.grad(lambda x: jnp.sum(d_fn(x).astype(jnp.float32)))(images)


def r1_penalty(d_fn: Callable[[Array], Array], reals: Array) -> Array:
    """Mean over images of ||∇_x D(x)||² at real images (Mescheder et al. 2018); weight it by γ/2."""
    g = _input_gradients(d_fn, reals)
    return jnp.mean(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))))


def lipschitz_penalty(d_fn: Callable[[Array], Array], reals: Array, fakes: Array, key: Array) -> Array:
    """One-sided Lipschitz penalty (Petzka et al. 2018): mean(max(0, ||∇D(x̂)|| - 1)²).

    x̂ are random interpolates between real and fake images; only gradients steeper than 1 are penalised,
    which keeps D Lipschitz without forcing unit gradients everywhere as WGAN-GP does.
    """
    eps = jax.random.uniform(key, (reals.shape[0],) + (1,) * (reals.ndim - 1), reals.dtype)
    interp = eps * reals + (1.0 - eps) * jax.lax.stop_gradient(fakes)
    g = _input_gradients(d_fn, interp)
    norms = jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))) + 1e-12)
    return jnp.mean(jnp.square(jax.nn.relu(norms - 1.0)))


def path_length_penalty(synth_fn: Callable[[Array], Array], ws: Array, key: Array, pl_mean: Array,
                        decay: float = 0.01) -> tuple[Array, Array]:
    """StyleGAN2's path-length regulariser; returns (penalty, updated running mean of path lengths).

    The Jacobian-vector norm `|J_w^T y|` for image-space noise y ~ N(0, 1/(H·W)) should be the same for
    every w: deviations from its running mean are penalised, which smooths the w -> image mapping.
    """
    images = synth_fn(ws)
    h, w = images.shape[1], images.shape[2]
    noise = jax.random.normal(key, images.shape, jnp.float32) / jnp.sqrt(h * w)
    grads = jax.grad(lambda v: jnp.sum(synth_fn(v).astype(jnp.float32) * noise))(ws)
    lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1))
    new_mean = pl_mean + decay * (jnp.mean(lengths) - pl_mean)
    penalty = jnp.mean(jnp.square(lengths - jax.lax.stop_gradient(new_mean)))
    return penalty, jax.lax.stop_gradient(new_mean)


def lazy_regularization_adam(learning_rate: float, b1: float, b2: float, interval: int
                             ) -> tuple[float, float, float]:
    """Adam settings for a network regularised every `interval` steps (StyleGAN2 lazy regularisation).

    The regulariser's step is folded into the optimizer's schedule, so lr and betas are rescaled by
    c = interval / (interval + 1) to keep the effective per-minibatch dynamics unchanged.
    """
    if interval <= 0:
        return learning_rate, b1, b2
    c = interval / (interval + 1)
    return learning_rate * c, b1 ** c, b2 ** c


def ema_beta(batch_size: int, images_seen: Array, ema_kimg: float = 10.0, rampup: float | None = 0.05) -> Array:
    """Decay of the generator's weight average: a half-life of `ema_kimg` thousand images, ramped up.

    With ramp-up the half-life is capped at `rampup` × images seen, so the average does not drag the
    random initialisation along early in training.
    """
    half_life = jnp.asarray(ema_kimg * 1000.0, jnp.float32)
    if rampup is not None:
        half_life = jnp.minimum(half_life, images_seen * rampup)
    return 0.5 ** (batch_size / jnp.maximum(half_life, 1e-8))
