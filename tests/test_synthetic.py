"""The synthetic screen: layout and metadata contracts, determinism, and that the hidden biology is visible."""

import io
import json
import math
import os
import pathlib
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gandl.data import vocabulary
from gandl.data.synthetic import cells, cli, layouts
from gandl.data.synthetic.truth import TRUTH_COLUMNS, hidden_efficacy, hidden_toxicity

TINY = dict(image_size=16, plates_per_cell_line=1, sites_per_well=1, num_compounds=3,
            control_wells_per_plate=(1, 1, 1, 1))


def _read(root: pathlib.Path) -> pd.DataFrame:
    # keep_default_na=False keeps blank conditions and empty treatments as "" (their own category).
    return pd.read_csv(root / "metadata.csv", keep_default_na=False, na_values={"treatment_conc": [""]})


def _load(root: pathlib.Path, md: pd.DataFrame, channels: int) -> np.ndarray:
    return np.stack([
        np.stack([np.asarray(Image.open(layouts.image_path(root, r.experiment, r.plate, r.well, r.site, ch)))
                  for ch in range(1, channels + 1)], -1)
        for r in md.itertuples()])


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    root = layouts.write_rxrx19a(tmp_path_factory.mktemp("rxrx19a"), image_size=32)
    md = _read(root)
    return root, md, _load(root, md, 5)


@pytest.fixture(scope="module")
def rxrx1(tmp_path_factory):
    root = layouts.write_rxrx1(tmp_path_factory.mktemp("rxrx1"), image_size=32)
    md = pd.read_csv(root / "metadata.csv", keep_default_na=False)
    return root, md, _load(root, md, 6)


def test_rxrx19a_metadata_contract(screen):
    root, md, images = screen
    assert tuple(md.columns) == vocabulary.RXRX19A_COLUMNS
    assert len(md) == 2 * 2 * (8 * 6 + 17) * 2
    assert set(md.disease_condition) == {"Mock", "UV Inactivated SARS-CoV-2", "Active SARS-CoV-2", ""}
    assert set(md.cell_type) == {"HRCE", "VERO"}
    assert all(re.fullmatch(rf"{c}-\d+", e) for c, e in zip(md.cell_type, md.experiment))
    assert md.well.str.fullmatch(r"[A-P](0[1-9]|1\d|2[0-4])").all()
    assert set(md.site) == {1, 2} and md.plate.min() == 1
    assert (md.site_id == md.experiment + "_" + md.plate.astype(str) + "_" + md.well + "_"
            + md.site.astype(str)).all()
    assert (md.well_id == md.experiment + "_" + md.plate.astype(str) + "_" + md.well).all()
    assert md.site_id.is_unique
    controls = md[md.treatment == ""]
    assert controls.treatment_conc.isna().all() and (controls.SMILES == "").all()
    compounds = md[md.treatment != ""]
    assert (compounds.disease_condition == "Active SARS-CoV-2").all()
    assert set(compounds.treatment_conc) == set(layouts.DOSES_UM) and len(layouts.DOSES_UM) == 6
    assert (compounds.SMILES.str.len() > 5).all()
    assert {"Remdesivir", "GS-441524", "Polydatin"} <= set(compounds.treatment)
    # Every plate carries all controls.
    per_plate = md.groupby(["experiment", "plate"]).disease_condition.agg(set)
    assert all(c >= {"Mock", "UV Inactivated SARS-CoV-2", "Active SARS-CoV-2", ""} for c in per_plate)
    assert images.shape == (len(md), 32, 32, 5) and images.dtype == np.uint8
    assert (root / "images" / "HRCE-1" / "Plate1").is_dir()


def test_truth_and_hidden_efficacy(screen):
    root, md, _ = screen
    truth = pd.read_csv(root / "truth.csv")
    assert set(TRUTH_COLUMNS) <= set(truth.columns)
    assert set(truth.effect_class) == {"effective", "inert", "toxic"}
    assert set(truth.treatment) == set(md.treatment) - {""}
    toxic = truth.effect_class == "toxic"
    assert truth.loc[toxic, "tox_ec50_uM"].notna().all() and truth.loc[~toxic, "tox_ec50_uM"].isna().all()
    doses = np.array(layouts.DOSES_UM)
    for line in ("HRCE", "VERO"):
        for name in ("Remdesivir", "GS-441524"):
            curve = hidden_efficacy(truth, name, line, doses)
            assert np.all(np.diff(curve) > 0) and curve[-1] > 0.7
        assert hidden_efficacy(truth, "Polydatin", line, 10.0) == 0.0
    remdesivir = truth[truth.treatment == "Remdesivir"].set_index("cell_type").ec50_uM
    assert remdesivir["HRCE"] != remdesivir["VERO"]
    row = truth[truth.treatment == "Remdesivir"].iloc[0]
    assert hidden_efficacy(truth, "Remdesivir", row.cell_type, row.ec50_uM) == pytest.approx(row.emax / 2)
    with pytest.raises(KeyError):
        hidden_efficacy(truth, "Aspirin", "HRCE", 1.0)


