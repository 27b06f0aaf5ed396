"""The hit rule on well tables built by hand: a hit is a rescue above the threshold, blocked by plate, robust to
unequal variance and heavy tails, corrected for plate position, and never an off-axis or cytotoxic profile."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from gandl.analysis import hits, io

DOSES = (0.0316, 0.1, 0.316, 1.0, 3.16, 10.0)
POSITIONS = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]


def _table(rng: np.random.Generator, rescue: dict[str, float], *, compounds: int = 24, plates: int = 4,
           controls: int = 16, gap: float = 2.0, control_sd: float = 0.25, treated_sd: float = 0.25,
           noise=None, edge_controls: bool = False, edge_shift: float = 0.0, plate_sd: float = 0.3,
           models: int = 4) -> pd.DataFrame:
    """A well table as `hits.well_table` makes it (one cell line): C- at 0, C+ at `gap` plus plate offsets; compound
    c at every dose rescues `rescue.get(c, 0)` of the gap (0.5 = the threshold). `noise(rng, n)` draws the
    well noise in units of its sd (normal by default); edge wells shift by `edge_shift` x gap."""
    noise = noise or (lambda r, n: r.standard_normal(n))
    rows = []
    for p in range(plates):
        offset = rng.normal(0, plate_sd)
        names = [f"c{k:02d}" for k in range(compounds)]
        design = ([("C+", "", np.nan, 1.0)] * controls + [("C-", "", np.nan, 0.0)] * controls
                  + [("treated", n, d, rescue.get(n, 0.0)) for n in names for d in DOSES])
        if edge_controls:
            edge = [w for w in POSITIONS if int(w[1:]) in (1, 24)]
            inner = [w for w in POSITIONS if int(w[1:]) not in (1, 24)]
            places = list(rng.permutation(edge))[:2 * controls] + list(rng.permutation(inner))
        else:
            places = list(rng.permutation(POSITIONS))
        for (role, name, dose, level), well in zip(design, places):
            sd = control_sd if role != "treated" else treated_sd
            on_edge = well[0] in "AP" or int(well[1:]) in (1, 24)
            value = offset + level * gap + sd * noise(rng, 1)[0] + edge_shift * gap * on_edge
            rows.append(dict(well_id=f"P{p}_{well}", group="HRCE", plate_id=f"P{p}", well=well, role=role,
                             perturbation=name, dose=dose, model=p % models, decision=value, n_sites=3))
    return pd.DataFrame(rows)


def _call(table: pd.DataFrame, settings: hits.HitSettings | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`hits.call` from the well table on (no features: every dose's off-axis ratio 1)."""
    settings = settings or hits.HitSettings()
    table, notes = hits.correct_positions(table, settings.position)
    gaps = hits.fold_gaps(table)
    refs = hits.plate_references(table, settings.threshold)
    table = table.assign(efficacy=hits.display_scores(table, gaps), off_axis=1.0, control_off_axis=1.0)
    doses = hits.dose_table(table, hits.dose_tests(table, gaps, refs, settings.threshold),
                            hits.dose_flags(table, settings))
    return hits.hit_table(table, doses, settings).set_index("perturbation"), doses


def test_squeeze_variances_recovers_a_scaled_inverse_chi_square_prior():
    rng = np.random.default_rng(0)
    d0, s0, df = 8.0, 2.0, np.full(4000, 3.0)
    sigma2 = s0 * d0 / rng.chisquare(d0, len(df))
    s2 = sigma2 * rng.chisquare(df) / df
    post, total, prior, prior_df = hits.squeeze_variances(s2, df)
    assert prior == pytest.approx(s0, rel=0.1) and prior_df == pytest.approx(d0, rel=0.3)
    closer = np.abs(np.log(post / sigma2)) < np.abs(np.log(s2 / sigma2))
    assert np.allclose(total, df + prior_df) and closer.mean() > 0.6
    same = hits.squeeze_variances(np.full(50, 1.0) * rng.chisquare(5, 50) / 5, np.full(50, 5.0))
    assert same[3] > 50  # variances that vary only by sampling: the prior takes over


