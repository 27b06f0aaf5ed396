"""Writing synthetic screens in the layouts the readers know: RxRx19a, RxRx1, and a CellProfiler-style screen.

Each writer builds its whole plate design first, then claims the directory (`synthetic.json`, its parameters)
and renders site after site; metadata.csv is written last, so a directory holding it is complete, a rerun with
the same parameters returns at once and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from gandl.data.synthetic.cells import (
    CELL_LINES,
    RXRX1_STAINS,
    RXRX19A_STAINS,
    CellLine,
    PlateEffects,
    check_size_depth,
    keyed_rng,
    reference_histogram,
    render_site,
    sample_plate_effects,
)
from gandl.data.synthetic.truth import CONDITION_INFECTION, hidden_efficacy, hidden_toxicity, make_truth
from gandl.data.vocabulary import ACTIVE, BLANK, MOCK, RXRX1_COLUMNS, RXRX19A_COLUMNS, UV_INACTIVATED
from gandl.data.vocabulary import image_path as rxrx_image_path

# Six half-log doses, 0.0316 .. 10 uM, rounded to three significant digits as a plate map would list them.
DOSES_UM = tuple(float(f"{c:.3g}") for c in 10.0 ** np.arange(-1.5, 1.5, 0.5))

DEMO_RXRX19A = dict(image_size=64, plates_per_cell_line=4, sites_per_well=3, num_compounds=24,
                    control_wells_per_plate=(16, 8, 16, 4))

_FORMAT_VERSION = 1
# write_rxrx19a's test-bed options at which it draws the standard screen; only other values enter its stamp,
# so a standard screen written before the options existed still resumes.
_TEST_BED_DEFAULTS = dict(morphology_only=False, phenotype_strength=1.0, cell_density=1.0, cytotoxic_mimicry=0.0,
                          toxic_fraction=None, control_layout="random", edge_effect=0.0)


_INNER_WELLS = tuple(f"{r}{c:02d}" for r in "BCDEFGHIJKLMNO" for c in range(2, 24))
_EDGE_WELLS = tuple(f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)
                    if r in "AP" or c in (1, 24))


# control_layout="edge": controls in the outer two columns on each side, compounds between them (inner rows first).
_CONTROL_COLUMNS = (1, 2, 23, 24)
_EDGE_LAYOUT_CONTROLS = tuple(f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in _CONTROL_COLUMNS)
_EDGE_LAYOUT_COMPOUNDS = tuple(tuple(w for w in wells if int(w[1:]) not in _CONTROL_COLUMNS)
                               for wells in (_INNER_WELLS, _EDGE_WELLS))


def _plate_wells(rng: np.random.Generator, n: int) -> list[str]:
    """n wells of a 384-well plate in random positions, inner wells first (edges only when needed)."""
    if n > 384:
        raise ValueError(f"a 384-well plate holds at most 384 wells, asked for {n}")
    inner = list(rng.permutation(_INNER_WELLS))
    return (inner + list(rng.permutation(_EDGE_WELLS)))[:n]


def _random_layout(rng: np.random.Generator, items: Sequence[dict]) -> list[str]:
    """Every well of the design in a random position, controls and compounds alike (`_plate_wells`)."""
    return _plate_wells(rng, len(items))


def _edge_layout(rng: np.random.Generator, items: Sequence[dict]) -> list[str]:
    """Controls (no treatment) in random wells of columns 1, 2, 23 and 24, compounds in random wells between
    them, inner rows first: a plate map whose controls share the edge wells' artefacts and the compounds don't,
    so a score anchored on the controls is confounded with position. `write_rxrx19a` checks that they fit."""
    controls = iter(rng.permutation(_EDGE_LAYOUT_CONTROLS))
    compounds = iter([*rng.permutation(_EDGE_LAYOUT_COMPOUNDS[0]), *rng.permutation(_EDGE_LAYOUT_COMPOUNDS[1])])
    return [next(controls if item["treatment"] == "" else compounds) for item in items]


_LAYOUTS = {"random": _random_layout, "edge": _edge_layout}
CONTROL_LAYOUTS = tuple(_LAYOUTS)  # write_rxrx19a's control_layout values


@dataclasses.dataclass(frozen=True)
class _Well:
    """One well of a plate design where the layout put it; `key` (line, plate, well indices) seeds its streams."""

    key: tuple[int, int, int]
    line: str
    experiment: str
    plate: int
    well: str
    effects: PlateEffects  # its plate's
    design: dict  # what the design puts in it (a condition, an siRNA)

    def site(self, site: int) -> dict:
        """The metadata every layout gives a site of this well."""
        return dict(site_id=f"{self.experiment}_{self.plate}_{self.well}_{site}",
                    well_id=f"{self.experiment}_{self.plate}_{self.well}", cell_type=self.line,
                    experiment=self.experiment, plate=self.plate, well=self.well, site=site)


def _wells(seed: int, screen: int, lines: Sequence[str], plates_per_cell_line: int, plates_per_experiment: int,
           design: Callable[[str], Sequence[dict]], experiment_digits: int = 1,
           place: Callable[[np.random.Generator, Sequence[dict]], list[str]] = _random_layout) -> Iterator[_Well]:
    """Every well of every plate of every cell line, plates numbered within experiments `{line}-{n}`.

    Each plate's own stream (seed, screen, 1, line, plate) draws its batch effects, then where `place` puts
    each of the line's `design` wells.
    """
    for li, line in enumerate(lines):
        items = design(line)
        for pi in range(plates_per_cell_line):
            experiment = f"{line}-{pi // plates_per_experiment + 1:0{experiment_digits}d}"
            plate_rng = keyed_rng(seed, screen, 1, li, pi)
            effects = sample_plate_effects(plate_rng, len(RXRX1_STAINS))
            for wi, (well, item) in enumerate(zip(place(plate_rng, items), items)):
                yield _Well((li, pi, wi), line, experiment, pi % plates_per_experiment + 1, well, effects, item)


def _atomic_write(path: pathlib.Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def png_bytes(channel: np.ndarray) -> bytes:
    """A grayscale PNG (8 or 16 bit) of a 2-D uint8 / uint16 array."""
    buf = io.BytesIO()
    Image.fromarray(channel).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _save_png(path: pathlib.Path, channel: np.ndarray) -> None:
    data = png_bytes(channel)
    _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def image_path(root: pathlib.Path, experiment: str, plate: int, well: str, site: int, channel: int,
               ) -> pathlib.Path:
    """Where a site's channel goes in the screen folder `root` (the official layout under images/)."""
    return pathlib.Path(rxrx_image_path(str(pathlib.Path(root) / "images"), experiment, plate, well, site, channel))


