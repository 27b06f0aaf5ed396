"""The screen schema: presets that reproduce RxRx19a's controls, a foreign screen's own columns and queries,
validation naming what fails, and the reader registry."""

import dataclasses
import inspect

import numpy as np
import pandas as pd
import pytest

from gandl.data import rxrx, screen
from gandl.defaults import base_config


def _cell_painting_metadata() -> pd.DataFrame:
    """A plate map in CellProfiler's spelling: DMSO, a positive-control compound, one compound at three doses."""
    rows = []
    for plate in ("P1", "P2"):
        for well, compound, dose in (("A01", "DMSO", 0.0), ("A02", "DMSO", 0.0), ("B01", "staurosporine", 1.0),
                                     ("C01", "cpd7", 0.1), ("C02", "cpd7", 0.3), ("C03", "cpd7", 1.0),
                                     ("D01", "", np.nan)):
            rows.append(dict(Metadata_Plate=plate, Metadata_Well=well, Metadata_Site=1, Metadata_Compound=compound,
                             Metadata_Dose_uM=dose, Metadata_CellLine="U2OS"))
    return pd.DataFrame(rows)


FOREIGN = screen.ScreenSchema(plate="Metadata_Plate", well="Metadata_Well", site="Metadata_Site",
                              group="Metadata_CellLine", perturbation="Metadata_Compound", dose="Metadata_Dose_uM",
                              positive="Metadata_Compound == 'staurosporine'",
                              negative="Metadata_Compound == 'DMSO'")


def test_the_rxrx19a_presets_give_the_rxrx19a_roles_and_plates(rxrx19a_dir):
    md = rxrx.read_rxrx19a(rxrx19a_dir).metadata
    untreated = (md["treatment"] == "").to_numpy()
    condition = md["disease_condition"].to_numpy()
    role = screen.control_role(md, schema=screen.PRESETS["rxrx19a"]).to_numpy()
    np.testing.assert_array_equal(role == "C+", untreated & (condition == rxrx.MOCK))
    np.testing.assert_array_equal(role == "C-", untreated & (condition == rxrx.ACTIVE))
    np.testing.assert_array_equal(role == "treated", ~untreated)
    assert set(role[untreated & np.isin(condition, [rxrx.UV_INACTIVATED, rxrx.BLANK])]) == {"other"}
    uv = screen.control_role(md, schema=screen.PRESETS["rxrx19a_uv"]).to_numpy()
    np.testing.assert_array_equal(uv == "C+", untreated & np.isin(condition, [rxrx.MOCK, rxrx.UV_INACTIVATED]))
    keys = screen.plate_key(md, schema=screen.PRESETS["rxrx19a"])
    assert set(keys) == {f"{e}_{p}" for e, p in zip(md["experiment"], md["plate"])}
    np.testing.assert_array_equal(screen.plate_key(md, "experiment", schema=screen.PRESETS["rxrx19a"]),
                                  md["experiment"])
    # a table without a schema is read with the RxRx19a preset
    np.testing.assert_array_equal(screen.control_role(md), screen.control_role(md, schema=screen.PRESETS["rxrx19a"]))
    screen.validate(md, screen.PRESETS["rxrx19a"], rxrx19a_dir)


def test_a_foreign_screen_speaks_its_own_columns_and_controls():
    md = _cell_painting_metadata()
    role = screen.control_role(md, schema=FOREIGN)
    assert role[md["Metadata_Compound"] == "DMSO"].eq("C-").all()
    assert role[md["Metadata_Compound"] == "staurosporine"].eq("C+").all()  # a control compound is no hit
    assert role[md["Metadata_Compound"] == "cpd7"].eq("treated").all() and (role == "treated").sum() == 6
    assert role[md["Metadata_Compound"] == ""].eq("other").all()
    assert list(screen.plate_key(md, schema=FOREIGN)) == list(md["Metadata_Plate"])  # no experiment column: the plate
    with pytest.raises(ValueError, match="screen.experiment"):
        screen.plate_key(md, "experiment", schema=FOREIGN)
    ids = screen.with_ids(md, FOREIGN)
    assert list(ids.columns[:2]) == ["site_id", "well_id"]
    assert ids["site_id"].iloc[3] == "P1_C01_1" and ids["well_id"].iloc[-1] == "P2_D01"
    screen.validate(ids, FOREIGN, "plate_map.csv")