def _site_stats(md: pd.DataFrame, images: np.ndarray) -> pd.DataFrame:
    """Per-site Syto14 / ConA ratio (viral RNA) and Hoechst mean, each relative to the plate's Mock wells."""
    f = images.astype(np.float64)
    stats = md.copy()
    stats["rna"] = f[..., 3].mean((1, 2)) / f[..., 1].mean((1, 2))
    stats["dna"] = f[..., 0].mean((1, 2))
    for col in ("rna", "dna"):
        mock = stats[stats.disease_condition == "Mock"].groupby(["experiment", "plate"])[col].mean()
        stats[col] /= mock.reindex(pd.MultiIndex.from_frame(stats[["experiment", "plate"]])).to_numpy()
    return stats


def test_disease_phenotype_is_visible_and_rescued(screen):
    root, md, images = screen
    stats = _site_stats(md, images)
    for line in ("HRCE", "VERO"):
        s = stats[stats.cell_type == line]
        mock = s[(s.disease_condition == "Mock")].rna
        active = s[(s.disease_condition == "Active SARS-CoV-2") & (s.treatment == "")].rna
        uv = s[s.disease_condition == "UV Inactivated SARS-CoV-2"].rna
        se = math.sqrt(mock.var() / len(mock) + active.var() / len(active))
        assert active.mean() - mock.mean() > 6 * se, line
        assert abs(uv.mean() - mock.mean()) < 0.5 * (active.mean() - mock.mean()), line
        top = s[s.treatment_conc == max(layouts.DOSES_UM)].groupby("treatment").rna.mean()
        assert abs(top["Remdesivir"] - mock.mean()) < 0.5 * abs(top["Polydatin"] - mock.mean()), line


def test_toxic_compounds_kill_cells_at_top_dose(screen):
    root, md, images = screen
    stats = _site_stats(md, images)
    truth = pd.read_csv(root / "truth.csv")
    for name in truth[truth.effect_class == "toxic"].treatment.unique():
        s = stats[stats.treatment == name]
        low = s[s.treatment_conc == min(layouts.DOSES_UM)].dna.mean()
        high = s[s.treatment_conc == max(layouts.DOSES_UM)].dna.mean()
        assert high < 0.8 * low, name


def test_cell_lines_differ_in_morphology(screen):
    _, md, images = screen
    # Confluent HRCE covers the field evenly; sparse VERO spindles leave most of it dark: ConA's spread.
    cona = images[..., 1].astype(np.float64)
    cv = cona.std((1, 2)) / cona.mean((1, 2))
    mock = (md.disease_condition == "Mock").to_numpy()
    hrce, vero = cv[mock & (md.cell_type == "HRCE").to_numpy()], cv[mock & (md.cell_type == "VERO").to_numpy()]
    assert hrce.max() < vero.min()


def test_rxrx1_set(rxrx1):
    root, md, images = rxrx1
    assert tuple(md.columns) == vocabulary.RXRX1_COLUMNS
    assert set(md.cell_type) == {"HEPG2", "HUVEC", "RPE", "U2OS"}
    assert set(md.well_type) == {"treatment", "negative_control", "positive_control"}
    assert set(md.dataset) == {"train"}
    assert md.experiment.str.fullmatch(r"(HEPG2|HUVEC|RPE|U2OS)-\d\d").all()
    assert md.sirna_id.dtype.kind == "i" and (md[md.well_type == "negative_control"].sirna == "EMPTY").all()
    assert images.shape == (len(md), 32, 32, 6) and images.dtype == np.uint8
    first = md.iloc[0]
    assert layouts.image_path(root, first.experiment, first.plate, first.well, first.site, 6).exists()


