"""Control classification: soft-margin linear SVMs, plate-grouped cross-validation, and Table 1.

The paper's first question is whether an embedding separates the controls: healthy (C+, Mock) from
infected (C-, Active SARS-CoV-2), and HRCE from VERO cells. Wells on one plate share its batch effects,
so every fold holds out whole plates (or experiments): a classifier that learnt a plate's stain gain would
otherwise look accurate. Optional normalisation (per-plate centre-scale on controls, or typical-variation
normalisation) removes plate effects before the SVM; it is the first thing a real screen needs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from sklearn import metrics
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.covariance import ledoit_wolf
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.svm import LinearSVC

from gandl.analysis.io import group_means, plate_key
from gandl.data.rxrx import control_role

NORMALIZATIONS = ("none", "center_scale", "tvn")


class CVError(ValueError):
    """A task that cannot be cross-validated by groups (too few plates, a class on one plate only)."""


def control_mask(metadata: pd.DataFrame, uv_is_positive: bool = False) -> np.ndarray:
    """True for C+ and C- sites: the rows normalisation statistics and the SVMs are fitted on."""
    return control_role(metadata, uv_is_positive).isin(["C+", "C-"]).to_numpy()


def normalize(features: np.ndarray, metadata: pd.DataFrame, method: str = "none",
              reference: np.ndarray | None = None, uv_is_positive: bool = False) -> np.ndarray:
    """Features with plate effects removed, statistics fitted on `reference` rows (default: C+/C- controls).

    - 'none': unchanged.
    - 'center_scale': per plate, subtract the reference rows' mean and divide by their std (per feature).
    - 'tvn': typical-variation normalisation: per-plate centring on the reference rows, then whitening
      with the Ledoit-Wolf-shrunk covariance of the reference rows' variation *within* each plate and
      control condition. Whitening the pooled controls would also flatten the C+/C- difference itself;
      within-condition variation is the nuisance (sites, wells, stain noise) the paper's TVN targets.
    Per-plate statistics also remove whatever differs between plates in biology: on RxRx19a every plate
    holds one cell line, so HRCE vs VERO is only meaningful with 'none'.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")
    x = np.asarray(features, np.float32)
    if method == "none":
        return x
    ref = control_mask(metadata, uv_is_positive) if reference is None else np.asarray(reference, bool)
    codes, plates = pd.factorize(pd.Series(plate_key(metadata)))
    mean, count = group_means(x[ref], codes[ref], len(plates))
    missing = [plates[i] for i in np.flatnonzero(count < 2)]
    if missing:
        raise ValueError(f"cannot normalise per plate: plates {missing[:5]} have fewer than 2 reference "
                         "(control) sites")
    centred = x - mean[codes].astype(np.float32)
    if method == "center_scale":
        var, _ = group_means(centred[ref] ** 2, codes[ref], len(plates))
        std = np.sqrt(var * count[:, None] / (count[:, None] - 1))
        return centred / np.maximum(std, 1e-12)[codes].astype(np.float32)
    role = control_role(metadata, uv_is_positive).to_numpy()[ref]
    cond_codes, conds = pd.factorize(pd.Series(plate_key(metadata)[ref]) + "|" + role)
    cond_mean, _ = group_means(x[ref], cond_codes, len(conds))
    within = x[ref] - cond_mean[cond_codes].astype(np.float32)
    cov = ledoit_wolf(within, assume_centered=True)[0]
    evals, evecs = np.linalg.eigh(cov)
    return (centred @ (evecs / np.sqrt(np.maximum(evals, 1e-12 * evals.max())))).astype(np.float32)


class IsotropicScaler(TransformerMixin, BaseEstimator):
    """Centre, then divide every feature by one common scale (the RMS distance to the mean).

    Unlike per-feature standardisation it keeps the feature space's Euclidean geometry, so the SVM normal
    is a direction of the embedding itself (the on-perturbation axis), while one C still suits any
    embedding's overall scale.
    """

    def fit(self, x, y=None):
        x = np.asarray(x, np.float64)
        self.mean_ = x.mean(0)
        self.scale_ = float(np.sqrt(((x - self.mean_) ** 2).sum(1).mean())) or 1.0
        return self

    def transform(self, x):
        return (np.asarray(x, np.float64) - self.mean_) / self.scale_


def make_svm(c: float = 1.0, seed: int = 0) -> Pipeline:
    """The soft-margin linear SVM: isotropic scaling, squared-hinge loss, balanced class weights.

    Balanced class weights keep a task with more Active than Mock wells from rewarding the majority class.
    """
    return make_pipeline(IsotropicScaler(),
                         LinearSVC(C=c, class_weight="balanced", max_iter=20000, random_state=seed))


def hyperplane(model: Pipeline) -> tuple[np.ndarray, float]:
    """A fitted binary SVM's (w, b) in input-feature space: decision(x) = x @ w + b."""
    scaler, svm = model[0], model[-1]
    w = svm.coef_[0] / scaler.scale_
    return w, float(svm.intercept_[0] - np.dot(w, scaler.mean_))


