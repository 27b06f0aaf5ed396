"""The config schema: every setting once, with its default, its rule and what it is.

One frozen dataclass per config section (`Data`, `Screen`, ..., `Analysis`; `Config` holds them and the top-level
`seed`), each field declared with `setting(default, rule, help)`. From it come `base_config()` (which each
`configs/*.py` `get_config()` starts from, or from another config file: `call_in_file`), the rules
`gandl.check.RULES` holds every field to (`rules`), the typed run config every stage receives once the check
has passed (`Config.from_mapping`; a saved one: `saved_config`), the stages' typed settings
(`gandl.models.config.ModelConfig` and `gandl.analysis.tasks.AnalysisConfig` derive from their sections, checked
by `validate_section`) and the docs' settings table (docs/settings_table.py). Adding a setting is one
`setting(...)` line here, plus its use.

A field whose default is `OMITTED` has a rule but no default: a config may set it (the synthetic writers'
arguments); left out, the code's own default holds. A rule over the names of a component registry that a higher
layer owns (screen readers, presets, feature extractors, control layouts) is declared `registered(name)`, and
`gandl.check` binds the name to the registry itself; a plain tuple of choices that only its owner validates
against lives here (`INTENSITIES`, ...), and the owner imports it.
"""

import dataclasses
import importlib.util
import math
import re
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

# ---------------------------------------------------------------------------------------------------------------
# Rules


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one config field may hold: values passing `ok`, described as `wanted`; `example` passes."""

    ok: Callable[[Any], bool]
    wanted: str
    example: Any


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(low: int, high: int | None = None) -> Rule:
    return Rule(lambda v: _is_int(v) and low <= v and (high is None or v <= high),
                f"an integer >= {low}" if high is None else f"an integer in {low}..{high}", low)


def number(low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False) -> Rule:
    """A real number in the interval from `low` to `high` (None: unbounded), open at either end when asked."""
    def ok(v: Any) -> bool:
        return ((_is_int(v) or isinstance(v, float)) and math.isfinite(v) and (v > low if open_low else v >= low)
                and (high is None or (v < high if open_high else v <= high)))

    if high is None:
        wanted = f"a number {'>' if open_low else '>='} {low:g}"
    else:
        wanted = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    return Rule(ok, wanted, (low + high) / 2 if high is not None else low + 1 if open_low else low)


def one_of(*options: Any) -> Rule:
    return Rule(lambda v: v in options and not isinstance(v, bool), f"one of {options}", options[0])


def sequence(item: Rule, length: int | None = None, nonempty: bool = False) -> Rule:
    """A tuple (or list) of values passing `item`."""
    def ok(v: Any) -> bool:
        return (isinstance(v, (tuple, list)) and all(item.ok(x) for x in v) and (length is None or len(v) == length)
                and (len(v) > 0 or not nonempty))

    size = f" of {length}" if length is not None else " (non-empty)" if nonempty else ""
    return Rule(ok, f"a tuple{size} whose items are each {item.wanted}", (item.example,) * (length or 1))


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"None or {rule.wanted}", None)


@dataclasses.dataclass(frozen=True)
class Registered:
    """The rule of a field naming entries of a component registry that a layer above this one owns: `build`
    makes the rule from the registry's names, once `gandl.check` has bound `registry` to them (`rules`)."""

    registry: str
    build: Callable[[Collection[str]], Rule]


def registered(registry: str, build: Callable[[Collection[str]], Rule] = lambda names: one_of(*names)) -> Registered:
    return Registered(registry, build)


def _feature_sets(names: Collection[str]) -> Rule:
    item = Rule(lambda v: v in names, f"a feature set of gandl.features.registry: {sorted(names)}", "gandl")
    return sequence(item, nonempty=True)


BOOL = Rule(lambda v: isinstance(v, bool), "True or False", False)
TEXT = Rule(lambda v: isinstance(v, str), "a string", "")
NAME = Rule(lambda v: isinstance(v, str) and bool(v), "a non-empty string", "x")
POWER_OF_TWO = Rule(lambda v: _is_int(v) and v >= 8 and not v & (v - 1), "a power of two >= 8", 64)
SEED, COUNT, SIZE = integer(0), integer(1), integer(0)
RATE, PROBABILITY, DECAY = number(0, open_low=True), number(0, 1), number(0, 1, open_high=True)
FACTOR = number(0, 1, open_low=True)

