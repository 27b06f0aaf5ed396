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


# File stem of the exported feature set -> extractor. The report lists feature sets in this order.
EXTRACTORS = {
    "gandl": Extractor("GAN-DL", "discriminator:trained"),
    "random_d": Extractor("random-init D", "discriminator:random_init"),
    "handcrafted": Extractor("handcrafted", "handcrafted:extractor"),
    "imagenet": Extractor("ImageNet DenseNet121", "imagenet:extractor"),
}


def get(name: str) -> Extractor:
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature set {name!r} in embed.feature_sets; known: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name]


def build(name: str, context: Context) -> FeatureFn:
    """The feature function of extractor `name` for this run."""
    module, function = get(name).target.split(":")
    return getattr(importlib.import_module(f"gandl.features.{module}"), function)(context)
