"""Phenotypic activity and consistency as mean average precision (mAP), the JUMP Cell Painting metric, via copairs.

Activity: can the replicate wells of one compound × dose × cell line be told from that cell line's C- wells
(Active SARS-CoV-2, untreated)? Each replicate well is a query; it ranks its fellow replicates (positives)
and the C- wells (negatives) by cosine similarity; its average precision (AP) is averaged into the
group's mAP, tested against copairs' permutation null and Benjamini-Hochberg corrected over every group.
Consistency: the same, with the wells of the *other* compounds (of the groups considered, by default the
active ones) as negatives: is the phenotype specific to the compound, not just "not C-"?

copairs' own pipeline enumerates and sorts every pair (about 3.6 µs per pair on these machines: RxRx19a's
62,500 HRCE treated wells × 4,300 C- wells are 266 M negative pairs, a quarter of an hour and gigabytes
of pair lists). So similarities come here from blocks of one matmul each, sized to `block_entries`,
each query's positives are ranked by counting the negatives above them, and copairs computes the APs
from those ranks (`compute.average_precision`, the function of its null distributions) and their
expected value under random ranking. The permutation test is copairs' (a group's null: the draw-by-draw
mean of its queries' null APs), with the positives' random ranks drawn directly rather than as whole
permutations, so the null can be large enough for the smallest p to pass Benjamini-Hochberg over every
group of a screen (`null_size_for`). Memory beyond the profiles is one block (a few bytes per entry)
plus one null per (positives, total) configuration.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from absl import logging
from copairs import compute
from copairs.map.normalization import expected_ap
from scipy import stats

from gandl.analysis import efficacy
from gandl.analysis.io import control_role

GROUP = ["group", "perturbation", "dose"]  # one hypothesis: a compound at one dose in one cell line
NEEDED = [*GROUP, "role"]  # the columns of `io.screen_view`


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so a matmul gives cosine similarities (copairs' default)."""
    x = np.asarray(features, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def _check(features: np.ndarray, metadata: pd.DataFrame) -> None:
    missing = [c for c in NEEDED if c not in metadata.columns]
    if missing:
        raise ValueError(f"well metadata is missing columns {missing}; mAP needs {NEEDED}")
    if len(features) != len(metadata):
        raise ValueError(f"{len(features)} profiles for {len(metadata)} metadata rows")


def _block_ap(pos_sims: np.ndarray, positive: np.ndarray, neg_sims: np.ndarray,
              negative: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """AP of each query row and its (n_pos, n_total), from similarities to positive candidates (where
    `positive`) and to negative candidates (where `negative`; None: all of them).

    Every row must rank at least one positive and one negative. A row's AP depends only on where its
    positives land in its ranking: the j-th best positive (0-based) sits at rank j + the number of
    negatives more similar than it (ties rank the positive first, as copairs' stable sort does). Those
    ranks go to copairs' `compute.average_precision`, rows with the same number of positives at once.
    """
    n_pos = positive.sum(axis=1)
    n_neg = np.full(len(n_pos), neg_sims.shape[1]) if negative is None else negative.sum(axis=1)
    rows, cols = np.nonzero(positive)  # row-major: each row's positives are contiguous
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos)
    best = np.full((len(n_pos), int(n_pos.max())), -np.inf, np.float32)
    best[rows, slot] = pos_sims[rows, cols]
    best = -np.sort(-best, axis=1)  # each row's positive similarities, best first (-inf padding last)
    ranks = np.empty(best.shape, np.int64)
    for j in range(best.shape[1]):
        above = neg_sims > best[:, j:j + 1]
        ranks[:, j] = j + (above if negative is None else above & negative).sum(axis=1)
    ap = np.empty(len(n_pos), np.float32)
    for k in np.unique(n_pos):
        chosen = n_pos == k
        ap[chosen] = compute.average_precision(ranks[chosen, :k])
    return ap, np.stack([n_pos, n_pos + n_neg], axis=1)


def _blocks(sizes: np.ndarray, width: int, budget: int) -> Iterator[tuple[int, int]]:
    """(first, end) group ranges whose wells × (`width` + their own wells) similarities fit `budget`."""
    start, wells = 0, 0
    for g, n in enumerate(sizes):
        if g > start and (wells + n) * (width + wells + n) > budget:
            yield start, g
            start, wells = g, 0
        wells += n
    if start < len(sizes):
        yield start, len(sizes)


def _query_rows(metadata: pd.DataFrame, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`rows` sorted by group, with each row's group code and the size of each group (groups of >= 2 only)."""
    codes = metadata.iloc[rows].groupby(GROUP, sort=True, dropna=False).ngroup().to_numpy()
    sizes = np.bincount(codes)
    keep = sizes[codes] >= 2
    rows, codes = rows[keep], codes[keep]
    order = np.argsort(codes, kind="stable")
    _, codes, sizes = np.unique(codes[order], return_inverse=True, return_counts=True)
    return rows[order], codes, sizes


def _ap_frame(metadata: pd.DataFrame, rows: list[np.ndarray], aps: list[np.ndarray],
              configs: list[np.ndarray]) -> pd.DataFrame:
    """copairs' per-profile AP table: the group columns, AP, normalised AP and the pair counts."""
    if not rows:
        raise ValueError("no compound × dose × cell line has two replicate wells and a reference well to "
                         "rank them against")
    frame = metadata.iloc[np.concatenate(rows)][GROUP].reset_index(drop=True)
    frame["average_precision"] = np.concatenate(aps)
    configs = np.concatenate(configs).astype(np.int64)
    frame["n_pos_pairs"], frame["n_total_pairs"] = configs[:, 0], configs[:, 1]
    unique, inverse = np.unique(configs, axis=0, return_inverse=True)
    mu0 = np.array([expected_ap(int(m), int(t - m)) for m, t in unique])[inverse.ravel()]  # once per config
    frame["normalized_average_precision"] = np.clip(
        (frame["average_precision"] - mu0) / np.maximum(1 - mu0, 1e-10), -1.0, 1.0)  # copairs' normalize_ap
    return frame


def null_size_for(groups: int, alpha: float, minimum: int = 10000) -> int:
    """Permutations per null so that the smallest attainable p, 1 / (n + 1), is below half of BH's first
    threshold alpha / groups: a group beyond every permutation can pass Benjamini-Hochberg however many
    groups are tested (10,000 draws floor p at 1e-4, which passes nothing among 20,000 groups)."""
    return max(minimum, int(np.ceil(2.0 * groups / alpha)))


def _null_ap(num_pos: int, total: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` APs of `num_pos` positives placed at random among `total` ranks (copairs' null), in O(size x num_pos).

    copairs draws each null ranking as a permutation of all `total` items (O(size x total): gigabytes at a
    screen's sizes); only the positives' ranks matter, so they are drawn directly, without replacement
    (rows with a repeated rank are drawn again), and copairs' `average_precision` scores them.
    """
    if num_pos * num_pos > total:  # repeats would be common: copairs' own sampler
        return compute.random_ap(size, num_pos, total, int(rng.integers(2**31)))
    ranks = np.sort(rng.integers(0, total, (size, num_pos)), axis=1)
    while (repeated := np.flatnonzero((np.diff(ranks, axis=1) == 0).any(axis=1))).size:
        ranks[repeated] = np.sort(rng.integers(0, total, (repeated.size, num_pos)), axis=1)
    return compute.average_precision(ranks)


def _map_table(ap: pd.DataFrame, null_size: int | None, alpha: float, seed: int) -> pd.DataFrame:
    """mAP, permutation p-value and BH q per group, sorted by group.

    copairs' test: a group's null is the mean, draw by draw, of its queries' null APs (one null per
    (positives, total) configuration), p = (#null above the mAP + 1) / (null_size + 1). Groups with the same
    configurations share one sorted null. `null_size` None: `null_size_for` the number of groups.
    """
    ap = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)].reset_index(drop=True)
    grouped = ap.groupby(GROUP, sort=True, dropna=False)
    table = grouped.agg(mAP=("average_precision", "mean"), mAP_normalized=("normalized_average_precision", "mean"),
                        n_wells=("average_precision", "size")).reset_index()
    null_size = null_size or null_size_for(len(table), alpha)
    configs, config_of = np.unique(ap[["n_pos_pairs", "n_total_pairs"]].to_numpy(), axis=0, return_inverse=True)
    config_of = config_of.ravel()
    rng = np.random.default_rng(seed)
    nulls = [_null_ap(int(k), int(t), null_size, rng) for k, t in configs]
    codes, keys = pd.factorize(pd.Series([tuple(sorted(config_of[rows])) for rows in grouped.indices.values()]))
    p = np.empty(len(table))
    for code, key in enumerate(keys):
        null = np.sort(np.mean([nulls[c] for c in key], axis=0))
        chosen = np.flatnonzero(codes == code)
        above = null_size - np.searchsorted(null, table["mAP"].to_numpy()[chosen], side="right")
        p[chosen] = (above + 1) / (null_size + 1)
    table["p_value"] = p
    table["q_value"] = stats.false_discovery_control(p, method="bh")
    table["active"] = table["q_value"] < alpha
    table.attrs["p_floor"] = 1.0 / (null_size + 1)
    return table[[*GROUP, "n_wells", "mAP", "mAP_normalized", "p_value", "q_value", "active"]]


def phenotypic_activity(features: np.ndarray, metadata: pd.DataFrame, *, null_size: int | None = None,
                        alpha: float = 0.05, seed: int = 0, block_entries: int = 2_000_000) -> pd.DataFrame:
    """mAP of every compound × dose × cell line against the C- wells of its cell line.

    `features` are well-level profiles [n_wells, D] (already normalised as configured) with their
    `metadata` rows. Returns one row per group with two or more replicate wells, in a cell line that has
    C- wells: GROUP columns, n_wells, mAP, mAP_normalized, p_value (copairs' permutation test with
    `null_size` draws, by default enough for any group to pass BH: `null_size_for`; the smallest attainable
    p is `table.attrs["p_floor"]`), q_value (Benjamini-Hochberg over all rows) and active (q < `alpha`).
    """
    _check(features, metadata)
    unit = _unit_rows(features)
    role = control_role(metadata).to_numpy()
    rows, aps, configs = [], [], []
    for line, pool in metadata.groupby("group", sort=True).indices.items():
        controls = pool[role[pool] == "C-"]
        treated, codes, sizes = _query_rows(metadata, pool[role[pool] == "treated"])
        if not len(controls):
            logging.warning("phenotypic activity: cell line %r has no C- wells; its %d groups are not tested",
                            line, len(sizes))
            continue
        reference = unit[controls]
        ends = np.concatenate([[0], np.cumsum(sizes)])
        for first, end in _blocks(sizes, len(controls), block_entries):
            block = slice(ends[first], ends[end])
            q, c = unit[treated[block]], codes[block]
            replicate = (c[:, None] == c[None, :]) & ~np.eye(len(c), dtype=bool)
            ap, conf = _block_ap(q @ q.T, replicate, q @ reference.T)
            rows.append(treated[block])
            aps.append(ap)
            configs.append(conf)
    return _map_table(_ap_frame(metadata, rows, aps, configs), null_size, alpha, seed)


def phenotypic_consistency(features: np.ndarray, metadata: pd.DataFrame, groups: pd.DataFrame | None = None, *,
                           null_size: int | None = None, alpha: float = 0.05, seed: int = 0,
                           block_entries: int = 2_000_000) -> pd.DataFrame:
    """mAP of replicate wells of each compound × dose against the other compounds' wells of its cell line.

    Only the wells of `groups` (rows with GROUP columns, e.g. `phenotypic_activity(...)` filtered to
    `active`; default every treated group) take part, as queries and as negatives; wells of the same
    compound at another dose are neither positives nor negatives. Columns as `phenotypic_activity`.
    """
    _check(features, metadata)
    unit = _unit_rows(features)
    treated = control_role(metadata).to_numpy() == "treated"
    if groups is not None:
        chosen = pd.MultiIndex.from_frame(groups[GROUP])
        treated &= pd.MultiIndex.from_frame(metadata[GROUP]).isin(chosen)
    rows, aps, configs = [], [], []
    for line, pool in metadata.groupby("group", sort=True).indices.items():
        members, codes, _ = _query_rows(metadata, pool[treated[pool]])
        compounds = metadata["perturbation"].to_numpy()[members]
        if len(set(compounds)) < 2:
            logging.warning("phenotypic consistency: cell line %r has %d compound(s) with replicates; "
                            "consistency needs two", line, len(set(compounds)))
            continue
        reference = unit[members]
        step = max(1, block_entries // len(members))
        for start in range(0, len(members), step):
            block = slice(start, start + step)
            sims = unit[members[block]] @ reference.T
            positive = codes[block, None] == codes[None, :]
            positive[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])] = False  # not itself
            negative = compounds[block, None] != compounds[None, :]
            ap, conf = _block_ap(sims, positive, sims, negative)
            rows.append(members[block])
            aps.append(ap)
            configs.append(conf)
    if not rows:
        raise ValueError("no cell line has two compounds with replicate wells among the groups: consistency "
                         "ranks a compound's wells against other compounds'")
    return _map_table(_ap_frame(metadata, rows, aps, configs), null_size, alpha, seed)


def compound_table(activity: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per compound × cell line: best mAP and its dose, doses tested and active, and the compound-level call.

    `p` combines the compound's dose p-values by Simes' rule and `q` is Benjamini-Hochberg over every
    compound × cell line, so `active` (q < `alpha`) controls the false discovery rate of the list of active
    compounds, as the efficacy hit table does; `min_q_value` is the best dose's q among every dose group.
    """
    by = activity.groupby(["perturbation", "group"])
    best = activity.loc[by["mAP"].idxmax()]
    summary = by.agg(doses_tested=("mAP", "size"), doses_active=("active", "sum"), min_q_value=("q_value", "min"))
    summary["p"] = efficacy.grouped_simes(activity["p_value"].to_numpy(), by.ngroup().to_numpy(), by.ngroups)
    out = best.set_index(["perturbation", "group"])[["mAP", "dose"]].rename(
        columns={"mAP": "best_mAP", "dose": "best_conc_uM"}).join(summary)
    out["q"] = stats.false_discovery_control(out["p"], method="bh") if len(out) else []
    out["active"] = out["q"] < alpha
    return out.reset_index().sort_values(["group", "best_mAP"], ascending=[True, False]).reset_index(drop=True)


def fraction_active(activity: pd.DataFrame, alpha: float = 0.05) -> float:
    """Fraction of the tested compound × dose × cell line groups with q < `alpha` (the side-by-side number)."""
    if not len(activity):
        raise ValueError("no compound × dose was tested for phenotypic activity")
    return float((activity["q_value"] < alpha).mean())