# Choices that only their owner validates against; it imports them from here.
INTENSITIES = ("auto", "dtype", "dataset")  # gandl.data.pipeline: raw values mapping to [-1, 1]
WELL_AGGREGATES = ("median", "mean")  # gandl.data.screen: how a well's profile comes from its sites
DTYPES = ("float32", "bfloat16")  # gandl.models.config: the compute dtypes
DISTRIBUTED_MODES = ("auto", "on", "off")  # gandl.sharding.initialize_distributed
OBJECTIVES = ("gan", "contrastive")  # gandl.train.step: what D learns from (the self-supervised twin: no generator)
AUGMENT_MODES = ("none", "fixed", "ada")  # gandl.train.augment: off, a constant p, p tuned by the r_t heuristic
# gandl.train.augment, in the order applied
AUGMENT_TRANSFORMS = ("xflip", "rot90", "translate", "brightness", "contrast", "noise", "cutout")
MBSTD_MODES = ("constant", "train")  # gandl.features.discriminator: the stddev channel of D's features
NORMALIZATIONS = ("none", "center_scale", "tvn")  # gandl.analysis.classify.normalize
POSITIONS = ("auto", "on", "off")  # gandl.analysis.hits: plate position correction

# ---------------------------------------------------------------------------------------------------------------
# Declaring settings


class _Omitted:
    def __repr__(self) -> str:
        return "OMITTED"


OMITTED: Any = _Omitted()  # the default of a setting a config may add but `base_config()` leaves out


def setting(default: Any, rule: Rule | Registered, help: str = "") -> Any:
    """A config field: its default (None: a typed placeholder in `base_config()`; OMITTED: left out), the rule
    every value is held to and one line on what it is."""
    return dataclasses.field(default=default, metadata={"rule": rule, "help": help})


def section(cls: type) -> Any:
    """A nested config section (its fields are the dataclass `cls`'s; its description is `cls`'s docstring)."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


def setting_of(cls: type, name: str) -> Any:
    """Field `name` of section `cls` again, for a dataclass holding it beside another section's fields."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=field.default, metadata=field.metadata)


# ---------------------------------------------------------------------------------------------------------------
# The sections


@dataclasses.dataclass(frozen=True)
class Data:
    """Raw screen -> shards (mode=convert) and the input pipeline."""

    kind: str = setting("rxrx19a", registered("readers"),
                        "a screen reader of gandl.data.screen.READERS (what root names: READERS[kind].summary)")
    root: str = setting("", TEXT, 'the raw screen; "" = the embedded synthetic screen, generated into workdir/raw')
    metadata: str = setting("metadata.csv", NAME,
                            "the metadata table's file name in root (ome_zarr: the plate map CSV)")
    channel_columns: tuple[str, ...] = setting((), sequence(NAME), "generic screens: one image-path column per channel")
    stains: tuple[str, ...] = setting((), sequence(NAME), "stain names of the channels (generic default: the column "
                                                          "names; ome_zarr: the OMERO labels)")
    shards: str = setting("", TEXT, 'converted shards (or an rxrx1-utils TFRecord glob); "" = workdir/shards')
    image_size: int = setting(64, SIZE, "conversion target side in px; 0 keeps full resolution")
    sites_per_shard: int = setting(256, COUNT, "sites per converted shard file")
    skip_bad_sites: bool = setting(False, BOOL, "True: skip sites with bad files and list them in skipped_sites.csv")
    num_workers: int = setting(0, SIZE, "conversion processes; 0 = one per core")
    channels: tuple[int, ...] = setting((), sequence(COUNT), "1-based channels to read, in order, e.g. "
                                                             "(1, 2, 3, 4, 6) for RxRx1 -> RxRx19a")
    intensity: str = setting("auto", one_of(*INTENSITIES), "auto | dtype | dataset: raw values mapping to [-1, 1]")
    crop_size: int = setting(0, SIZE, "random crop in training, central crop in export; 0 = none")
    augment: bool = setting(True, BOOL, "random flips and 90-degree rotations")
    shuffle_buffer: int = setting(1024, COUNT, "examples in the training shuffle buffer")
    rxrx1_utils_image_size: int = setting(512, COUNT, "side of images in rxrx1-utils records")


