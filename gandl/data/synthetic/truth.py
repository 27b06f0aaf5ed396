"""The synthetic RxRx19a screen's hidden truth: each condition's infection and each compound's dose responses.

The images are drawn from it (`layouts.write_rxrx19a` writes it as truth.csv) and the analysis is scored
against it (`hidden_efficacy`), so it loads without the drawing code: numpy and pandas only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gandl.data.vocabulary import ACTIVE, BLANK, MOCK, UV_INACTIVATED

TRUTH_COLUMNS = ("treatment", "cell_type", "effect_class", "emax", "ec50_uM", "hill", "tox_ec50_uM",
                 "tox_hill", "SMILES")

# Infection level of each control condition; UV-inactivated virus is a mild version of the Active phenotype.
CONDITION_INFECTION = {MOCK: 0.0, BLANK: 0.0, UV_INACTIVATED: 0.12, ACTIVE: 1.0}


_FIXED_COMPOUNDS = (
    # name, class, SMILES, {cell line: (emax, ec50 uM, hill)}
    ("Remdesivir", "effective",
     "CCC(CC)COC(=O)[C@H](C)N[P@](=O)(OC[C@@H]1[C@H]([C@H]([C@](O1)(C#N)C2=CC=C3N2N=CN=C3N)O)O)OC4=CC=CC=C4",
     {"HRCE": (0.95, 0.25, 1.5), "VERO": (0.9, 1.2, 1.5)}),
    ("GS-441524", "effective", "C1=C2C(=NC=NN2C(=C1)[C@]3([C@@H]([C@@H]([C@H](O3)CO)O)O)C#N)N",
     {"HRCE": (0.9, 0.8, 1.3), "VERO": (0.85, 2.0, 1.3)}),
    ("Polydatin", "inert", "C1=CC(=CC=C1/C=C/C2=CC(=CC(=C2)O[C@H]3[C@@H]([C@H]([C@@H]([C@H](O3)CO)O)O)O)O)O",
     {}),
)
_CLASSES = ("effective", "inert", "toxic")  # the default cycle of the generated compounds
_SMILES_CAPS = ("C", "CC", "CO", "FC(F)(F)", "N#C", "Cl", "CC(C)")
_SMILES_RINGS = ("c{r}ccc(cc{r})", "c{r}ccc(nc{r})", "C{r}CCN(CC{r})", "C{r}CN(C{r})", "c{r}cc(sc{r})",
                 "c{r}cnc(nc{r})")
_SMILES_LINKERS = ("C(=O)N", "NC(=O)", "OC", "S(=O)(=O)N", "CN", "C(=O)O", "")
_SMILES_ENDS = ("c{r}ccccc{r}", "N{r}CCOCC{r}", "C{r}CC{r}", "c{r}ccncc{r}", "O", "N", "C(=O)O")


def _random_smiles(rng: np.random.Generator) -> str:
    """A drug-like-looking SMILES: cap, one to three ring/linker units, terminal group."""
    parts = [str(rng.choice(_SMILES_CAPS))]
    n_rings = int(rng.integers(1, 4))
    for r in range(1, n_rings + 1):
        parts.append(str(rng.choice(_SMILES_RINGS)).format(r=r))
        parts.append(str(rng.choice(_SMILES_LINKERS)))
    parts.append(str(rng.choice(_SMILES_ENDS)).format(r=n_rings + 1))
    return "".join(parts)


def generated_classes(n: int, toxic_fraction: float | None = None) -> list[str]:
    """The effect classes of the n generated compounds, in naming order.

    None: they cycle effective / inert / toxic, so every class appears. A fraction makes round(n * fraction)
    of them toxic (spread evenly through the list, so a screen cut short still holds some) and the rest
    alternate effective / inert: a screen rich in inert cytotoxic compounds, the classic false hits.
    """
    if toxic_fraction is None:
        return [_CLASSES[i % 3] for i in range(n)]
    # Bresenham spacing: compound i is toxic where the running count of toxic compounds steps up.
    toxic = np.diff(np.floor(np.arange(n + 1) * toxic_fraction + 0.5)) > 0
    others = iter(_CLASSES[i % 2] for i in range(n))
    return ["toxic" if t else next(others) for t in toxic]


def make_truth(rng: np.random.Generator, num_compounds: int, cell_lines: Sequence[str] = ("HRCE", "VERO"),
               toxic_fraction: float | None = None) -> pd.DataFrame:
    """The hidden compound parameters, one row per (compound, cell line); columns TRUTH_COLUMNS.

    The three reference compounds come first; the generated ones take `generated_classes` (by default a
    cycle, so every class appears). Potency shifts between cell lines (a line-specific EC50), as in the real
    screen. Toxic compounds are inert (emax 0): any hit on them is a false one.
    """
    if num_compounds < len(_FIXED_COMPOUNDS):
        raise ValueError(f"num_compounds must be >= {len(_FIXED_COMPOUNDS)} (the reference compounds)")
    rows = []
    for name, cls, smiles, params in _FIXED_COMPOUNDS:
        for line in cell_lines:
            emax, ec50, hill = params.get(line, (0.0, math.nan, math.nan))
            rows.append((name, line, cls, emax, ec50, hill, math.nan, math.nan, smiles))
    for i, cls in enumerate(generated_classes(num_compounds - len(_FIXED_COMPOUNDS), toxic_fraction)):
        name, smiles = f"SYN-{i + 1:03d}", _random_smiles(rng)
        ec50 = 10 ** rng.uniform(-1.3, 0.5)
        hill = rng.uniform(0.9, 2.5)
        tox_ec50 = 10 ** rng.uniform(0.3, 1.2)
        tox_hill = rng.uniform(1.5, 3.0)
        for line in cell_lines:
            shift = 10 ** rng.normal(0.2, 0.35)  # cell-line potency difference
            if cls == "effective":
                rows.append((name, line, cls, rng.uniform(0.7, 1.0), ec50 * shift, hill, math.nan, math.nan,
                             smiles))
            elif cls == "toxic":
                rows.append((name, line, cls, 0.0, math.nan, math.nan, tox_ec50 * shift, tox_hill, smiles))
            else:
                rows.append((name, line, cls, 0.0, math.nan, math.nan, math.nan, math.nan, smiles))
    return pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))


def _hill(conc: np.ndarray, ec50: float, hill: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.power(np.maximum(conc, 0.0) / ec50, hill)
    return np.nan_to_num(ratio / (1.0 + ratio))


def _truth_row(truth: pd.DataFrame, treatment: str, cell_type: str) -> pd.Series:
    rows = truth[(truth["treatment"] == treatment) & (truth["cell_type"] == cell_type)]
    if len(rows) != 1:
        raise KeyError(f"no hidden truth for treatment {treatment!r} in cell line {cell_type!r}")
    return rows.iloc[0]


def hidden_efficacy(truth: pd.DataFrame, treatment: str, cell_type: str,
                    conc_uM: float | np.ndarray) -> float | np.ndarray:
    """Antiviral efficacy in [0, 1] the images were drawn with: emax * c^h / (ec50^h + c^h).

    0 is the Active phenotype, 1 a full rescue to Mock. A site's infection level is 1 - efficacy.
    """
    row = _truth_row(truth, treatment, cell_type)
    conc = np.asarray(conc_uM, dtype=np.float64)
    value = np.zeros_like(conc) if row["emax"] == 0 else row["emax"] * _hill(conc, row["ec50_uM"], row["hill"])
    return float(value) if value.ndim == 0 else value


def hidden_toxicity(truth: pd.DataFrame, treatment: str, cell_type: str,
                    conc_uM: float | np.ndarray) -> float | np.ndarray:
    """Toxicity level in [0, 1] the images were drawn with (0 for non-toxic compounds)."""
    row = _truth_row(truth, treatment, cell_type)
    conc = np.asarray(conc_uM, dtype=np.float64)
    toxic = not math.isnan(row["tox_ec50_uM"])
    value = _hill(conc, row["tox_ec50_uM"], row["tox_hill"]) if toxic else np.zeros_like(conc)
    return float(value) if value.ndim == 0 else value
