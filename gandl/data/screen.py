"""What a screen is, whatever its file format: its sites, the schema of their metadata, and the readers.

* `Screen`: one metadata row per site and, per site, one reference per channel plus the `ChannelReader` that
  loads a reference, so the converter reads every reader's sites the same way (no format in a path string).
* `ScreenSchema`: which metadata columns are the plate, well, site, experiment (batch), biological group
  (cell line), perturbation and dose, which sites are the positive and negative controls and which are the
  treatments (pandas queries; the rest are neither), what the two control kinds are called and which
  perturbations the figures highlight. `PRESETS` describe the layouts GAN-DL knows; `config.screen` picks one
  and overrides fields (`from_config`), `validate` checks it against a screen's metadata, and `control_role` /
  `plate_key` answer from it.
* `READERS`: screen kind (`config.data.kind`) -> the function that reads it, resolved on use, so naming a
  kind imports no reader (TensorFlow, zarr). A new reader is one module plus one entry.

No TensorFlow and no reader is imported here: the analysis and the config check use the schema without them.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from absl import logging

from gandl import defaults, errors
from gandl.data import wells
from gandl.data.vocabulary import ACTIVE, MOCK, STAINS, UV_INACTIVATED
from gandl.defaults import WELL_AGGREGATES  # embed.well_aggregate: how a well's profile comes from its sites

# Names the stages after reading use for their own data: record keys (convert), batch keys (pipeline), npz
# entries (embed), the well profiles' site count (profiles) and AnnData's reserved obs name. A metadata column
# of one of these names would be overwritten or break a later stage.
RESERVED_COLUMNS = ("image", "height", "width", "channels", "index", "mask", "features", "provenance", "n_sites",
                    "_index")
# Metadata columns are `Metadata_<column>` in profile tables (the cell-profiling convention); a column that
# already carries the prefix keeps its name.
METADATA_PREFIX = "Metadata_"


class MetadataError(errors.DataError, ValueError):
    """A metadata table or schema that cannot describe a screen; the message names the file and the problem."""


class SettingError(errors.UserError, ValueError):
    """A setting that does not exist or cannot be (a preset, a schema field, a well aggregate): a mistake in the
    config, not in the data, so the command says it in one line with the config's exit status."""




def check_aggregate(aggregate: str) -> None:
    """Refuse a well aggregate that does not exist (here, TF-free: the command says it before anything loads)."""
    if aggregate not in WELL_AGGREGATES:
        raise SettingError(f"embed.well_aggregate={aggregate!r}: expected one of {list(WELL_AGGREGATES)}")


class ScreenNotFound(MetadataError):
    """The screen is not where the config says (no such file, folder or plate)."""


def profile_column(column: str) -> str:
    """The name of metadata column `column` in profile tables: `Metadata_<column>`, never doubled."""
    return column if column.startswith(METADATA_PREFIX) else METADATA_PREFIX + column


# ---------------------------------------------------------------------------------------------------------------
# Sites


@dataclasses.dataclass(frozen=True)
class ChannelReader:
    """How a reader's channel references become pixels: module-level functions, so it pickles into workers."""

    read: Callable[[Any], np.ndarray]  # reference -> 2-D uint8/uint16 array (raises images.BadImageError)
    exists: Callable[[Any], bool]
    stamp: Callable[[Any], str]  # reference -> what changes with its content (sizes, modification times), unread


