"""train/augment.py and train/contrastive.py: the transforms against numpy, p's adjustment, NT-Xent, and a train
step with ADA and the contrastive head on 8 simulated devices."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gandl import sharding
from gandl.models import ModelConfig, build_models
from gandl.train import augment, contrastive
from gandl.train import state as state_lib
from gandl.train import step as step_lib

IMAGES = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(image, k) for k in range(4)]
    return turns + [np.rot90(np.flip(image, axis=1), k) for k in range(4)]


@pytest.mark.parametrize("transforms", [augment.TRANSFORMS, ("xflip",), ("noise", "cutout")])
def test_identity_at_p0_and_shape_and_dtype_kept(transforms):
    out = augment.augment(jnp.asarray(IMAGES), jax.random.key(1), 0.0, transforms)
    np.testing.assert_array_equal(out, IMAGES)
    strong = augment.augment(jnp.asarray(IMAGES), jax.random.key(1), 1.0, transforms)
    assert strong.shape == IMAGES.shape and strong.dtype == jnp.float32 and not np.array_equal(strong, IMAGES)


def test_flips_and_rotations_are_the_eight_dihedral_views():
    out = np.asarray(augment.augment(jnp.asarray(IMAGES), jax.random.key(2), 1.0, ("xflip", "rot90")))
    seen = set()
    for image, result in zip(IMAGES, out):
        matches = [k for k, view in enumerate(_dihedral(image)) if np.array_equal(view, result)]
        assert matches, "not a flip/rotation of its input"
        seen.add(matches[0])
    assert len(seen) >= 4  # draws vary over the batch


def test_geometry_indices_match_numpy_flip_rotate_and_reflect_shift():
    rng = np.random.default_rng(3)
    side, pad = 8, 1
    flip, turns, shift = rng.integers(0, 2, 32), rng.integers(0, 4, 32), rng.integers(-pad, pad + 1, (32, 2))
    images = rng.uniform(size=(32, side, side, 2)).astype(np.float32)
    rows, cols = augment.geometry_indices(side, jnp.asarray(flip, bool), jnp.asarray(turns), jnp.asarray(shift))
    for b in range(32):
        view = np.rot90(np.flip(images[b], axis=1) if flip[b] else images[b], turns[b])
        padded = np.pad(view, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        want = padded[pad - shift[b, 0]: pad - shift[b, 0] + side, pad - shift[b, 1]: pad - shift[b, 1] + side]
        np.testing.assert_array_equal(images[b][np.asarray(rows[b]), np.asarray(cols[b])], want)


def test_translation_moves_whole_pixels_with_reflect_padding():
    out = np.asarray(augment.augment(jnp.asarray(IMAGES), jax.random.key(4), 1.0, ("translate",)))
    pad = int(augment.TRANSLATE_MAX * 8)
    for image, result in zip(IMAGES, out):
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        shifts = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                  if np.array_equal(padded[pad - dy: pad - dy + 8, pad - dx: pad - dx + 8], result)]
        assert shifts, "not a whole-pixel reflect-padded shift of its input"


def test_no_transform_mixes_channels():
    """Changing one stain changes only that stain's output, under every transform at once."""
    key = jax.random.key(5)
    base = augment.augment(jnp.asarray(IMAGES), key, 1.0)
    edited = IMAGES.copy()
    edited[..., 0] = np.random.default_rng(6).uniform(-1, 1, edited.shape[:-1])
    out = augment.augment(jnp.asarray(edited), key, 1.0)
    np.testing.assert_array_equal(out[..., 1:], base[..., 1:])
    assert not np.allclose(out[..., 0], base[..., 0])


def test_gradients_flow_through_the_augmentation():
    """For flips/rotations the input gradient of <aug(x), w> is w moved back: a permutation of w per image."""
    w = np.random.default_rng(7).normal(size=IMAGES.shape).astype(np.float32)
    grad = jax.grad(lambda x: jnp.sum(augment.augment(x, jax.random.key(8), 1.0, ("xflip", "rot90")) * w))(
        jnp.asarray(IMAGES))
    for g, wb in zip(np.asarray(grad), w):
        np.testing.assert_array_equal(np.sort(g.ravel()), np.sort(wb.ravel()))
    full = jax.grad(lambda x: jnp.sum(augment.augment(x, jax.random.key(8), 0.5) ** 2))(jnp.asarray(IMAGES))
    assert np.all(np.isfinite(full)) and np.all(np.abs(full).sum(axis=(1, 2, 3)) > 0)


@pytest.mark.parametrize("sign, p, want", [(1.0, 0.2, 0.2 + 64 / 1000), (-1.0, 0.2, 0.2 - 64 / 1000),
                                           (0.6 + 1e-3, 0.99, 1.0), (0.5, 0.01, 0.0)],
                         ids=["overfitting", "underfitting", "clipped-at-1", "clipped-at-0"])
def test_p_moves_toward_the_target_and_stays_in_0_1(sign, p, want):
    state = augment.init(p)
    for _ in range(4):  # four steps of 16 reals whose logits have this mean sign
        state = augment.accumulate(state, jnp.float32(sign), 16)
    adjusted = augment.adjust(state, target=0.6, kimg=1.0)
    np.testing.assert_allclose(adjusted.p, want, atol=1e-6)
    assert float(adjusted.count) == 0 and float(adjusted.signs) == 0


