"""Null screens: the analysis' error rates measured end to end, on data where every call is false.

A layout (metadata without images) like RxRx19a's plates, and features with no treatment effect: i.i.d.
noise, noise with plate offsets, or a real feature set with its rows shuffled among the sites of each plate
(every biological signal gone, plate effects kept). Whatever `report.analyze_screen` calls a hit or an
active compound there is a false discovery, so its rate is the rate the report's FDR column promises to
bound (`benchmarks/calibration.py` over many replicates, `tests/test_calibration.py` on a few).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gandl.data.vocabulary import ACTIVE, MOCK

DOSES_UM = (0.0316, 0.1, 0.316, 1.0, 3.16, 10.0)  # six half-log doses


def layout(*, plates_per_line: int = 4, compounds: int = 24, positive_wells: int = 16, negative_wells: int = 16,
           sites_per_well: int = 3, lines: tuple[str, ...] = ("HRCE", "VERO")) -> pd.DataFrame:
    """Site metadata of a screen whose every plate holds each compound at each dose once plus its controls.

    Columns as RxRx19a's (C+ = Mock, C- = Active SARS-CoV-2 untreated, treated wells Active + compound),
    one experiment per cell line.
    """
    rows = []
    for line in lines:
        for plate in range(1, plates_per_line + 1):
            wells = ([(MOCK, "", np.nan)] * positive_wells + [(ACTIVE, "", np.nan)] * negative_wells
                     + [(ACTIVE, f"compound-{c:03d}", d) for c in range(compounds) for d in DOSES_UM])
            for w, (condition, treatment, dose) in enumerate(wells):
                well_id = f"{line}-1_{plate}_W{w:03d}"
                rows += [dict(site_id=f"{well_id}_{s}", well_id=well_id, cell_type=line, experiment=f"{line}-1",
                              plate=plate, well=f"W{w:03d}", site=s, disease_condition=condition,
                              treatment=treatment, treatment_conc=dose) for s in range(1, sites_per_well + 1)]
    return pd.DataFrame(rows)


def null_features(metadata: pd.DataFrame, dim: int, rng: np.random.Generator, plate_sd: float = 0.0,
                  well_sd: float = 0.0) -> np.ndarray:
    """N(0, 1) site features plus, optionally, a random offset per plate and per well (shared by its sites)."""
    x = rng.standard_normal((len(metadata), dim), dtype=np.float32)
    for column, sd in (("plate", plate_sd), ("well_id", well_sd)):
        if sd:
            key = metadata["experiment"].astype(str) + "_" + metadata[column].astype(str)
            codes, groups = pd.factorize(key)
            x += (sd * rng.standard_normal((len(groups), dim), dtype=np.float32))[codes]
    return x


def shuffle_within_plates(features: np.ndarray, metadata: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Rows permuted among the sites of each plate: plate effects stay, every treatment and control effect goes."""
    order = np.arange(len(metadata))
    key = (metadata["experiment"].astype(str) + "_" + metadata["plate"].astype(str)).to_numpy()
    for rows in pd.Series(np.arange(len(key))).groupby(key).indices.values():
        order[rows] = rng.permutation(rows)
    return np.asarray(features)[order]


def error_rates(outcome: dict, fdr: float = 0.05) -> dict[str, float]:
    """What an `analyze_screen` outcome on a null screen called: every number is a false-positive rate.

    hit_rate: fraction of compound x cell-line pairs called hits (the hit list's false discovery rate,
    since every call is false); any_hit: 1 when any pair was; dose_rate: fraction of compound x dose tests
    with q < fdr; map_rate: fraction of compound x dose x cell line groups active by mAP; table1_accuracy:
    C+ vs C- held-out accuracy (chance is 0.5). NaN where the task did not run.
    """
    hits = outcome.get("hits")
    dose = outcome.get("dose_response")
    activity = outcome.get("activity")
    table1 = outcome.get("table1")
    nan = float("nan")
    accuracy = table1.set_index("task")["accuracy"].get("C+ vs C- (all cell lines)", nan) if table1 is not None \
        else nan
    return dict(hit_rate=float(hits["hit"].mean()) if hits is not None and len(hits) else nan,
                any_hit=float(hits["hit"].any()) if hits is not None and len(hits) else nan,
                dose_rate=float((dose["q"] < fdr).mean()) if dose is not None and "q" in dose else nan,
                map_rate=float(activity["active"].mean()) if activity is not None and len(activity) else nan,
                table1_accuracy=float(accuracy))