@pytest.mark.parametrize("case", ["unequal-variance", "heavy-tails"])
def test_compounds_at_the_threshold_are_hits_at_most_at_the_nominal_rate(case):
    # Every compound rescues exactly half way (efficacy 0, the null's boundary), treated wells 4x as variable as
    # the controls or Student-t(3) noise: a pooled test against the C- wells would call them all.
    rng = np.random.default_rng(1)
    at_threshold = {f"c{k:02d}": 0.5 for k in range(8)}
    p, any_hit = [], []
    for _ in range(15):
        kwargs = (dict(treated_sd=1.0) if case == "unequal-variance"
                  else dict(noise=lambda r, n: r.standard_t(3, n), treated_sd=0.4, control_sd=0.4))
        table, doses = _call(_table(rng, at_threshold, **kwargs))
        p.append(doses.loc[doses["perturbation"].isin(at_threshold), "p"].to_numpy())
        any_hit.append(table["hit"].any())
    p = np.concatenate(p)
    assert np.isfinite(p).all() and np.mean(p < 0.05) <= 0.06
    assert np.mean(any_hit) <= 0.1


def test_rescues_above_the_threshold_are_called_with_a_lower_bound_below_their_estimate():
    rng = np.random.default_rng(2)
    table, _ = _call(_table(rng, {"c00": 1.0, "c01": 0.875, "c02": 0.4}))
    assert table.loc["c00", "hit"] and table.loc["c01", "hit"] and not table.loc["c02", "hit"]
    assert table.loc["c00", "lcb"] < table.loc["c00", "estimate"] and table.loc["c00", "lcb"] > 0.5
    assert table.loc["c01", "estimate"] == pytest.approx(0.75, abs=0.25)  # 0.875 of the way: efficacy 0.75
    assert table["hit"].sum() == 2 and (table.loc[~table["hit"], "status"] == "no rescue above the threshold").all()
    assert table.loc["c00", "best_dose"] in DOSES and table.loc["c00", "rank"] == 1


def test_a_fold_whose_held_out_gap_is_not_positive_is_not_tested_and_never_mirrored():
    rng = np.random.default_rng(3)
    table = _table(rng, {"c00": 1.0})
    flipped = table["model"] == 1
    table.loc[flipped, "decision"] *= -1  # fold 1's axis points the wrong way on its held-out plate
    gaps = hits.fold_gaps(table)
    assert gaps.set_index("model").loc[1, "usable"] == np.False_ and gaps["usable"].sum() == 3
    scored, doses = _call(table)
    assert np.isnan(hits.display_scores(table, gaps)[flipped.to_numpy()]).all()
    assert (doses["n_plates"] == 3).all() and scored.loc["c00", "hit"]


def test_edge_placed_controls_keep_their_place_on_the_axis_once_positions_are_corrected():
    # Controls only in the outer columns, every outer-ring well 0.75 of the gap lower: against its own C- wells
    # an inert interior compound sits 37% of the way to C+ and a 40% rescue 77% (a false hit).
    rng = np.random.default_rng(4)
    table = _table(rng, {"c00": 0.4, "c01": 1.0}, edge_controls=True, edge_shift=-0.75, control_sd=0.15,
                   treated_sd=0.15, plate_sd=0.0)
    raw = hits.plate_references(table.assign(position_effect=0.0), 0.0)
    fixed, notes = hits.correct_positions(table, "auto")
    refs = hits.plate_references(fixed, 0.0)
    assert (raw["vehicle_shift"] > 1.2).all() and (refs["vehicle_shift"] < 0.2).all()
    assert (refs["positive"] - refs["negative"]).between(1.7, 2.3).all()  # the gap, 2, back between edge controls
    assert any("edge rings" in n for n in notes) and any("outer rings" in n for n in notes)
    corrected, _ = _call(table)
    assert list(corrected.index[corrected["hit"]]) == ["c01"]


def test_off_axis_and_cytotoxic_doses_are_not_rescues_and_are_listed_apart():
    rng = np.random.default_rng(5)
    table = _table(rng, {"c00": 1.0, "c01": 1.0, "c02": 1.0})
    table["viability"] = np.where(table["perturbation"] == "c01", 0.3, 1.0) + rng.normal(0, 0.05, len(table))
    table, notes = hits.correct_positions(table, "auto")
    gaps, refs = hits.fold_gaps(table), hits.plate_references(table, 0.0)
    far = np.where(table["perturbation"] == "c02", 4.0, 1.0) * rng.uniform(0.9, 1.1, len(table))
    table = table.assign(efficacy=hits.display_scores(table, gaps), off_axis=far,
                         control_off_axis=np.where(table["role"].isin(["C+", "C-"]), far, np.nan))
    settings = hits.HitSettings()
    doses = hits.dose_table(table, hits.dose_tests(table, gaps, refs, 0.0), hits.dose_flags(table, settings))
    out = hits.hit_table(table, doses, settings).set_index("perturbation")
    assert out.loc["c00", "status"] == "hit"
    assert out.loc["c01", "status"] == "cytotoxic" and not out.loc["c01", "hit"]
    assert out.loc["c02", "status"] == "off-axis" and not out.loc["c02", "hit"]
    assert out.loc["c01", "min_viability"] < 0.5 and out.loc["c02", "max_off_axis"] > 3


