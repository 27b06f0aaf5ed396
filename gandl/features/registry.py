"""Feature extractors by name, resolved lazily so that reading the names imports no network code."""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gandl.features.base import Context, FeatureFn


@dataclasses.dataclass(frozen=True)
class Extractor:
    label: str  # the feature set's name in reports and tables
    target: str  # "module:function" under gandl.features; the function maps a Context to a FeatureFn
    reference: str = ""  # the registry name of the same option on a random-init D (the probe's baseline)


# File stem of the exported feature set -> extractor. The report lists feature sets in this order.
EXTRACTORS = {
    "gandl": Extractor("GAN-DL", "discriminator:trained", reference="random_d"),
    "random_d": Extractor("random-init D", "discriminator:random_init"),
    "gandl_multiscale": Extractor("GAN-DL multiscale", "discriminator:trained_multiscale",
                                  reference="random_d_multiscale"),
    "random_d_multiscale": Extractor("random-init D multiscale", "discriminator:random_init_multiscale"),
    "handcrafted": Extractor("handcrafted", "handcrafted:extractor"),
    "imagenet": Extractor("ImageNet DenseNet121", "imagenet:extractor"),
}


def get(name: str) -> Extractor:
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature set {name!r} in embed.feature_sets; known: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name]


def _resolve(name: str):
    module, function = get(name).target.split(":")
    return getattr(importlib.import_module(f"gandl.features.{module}"), function)


def build(name: str, context: Context) -> FeatureFn:
    """The feature function of extractor `name` for this run."""
    return _resolve(name)(context)


def settings(name: str, context: Context) -> dict:
    """What extractor `name` measured for this run and its exports must record (its `settings(context)`, if any)."""
    describe = getattr(_resolve(name), "settings", None)
    return describe(context) if describe else {}
