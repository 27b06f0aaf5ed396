"""Zero-shot cell typing on a synthetic RxRx1-layout set seen through the RxRx1 -> RxRx19a channel map."""

import pytest

from gandl.analysis import classify, plots, zeroshot
from gandl.data import images as image_io
from gandl.data import rxrx
from gandl.data.synthetic import layouts
from gandl.features import handcrafted


@pytest.fixture(scope="module")
def rxrx1_features(tmp_path_factory):
    root = layouts.write_rxrx1(tmp_path_factory.mktemp("rxrx1_zeroshot"), seed=0, image_size=32,
                               plates_per_cell_line=2, sites_per_well=2)
    screen = rxrx.read_rxrx1(str(root))
    channels = rxrx.channel_map("rxrx1", "rxrx19a")
    feats = handcrafted.features(image_io.read_site_images(screen.paths, channels))
    return feats, screen.metadata


def test_cell_types_are_recognised_across_held_out_plates(rxrx1_features):
    feats, meta = rxrx1_features
    summary, confusion = zeroshot.classify_cell_types(feats, meta)
    assert feats.shape[1] == len(handcrafted.feature_names(5))
    assert list(confusion.index) == ["HEPG2", "HUVEC", "RPE", "U2OS"]
    assert confusion.to_numpy().sum() == len(meta) == summary["n"]
    assert summary["n_groups"] == 8 and summary["n_folds"] == 2
    # Chance is 0.25; each fold trains on one plate per cell type and tests on the other plate.
    assert summary["accuracy"] > 0.7 and summary["balanced_accuracy"] > 0.7
    png = plots.confusion_figure(confusion)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_type_on_a_single_experiment_cannot_be_held_out(rxrx1_features):
    feats, meta = rxrx1_features
    with pytest.raises(classify.CVError, match="single plate/experiment"):
        zeroshot.classify_cell_types(feats, meta, group_by="experiment")
