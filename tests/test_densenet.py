"""DenseNet-121 comparator: architecture, torchvision state-dict conversion, BatchNorm modes, fine-tuning.

A full DenseNet-121 gradient compiles in ~2 minutes on a 2-core CPU, so the 121 is checked by shape
(jax.eval_shape) and everything that runs uses a one-layer-per-block variant of the same code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandl.models import densenet

SMALL = (1, 1, 1, 1)


@pytest.fixture(scope="module")
def small() -> tuple[densenet.DenseNet, dict]:
    """A one-layer-per-block DenseNet with the fine-tuning head (C+ / C-), randomly initialised."""
    model = densenet.DenseNet(blocks=SMALL, num_classes=2)
    return model, densenet.init(model, jax.random.key(0), (16, 16, 5))


@pytest.mark.slow
def test_densenet121_features_are_1024d_and_its_state_dict_is_torchvisions():
    model = densenet.DenseNet()
    for side in (16, 224):
        features, logits = jax.eval_shape(
            lambda key, s=side: model.apply(densenet.init(model, key, (s, s, 5)), jnp.zeros((2, s, s, 5))),
            jax.random.key(0))
        assert features.shape == (2, 1024) and logits.shape == (2, 1000)
    shapes = densenet.state_dict_shapes(model)
    assert len(shapes) == 606  # torchvision's 727 keys less its 121 num_batches_tracked counters
    assert shapes["features.conv0.weight"] == (64, 3, 7, 7)
    assert shapes["features.norm0.running_var"] == (64,)
    assert shapes["features.denseblock1.denselayer1.conv1.weight"] == (128, 64, 1, 1)
    assert shapes["features.denseblock4.denselayer16.conv2.weight"] == (32, 128, 3, 3)
    assert shapes["features.transition3.conv.weight"] == (512, 1024, 1, 1)
    assert shapes["features.norm5.weight"] == (1024,)
    assert shapes["classifier.weight"] == (1000, 1024)
    weights = sum(int(np.prod(s)) for k, s in shapes.items() if "running" not in k)
    assert weights == 7_978_856  # torchvision densenet121's parameter count


def _synthetic_state_dict(model: densenet.DenseNet, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {key: rng.normal(size=shape).astype(np.float32) for key, shape in densenet.state_dict_shapes(model).items()}


def test_state_dict_round_trip(small, tmp_path):
    model, variables = small
    state = _synthetic_state_dict(model)
    state["features.norm0.num_batches_tracked"] = np.array(7)  # torchvision's counters are ignored
    path = tmp_path / "densenet.npz"
    np.savez(path, **state)
    imported = densenet.load_imagenet(path, variables, with_head=True)
    exported = densenet.to_state_dict(imported)
    assert set(exported) == set(state) - {"features.norm0.num_batches_tracked"}
    for key, value in exported.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    kernel = imported["params"]["denseblock2"]["denselayer1"]["conv2"]["kernel"]  # HWIO
    np.testing.assert_array_equal(kernel, state["features.denseblock2.denselayer1.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(imported["batch_stats"]["norm5"]["var"], state["features.norm5.running_var"])
    np.testing.assert_array_equal(imported["params"]["adapter"]["kernel"], variables["params"]["adapter"]["kernel"])
    # Without the head, the ImageNet classifier is skipped and the model's own (2 classes) kept.
    imagenet_sized = _synthetic_state_dict(densenet.DenseNet(blocks=SMALL), seed=2)
    backbone_only = densenet.from_state_dict(imagenet_sized, variables, with_head=False)
    np.testing.assert_array_equal(backbone_only["params"]["classifier"]["kernel"],
                                  variables["params"]["classifier"]["kernel"])
    np.testing.assert_array_equal(backbone_only["params"]["conv0"]["kernel"],
                                  imagenet_sized["features.conv0.weight"].transpose(2, 3, 1, 0))


def test_state_dict_errors_list_every_mismatch(small):
    model, variables = small
    state = _synthetic_state_dict(model)
    del state["features.norm5.bias"]
    state["features.conv0.weight"] = state["features.conv0.weight"][:, :, :3, :3]
    state["features.denseblock9.denselayer1.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError) as error:
        densenet.from_state_dict(state, variables)
    message = str(error.value)
    assert "features.norm5.bias: missing" in message
    assert "features.conv0.weight: shape (64, 3, 3, 3), expected (64, 3, 7, 7)" in message
    assert "features.denseblock9.denselayer1.conv1.weight: unexpected key" in message
    with pytest.raises(ValueError, match="classifier.weight: shape"):  # the ImageNet head into a 2-class model
        densenet.from_state_dict(_synthetic_state_dict(densenet.DenseNet(blocks=SMALL)), variables)


def test_batchnorm_inference_is_per_image_and_training_updates_running_stats(small):
    model, variables = small
    images = jax.random.uniform(jax.random.key(1), (8, 16, 16, 5), minval=-1, maxval=1)
    batch, other = images[:4], images[4:].at[0].set(images[0])  # image 0 among different batch-mates
    infer = jax.jit(lambda x: model.apply(variables, x)[0])
    train = jax.jit(lambda x: model.apply(variables, x, True, mutable=["batch_stats"]))
    np.testing.assert_allclose(infer(batch)[0], infer(other)[0], atol=1e-5)  # inference: running stats
    (train_batch, _), updates = train(batch)
    (train_other, _), _ = train(other)
    assert np.abs(train_batch[0] - train_other[0]).max() > 1e-3  # training: batch statistics
    before, after = variables["batch_stats"]["norm0"]["mean"], updates["batch_stats"]["norm0"]["mean"]
    assert np.abs(after - before).max() > 0


@pytest.mark.slow
def test_fine_tuning_on_the_controls_separates_them(small, shards_dir):
    from gandl import sharding
    from gandl.data import pipeline
    from gandl.features import imagenet

    model, before = small
    spec, mesh = pipeline.open_shards(shards_dir), sharding.make_mesh()
    # 24 controls (3 batches) in the tiny screen, a random backbone: many short epochs, a large step.
    settings = imagenet.FineTuneConfig(epochs=10, batch_size=8, learning_rate=0.1, blocks=SMALL, pool_batches=2)
    after = imagenet.fine_tune(model, before, spec, mesh, settings, 0, pipeline.InputOptions())
    (loss_before, accuracy_before), (loss_after, accuracy_after) = (
        imagenet.evaluate(model, v, spec, mesh, settings, pipeline.InputOptions()) for v in (before, after))
    assert loss_after < 0.92 * loss_before and accuracy_after > accuracy_before
    frozen = ("conv0", "denseblock1", "norm5")
    for name in frozen:  # only the adapter and the head learn unless train_backbone
        jax.tree.map(np.testing.assert_array_equal, after["params"][name], before["params"][name])
    assert np.abs(after["params"]["adapter"]["kernel"] - before["params"]["adapter"]["kernel"]).max() > 0
    features = imagenet.feature_fn(model, after, mesh)(np.zeros((8, 16, 16, 5), np.float32))
    assert features.shape == (8, 68) and np.isfinite(features).all()  # 36 channels + 32 from the last layer


def test_control_labels_follow_control_roles():
    from gandl.data import screen
    from gandl.features import imagenet

    batch = {"site_id": np.array([b"E_1_A01_1", b"E_1_A02_1", b"E_2_A03_1", b"E_2_A04_1", b""], dtype=object),
             "cell_type": np.array([b"HRCE"] * 5, dtype=object), "experiment": np.array([b"E"] * 5, dtype=object),
             "plate": np.array([1, 1, 2, 2, 0]), "well": np.array([b"A01", b"A02", b"A03", b"A04", b""], dtype=object),
             "site": np.array([1, 1, 1, 1, 0]),
             "disease_condition": np.array([b"Mock", b"Active SARS-CoV-2", b"Mock", b"UV Inactivated SARS-CoV-2",
                                            b"Mock"], dtype=object),
             "treatment": np.array([b"", b"", b"Remdesivir", b"", b""], dtype=object),
             "treatment_conc": np.array([np.nan, np.nan, 1.0, np.nan, np.nan]),
             "mask": np.array([True, True, True, True, False])}
    np.testing.assert_array_equal(imagenet.control_labels(batch), [0, 1, -1, -1, -1])
    uv = imagenet.Controls(schema=screen.PRESETS["rxrx19a_uv"])
    np.testing.assert_array_equal(imagenet.control_labels(batch, uv), [0, 1, -1, 0, -1])
    # A screen in its own columns: its schema's queries say the controls, its plates are what a fold holds out.
    foreign = {"Metadata_Plate": np.array([b"P1", b"P1", b"P2", b"P2", b""], dtype=object),
               "Metadata_Well": batch["well"], "Metadata_Site": batch["site"],
               "Metadata_Compound": np.array([b"staurosporine", b"DMSO", b"DMSO", b"cpd7", b""], dtype=object),
               "mask": batch["mask"]}
    schema = screen.ScreenSchema(plate="Metadata_Plate", well="Metadata_Well", site="Metadata_Site",
                                 perturbation="Metadata_Compound", positive="Metadata_Compound == 'staurosporine'",
                                 negative="Metadata_Compound == 'DMSO'")
    np.testing.assert_array_equal(imagenet.control_labels(foreign, imagenet.Controls(schema=schema)), [0, 1, 1, -1, -1])
    held_out = imagenet.Controls(held_out=("screen_P2",), schema=schema)  # the analysis' plate names (screen_view)
    np.testing.assert_array_equal(imagenet.control_labels(foreign, held_out), [0, 1, -1, -1, -1])
