"""train/step.py: one step against updates computed by hand, and each phase on its own.

The hand computation writes out what the step must do (Adam with lr and betas rescaled by c = k/(k+1), the
lazy regularisers scaled by their intervals, the phase order G main → G reg → D main → D reg, w_avg tracked
in all three mapping calls, the EMA with its ramp-up over the images seen before the step); it shares with
the step only the networks, the random draws (`step_noise`) and the pure penalties of `losses` (tested in
test_train_losses.py). Adam's β1 is 0.5, not StyleGAN2's 0, so that its rescaling matters too.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandl import sharding
from gandl.defaults import Train
from gandl.models import ModelConfig, build_models
from gandl.train import losses
from gandl.train import state as state_lib
from gandl.train import step as step_lib

MODEL = ModelConfig(resolution=8, num_channels=3, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64,
                    channel_max=8, mbstd_group_size=2)
TRAIN = Train(**dict(
    g_lr=2e-3, d_lr=3e-3, adam_b1=0.5, adam_b2=0.99, adam_eps=1e-8, r1_gamma=0.5, r1_interval=4,
    lipschitz_weight=10.0, pl_weight=2.0, pl_interval=2, pl_decay=0.01, pl_batch_shrink=2, style_mixing_prob=0.9,
    ema_kimg=0.1, ema_rampup=0.05, augment="none", augment_p=0.0, ada_target=0.6, ada_interval=4, ada_kimg=500.0,
    augment_transforms=("xflip",), contrastive_weight=0.0, contrastive_temperature=0.1, objective="gan"))
BATCH = 8


@functools.cache
def _setup():
    """Models, a one-device mesh, a fresh state, reals, the jitted step and the phases."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    generator, discriminator = build_models(MODEL)
    reals = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (BATCH, 8, 8, 3)), jnp.float32)
    with jax.set_mesh(mesh):
        state = state_lib.create(MODEL, TRAIN, 0, mesh)
    # A steeper D (logits ×20) has input gradients above 1, so the one-sided Lipschitz penalty is active.
    d_params = jax.tree_util.tree_map_with_path(
        lambda path, p: 20 * p if jax.tree_util.keystr(path) == "['b4']['out']['weight']" else p, state.d_params)
    state = jax.device_put(state.replace(d_params=d_params), sharding.replicated(mesh))
    step = jax.jit(step_lib.make_train_step(generator, discriminator, TRAIN))
    return mesh, generator, discriminator, reals, state, step, step_lib.make_phases(generator, discriminator, TRAIN)


def _placed(state):
    """A modified state laid out as `state_lib.create` lays it out, so the compiled functions are reused."""
    return jax.device_put(state, sharding.replicated(_setup()[0]))


def _adam(params, grads, moments, lr: float, interval: int):
    """Adam by hand for a network regularised every `interval` steps; moments = (count, mu, nu)."""
    c = interval / (interval + 1)
    lr, b1, b2, eps = lr * c, TRAIN.adam_b1 ** c, TRAIN.adam_b2 ** c, TRAIN.adam_eps
    count, mu, nu = moments
    count = count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, grads)
    params = jax.tree.map(lambda p, m, v: p - lr * (m / (1 - b1 ** count)) / (jnp.sqrt(v / (1 - b2 ** count)) + eps),
                          params, mu, nu)
    return params, (count, mu, nu)


def _moments(opt_state):
    adam = opt_state[0]
    return adam.count, adam.mu, adam.nu