@dataclasses.dataclass(frozen=True)
class Screen:
    """Sites of a screen: metadata rows and, per site, one channel reference per channel.

    Attributes:
      metadata: one row per site, with a unique `site_id` column and typed columns (ints, floats, strings
        with blanks kept as "").
      paths: [num_sites, num_channels] array of channel references aligned with `metadata` rows: image file
        paths (str) for file-based readers, typed references (e.g. an OME-Zarr plane) for others; `str()`
        of a reference names it in errors.
      stains: stain name of each channel, in channel order.
      source: where the metadata came from, for error messages and provenance.
      reader: loads one reference (`reader.read`) and tells whether it exists (`reader.exists`).
    """

    metadata: pd.DataFrame
    paths: np.ndarray
    stains: tuple[str, ...]
    source: str
    reader: ChannelReader

    def __post_init__(self):
        if self.paths.shape != (len(self.metadata), len(self.stains)):
            raise MetadataError(f"{self.source}: {self.paths.shape[1]} channel references per site for "
                                f"{len(self.stains)} channels {self.stains}")
        clash = [c for c in self.metadata.columns if c in RESERVED_COLUMNS]
        if clash:
            raise MetadataError(f"{self.source}: metadata column {clash[0]!r} has a name GAN-DL or AnnData uses for "
                                f"its own data ({', '.join(RESERVED_COLUMNS)}); rename it")
        names = pd.Series([profile_column(c) for c in self.metadata.columns], index=self.metadata.columns)
        twins = names[names.duplicated(keep=False)]
        if len(twins):
            raise MetadataError(f"{self.source}: metadata columns {list(twins.index)} would both be "
                                f"{twins.iloc[0]!r} in profile tables; rename one")

    @property
    def num_sites(self) -> int:
        return len(self.metadata)

    def subset(self, rows: np.ndarray) -> Screen:
        """The screen restricted to the given row positions (metadata index reset)."""
        return dataclasses.replace(self, metadata=self.metadata.iloc[rows].reset_index(drop=True),
                                   paths=self.paths[rows])


def missing_files(screen: Screen) -> list[str]:
    """Channel references of the screen that do not exist, in site then channel order."""
    return [str(p) for p in screen.paths.ravel() if not screen.reader.exists(p)]


def check_files(screen: Screen, show: int = 5) -> None:
    """Fail early, listing the first few missing image files, before a long conversion starts."""
    missing = missing_files(screen)
    if missing:
        listed = "\n  ".join(missing[:show])
        raise MetadataError(f"{screen.source}: {len(missing)} of {screen.paths.size} image files are "
                            f"missing, e.g.\n  {listed}")


# ---------------------------------------------------------------------------------------------------------------
# The schema


POSITIVE, NEGATIVE, TREATED, OTHER = "C+", "C-", "treated", "other"  # control_role's values


@dataclasses.dataclass(frozen=True)
class ScreenSchema:
    """Which metadata columns mean what, and which sites are controls. "" = the screen has no such column.

    The queries are pandas `DataFrame.eval` expressions over the metadata columns (backticks quote names
    with spaces), e.g. "compound == 'DMSO'". The positive control is the phenotype a perfect perturbation
    reaches (RxRx19a: uninfected Mock wells); the negative control is the untreated reference (RxRx19a:
    infected wells without a compound; a vehicle such as DMSO). Wells that are neither (a mock-infection
    reference, a second vehicle) are declared by the `treated` query leaving them out: a perturbed well is
    otherwise taken for a treatment, and would be ranked and called a hit like one.
    """

    plate: str = "plate"
    well: str = "well"
    site: str = "site"
    experiment: str = ""  # batch: plates are named within it ({experiment}_{plate})
    group: str = ""  # biological group compared across, e.g. the cell line
    perturbation: str = ""  # compound / siRNA; a site with a non-blank value that is no control is treated
    dose: str = ""  # numeric concentration of the perturbation
    viability: str = ""  # numeric cell-count or viability readout per site (e.g. a nuclei count): cytotoxicity
    positive: str = ""  # query selecting the positive-control sites (C+)
    negative: str = ""  # query selecting the negative-control sites (C-)
    # Query selecting the treatment sites; "" = every perturbed site that is no control. With a query, a perturbed
    # site it does not select (e.g. UV-inactivated virus, a vehicle-only well) is 'other': never a compound.
    treated: str = ""
    positive_name: str = "positive control"  # how reports and legends call the two control kinds
    negative_name: str = "negative control"
    highlight: tuple[str, ...] = ()  # perturbations the figures draw; () = the analysis picks the top hits

    def columns(self) -> dict[str, str]:
        """Field -> metadata column of every column the schema declares (plate, well, site, ...)."""
        return {f: getattr(self, f) for f in COLUMN_FIELDS if getattr(self, f)}


