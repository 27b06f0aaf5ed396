"""StyleGAN2 layers against independent plain-numpy references (loops over taps / samples / groups)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandl.models import layers

F1 = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0


def _rng(seed=0):
    return np.random.default_rng(seed)


def np_correlate(x, w, stride=1, pad=(0, 0)):
    """NHWC × HWIO cross-correlation with explicit (before, after) zero padding, by looping over taps."""
    x = np.pad(x, ((0, 0), pad, pad, (0, 0)))
    kh, kw = w.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for a in range(kh):
        for b in range(kw):
            patch = x[:, a : a + stride * (ho - 1) + 1 : stride, b : b + stride * (wo - 1) + 1 : stride]
            out += patch @ w[a, b]
    return out


def np_upfirdn(x, up=1, down=1, pad=(0, 0), gain=1.0):
    """Reference upfirdn2d: zero-stuff (zeros after each sample), pad, true 2-D convolution, subsample."""
    n, h, w, c = x.shape
    stuffed = np.zeros((n, h * up, w * up, c))
    stuffed[:, ::up, ::up] = x
    f = np.outer(F1, F1) * gain
    kernel = np.zeros((4, 4, c, c))
    for ch in range(c):
        kernel[:, :, ch, ch] = f[::-1, ::-1]
    return np_correlate(stuffed, kernel, pad=pad)[:, ::down, ::down]


def np_transposed_conv(x, w, stride):
    """PyTorch conv_transpose2d (padding 0) with an HWIO kernel: each input pixel scatters the kernel."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    out = np.zeros((n, (h - 1) * stride + k, (wd - 1) * stride + k, w.shape[3]))
    for i in range(h):
        for j in range(wd):
            out[:, i * stride : i * stride + k, j * stride : j * stride + k] += np.einsum(
                "nc,abco->nabo", x[:, i, j], w
            )
    return out


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (2, 2)), (2, 1, (1, 1))])
def test_upfirdn_matches_reference(up, down, pad):
    x = _rng().normal(size=(2, 6, 6, 3))
    gain = float(up * up)
    got = layers.upfirdn2d(jnp.asarray(x, jnp.float32), up=up, down=down, pad=pad, gain=gain)
    np.testing.assert_allclose(np.asarray(got), np_upfirdn(x, up, down, pad, gain), atol=1e-5)


def test_upsample_and_downsample_preserve_constants_and_shape():
    x = np.full((1, 8, 8, 2), 3.0, np.float32)
    up = np.asarray(layers.upsample2d(jnp.asarray(x)))
    assert up.shape == (1, 16, 16, 2)
    np.testing.assert_allclose(up[:, 2:-2, 2:-2], 3.0, rtol=1e-6)  # gain 4 keeps the mean in the interior
    down = np.asarray(layers.upfirdn2d(jnp.asarray(x), down=2, pad=(1, 1)))
    assert down.shape == (1, 4, 4, 2)
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], 3.0, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_conv2d_resample_down_matches_fir_then_strided_conv(k):
    rng = _rng(1)
    x, w = rng.normal(size=(2, 8, 8, 3)), rng.normal(size=(k, k, 3, 4))
    p = k // 2
    ref = np_correlate(np_upfirdn(x, pad=(p + 1, p + 1)), w, stride=2)
    got = layers.conv2d_resample(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), down=2)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)


def test_conv2d_resample_up_matches_transposed_conv_then_fir():
    rng = _rng(2)
    x, w = rng.normal(size=(2, 5, 5, 3)), rng.normal(size=(3, 3, 3, 4))
    ref = np_upfirdn(np_transposed_conv(x, w, 2), pad=(1, 1), gain=4.0)
    got = layers.conv2d_resample(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), up=2)
    assert got.shape == (2, 10, 10, 4)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)


def _per_sample_modulated_conv(x, w, s, demodulate, up):
    """Reference: build each sample's kernel W·s (and demodulate it), convolve that sample alone."""
    outs = []
    for b in range(x.shape[0]):
        wb = w * s[b][None, None, :, None]
        if demodulate:
            wb = wb / np.sqrt(np.sum(wb**2, axis=(0, 1, 2), keepdims=True) + 1e-8)
        xb = x[b : b + 1]
        if up == 2:
            outs.append(np_upfirdn(np_transposed_conv(xb, wb, 2), pad=(1, 1), gain=4.0))
        else:
            p = w.shape[0] // 2
            outs.append(np_correlate(xb, wb, pad=(p, p)))
    return np.concatenate(outs)


@pytest.mark.parametrize("demodulate,up,k", [(True, 1, 3), (True, 2, 3), (False, 1, 1)])
def test_modulated_conv_matches_per_sample_convolution(demodulate, up, k):
    rng = _rng(3)
    x, w = rng.normal(size=(3, 6, 6, 4)), rng.normal(size=(k, k, 4, 5))
    s = rng.normal(size=(3, 4)) + 1.0
    got = layers.modulated_conv2d(
        jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
        demodulate=demodulate, up=up,
    )
    np.testing.assert_allclose(np.asarray(got), _per_sample_modulated_conv(x, w, s, demodulate, up), atol=1e-4)