@jax.jit
def _by_hand(state, reals, n):
    """The step by hand at a step where both lazy regularisers run."""
    _, generator, discriminator, *_ = _setup()
    g_params, d_params, buffers, pl_mean = state.g_params, state.d_params, state.g_buffers, state.pl_mean
    g_adam, d_adam = _moments(state.g_opt_state), _moments(state.d_opt_state)

    def logits(d, x):  # consecutive mbstd groups of 2
        chunks = x.reshape(BATCH // 2, 2, *x.shape[1:])
        return jax.vmap(lambda c: discriminator.apply({"params": d}, c))(chunks).reshape(-1)

    def ws(g, z, mix):
        return generator.apply({"params": g, "buffers": buffers}, z, mix, TRAIN.style_mixing_prob,
                               method="map_mixed")

    def synth(g, w, key):
        return generator.apply({"params": g, "buffers": buffers}, w, "random", method="synthesize",
                               rngs={"noise": key})

    def track(w_avg, g, z):  # w_avg <- lerp(batch mean of w, w_avg, 0.995)
        w = generator.apply({"params": g, "buffers": buffers}, z, method="map")[:, 0].mean(0)
        return w + MODEL.w_avg_beta * (w_avg - w)

    w_avg = buffers["mapping"]["w_avg"]
    # G main, then G reg on the updated G, then D main on fakes of the G after both.
    grads = jax.grad(lambda g: jnp.mean(jax.nn.softplus(-logits(d_params, synth(g, ws(g, n.g_z, n.g_mix),
                                                                               n.g_noise)))))(g_params)
    w_avg = track(w_avg, g_params, n.g_z)
    g_params, g_adam = _adam(g_params, grads, g_adam, TRAIN.g_lr, TRAIN.pl_interval)

    def pl(g):
        penalty, mean = losses.path_length_penalty(lambda w: synth(g, w, n.pl_noise), ws(g, n.pl_z, n.pl_mix),
                                                   n.pl_projection, pl_mean, TRAIN.pl_decay)
        return penalty * TRAIN.pl_weight * TRAIN.pl_interval, mean

    grads, pl_mean = jax.grad(pl, has_aux=True)(g_params)
    w_avg = track(w_avg, g_params, n.pl_z)
    g_params, g_adam = _adam(g_params, grads, g_adam, TRAIN.g_lr, TRAIN.pl_interval)
    fakes = synth(g_params, ws(g_params, n.d_z, n.d_mix), n.d_noise)
    w_avg = track(w_avg, g_params, n.d_z)
    grads = jax.grad(lambda d: jnp.mean(jax.nn.softplus(logits(d, fakes)))
                     + jnp.mean(jax.nn.softplus(-logits(d, reals))))(d_params)
    d_params, d_adam = _adam(d_params, grads, d_adam, TRAIN.d_lr, TRAIN.r1_interval)

    def reg(d):
        r1 = losses.r1_penalty(lambda x: logits(d, x), reals)
        lip = losses.lipschitz_penalty(lambda x: logits(d, x), reals, fakes, n.lipschitz)
        return (r1 * TRAIN.r1_gamma / 2 + lip * TRAIN.lipschitz_weight) * TRAIN.r1_interval

    d_params, d_adam = _adam(d_params, jax.grad(reg)(d_params), d_adam, TRAIN.d_lr, TRAIN.r1_interval)
    seen = state.step.astype(jnp.float32) * BATCH
    beta = 0.5 ** (BATCH / jnp.maximum(jnp.minimum(TRAIN.ema_kimg * 1000, seen * TRAIN.ema_rampup), 1e-8))
    ema = jax.tree.map(lambda e, p: p + beta * (e - p), state.ema_params, g_params)
    return dict(g_params=g_params, d_params=d_params, ema_params=ema, w_avg=w_avg, pl_mean=pl_mean,
                g_mu=g_adam[1], d_nu=d_adam[2]), beta


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)]).astype(np.float64)


def _compared(state) -> list[tuple[str, object]]:
    return [("g_params", state.g_params), ("d_params", state.d_params), ("ema_params", state.ema_params),
            ("w_avg", state.g_buffers["mapping"]["w_avg"]), ("pl_mean", state.pl_mean),
            ("g_mu", state.g_opt_state[0].mu), ("d_nu", state.d_opt_state[0].nu)]


