"""train/swd.py on inputs with known answers: pyramid reconstruction, patch geometry, distances and their order."""

import numpy as np
import pytest
from scipy import special

from gandl.train import swd


def _images(seed: int, n: int = 16, size: int = 32, channels: int = 3, noise: float = 0.3) -> np.ndarray:
    """Blocky random fields plus fine noise, so every pyramid level carries signal."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, size // 4, size // 4, channels))
    return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2) + noise * rng.normal(size=(n, size, size, channels))


def test_laplacian_pyramid_reconstructs_and_has_no_band_in_flat_images():
    images = _images(0)
    levels = swd.laplacian_pyramid(images, min_size=8)
    assert [level.shape[1] for level in levels] == [32, 16, 8]
    # Each band is image − blur(upsample(down)), so adding the bands back up the pyramid restores the image.
    x = levels[-1]
    for band in reversed(levels[:-1]):
        x = band + swd._blur(np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))
    np.testing.assert_allclose(x, images, atol=1e-5)
    flat = swd.laplacian_pyramid(np.full((2, 32, 32, 1), 0.7), min_size=16)
    np.testing.assert_allclose(flat[0], 0, atol=1e-6)
    np.testing.assert_allclose(flat[1], 0.7, atol=1e-6)


def test_patches_are_contiguous_windows():
    h = w = 12
    level = (np.arange(h)[:, None] * w + np.arange(w)[None, :]).astype(np.float32)[None, :, :, None]  # value = index
    out = swd.patches(np.concatenate([level, level + 1000]), per_image=5, rng=np.random.default_rng(0))
    assert out.shape == (10, 49)
    windows = out.reshape(10, 7, 7)
    assert np.all(np.diff(windows, axis=2) == 1) and np.all(np.diff(windows, axis=1) == w)
    assert np.all(windows[:5] < 1000) and np.all(windows[5:] >= 1000)  # the first 5 patches from image 0
    with pytest.raises(ValueError, match="smaller than the 7x7"):
        swd.patches(level[:, :6], per_image=1, rng=np.random.default_rng(0))


def test_sliced_wasserstein_zero_for_identical_sets_and_the_mean_projection_for_a_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(256, 12)).astype(np.float32)
    assert swd.sliced_wasserstein(a, a.copy(), np.random.default_rng(2)) == 0.0
    # A shift s moves every projection on direction u by s·u, so the distance is E|s·u| over unit u:
    # |s| · Γ(d/2) / (√π Γ((d+1)/2)) in d dimensions.
    shift = np.full(12, 0.5, np.float32)
    expected = np.linalg.norm(shift) * np.exp(special.gammaln(6) - special.gammaln(6.5)) / np.sqrt(np.pi)
    got = swd.sliced_wasserstein(a, a + shift, np.random.default_rng(3), directions=2048)
    assert got == pytest.approx(expected, rel=0.03)
    distances = [swd.sliced_wasserstein(a, a + k * shift, np.random.default_rng(3)) for k in (1, 2, 4)]
    np.testing.assert_allclose(distances, [distances[0] * k for k in (1, 2, 4)], rtol=1e-4)  # linear in |s|
    with pytest.raises(ValueError, match="equal-size"):
        swd.sliced_wasserstein(a, a[:10], rng)


@pytest.mark.slow
def test_swd_pyramid_orders_sets_by_distance():
    """4,096 patches per level: identical sets then differ only by the patches drawn (the sampling floor)."""
    reals = _images(0, n=32, channels=1)

    def distance(fakes):
        return swd.swd_pyramid(reals, fakes, seed=0, per_image=128)

    same = distance(reals.copy())
    assert set(same) == {"swd_32px", "swd_16px", "swd_mean"}
    assert same["swd_mean"] == pytest.approx(np.mean([same["swd_32px"], same["swd_16px"]]))
    white = np.random.default_rng(5).normal(size=reals.shape)
    noisy = [distance(reals + s * white) for s in (0.3, 1.0, 3.0)]
    assert same["swd_32px"] < noisy[0]["swd_32px"] < noisy[1]["swd_32px"] < noisy[2]["swd_32px"]
    # Pixel noise is fine texture: it moves the finest level most.
    assert noisy[1]["swd_32px"] - same["swd_32px"] > 2 * (noisy[1]["swd_16px"] - same["swd_16px"])
    other = distance(white)
    assert same["swd_mean"] < 0.5 * other["swd_mean"]
    # Each set is normalised per channel, so an intensity gain and offset of one set changes nothing.
    assert distance(2.0 * white + 1.0) == pytest.approx(other, rel=1e-4)
