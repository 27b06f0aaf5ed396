"""Zero-shot cell typing: does an embedding learnt on RxRx19a tell apart cell lines it never saw?

RxRx1 images (six stains) are mapped onto RxRx19a's five (`gandl.data.rxrx.channel_map("rxrx1",
"rxrx19a")`, i.e. channels 1, 2, 3, 4, 6) before features are computed; here a linear SVM classifies the
four cell types (HEPG2, HUVEC, RPE, U2OS) from those features, cross-validated with whole experiments
(or plates, when a cell type has a single experiment) held out, and the confusion matrix is Figure 6.
`classify_cell_types_few_labels` asks the same with only k labelled wells per cell type, as Table 1 does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn import metrics

from gandl.analysis import classify
from gandl.analysis.classify import CVError, cross_validate, summarize
from gandl.analysis.io import plate_key
from gandl.data.vocabulary import RXRX1_LABEL

ZEROSHOT_TASK = "zero-shot cell type"  # its name in the probe table and the few-label tables


def zeroshot_group(metadata: pd.DataFrame, label: str = RXRX1_LABEL) -> str:
    """'experiment' when every class spans several experiments, else 'plate'.

    In RxRx1 a cell type *is* its experiments: holding out plates lets experiment-level batch effects cross
    the folds, so whole experiments are held out whenever the metadata allows it.
    """
    per_class = metadata.groupby(metadata[label].astype(str))["experiment"].nunique()
    return "experiment" if len(per_class) and per_class.min() >= 2 else "plate"


def classify_cell_types(features: np.ndarray, metadata: pd.DataFrame, *, label: str = RXRX1_LABEL,
                        c: float = 1.0, n_splits: int = 5, group_by: str = "auto",
                        seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """(accuracy summary, confusion matrix of counts: rows true class, columns predicted).

    group_by='auto' holds out experiments when every class spans several (`zeroshot_group`), else plates;
    the summary's `group_by` and `held_out` say what was held out. Every cell type needs at least two
    groups: a held-out group's type must also be in training (a CVError says so). The scaling and the
    SVM are fitted on each fold's training groups only.
    """
    group_by = zeroshot_group(metadata, label) if group_by == "auto" else group_by
    labels = metadata[label].astype(str).to_numpy()
    result = cross_validate(features, labels, plate_key(metadata, group_by), c=c, n_splits=n_splits, seed=seed)
    summary = summarize(result)
    summary.pop("roc_auc")
    summary.update(group_by=group_by, held_out="; ".join(",".join(g) for g in result.held_out))
    confusion = metrics.confusion_matrix(result.labels, result.predicted, labels=result.classes)
    frame = pd.DataFrame(confusion, index=pd.Index(result.classes, name="true"),
                         columns=pd.Index(result.classes, name="predicted"))
    return summary, frame


def classify_cell_types_few_labels(features: np.ndarray, metadata: pd.DataFrame, ks: Sequence[int], *,
                                   label: str = RXRX1_LABEL, draws: int = 5, c: float = 1.0, n_splits: int = 5,
                                   group_by: str = "auto", seed: int = 0) -> pd.DataFrame:
    """Zero-shot cell typing with k labelled wells per cell type: one row per k (Table 1's few-label columns).

    The folds are `classify_cell_types`' (whole experiments or plates held out); in each, the SVM is fitted on
    k whole wells per cell type drawn from its training groups, `draws` seeded times, and every held-out site
    is scored. Multi-class, so ROC-AUC is left empty. A k that cannot be run is a skipped row.
    """
    group_by = zeroshot_group(metadata, label) if group_by == "auto" else group_by
    labels = metadata[label].astype(str).to_numpy()
    groups = plate_key(metadata, group_by).astype(str)
    wells = metadata["well_id"].astype(str).to_numpy()
    rows = []
    for k in ks:
        row = dict(task=ZEROSHOT_TASK, k=int(k), accuracy=np.nan, accuracy_sd=np.nan, roc_auc=np.nan,
                   roc_auc_sd=np.nan, draws=0, min_wells=0, n=len(labels), status="ok")
        try:
            folds = classify.grouped_folds(labels, groups, n_splits, seed)
            held_out = [tuple(sorted(set(groups[test]))) for _, test in folds]
            row.update(classify.few_label_draws(features, labels, groups, wells, int(k), draws, held_out, None,
                                                c=c, seed=seed))
        except CVError as e:
            row["status"] = f"skipped: {e}"
        rows.append(row)
    return pd.DataFrame(rows, columns=classify.FEW_LABEL_COLUMNS)