def _check_step(state):
    """Run the step from `state` and compare it with the hand computation; returns the step's metrics."""
    mesh, _, _, reals, _, step, _ = _setup()
    with jax.set_mesh(mesh):
        n = step_lib.step_noise(state.rng, BATCH, BATCH // TRAIN.pl_batch_shrink, MODEL.z_dim)
        want, beta = _by_hand(state, reals, n)
        new, metrics = step(state, reals)
    for (name, before), (_, after) in zip(_compared(state), _compared(new)):
        # Measured: 1e-6 to 6e-6 of the update's norm (fusion order); a changed scale or order moves it by >1%.
        change = np.linalg.norm(_flat(want[name]) - _flat(before))
        assert np.linalg.norm(_flat(after) - _flat(want[name])) <= 1e-4 * change, name
    np.testing.assert_allclose(metrics["ema_beta"], beta, rtol=1e-6)
    assert int(new.step) == int(state.step) + 1
    return metrics


@pytest.mark.slow
def test_first_step_matches_hand_computed_updates():
    *_, state, _, _ = _setup()
    metrics = _check_step(state)
    assert float(metrics["ema_beta"]) == 0.0  # no images seen yet: the EMA starts as G
    # Every regulariser is active, so dropping one of their scalings would show.
    assert float(metrics["pl_penalty"]) > 0 and float(metrics["r1"]) > 0 and float(metrics["lipschitz"]) > 0


@pytest.mark.parametrize("step, beta", [(100, 0.5 ** (1 / (100 * 0.05))), (1000, 0.5 ** (BATCH / 100))],
                         ids=["ramping-up", "ramped-up"])
@pytest.mark.slow
def test_later_steps_match_hand_computed_updates(step, beta):
    """β ramps with the images seen before the step (half-life 5% of them), then stays at ema_kimg's."""
    *_, state, _, _ = _setup()
    state = _placed(state.replace(step=jnp.int32(step), ema_params=jax.tree.map(lambda p: 0.5 * p - 0.1,
                                                                                state.g_params)))
    metrics = _check_step(state)
    np.testing.assert_allclose(metrics["ema_beta"], beta, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("step, g_reg, d_reg", [(1, False, False), (2, True, False), (4, True, True)])
def test_lazy_regularisers_run_every_interval(step, g_reg, d_reg):
    mesh, _, _, reals, state, train_step, _ = _setup()
    with jax.set_mesh(mesh):
        new, metrics = train_step(_placed(state.replace(step=jnp.int32(step))), reals)
    assert np.isfinite(metrics["pl_penalty"]) == g_reg and (float(new.pl_mean) != 0) == g_reg
    assert np.isfinite(metrics["r1"]) == np.isfinite(metrics["lipschitz"]) == d_reg
    assert int(new.g_opt_state[0].count) == 1 + g_reg and int(new.d_opt_state[0].count) == 1 + d_reg


def _changed(before, after) -> dict[str, bool]:
    return {jax.tree_util.keystr(path): not np.array_equal(a, b) for (path, a), b in
            zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after))}