def _screen_field(help: str) -> Any:
    """A schema column or query: None keeps the preset's value."""
    return setting(None, optional(TEXT), help)


@dataclasses.dataclass(frozen=True)
class Screen:
    """The screen schema (gandl.data.screen.ScreenSchema): which metadata columns are plate, well, site, batch,
    biological group, perturbation and dose, and which sites are controls (pandas queries). `preset` names one of
    gandl.data.screen.PRESETS ("" = data.kind's own); every field left None keeps the preset's value."""

    preset: str = setting("", registered("presets", lambda names: one_of("", *names)),
                          'a preset of gandl.data.screen.PRESETS; "" = data.kind\'s own')
    plate: str | None = _screen_field("the plate column")
    well: str | None = _screen_field("the well column")
    site: str | None = _screen_field("the site column")
    experiment: str | None = _screen_field("batch column; plates are named {experiment}_{plate}")
    group: str | None = _screen_field("biological group, e.g. the cell line column")
    perturbation: str | None = _screen_field("the perturbation (compound, siRNA) column")
    dose: str | None = _screen_field("the dose column (numeric)")
    positive: str | None = _screen_field("the C+ sites' query, e.g. \"compound == 'staurosporine'\"")
    negative: str | None = _screen_field("the C- sites' query, e.g. \"compound == 'DMSO'\"")
    treated: str | None = _screen_field("the treatment sites, e.g. \"compound != 'UV'\"; \"\" = all perturbed")
    positive_name: str | None = _screen_field("what reports call the C+ sites")
    negative_name: str | None = _screen_field("what reports call the C- sites")
    highlight: tuple[str, ...] | None = setting(None, optional(sequence(NAME)), "perturbations the figures draw")
    viability: str | None = setting(OMITTED, optional(TEXT),
                                    "a numeric cell-count or viability column per site (cytotoxicity)")


# The synthetic writers' common arguments (gandl.data.synthetic's write_rxrx19a and write_rxrx1).
def _writer_seed(default: int) -> Any:
    return setting(default, SEED, "the random seed of the screen's design and images")


def _plates_per_cell_line(default: Any = OMITTED) -> Any:
    return setting(default, COUNT, "plates of each cell line")


def _sites_per_well(default: Any = OMITTED) -> Any:
    return setting(default, COUNT, "imaged sites per well")


def _plates_per_experiment() -> Any:
    return setting(OMITTED, COUNT, "plates of each experiment (batch)")


def _bit_depth() -> Any:
    return setting(OMITTED, one_of(8, 16), "bits per pixel of the written images")


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """The embedded default screen (gandl.data.synthetic.write_rxrx19a arguments)."""

    seed: int = _writer_seed(0)
    image_size: int = setting(64, integer(16, 1024), "side of the written images in px")
    plates_per_cell_line: int = _plates_per_cell_line(2)
    sites_per_well: int = _sites_per_well(2)
    num_compounds: int = setting(12, integer(3), "compounds in the screen")
    control_wells_per_plate: tuple[int, ...] = setting((6, 3, 6, 2), sequence(SIZE, length=4),
                                                       "control wells of each of the 4 control kinds per plate")
    morphology_only: bool = setting(False, BOOL, "a harder test bed: one intensity histogram per channel for every "
                                                 "site")
    phenotype_strength: float = setting(1.0, FACTOR, "infection and compound effects scaled by this factor")
    cell_density: float = setting(1.0, FACTOR, "cells per site scaled by this factor")
    cytotoxic_mimicry: float = setting(0.0, PROBABILITY, "a false-hit test bed: toxic compounds' infection level "
                                                         "cut by this share of their toxicity")
    toxic_fraction: float | None = setting(None, optional(PROBABILITY), "the share of toxic-inert compounds; None = "
                                                                        "a third")
    control_layout: str = setting("random", registered("control_layouts"),
                                  'controls "random" or in the "edge" columns 1, 2, 23, 24')
    edge_effect: float = setting(0.0, number(-1, 1, open_low=True), "the outer ring's stain gain changed by this "
                                                                    "factor (0.15: 15 % brighter)")
    plates_per_experiment: int = _plates_per_experiment()
    bit_depth: int = _bit_depth()


@dataclasses.dataclass(frozen=True)
class Preview:
    """The preview grid of training images (mode=preview)."""

    num_images: int = setting(32, COUNT, "images in the grid")
    cols: int = setting(8, COUNT, "columns of the grid")