def grouped_folds(labels: np.ndarray, groups: np.ndarray, n_splits: int = 5,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices holding out whole groups, every test class also present in training.

    The number of folds is capped by the number of groups and by the fewest groups any class occurs in,
    so a class seen on two plates gets two folds (one plate each) rather than a fold that never trained
    on it. Raises CVError when a class is confined to a single group: it cannot be held out honestly.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    frame = pd.DataFrame({"y": labels, "g": groups}).drop_duplicates()
    per_class = frame.groupby("y")["g"].nunique()
    if len(per_class) < 2:
        raise CVError(f"only one class present ({list(per_class.index)})")
    if per_class.min() < 2:
        lonely = list(per_class.index[per_class < 2])
        raise CVError(f"classes {lonely} occur in a single plate/experiment: no group-held-out fold can "
                      "test them")
    k = int(min(n_splits, per_class.min(), frame["g"].nunique()))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(labels)), labels, groups))
    for train, test in folds:
        if np.intersect1d(groups[train], groups[test]).size:
            raise AssertionError("a group landed on both sides of a fold")  # a splitter bug, never data
        unseen = np.setdiff1d(labels[test], labels[train])
        if unseen.size:
            raise CVError(f"classes {list(unseen)} are in a test fold but not in its training plates; "
                          "add plates or use group_by='plate'")
    return folds


@dataclasses.dataclass(frozen=True)
class CVResult:
    """Out-of-fold predictions of a grouped cross-validation."""

    labels: np.ndarray  # true class per row
    predicted: np.ndarray  # out-of-fold predicted class
    scores: np.ndarray  # out-of-fold decision values ([N] binary, [N, K] multi-class)
    classes: np.ndarray  # class order of `scores` columns (binary: the positive class is classes[1])
    fold: np.ndarray  # test fold of each row
    num_groups: int


def cross_validate(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, c: float = 1.0,
                   n_splits: int = 5, seed: int = 0) -> CVResult:
    """Out-of-fold linear-SVM predictions with whole groups (plates / experiments) held out."""
    labels = np.asarray(labels)
    folds = grouped_folds(labels, groups, n_splits, seed)
    classes = np.unique(labels)
    scores = np.zeros((len(labels),) if len(classes) == 2 else (len(labels), len(classes)))
    predicted = np.empty(len(labels), dtype=labels.dtype)
    fold_of = np.full(len(labels), -1)
    for i, (train, test) in enumerate(folds):
        model = make_svm(c, seed).fit(features[train], labels[train])
        decision = model.decision_function(features[test])
        if decision.ndim == 2:  # put columns in the global class order (a fold may see them all anyway)
            decision = decision[:, np.searchsorted(model.classes_, classes)]
        scores[test] = decision
        predicted[test] = model.predict(features[test])
        fold_of[test] = i
    return CVResult(labels, predicted, scores, classes, fold_of, len(np.unique(groups)))


def summarize(result: CVResult) -> dict[str, float]:
    """Accuracy, balanced accuracy and (binary tasks) ROC-AUC of out-of-fold predictions."""
    auc = (metrics.roc_auc_score(result.labels == result.classes[1], result.scores)
           if len(result.classes) == 2 else float("nan"))
    return dict(accuracy=float(metrics.accuracy_score(result.labels, result.predicted)),
                balanced_accuracy=float(metrics.balanced_accuracy_score(result.labels, result.predicted)),
                roc_auc=float(auc), n=int(len(result.labels)), n_groups=result.num_groups,
                n_folds=int(result.fold.max() + 1))


def control_tasks(metadata: pd.DataFrame, uv_is_positive: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Table 1's tasks as (name, row mask, labels of those rows), all on control sites.

    C+ vs C- with the cell lines merged, the cell lines against each other (on their controls), and C+
    vs C- within each cell line.
    """
    role = control_role(metadata, uv_is_positive).to_numpy()
    ctrl = np.isin(role, ["C+", "C-"])
    lines = sorted(metadata["cell_type"].astype(str).unique())
    cell = metadata["cell_type"].astype(str).to_numpy()
    tasks = [("C+ vs C- (all cell lines)", ctrl, role[ctrl]),
             (" vs ".join(lines) if len(lines) > 1 else "cell line", ctrl, cell[ctrl])]
    for line in lines:
        mask = ctrl & (cell == line)
        tasks.append((f"C+ vs C- ({line})", mask, role[mask]))
    return tasks


def classify_controls(features: np.ndarray, metadata: pd.DataFrame, *, c: float = 1.0, n_splits: int = 5,
                      group_by: str = "plate", uv_is_positive: bool = False, seed: int = 0) -> pd.DataFrame:
    """Table 1: one row per task with accuracy, balanced accuracy, ROC-AUC, sizes, and a status.

    A task that cannot be run (a cell line without controls, a class on a single plate) is a row with
    status 'skipped: <reason>' and NaN metrics, not an exception: the other tasks still answer.
    """
    groups = plate_key(metadata, group_by)
    rows = []
    for name, mask, labels in control_tasks(metadata, uv_is_positive):
        row = dict(task=name, n=int(mask.sum()), n_groups=int(len(np.unique(groups[mask]))), n_folds=0,
                   accuracy=np.nan, balanced_accuracy=np.nan, roc_auc=np.nan, status="ok")
        try:
            row.update(summarize(cross_validate(features[mask], labels, groups[mask], c=c,
                                                n_splits=n_splits, seed=seed)))
        except CVError as e:
            row["status"] = f"skipped: {e}"
        rows.append(row)
    columns = ["task", "accuracy", "balanced_accuracy", "roc_auc", "n", "n_groups", "n_folds", "status"]
    return pd.DataFrame(rows)[columns]
