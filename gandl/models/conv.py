"""NHWC × HWIO convolutions whose gradients run as matmuls over kernel taps on CPU.

XLA:CPU sends a forward convolution to its fast spatial-convolution kernel but lowers the weight gradient
(a convolution contracting over batch and pixels) and lhs-dilated (transposed) convolutions to a generic
loop: 5-30× slower per FLOP, which made them most of a CPU training step. On CPU, `conv2d` therefore
carries its own VJP: the weight gradient is one matmul per kernel tap (a strided slice of the padded input
against the output gradient) and the input gradient is `conv_transpose2d`, itself split into stride²
stride-1 convolutions on the un-dilated input (polyphase), which are `conv2d` convolutions again, so second-order
gradients (R1, path length) take the same fast path. Other backends keep XLA's native convolutions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

Array = jax.Array
_DIMS = ("NHWC", "HWIO", "NHWC")


def tap_gradients() -> bool:
    """Whether convolutions use the tap-matmul VJP (on CPU, where XLA's own gradient convs are slow)."""
    return jax.default_backend() == "cpu"


def _pairs(padding: int | tuple[int, int]) -> tuple[int, int]:
    return (padding, padding) if isinstance(padding, int) else tuple(padding)


def _native_conv2d(x: Array, w: Array, stride: int, padding: tuple[int, int]) -> Array:
    return lax.conv_general_dilated(x, w, (stride, stride), [(p, p) for p in padding], dimension_numbers=_DIMS)


def conv2d(x: Array, w: Array, *, stride: int = 1, padding: int | tuple[int, int] = 0) -> Array:
    """Cross-correlation (PyTorch's conv2d) with `padding` zeros on both sides of each axis (int or (h, w))."""
    w = w.astype(x.dtype)
    if tap_gradients():
        return _tap_conv2d(x, w, stride, _pairs(padding))
    return _native_conv2d(x, w, stride, _pairs(padding))


def conv_transpose2d(x: Array, w: Array, *, stride: int) -> Array:
    """Full transposed convolution: y[s·m + u] += x[m]·w[u] over all taps u, size s·(H-1)+k per axis.

    `w` is HWIO with I = x's channels. This is the adjoint of an unpadded stride-s `conv2d` with the kernel's
    in/out axes swapped, and stylegan2's upsampling conv (before its FIR filter).
    """
    w = w.astype(x.dtype)
    kh, kw = w.shape[:2]
    if not tap_gradients():
        return lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), [(kh - 1, kh - 1), (kw - 1, kw - 1)],
                                        lhs_dilation=(stride, stride), dimension_numbers=_DIMS)
    out_h, out_w = stride * (x.shape[1] - 1) + kh, stride * (x.shape[2] - 1) + kw
    y = None
    for a in range(min(stride, kh)):
        for c in range(min(stride, kw)):
            # Output phase (a, c) gets the taps u ≡ a, v ≡ c (mod s), applied reversed as a correlation,
            # and is spread onto every s-th pixel from (a, c) by interior padding (no reshape of the batch).
            sub = w[a::stride, c::stride][::-1, ::-1]
            phase = conv2d(x, sub, padding=(sub.shape[0] - 1, sub.shape[1] - 1))
            spread = [(0, 0, 0)] + [(o, n - o - stride * (m - 1) - 1, stride - 1)
                                    for o, n, m in zip((a, c), (out_h, out_w), phase.shape[1:3])] + [(0, 0, 0)]
            phase = lax.pad(phase, jnp.zeros((), phase.dtype), spread)
            y = phase if y is None else y + phase
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _tap_conv2d(x: Array, w: Array, stride: int, padding: tuple[int, int]) -> Array:
    return _native_conv2d(x, w, stride, padding)


def _tap_conv2d_fwd(x: Array, w: Array, stride: int, padding: tuple[int, int]) -> tuple[Array, tuple[Array, Array]]:
    # The custom function itself, not the native conv: an outer derivative (R1, path length) differentiates
    # this forward rule too, and must meet the custom VJP here as well.
    return _tap_conv2d(x, w, stride, padding), (x, w)


def _tap_conv2d_bwd(stride: int, padding: tuple[int, int], residuals: tuple[Array, Array], g: Array
                    ) -> tuple[Array, Array]:
    x, w = residuals
    return input_gradient(g, w, stride, padding, x.shape[1:3]), weight_gradient(x, g, stride, padding, w.shape[:2])


_tap_conv2d.defvjp(_tap_conv2d_fwd, _tap_conv2d_bwd)


def input_gradient(g: Array, w: Array, stride: int, padding: tuple[int, int], size: tuple[int, int]) -> Array:
    """∂/∂x of `conv2d(x [B, *size, I], w, stride, padding)` for output gradient g: transposed conv, cropped.

    The transposed conv covers the padded input up to its last tap; rows a stride never reached get zeros,
    and the padding is cropped off (lax.pad with negative widths).
    """
    full = conv_transpose2d(g, jnp.swapaxes(w, 2, 3), stride=stride)
    crop = [(0, 0, 0)] + [(-p, n + p - f, 0) for p, n, f in zip(padding, size, full.shape[1:3])] + [(0, 0, 0)]
    return lax.pad(full, jnp.zeros((), full.dtype), crop)


def weight_gradient(x: Array, g: Array, stride: int, padding: tuple[int, int], kernel: tuple[int, int]) -> Array:
    """∂/∂w of `conv2d(x, w [*kernel, I, O], stride, padding)` for output gradient g: one matmul per tap."""
    xp = jnp.pad(x, ((0, 0), (padding[0], padding[0]), (padding[1], padding[1]), (0, 0)))
    b, ho, wo, _ = g.shape
    # Under explicit sharding a contraction over a split batch must name its output's layout: replicated,
    # which makes XLA all-reduce the per-device sums (the data-parallel weight gradient).
    replicated = PartitionSpec() if any(jax.typeof(x).sharding.spec) else None
    rows = []
    for u in range(kernel[0]):
        taps = []
        for v in range(kernel[1]):
            window = lax.slice(xp, (0, u, v, 0), (b, u + stride * (ho - 1) + 1, v + stride * (wo - 1) + 1,
                                                  xp.shape[3]), (1, stride, stride, 1))
            taps.append(jnp.einsum("bhwi,bhwo->io", window, g, preferred_element_type=jnp.float32,
                                   out_sharding=replicated))
        rows.append(jnp.stack(taps))
    return jnp.stack(rows).astype(x.dtype)