def test_demodulation_gives_unit_norm_per_output_channel():
    rng = _rng(4)
    w, s = rng.normal(size=(3, 3, 6, 7)), rng.normal(size=(2, 6))
    d = np.asarray(layers.demodulation_coefficients(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32)))
    for b in range(2):
        for o in range(7):
            kernel = w[:, :, :, o] * s[b][None, None, :] * d[b, o]
            assert abs(np.sqrt(np.sum(kernel**2)) - 1.0) < 1e-5


@pytest.mark.parametrize("group_size,num_channels,n", [(4, 1, 8), (2, 2, 6), (4, 1, 2), (1, 1, 3)])
def test_minibatch_stddev_grouping(group_size, num_channels, n):
    x = _rng(5).normal(size=(n, 3, 3, 4)).astype(np.float32)
    got = np.asarray(layers.minibatch_stddev(jnp.asarray(x), group_size, num_channels))
    g = min(group_size, n)
    c = 4 // num_channels
    assert got.shape == (n, 3, 3, 4 + num_channels)
    np.testing.assert_array_equal(got[..., :4], x)
    for i in range(n):
        members = [j for j in range(n) if j % (n // g) == i % (n // g)]  # strided groups, as in PyTorch
        assert len(members) == g
        for f in range(num_channels):
            chunk = x[members][..., f * c : (f + 1) * c].astype(np.float64)
            expected = np.mean(np.sqrt(np.var(chunk, axis=0) + 1e-8))
            np.testing.assert_allclose(got[i, :, :, 4 + f], expected, rtol=1e-5)
    if g == 1:
        np.testing.assert_allclose(got[..., 4:], 1e-4, rtol=1e-5)


def test_minibatch_stddev_rejects_ragged_batches():
    with pytest.raises(ValueError):
        layers.minibatch_stddev(jnp.zeros((6, 2, 2, 1)), 4)


def test_dense_equalized_lr_gain_and_init():
    module = layers.Dense(300, lrelu=False, lr_multiplier=0.01)
    x = _rng(6).normal(size=(4, 200)).astype(np.float32)
    params = module.init(jax.random.key(0), x)["params"]
    weight = np.asarray(params["weight"])
    assert weight.shape == (200, 300)
    assert abs(weight.std() * 0.01 - 1.0) < 0.02  # stored as N(0, 1) / lr_mul
    params = {"weight": params["weight"], "bias": jnp.arange(300.0)}
    got = np.asarray(module.apply({"params": params}, x))
    ref = x @ (weight * 0.01 / math.sqrt(200)) + np.arange(300.0) * 0.01
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_dense_lrelu_scales_by_sqrt2():
    module = layers.Dense(3, lrelu=True)
    x = jnp.asarray([[1.0, -2.0]])
    params = {"weight": jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]) * math.sqrt(2.0), "bias": jnp.zeros(3)}
    got = np.asarray(module.apply({"params": params}, x))
    np.testing.assert_allclose(got, [[math.sqrt(2.0), -0.4 * math.sqrt(2.0), -0.2 * math.sqrt(2.0)]], rtol=1e-6)


def test_conv_equalized_lr_gain_clamp_and_residual_gain():
    rng = _rng(7)
    x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32) * 50
    module = layers.Conv2d(4, 3, lrelu=True, gain=math.sqrt(0.5), conv_clamp=10.0)
    w, b = rng.normal(size=(3, 3, 3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    params = {"weight": w, "bias": b}
    pre = np_correlate(x, w / math.sqrt(3 * 9), pad=(1, 1)) + b
    ref = np.clip(np.where(pre >= 0, pre, 0.2 * pre) * math.sqrt(2.0) * math.sqrt(0.5), -10 * math.sqrt(0.5),
                  10 * math.sqrt(0.5))
    got = np.asarray(module.apply({"params": params}, x))
    assert np.abs(got).max() == pytest.approx(10 * math.sqrt(0.5))  # the clamp is active in this test
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_synthesis_layer_noise_modes():
    """Noise enters before the activation; a large bias keeps it in the linear part, so the difference from
    noise_mode 'none' must be exactly noise · strength · √2."""
    rng = _rng(8)
    x, w = jnp.ones((2, 4, 4, 3)), jnp.ones((2, 5))
    layer = layers.SynthesisLayer(6, resolution=4)
    params = {
        "affine": {"weight": rng.normal(size=(5, 3)), "bias": np.ones(3)}, "weight": rng.normal(size=(3, 3, 3, 6)),
        "noise_strength": np.asarray(0.5), "bias": np.full((6,), 100.0),
    }
    variables = {"params": params, "buffers": {"noise_const": rng.normal(size=(4, 4))}}
    none = np.asarray(layer.apply(variables, x, w, "none"))
    noise = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
    rand = np.asarray(layer.apply(variables, x, w, "random", noise))
    const = np.asarray(layer.apply(variables, x, w, "const"))
    scale = 0.5 * math.sqrt(2.0)
    np.testing.assert_allclose(rand - none, np.broadcast_to(noise * scale, rand.shape), atol=1e-4)
    noise_const = np.asarray(variables["buffers"]["noise_const"])[None, :, :, None]
    np.testing.assert_allclose(const - none, np.broadcast_to(noise_const * scale, const.shape), atol=1e-4)
    for bad in (("random", None), ("fixed", noise)):
        with pytest.raises(ValueError):
            layer.apply(variables, x, w, *bad)
