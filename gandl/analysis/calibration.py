"""The analysis' error rates and power, measured end to end on screens with a known truth.

The screens are `gandl.data.synthetic.feature_screens`'s (null layouts, graded actives, the settings that look
like real plates). Whatever `report.analyze_screen` calls a hit where the true rescue stays below the threshold
(or the compound is cytotoxic) is a false discovery: `hit_metrics` counts them, the share of screens with any
(on a null screen, the FDR the hit list promises to bound) and the recall of true actives; `error_rates` reads
every false-positive rate of a null screen's outcome (`benchmarks/calibration.py` over many screens,
`tests/test_calibration.py` checks the generators).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from gandl.data.synthetic.feature_screens import THRESHOLD, pair_truth


def hit_metrics(outcome: dict, truth: pd.DataFrame, levels: Sequence[float] = (), threshold: float = THRESHOLD
                ) -> dict[str, float]:
    """What the hit list of an `analyze_screen` outcome got right, against the truth (`feature_screens.screen`'s).

    A hit is false when its compound x line's true rescue stays below `threshold` at every dose or it is
    cytotoxic. hits, false_hits, any_false (0/1: on a null screen, what the hit list's FDR bounds), fdp
    (false / hits, 0 without hits), below (hits whose true rescue is below the threshold) and, per level,
    `recall>=level`: the share of non-cytotoxic pairs with true rescue >= level called (NaN: none such).
    Every value is NaN when the hit task did not run.
    """
    pairs = pair_truth(truth)
    hits = outcome.get("hits")
    keys = [f"recall>={level:g}" for level in levels]
    if hits is None:
        return dict.fromkeys(["hits", "false_hits", "any_false", "fdp", "below", *keys], float("nan"))
    merged = pairs.merge(hits[["perturbation", "group", "hit"]], on=["perturbation", "group"], how="outer",
                         indicator=True)
    if (merged["_merge"] == "right_only").any():
        raise ValueError("the hit list names compound x cell-line pairs the truth does not have: "
                         f"{merged.loc[merged['_merge'] == 'right_only', ['perturbation', 'group']].values[:3]}")
    called = merged["hit"].eq(True).to_numpy()
    below = merged["rescue"].to_numpy() < threshold
    false = called & (below | merged["cytotoxic"].to_numpy(bool))
    out = dict(hits=float(called.sum()), false_hits=float(false.sum()), any_false=float(false.any()),
               fdp=float(false.sum() / max(called.sum(), 1)), below=float((called & below).sum()))
    for key, level in zip(keys, levels):
        active = (merged["rescue"].to_numpy() >= level) & ~merged["cytotoxic"].to_numpy(bool)
        out[key] = float(called[active].mean()) if active.any() else float("nan")
    return out


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
