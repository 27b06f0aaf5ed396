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
    # The config.embed fields that shape its features: what its exports record (so adding a feature set to a
    # finished export, or changing a field another set uses, leaves this one's files valid).
    embed_fields: tuple[str, ...] = ()
    # Fitted on the controls' labels: the embed stage also exports, per fold of the analysis' fold assignment
    # (folds.json), the control sites' features of a model built without that fold's groups
    # (`Context.controls.held_out`), and Table 1 scores each fold only with those (gandl.embed.folds).
    per_fold: bool = False
    # Its features hold each channel's foreground fraction (the share of a site's pixels inside objects):
    # "module:function" under gandl.features mapping (number of channels, 0-based channel) to that column. The
    # analysis reads the nuclear stain's (the nuclei's share of the field) as a cell-count proxy.
    foreground: str = ""


# File stem of the exported feature set -> extractor. The report lists feature sets in this order.
_D_FIELDS = ("orientation_average", "mbstd", "mbstd_batches")
EXTRACTORS = {
    "gandl": Extractor("GAN-DL", "discriminator:trained", reference="random_d", embed_fields=_D_FIELDS),
    "random_d": Extractor("random-init D", "discriminator:random_init", embed_fields=_D_FIELDS),
    "gandl_multiscale": Extractor("GAN-DL multiscale", "discriminator:trained_multiscale",
                                  reference="random_d_multiscale", embed_fields=_D_FIELDS),
    "random_d_multiscale": Extractor("random-init D multiscale", "discriminator:random_init_multiscale",
                                     embed_fields=_D_FIELDS),
    "gandl_blocks": Extractor("GAN-DL blocks", "discriminator:trained_blocks", reference="random_d_blocks",
                              embed_fields=_D_FIELDS),
    "random_d_blocks": Extractor("random-init D blocks", "discriminator:random_init_blocks", embed_fields=_D_FIELDS),
    "handcrafted": Extractor("handcrafted", "handcrafted:extractor", foreground="handcrafted:foreground_column"),
    "imagenet": Extractor("ImageNet DenseNet121", "imagenet:extractor", embed_fields=("imagenet_weights", "imagenet"),
                          per_fold=True),
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


def foreground_columns() -> dict[str, object]:
    """Report label -> its `foreground` function, for every extractor whose features hold foreground fractions."""
    out = {}
    for extractor in EXTRACTORS.values():
        if extractor.foreground:
            module, function = extractor.foreground.split(":")
            out[extractor.label] = getattr(importlib.import_module(f"gandl.features.{module}"), function)
    return out