def test_off_axis_distances_put_controls_near_one_and_a_toxic_profile_far():
    rng = np.random.default_rng(6)
    rows, features = [], []
    direction = np.zeros(32)
    direction[0] = 3.0
    for p in range(3):
        for w, role in enumerate(["C+"] * 8 + ["C-"] * 8 + ["treated"] * 12):
            name = "" if role != "treated" else ("tox" if w >= 22 else "ok")
            x = rng.standard_normal(32) + (direction if role == "C+" or name == "ok" else 0)
            if name == "tox":
                x[5:13] += 4.0  # moved away from the axis
            features.append(x)
            rows.append(dict(site_id=f"{p}_{w}", well_id=f"{p}_{w}", group="L", experiment="E", plate=p,
                             role=role, perturbation=name))
    dist = hits.well_off_axis(*io.aggregate_wells(np.asarray(features, np.float32), pd.DataFrame(rows), "median"))
    dist = dist.set_index("well_id")
    meta = pd.DataFrame(rows).set_index("well_id")
    ratio = dist["off_axis"]
    assert abs(ratio[meta["role"] == "C+"].median() - 1.0) < 1e-9  # distances in units of C+ wells' own
    assert ratio[meta["perturbation"] == "tox"].min() > ratio[meta["perturbation"] == "ok"].max()
    assert ratio[meta["perturbation"] == "ok"].median() < 1.3


def test_a_shift_shared_by_every_treated_well_is_not_rescue():
    # A vehicle moves every treated well 60% of the way to C+ (past the threshold): the negative level becomes the
    # treated median, and only the compound that rescues beyond the vehicle is a hit.
    rng = np.random.default_rng(7)
    rescue = {f"c{k:02d}": 0.6 for k in range(24)}
    rescue["c00"] = 1.0
    table = _table(rng, rescue, treated_sd=0.15, control_sd=0.15)
    refs = hits.plate_references(table, 0.0)
    assert (refs["vehicle_shift"] > 0).all()
    called, _ = _call(table)
    assert list(called.index[called["hit"]]) == ["c00"]


def test_weak_actives_below_the_threshold_make_few_of_the_hits():
    # Many weak actives (40% of the way to C+, under the 50% threshold) beside strong ones: testing "differs from
    # C-" and then asking the best dose mean to be above 0 made 44% of such a screen's hits; the rescue null holds
    # the share of hits below the threshold (the false discovery proportion here) near the nominal 5%.
    rng = np.random.default_rng(8)
    rescue = {f"c{k:02d}": 1.0 if k < 6 else 0.4 for k in range(18)}
    fdp, power = [], []
    for _ in range(10):
        table, _ = _call(_table(rng, rescue, treated_sd=0.4, control_sd=0.4))
        called = set(table.index[table["hit"]])
        strong = {c for c, r in rescue.items() if r == 1.0}
        fdp.append(len(called - strong) / max(len(called), 1))
        power.append(len(called & strong) / len(strong))
    assert np.mean(fdp) <= 0.06 and np.mean(power) >= 0.9


def test_the_handcrafted_nuclear_area_becomes_the_cell_count_proxy(tmp_path):
    from gandl import fileio
    from gandl.analysis import stage
    from gandl.data import screen
    from gandl.embed import records
    from gandl.features import handcrafted

    names = handcrafted.feature_names(3)
    meta = pd.DataFrame({"site_id": ["a", "b", "c"]})
    hand = np.zeros((3, len(names)), np.float32)
    hand[:, names.index("w2_bright_fraction")] = [0.5, 0.2, 0.9]  # channel 2 of those read is the DNA stain
    hand[:, names.index("w2_mean")] = [0.1, 0.7, 0.3]  # its mean intensity is not the proxy
    other = pd.DataFrame({"site_id": ["c", "a", "b"]})
    sets = {"handcrafted": (hand, meta), "GAN-DL": (np.zeros((3, 4), np.float32), other)}
    export = {"records": {"stains": ["Actin", "RNA", "DNA", "ER"]}, "channels": [1, 3, 4]}
    fileio.write_json(str(tmp_path / records.SETTINGS), export)
    schema = stage.nuclear_proxy(sets, str(tmp_path), screen.PRESETS["generic"])
    assert schema.viability == stage.NUCLEAR_PROXY
    assert other[stage.NUCLEAR_PROXY].tolist() == pytest.approx([0.9, 0.5, 0.2])
    named = dataclasses.replace(screen.PRESETS["generic"], viability="Count_Nuclei")
    assert stage.nuclear_proxy(sets, str(tmp_path), named) is named  # the screen's own readout wins


