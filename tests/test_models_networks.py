"""Generator / discriminator behaviour: shapes, mapping, w_avg, truncation, mixing, mbstd override, dtype, jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandl.models import ModelConfig, build_models, init_variables, mix_styles, pytorch
from gandl.models.discriminator import block_dtype
from gandl.models.generator import num_ws

TINY = ModelConfig(resolution=16, num_channels=5, z_dim=16, w_dim=16, channel_base=256, channel_max=16)


def random_variables(shapes, seed: int = 0):
    """Variables of the given abstract shapes from numpy draws, near a trained network's scale: kernels,
    consts and noise maps N(0, 1); biases, noise strengths and w_avg N(0, 0.1²) (non-zero, so each matters);
    style biases 1 + N(0, 0.1²). Avoids the jitted flax init, whose PRNG code is slow to compile on CPU."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [entry.key for entry in path]
        small = names[-1] in ("bias", "noise_strength", "w_avg")
        value = rng.normal(size=leaf.shape) * (0.1 if small else 1.0) + (names[-2:] == ["affine", "bias"])
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def _tiny(dtype="float32"):
    cfg = ModelConfig(**{**TINY.__dict__, "dtype": dtype})
    generator, discriminator = build_models(cfg)
    g_shapes, d_shapes = pytorch.variable_shapes(cfg)
    return generator, discriminator, random_variables(g_shapes, 0), random_variables(d_shapes, 1)


def test_init_variables():
    # unsafe_rbg: flax derives one key per parameter, and threefry's code is slow to compile on CPU.
    cfg = ModelConfig(**{**TINY.__dict__, "resolution": 8})
    g_vars, d_vars = init_variables(cfg, jax.random.key(0, impl="unsafe_rbg"))
    assert set(g_vars) == {"params", "buffers"} and set(d_vars) == {"params"}
    assert not jnp.any(g_vars["buffers"]["mapping"]["w_avg"])
    layer = g_vars["params"]["synthesis"]["b8"]["conv0"]
    assert float(layer["noise_strength"]) == 0.0 and jnp.all(layer["affine"]["bias"] == 1.0)
    assert 50 < float(jnp.std(g_vars["params"]["mapping"]["fc1"]["weight"])) < 200  # N(0, 1) / 0.01
    noise = g_vars["buffers"]["synthesis"]["b8"]["conv1"]["noise_const"]
    assert noise.shape == (8, 8) and 0.5 < float(jnp.std(noise)) < 1.5


def _z(batch, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, TINY.z_dim))


@functools.cache
def _forward(dtype):
    """Mapping, synthesis (const noise) and D for a fixed latent batch, one compile per dtype."""
    generator, discriminator, g_vars, d_vars = _tiny(dtype)

    @jax.jit
    def forward(z):
        ws = generator.apply(g_vars, z, method="map")
        img = generator.apply(g_vars, ws, "const", method="synthesize")
        return ws, img, discriminator.apply(d_vars, img), discriminator.apply(d_vars, img, method="features")

    return forward(_z(4))


def test_shapes_and_num_ws():
    ws, img, logits, features = _forward("float32")
    assert ws.shape == (4, num_ws(16), 16) == (4, 6, 16)
    assert img.shape == (4, 16, 16, 5) and img.dtype == jnp.float32
    assert logits.shape == (4, 1) and features.shape == (4, 16)


def test_features_are_512d_with_stylegan2_widths():
    cfg = ModelConfig(resolution=256)  # 256 px, 5 channels, channel_base 16384, channel_max 512
    _, discriminator = build_models(cfg)
    _, d_shapes = pytorch.variable_shapes(cfg)
    images = jax.ShapeDtypeStruct((3, 256, 256, 5), jnp.float32)
    out = jax.eval_shape(functools.partial(discriminator.apply, method="features"), d_shapes, images)
    assert out.shape == (3, 512) and out.dtype == jnp.float32