def test_nt_xent_is_lower_for_aligned_views_than_for_shuffled_ones():
    rng = np.random.default_rng(9)
    z1 = rng.normal(size=(16, 8)).astype(np.float32)
    z2 = z1 + 0.2 * rng.normal(size=z1.shape).astype(np.float32)
    z1, z2 = (z / np.linalg.norm(z, axis=1, keepdims=True) for z in (z1, z2))
    aligned = float(contrastive.nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.1))
    shuffled = float(contrastive.nt_xent(jnp.asarray(z1), jnp.asarray(z2[np.roll(np.arange(16), 1)]), 0.1))
    assert aligned < 0.5 * shuffled and aligned > 0
    # By hand for the first view: -log softmax over the 31 other views at its pair.
    z = np.concatenate([z1, z2])
    logits = z @ z.T / 0.1
    np.fill_diagonal(logits, -np.inf)
    by_hand = np.mean(np.log(np.exp(logits).sum(1)) - np.concatenate([logits[np.arange(16), np.arange(16) + 16],
                                                                      logits[np.arange(16) + 16, np.arange(16)]]))
    np.testing.assert_allclose(aligned, by_hand, rtol=1e-5)


MODEL = ModelConfig(resolution=8, num_channels=3, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64,
                    channel_max=8, mbstd_group_size=2)


@functools.cache
def _train(augment_mode: str, weight: float) -> ml_collections.ConfigDict:
    from gandl.defaults import base_config

    train = base_config().train
    train.update(r1_interval=2, pl_interval=2, augment=augment_mode, augment_p=0.5, ada_interval=1, ada_kimg=0.1,
                 contrastive_weight=weight)
    return train


def _step(train, devices):
    mesh = sharding.make_mesh(devices)
    generator, discriminator = build_models(MODEL)
    with jax.set_mesh(mesh):
        state = state_lib.create(MODEL, train, 0, mesh)
        reals = sharding.global_batch(IMAGES, mesh)
        step = jax.jit(step_lib.make_train_step(generator, discriminator, train))
        new, metrics = step(state, reals)
        return state, jax.device_get(new), jax.device_get(metrics)


@pytest.mark.slow
def test_ada_and_contrastive_step_on_8_devices_moves_p_and_trains_the_head():
    assert jax.device_count() == 8
    state, new, metrics = _step(_train("ada", 0.5), jax.devices())
    # r_t = mean sign of D(real) over 16 reals is never exactly the target, so p moves by 16 / 100 either way.
    assert abs(float(new.augment.p) - 0.5) == pytest.approx(0.16, abs=1e-6)
    np.testing.assert_allclose(metrics["augment_p"], new.augment.p)
    assert np.isfinite(metrics["contrastive_loss"]) and metrics["contrastive_loss"] > 0
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(state.head), new.head)
    assert all(jax.tree.leaves(moved))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new.d_params))


@pytest.mark.slow
def test_fixed_p_and_the_option_draws_do_not_depend_on_the_device_count():
    _, one, m1 = _step(_train("fixed", 0.5), jax.devices()[:1])
    _, eight, m8 = _step(_train("fixed", 0.5), jax.devices())
    assert float(one.augment.p) == float(eight.augment.p) == 0.5
    np.testing.assert_allclose(m1["contrastive_loss"], m8["contrastive_loss"], rtol=1e-4)
    np.testing.assert_allclose(m1["d_real"], m8["d_real"], rtol=1e-4, atol=1e-6)


def test_the_contrastive_objective_trains_d_and_its_head_and_leaves_the_generator_as_initialised():
    """The self-supervised twin (train.objective='contrastive'): NT-Xent alone moves D and the head (created
    although contrastive_weight is 0); G, its EMA and optimiser state pass through; the loss falls on one batch."""
    train = _train("none", 0.0).copy_and_resolve_references()
    train.objective = "contrastive"
    mesh = sharding.make_mesh(jax.devices()[:1])
    generator, discriminator = build_models(MODEL)
    with jax.set_mesh(mesh):
        start = state_lib.create(MODEL, train, 0, mesh)
        reals = sharding.global_batch(IMAGES, mesh)
        step = jax.jit(step_lib.make_train_step(generator, discriminator, train))
        state, losses = start, []
        for _ in range(30):
            state, metrics = step(state, reals)
            losses.append(float(metrics["contrastive_loss"]))
    start, state = jax.device_get(start), jax.device_get(state)
    assert set(metrics) == {"contrastive_loss", "d_grad_norm"} and int(state.step) == 30
    for before, after in ((start.g_params, state.g_params), (start.ema_params, state.ema_params),
                          (start.g_opt_state, state.g_opt_state)):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    moved = lambda before, after: [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),  # noqa: E731
                                                                             jax.tree.leaves(after))]
    assert all(moved(start.head, state.head))
    assert sum(moved(start.d_params, state.d_params)) >= len(jax.tree.leaves(start.d_params)) - 2  # all but the logit
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