def test_shared_stains_render_alike_across_sets():
    """RxRx1's channels (1,2,3,4,6) are the RxRx19a stains: same pixels for the same cells and noise."""
    for line in ("HRCE", "U2OS"):
        five = cells.render_site(np.random.default_rng(3), line, image_size=48, stains=cells.RXRX19A_STAINS)
        six = cells.render_site(np.random.default_rng(3), line, image_size=48, stains=cells.RXRX1_STAINS)
        for c5, c6 in zip(range(5), (0, 1, 2, 3, 5)):
            assert abs(float(five[..., c5].mean()) - float(six[..., c6].mean())) < 0.03 * five[..., c5].mean()


def test_deterministic_and_seed_dependent(tmp_path):
    a = _tree(layouts.write_rxrx19a(tmp_path / "a", seed=5, **TINY))
    b = _tree(layouts.write_rxrx19a(tmp_path / "b", seed=5, **TINY))
    c = _tree(layouts.write_rxrx19a(tmp_path / "c", seed=6, **TINY))
    assert a == b
    assert a["metadata.csv"] != c["metadata.csv"]  # another plate layout and other compounds
    shared = set(a.values()) & set(c.values())
    assert len(shared) < 0.05 * len(a)


def test_rerun_is_free_and_resumes(tmp_path):
    root = layouts.write_rxrx19a(tmp_path / "s", **TINY)
    before = _tree(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    layouts.write_rxrx19a(root, **TINY)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    # An interrupted run (no metadata.csv yet, one image missing) resumes and redraws only what is missing.
    victim = sorted(mtimes)[7]
    victim.unlink()
    (root / "metadata.csv").unlink()
    layouts.write_rxrx19a(root, **TINY)
    assert _tree(root) == before
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p != victim)
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="other parameters"):
        layouts.write_rxrx19a(root, **{**TINY, "seed": 1})


def test_16_bit_has_a_realistic_low_range(tmp_path):
    root = layouts.write_rxrx19a(tmp_path / "deep", bit_depth=16, **TINY)
    md = _read(root)
    images = _load(root, md, 5)
    assert images.dtype == np.uint16
    assert 255 < images.max() < 4096 and np.median(images) < 100


@pytest.mark.parametrize("size", [16, 97, 1024])
def test_render_any_size(size):
    img = cells.render_site(np.random.default_rng(0), "VERO", image_size=size, infection=0.5)
    assert img.shape == (size, size, 5) and img.dtype == np.uint8
    assert img[..., 0].max() > 100  # nuclei present at every resolution


def test_bad_arguments_fail_before_writing(tmp_path):
    with pytest.raises(ValueError):
        layouts.write_rxrx19a(tmp_path / "x", image_size=8)
    with pytest.raises(ValueError):
        layouts.write_rxrx19a(tmp_path / "y", bit_depth=12)
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 65535)])
def test_png_round_trip(dtype, top):
    channel = np.random.default_rng(0).integers(0, top + 1, (3, 5)).astype(dtype)
    back = np.asarray(Image.open(io.BytesIO(layouts.png_bytes(channel))))
    assert back.dtype == dtype and np.array_equal(back, channel)


# Harder test beds: controls only matter here, so compounds are the fewest the writer allows.
TEST_BED = dict(image_size=32, plates_per_cell_line=1, sites_per_well=2, num_compounds=3,
                control_wells_per_plate=(4, 0, 4, 0))