@pytest.mark.slow
def test_generator_phases():
    mesh, _, _, _, state, _, phases = _setup()
    with jax.set_mesh(mesh):
        n = step_lib.step_noise(state.rng, BATCH, BATCH // 2, MODEL.z_dim)
        g_params, buffers, opt, metrics = jax.jit(phases.g_main)(
            state.g_params, state.g_buffers, state.g_opt_state, state.d_params, n.g_z, n.g_mix, n.g_noise)
        reg_params, reg_buffers, reg_opt, pl_mean, reg_metrics = jax.jit(phases.g_reg)(
            state.g_params, state.g_buffers, state.g_opt_state, state.pl_mean, n.pl_z, n.pl_mix, n.pl_noise,
            n.pl_projection)
    assert jax.tree.map(jnp.shape, g_params) == jax.tree.map(jnp.shape, state.g_params)
    assert np.isfinite(metrics["g_loss"]) and metrics["g_grad_norm"] > 0 and int(opt[0].count) == 1
    assert all(_changed(state.g_params, g_params).values())
    changed = _changed(state.g_buffers, buffers)  # w_avg only, never the constant noise maps
    assert changed.pop("['mapping']['w_avg']") and not any(changed.values())
    # The path length does not depend on the ToRGB biases (constants added to the image): G reg leaves them.
    changed = _changed(state.g_params, reg_params)
    assert {k for k, v in changed.items() if not v} == {k for k in changed if k.endswith("['torgb']['bias']")}
    assert pl_mean > 0  # from 0 by pl_decay × the mean path length
    assert reg_metrics["pl_penalty"] > 0 and int(reg_opt[0].count) == 1
    assert _changed(state.g_buffers, reg_buffers)["['mapping']['w_avg']"]


@pytest.mark.slow
def test_discriminator_phases():
    mesh, _, _, reals, state, _, phases = _setup()
    with jax.set_mesh(mesh):
        n = step_lib.step_noise(state.rng, BATCH, BATCH // 2, MODEL.z_dim)
        d_params, opt, buffers, fakes, _, metrics = jax.jit(phases.d_main)(
            state.d_params, state.d_opt_state, state.g_params, state.g_buffers, reals, n.d_z, n.d_mix, n.d_noise)
        reg_params, reg_opt, reg_metrics = jax.jit(phases.d_reg)(
            state.d_params, state.d_opt_state, reals, fakes, n.lipschitz)
    assert fakes.shape == reals.shape and fakes.dtype == jnp.float32
    assert all(_changed(state.d_params, d_params).values()) and int(opt[0].count) == 1
    assert metrics["d_loss"] > 0 and np.isfinite(metrics["d_real"]) and np.isfinite(metrics["d_fake"])
    assert _changed(state.g_buffers, buffers)["['mapping']['w_avg']"]  # D main's mapping call tracks w_avg too
    # R1 and the Lipschitz penalty are input gradients; past mbstd (its last smooth non-linearity) D is
    # piecewise linear, so the biases there only move lrelu kinks: zero gradient, and D reg leaves them.
    changed = _changed(state.d_params, reg_params)
    assert {k for k, v in changed.items() if not v} == {f"['b4']['{name}']['bias']" for name in ("conv", "fc", "out")}
    assert reg_metrics["r1"] > 0 and reg_metrics["lipschitz"] > 0 and int(reg_opt[0].count) == 1


def test_step_noise_draws_independent_latents():
    mesh, *_ = _setup()
    with jax.set_mesh(mesh):
        n = step_lib.step_noise(jax.random.key_data(jax.random.key(3)), BATCH, 4, MODEL.z_dim)
    assert n.g_z.shape == n.d_z.shape == (BATCH, MODEL.z_dim) and n.pl_z.shape == (4, MODEL.z_dim)
    assert not np.allclose(n.g_z, n.d_z) and not np.allclose(n.g_z[:4], n.pl_z)


def test_the_step_is_keyed_by_what_defines_it_so_runs_that_differ_in_schedule_share_one_build():
    import dataclasses

    import ml_collections

    from gandl.train import loop

    listed = ml_collections.ConfigDict(dict(dataclasses.asdict(TRAIN), augment_transforms=["xflip"], steps=10))
    mesh = sharding.make_mesh(jax.devices()[:1])
    short, longer = (step_lib.step_config(Train.from_mapping(dict(listed, steps=n))) for n in (10, 20_000))
    assert short == longer and hash(short) == hash(longer) and short.augment_transforms == ("xflip",)
    assert loop.compiled_step(MODEL, short, mesh) is loop.compiled_step(MODEL, longer, mesh)
    assert step_lib.step_config(dataclasses.replace(TRAIN, r1_gamma=1.0)) != step_lib.step_config(TRAIN)
