"""DenseNet-121 in Flax (torchvision's layout), behind a trainable 1×1 conv from our channels to RGB.

The ImageNet comparator of the paper: microscopy sites have 5 stains, ImageNet filters expect RGB, so a
learnt 1×1 conv (`adapter`) maps any channel count to 3 before the backbone. It starts as the channel
mean (a grey image), which ImageNet filters read sensibly before any fine-tuning.

Input mapping: our images are in [-1, 1]; the adapter's output x is taken to [0, 1] as (x + 1) / 2 and then
normalised with ImageNet's per-channel mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), exactly
the preprocessing torchvision's weights were trained with.

Sizes: the backbone downsamples 32× (stride-2 stem conv, max pool, three 2× average-pool transitions).
torchvision fails when a transition meets a 1×1 map (inputs under 32 px); here such a transition keeps the
1×1 map instead, so 16 px test inputs work. From 32 px up the network is torchvision's exactly.

Variable names follow torchvision's keys (`features.denseblock1.denselayer1.norm1.weight` is
params['denseblock1']['denselayer1']['norm1']['scale']), so the converter below is a renaming plus OIHW → HWIO.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gandl.models.pytorch import load_state_dict

DENSENET121_BLOCKS = (6, 12, 24, 16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000


def _norm(train: bool, name: str) -> nn.BatchNorm:
    """torchvision's BatchNorm2d: eps 1e-5, running stats updated with momentum 0.1 (flax: 0.9)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _conv(features: int, size: int, name: str, stride: int = 1) -> nn.Conv:
    pad = size // 2
    return nn.Conv(features, (size, size), strides=stride, padding=((pad, pad), (pad, pad)), use_bias=False,
                   name=name)


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (bottleneck) then BN-ReLU-3×3 conv; its `growth` channels join the block's stack."""

    growth: int
    bn_size: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = _conv(self.bn_size * self.growth, 1, "conv1")(nn.relu(_norm(train, "norm1")(x)))
        return _conv(self.growth, 3, "conv2")(nn.relu(_norm(train, "norm2")(y)))


class DenseBlock(nn.Module):
    """`layers` dense layers, each fed the concatenation of the block input and every earlier layer's output."""

    layers: int
    growth: int
    bn_size: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(1, self.layers + 1):
            x = jnp.concatenate([x, DenseLayer(self.growth, self.bn_size, name=f"denselayer{i}")(x, train)], axis=-1)
        return x


class Transition(nn.Module):
    """BN-ReLU-1×1 conv to `width` channels, then 2×2 average pooling (a 1×1 map stays 1×1: module docstring)."""

    width: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = _conv(self.width, 1, "conv")(nn.relu(_norm(train, "norm")(x)))
        window = min(2, x.shape[1], x.shape[2])
        return nn.avg_pool(x, (window, window), strides=(window, window))