def test_a_table_of_wells_is_viewed_one_row_per_well_and_a_site_table_still_needs_its_site():
    sites = screen.with_ids(_cell_painting_metadata(), FOREIGN)
    wells = sites.drop(columns=["site_id", "Metadata_Site"])  # what the export's well profiles hold
    view = screen.screen_view(wells, FOREIGN)
    assert (view["site_id"] == view["well_id"]).all() and view["site_id"].is_unique
    assert list(view["role"]) == list(screen.screen_view(sites, FOREIGN)["role"])
    assert view.loc[view["perturbation"] == "cpd7", "dose"].tolist() == [0.1, 0.3, 1.0] * 2
    with pytest.raises(ValueError, match="screen.site='Metadata_Site'"):
        screen.screen_view(_cell_painting_metadata().drop(columns="Metadata_Site"), FOREIGN)


@pytest.mark.parametrize("change,message", [
    (dict(dose="Metadata_Dose"), r"screen.dose='Metadata_Dose': plate_map.csv has no such column \(columns: "),
    (dict(group="cell_line"), r"screen.group='cell_line': plate_map.csv has no such column"),
    (dict(negative="compound == 'DMSO'"), r"screen.negative=\"compound == 'DMSO'\" names column 'compound', which the "
                                          r"metadata lacks"),
    (dict(negative="Metadata_Compound == 'dmso'"), r"screen.negative=\"Metadata_Compound == 'dmso'\" selects no site"),
    (dict(positive="Metadata_Compound = 'DMSO'"), r"screen.positive=.* assigns a column rather than comparing"),
    (dict(positive="Metadata_Compound == 'DMSO"), r"screen.positive=.* is not a pandas query over the metadata"),
    (dict(positive="Metadata_Compound"), r"screen.positive='Metadata_Compound' does not give one True/False per site"),
    (dict(positive="Metadata_Plate == 'P1'"), r"screen.positive and screen.negative both select 2 site\(s\)"),
    (dict(dose="Metadata_CellLine"), r"screen.dose='Metadata_CellLine': column of plate_map.csv holds 'U2OS', "
                                     r"not a number"),
])
def test_a_schema_that_does_not_fit_the_metadata_is_named_in_one_line(change, message):
    with pytest.raises(screen.MetadataError, match=message) as error:
        screen.validate(_cell_painting_metadata(), dataclasses.replace(FOREIGN, **change), "plate_map.csv")
    assert "\n" not in str(error.value)


def test_config_screen_picks_a_preset_and_overrides_fields():
    config = base_config()
    assert screen.from_config(config.screen.to_dict(), "rxrx19a") == screen.PRESETS["rxrx19a"]
    assert screen.from_config(config.screen.to_dict(), "generic") == screen.ScreenSchema()  # the kind's preset
    config.screen.update(negative="Metadata_Compound == 'DMSO'", highlight=("cpd7",), experiment="")
    schema = screen.from_config(config.screen.to_dict(), "rxrx19a")
    assert schema.negative == "Metadata_Compound == 'DMSO'" and schema.highlight == ("cpd7",)
    assert schema.experiment == "" and schema.positive == screen.PRESETS["rxrx19a"].positive  # None keeps the preset
    config.screen.preset = "rxrx19a_uv"
    assert "UV Inactivated" in screen.from_config(config.screen.to_dict(), "generic").positive
    with pytest.raises(screen.SettingError, match="screen.preset='rxrx19b': no such preset; known: rxrx19a, "):
        screen.from_config(dict(preset="rxrx19b"), "rxrx19a")
    with pytest.raises(screen.SettingError, match="screen.controls: not a schema field"):
        screen.from_config(dict(preset="", controls="x"), "rxrx19a")
    with pytest.raises(screen.MetadataError, match="data.kind='tiff': no such screen reader; known: rxrx19a, "):
        screen.from_config(dict(preset=""), "tiff")


def test_every_reader_is_one_registry_entry_that_resolves(monkeypatch, tmp_path):
    for kind, entry in screen.READERS.items():
        module, function = entry.target.split(":")
        read = getattr(__import__(f"gandl.data.{module}", fromlist=[function]), function)
        assert set(entry.args) <= set(inspect.signature(read).parameters), kind
        assert entry.preset in screen.PRESETS, kind
    assert screen.channel_count(screen.Source("rxrx1", "x")) == 6
    assert screen.channel_count(screen.Source("generic", "x.csv", channel_columns=("a", "b", "c"))) == 3
    assert screen.channel_count(screen.Source("ome_zarr", "p.zarr")) is None  # known once the plates are read
    # A new reader is one entry naming its function: read_screen finds it, no dispatch elsewhere.
    monkeypatch.setitem(screen.READERS, "csv_copy", dataclasses.replace(screen.READERS["generic"]))
    table = _cell_painting_metadata().assign(dna="a.png")
    table.to_csv(tmp_path / "screen.csv", index=False)
    read = screen.read_screen(screen.Source("csv_copy", str(tmp_path / "screen.csv"), channel_columns=("dna",)),
                              FOREIGN)
    assert read.num_sites == len(table) and read.metadata["site_id"].iloc[0] == "P1_A01_1"
