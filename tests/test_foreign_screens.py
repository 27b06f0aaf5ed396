"""Screens in their users' own terms, end to end: a CellProfiler-style CSV of 16-bit TIFFs and two OME-Zarr plates
with a plate map convert, train and embed, and every metadata value comes back exactly in npz, parquet and h5ad."""

import json
import os
import shutil
import subprocess
import sys

import anndata
import numpy as np
import pandas as pd
import pytest

from gandl import embed, main
from gandl import workdir as layout
from gandl.analysis import io as analysis_io
from gandl.analysis import stage as analysis_stage
from gandl.data import rxrx, screen
from gandl.data import stage as data_stage
from gandl.data.synthetic import layouts
from gandl.defaults import Config
from gandl.profiles import feature_names

pytestmark = pytest.mark.slow  # not in the inner loop (tests/conftest.py)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The CSV screen's schema, in its own column names and control labels.
CELL_PAINTING = dict(plate="Metadata_Plate", well="Metadata_Well", site="Metadata_Site", group="Metadata_CellLine",
                     perturbation="Metadata_Compound", dose="Metadata_Dose_uM",
                     positive="Metadata_Compound == 'staurosporine'", negative="Metadata_Compound == 'DMSO'",
                     positive_name="staurosporine", negative_name="DMSO")


