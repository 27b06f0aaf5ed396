"""Phenotypic activity / consistency mAP: agreement with copairs' own pair-list path, and the synthetic truth."""

import numpy as np
import pandas as pd
import pytest
from copairs import compute
from copairs.map import average_precision, mean_average_precision

from gandl.analysis import activity, plots
from gandl.data import images, rxrx, screen
from gandl.data.synthetic import layouts
from gandl.features import handcrafted


def view(metadata: pd.DataFrame) -> pd.DataFrame:
    """RxRx19a metadata as the analysis reads it."""
    return screen.screen_view(metadata, screen.default_schema())


def _wells(rng, lines=("HRCE", "VERO"), compounds=3, doses=(0.1, 1.0), replicates=3, controls=5, dim=16):
    rows = []
    for line in lines:
        rows += [dict(group=line, role="C-", perturbation="", dose=np.nan)] * controls
        rows += [dict(group=line, role="C+", perturbation="", dose=np.nan)] * 2
        rows += [dict(group=line, role="treated", perturbation=f"cpd{c}", dose=d)
                 for c in range(compounds) for d in doses for _ in range(replicates)]
    meta = pd.DataFrame(rows)
    return rng.normal(size=(len(meta), dim)).astype(np.float32), meta


@pytest.mark.parametrize("block_entries", [40, 2_000_000])  # tiny blocks: many blocks, same APs
def test_activity_aps_match_copairs_pair_lists(block_entries):
    features, meta = _wells(np.random.default_rng(0))
    table = activity.phenotypic_activity(features, meta, null_size=500, block_entries=block_entries)
    role = screen.control_role(meta)
    for line in ("HRCE", "VERO"):  # copairs' reference path: explicit pairs, one cell line at a time
        rows = np.flatnonzero((meta["group"] == line) & role.isin(["C-", "treated"]))
        sub = meta.iloc[rows].reset_index(drop=True)
        is_control = (role.iloc[rows] == "C-").to_numpy()
        sub["pair"] = np.where(is_control, "ctl" + pd.Series(range(len(sub))).astype(str),
                                sub["perturbation"] + "@" + sub["dose"].astype(str))
        sub["is_control"] = is_control.astype(int)
        ap = average_precision(sub, features[rows], ["pair"], [], [], ["is_control"], progress_bar=False)
        expected = ap[~is_control].groupby(["perturbation", "dose"])["average_precision"].mean()
        ours = table[table["group"] == line].set_index(["perturbation", "dose"])["mAP"]
        np.testing.assert_allclose(ours.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=1e-5)
    assert len(table) == 2 * 3 * 2 and (table["n_wells"] == 3).all()
    assert table["p_value"].between(0, 1).all() and (table["q_value"] >= table["p_value"] - 1e-12).all()


def test_a_cell_line_without_c_minus_is_left_out_and_too_few_wells_is_an_error():
    features, meta = _wells(np.random.default_rng(1))
    meta.loc[(meta["group"] == "VERO") & (meta["perturbation"] == ""), "role"] = "C+"
    table = activity.phenotypic_activity(features, meta, null_size=200)
    assert set(table["group"]) == {"HRCE"}
    with pytest.raises(ValueError, match="missing columns \\['role'\\]"):
        activity.phenotypic_activity(features, meta.drop(columns="role"))
    with pytest.raises(ValueError, match="two replicate wells"):
        activity.phenotypic_activity(features[:12], meta.iloc[:12].assign(perturbation="", dose=np.nan, role="C-"))


def test_consistency_tells_distinct_compounds_apart_but_not_a_shared_phenotype():
    rng = np.random.default_rng(2)
    features, meta = _wells(rng, lines=("HRCE",), compounds=4, doses=(1.0,), replicates=4, controls=6, dim=32)
    directions = rng.normal(size=(4, 32)).astype(np.float32) * 3
    treated = meta["perturbation"] != ""
    codes = meta.loc[treated, "perturbation"].str.removeprefix("cpd").astype(int).to_numpy()
    distinct = features.copy()
    distinct[treated.to_numpy()] += directions[codes]  # each compound its own phenotype
    shared = features.copy()
    shared[treated.to_numpy()] += directions[0]  # every compound the same phenotype
    high = activity.phenotypic_consistency(distinct, meta, null_size=1000)
    low = activity.phenotypic_consistency(shared, meta, null_size=1000)
    assert high["active"].all() and (high["mAP"] > 0.9).all()
    assert not low["active"].any()
    assert activity.phenotypic_activity(shared, meta, null_size=1000)["active"].all()  # all differ from C-


@pytest.fixture(scope="module")
def synthetic_wells(tmp_path_factory):
    """Handcrafted features of a small synthetic screen, one site per well, z-scored per cell line."""
    root = layouts.write_rxrx19a(tmp_path_factory.mktemp("screen"), seed=0, image_size=32, plates_per_cell_line=4,
                                 sites_per_well=1, num_compounds=4)
    screen = rxrx.read_rxrx19a(str(root))
    pixels = np.stack([np.stack([images.read(p) for p in site], -1) for site in screen.paths])
    features = handcrafted.features([pixels.astype(np.float32) / 255.0])
    for idx in screen.metadata.groupby("cell_type").indices.values():  # the raw RxRx19a metadata
        features[idx] = (features[idx] - features[idx].mean(0)) / (features[idx].std(0) + 1e-6)
    truth = pd.read_csv(root / "truth.csv").rename(columns={"treatment": "perturbation", "cell_type": "group"})
    return features, view(screen.metadata), truth