def section_of(cls: type, config: Mapping[str, Any], *, known_only: bool = False) -> Any:
    """A section's dataclass (or one deriving from it, or the whole `Config`) from its part of a config, a dict or
    ConfigDict, nested sections typed too: unknown keys are an error (typos must not pass) unless `known_only`
    (a config saved by an earlier version: what today's schema lacks no longer says anything); lists become tuples
    (the sections are hashable, jit caches on them); an OMITTED field left out stays OMITTED."""
    if isinstance(config, cls):
        return config
    values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown and not known_only:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    typed = {}
    for name, value in values.items():
        if name in fields:
            inner = fields[name].metadata.get("section")
            typed[name] = (section_of(inner, value, known_only=known_only) if inner
                           else tuple(value) if isinstance(value, list) else value)
    return cls(**typed)


def values(section: Any) -> dict[str, Any]:
    """A section's settings as a dict (nested sections as dicts): a section dataclass's without its OMITTED fields
    (what a config may leave out, the code's own default then holding), or a ConfigDict's."""
    if not dataclasses.is_dataclass(section):
        return section.to_dict()
    out = {}
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if value is not OMITTED:
            out[field.name] = values(value) if dataclasses.is_dataclass(value) else value
    return out


@dataclasses.dataclass(frozen=True)
class Model:
    """StyleGAN2 (gandl.models.config.ModelConfig fields); its side is the training records' unless set."""

    resolution: int | None = setting(None, optional(POWER_OF_TWO),
                                     "side of G's images and D's input in px; None = the training records' side "
                                     "(data.crop_size when cropping, else data.image_size, or the records' own): "
                                     "set it to train below that side (a whole area-downscale factor)")
    num_channels: int = setting(5, COUNT, "image channels")
    z_dim: int = setting(512, COUNT, "latent size")
    w_dim: int = setting(512, COUNT, "intermediate latent (style) size")
    mapping_layers: int = setting(3, COUNT, "layers of the mapping network")
    channel_base: int = setting(16384, COUNT, "feature maps of a block: min(channel_base / resolution, channel_max)")
    channel_max: int = setting(512, COUNT, "at most this many feature maps per block")
    conv_clamp: float | None = setting(256.0, optional(RATE), "convolution outputs clamped to +-this; None = off")
    mbstd_group_size: int = setting(4, COUNT, "minibatch-stddev group size of D")
    mbstd_num_channels: int = setting(1, SIZE, "minibatch-stddev feature channels of D")
    dtype: str = setting("float32", one_of(*DTYPES), "the compute dtype (parameters and D's embedding stay float32)")
    mapping_lr_multiplier: float = setting(0.01, RATE, "learning-rate multiplier of the mapping network")
    w_avg_beta: float = setting(0.995, PROBABILITY, "decay of the tracked average w (truncation)")

    def __post_init__(self) -> None:
        validate_section(self)
        if self.mbstd_num_channels and min(self.channel_base // 4, self.channel_max) % self.mbstd_num_channels:
            raise ValueError("mbstd_num_channels must divide the 4x4 block's channel count")

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> "Model":
        return section_of(cls, config)

    @classmethod
    def of_run(cls, config: "RunConfig") -> "Model":
        """The model of a run's whole config, its side resolved from the data section unless set
        (`model_resolution`)."""
        return cls.from_mapping({**values(config.model), "resolution": model_resolution(config)})


@dataclasses.dataclass(frozen=True)
class Train:
    """Training: the paper's variant (Adam lr 1e-4, path length + EMA on G, R1 + Lipschitz on D)."""

    batch_size: int = setting(32, COUNT, "global, over every device of every process")
    steps: int = setting(100_000, COUNT, "training steps")
    objective: str = setting("gan", one_of(*OBJECTIVES),
                             "what trains D: gan (StyleGAN2's adversarial game, plus ContraD's term when "
                             "contrastive_weight > 0) | contrastive (the self-supervised twin: no generator, D and "
                             "the contrastive head learn the NT-Xent of two augmented views of the reals alone; "
                             "G stays at its initialisation and no samples or SWD are made)")
    g_lr: float = setting(1e-4, RATE, "G's Adam learning rate")
    d_lr: float = setting(1e-4, RATE, "D's Adam learning rate")
    adam_b1: float = setting(0.0, DECAY, "Adam beta1")
    adam_b2: float = setting(0.99, DECAY, "Adam beta2")
    adam_eps: float = setting(1e-8, RATE, "Adam epsilon")
    r1_gamma: float = setting(1.0, number(0), "R1 penalty weight on D")
    r1_interval: int = setting(16, COUNT, "steps between R1 (lazy regularisation)")
    lipschitz_weight: float = setting(1.0, number(0), "one-sided penalty on real/fake interpolates, applied with R1")
    pl_weight: float = setting(2.0, number(0), "path-length penalty weight on G")
    pl_interval: int = setting(4, COUNT, "steps between path-length penalties")
    pl_decay: float = setting(0.01, PROBABILITY, "decay of the path-length mean")
    pl_batch_shrink: int = setting(2, COUNT, "the path-length batch is the batch over this")
    style_mixing_prob: float = setting(0.9, PROBABILITY, "probability of mixing two latents' styles")
    ema_kimg: float = setting(10.0, number(0), "half-life of G's EMA in thousands of images")
    ema_rampup: float | None = setting(0.05, optional(number(0)), "the EMA half-life is capped at this times the "
                                                                  "images seen; None = no ramp-up")
    log_every: int = setting(50, COUNT, "steps between logged metrics")
    sample_every: int = setting(1000, COUNT, "steps between sample grids")
    checkpoint_every: int = setting(1000, COUNT, "steps between checkpoints")
    keep_checkpoints: int = setting(3, COUNT, "the last checkpoints kept")
    swd_every: int = setting(5000, SIZE, "steps between sliced Wasserstein distances; 0 = off")
    swd_images: int = setting(1024, COUNT, "images per sliced Wasserstein distance")
    probe_every: int = setting(0, SIZE, "linear probe of D's features every this many steps (0 = off; gandl.probe): "
                                        "probe.csv, probe_curve.png")
    probe_features: tuple[str, ...] = setting(("gandl", "gandl_multiscale"), registered("extractors", _feature_sets),
                                              "the feature sets probed")
    probe_sites: int = setting(512, COUNT, "screen sites per probe")
    probe_zeroshot_sites: int = setting(512, COUNT, "zero-shot sites per probe")
    distributed: str = setting("auto", one_of(*DISTRIBUTED_MODES), "auto | on | off: jax.distributed.initialize()")
    augment: str = setting("none", one_of(*AUGMENT_MODES),
                           "adaptive discriminator augmentation (gandl.train.augment): none | fixed (p = augment_p "
                           "throughout) | ada (p starts at augment_p and moves every ada_interval steps so that "
                           "E[sign(D(real))] nears ada_target)")
    augment_p: float = setting(0.0, PROBABILITY, "the augmentation probability (ada: its start)")
    ada_target: float = setting(0.6, number(-1, 1), "the E[sign(D(real))] ada steers to")
    ada_interval: int = setting(4, COUNT, "steps between ada's updates of p")
    ada_kimg: float = setting(500.0, RATE, "p moves by at most 1 per this many thousand images (stylegan2-ada-"
                                           "pytorch's 500, for runs of millions of images)")
    augment_transforms: tuple[str, ...] = setting(
        AUGMENT_TRANSFORMS, sequence(Rule(lambda v: v in AUGMENT_TRANSFORMS,
                                          f"a transform of gandl.train.augment: {AUGMENT_TRANSFORMS}", "xflip"),
                                     nonempty=True), "the transforms augmentation applies")
    contrastive_weight: float = setting(0.0, number(0), "contrastive discriminator (gandl.train.contrastive, "
                                                        "ContraD): weight in D's loss of the NT-Xent of two augmented "
                                                        "views of the reals on D's fc features (0 = off)")
    contrastive_temperature: float = setting(0.1, RATE, "the NT-Xent temperature")

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> "Train":
        return section_of(cls, config)


@dataclasses.dataclass(frozen=True)
class Imagenet:
    """Fine-tuning of the ImageNet comparator (gandl.features.imagenet.FineTuneConfig fields)."""

    epochs: int = setting(3, COUNT, "fine-tuning epochs")
    batch_size: int = setting(32, COUNT, "global, over every device")
    learning_rate: float = setting(1e-3, RATE, "fine-tuning learning rate")
    train_backbone: bool = setting(False, BOOL, "False: only the channel adapter and the head learn")
    blocks: tuple[int, ...] = setting((6, 12, 24, 16), sequence(COUNT, nonempty=True),
                                      "DenseNet-121's dense blocks; smaller for quick tests")
    pool_batches: int = setting(8, COUNT, "controls are shuffled within pools of this many batches")


@dataclasses.dataclass(frozen=True)
class Embed:
    """Embedding export (mode=embed): one feature set per extractor named in `feature_sets`, in the same pass."""

    batch_size: int = setting(64, COUNT, "global")
    step: int = setting(-1, integer(-1), "checkpoint step; -1 = latest")
    orientation_average: bool = setting(False, BOOL, "average the features of the 8 flips/rotations of each site")
    feature_sets: tuple[str, ...] = setting(
        ("gandl", "random_d", "gandl_multiscale", "random_d_multiscale", "handcrafted"),
        registered("extractors", _feature_sets),
        "gandl.features.registry names: gandl (the trained D's b4.fc), random_d (a randomly initialised D), "
        "gandl_multiscale / random_d_multiscale (mean and stddev over space of every D block, plus b4.fc), "
        "handcrafted (intensity/texture statistics), imagenet (the fine-tuned comparator; needs imagenet_weights)")
    reference_inits: int = setting(1, COUNT, "initialisations each random-init set of feature_sets is exported at: "
                                             "1 = the run's own; N adds <set>@1 .. <set>@N-1, and a learned set's gap "
                                             "is then to their mean (one draw's spread, over inits, is the largest "
                                             "noise in that gap: docs/results.md, Power)")
    mbstd: str = setting("constant", one_of(*MBSTD_MODES),
                         'the stddev channel D\'s features are computed with: "constant" (a group of one: 1e-4, never '
                         'seen in training) or "train" (D\'s mean group stddev over mbstd_batches real training '
                         'batches, recorded)')
    mbstd_batches: int = setting(4, COUNT, 'real training batches of mbstd="train"')
    part_batches: int = setting(32, COUNT, "batches per resumable part file")
    well_aggregate: str = setting("median", one_of(*WELL_AGGREGATES),
                                  "median | mean over a well's sites: the well profiles (and the analysis' wells)")
    imagenet_weights: str = setting("", TEXT, "ImageNet comparator (gandl.features.imagenet): a torchvision "
                                              'densenet121 state dict (.npz, or .pt with torch) or "random" for a '
                                              "random backbone; fine-tuned per `imagenet`")
    imagenet: Imagenet = section(Imagenet)


@dataclasses.dataclass(frozen=True)
class ZeroshotSynthetic:
    """The zero-shot set's synthetic screen (gandl.data.synthetic.write_rxrx1 arguments; its image size follows
    config.synthetic's)."""

    seed: int = _writer_seed(1)
    plates_per_cell_line: int = _plates_per_cell_line(2)
    sites_per_well: int = _sites_per_well(2)
    plates_per_experiment: int = _plates_per_experiment()
    bit_depth: int = _bit_depth()
    num_sirnas: int = setting(OMITTED, COUNT, "siRNAs in the screen")
    num_positive_controls: int = setting(OMITTED, SIZE, "positive-control siRNAs on each plate")
    negative_control_wells: int = setting(OMITTED, SIZE, "EMPTY negative-control wells on each plate")


@dataclasses.dataclass(frozen=True)
class Zeroshot:
    """Zero-shot cell typing on an RxRx1-layout set never seen in training (6 channels mapped onto 5)."""

    enabled: bool = setting(True, BOOL, "run the zero-shot cell typing")
    root: str = setting("", TEXT, 'RxRx1-layout folder; "" = synthesize one into workdir/raw_rxrx1')
    shards: str = setting("", TEXT, "or converted shards / an rxrx1-utils TFRecord glob")
    channels: tuple[int, ...] = setting((), sequence(COUNT), "source channels feeding the model's; () = by stain, "
                                                             "(1, 2, 3, 4, 6) for RxRx1")
    synthetic: ZeroshotSynthetic = section(ZeroshotSynthetic)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Analysis (gandl.analysis.tasks.AnalysisConfig fields); the defaults follow the paper (per site, no
    normalisation, C = 1)."""

    normalization: str = setting("none", one_of(*NORMALIZATIONS), "none | center_scale | tvn (see "
                                                                  "gandl.analysis.classify.normalize)")
    level: str = setting("site", one_of("site", "well"), "site | well: the unit SVMs and spaces see (dose-response "
                                                          "always averages wells)")
    c: float = setting(1.0, RATE, "SVM soft-margin constant")
    n_splits: int = setting(5, integer(2), "at most this many grouped folds")
    group_by: str = setting("plate", one_of("plate", "experiment"), "plate | experiment: what a fold holds out")
    top_k: int = setting(5, COUNT, "best-ranked compounds per cell line listed, and drawn when the schema highlights "
                                   "none")
    flat_threshold: float = setting(0.25, number(0), "Hill amplitude below which a curve is flat (score units)")
    toxic_threshold: float = setting(0.5, number(0), "score drop after the peak that flags a toxic top dose")
    fdr: float = setting(0.05, number(0, 1, open_low=True, open_high=True),
                         "false discovery rate of the hit calls (Benjamini-Hochberg q below it)")
    rescue_threshold: float = setting(0.0, number(-1, 1, open_low=True, open_high=True),
                                      "efficacy a hit must be shown to exceed (C- = -1, C+ = +1; 0 = half way)")
    off_axis_limit: float = setting(1.5, number(1), "off-axis distance over the C+ wells' own beyond which a dose is "
                                                    "not a rescue")
    viability_floor: float = setting(0.7, number(0, 1, open_low=True),
                                     "cell-count proxy over the plate's C- wells below which a dose is cytotoxic")
    position_correction: str = setting("auto", one_of(*POSITIONS), "auto | on | off: plate row/column/edge effects "
                                                                   "removed before the hit test")
    seed: int = setting(0, SEED, "seed of the folds and the few-label draws")
    few_labels: tuple[int, ...] = setting((), sequence(COUNT), "e.g. (4, 8, 16): Table 1 also with k labelled "
                                                               "control wells per class (table1_few_labels); () = off")
    few_label_draws: int = setting(5, COUNT, "seeded draws of those wells, averaged")
    exclude_plates: tuple[str, ...] = setting((), sequence(NAME), "plates ({experiment}_{plate}, qc_plates.csv's "
                                                                  "plate_id) left out of all but the plate QC")
    min_z_prime: float | None = setting(None, optional(number(-math.inf, 1)),
                                        "also leave out plates whose robust Z′ is below it; None = keep")
    truth: str = setting("", TEXT, 'a ground-truth CSV (truth.csv schema); "" = a matching truth.csv beside the '
                                   "screen, if any")

    def __post_init__(self) -> None:
        validate_section(self)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run."""

    seed: int = setting(0, SEED, "the run's random seed")
    data: Data = section(Data)
    screen: Screen = section(Screen)
    synthetic: Synthetic = section(Synthetic)
    preview: Preview = section(Preview)
    model: Model = section(Model)
    train: Train = section(Train)
    embed: Embed = section(Embed)
    zeroshot: Zeroshot = section(Zeroshot)
    analysis: Analysis = section(Analysis)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any], *, known_only: bool = False) -> "Config":
        """The typed run config every stage receives, from the ConfigDict a config file gives (checked first:
        `gandl.check.check_fields`) or a saved one (`known_only`)."""
        return section_of(cls, config, known_only=known_only)