def _prepare(out_dir: str | os.PathLike, params: dict) -> tuple[pathlib.Path, bool]:
    """True when `out_dir` already holds this exact, complete screen; refuses one made with other parameters."""
    root = pathlib.Path(out_dir)
    stamp = root / "synthetic.json"
    if stamp.exists():
        if stamp.read_text() != _stamp_text(params):
            raise ValueError(f"{root} holds a synthetic screen made with other parameters; use a new dir")
        return root, (root / "metadata.csv").exists()
    return root, False


def _stamp_text(params: dict) -> str:
    return json.dumps({"format_version": _FORMAT_VERSION, **params}, sort_keys=True, indent=1)


def _claim(root: pathlib.Path, params: dict) -> None:
    """Mark `root` as this screen's, once its whole design is built: a refused call leaves nothing behind."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "synthetic.json"
    if not stamp.exists():
        _atomic_write(stamp, lambda tmp: tmp.write_text(_stamp_text(params)))


def _write_sites(root: pathlib.Path, records: Sequence[dict], render) -> None:
    """Renders and writes every site whose channel files are not all present yet."""
    for rec in records:
        paths = [image_path(root, rec["experiment"], rec["plate"], rec["well"], rec["site"], ch + 1)
                 for ch in range(rec["_channels"])]
        if all(p.exists() for p in paths):
            continue
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        img = render(rec)
        for ch, path in enumerate(paths):
            if not path.exists():
                _save_png(path, np.ascontiguousarray(img[..., ch]))


def _write_table(path: pathlib.Path, frame: pd.DataFrame) -> None:
    _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_rxrx19a(out_dir: str | os.PathLike, *, seed: int = 0, image_size: int = 64,
                  plates_per_cell_line: int = 2, plates_per_experiment: int = 2, sites_per_well: int = 2,
                  num_compounds: int = 8, control_wells_per_plate: tuple[int, int, int, int] = (6, 3, 6, 2),
                  bit_depth: int = 8, morphology_only: bool = False, phenotype_strength: float = 1.0,
                  cell_density: float = 1.0, cytotoxic_mimicry: float = 0.0, toxic_fraction: float | None = None,
                  control_layout: str = "random", edge_effect: float = 0.0) -> pathlib.Path:
    """Writes an RxRx19a-like screen (images, metadata.csv, truth.csv) and returns its directory.

    Each plate holds every compound at the six DOSES_UM plus `control_wells_per_plate` = (Mock, UV, Active,
    blank) wells, in a random layout. HRCE and VERO get their own experiments (`HRCE-1`, `HRCE-2`, ... of
    `plates_per_experiment` plates each). metadata.csv is written last: a directory holding it is complete,
    and a rerun with the same parameters returns at once; an interrupted run resumes where it stopped.

    Harder test beds, each off at its default: `morphology_only` rank-matches every channel of every site to
    one `reference_histogram` per channel (shared by all conditions, plates and lines), so only shape,
    arrangement and texture tell conditions apart; `phenotype_strength` in (0, 1] scales every site's
    infection and toxicity level (the infection phenotype and the compound effects; truth.csv keeps the
    relative efficacy); `cell_density` in (0, 1] scales each cell line's cells per site.

    Test beds for false hits, off at their defaults too: `cytotoxic_mimicry` in [0, 1] draws compounds at
    toxicity t with their infection level scaled by 1 - cytotoxic_mimicry * t (dying cells lose the viral
    phenotype), so inert cytotoxic compounds look partly rescued while their lost and apoptotic cells still
    mark them (fewer nuclei: a lower Hoechst mean); truth.csv keeps their emax 0. `toxic_fraction` in
    [0, 1] makes that share of the generated compounds toxic-inert (`truth.generated_classes`; None: the
    effective / inert / toxic cycle). `control_layout` "edge" puts every control in columns 1, 2, 23 and 24
    and the compounds between them ("random": anywhere, inner wells first); `edge_effect` in (-1, 1] scales
    the stain gain of the outer ring (rows A and P, columns 1 and 24) by 1 + edge_effect, as evaporation does
    (0.15: 15 % brighter).
    """
    options = dict(morphology_only=morphology_only, phenotype_strength=phenotype_strength, cell_density=cell_density,
                   cytotoxic_mimicry=cytotoxic_mimicry, toxic_fraction=toxic_fraction,
                   control_layout=control_layout, edge_effect=edge_effect)
    params = dict(kind="rxrx19a", seed=seed, image_size=image_size, plates_per_cell_line=plates_per_cell_line,
                  plates_per_experiment=plates_per_experiment, sites_per_well=sites_per_well,
                  num_compounds=num_compounds, control_wells_per_plate=list(control_wells_per_plate),
                  bit_depth=bit_depth, **{k: v for k, v in options.items() if v != _TEST_BED_DEFAULTS[k]})
    _check_common(image_size, bit_depth, sites_per_well, plates_per_cell_line, plates_per_experiment)
    _check_test_bed(options, num_compounds, control_wells_per_plate)
    root, done = _prepare(out_dir, params)
    if done:
        return root
    lines = ("HRCE", "VERO")
    truth = make_truth(keyed_rng(seed, 19, 0), num_compounds, lines, toxic_fraction)
    records = []
    for w in _wells(seed, 19, lines, plates_per_cell_line, plates_per_experiment,
                    lambda line: _rxrx19a_conditions(truth, line, control_wells_per_plate, cytotoxic_mimicry),
                    place=_LAYOUTS[control_layout]):
        cond = w.design
        # Well-to-well biology: virus dose (MOI) and seeding vary a little between wells.
        well_rng = keyed_rng(seed, 19, 2, *w.key)
        infection = float(np.clip(cond["infection"] * phenotype_strength * np.exp(well_rng.normal(0, 0.08)), 0, 1))
        effects = _edge_lit(w.effects, w.well, edge_effect)
        records += [dict(w.site(site), disease_condition=cond["disease_condition"], treatment=cond["treatment"],
                         treatment_conc=cond["treatment_conc"], SMILES=cond["SMILES"], _line=w.line,
                         _infection=infection, _toxicity=cond["toxicity"] * phenotype_strength, _effects=effects,
                         _key=(seed, 19, 3, *w.key, site), _channels=len(RXRX19A_STAINS))
                    for site in range(1, sites_per_well + 1)]

    cells = {line: dataclasses.replace(CELL_LINES[line], density=CELL_LINES[line].density * cell_density)
             for line in lines}
    histogram = (reference_histogram(seed, lines, image_size=image_size, stains=RXRX19A_STAINS, bit_depth=bit_depth)
                 if morphology_only else None)

    def render(rec: dict) -> np.ndarray:
        return render_site(keyed_rng(*rec["_key"]), cells[rec["_line"]], image_size=image_size, stains=RXRX19A_STAINS,
                           infection=rec["_infection"], toxicity=rec["_toxicity"], plate=rec["_effects"],
                           bit_depth=bit_depth, histogram=histogram)

    _claim(root, params)
    _write_sites(root, records, render)
    _write_table(root / "truth.csv", truth)
    _write_table(root / "metadata.csv", _metadata(records, RXRX19A_COLUMNS))
    return root


def _check_test_bed(options: Mapping, num_compounds: int, control_wells: Sequence[int]) -> None:
    """Refuses an out-of-range test-bed option of write_rxrx19a before anything is written."""
    for name in ("phenotype_strength", "cell_density"):
        if not 0.0 < options[name] <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {options[name]!r}")
    if not 0.0 <= options["cytotoxic_mimicry"] <= 1.0:
        raise ValueError(f"cytotoxic_mimicry must be in [0, 1], got {options['cytotoxic_mimicry']!r}")
    if options["toxic_fraction"] is not None and not 0.0 <= options["toxic_fraction"] <= 1.0:
        raise ValueError(f"toxic_fraction must be None or in [0, 1], got {options['toxic_fraction']!r}")
    if not -1.0 < options["edge_effect"] <= 1.0:
        raise ValueError(f"edge_effect must be in (-1, 1], got {options['edge_effect']!r}")
    if options["control_layout"] not in _LAYOUTS:
        raise ValueError(f"control_layout must be one of {CONTROL_LAYOUTS}, got {options['control_layout']!r}")
    compound_wells = num_compounds * len(DOSES_UM)
    if options["control_layout"] == "edge" and (sum(control_wells) > len(_EDGE_LAYOUT_CONTROLS)
                                                or compound_wells > sum(map(len, _EDGE_LAYOUT_COMPOUNDS))):
        raise ValueError(f"control_layout 'edge' fits {len(_EDGE_LAYOUT_CONTROLS)} control and "
                         f"{sum(map(len, _EDGE_LAYOUT_COMPOUNDS))} compound wells a plate; asked for "
                         f"{sum(control_wells)} and {compound_wells}")


def _edge_lit(effects: PlateEffects, well: str, edge_effect: float) -> PlateEffects:
    """The plate's batch effects as `well` sees them: the outer ring's stain gain scaled by 1 + edge_effect,
    as evaporation concentrates the stain there (inner wells, and edge_effect 0, keep the plate's exactly)."""
    factor = 1.0 + edge_effect * (well in _EDGE_WELLS)
    return dataclasses.replace(effects, gain=(effects.gain * factor).astype(np.float32))


def _rxrx19a_conditions(truth: pd.DataFrame, line: str, control_wells: Sequence[int],
                        mimicry: float) -> list[dict]:
    """One plate's wells of a cell line: (Mock, UV, Active, blank) controls, then every compound at DOSES_UM,
    each with the infection and toxicity level its sites are drawn at; `mimicry` (write_rxrx19a's
    cytotoxic_mimicry) takes that share of a compound's toxicity off its infection level."""
    controls = [(cond, n) for cond, n in zip((MOCK, UV_INACTIVATED, ACTIVE, BLANK), control_wells)]
    conditions = [dict(disease_condition=cond, treatment="", treatment_conc=math.nan, SMILES="",
                       infection=CONDITION_INFECTION[cond], toxicity=0.0)
                  for cond, n in controls for _ in range(n)]
    for row in truth[truth["cell_type"] == line].itertuples():
        efficacy = hidden_efficacy(truth, row.treatment, line, np.array(DOSES_UM))
        toxicity = hidden_toxicity(truth, row.treatment, line, np.array(DOSES_UM))
        for conc, eff, tox in zip(DOSES_UM, efficacy, toxicity):
            conditions.append(dict(disease_condition=ACTIVE, treatment=row.treatment, treatment_conc=conc,
                                   SMILES=row.SMILES, infection=(1.0 - float(eff)) * (1.0 - mimicry * float(tox)),
                                   toxicity=float(tox)))
    return conditions


RXRX1_CELL_LINES = ("HEPG2", "HUVEC", "RPE", "U2OS")
_NEGATIVE_SIRNA_ID = 1138
_POSITIVE_SIRNA_ID0 = 1108
# Morphology parameters an siRNA knock-down can move, and how far (log-scale sd; positives 2.5x more).
_KNOCKDOWN_TARGETS = ("density", "length", "aspect", "nucleus", "irregularity", "fibres")


def _knockdown(rng: np.random.Generator, strength: float) -> dict[str, float]:
    """An siRNA's phenotype: multiplicative changes to two morphology parameters and one stain."""
    targets = rng.choice(_KNOCKDOWN_TARGETS, size=2, replace=False)
    effect = {str(t): float(np.exp(rng.normal(0.0, strength))) for t in targets}
    effect["stain:" + str(rng.choice(RXRX1_STAINS))] = float(np.exp(rng.normal(0.0, strength)))
    return effect


def _apply_knockdown(line: CellLine, effect: Mapping[str, float]) -> CellLine:
    changes = {k: getattr(line, k) * f for k, f in effect.items() if not k.startswith("stain:")}
    if "aspect" in changes:
        changes["aspect"] = max(1.0, changes["aspect"])
    brightness = dict(line.brightness)
    for k, f in effect.items():
        if k.startswith("stain:"):
            brightness[k[6:]] = brightness.get(k[6:], 1.0) * f
    return dataclasses.replace(line, brightness=brightness, **changes)


def write_rxrx1(out_dir: str | os.PathLike, *, seed: int = 0, image_size: int = 64,
                plates_per_cell_line: int = 1, plates_per_experiment: int = 4, sites_per_well: int = 2,
                num_sirnas: int = 8, num_positive_controls: int = 2, negative_control_wells: int = 4,
                bit_depth: int = 8) -> pathlib.Path:
    """Writes an RxRx1-like 6-stain siRNA set of HEPG2, HUVEC, RPE and U2OS cells (metadata.csv, images).

    Each plate holds every siRNA and positive control once plus `negative_control_wells` EMPTY wells.
    Experiments are `HEPG2-01`, ...; same resumable, atomic writing as `write_rxrx19a`.
    """
    params = dict(kind="rxrx1", seed=seed, image_size=image_size, plates_per_cell_line=plates_per_cell_line,
                  plates_per_experiment=plates_per_experiment, sites_per_well=sites_per_well,
                  num_sirnas=num_sirnas, num_positive_controls=num_positive_controls,
                  negative_control_wells=negative_control_wells, bit_depth=bit_depth)
    _check_common(image_size, bit_depth, sites_per_well, plates_per_cell_line, plates_per_experiment)
    root, done = _prepare(out_dir, params)
    if done:
        return root
    design = keyed_rng(seed, 1, 0)
    names = design.choice(np.arange(10000, 30000), size=num_sirnas + num_positive_controls, replace=False)
    wells = [dict(well_type="treatment", sirna=f"s{names[i]}", sirna_id=i, effect=_knockdown(design, 0.15))
             for i in range(num_sirnas)]
    wells += [dict(well_type="positive_control", sirna=f"s{names[num_sirnas + i]}",
                   sirna_id=_POSITIVE_SIRNA_ID0 + i, effect=_knockdown(design, 0.4))
              for i in range(num_positive_controls)]
    wells += [dict(well_type="negative_control", sirna="EMPTY", sirna_id=_NEGATIVE_SIRNA_ID, effect={})
              for _ in range(negative_control_wells)]
    records = [dict(w.site(site), dataset="train", well_type=w.design["well_type"], sirna=w.design["sirna"],
                    sirna_id=w.design["sirna_id"], _line=_apply_knockdown(CELL_LINES[w.line], w.design["effect"]),
                    _effects=w.effects, _key=(seed, 1, 3, *w.key, site), _channels=len(RXRX1_STAINS))
               for w in _wells(seed, 1, RXRX1_CELL_LINES, plates_per_cell_line, plates_per_experiment,
                               lambda line: wells, experiment_digits=2)
               for site in range(1, sites_per_well + 1)]

    def render(rec: dict) -> np.ndarray:
        return render_site(keyed_rng(*rec["_key"]), rec["_line"], image_size=image_size, stains=RXRX1_STAINS,
                           plate=rec["_effects"], bit_depth=bit_depth)

    _claim(root, params)
    _write_sites(root, records, render)
    _write_table(root / "metadata.csv", _metadata(records, RXRX1_COLUMNS))
    return root


# A compound screen in a CellProfiler user's own terms: the foreign screen the generic and OME-Zarr readers, and
# the screen schema, are tested on. Its channels (the user's names) are drawn as these stains.
CELL_PAINTING_CHANNELS = {"DNA": "Hoechst", "Actin": "Phalloidin", "RNA": "Syto14"}
CELL_PAINTING_DOSES_UM = (0.1, 0.3, 1.0)
_CELL_PAINTING_WELLS = (("DMSO", 0.0, 1.0),) * 3 + (("staurosporine", 1.0, 0.0),) * 2 + tuple(
    ("cpd-7", dose, 1.0 - efficacy) for dose, efficacy in zip(CELL_PAINTING_DOSES_UM, (0.25, 0.6, 0.9)))


def write_cell_painting(out_dir: str | os.PathLike, *, seed: int = 0, image_size: int = 32, plates: int = 3,
                        sites_per_well: int = 2, layout: str = "csv") -> pathlib.Path:
    """Writes a small 16-bit, 3-channel compound screen with CellProfiler-style metadata; returns its directory.

    Each plate (P1, P2, ...; U2OS cells) holds 3 DMSO wells (the negative control: the disease phenotype, drawn
    as infection), 2 wells of a positive-control compound that reverses it (staurosporine, 1 µM) and one
    compound, cpd-7, at CELL_PAINTING_DOSES_UM reversing it by 25 %, 60 % and 90 %, in a random layout.
    `layout` "csv": 16-bit TIFFs `images/{plate}_{well}_s{site}_{channel}.tif` and `metadata.csv` (one row per
    site: Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_Compound, Metadata_Dose_uM, Metadata_CellLine,
    Metadata_Note (blank but for edge wells), FileName_DNA / _Actin / _RNA relative to it): data.kind=generic.
    "ome_zarr": one HCS plate `{plate}.zarr` per plate (OMERO channel labels, fields = sites) and the plate map
    `metadata.csv` (one row per well: plate, well and the ``Metadata_`` columns): data.kind=ome_zarr.
    metadata.csv is written last: a directory holding it is complete.
    """
    if layout not in ("csv", "ome_zarr"):
        raise ValueError(f"layout must be 'csv' or 'ome_zarr', got {layout!r}")
    params = dict(kind="cell_painting", seed=seed, image_size=image_size, plates=plates,
                  sites_per_well=sites_per_well, layout=layout)
    _check_common(image_size, 16, sites_per_well, plates, 1)
    root, done = _prepare(out_dir, params)
    if done:
        return root
    stains = tuple(CELL_PAINTING_CHANNELS.values())
    wells, sites = [], {}
    for pi in range(plates):
        plate, plate_rng = f"P{pi + 1}", keyed_rng(seed, 27, pi)
        effects = sample_plate_effects(plate_rng, len(RXRX1_STAINS))
        for wi, (well, (compound, dose, infection)) in enumerate(
                zip(_plate_wells(plate_rng, len(_CELL_PAINTING_WELLS)), _CELL_PAINTING_WELLS)):
            wells.append(dict(plate=plate, well=well, Metadata_Compound=compound, Metadata_Dose_uM=dose,
                              Metadata_CellLine="U2OS", Metadata_Note="edge" if well in _EDGE_WELLS else ""))
            for site in range(1, sites_per_well + 1):
                sites[plate, well, site] = render_site(keyed_rng(seed, 27, pi, wi, site), "U2OS", image_size=image_size,
                                                       stains=stains, infection=infection, plate=effects,
                                                       bit_depth=16)
    _claim(root, params)
    plate_map = pd.DataFrame(wells)
    if layout == "csv":
        table = _write_tiffs(root, plate_map, sites)
    else:
        _write_plates(root, plate_map, sites)
        table = plate_map
    _write_table(root / "metadata.csv", table)
    return root


def _write_tiffs(root: pathlib.Path, plate_map: pd.DataFrame, sites: Mapping) -> pd.DataFrame:
    """One 16-bit TIFF per channel of every site; the per-site table in CellProfiler's names."""
    import tifffile

    (root / "images").mkdir(exist_ok=True)
    rows = []
    for (plate, well, site), image in sites.items():
        files = {}
        for c, channel in enumerate(CELL_PAINTING_CHANNELS):
            files[f"FileName_{channel}"] = f"images/{plate}_{well}_s{site}_{channel}.tif"
            plane = np.ascontiguousarray(image[..., c])
            _atomic_write(root / files[f"FileName_{channel}"], lambda tmp, plane=plane: tifffile.imwrite(tmp, plane))
        well_row = plate_map[(plate_map["plate"] == plate) & (plate_map["well"] == well)].iloc[0]
        rows.append(dict(Metadata_Plate=plate, Metadata_Well=well, Metadata_Site=site,
                         **{k: well_row[k] for k in plate_map.columns if k.startswith("Metadata_")}, **files))
    return pd.DataFrame(rows)


def _write_plates(root: pathlib.Path, plate_map: pd.DataFrame, sites: Mapping) -> None:
    """One OME-Zarr HCS plate per plate, written with ome-zarr-py: fields are sites, channels OMERO-labelled."""
    import zarr
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    window = {"min": 0, "max": 65535, "start": 0, "end": 65535}
    omero = {"channels": [{"label": name, "color": "FFFFFF", "window": window} for name in CELL_PAINTING_CHANNELS]}
    for plate, wells in plate_map.groupby("plate", sort=True):
        group = zarr.open_group(str(root / f"{plate}.zarr"), mode="w")
        names = [(w[0], w[1:]) for w in wells["well"]]
        write_plate_metadata(group, sorted({r for r, _ in names}), sorted({c for _, c in names}),
                             [f"{r}/{c}" for r, c in names], field_count=max(k[2] for k in sites), name=plate)
        for (row, column), well in zip(names, wells["well"]):
            well_group = group.require_group(row).require_group(column)
            fields = sorted(site for (p, w, site) in sites if (p, w) == (plate, well))
            write_well_metadata(well_group, [str(f - 1) for f in fields])
            for f in fields:
                write_image(np.moveaxis(sites[plate, well, f], -1, 0), well_group.require_group(str(f - 1)),
                            axes="cyx", scale_factors=(), omero=omero)


# The RxRx19a screen as a CellProfiler user would describe it (`cell_profiler_plate_map`), in this schema: vehicle
# DMSO in every control well, the virus a column of its own; UV-inactivated virus wells are DMSO wells too, which
# the schema's `treated` query must keep out of the compounds ("Metadata_Compound != 'DMSO'").
CELL_PROFILER_SCHEMA = dict(plate="Metadata_Plate", well="Metadata_Well", site="Metadata_Site",
                            group="Metadata_CellLine", perturbation="Metadata_Compound", dose="Metadata_Dose_uM",
                            positive="Metadata_Compound == 'DMSO' and Metadata_Virus == 'none'",
                            negative="Metadata_Compound == 'DMSO' and Metadata_Virus == 'active'")


def cell_profiler_plate_map(meta: pd.DataFrame) -> pd.DataFrame:
    """RxRx19a-layout metadata (a synthetic screen's, per site or per well) rewritten in CellProfiler-style columns
    (`CELL_PROFILER_SCHEMA`), row for row: the foreign screen the schema's roles and `treated` query are tested on."""
    untreated = meta["treatment"] == ""
    virus = meta["disease_condition"].map({MOCK: "none", UV_INACTIVATED: "UV", ACTIVE: "active", BLANK: ""})
    return pd.DataFrame({
        "Metadata_Plate": meta["experiment"] + "_" + meta["plate"].astype(str), "Metadata_Well": meta["well"],
        "Metadata_Site": meta["site"], "Metadata_CellLine": meta["cell_type"], "Metadata_Virus": virus,
        "Metadata_Compound": meta["treatment"].where(~untreated | (virus == ""), "DMSO"),
        "Metadata_Dose_uM": meta["treatment_conc"].where(~untreated, 0.1)})


def _check_common(image_size: int, bit_depth: int, sites_per_well: int, plates: int, per_experiment: int,
                  ) -> None:
    """Fails before anything is written, so a bad call leaves no half-made directory."""
    check_size_depth(image_size, bit_depth)
    if min(sites_per_well, plates, per_experiment) < 1:
        raise ValueError("sites_per_well, plates_per_cell_line and plates_per_experiment must be >= 1")


def _metadata(records: Sequence[dict], columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame([{c: r[c] for c in columns} for r in records], columns=list(columns))
    return frame.sort_values(["experiment", "plate", "well", "site"], kind="stable").reset_index(drop=True)
