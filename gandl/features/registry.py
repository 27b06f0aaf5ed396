"""Feature extractors by name, resolved lazily so that reading the names imports no network code."""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Iterable, Sequence
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
    # A random-init reference: its features are a draw over D's initialisation, so it can be exported at other
    # draws too (`with_inits`: `<name>@1`, `<name>@2`, ...), and a reference is then their mean.
    drawn: bool = False
    init: int = 0  # which draw this is (0: the run's own, as exported without `@`)


INIT_MARK = "@"  # `<name>@<i>`: the random-init feature set `name` at its i-th other initialisation


# File stem of the exported feature set -> extractor. The report lists feature sets in this order.
_D_FIELDS = ("orientation_average", "mbstd", "mbstd_batches")
EXTRACTORS = {
    "gandl": Extractor("GAN-DL", "discriminator:trained", reference="random_d", embed_fields=_D_FIELDS),
    "random_d": Extractor("random-init D", "discriminator:random_init", embed_fields=_D_FIELDS, drawn=True),
    "gandl_multiscale": Extractor("GAN-DL multiscale", "discriminator:trained_multiscale",
                                  reference="random_d_multiscale", embed_fields=_D_FIELDS),
    "random_d_multiscale": Extractor("random-init D multiscale", "discriminator:random_init_multiscale",
                                     embed_fields=_D_FIELDS, drawn=True),
    "gandl_blocks": Extractor("GAN-DL blocks", "discriminator:trained_blocks", reference="random_d_blocks",
                              embed_fields=_D_FIELDS),
    "random_d_blocks": Extractor("random-init D blocks", "discriminator:random_init_blocks", embed_fields=_D_FIELDS,
                                 drawn=True),
    "handcrafted": Extractor("handcrafted", "handcrafted:extractor", foreground="handcrafted:foreground_column"),
    "imagenet": Extractor("ImageNet DenseNet121", "imagenet:extractor", embed_fields=("imagenet_weights", "imagenet"),
                          per_fold=True),
}


def get(name: str) -> Extractor:
    """The extractor of feature set `name`: a registry name, or `<name>@<i>` for a random-init set's i-th other
    initialisation (labelled `<label> @<i>`)."""
    base, mark, init = name.partition(INIT_MARK)
    if base not in EXTRACTORS:
        raise ValueError(f"unknown feature set {name!r} in embed.feature_sets; known: {sorted(EXTRACTORS)}")
    extractor = EXTRACTORS[base]
    if not mark:
        return extractor
    if not extractor.drawn or not re.fullmatch(r"[1-9][0-9]*", init):
        raise ValueError(f"unknown feature set {name!r}: only a random-init set ({', '.join(drawn_sets())}) is "
                         f"drawn at other initialisations, as <name>{INIT_MARK}<i> with i >= 1")
    return dataclasses.replace(extractor, label=f"{extractor.label} {INIT_MARK}{int(init)}", init=int(init))


def drawn_sets() -> list[str]:
    """The random-init feature sets, which can be exported at several initialisations."""
    return [name for name, extractor in EXTRACTORS.items() if extractor.drawn]


def with_inits(names: Sequence[str], inits: int) -> tuple[str, ...]:
    """`names`, each random-init set followed by its other `inits - 1` initialisations (`<name>@1`, ...)."""
    return tuple(f"{name}{INIT_MARK}{i}" if i else name for name in names
                 for i in range(inits if get(name).drawn and not get(name).init else 1))


def ordered(names: Iterable[str]) -> list[str]:
    """The feature sets among `names` (e.g. file stems; anything else is passed over) in registry order, a
    random-init set's other initialisations right after it."""
    def known(name: str) -> bool:
        try:
            get(name)
        except ValueError:
            return False
        return True

    order = {name: i for i, name in enumerate(EXTRACTORS)}
    return sorted(filter(known, set(names)), key=lambda n: (order[n.partition(INIT_MARK)[0]], get(n).init))


def reference_labels(label: str, labels: Iterable[str]) -> list[str]:
    """Among `labels`, the reference `label` and its other initialisations' (`<label> @<i>`), the run's own draw
    first, then by initialisation: what a reference drawn at several initialisations is the mean of."""
    draws = {0 if other == label else int(found.group(1)): other for other in labels
             if other == label or (found := re.fullmatch(rf"{re.escape(label)} {re.escape(INIT_MARK)}(\d+)", other))}
    return [draws[i] for i in sorted(draws)]


def _resolve(name: str):
    extractor = get(name)
    module, function = extractor.target.split(":")
    target = getattr(importlib.import_module(f"gandl.features.{module}"), function)
    return dataclasses.replace(target, init=extractor.init) if extractor.init else target


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
