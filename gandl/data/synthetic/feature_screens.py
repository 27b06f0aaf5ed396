"""Screens as site metadata and feature vectors with a known truth (no images): what the analysis' error rates
and power are measured on (`gandl.analysis.calibration`, `benchmarks/calibration.py`).

A layout like RxRx19a's plates (its columns; C+ = Mock, C- = Active SARS-CoV-2 untreated), every well at a real
384-well position, and features drawn from a model whose truth is known:

  - `null_features` / `shuffle_within_plates`: no treatment effect at all (i.i.d. noise, noise with plate
    offsets, or a real feature set with its rows shuffled among the sites of each plate);
  - `screen`: a true effect model in feature space. C+ = C- + delta (a random direction, `separation` well
    sds long); each compound x cell line moves its wells a true fraction `rescue` of delta at each dose
    (0.5 is the rescue threshold: efficacy 0, half way from C- to C+), on top of plate offsets, well and
    site noise, and whatever a `Setting` adds: unequal variance, heavy tails, artefact sites, edge effects
    with the controls on the edge, cytotoxic compounds far off the axis, a vehicle effect, graded actives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd

from gandl.data.vocabulary import ACTIVE, MOCK
from gandl.data.wells import edge_distance, well_positions

DOSES_UM = (0.0316, 0.1, 0.316, 1.0, 3.16, 10.0)  # six half-log doses
THRESHOLD = 0.5  # true rescue (fraction of the C- -> C+ distance) a hit must exceed: efficacy 0
PLACEMENTS = ("random", "edge")
EDGE_COLUMNS = (1, 2, 23, 24)  # where "edge" placement puts the controls: two outer columns on each side
_WELLS = np.array([f"{row}{col:02d}" for row in "ABCDEFGHIJKLMNOP" for col in range(1, 25)])
_ON_EDGE_COLUMNS = np.isin(np.tile(np.arange(1, 25), 16), EDGE_COLUMNS)
VIABILITY_LOSS = 0.6  # share of the cells a cytotoxic compound kills at the top dose (viability ~0.4)


def plate_wells(rng: np.random.Generator, controls: int, treated: int, control_placement: str = "random"
                ) -> np.ndarray:
    """Names of a 384-well plate's wells at random positions: `controls` control wells, then `treated`.

    "random": anywhere on the plate; "edge": controls only in columns 1, 2, 23 and 24, treated wells in
    columns 3 to 22 (a common design, and one where an edge effect is confounded with the controls).
    """
    if control_placement not in PLACEMENTS:
        raise ValueError(f"control_placement must be one of {PLACEMENTS}, got {control_placement!r}")
    pools = ([(_WELLS, controls + treated, "wells")] if control_placement == "random" else
             [(_WELLS[_ON_EDGE_COLUMNS], controls, "control wells in columns 1, 2, 23, 24"),
              (_WELLS[~_ON_EDGE_COLUMNS], treated, "treated wells in columns 3-22")])
    for pool, n, what in pools:
        if n > len(pool):
            raise ValueError(f"{n} {what} do not fit a 384-well plate, which has room for {len(pool)}")
    return np.concatenate([rng.permutation(pool)[:n] for pool, n, _ in pools])


def layout(*, plates_per_line: int = 4, compounds: int = 24, positive_wells: int = 16, negative_wells: int = 16,
           sites_per_well: int = 3, lines: tuple[str, ...] = ("HRCE", "VERO"), control_placement: str = "random",
           seed: int = 0) -> pd.DataFrame:
    """Site metadata of a screen whose every plate holds each compound at each dose once plus its controls.

    Columns as RxRx19a's (C+ = Mock, C- = Active SARS-CoV-2 untreated, treated wells Active + compound),
    one experiment per cell line; `well` is a 384-well position ('A01'..'P24') drawn per plate
    (`plate_wells`, seeded by `seed`), so position effects can be modelled and simulated.
    """
    rng = np.random.default_rng(seed)
    conditions = ([(MOCK, "", np.nan)] * positive_wells + [(ACTIVE, "", np.nan)] * negative_wells
                  + [(ACTIVE, f"compound-{c:03d}", d) for c in range(compounds) for d in DOSES_UM])
    rows = []
    for line in lines:
        for plate in range(1, plates_per_line + 1):
            wells = plate_wells(rng, positive_wells + negative_wells, compounds * len(DOSES_UM), control_placement)
            for well, (condition, treatment, dose) in zip(wells, conditions):
                well_id = f"{line}-1_{plate}_{well}"
                rows += [dict(site_id=f"{well_id}_{s}", well_id=well_id, cell_type=line, experiment=f"{line}-1",
                              plate=plate, well=str(well), site=s, disease_condition=condition,
                              treatment=treatment, treatment_conc=dose) for s in range(1, sites_per_well + 1)]
    return pd.DataFrame(rows)


def _group_offsets(keys: pd.Series, sd: float, dim: int, rng: np.random.Generator) -> np.ndarray:
    """One N(0, sd^2) offset per distinct key, for each row: what a plate or a well shares."""
    codes, groups = pd.factorize(keys)
    return (sd * rng.standard_normal((len(groups), dim), dtype=np.float32))[codes]


def null_features(metadata: pd.DataFrame, dim: int, rng: np.random.Generator, plate_sd: float = 0.0,
                  well_sd: float = 0.0) -> np.ndarray:
    """N(0, 1) site features plus, optionally, a random offset per plate and per well (shared by its sites)."""
    x = rng.standard_normal((len(metadata), dim), dtype=np.float32)
    for column, sd in (("plate", plate_sd), ("well_id", well_sd)):
        if sd:
            x += _group_offsets(metadata["experiment"].astype(str) + "_" + metadata[column].astype(str), sd, dim, rng)
    return x


def shuffle_within_plates(features: np.ndarray, metadata: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Rows permuted among the sites of each plate: plate effects stay, every treatment and control effect goes."""
    order = np.arange(len(metadata))
    key = (metadata["experiment"].astype(str) + "_" + metadata["plate"].astype(str)).to_numpy()
    for rows in pd.Series(np.arange(len(key))).groupby(key).indices.values():
        order[rows] = rng.permutation(rows)
    return np.asarray(features)[order]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One kind of simulated screen: layout, noise model and compound effects.

    Every sd and shift is in units of the (treated) well sd; shifts along or off the axis in units of
    `|delta|`, the C- -> C+ distance. Null settings (no `levels`) hold no compound with true rescue >= 0.5
    that is not cytotoxic, so every hit there is false.
    """

    description: str
    plates_per_line: int = 4
    compounds: int = 24
    positive_wells: int = 16
    negative_wells: int = 16
    sites_per_well: int = 3
    control_placement: str = "random"
    separation: float = 3.0  # |delta| in well sds
    line_sd: float = 1.0  # offset per cell line
    plate_sd: float = 0.5  # offset per plate
    control_well_sd: float = 1.0
    treated_well_sd: float = 1.0
    control_site_sd: float = 1.0
    treated_site_sd: float = 1.0
    noise_df: float | None = None  # Student t degrees of freedom of the well and site noise (None: Gaussian)
    artefact_share: float = 0.0  # share of sites with `artefact_scale` times their site noise
    artefact_scale: float = 10.0
    edge_shift: float = 0.0  # shift of the wells in the two outer rings, in |delta| (sign: towards C+)
    edge_direction: str = "axis"  # axis: along delta | random: a random direction
    cytotoxic_share: float = 0.0  # share of the compounds (per line) that go off the axis and kill cells
    cytotoxic_off_axis: float = 4.0  # their top-dose shift orthogonal to delta, in |delta|
    cytotoxic_rescue: float = 0.6  # and along it
    vehicle: float = 0.0  # every treated well's shift towards C+, in |delta| (part of its true rescue)
    vehicle_off_axis: float = 0.0  # and orthogonal to delta
    levels: tuple[float, ...] = ()  # true rescue at the top dose of the actives (Hill curves over the doses)
    actives_per_level: int = 1  # per cell line
    dim: int | None = None  # feature width the setting is defined at (None: the caller's)
    analysis: Mapping[str, object] = dataclasses.field(default_factory=dict)  # AnalysisConfig fields to use

    def __post_init__(self):
        if self.edge_direction not in ("axis", "random"):
            raise ValueError(f"edge_direction must be 'axis' or 'random', got {self.edge_direction!r}")

    @property
    def null(self) -> bool:
        """No true active: every hit is false, and any hit at all is what the FDR bounds."""
        return all(level < THRESHOLD for level in self.levels)


_EDGE = dict(control_placement="edge", edge_shift=-0.75)  # edge wells towards C-: interior ones look rescued
_HARD = dict(control_well_sd=0.5, artefact_share=0.02, analysis=dict(well_aggregate="mean"), **_EDGE)
LEVELS = (0.25, 0.4, 0.5, 0.6, 0.75, 1.0)
SETTINGS: dict[str, Setting] = {
    "iid": Setting("every well and site from one Gaussian model (plate offsets, well and site noise)"),
    "unequal-variance": Setting("treated wells more variable than controls: well sd 1.0 vs 0.5",
                                control_well_sd=0.5),
    "treated-sd-1.5": Setting("treated wells' well and site sd x 1.5", treated_well_sd=1.5, treated_site_sd=1.5),
    "heavy-tails": Setting("identical distributions, Student t noise (3 df)", noise_df=3.0),
    "artefacts": Setting("2 % artefact sites (10x site noise), well_aggregate=mean", artefact_share=0.02,
                         analysis=dict(well_aggregate="mean")),
    "edge-axis": Setting("controls only in edge columns; the two outer rings shifted 0.75 of delta towards C-",
                         **_EDGE),
    "edge-random": Setting("controls only in edge columns; the two outer rings shifted 0.75 |delta| in a random "
                           "direction", control_placement="edge", edge_shift=0.75, edge_direction="random"),
    "off-axis": Setting("a quarter of the compounds cytotoxic: 4 |delta| off the axis plus 0.6 delta along it, "
                        "viability ~0.4 at the top dose; D = 512", cytotoxic_share=0.25, dim=512),
    "few-controls": Setting("2 C+ and 2 C- wells per plate", positive_wells=2, negative_wells=2),
    "small-screen": Setting("3 plates per line, 8 + 8 control wells, 2 sites per well", plates_per_line=3,
                            positive_wells=8, negative_wells=8, sites_per_well=2),
    "vehicle": Setting("every treated well shifted 0.4 delta towards C+ and 0.25 |delta| off the axis",
                       vehicle=0.4, vehicle_off_axis=0.25),
    "boundary": Setting("every compound rescues 0.499 of delta at its top dose, just below the threshold: a test "
                        "that holds its level calls false hits here at up to the FDR, not far below it",
                        levels=(0.499,), actives_per_level=24),
    "actives-benign": Setting("one compound per line at each rescue level " + ", ".join(map(str, LEVELS))
                              + " (top dose), the rest inert", levels=LEVELS),
    "actives-hard": Setting("the graded actives with unequal variance (0.5 vs 1.0), 2 % artefact sites and "
                            "controls on an edge shifted towards C-", levels=LEVELS, **_HARD),
}


def hill(conc: np.ndarray, top: np.ndarray | float, ec50: float, slope: float = 1.5) -> np.ndarray:
    """A sigmoid in log dose reaching `top` at the highest screened dose: how an effect grows with dose."""
    def sigmoid(d):
        return d ** slope / (d ** slope + ec50 ** slope)
    return np.asarray(top) * sigmoid(np.asarray(conc, np.float64)) / sigmoid(max(DOSES_UM))


def null_truth(metadata: pd.DataFrame) -> pd.DataFrame:
    """The truth of a screen whose compounds do nothing: every treated dose with rescue 0, none cytotoxic."""
    treated = metadata[metadata["treatment"].fillna("").astype(str) != ""]
    truth = treated[["treatment", "cell_type", "treatment_conc"]].drop_duplicates().reset_index(drop=True)
    return truth.assign(rescue=0.0, toxicity=0.0, cytotoxic=False)


def compound_truth(setting: Setting, metadata: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Per compound x cell line x dose: true `rescue` (on-axis position, fraction of delta from C-),
    `toxicity` (0..1, share of the cytotoxic phenotype reached) and `cytotoxic` (toxicity >= 0.5).

    Per cell line, random compounds get the `levels` (Hill curves, EC50 1 uM) and the next ones the
    cytotoxic phenotype (EC50 3.16 uM); every treated well carries the vehicle's shift.
    """
    truth = null_truth(metadata)
    per_line = truth.groupby("cell_type")["treatment"].transform("nunique").to_numpy()
    compounds = truth["treatment"].drop_duplicates()
    rank_of = {line: dict(zip(compounds, rng.permutation(len(compounds)))) for line in truth["cell_type"].unique()}
    rank = np.array([rank_of[line][c] for line, c in zip(truth["cell_type"], truth["treatment"])])
    actives = len(setting.levels) * setting.actives_per_level
    toxic = np.round(setting.cytotoxic_share * per_line).astype(int)
    if (actives + toxic > per_line).any():
        raise ValueError(f"{actives} actives and {toxic.max()} cytotoxic compounds do not fit {per_line.min()} "
                         "compounds per cell line")
    level = np.asarray(setting.levels + (0.0,))[np.minimum(rank // setting.actives_per_level, len(setting.levels))]
    toxicity = hill(truth["treatment_conc"], ((rank >= actives) & (rank < actives + toxic)).astype(float), 3.16)
    rescue = setting.vehicle + hill(truth["treatment_conc"], level, 1.0) + setting.cytotoxic_rescue * toxicity
    return truth.assign(rescue=rescue, toxicity=toxicity, cytotoxic=toxicity >= 0.5)


def _unit(rng: np.random.Generator, shape: tuple[int, ...], orthogonal_to: np.ndarray | None = None) -> np.ndarray:
    """Random unit vectors along the last axis, optionally orthogonal to a vector."""
    v = rng.standard_normal(shape)
    if orthogonal_to is not None:
        u = orthogonal_to / np.linalg.norm(orthogonal_to)
        v -= (v @ u)[..., None] * u
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], df: float | None) -> np.ndarray:
    """Unit-variance noise: Gaussian, or Student t with `df` > 2 degrees of freedom (heavy tails)."""
    if df is None:
        return rng.standard_normal(shape, dtype=np.float32)
    return (rng.standard_t(df, shape) * np.sqrt((df - 2) / df)).astype(np.float32)