COLUMN_FIELDS = ("plate", "well", "site", "experiment", "group", "perturbation", "dose", "viability")
NUMERIC_FIELDS = ("dose", "viability")
QUERY_FIELDS = ("positive", "negative", "treated")  # the pandas queries that pick sites


def _rxrx19a_controls(positive_conditions: tuple[str, ...]) -> dict[str, str]:
    """RxRx19a's control queries: untreated wells of the given conditions (C+) and of active virus (C-)."""
    positive = " or ".join(f"disease_condition == {c!r}" for c in positive_conditions)
    return dict(positive=f"({positive}) and treatment == ''" if len(positive_conditions) > 1
                else f"{positive} and treatment == ''",
                negative=f"disease_condition == {ACTIVE!r} and treatment == ''")


_RXRX19A = ScreenSchema(experiment="experiment", group="cell_type", perturbation="treatment", dose="treatment_conc",
                        positive_name="Mock", negative_name="Active SARS-CoV-2",
                        highlight=("Remdesivir", "GS-441524", "Polydatin"), **_rxrx19a_controls((MOCK,)))
# Presets by name (config.screen.preset). UV-inactivated virus counts as C+ in its own preset rather than by a
# flag: the controls are then said in one place, the positive query, and any other variant is an override.
PRESETS: dict[str, ScreenSchema] = {
    "rxrx19a": _RXRX19A,
    "rxrx19a_uv": dataclasses.replace(_RXRX19A, positive_name="Mock or UV-inactivated",
                                      **_rxrx19a_controls((MOCK, UV_INACTIVATED))),
    "rxrx1": ScreenSchema(experiment="experiment", group="cell_type", perturbation="sirna",
                          positive="well_type == 'positive_control'", negative="well_type == 'negative_control'",
                          positive_name="positive control siRNA", negative_name="negative control"),
    "generic": ScreenSchema(),  # plate / well / site columns, no controls: declare them with config.screen
}


