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


def _table(tmp_path, text: bytes, name: str = "screen.csv") -> str:
    (tmp_path / "a.png").write_bytes(b"")
    path = tmp_path / name
    path.write_bytes(text)
    return str(path)


def test_duplicated_header_names_are_refused_naming_the_column(tmp_path):
    """pandas would rename the second 'dose' to 'dose.1' and carry on; the reader reads the raw header."""
    csv = _table(tmp_path, b"site_id,dna,dose,plate,dose\ns1,a.png,0.1,P1,0.3\n")
    with pytest.raises(screen_lib.MetadataError, match=r"column 'dose' appears 2 times in the header \(columns 3, 5\)"):
        generic.read_generic(csv, ["dna"])


@pytest.mark.parametrize("column", ["_index", "n_sites"])
def test_names_anndata_or_the_well_profiles_use_are_refused_at_read_time(tmp_path, column):
    csv = _table(tmp_path, f"site_id,dna,{column}\ns1,a.png,3\n".encode())
    with pytest.raises(screen_lib.MetadataError, match=f"metadata column '{column}' has a name GAN-DL or AnnData"):
        generic.read_generic(csv, ["dna"])


def test_a_non_utf8_table_names_the_byte_offset_and_line(tmp_path):
    rows = b"".join(b"s%d,a.png,P1,compound %d\n" % (k, k) for k in range(6))
    data = b"site_id,dna,plate,compound\n" + rows + b"s6,a.png,P1,caf\xe9\n"  # Latin-1 e-acute on line 8
    csv, offset = _table(tmp_path, data), data.index(b"\xe9")
    with pytest.raises(screen_lib.MetadataError, match=rf"not UTF-8 text: byte 0xe9 at offset {offset} \(line 8\)"):
        generic.read_generic(csv, ["dna"])
    bom = _table(tmp_path, b"\xef\xbb\xbfsite_id,dna\ns1,a.png\n", "bom.csv")  # Excel's UTF-8 byte-order mark
    assert list(generic.read_generic(bom, ["dna"]).metadata.columns) == ["site_id"]


def test_numbers_are_inferred_only_where_they_read_back_the_same(tmp_path):
    csv = _table(tmp_path, b"site_id,dna,plate,site,dose,count,note\n"
                           b"s1,a.png,007,1,0.1,3,\ns2,a.png,012,2,,-4,x\ns3,a.png,100,3,1.0,0,y z\n")
    md = generic.read_generic(csv, ["dna"]).metadata
    assert md["plate"].tolist() == ["007", "012", "100"]  # zero-padded plate names stay names
    assert md["site"].dtype == np.int64 and md["count"].tolist() == [3, -4, 0]
    assert md["dose"].dtype == np.float64 and md["dose"].iloc[0] == 0.1 and np.isnan(md["dose"].iloc[1])
    assert md["note"].tolist() == ["", "x", "y z"]


def test_ids_are_derived_from_the_schema_when_the_table_has_none(tmp_path):
    csv = _table(tmp_path, b"Metadata_Plate,Metadata_Well,Metadata_Site,dna\nP1,A01,1,a.png\nP1,A01,2,a.png\n"
                           b"P2,A01,1,a.png\n")
    schema = screen_lib.ScreenSchema(plate="Metadata_Plate", well="Metadata_Well", site="Metadata_Site")
    md = generic.read_generic(csv, ["dna"], schema=schema).metadata
    assert md["site_id"].tolist() == ["P1_A01_1", "P1_A01_2", "P2_A01_1"]
    assert md["well_id"].tolist() == ["P1_A01", "P1_A01", "P2_A01"] and list(md.columns[:2]) == ["site_id", "well_id"]
    with pytest.raises(screen_lib.MetadataError, match=r"lacks \['plate', 'well', 'site'\].*set screen.plate"):
        generic.read_generic(csv, ["dna"])  # the generic preset's plate/well/site are not this table's
    twice = _table(tmp_path, b"Metadata_Plate,Metadata_Well,Metadata_Site,dna\nP1,A01,1,a.png\nP1,A01,1,a.png\n",
                   "twice.csv")
    with pytest.raises(screen_lib.MetadataError, match=r"duplicate site_id values: 'P1_A01_1' \(rows 2, 3\).*"
                                                       r"site_id derived from the screen.plate / well / site"):
        generic.read_generic(twice, ["dna"], schema=schema)