def test_mapping_normalises_z():
    generator, _, g_vars, _ = _tiny()
    z = _z(3)
    scaled = z * jnp.asarray([[0.5], [7.0], [300.0]])  # (the 1e-8 epsilon matters below ~0.1)
    np.testing.assert_allclose(
        generator.apply(g_vars, z, method="map"), generator.apply(g_vars, scaled, method="map"), rtol=1e-5, atol=1e-6
    )


def test_w_avg_update_and_truncation():
    generator, _, g_vars, _ = _tiny()
    z = _z(8)
    ws, mutated = generator.apply(g_vars, z, update_w_avg=True, method="map", mutable=["buffers"])
    w_avg = mutated["buffers"]["mapping"]["w_avg"]
    old = g_vars["buffers"]["mapping"]["w_avg"]
    np.testing.assert_allclose(w_avg, ws[:, 0].mean(0) + 0.995 * (old - ws[:, 0].mean(0)), rtol=1e-5, atol=1e-7)
    variables = {"params": g_vars["params"], "buffers": mutated["buffers"]}
    truncated = generator.apply(variables, z, 0.0, 2, method="map")
    np.testing.assert_allclose(truncated[:, :2], jnp.broadcast_to(w_avg, (8, 2, 16)), atol=1e-6)
    np.testing.assert_array_equal(truncated[:, 2:], ws[:, 2:])
    half = generator.apply(variables, z, 0.5, method="map")
    np.testing.assert_allclose(half, w_avg + 0.5 * (ws - w_avg), rtol=1e-5, atol=1e-6)


def test_style_mixing():
    generator, _, g_vars, _ = _tiny()
    ws, ws2 = generator.apply(g_vars, _z(2, 1), method="map"), generator.apply(g_vars, _z(2, 2), method="map")
    mixed = mix_styles(ws, ws2, 4)
    np.testing.assert_array_equal(mixed[:, :4], ws[:, :4])
    np.testing.assert_array_equal(mixed[:, 4:], ws2[:, 4:])
    z = _z(2)
    never = generator.apply(g_vars, z, jax.random.key(3), 0.0, method="map_mixed")
    np.testing.assert_array_equal(never, generator.apply(g_vars, z, method="map"))
    always = [generator.apply(g_vars, z, jax.random.key(k), 1.0, method="map_mixed") for k in range(4)]
    for sample in always:
        np.testing.assert_array_equal(sample[:, 0], never[:, 0])  # cutoff >= 1
        assert not np.allclose(sample[:, -1], never[:, -1])
    np.testing.assert_array_equal(always[0], generator.apply(g_vars, z, jax.random.key(0), 1.0, method="map_mixed"))


def test_random_noise_uses_explicit_key():
    generator, _, g_vars, _ = _tiny()  # noise strengths are non-zero
    ws = generator.apply(g_vars, _z(2), method="map")
    synthesize = jax.jit(
        lambda key, mode: generator.apply(g_vars, ws, mode, method="synthesize", rngs={"noise": key}),
        static_argnums=1,
    )
    a, b = synthesize(jax.random.key(1), "random"), synthesize(jax.random.key(2), "random")
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, synthesize(jax.random.key(1), "random"))
    const, none = synthesize(jax.random.key(1), "const"), synthesize(jax.random.key(1), "none")
    assert not np.allclose(const, none) and not np.allclose(a, none)


def test_mbstd_group_size_one_makes_features_batch_independent():
    _, discriminator, _, d_vars = _tiny()
    images = jax.random.uniform(jax.random.key(4), (8, 16, 16, 5), minval=-1, maxval=1)
    other = images.at[1:].set(-images[1:])
    features = jax.jit(
        lambda x, group: discriminator.apply(d_vars, x, group, method="features"), static_argnums=1
    )
    np.testing.assert_allclose(features(images, 1)[0], features(other, 1)[0], rtol=1e-6)
    assert not np.allclose(features(images, 4)[0], features(other, 4)[0])  # the configured group size mixes


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    _, _, g_vars, d_vars = _tiny("bfloat16")
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves((g_vars, d_vars)))
    (ws_bf16, *out_bf16), (ws_f32, *out_f32) = _forward("bfloat16"), _forward("float32")
    np.testing.assert_array_equal(ws_bf16, ws_f32)  # the mapping network always runs in float32
    assert all(out.dtype == jnp.float32 for out in out_bf16)
    (img, _, features), (img_ref, _, features_ref) = out_bf16, out_f32  # logits: a small difference, skipped
    for got, ref in ((img, img_ref), (features, features_ref)):
        error = float(jnp.mean(jnp.abs(got - ref)))
        assert 0 < error < 0.05 * float(jnp.mean(jnp.abs(ref)))  # bf16 round-off: ~1% relative