def from_config(screen: Mapping[str, Any], kind: str) -> ScreenSchema:
    """The schema `config.screen` describes: its preset ("" = the reader's for `kind`) with every field it sets.

    Fields left at None keep the preset's value; any other value (an empty string too) replaces it.
    """
    settings = dict(screen)
    name = settings.pop("preset", "") or get_reader(kind).preset
    if name not in PRESETS:
        raise SettingError(f"screen.preset={name!r}: no such preset; known: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ScreenSchema)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise SettingError(f"screen.{unknown[0]}: not a schema field; fields: {', '.join(sorted(fields))}")
    overrides = {k: v for k, v in settings.items() if v is not None}
    if "highlight" in overrides:
        overrides["highlight"] = tuple(overrides["highlight"])
    return dataclasses.replace(PRESETS[name], **overrides)


def select(metadata: pd.DataFrame, query: str, what: str) -> np.ndarray:
    """The rows `query` selects, as a boolean [N] array; `what` names the query in errors (e.g. 'screen.negative').

    Raises `MetadataError` naming a column the query uses that the metadata lacks, or saying why it does not
    evaluate to one True/False per row.
    """
    try:
        result = metadata.eval(query, engine="python")
    except pd.errors.UndefinedVariableError as e:
        name = re.search(r"name '(.+?)' is not defined", str(e))
        raise MetadataError(f"{what}={query!r} names column {name[1] if name else str(e)!r}, which the metadata "
                            f"lacks (columns: {', '.join(map(str, metadata.columns))})") from None
    except Exception as e:  # noqa: BLE001 (pandas raises many types for a malformed expression)
        raise MetadataError(f"{what}={query!r} is not a pandas query over the metadata "
                            f"({type(e).__name__}: {e})") from None
    if isinstance(result, pd.DataFrame):
        raise MetadataError(f"{what}={query!r} assigns a column rather than comparing one (write == to compare)")
    values = np.asarray(result)
    if values.shape != (len(metadata),) or values.dtype != bool:
        raise MetadataError(f"{what}={query!r} does not give one True/False per site (got {values.dtype} "
                            f"{values.shape}); write a comparison such as \"compound == 'DMSO'\"")
    return values


def _perturbed(values: pd.Series) -> np.ndarray:
    """Rows with a perturbation: a non-blank string, or any number."""
    if pd.api.types.is_numeric_dtype(values):
        return values.notna().to_numpy()
    return (values.notna() & (values.astype(str) != "")).to_numpy()


def default_schema() -> ScreenSchema:
    """RxRx19a's schema: what a table without a schema is read as, and the analysis' default screen."""
    return PRESETS["rxrx19a"]


def configured(config: defaults.RunConfig) -> ScreenSchema:
    """A run's schema: `config.screen` over `data.kind`'s preset (RxRx19a with UV-inactivated virus as C+ too:
    `screen.preset="rxrx19a_uv"`). Every stage that picks controls or groups reads this one."""
    return from_config(defaults.values(config.screen), config.data.kind)


def control_role(metadata: pd.DataFrame, *, schema: ScreenSchema | None = None) -> pd.Series:
    """Role of each site: 'C+' (positive control), 'C-' (negative control), 'treated' or 'other'.

    A site with a perturbation (non-blank `schema.perturbation`) is treated unless a control query selects
    it (a positive-control compound is a control, not a hit) or the schema's `treated` query does not.
    Sites with neither are 'other'. Without a schema, a `screen_view` answers with its own `role` column (the
    analysis' tables: the roles its schema gave) and any other table is read as RxRx19a's (`default_schema`).
    """
    if schema is None:
        if "role" in metadata:
            return metadata["role"]
        schema = default_schema()
    role = pd.Series(OTHER, index=metadata.index, dtype=object)
    if schema.perturbation:
        treated = _perturbed(metadata[schema.perturbation])
        if schema.treated:
            treated = treated & select(metadata, schema.treated, "screen.treated")
        role[treated] = TREATED
    for query, name, field in ((schema.positive, POSITIVE, "positive"), (schema.negative, NEGATIVE, "negative")):
        if query:
            role[select(metadata, query, f"screen.{field}")] = name
    return role


def plate_key(metadata: pd.DataFrame, by: str = "plate", *, schema: ScreenSchema | None = None) -> np.ndarray:
    """The cross-validation group of each row: the plate (`{experiment}_{plate}` when the schema names an
    experiment column, since plate names repeat across batches) for by='plate', or the experiment.

    Sites of one plate share its batch effects (stain gain, illumination), so a plate is the smallest unit
    that may be held out. Without a schema the table's `experiment` and `plate` columns are read (a
    `screen_view`'s, or RxRx19a's own).
    """
    schema = schema or default_schema()
    if by == "plate":
        plate = metadata[schema.plate].astype(str)
        return (metadata[schema.experiment].astype(str) + "_" + plate if schema.experiment else plate).to_numpy()
    if by == "experiment":
        if not schema.experiment:
            raise ValueError("group_by='experiment' needs the screen's experiment (batch) column (screen.experiment)")
        return metadata[schema.experiment].astype(str).to_numpy()
    raise ValueError(f"group_by must be 'plate' or 'experiment', got {by!r}")


def _rows_are_wells(metadata: pd.DataFrame, schema: ScreenSchema) -> bool:
    """A table of wells (e.g. the export's well profiles): a well_id, and neither a site_id nor the site column."""
    return "well_id" in metadata and "site_id" not in metadata and schema.site not in metadata


def with_ids(metadata: pd.DataFrame, schema: ScreenSchema) -> pd.DataFrame:
    """`well_id` and `site_id` derived when a table lacks them: `{plate key}_{well}` and `{well_id}_{site}`.

    For RxRx layouts that is the releases' own spelling (`{experiment}_{plate}_{well}[_{site}]`). Ids the
    table has are kept; a derived site_id goes first and a derived well_id after it. Without the schema's
    plate and well columns there is no well_id (the schema check names them). A table of wells (a well_id and
    no site column, e.g. the export's well profiles) has one row per well: its site_id is the well_id. Without a
    site_id to derive it is refused.
    """
    out = metadata.copy()
    if _rows_are_wells(metadata, schema):
        out.insert(0, "site_id", out["well_id"].astype(str))
    plate_columns = [schema.plate, schema.well] + ([schema.experiment] if schema.experiment else [])
    if "well_id" not in out.columns and all(c in out.columns for c in plate_columns):
        well_id = pd.Series(plate_key(out, schema=schema), index=out.index) + "_" + out[schema.well].astype(str)
        out.insert(out.columns.get_loc("site_id") + 1 if "site_id" in out.columns else 0, "well_id", well_id)
    if "site_id" not in out.columns:
        needed = ([] if "well_id" in out.columns else plate_columns) + [schema.site]
        missing = [c for c in needed if c not in out.columns]
        if missing:
            raise MetadataError(f"no site_id column and none to derive it from: the metadata lacks {missing} "
                                "(set screen.plate / screen.well / screen.site to its columns, or add site_id)")
        out.insert(0, "site_id", out["well_id"].astype(str) + "_" + out[schema.site].astype(str))
    return out


# The analysis' own columns (`screen_view`), each named as the schema field it is read from.
VIEW_COLUMNS = ("group", "perturbation", "dose", "well", "viability", "experiment", "plate")


def screen_view(metadata: pd.DataFrame, schema: ScreenSchema) -> pd.DataFrame:
    """The metadata as the analysis reads it, whatever the screen's own columns: its schema applied once.

    Columns named as the schema's fields: site_id, well_id (derived when absent), `well` (its position name,
    e.g. 'B03'), `group` (the biological group, e.g. the cell line; "all" when the schema names none),
    `experiment` (the batch; "screen" when none), `plate`, `role` (C+ / C- / treated / other, from the schema's
    control queries), `perturbation` (that of treated sites, "" for every other), `dose` (float; 1.0 for every
    treated site when the screen has no dose column) and `viability` (float) when the schema names a cell-count
    readout (a column named `viability` is kept as it is and read as one too). Every other column is kept unless
    it would shadow one of these. Every stage that picks controls or plates after reading (the analysis, the training
    probe, a label-fitted extractor's folds) reads this view, so they agree on roles and on the names of the
    plates a fold holds out.
    """
    wells = _rows_are_wells(metadata, schema)
    missing = [f"screen.{field}={column!r}" for field, column in schema.columns().items()
               if column not in metadata and not (wells and field == "site")]
    if missing:
        raise ValueError(f"the metadata lacks the columns the screen schema names: {', '.join(missing)}")
    meta = with_ids(metadata.reset_index(drop=True), schema)
    role = control_role(meta, schema=schema).to_numpy()
    treated = role == TREATED
    view = pd.DataFrame({
        "site_id": meta["site_id"].astype(str), "well_id": meta["well_id"].astype(str),
        "group": meta[schema.group].astype(str) if schema.group else "all",
        "experiment": meta[schema.experiment].astype(str) if schema.experiment else "screen",
        "plate": meta[schema.plate], "well": meta[schema.well].astype(str) if schema.well else "", "role": role,
        "perturbation": np.where(treated, meta[schema.perturbation].astype(str), "") if schema.perturbation else "",
        "dose": (np.where(treated, pd.to_numeric(meta[schema.dose]), np.nan) if schema.dose
                           else np.where(treated, 1.0, np.nan)).astype(np.float64)})
    if schema.viability:
        view["viability"] = pd.to_numeric(meta[schema.viability]).astype(np.float64).to_numpy()
    kept = [c for c in meta.columns if c not in view.columns and c not in schema.columns().values()]
    return pd.concat([view, meta[kept]], axis=1)


def validate(metadata: pd.DataFrame, schema: ScreenSchema, source: str) -> None:
    """Refuse a schema that does not describe `metadata` (read from `source`), in one line naming the field.

    Every declared column must exist, the dose and viability must be numeric, each control query and the treated
    query must evaluate on the metadata and select at least one site, no site may be both a positive and a
    negative control, and every treated site needs a dose that is a finite number >= 0.
    """
    columns = ", ".join(map(str, metadata.columns))
    for field, column in schema.columns().items():
        if column not in metadata.columns:
            raise MetadataError(f"screen.{field}={column!r}: {source} has no such column (columns: {columns})")
    for field in NUMERIC_FIELDS:
        column = getattr(schema, field)
        if column and not pd.api.types.is_numeric_dtype(metadata[column]):
            bad = pd.to_numeric(metadata[column].replace("", np.nan), errors="coerce").isna() & (metadata[column] != "")
            example = metadata[column][bad].iloc[0] if bad.any() else metadata[column].iloc[0]
            raise MetadataError(f"screen.{field}={column!r}: column of {source} holds {example!r}, not a number")
    if schema.treated and not schema.perturbation:
        raise MetadataError(f"screen.treated={schema.treated!r} picks treatments among the perturbed sites, but the "
                            "schema names no perturbation column (set screen.perturbation)")
    chosen = {}
    for field in QUERY_FIELDS:
        query = getattr(schema, field)
        if query:
            chosen[field] = select(metadata, query, f"screen.{field}")
            if not chosen[field].any():
                raise MetadataError(f"screen.{field}={query!r} selects no site of {source}")
    if {"positive", "negative"} <= set(chosen) and (both := chosen["positive"] & chosen["negative"]).any():
        first = metadata.iloc[int(np.argmax(both))]
        raise MetadataError(f"screen.positive and screen.negative both select {int(both.sum())} site(s) of {source}, "
                            f"e.g. {first.get('site_id', first.name)!r}")
    if schema.dose:
        _check_doses(metadata, schema, source)


def _check_doses(metadata: pd.DataFrame, schema: ScreenSchema, source: str) -> None:
    """Refuse a treated site without a dose and a dose below 0 or not finite, naming the column, the site and the
    value: dose-response would silently drop the first and fit its curves through the others."""
    column = metadata[schema.dose]
    doses = pd.to_numeric(column.replace("", np.nan), errors="coerce").to_numpy(dtype=float)
    treated = control_role(metadata, schema=schema).to_numpy() == TREATED
    blank, impossible = treated & np.isnan(doses), ~np.isnan(doses) & ~(np.isfinite(doses) & (doses >= 0))
    for bad, what in ((blank, "a blank dose for a treated site"), (impossible, "a dose that is not a number >= 0")):
        if bad.any():
            i = int(np.argmax(bad))
            site = metadata["site_id"].iloc[i] if "site_id" in metadata.columns else metadata.index[i]
            raise MetadataError(f"screen.dose={schema.dose!r}: column of {source} holds {str(column.iloc[i])!r} for "
                                f"site {site!r} ({int(bad.sum())} site(s) like it): {what}; give every treated site "
                                "its concentration, a finite number >= 0")


# ---------------------------------------------------------------------------------------------------------------
# Readers


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a screen is and how to read it: `config.data`'s reader fields, typed."""

    kind: str
    root: str
    metadata: str = "metadata.csv"
    channel_columns: tuple[str, ...] = ()
    stains: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, data: defaults.Data, root: str | None = None) -> Source:
        """The source `config.data` names (`root` replaces data.root, e.g. the synthetic screen's folder)."""
        return cls(data.kind, root or data.root, data.metadata, tuple(data.channel_columns), tuple(data.stains))


