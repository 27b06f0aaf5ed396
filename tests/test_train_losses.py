"""Losses and regularisers on small cases with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandl.train import losses


def test_logistic_losses():
    zero = jnp.zeros(4)
    assert losses.d_logistic_loss(zero, zero) == pytest.approx(2 * np.log(2))
    assert losses.g_nonsaturating_loss(zero) == pytest.approx(np.log(2))
    # a confident, correct D has a small loss; fooling it is what lowers G's loss
    assert losses.d_logistic_loss(jnp.full(4, 10.0), jnp.full(4, -10.0)) < 1e-3
    assert losses.g_nonsaturating_loss(jnp.full(4, 10.0)) < losses.g_nonsaturating_loss(jnp.full(4, -10.0))


def _toy_d(params):
    """A small nonlinear per-image critic: tanh features of a fixed projection, then a weighted sum."""
    w1, w2 = params

    def d(x):
        h = jnp.tanh(x.reshape(x.shape[0], -1) @ w1)
        return (h ** 2) @ w2

    return d


def test_r1_matches_finite_differences():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (3, 4, 4, 2))
    d = jax.jit(_toy_d((jax.random.normal(k2, (32, 6)) * 0.3, jax.random.normal(k3, (6,)))))
    eps = 1e-3
    x64 = np.asarray(x, np.float64)
    fd = np.zeros_like(x64)
    for idx in np.ndindex(*x64.shape):  # central differences of each image's own logit
        plus, minus = x64.copy(), x64.copy()
        plus[idx] += eps
        minus[idx] -= eps
        i = idx[0]
        up, down = float(d(jnp.asarray(plus, jnp.float32))[i]), float(d(jnp.asarray(minus, jnp.float32))[i])
        fd[idx] = (up - down) / (2 * eps)
    expected = np.mean(np.sum(fd ** 2, axis=(1, 2, 3)))
    assert float(losses.r1_penalty(d, x)) == pytest.approx(expected, rel=2e-2)


@pytest.mark.parametrize("slope, expected", [(3.0, 4.0), (0.5, 0.0), (1.0, 0.0)])
def test_lipschitz_penalty_is_one_sided(slope, expected):
    v = jax.random.normal(jax.random.key(1), (4, 4, 1))
    v = v / jnp.linalg.norm(v)

    def d(x):  # a linear critic whose input gradient has norm `slope` everywhere
        return slope * jnp.sum(x * v, axis=(1, 2, 3))

    reals, fakes = jnp.ones((5, 4, 4, 1)), -jnp.ones((5, 4, 4, 1))
    got = losses.lipschitz_penalty(d, reals, fakes, jax.random.key(2))
    assert float(got) == pytest.approx(expected, abs=1e-5)


def test_path_length_of_a_linear_synthesis():
    key_w, key_a, key_n = jax.random.split(jax.random.key(3), 3)
    ws = jax.random.normal(key_w, (6, 3, 5))  # [batch, num_ws, w_dim]
    a = jax.random.normal(key_a, (3 * 5, 4 * 4 * 2))

    def synth(w):
        return (w.reshape(w.shape[0], -1) @ a).reshape(w.shape[0], 4, 4, 2)

    penalty, new_mean = losses.path_length_penalty(synth, ws, key_n, jnp.float32(2.0), decay=0.01)
    noise = np.asarray(jax.random.normal(key_n, (6, 4, 4, 2))) / 4.0  # same draw: N(0, 1/(H*W))
    grads = (noise.reshape(6, -1) @ np.asarray(a).T).reshape(6, 3, 5)
    lengths = np.sqrt(np.mean(np.sum(grads ** 2, axis=2), axis=1))
    mean = 2.0 + 0.01 * (lengths.mean() - 2.0)
    assert float(new_mean) == pytest.approx(mean, rel=1e-5)
    assert float(penalty) == pytest.approx(np.mean((lengths - mean) ** 2), rel=1e-4)


def test_lazy_regularization_rescales_adam():
    lr, b1, b2 = losses.lazy_regularization_adam(1e-4, 0.0, 0.99, 16)
    c = 16 / 17
    assert (lr, b1, b2) == pytest.approx((1e-4 * c, 0.0, 0.99 ** c))
    assert losses.lazy_regularization_adam(1e-4, 0.0, 0.99, 0) == (1e-4, 0.0, 0.99)


def test_ema_beta_ramps_up():
    early = float(losses.ema_beta(32, jnp.float32(0.0)))
    mid = float(losses.ema_beta(32, jnp.float32(100_000.0)))
    late = float(losses.ema_beta(32, jnp.float32(10_000_000.0)))
    assert early == pytest.approx(0.0, abs=1e-6)  # no history yet: the average is the current weights
    assert mid == pytest.approx(0.5 ** (32 / 5000))  # capped at 5 % of the images seen
    assert late == pytest.approx(0.5 ** (32 / 10_000))  # the 10 kimg half-life
