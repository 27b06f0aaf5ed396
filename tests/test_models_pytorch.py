"""stylegan2-ada-pytorch state-dict conversion: key/shape table, layouts, round trips, and output parity with
the official networks (fixtures in tests/data/sg2ada_*, produced by NVlabs/stylegan2-ada-pytorch@d72cc7d)."""

import functools
import json
import pathlib

import jax
import numpy as np
import pytest

from gandl.models import ModelConfig, build_models, mix_styles, pytorch

DATA = pathlib.Path(__file__).parent / "data"
FIXTURES = ["sg2ada_32px_5ch", "sg2ada_64px_6ch_map8"]
TINY = ModelConfig(resolution=16, num_channels=3, z_dim=8, w_dim=8, channel_base=128, channel_max=8)


def expected_table(res, img_channels, z_dim, w_dim, mapping_layers, channel_base, channel_max):
    """The PyTorch state-dict key → shape table, written out from the reference architecture."""

    def ch(r):
        return min(channel_base // r, channel_max)

    table = {"G/mapping.w_avg": (w_dim,)}
    for i in range(mapping_layers):
        table[f"G/mapping.fc{i}.weight"] = (w_dim, z_dim if i == 0 else w_dim)
        table[f"G/mapping.fc{i}.bias"] = (w_dim,)
    r = 4
    while r <= res:
        block = f"G/synthesis.b{r}"
        table[f"{block}.resample_filter"] = (4, 4)
        if r == 4:
            table[f"{block}.const"] = (ch(4), 4, 4)
            convs = [("conv1", ch(4), ch(4))]
        else:
            convs = [("conv0", ch(r // 2), ch(r)), ("conv1", ch(r), ch(r))]
        for name, cin, cout in convs:
            layer = f"{block}.{name}"
            table.update({
                f"{layer}.weight": (cout, cin, 3, 3), f"{layer}.bias": (cout,), f"{layer}.noise_strength": (),
                f"{layer}.noise_const": (r, r), f"{layer}.resample_filter": (4, 4),
                f"{layer}.affine.weight": (cin, w_dim), f"{layer}.affine.bias": (cin,),
            })
        table.update({
            f"{block}.torgb.weight": (img_channels, ch(r), 1, 1), f"{block}.torgb.bias": (img_channels,),
            f"{block}.torgb.affine.weight": (ch(r), w_dim), f"{block}.torgb.affine.bias": (ch(r),),
        })
        r *= 2
    r = res
    while r >= 8:
        block = f"D/b{r}"
        table[f"{block}.resample_filter"] = (4, 4)
        if r == res:
            table.update({f"{block}.fromrgb.weight": (ch(r), img_channels, 1, 1), f"{block}.fromrgb.bias": (ch(r),),
                          f"{block}.fromrgb.resample_filter": (4, 4)})
        table.update({
            f"{block}.conv0.weight": (ch(r), ch(r), 3, 3), f"{block}.conv0.bias": (ch(r),),
            f"{block}.conv0.resample_filter": (4, 4),
            f"{block}.conv1.weight": (ch(r // 2), ch(r), 3, 3), f"{block}.conv1.bias": (ch(r // 2),),
            f"{block}.conv1.resample_filter": (4, 4),
            f"{block}.skip.weight": (ch(r // 2), ch(r), 1, 1), f"{block}.skip.resample_filter": (4, 4),
        })
        r //= 2
    table.update({
        "D/b4.conv.weight": (ch(4), ch(4) + 1, 3, 3), "D/b4.conv.bias": (ch(4),), "D/b4.conv.resample_filter": (4, 4),
        "D/b4.fc.weight": (ch(4), ch(4) * 16), "D/b4.fc.bias": (ch(4),), "D/b4.out.weight": (1, ch(4)),
        "D/b4.out.bias": (1,),
    })
    return table


def test_key_shape_table_256px_5ch():
    table = pytorch.state_dict_shapes(ModelConfig(resolution=256))  # 256 px, 5 channels, 3-layer mapping, 512-d z/w
    assert table == expected_table(256, 5, 512, 512, 3, 16384, 512)
    assert table["D/b4.fc.weight"] == (512, 8192)
    assert table["D/b256.fromrgb.weight"] == (64, 5, 1, 1)
    assert table["G/synthesis.b256.torgb.weight"] == (5, 64, 1, 1)
    assert table["G/synthesis.b8.conv1.affine.weight"] == (512, 512)
    assert "G/mapping.fc3.weight" not in table


@functools.cache
def _tiny_variables():
    rng = np.random.default_rng(0)
    shapes = pytorch.variable_shapes(TINY)
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def test_layouts_and_round_trip():
    g_vars, d_vars = _tiny_variables()
    g_sd, d_sd = pytorch.to_state_dict(g_vars), pytorch.to_state_dict(d_vars)
    ours = g_vars["params"]["synthesis"]["b8"]["conv0"]["weight"]  # HWIO
    np.testing.assert_array_equal(g_sd["synthesis.b8.conv0.weight"][5, 2, 0, 1], ours[0, 1, 2, 5])
    np.testing.assert_array_equal(g_sd["mapping.fc1.weight"], g_vars["params"]["mapping"]["fc1"]["weight"].T)
    const = g_vars["params"]["synthesis"]["b4"]["const"]  # HWC
    np.testing.assert_array_equal(g_sd["synthesis.b4.const"][3], const[:, :, 3])
    noise_const = g_vars["buffers"]["synthesis"]["b4"]["conv1"]["noise_const"]
    np.testing.assert_array_equal(g_sd["synthesis.b4.conv1.noise_const"], noise_const)
    fir = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
    np.testing.assert_array_equal(g_sd["synthesis.b16.conv1.resample_filter"], fir)
    assert "synthesis.b16.torgb.resample_filter" not in g_sd and "b4.resample_filter" not in d_sd
    # The epilogue fc sees an NCHW flatten in PyTorch and an NHWC flatten here: same linear map.
    x = np.random.default_rng(1).normal(size=(4, 4, 8))  # H, W, C: the b4 conv output
    ours_fc = d_vars["params"]["b4"]["fc"]["weight"]
    np.testing.assert_allclose(d_sd["b4.fc.weight"] @ x.transpose(2, 0, 1).ravel(), x.ravel() @ ours_fc, rtol=1e-5)
    g_shapes, d_shapes = pytorch.variable_shapes(TINY)
    for variables, state_dict, template in ((g_vars, g_sd, g_shapes), (d_vars, d_sd, d_shapes)):
        back = pytorch.from_state_dict(state_dict, template)
        jax.tree_util.tree_map(np.testing.assert_array_equal, back, variables)


def test_import_rejects_mismatches():
    _, d_vars = _tiny_variables()
    _, template = pytorch.variable_shapes(TINY)
    good = pytorch.to_state_dict(d_vars)
    broken = [
        {k: v for k, v in good.items() if k != "b4.out.bias"},
        {**good, "b4.extra.weight": np.zeros(3)},
        {**good, "b16.conv0.weight": np.zeros((8, 8, 3, 1))},
        {**good, "b16.conv0.resample_filter": np.ones((4, 4)) / 16},
    ]
    for state_dict in broken:
        with pytest.raises(ValueError):
            pytorch.from_state_dict(state_dict, template)


def test_load_state_dict_npz_and_pt(tmp_path):
    g_vars, _ = _tiny_variables()
    state_dict = pytorch.prefixed(pytorch.to_state_dict(g_vars), "G/")
    np.savez(tmp_path / "sd.npz", **state_dict)
    loaded = pytorch.load_state_dict(tmp_path / "sd.npz")
    assert loaded.keys() == state_dict.keys()
    assert pytorch.unprefixed(loaded, "G/").keys() == pytorch.to_state_dict(g_vars).keys()
    try:
        import torch
    except ImportError:
        with pytest.raises(ImportError):
            pytorch.load_state_dict(tmp_path / "sd.pt")
        return
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, tmp_path / "sd.pt")
    for key, value in pytorch.load_state_dict(tmp_path / "sd.pt").items():
        np.testing.assert_array_equal(value, state_dict[key])


@functools.cache
def _fixture(name):
    meta = json.loads((DATA / f"{name}.json").read_text())
    g, d = meta["G"], meta["D"]
    cfg = ModelConfig(
        resolution=g["img_resolution"], num_channels=g["img_channels"], z_dim=g["z_dim"], w_dim=g["w_dim"],
        mapping_layers=g["mapping_layers"], channel_base=g["channel_base"], channel_max=g["channel_max"],
        conv_clamp=g["conv_clamp"], mbstd_group_size=d["mbstd_group_size"],
        mbstd_num_channels=d["mbstd_num_channels"],
    )
    data = pytorch.load_state_dict(DATA / f"{name}.npz")
    return meta, cfg, data, pytorch.import_networks(data, cfg)


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _assert_parity(got, want):
    """float32 round-off: measured max |Δ| 1.4e-5 and mean 1e-6 (64 px images); a real bug is far larger."""
    diff = np.abs(np.asarray(got, np.float64) - want)
    assert got.shape == want.shape
    assert diff.mean() < 5e-6 and diff.max() < 5e-5, (diff.mean(), diff.max())


@pytest.mark.parametrize("name", FIXTURES)
def test_export_reproduces_pytorch_state_dict(name):
    _, _, data, (g_vars, d_vars) = _fixture(name)
    exported = {**pytorch.prefixed(pytorch.to_state_dict(g_vars), "G/"),
                **pytorch.prefixed(pytorch.to_state_dict(d_vars), "D/")}
    reference = {k: v for k, v in data.items() if k.startswith(("G/", "D/"))}
    assert exported.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURES)
def test_parity_with_stylegan2_ada(name):
    meta, cfg, data, (g_vars, d_vars) = _fixture(name)
    generator, discriminator = build_models(cfg)
    cutoff = meta["style_mixing_cutoff"]

    @jax.jit
    def run(z, z2, d_images, g_images_ref):
        ws, ws2 = generator.apply(g_vars, z, method="map"), generator.apply(g_vars, z2, method="map")
        images = generator.apply(g_vars, ws, "const", method="synthesize")
        features_real = discriminator.apply(d_vars, d_images, method="features")
        return {
            "ws": ws,
            "ws_trunc": generator.apply(g_vars, z, meta["truncation_psi_for_ws_trunc"], method="map"),
            "images": images,
            "mixed": generator.apply(g_vars, mix_styles(ws, ws2, cutoff), "const", method="synthesize"),
            "d_logits": discriminator.apply(d_vars, d_images),
            "logits_from_features": features_real @ (data["D/b4.out.weight"].T / np.sqrt(features_real.shape[1]))
            + data["D/b4.out.bias"],
            "d_logits_of_g_images": discriminator.apply(d_vars, images),
            # The fixture's d_features are those of the generated images (its last D call), not of d_images.
            "d_features_of_g_images": discriminator.apply(d_vars, g_images_ref, method="features"),
        }

    with jax.default_matmul_precision("highest"):
        out = run(data["inputs/z"], data["inputs/z2"], _nhwc(data["inputs/d_images_nchw"]),
                  _nhwc(data["outputs/g_images_nchw_noise_const"]))
    _assert_parity(out["ws"], data["outputs/ws"])
    _assert_parity(out["ws_trunc"], data["outputs/ws_trunc0.7"])
    _assert_parity(out["images"], _nhwc(data["outputs/g_images_nchw_noise_const"]))
    _assert_parity(out["mixed"], _nhwc(data["outputs/g_images_mix_cutoff3_nchw"]))
    _assert_parity(out["d_logits"], data["outputs/d_logits"])
    _assert_parity(out["logits_from_features"], data["outputs/d_logits"])
    _assert_parity(out["d_logits_of_g_images"], data["outputs/d_logits_of_g_images"])
    _assert_parity(out["d_features_of_g_images"], data["outputs/d_features"])
