"""Plate geometry from well names, and the layouts whose controls a position effect could pass for."""

import numpy as np
import pandas as pd

from gandl.data import wells
from gandl.data.synthetic import feature_screens
from gandl.defaults import Config


def test_well_names_become_rows_columns_and_edge_distances():
    rows, cols = wells.well_positions(pd.Series(["A01", "b03", "P24", "AF48", " C 7", "b03", "A01"]))
    assert rows.tolist() == [0, 1, 15, 31, 2, 1, 0] and cols.tolist() == [0, 2, 23, 47, 6, 2, 0]
    assert wells.plate_shape(rows[:3], cols[:3]) == (16, 24) and wells.plate_shape(rows, cols) == (32, 48)
    assert wells.edge_distance(np.array([0, 7, 3]), np.array([5, 11, 3]), (16, 24)).tolist() == [0, 7, 3]
    assert "column 0" in wells.well_positions(pd.Series(["B02", "W000"]))
    assert "is not a row letter" in wells.well_positions(pd.Series(["B02", "well-7"]))


def test_controls_only_on_the_edge_are_warned_about_and_random_ones_are_not():
    for placement, expected in (("edge", 8), ("random", 0)):
        meta = feature_screens.layout(plates_per_line=4, compounds=8, control_placement=placement, seed=1)
        role = np.where(meta["treatment"] != "", "treated",
                        np.where(meta["disease_condition"] == "Mock", "C+", "C-"))
        plate = (meta["experiment"] + "_" + meta["plate"].astype(str)).to_numpy()
        warnings = wells.layout_warnings(meta["well"], plate, role)
        assert len(warnings) == expected, warnings
    assert wells.layout_warnings(pd.Series(["W000"] * 3), np.zeros(3), np.array(["C+", "C-", "treated"])) == []


def test_the_config_check_warns_about_edge_placed_controls(tmp_path, caplog):
    from gandl.data import screen
    from gandl.data.synthetic import layouts
    from gandl.defaults import base_config

    warned = {}
    for placement in ("edge", "random"):
        config = base_config()
        config.data.root = str(layouts.write_rxrx19a(tmp_path / placement, image_size=16, plates_per_cell_line=1,
                                                     sites_per_well=1, num_compounds=3, control_layout=placement))
        caplog.clear()
        screen.read_configured(Config.from_mapping(config))
        messages = [r.getMessage() for r in caplog.records]
        warned[placement] = [m for m in messages if "confounded with plate position" in m]
    assert len(warned["edge"]) == 2 and "two outer rings" in warned["edge"][0]  # one per plate (HRCE, VERO)
    assert warned["random"] == []