def test_bfloat16_discriminator_keeps_the_epilogue_float32():
    """As stylegan2-ada-pytorch: reduced precision in the top blocks only; b4 (the embedding) in float32."""
    assert [block_dtype(r, 256, jnp.bfloat16) for r in (256, 128, 64, 32, 16, 8)] == [jnp.bfloat16] * 4 + [
        jnp.float32] * 2
    assert [block_dtype(r, 32, jnp.bfloat16) for r in (32, 16, 8)] == [jnp.bfloat16] * 3  # never below 8 px
    _, discriminator, _, d_vars = _tiny("bfloat16")
    _, discriminator_f32, _, _ = _tiny()
    images = jax.random.uniform(jax.random.key(5), (8, 16, 16, 5), minval=-1, maxval=1)
    features, inter = jax.jit(lambda x: discriminator.apply(
        d_vars, x, method="features", capture_intermediates=True, mutable=["intermediates"]))(images)
    inter = inter["intermediates"]
    assert inter["b16"]["__call__"][0].dtype == inter["b8"]["__call__"][0].dtype == jnp.bfloat16
    assert inter["b4"]["conv"]["__call__"][0].dtype == inter["b4"]["fc"]["__call__"][0].dtype == jnp.float32
    reference = jax.jit(lambda x: discriminator_f32.apply(d_vars, x, method="features"))(images)
    error = np.abs(np.asarray(features) - np.asarray(reference))
    assert 0 < error.max() < 0.02 * np.abs(np.asarray(reference)).max(), error.max()  # measured 0.5%
    cosine = np.sum(features * reference, 1) / np.linalg.norm(features, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.9999, cosine.min()  # measured 1 - 2e-5


def test_discriminator_rejects_wrong_input_shape():
    _, discriminator, _, d_vars = _tiny()
    with pytest.raises(ValueError):
        discriminator.apply(d_vars, jnp.zeros((2, 16, 16, 3)))


def test_config_validation_and_mapping_input():
    assert ModelConfig.from_mapping({"resolution": 64, "num_channels": 6}).resolution == 64
    with pytest.raises(ValueError):
        ModelConfig.from_mapping({"resolutoin": 64})
    with pytest.raises(ValueError):
        ModelConfig(resolution=48)
    with pytest.raises(ValueError):
        ModelConfig(dtype="float16")


def _jit_forward(cfg: ModelConfig, batch: int):
    """Lower and compile one G → D forward (random noise) for a config, from abstract variables."""
    generator, discriminator = build_models(cfg)
    g_shapes, d_shapes = pytorch.variable_shapes(cfg)

    def forward(g_vars, d_vars, z, key):
        img = generator.apply(g_vars, z, rngs={"noise": key})
        return discriminator.apply(d_vars, img), discriminator.apply(d_vars, img, 1, method="features")

    z = jax.ShapeDtypeStruct((batch, cfg.z_dim), jnp.float32)
    return jax.jit(forward).lower(g_shapes, d_shapes, z, jax.random.key(0)).compile()


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [ModelConfig(resolution=16), ModelConfig(resolution=256)], ids=["16px", "256px"])
def test_jit_compiles(cfg):
    compiled = _jit_forward(cfg, batch=4)
    logits, features = compiled.out_info
    assert logits.shape == (4, 1) and features.shape == (4, 512)
