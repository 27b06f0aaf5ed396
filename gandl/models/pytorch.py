"""Import / export of stylegan2-ada-pytorch state dicts (G and D of `training/networks.py`, architecture
skip / resnet, c_dim 0).

Our variable paths joined with '.' are the PyTorch keys (`synthesis.b8.conv1.affine.weight`); only layouts
differ: conv kernels HWIO ↔ OIHW, dense kernels [in, out] ↔ [out, in], `const` HWC ↔ CHW, and the D
epilogue's `b4.fc.weight`, whose input index is an NCHW flatten (c, h, w; the mbstd channel last) in
PyTorch and an NHWC flatten (h, w, c) here. PyTorch also stores the fixed [1,3,3,1] FIR as
`resample_filter` buffers on every block and every conv layer except ToRGB; import checks them, export
writes them.

Example::

    sd = load_state_dict("network.npz")                 # or a .pt saved from {'G/'+k: v, 'D/'+k: v}
    g_vars, d_vars = import_networks(sd, ModelConfig(resolution=256, num_channels=5, ...))
    export = {**prefixed(to_state_dict(g_vars), "G/"), **prefixed(to_state_dict(d_vars), "D/")}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from gandl.models import ModelConfig, init_variables
from gandl.models.layers import fir_filter_2d

FILTER_KEY = "resample_filter"
_EPILOGUE_FC = ("b4", "fc", "weight")


def _layout(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """How a leaf of our `shape` maps to PyTorch: view it as `view`, transpose by `perm`, then merge the
    trailing axes so that `ndim` remain (only the epilogue fc merges: (c, h, w) → c·h·w)."""
    if path[-1] == "const":
        return shape, (2, 0, 1), 3
    if path[-1] == "weight" and len(shape) == 4:
        return shape, (3, 2, 0, 1), 4
    if path == _EPILOGUE_FC:
        side = 4
        return (side, side, shape[0] // side**2, shape[1]), (3, 2, 0, 1), 2
    if path[-1] == "weight" and len(shape) == 2:
        return shape, (1, 0), 2
    return shape, tuple(range(len(shape))), len(shape)


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of one of our leaves."""
    view, perm, ndim = _layout(path, shape)
    moved = tuple(view[axis] for axis in perm)
    return moved[: ndim - 1] + (int(np.prod(moved[ndim - 1 :])),) if moved else ()


def _to_torch_layout(path: tuple[str, ...], value: Any) -> Any:
    """One leaf from our layout to PyTorch's (array methods only: works on numpy and on traced jax arrays)."""
    view, perm, _ = _layout(path, value.shape)
    return value.reshape(view).transpose(perm).reshape(_torch_shape(path, value.shape))


def _from_torch_layout(path: tuple[str, ...], value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One PyTorch leaf into our layout, for a leaf of our `shape` (the inverse of `_to_torch_layout`)."""
    view, perm, _ = _layout(path, shape)
    return value.reshape(tuple(view[axis] for axis in perm)).transpose(np.argsort(perm)).reshape(shape)


def _flat_variables(variables: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """Leaves of all collections ('params', 'buffers') keyed by module path; paths are unique across them."""
    flat: dict[tuple[str, ...], Any] = {}
    for collection in variables.values():
        flat.update(traverse_util.flatten_dict(dict(collection)))
    return flat


def _filter_owners(paths: list[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Module paths that own a PyTorch `resample_filter` buffer: the conv layers (every module with a 4-D
    weight except ToRGB) and the blocks (modules with a conv1: synthesis and D blocks, not the D epilogue)."""
    owners = set()
    for path in paths:
        module = path[:-1]
        if path[-1] == "weight" and module[-1] in ("conv0", "conv1", "conv", "fromrgb", "skip"):
            owners.add(module)
            if module[-1] == "conv1":
                owners.add(module[:-1])
    return owners


def _export_tree(variables: Mapping[str, Any]) -> dict[str, Any]:
    """PyTorch-keyed leaves, built only with array methods so that jax.eval_shape can trace it."""
    flat = _flat_variables(variables)
    out = {".".join(path): _to_torch_layout(path, value) for path, value in flat.items()}
    for owner in _filter_owners(list(flat)):
        out[".".join(owner + (FILTER_KEY,))] = fir_filter_2d()
    return dict(sorted(out.items()))


def to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our G or D variables → a stylegan2-ada-pytorch state dict (float32 numpy arrays, PyTorch layouts)."""
    return {key: np.asarray(value, np.float32) for key, value in _export_tree(variables).items()}


def from_state_dict(state_dict: Mapping[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """A stylegan2-ada-pytorch G or D state dict → our variables, shaped like `template` (real or abstract
    variables, e.g. from jax.eval_shape). Every key must match, in both directions, with the right shape."""
    flat_template = {
        (collection,) + path: leaf
        for collection, tree in template.items()
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items()
    }
    by_key = {".".join(path[1:]): path for path in flat_template}
    expected_filters = {".".join(owner + (FILTER_KEY,)) for owner in _filter_owners([p[1:] for p in flat_template])}
    flat: dict[tuple[str, ...], np.ndarray] = {}
    problems = []
    for key, value in state_dict.items():
        value = np.asarray(value, np.float32)
        if key in expected_filters:
            if not np.allclose(value, fir_filter_2d()):
                problems.append(f"{key}: only the [1,3,3,1] filter is supported")
        elif key not in by_key:
            problems.append(f"{key}: unexpected key")
        else:
            path = by_key[key]
            shape = tuple(flat_template[path].shape)
            expected = _torch_shape(path[1:], shape)
            if value.shape != expected:
                problems.append(f"{key}: shape {value.shape}, expected {expected}")
            else:
                flat[path] = _from_torch_layout(path[1:], value, shape)
    problems += [f"{key}: missing" for key in sorted(set(by_key) - set(state_dict))]
    if problems:
        raise ValueError("state dict does not match the model config:\n  " + "\n  ".join(problems))
    return traverse_util.unflatten_dict(flat)


def prefixed(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Add a key prefix (the fixtures and combined exports use 'G/' and 'D/')."""
    return {prefix + key: value for key, value in state_dict.items()}


def unprefixed(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under `prefix`, with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict from `.npz` or, when torch is installed, a `.pt` file (loaded weights_only)."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ImportError(f"reading {path} needs torch; export the state dict to .npz instead") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.detach().float().numpy() for key, value in state.items()}


def variable_shapes(config: ModelConfig) -> tuple[Any, Any]:
    """Abstract (shape/dtype only) G and D variables for a config: conversion templates, no allocation."""
    return jax.eval_shape(lambda key: init_variables(config, key), jax.random.key(0))


def state_dict_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The PyTorch key → shape table (keys prefixed 'G/' and 'D/') of the networks a config describes."""
    g_shapes, d_shapes = variable_shapes(config)
    exported = jax.eval_shape(lambda g, d: (_export_tree(g), _export_tree(d)), g_shapes, d_shapes)
    return {
        **{key: tuple(value.shape) for key, value in prefixed(exported[0], "G/").items()},
        **{key: tuple(value.shape) for key, value in prefixed(exported[1], "D/").items()},
    }


def import_networks(
    state_dict: Mapping[str, Any], config: ModelConfig, g_prefix: str = "G/", d_prefix: str = "D/"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A combined (prefixed) G + D state dict → (G variables, D variables) for `config`."""
    g_template, d_template = variable_shapes(config)
    return (
        from_state_dict(unprefixed(state_dict, g_prefix), g_template),
        from_state_dict(unprefixed(state_dict, d_prefix), d_template),
    )