def test_effective_compounds_are_active_at_high_dose_and_inert_ones_are_not(synthetic_wells, tmp_path):
    features, meta, truth = synthetic_wells
    table = activity.phenotypic_activity(features, meta, null_size=2000, seed=0)
    hrce = table[table["group"] == "HRCE"].merge(truth, on=["perturbation", "group"])
    top = hrce[hrce["dose"] == hrce["dose"].max()]
    assert top.loc[top["effect_class"] == "effective", "active"].all()
    assert not table.loc[table["perturbation"].isin(truth.loc[truth["effect_class"] == "inert", "perturbation"]),
                         "active"].any()
    remdesivir = hrce[hrce["perturbation"] == "Remdesivir"].sort_values("dose")
    assert remdesivir["mAP"].iloc[-1] > remdesivir["mAP"].iloc[0] + 0.5  # rises with dose

    per_compound = activity.compound_table(table)
    assert len(per_compound) == 8 and per_compound["doses_tested"].eq(6).all()
    row = per_compound.set_index(["perturbation", "group"]).loc[("Remdesivir", "HRCE")]
    assert row["best_mAP"] == pytest.approx(remdesivir["mAP"].max()) and row["doses_active"] >= 2
    assert row["active"] and row["p"] <= row["q"] <= 0.05
    inert = per_compound["perturbation"].isin(truth.loc[truth["effect_class"] == "inert", "perturbation"])
    assert not per_compound.loc[inert, "active"].any()
    fraction = activity.fraction_active(table)
    assert fraction == pytest.approx(table["active"].mean()) and 0 < fraction < 0.5

    png = plots.map_dose_figure(table, ["Remdesivir", "Polydatin", "not-in-screen"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _ap_table(rng, groups: int, perfect: int = 0, negatives: int = 40) -> pd.DataFrame:
    """Per-query APs of `groups` groups of 3 replicate wells (2 positives each) against `negatives` C- wells:
    null groups drawn as copairs draws its null, the first `perfect` groups ranking both positives first."""
    total = 2 + negatives
    ap = compute.random_ap(3 * groups, 2, total, int(rng.integers(1000)))
    ap[:3 * perfect] = 1.0
    return pd.DataFrame(dict(group="HRCE", perturbation=np.repeat([f"c{g}" for g in range(groups)], 3),
                             dose=1.0, average_precision=ap, normalized_average_precision=ap,
                             n_pos_pairs=2, n_total_pairs=total))


def test_p_values_are_copairs_test_and_a_clear_group_passes_bh_among_thousands():
    rng = np.random.default_rng(5)
    small = _ap_table(rng, 200, perfect=5)
    ours = activity._map_table(small, 20000, 0.05, seed=1)
    reference = mean_average_precision(small, activity.GROUP, null_size=20000, threshold=0.05, seed=3,
                                       progress_bar=False)
    merged = ours.merge(reference, on=activity.GROUP)
    assert len(merged) == 200 and np.abs(merged["p_value_x"] - merged["p_value_y"]).max() < 0.02
    # 3,000 groups: BH's first threshold is 0.05 / 3000 = 1.7e-5; 10,000 draws floor p at 1e-4.
    many = _ap_table(rng, 3000, perfect=1)
    default = activity._map_table(many, None, 0.05, seed=0)
    assert default.attrs["p_floor"] < 0.05 / 3000 / 2
    assert default.loc[default["perturbation"] == "c0", "active"].item() and default["active"].sum() == 1
    assert not activity._map_table(many, 10000, 0.05, seed=0)["active"].any()


def test_one_active_compound_per_line_keeps_the_activity_table_and_notes_why_no_consistency():
    from gandl.analysis import tasks

    rng = np.random.default_rng(3)
    features, meta = _wells(rng, compounds=2, doses=(1.0,), replicates=4, controls=6, dim=32)
    lines, names = meta["group"].to_numpy(), meta["perturbation"].to_numpy()
    effect = rng.normal(size=32).astype(np.float32) * 4
    features[((lines == "HRCE") & (names == "cpd0")) | ((lines == "VERO") & (names == "cpd1"))] += effect
    meta["well_id"] = [f"w{i}" for i in range(len(meta))]
    result = tasks.activity_task(tasks.Inputs(features, meta, tasks.AnalysisConfig(level="well"), "f", {}))
    act = result.tables["map_activity"][0].set_index(["group", "perturbation"])
    assert act.loc[("HRCE", "cpd0"), "active"] and act.loc[("VERO", "cpd1"), "active"]
    assert act["active"].sum() == 2 and "map_consistency" not in result.tables
    assert result.notes == ["phenotypic consistency not computed: no cell line has two active compounds "
                            "(HRCE: 1, VERO: 1)"]
    active = result.tables["map_activity"][0].loc[lambda t: t["active"]]
    with pytest.raises(ValueError, match="no cell line has two compounds with replicate wells"):
        activity.phenotypic_consistency(features, meta, active)