RunConfig = Config | ml_collections.ConfigDict  # the stages' typed config, or the file's (the check's)


# ---------------------------------------------------------------------------------------------------------------
# What the schema gives


def settings(cls: type | None = None, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted path, field) of every setting of `cls` (default: the whole `Config`), sections walked in order."""
    for field in dataclasses.fields(Config if cls is None else cls):
        if "section" in field.metadata:
            yield from settings(field.metadata["section"], f"{prefix}{field.name}.")
        else:
            yield prefix + field.name, field


def sections(cls: type | None = None, prefix: str = "") -> Iterator[tuple[str, type]]:
    """(dotted path, dataclass) of every section of `cls` (default: the whole `Config`), nested ones too."""
    for field in dataclasses.fields(Config if cls is None else cls):
        if "section" in field.metadata:
            yield prefix + field.name, field.metadata["section"]
            yield from sections(field.metadata["section"], f"{prefix}{field.name}.")


def _placeholder_type(annotation: Any) -> type:
    """The type of a None default's placeholder: `str | None` -> str, `tuple[str, ...] | None` -> tuple."""
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in annotation.__args__ if a is not type(None))
    return typing.get_origin(annotation) or annotation


def _section_dict(cls: type) -> ml_collections.ConfigDict:
    values = {}
    for field in dataclasses.fields(cls):
        if "section" in field.metadata:
            values[field.name] = _section_dict(field.metadata["section"])
        elif field.default is None:
            values[field.name] = config_dict.placeholder(_placeholder_type(field.type))
        elif field.default is not OMITTED:
            values[field.name] = field.default
    return ml_collections.ConfigDict(values)


