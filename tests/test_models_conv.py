"""The tap-gradient convolutions against XLA's native ones: values, gradients, second-order gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec

from gandl import sharding
from gandl.models import conv

CASES = [(8, 3, 1, 1), (9, 3, 2, 0), (7, 4, 3, 2)]  # size, k, stride, pad


def native_conv(x, w, stride, pad):
    return lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=conv._DIMS)


def native_transpose(x, w, stride):
    k = w.shape[0]
    return lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), [(k - 1, k - 1)] * 2, lhs_dilation=(stride, stride),
                                    dimension_numbers=conv._DIMS)


def _inputs(size, k, seed):
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, (2, size, size, 3)), jax.random.normal(kw, (k, k, 3, 4))


def _derivatives(f, x, w):
    """f, ∇f (wrt x and w) and the R1-style second-order ∇_w |∇_x f|², for a scalar loss around f."""

    def all_of_them(x, w):
        y = f(x, w)
        def loss(x, w):
            return jnp.sum(jnp.tanh(f(x, w)) * jnp.linspace(-1.0, 1.0, y.size).reshape(y.shape))

        second = jax.grad(lambda w: jnp.sum(jnp.square(jax.grad(loss)(x, w))))(w)
        return y, *jax.grad(loss, (0, 1))(x, w), second

    return jax.jit(all_of_them)(x, w)


def _assert_close(got, want):
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


@pytest.mark.parametrize("size,k,stride,pad", CASES)
def test_conv2d_and_its_gradients_match_native(size, k, stride, pad):
    x, w = _inputs(size, k, size * k + stride)
    got = _derivatives(lambda x, w: conv.conv2d(x, w, stride=stride, padding=pad), x, w)
    _assert_close(got, _derivatives(lambda x, w: native_conv(x, w, stride, pad), x, w))


@pytest.mark.parametrize("size,k,stride,pad", CASES)
def test_conv_transpose2d_and_its_gradients_match_native(size, k, stride, pad):
    x, w = _inputs(size, k, size + k * stride)
    got = _derivatives(lambda x, w: conv.conv_transpose2d(x, w, stride=stride), x, w)
    assert got[0].shape == (2, stride * (size - 1) + k, stride * (size - 1) + k, 4)
    _assert_close(got, _derivatives(lambda x, w: native_transpose(x, w, stride), x, w))


def test_tap_path_is_used_on_cpu_and_native_path_agrees(monkeypatch):
    x, w = _inputs(8, 3, 0)
    hlo = jax.jit(jax.grad(lambda w: jnp.sum(conv.conv2d(x, w, stride=2, padding=1) ** 2))).lower(w).as_text()
    assert "dot_general" in hlo and "lhs_dilate = [2, 2]" not in hlo  # weight gradient as matmuls
    tap = _derivatives(lambda x, w: conv.conv_transpose2d(x, w, stride=2), x, w)
    monkeypatch.setattr(conv, "tap_gradients", lambda: False)
    assert "lhs_dilate = [2, 2]" in jax.jit(lambda x: conv.conv_transpose2d(x, w, stride=2)).lower(x).as_text()
    _assert_close(tap, _derivatives(lambda x, w: conv.conv_transpose2d(x, w, stride=2), x, w))


def test_weight_gradient_under_vmap_and_a_sharded_batch():
    """Chunks vmapped with shared weights (the discriminator's mbstd groups), batch split over 8 devices."""
    x, w = _inputs(8, 3, 1)
    x = jnp.concatenate([x] * 8)  # 16 samples: 8 chunks of 2, one per device

    def chunked(f, spec=None):
        def loss(x, w):
            chunks = jnp.reshape(x, (8, 2, *x.shape[1:]), out_sharding=spec)
            return jnp.sum(jax.vmap(lambda c: f(c, w))(chunks) ** 2)
        return jax.jit(jax.grad(loss, 1))

    want = chunked(lambda c, w: native_conv(c, w, 2, 1))(x, w)
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        xs = sharding.global_batch(np.asarray(x), mesh)
        got = chunked(lambda c, w: conv.conv2d(c, w, stride=2, padding=1), PartitionSpec(sharding.DATA_AXIS))(xs, w)
        flat = jax.jit(jax.grad(lambda x, w: jnp.sum(conv.conv2d(x, w, stride=2, padding=1) ** 2), 1))(xs, w)
    _assert_close([got, flat], [want, want])