def _controls(tmp_path: pathlib.Path, **options) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [sites, pixels, channels] of the Mock and of the Active control sites of a test-bed screen."""
    root = layouts.write_rxrx19a(tmp_path / "_".join(f"{k}{v}" for k, v in options.items()), **TEST_BED, **options)
    md = _read(root)
    pixels = _load(root, md, 5).reshape(len(md), -1, 5).astype(np.float64)
    blank = md.treatment == ""
    return pixels[(blank & (md.disease_condition == "Mock")).to_numpy()], \
        pixels[(blank & (md.disease_condition == "Active SARS-CoV-2")).to_numpy()]


def test_morphology_only_matches_every_site_to_one_histogram(tmp_path):
    def quantile_gap(a: np.ndarray, b: np.ndarray) -> float:  # per channel, over all pixels of the sites
        levels = (0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
        return float(np.abs(np.quantile(a, levels, axis=(0, 1)) - np.quantile(b, levels, axis=(0, 1))).max())

    mock, active = _controls(tmp_path)
    assert quantile_gap(mock, active) > 10
    mock_m, active_m = _controls(tmp_path, morphology_only=True)
    assert quantile_gap(mock_m, active_m) <= 1
    sites = np.concatenate([mock_m, active_m])
    assert (np.sort(sites, axis=1) == np.sort(sites[:1], axis=1)).all()  # every site, every channel: one histogram
    # Shape and arrangement survive: the same site's pixels keep their order (ranks), only their values change.
    for standard, matched in zip(np.concatenate([mock, active]), sites):
        for c in range(5):
            ranks = [pd.Series(v).rank().to_numpy() for v in (standard[:, c], matched[:, c])]
            assert np.corrcoef(*ranks)[0, 1] > 0.95


def test_phenotype_strength_shrinks_the_control_difference_monotonically(tmp_path):
    gaps = []
    for strength in (1.0, 0.5, 0.2):
        mock, active = _controls(tmp_path, phenotype_strength=strength)
        gaps.append(np.abs(active.mean((0, 1)) - mock.mean((0, 1))).mean())
    assert gaps[0] > gaps[1] > gaps[2] > 0, gaps


def test_cell_density_thins_the_cells(tmp_path):
    nuclei = [(np.concatenate(_controls(tmp_path, cell_density=d))[..., 0] > 60).mean() for d in (1.0, 0.5)]
    assert 0.35 < nuclei[1] / nuclei[0] < 0.7, nuclei  # nuclear area, at one nucleus size: the cell count


def test_test_bed_options_are_stamped_and_checked(tmp_path):
    root = layouts.write_rxrx19a(tmp_path / "s", **TINY)
    assert "phenotype_strength" not in (root / "synthetic.json").read_text()  # standard screens keep their stamp
    subtle = layouts.write_rxrx19a(tmp_path / "subtle", phenotype_strength=0.5, **TINY)
    layouts.write_rxrx19a(subtle, phenotype_strength=0.5, **TINY)
    for change in (dict(phenotype_strength=0.4), dict(phenotype_strength=1.0), dict(morphology_only=True)):
        with pytest.raises(ValueError, match="other parameters"):
            layouts.write_rxrx19a(subtle, **TINY, **{"phenotype_strength": 0.5, **change})
    for bad in (dict(phenotype_strength=0.0), dict(cell_density=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            layouts.write_rxrx19a(tmp_path / "bad", **TINY, **bad)
    assert not (tmp_path / "bad").exists()


# False-hit test beds: controls in the edge columns, half the generated compounds toxic-inert; one screen each
# with an edge effect and with cytotoxic mimicry besides, drawn from the same streams, so pixels pair up.
FALSE_HIT_BED = dict(image_size=32, plates_per_cell_line=1, sites_per_well=1, num_compounds=9,
                     control_wells_per_plate=(6, 0, 6, 0), control_layout="edge", toxic_fraction=0.5)


@pytest.fixture(scope="module")
def false_hit_beds(tmp_path_factory):
    """{name: (root, metadata, float pixels [sites, H, W, 5])} of the plain bed, `edge` and `mimicry`."""
    beds = {}
    for name, extra in (("plain", {}), ("edge", dict(edge_effect=0.3)), ("mimicry", dict(cytotoxic_mimicry=1.0))):
        root = layouts.write_rxrx19a(tmp_path_factory.mktemp(name), **FALSE_HIT_BED, **extra)
        md = _read(root)
        beds[name] = root, md, _load(root, md, 5).astype(np.float64)
    return beds


def _columns(md: pd.DataFrame) -> pd.Series:
    return md.well.str[1:].astype(int)


def _toxic_sites(root: pathlib.Path, md: pd.DataFrame) -> np.ndarray:
    truth = pd.read_csv(root / "truth.csv")
    return md.treatment.isin(truth.loc[truth.effect_class == "toxic", "treatment"]).to_numpy()


def test_edge_layout_puts_every_control_in_the_outer_two_columns(false_hit_beds):
    _, md, _ = false_hit_beds["plain"]
    controls = md.treatment == ""
    assert controls.sum() == 2 * 12
    assert _columns(md[controls]).isin([1, 2, 23, 24]).all()
    assert _columns(md[~controls]).between(3, 22).all()
    assert set(_columns(md[controls])) & {1, 2} and set(_columns(md[controls])) & {23, 24}  # both sides


def test_edge_effect_brightens_the_outer_ring_only(false_hit_beds):
    _, md, plain = false_hit_beds["plain"]
    _, md_edge, edge = false_hit_beds["edge"]
    assert md_edge.equals(md)
    ring = (md.well.str[0].isin(["A", "P"]) | _columns(md).isin([1, 24])).to_numpy()
    assert all(ring[(md.cell_type == line).to_numpy()].any() for line in ("HRCE", "VERO"))
    assert np.array_equal(edge[~ring], plain[~ring])
    gain = edge[ring].mean((1, 2)) / plain[ring].mean((1, 2))  # [ring sites, channels]
    assert (gain > 1.1).all() and gain.mean() == pytest.approx(1.3, abs=0.08), gain  # 8-bit clipping caps it a bit


def test_cytotoxic_mimicry_moves_toxic_wells_towards_mock_and_keeps_their_truth(false_hit_beds):
    root, md, plain = false_hit_beds["plain"]
    root_m, md_m, mimic = false_hit_beds["mimicry"]
    assert md_m.equals(md)
    assert (root_m / "truth.csv").read_bytes() == (root / "truth.csv").read_bytes()  # still emax 0: no rescue
    toxic = _toxic_sites(root, md)
    assert np.array_equal(mimic[~toxic], plain[~toxic])  # only the toxic compounds' sites change
    # The viral RNA (Syto14 / ConA, 1 at the plate's Mock) of the toxic sites at >= 1 uM, where they are toxic.
    before, after = _site_stats(md, plain), _site_stats(md, mimic)
    for line in ("HRCE", "VERO"):
        dosed = toxic & (md.cell_type == line).to_numpy() & (md.treatment_conc >= 1.0).to_numpy()
        active = before[(before.cell_type == line) & (before.disease_condition == "Active SARS-CoV-2")
                        & (before.treatment == "")].rna.mean()
        moved = before.rna[dosed].mean() - after.rna[dosed].mean()
        assert moved > 0.1 * (active - 1.0), (line, moved, active)


def test_toxic_fraction_makes_toxic_inert_compounds_that_lose_nuclei(false_hit_beds):
    root, md, pixels = false_hit_beds["mimicry"]
    truth = pd.read_csv(root / "truth.csv").drop_duplicates("treatment")
    generated = truth[truth.treatment.str.startswith("SYN-")]
    assert (generated.effect_class == "toxic").sum() == 3 and len(generated) == 6
    assert set(generated.effect_class) == {"effective", "inert", "toxic"}
    assert (truth.loc[truth.effect_class == "toxic", "emax"] == 0).all()
    # Even where they mimic rescue, dying cells leave fewer nuclei: the Hoechst mean falls below the Active wells'.
    full = pd.read_csv(root / "truth.csv")
    toxicity = np.array([hidden_toxicity(full, r.treatment, r.cell_type, r.treatment_conc) if r.treatment else 0.0
                         for r in md.itertuples()])
    hoechst = pixels[..., 0].mean((1, 2))
    for line in ("HRCE", "VERO"):
        mine = (md.cell_type == line).to_numpy()
        active = mine & (md.treatment == "").to_numpy() & (md.disease_condition == "Active SARS-CoV-2").to_numpy()
        dying = mine & (toxicity > 0.5)
        assert dying.sum() >= 2 and hoechst[dying].mean() < 0.8 * hoechst[active].mean(), line


def test_false_hit_options_are_stamped_checked_and_on_the_command_line(tmp_path):
    stamp = (layouts.write_rxrx19a(tmp_path / "s", **TINY) / "synthetic.json").read_text()
    assert not {"cytotoxic_mimicry", "toxic_fraction", "control_layout", "edge_effect"} & set(json.loads(stamp))
    for bad in (dict(cytotoxic_mimicry=1.5), dict(toxic_fraction=-0.1), dict(control_layout="middle"),
                dict(edge_effect=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            layouts.write_rxrx19a(tmp_path / "bad", **TINY, **bad)
    with pytest.raises(ValueError, match="control_layout 'edge' fits 64 control and 320 compound wells"):
        layouts.write_rxrx19a(tmp_path / "bad", **{**TINY, "num_compounds": 60}, control_layout="edge")
    assert not (tmp_path / "bad").exists()
    cli.main(["--out", str(tmp_path / "cli"), "--image_size", "16", "--plates_per_cell_line", "1", "--sites_per_well",
              "1", "--num_compounds", "4", "--cytotoxic_mimicry", "0.8", "--toxic_fraction", "1", "--control_layout",
              "edge", "--edge_effect", "0.15"])
    options = json.loads((tmp_path / "cli" / "synthetic.json").read_text())
    assert {k: options[k] for k in ("cytotoxic_mimicry", "toxic_fraction", "control_layout", "edge_effect")} == \
        dict(cytotoxic_mimicry=0.8, toxic_fraction=1.0, control_layout="edge", edge_effect=0.15)
    truth = pd.read_csv(tmp_path / "cli" / "truth.csv")
    assert (truth.loc[truth.treatment == "SYN-001", "effect_class"] == "toxic").all()