def _treated_effects(setting: Setting, truth: pd.DataFrame, delta: np.ndarray, rng: np.random.Generator
                     ) -> np.ndarray:
    """[len(truth), D] mean shift of each compound x line x dose's wells from C-: rescue along delta, the
    vehicle's and the cytotoxic phenotype's off-axis parts."""
    length = np.linalg.norm(delta)
    pair, pairs = pd.factorize(truth["treatment"] + "|" + truth["cell_type"])
    away = _unit(rng, (len(pairs), len(delta)), delta)[pair]
    vehicle = setting.vehicle_off_axis * length * _unit(rng, (len(delta),), delta)
    off = (setting.cytotoxic_off_axis * length * truth["toxicity"].to_numpy())[:, None] * away
    return truth["rescue"].to_numpy()[:, None] * delta + off + vehicle


def _edge_wells(wells: pd.Series) -> np.ndarray:
    """Wells in a 384-well plate's two outer rings (where evaporation shifts them)."""
    rows, cols = well_positions(wells)
    return edge_distance(rows, cols, (16, 24)) <= 1


def screen(setting: Setting, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """A simulated screen: (features [N, dim] float32, site metadata with `viability`, truth).

    The metadata is `layout`'s plus `viability` (cell count relative to the C- wells, 1 unless cytotoxic,
    with 10 % well and site noise); the truth is `compound_truth`'s, one row per compound x line x dose.
    """
    meta = layout(plates_per_line=setting.plates_per_line, compounds=setting.compounds,
                  positive_wells=setting.positive_wells, negative_wells=setting.negative_wells,
                  sites_per_well=setting.sites_per_well, control_placement=setting.control_placement,
                  seed=int(rng.integers(2 ** 31)))
    truth = compound_truth(setting, meta, rng)
    delta = (setting.separation * _unit(rng, (dim,))).astype(np.float32)
    site_well, _ = pd.factorize(meta["well_id"])
    wells = meta.drop_duplicates("well_id").reset_index(drop=True)
    treated = (wells["treatment"] != "").to_numpy()
    dose = wells.merge(truth.reset_index(), on=["treatment", "cell_type", "treatment_conc"], how="left")["index"]
    shift = np.zeros((len(wells), dim), np.float32)
    shift[treated] = _treated_effects(setting, truth, delta, rng)[dose[treated].astype(int)]
    shift[(wells["disease_condition"] == MOCK).to_numpy()] = delta
    edge = delta / np.linalg.norm(delta) if setting.edge_direction == "axis" else _unit(rng, (dim,))
    shift[_edge_wells(wells["well"])] += setting.edge_shift * setting.separation * edge
    shift += _group_offsets(wells["cell_type"], setting.line_sd, dim, rng)
    shift += _group_offsets(wells["experiment"] + "_" + wells["plate"].astype(str), setting.plate_sd, dim, rng)
    well_sd = np.where(treated, setting.treated_well_sd, setting.control_well_sd).astype(np.float32)
    site_sd = np.where(treated, setting.treated_site_sd, setting.control_site_sd).astype(np.float32)[site_well]
    site_sd *= np.where(rng.random(len(meta)) < setting.artefact_share, setting.artefact_scale, 1.0).astype(np.float32)
    x = (shift + well_sd[:, None] * _noise(rng, shift.shape, setting.noise_df))[site_well]
    x += site_sd[:, None] * _noise(rng, x.shape, setting.noise_df)
    toxicity = np.where(treated, truth["toxicity"].to_numpy()[dose.fillna(0).astype(int)], 0.0)
    viability = ((1 - VIABILITY_LOSS * toxicity) * np.exp(0.1 * rng.standard_normal(len(wells))))[site_well]
    return x, meta.assign(viability=viability * np.exp(0.1 * rng.standard_normal(len(meta)))), truth


def pair_truth(truth: pd.DataFrame) -> pd.DataFrame:
    """Per compound x cell line (as the schema's `perturbation` x `group`, the hit list's columns): its best true
    rescue over the doses and whether it is cytotoxic at any."""
    pairs = truth.groupby(["treatment", "cell_type"], as_index=False).agg(rescue=("rescue", "max"),
                                                                          cytotoxic=("cytotoxic", "any"))
    return pairs.rename(columns={"treatment": "perturbation", "cell_type": "group"})