def _config(tiny_config, **data):
    """The tests' tiny model on a 3-channel screen, without the (RxRx1, 5-channel) zero-shot set."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.data.update(image_size=16, sites_per_shard=16, num_workers=1, **data)
    cfg.model.num_channels = 3
    cfg.zeroshot.enabled = False
    cfg.embed.feature_sets = ("gandl", "handcrafted")
    return cfg


@pytest.fixture(scope="module")
def csv_run(tiny_config, tmp_path_factory):
    """(config, workdir, the screen as read) of the CSV screen converted, trained for 10 steps with the probe at step
    10 and embedded."""
    root = layouts.write_cell_painting(tmp_path_factory.mktemp("cell_painting"), image_size=32)
    cfg = _config(tiny_config, kind="generic", root=str(root / "metadata.csv"),
                  channel_columns=("FileName_DNA", "FileName_Actin", "FileName_RNA"), stains=("DNA", "Actin", "RNA"))
    cfg.screen.update(CELL_PAINTING)
    cfg.train.update(probe_every=10, probe_features=("gandl",), probe_sites=64)
    workdir = str(tmp_path_factory.mktemp("csv_run"))
    data_stage.convert_screen(Config.from_mapping(cfg), workdir)
    main.run_train(Config.from_mapping(cfg), workdir)
    embed.run(Config.from_mapping(cfg), workdir)
    return cfg, workdir, screen.read_configured(Config.from_mapping(cfg))


def _assert_same_values(exported: pd.Series, expected: pd.Series, what: str) -> None:
    """Equal values of the same kind: floats as float64 (NaN matching NaN), integers as integers, strings as str."""
    if pd.api.types.is_float_dtype(expected):
        assert exported.dtype == np.float64, what
        np.testing.assert_array_equal(exported.to_numpy(np.float64), expected.to_numpy(np.float64), err_msg=what)
    elif pd.api.types.is_integer_dtype(expected):
        assert pd.api.types.is_integer_dtype(exported), what
        np.testing.assert_array_equal(exported.to_numpy(np.int64), expected.to_numpy(np.int64), err_msg=what)
    else:
        assert exported.map(type).eq(str).all(), what
        assert exported.tolist() == expected.astype(str).tolist(), what


def test_a_cellprofiler_csv_screen_exports_its_metadata_exactly(csv_run):
    cfg, workdir, read = csv_run
    expected = read.metadata
    raw = pd.read_csv(cfg.data.root)
    assert expected["Metadata_Dose_uM"].tolist() == raw["Metadata_Dose_uM"].tolist()  # 0.1 is 0.1, as typed in
    assert set(expected["Metadata_Dose_uM"]) == {0.0, 1.0, *layouts.CELL_PAINTING_DOSES_UM}
    assert expected["site_id"].iloc[0] == f"{raw['Metadata_Plate'][0]}_{raw['Metadata_Well'][0]}_1"  # derived ids
    folder = os.path.join(workdir, "embeddings", "step_10")
    _, npz = analysis_io.load_embeddings(os.path.join(folder, "gandl.npz"))
    sites = pd.read_parquet(os.path.join(folder, "gandl.parquet"))
    h5ad = anndata.read_h5ad(os.path.join(folder, "gandl.h5ad"))
    assert list(npz.columns) == list(expected.columns)
    assert list(sites.columns) == [screen.profile_column(c) for c in expected.columns] + feature_names(32)
    assert "Metadata_Plate" in sites and not any(c.startswith("Metadata_Metadata_") for c in sites)
    for column in expected.columns:
        _assert_same_values(npz[column], expected[column], f"npz {column}")
        _assert_same_values(sites[screen.profile_column(column)], expected[column], f"parquet {column}")
        if column != "site_id":
            _assert_same_values(h5ad.obs[column].astype(object if h5ad.obs[column].dtype == "category" else
                                                         h5ad.obs[column].dtype), expected[column], f"h5ad {column}")
    assert h5ad.obs_names.tolist() == expected["site_id"].tolist()
    wells = pd.read_parquet(os.path.join(folder, "gandl_wells.parquet"))
    first = expected.groupby("well_id", sort=False).head(1).reset_index(drop=True)
    assert wells["Metadata_well_id"].tolist() == first["well_id"].tolist()
    _assert_same_values(wells["Metadata_Dose_uM"], first["Metadata_Dose_uM"], "wells dose")
    assert (wells["Metadata_n_sites"] == 2).all() and "Metadata_Metadata_Plate" not in wells


def test_the_probe_reads_the_screen_in_its_own_columns_and_controls(csv_run):
    _, workdir, read = csv_run
    table = pd.read_csv(layout.probe_table(workdir))
    assert set(table["step"]) == {10} and set(table["feature_set"]) == {"gandl"}
    assert table.set_index("task").loc["C+ vs C- (all cell lines)", "status"] == "ok"
    assert not table["task"].str.contains("HRCE|VERO").any()  # the screen's own group: one cell line, U2OS


def test_two_ome_zarr_plates_with_a_plate_map_convert_and_embed(csv_run, tiny_config, tmp_path):
    _, csv_workdir, _ = csv_run
    root = layouts.write_cell_painting(tmp_path / "plates", image_size=32, plates=2, layout="ome_zarr")
    zarr_cfg = _config(tiny_config, kind="ome_zarr", root=str(root / "*.zarr"))  # plate map: metadata.csv beside
    zarr_cfg.screen.update(preset="generic", perturbation="Metadata_Compound", dose="Metadata_Dose_uM",
                           negative="Metadata_Compound == 'DMSO'", positive="Metadata_Compound == 'staurosporine'")
    workdir = tmp_path / "run"
    shutil.copytree(os.path.join(csv_workdir, "checkpoints"), workdir / "checkpoints")  # the CSV run's 3-channel D
    manifest = data_stage.convert_screen(Config.from_mapping(zarr_cfg), str(workdir))
    assert manifest["num_sites"] == 2 * 8 * 2 and manifest["stains"] == ["DNA", "Actin", "RNA"]  # OMERO labels
    embed.run(Config.from_mapping(zarr_cfg), str(workdir))
    _, meta = analysis_io.load_embeddings(str(workdir / "embeddings" / "step_10" / "gandl.npz"))
    plate_map = pd.read_csv(root / "metadata.csv", keep_default_na=False)
    assert set(meta["plate"]) == {"P1", "P2"} and meta["well_id"].iloc[0] == f"{meta['plate'][0]}_{meta['well'][0]}"
    joined = meta.merge(plate_map, on=["plate", "well"], suffixes=("", "_map"))
    assert len(joined) == len(meta)
    for column in ("Metadata_Compound", "Metadata_Dose_uM", "Metadata_Note"):
        assert joined[column].tolist() == joined[f"{column}_map"].tolist(), column
    assert meta["Metadata_Dose_uM"].dtype == np.float64 and meta["site"].dtype == np.int64
    # the plates' own schema: no cell line column
    analysis = analysis_stage.run(Config.from_mapping(zarr_cfg), str(workdir))
    outcome = next(iter(analysis["screens"].values()))
    assert {"controls", "efficacy", "dose_response", "activity"} <= set(outcome["results"]), outcome["skipped"]
    assert set(outcome["hits"]["perturbation"]) == {"cpd-7"} and outcome["table1"]["n_groups"].iloc[0] == 2


def test_the_csv_screen_is_analysed_in_its_own_columns_and_controls(csv_run):
    cfg, workdir, _ = csv_run
    result = analysis_stage.run(Config.from_mapping(cfg), workdir)
    out = os.path.join(workdir, "analysis")
    with open(os.path.join(out, "analysis.json")) as f:
        folders = json.load(f)["folders"]
    for name in result["screens"]:
        outcome = result["screens"][name]
        ran = set(outcome["results"])
        assert {"controls", "efficacy", "dose_response", "activity"} <= ran, outcome["skipped"]
        table1 = outcome["table1"].set_index("task")
        assert table1.loc["C+ vs C- (all cell lines)", "status"] == "ok"
        hits = pd.read_csv(os.path.join(out, folders[name], "hits.csv"))
        assert {"Metadata_Compound", "Metadata_CellLine", "hit", "q"} <= set(hits.columns)
        assert set(hits["Metadata_Compound"]) == {"cpd-7"}  # controls (DMSO, staurosporine) are never hits
        doses = pd.read_csv(os.path.join(out, folders[name], "dose_response.csv"))
        assert sorted(doses["Metadata_Dose_uM"]) == list(layouts.CELL_PAINTING_DOSES_UM)
        assert os.path.getsize(os.path.join(out, folders[name], "map_activity.csv")) > 0
    report = open(os.path.join(out, "report.md")).read()
    assert "C+ = staurosporine" in report and "C- = DMSO" in report and "SARS" not in report


FOREIGN_CONFIG = '''
from gandl.defaults import call_in_file


def get_config():
    """The tests' tiny model with the demo's probe, on a screen in its own columns, controls and treatments."""
    config = call_in_file({tiny!r}, "get_config")
    config.data.update(kind="generic", root={root!r}, channel_columns={columns!r}, image_size=16, sites_per_shard=64,
                       num_workers=1)
    config.screen.update({schema!r}, treated="Metadata_Compound != 'DMSO'", positive_name="mock",
                         negative_name="infected")
    config.synthetic.image_size = 16  # the zero-shot set is drawn at the screen's size
    config.zeroshot.channels = (1, 2, 3, 4, 6)  # RxRx1 layout onto the screen's 5 channels
    config.zeroshot.synthetic.update(plates_per_cell_line=2, sites_per_well=1)
    demo = call_in_file({demo!r}, "get_config").train
    config.train.update(steps=10, probe_every=10, probe_features=demo.probe_features, probe_sites=64,
                        probe_zeroshot_sites=64)
    config.analysis.n_splits = 2
    return config
'''


def test_a_foreign_schema_screen_runs_mode_all_with_the_probe_and_keeps_its_other_wells_out(tmp_path):
    """Issue #37: a CellProfiler-style CSV of the 5-channel screen (own columns and control labels; UV-inactivated
    virus wells are DMSO wells the schema declares neither control nor treatment) with an RxRx1-layout zero-shot
    set runs `--mode all` with the demo's probe; the DMSO wells appear in no compound table, hit list or mAP."""
    source = layouts.write_rxrx19a(tmp_path / "rxrx19a", image_size=16, plates_per_cell_line=2, sites_per_well=1,
                                   num_compounds=3)
    read = rxrx.read_rxrx19a(str(source))
    columns = tuple(f"FileName_w{c + 1}" for c in range(len(read.stains)))
    plate_map = layouts.cell_profiler_plate_map(read.metadata).assign(**dict(zip(columns, read.paths.T)))
    plate_map.to_csv(tmp_path / "plate_map.csv", index=False)
    config = tmp_path / "my_screen.py"
    config.write_text(FOREIGN_CONFIG.format(
        tiny=os.path.join(REPO, "tests", "tiny_config.py"), demo=os.path.join(REPO, "configs", "demo.py"),
        root=str(tmp_path / "plate_map.csv"), columns=columns, schema=layouts.CELL_PROFILER_SCHEMA))
    workdir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "gandl.main", "--config", str(config), "--workdir", str(workdir),
                           "--mode", "all"], capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = pd.read_csv(workdir / "probe.csv")
    assert set(probe["feature_set"]) >= {"gandl", "gandl_blocks"} and (probe["step"] == 10).all()
    analysis = workdir / "analysis"
    for name in ("hits", "dose_response", "map_activity"):
        compounds = set(pd.read_csv(analysis / "GAN-DL" / f"{name}.csv")["Metadata_Compound"])
        assert compounds and "DMSO" not in compounds, (name, compounds)
    assert "neither controls nor treatments" in (analysis / "report.md").read_text()
    assert "GAN-DL" in json.loads((analysis / "analysis.json").read_text())["zeroshot"]  # typed zero-shot
