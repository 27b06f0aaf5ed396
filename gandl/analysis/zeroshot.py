"""Zero-shot cell typing: does an embedding learnt on RxRx19a tell apart cell lines it never saw?

RxRx1 images (six stains) are mapped onto RxRx19a's five (`gandl.data.rxrx.channel_map("rxrx1",
"rxrx19a")`, i.e. channels 1, 2, 3, 4, 6) before features are computed; here a linear SVM classifies the
four cell types (HEPG2, HUVEC, RPE, U2OS) from those features, cross-validated with whole plates (or
experiments) held out, and the confusion matrix is Figure 6.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics

from gandl.analysis.classify import cross_validate, summarize
from gandl.analysis.io import plate_key


def classify_cell_types(features: np.ndarray, metadata: pd.DataFrame, *, label: str = "cell_type",
                        c: float = 1.0, n_splits: int = 5, group_by: str = "plate",
                        seed: int = 0) -> tuple[dict[str, float], pd.DataFrame]:
    """(accuracy summary, confusion matrix of counts: rows true class, columns predicted).

    Every cell type needs at least two plates (experiments with group_by='experiment'): a held-out plate's
    type must also be in training, or the fold tests a class the SVM never saw (a CVError says so).
    """
    labels = metadata[label].astype(str).to_numpy()
    result = cross_validate(features, labels, plate_key(metadata, group_by), c=c, n_splits=n_splits, seed=seed)
    summary = summarize(result)
    summary.pop("roc_auc")
    confusion = metrics.confusion_matrix(result.labels, result.predicted, labels=result.classes)
    frame = pd.DataFrame(confusion, index=pd.Index(result.classes, name="true"),
                         columns=pd.Index(result.classes, name="predicted"))
    return summary, frame