def base_config() -> ml_collections.ConfigDict:
    """The config every `configs/*.py` starts from: each setting of `Config` at its default (a None default as a
    typed placeholder), OMITTED ones left out."""
    return _section_dict(Config)


def rules(registries: Mapping[str, Collection[str]]) -> dict[str, Rule]:
    """{dotted path: rule} of every setting, OMITTED ones too, `registered` rules built from `registries[their
    registry name]`."""
    out = {}
    for path, field in settings():
        rule = field.metadata["rule"]
        out[path] = rule.build(registries[rule.registry]) if isinstance(rule, Registered) else rule
    return out


def validate_section(obj: Any) -> None:
    """Hold every field of a section dataclass instance (or a dataclass deriving from one) to its setting's rule;
    raise ValueError naming each failing field, its value and what it must be. Rules over a registry are the
    config check's (`gandl.check`), not checked here."""
    failures = []
    for field in dataclasses.fields(obj):
        rule, value = field.metadata.get("rule"), getattr(obj, field.name)
        if isinstance(rule, Rule) and not rule.ok(value):
            failures.append(f"{field.name}={value!r}: must be {rule.wanted}")
    if failures:
        raise ValueError("; ".join(failures))


SHARDS_PATTERN = re.compile(r"[*?\[]")  # a shards pattern names rxrx1-utils records, not shards of this project


