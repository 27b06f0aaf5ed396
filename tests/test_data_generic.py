"""The generic reader (data.kind=generic): a CSV of image paths and free metadata, ids derived from the schema."""

import os

import numpy as np
import pandas as pd
import pytest

from gandl.data import generic, rxrx
from gandl.data import screen as screen_lib


def test_a_csv_screen_reads_paths_and_typed_metadata(rxrx19a_dir, tmp_path):
    screen = rxrx.read_rxrx19a(rxrx19a_dir)
    rel = np.vectorize(lambda p: os.path.relpath(p, tmp_path))(screen.paths[:10, [0, 2]])
    table = pd.DataFrame({"id": screen.metadata["site_id"][:10], "dna": rel[:, 0], "actin": rel[:, 1],
                          "dose": ["0.5"] * 9 + [""], "replicate": [str(i % 2) for i in range(10)],
                          "group": ["a"] * 10})
    table.to_csv(tmp_path / "screen.csv", index=False)
    own = generic.read_generic(str(tmp_path / "screen.csv"), ["dna", "actin"], stains=["Hoechst", "Phalloidin"],
                                id_column="id")
    assert own.stains == ("Hoechst", "Phalloidin")
    assert list(own.metadata.columns) == ["site_id", "dose", "replicate", "group"]
    assert own.metadata["replicate"].dtype == np.int64
    assert own.metadata["dose"].dtype == np.float64 and np.isnan(own.metadata["dose"][9])
    np.testing.assert_array_equal(np.vectorize(os.path.normpath)(own.paths), screen.paths[:10, [0, 2]])

    table.loc[4, "actin"] = ""
    table.to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(screen_lib.MetadataError, match="row 6 has an empty path in column 'actin'"):
        generic.read_generic(str(tmp_path / "broken.csv"), ["dna", "actin"], id_column="id")
    with pytest.raises(screen_lib.MetadataError, match="2 channel columns but 3 stain names"):
        generic.read_generic(str(tmp_path / "broken.csv"), ["dna", "actin"], stains=["a", "b", "c"], id_column="id")