@dataclasses.dataclass(frozen=True)
class Reader:
    target: str  # "module:function" under gandl.data; the function returns a Screen
    summary: str  # what data.root (and data.metadata) name for this kind
    args: tuple[str, ...]  # `Source` fields, and "schema", the function takes as keywords
    preset: str  # the schema preset of screens of this kind (config.screen.preset "")
    stains: tuple[str, ...] = ()  # the kind's fixed channel layout, when it has one


READERS = {
    "rxrx19a": Reader("rxrx:read_rxrx19a", "a folder with metadata.csv and images/{experiment}/Plate{plate}/ "
                      "(RxRx19a layout, 5 stains)", ("root", "metadata"), "rxrx19a", STAINS["rxrx19a"]),
    "rxrx1": Reader("rxrx:read_rxrx1", "a folder with metadata.csv and images/[{dataset}/]{experiment}/Plate{plate}/ "
                    "(RxRx1 layout, 6 stains)", ("root", "metadata"), "rxrx1", STAINS["rxrx1"]),
    "generic": Reader("generic:read_generic", "a CSV with one image-path column per channel (data.channel_columns) "
                      "and any metadata columns", ("root", "channel_columns", "stains", "schema"), "generic"),
    "ome_zarr": Reader("ome_zarr:read_plates", "OME-Zarr HCS plates (a path, a comma-separated list or a glob), "
                       "joined with the CSV data.metadata on plate/well[/site]", ("root", "metadata", "stains"),
                       "generic"),
}


