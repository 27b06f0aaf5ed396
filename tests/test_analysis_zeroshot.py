"""Zero-shot cell typing on a synthetic RxRx1-layout set seen through the RxRx1 -> RxRx19a channel map."""

import numpy as np
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


def test_few_labelled_wells_per_cell_type_are_scored_on_the_same_held_out_plates(rxrx1_features):
    feats, meta = rxrx1_features
    full, _ = zeroshot.classify_cell_types(feats, meta)
    few = zeroshot.classify_cell_types_few_labels(feats, meta, (1, 1000), draws=4).set_index("k")
    assert (few["status"] == "ok").all() and (few["n"] == len(meta)).all() and few["roc_auc"].isna().all()
    # k above what the training plates hold: every training well, i.e. the full-label number itself.
    assert few.loc[1000, "accuracy"] == pytest.approx(full["accuracy"]) and few.loc[1000, "accuracy_sd"] == 0
    assert few.loc[1, "min_wells"] == 1 and few.loc[1, "accuracy_sd"] > 0
    assert 0.25 < few.loc[1, "accuracy"] < full["accuracy"]
    # Labels scrambled within each plate: nothing to learn, so chance (4 cell types) at any k.
    rng = np.random.default_rng(0)
    scrambled = meta.copy()
    scrambled["cell_type"] = scrambled.groupby("plate")["cell_type"].transform(lambda s: rng.permutation(s.to_numpy()))
    null = zeroshot.classify_cell_types_few_labels(feats, scrambled, (4,), draws=4, group_by="plate")
    assert abs(null.loc[0, "accuracy"] - 0.25) < 0.12


def test_the_zeroshot_task_adds_few_label_rows_and_skips_what_cannot_be_held_out(rxrx1_features):
    from gandl.analysis import tasks

    feats, meta = rxrx1_features
    config = tasks.AnalysisConfig(few_labels=(2, 8), few_label_draws=2)
    result = tasks.zeroshot_task(tasks.Inputs(feats, meta, config, "f", {}))
    few = result.tables["zeroshot_few_labels"][0]
    assert list(few["k"]) == [2, 8] and (few["status"] == "ok").all()
    assert result.summary["zero-shot cell type: accuracy @ k=8"] == few.loc[1, "accuracy"]
    first = (meta["plate"].astype(str) == str(meta["plate"].iloc[0])).to_numpy()  # one plate per cell type
    table = zeroshot.classify_cell_types_few_labels(feats[first], meta[first].reset_index(drop=True), (2,))
    assert table.loc[0, "status"].startswith("skipped: ") and "single plate/experiment" in table.loc[0, "status"]
    assert np.isnan(table.loc[0, "accuracy"])