def records_side(config: RunConfig, shards: str, root: str) -> tuple[int, str] | None:
    """(side in px, the field that says it) of a run's training or zero-shot records; None when the config does not
    say (shards converted elsewhere at a size it does not state, or data.image_size=0 keeping a source's side)."""
    data = config.data
    if shards and SHARDS_PATTERN.search(shards):
        return data.rxrx1_utils_image_size, "data.rxrx1_utils_image_size"
    if shards and not data.image_size:
        return None
    if data.image_size:
        return data.image_size, "data.image_size"
    return (config.synthetic.image_size, "synthetic.image_size") if not root else None


def model_resolution(config: RunConfig) -> int | None:
    """The model's side: model.resolution, or unless set the training records' side after data.crop_size (None
    when the config does not say it: `records_side`). One source for the model and the input pipeline."""
    if config.model.resolution is not None:
        return config.model.resolution
    if config.data.crop_size:
        return config.data.crop_size
    side = records_side(config, config.data.shards, config.data.root)
    return None if side is None else side[0]


# Settings an earlier version had, and what says the same today.
RETIRED = {"analysis.uv_is_positive": 'screen.preset="rxrx19a_uv" (UV-inactivated virus counts as C+ in that preset)'}


def upgraded(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version (a checkpoint's, an export's provenance) in today's fields: a saved
    `analysis.uv_is_positive=True` becomes the rxrx19a_uv screen preset, so the run's schema is what it was."""
    config = {section: dict(values) if isinstance(values, Mapping) else values for section, values in saved.items()}
    analysis = config.get("analysis", {})
    if analysis.pop("uv_is_positive", False) and not config.get("screen", {}).get("preset"):
        config["screen"] = {**config.get("screen", {}), "preset": "rxrx19a_uv"}
    return config


def saved_config(saved: Mapping[str, Any]) -> Config:
    """A saved config (a checkpoint's, an export's provenance) typed: fields added since it was saved read as their
    defaults, retired ones as what says the same today (`upgraded`), ones since dropped are passed over."""
    return Config.from_mapping(upgraded(saved), known_only=True)


def call_in_file(path: str, attr: str, *args: Any, **kwargs: Any) -> Any:
    """`attr(*args, **kwargs)` of a Python file loaded by path: sweep and config files are files, not importable
    modules."""
    spec = importlib.util.spec_from_file_location(f"_gandl_{attr}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, attr)(*args, **kwargs)