class DenseNet(nn.Module):
    """Adapter → DenseNet backbone → (penultimate features, head logits).

    `blocks` (6, 12, 24, 16) is DenseNet-121 (1024-d features); smaller blocks give cheaper variants for tests.
    `num_classes` is the head: 1000 for the ImageNet classifier, 2 for fine-tuning on C+ / C- controls.
    """

    blocks: Sequence[int] = DENSENET121_BLOCKS
    growth: int = 32
    bn_size: int = 4
    init_features: int = 64
    num_classes: int = IMAGENET_CLASSES

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        channels = images.shape[-1]
        x = nn.Conv(3, (1, 1), kernel_init=nn.initializers.constant(1.0 / channels), name="adapter")(images)
        x = ((x + 1.0) / 2.0 - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
        x = nn.relu(_norm(train, "norm0")(_conv(self.init_features, 7, "conv0", stride=2)(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        width = self.init_features
        for b, layers in enumerate(self.blocks, start=1):
            x = DenseBlock(layers, self.growth, self.bn_size, name=f"denseblock{b}")(x, train)
            width += layers * self.growth
            if b < len(self.blocks):
                width //= 2
                x = Transition(width, name=f"transition{b}")(x, train)
        features = jnp.mean(nn.relu(_norm(train, "norm5")(x)), axis=(1, 2))
        return features, nn.Dense(self.num_classes, name="classifier")(features)


def init(model: DenseNet, key: jax.Array, image_shape: Sequence[int]) -> dict[str, Any]:
    """Random variables ({'params', 'batch_stats'}) for images of `image_shape` (H, W, C); jitted, since
    op-by-op initialisation of ~120 layers is slow."""
    return dict(jax.jit(model.init)(key, jnp.zeros((1, *image_shape), jnp.float32)))


# ---------------------------------------------------------------------------------------------------------
# torchvision state dicts

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
OWN_MODULES = ("adapter",)  # ours, not torchvision's: never in a state dict
IGNORED_SUFFIX = "num_batches_tracked"  # torchvision's BN step counters: unused at inference


def _torch_key(path: tuple[str, ...]) -> str:
    """Our flattened variable path (collection first) → torchvision's key."""
    modules = ".".join(path[1:-1])
    prefix = "" if modules.startswith("classifier") else "features."
    return f"{prefix}{modules}.{_LEAF_TO_TORCH[path[-1]]}"


def _torch_perm(ndim: int) -> tuple[int, ...]:
    """Our layout → PyTorch's: conv HWIO → OIHW, dense [in, out] → [out, in]; vectors unchanged."""
    return {4: (3, 2, 0, 1), 2: (1, 0)}.get(ndim, tuple(range(ndim)))


def _flat(variables: Mapping[str, Any], with_head: bool) -> dict[tuple[str, ...], Any]:
    """The leaves a state dict holds, keyed by (collection, *module path, leaf)."""
    flat = traverse_util.flatten_dict({k: dict(v) for k, v in variables.items()})
    return {path: leaf for path, leaf in flat.items()
            if path[1] not in OWN_MODULES and (with_head or not path[1].startswith("classifier"))}


def to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our variables → a torchvision DenseNet state dict (float32 numpy, PyTorch layouts; adapter left out)."""
    return {_torch_key(path): np.asarray(leaf, np.float32).transpose(_torch_perm(np.ndim(leaf)))
            for path, leaf in _flat(variables, with_head=True).items()}


def state_dict_shapes(model: DenseNet) -> dict[str, tuple[int, ...]]:
    """The torchvision key → shape table of `model`'s backbone and head, without allocating variables."""
    abstract = jax.eval_shape(lambda key: init(model, key, (64, 64, 3)), jax.random.key(0))
    return {_torch_key(path): tuple(int(leaf.shape[a]) for a in _torch_perm(len(leaf.shape)))
            for path, leaf in _flat(abstract, with_head=True).items()}


def from_state_dict(state_dict: Mapping[str, Any], variables: Mapping[str, Any],
                    with_head: bool = True) -> dict[str, Any]:
    """`variables` with every torchvision-held leaf replaced from `state_dict` (the adapter keeps its values).

    Every key must match, both ways, with the right shape; all mismatches are listed in one error.
    `with_head=False` ignores `classifier.*` (a new head, e.g. 2 classes for the controls, keeps its init).
    """
    flat = traverse_util.flatten_dict({k: dict(v) for k, v in variables.items()})
    by_key = {_torch_key(path): path for path in _flat(variables, with_head)}
    problems = []
    for key, value in state_dict.items():
        if key.endswith(IGNORED_SUFFIX) or (not with_head and key.startswith("classifier.")):
            continue
        if key not in by_key:
            problems.append(f"{key}: unexpected key")
            continue
        path = by_key[key]
        ours = np.asarray(value, np.float32).transpose(np.argsort(_torch_perm(np.ndim(value))))
        if ours.shape != tuple(flat[path].shape):
            expected = tuple(int(flat[path].shape[a]) for a in _torch_perm(np.ndim(flat[path])))
            problems.append(f"{key}: shape {np.shape(value)}, expected {expected}")
        else:
            flat[path] = jnp.asarray(ours)
    problems += [f"{key}: missing" for key in sorted(set(by_key) - set(state_dict))]
    if problems:
        raise ValueError("state dict does not match the DenseNet:\n  " + "\n  ".join(problems))
    return traverse_util.unflatten_dict(flat)


def load_imagenet(path: str | os.PathLike, variables: Mapping[str, Any], with_head: bool = False) -> dict[str, Any]:
    """Read torchvision densenet121 weights (`.npz` of its state dict, or `.pt` when torch is installed) into
    `variables`. Export them once where torch is available::

        np.savez("densenet121.npz", **{k: v.numpy() for k, v in
                 torchvision.models.densenet121(weights="IMAGENET1K_V1").state_dict().items()})
    """
    return from_state_dict(load_state_dict(path), variables, with_head)