def get_reader(kind: str) -> Reader:
    if kind not in READERS:
        raise MetadataError(f"data.kind={kind!r}: no such screen reader; known: {', '.join(READERS)}")
    return READERS[kind]


def read_screen(source: Source, schema: ScreenSchema | None = None) -> Screen:
    """Read the screen `source` names with its kind's reader (metadata and channel references; no pixels).

    `schema` (default: the kind's preset) tells readers that derive ids which columns are plate, well, site.
    """
    reader = get_reader(source.kind)
    module, function = reader.target.split(":")
    read = getattr(importlib.import_module(f"gandl.data.{module}"), function)
    values = dict(dataclasses.asdict(source), schema=schema or PRESETS[reader.preset])
    return read(**{name: values[name] for name in reader.args})


def read_configured(config: defaults.Config, root: str | None = None) -> Screen:
    """The screen a run's config names in `data` (or the one at `root`), its schema (`screen`) checked against its
    metadata and its channels against `model.num_channels`: what convert will read, refused in one line if it
    cannot be; a layout whose controls sit where a plate-position effect could pass for their signal is warned
    about. Reads metadata and channel references only, never pixels (and loads no TensorFlow here).
    """
    data, schema = config.data, configured(config)
    screen = read_screen(Source.from_config(data, root), schema)
    validate(screen.metadata, schema, screen.source)
    stains, wanted = screen.stains, config.model.num_channels
    channels = tuple(data.channels) or tuple(range(1, len(stains) + 1))
    if not all(1 <= c <= len(stains) for c in channels):
        raise MetadataError(f"data.channels={channels}: {screen.source} has {len(stains)} channels {stains}; name "
                            f"channels in 1..{len(stains)}")
    if len(channels) != wanted:
        picked = f" read as data.channels={channels}" if data.channels else ""
        pick = f" or pick {wanted} of them with data.channels" if wanted < len(stains) else ""
        raise MetadataError(f"model.num_channels={wanted}: {screen.source} has {len(stains)} channels "
                            f"{stains}{picked}; set model.num_channels={len(channels)}{pick}")
    meta = screen.metadata
    for warning in wells.layout_warnings(meta[schema.well], plate_key(meta, schema=schema),
                                         control_role(meta, schema=schema)):
        logging.warning("%s: controls confounded with plate position: %s (the hit calls remove edge and row/column "
                        "effects estimated from the treated wells; the report repeats this)", screen.source, warning)
    return screen


def channel_count(source: Source) -> int | None:
    """Channels of the screen `source` names, when its settings say (None: known only once read)."""
    reader = READERS.get(source.kind)
    if reader is None:
        return None
    if "channel_columns" in reader.args:
        return len(source.channel_columns) or None
    return len(reader.stains or source.stains) or None