def test_an_artefact_site_is_flagged_and_does_not_move_its_well():
    rng = np.random.default_rng(9)
    sites = pd.DataFrame({"well_id": np.repeat([f"w{i}" for i in range(40)], 3), "group": "L",
                          "decision": rng.normal(0, 0.3, 120), "experiment": "E", "plate": 1, "well": "B02",
                          "role": "treated", "perturbation": "c", "dose": 1.0, "model": 0})
    sites.loc[7, "decision"] += 10.0  # an out-of-focus field in well w2
    flagged = hits.site_outliers(sites)
    assert flagged.tolist() == [i == 7 for i in range(120)]
    table = hits.well_table(sites).set_index("well_id")
    assert abs(table.loc["w2", "decision"]) < 1.0 and table.loc["w2", "n_sites"] == 3


def test_cytotoxic_compounds_of_the_image_test_bed_are_flagged_by_the_nuclear_area_and_never_hits(tmp_path):
    # Synthetic images in which a third of the compounds kill cells (and shed the infection phenotype as they do);
    # the nuclei's share of each site (handcrafted, the DNA stain) is the cell-count proxy. The stain's mean
    # intensity, the proxy before, barely moves: a dying cell's nucleus shrinks as it brightens.
    from gandl.analysis import report
    from gandl.data import images, rxrx
    from gandl.data import screen as screen_lib
    from gandl.data.synthetic import layouts
    from gandl.data.synthetic import truth as hidden
    from gandl.features import handcrafted, registry

    root = layouts.write_rxrx19a(tmp_path, seed=2, image_size=32, plates_per_cell_line=3, sites_per_well=2,
                                 num_compounds=12, cytotoxic_mimicry=1.0, toxic_fraction=0.34)
    screen = rxrx.read_rxrx19a(str(root))
    features = handcrafted.features(images.read_site_images(screen.paths))
    nuclear = features[:, registry.foreground_columns()["handcrafted"](5, 0)]  # Hoechst is channel 1 of 5
    schema = dataclasses.replace(screen_lib.PRESETS["rxrx19a"], viability="nuclei")
    outcome = report.analyze_screen(features, screen.metadata.assign(nuclei=nuclear),
                                    report.AnalysisConfig(normalization="center_scale"), schema=schema, draw=False)
    truth = pd.read_csv(root / "truth.csv")
    toxic = truth[truth["effect_class"] == "toxic"]
    top = {(r.treatment, r.cell_type): float(hidden.hidden_toxicity(truth, r.treatment, r.cell_type, 10.0))
           for r in toxic.itertuples()}
    called = outcome["hits"].set_index(["perturbation", "group"])
    killing = [pair for pair, level in top.items() if level >= 0.75]  # a quarter or fewer of the cells survive
    assert len(killing) >= 2 and called.loc[killing, "cytotoxic"].all(), called.loc[killing]
    assert not called.loc[list(top), "hit"].any()
    assert called["hit"].sum() >= 3  # the effective compounds still are


def test_the_position_tests_kruskal_and_mad_equal_scipys_on_tied_heavy_tailed_wells():
    from scipy import stats

    from gandl.analysis import plates, qc

    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(2, 60))
        values = np.round(rng.standard_t(3, n), int(rng.integers(0, 3)))  # rounded: ties, sometimes all tied
        groups = rng.integers(0, int(rng.integers(1, 6)), n)
        samples = [s for s in (values[groups == g] for g in np.unique(groups)) if len(s) >= 3]
        expected = stats.kruskal(*samples).pvalue if len(samples) >= 2 else np.nan
        assert np.allclose(plates.kruskal_p(values, groups), expected, rtol=1e-10, atol=0, equal_nan=True)
        assert np.isclose(qc._mad(values), stats.median_abs_deviation(values, scale="normal"))
