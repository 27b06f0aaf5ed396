"""Control classification: soft-margin linear SVMs, plate-grouped cross-validation, and Table 1.

The paper's first question is whether an embedding separates the controls: healthy (C+, Mock) from
infected (C-, Active SARS-CoV-2), and HRCE from VERO cells. Wells on one plate share its batch effects,
so every fold holds out whole plates (or experiments): a classifier that learnt a plate's stain gain would
otherwise look accurate. Optional normalisation (per-plate centre-scale on controls, or typical-variation
normalisation) removes plate effects before the SVM; it is the first thing a real screen needs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.covariance import ledoit_wolf
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from gandl.analysis.io import control_role, group_means, plate_key, row_products
from gandl.data.folds import CVError, control_folds, grouped_folds, require_trained  # noqa: F401 (also the analysis' names)
from gandl.defaults import NORMALIZATIONS


def control_mask(metadata: pd.DataFrame) -> np.ndarray:
    """True for C+ and C- sites: the rows normalisation statistics and the SVMs are fitted on."""
    return control_role(metadata).isin(["C+", "C-"]).to_numpy()


SCALE_FLOOR = 0.1  # center_scale's per-plate sd is at least this share of the feature's sd over every site


def plate_normalize(features: np.ndarray, metadata: pd.DataFrame, method: str = "none",
                    reference: np.ndarray | None = None) -> np.ndarray:
    """The per-plate step of `method`, fitted on each plate's own `reference` rows (default: its controls).

    'center_scale' subtracts each plate's reference mean and divides by its std, floored at SCALE_FLOOR of
    the feature's sd over the sites (every k-th of a screen beyond 20,000): a feature (nearly) constant in a
    plate's controls (a count that is 0 in every control site) must not turn a treated site's ordinary value
    into a millionfold one. 'tvn' only centres ('none' returns the features). C+ and C- sites are pooled: the
    statistics never see a site's label, so a held-out plate may be normalised with its own controls without
    its labels reaching the classifier.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")
    x = np.asarray(features, np.float32)
    if method == "none":
        return x
    ref = control_mask(metadata) if reference is None else np.asarray(reference, bool)
    codes, plates = pd.factorize(pd.Series(plate_key(metadata)))
    mean, count = group_means(x[ref], codes[ref], len(plates))
    missing = [plates[i] for i in np.flatnonzero(count < 2)]
    if missing:
        raise ValueError(f"cannot normalise per plate: plates {missing[:5]} have fewer than 2 reference "
                         "(control) sites")
    centred = x - mean[codes].astype(np.float32)
    if method == "tvn":
        return centred
    var, _ = group_means(centred[ref] ** 2, codes[ref], len(plates))
    std = np.sqrt(var * count[:, None] / (count[:, None] - 1))
    sample = x[:: max(1, len(x) // 20_000)]  # every k-th site: a floor needs no N x D float64 copy
    floor = np.maximum(SCALE_FLOOR * sample.std(axis=0, dtype=np.float64), 1e-12)
    return centred / np.maximum(std, floor)[codes].astype(np.float32)


def whitening_conditions(metadata: pd.DataFrame) -> np.ndarray:
    """Per row, the (plate, control role) group whose within-group variation TVN whitens away."""
    return pd.Series(plate_key(metadata)).str.cat(control_role(metadata).to_numpy(), sep="|").to_numpy()


class TypicalVariationWhitener(TransformerMixin, BaseEstimator):
    """Whitening by the Ledoit-Wolf-shrunk covariance of the variation within each condition group.

    `fit(x, conditions=...)` takes the (plate, C+/C-) group of every fitted row: whitening the pooled controls
    would also flatten the C+/C- difference itself, whereas within-condition variation (sites, wells, stain
    noise) is the nuisance the paper's TVN targets. Inside a cross-validation it is fitted on the training
    rows only, so no held-out label shapes the transform its score is computed on.
    """

    def fit(self, x, y=None, conditions=None):
        if conditions is None:
            raise ValueError("TypicalVariationWhitener.fit needs the condition group of every row (conditions=)")
        x = np.asarray(x, np.float64)
        codes, groups = pd.factorize(pd.Series(np.asarray(conditions)))
        mean, _ = group_means(x, codes, len(groups))
        cov = ledoit_wolf(x - mean[codes], assume_centered=True)[0]
        evals, evecs = np.linalg.eigh(cov)
        self.components_ = evecs / np.sqrt(np.maximum(evals, 1e-12 * evals.max()))
        return self

    def transform(self, x):
        return np.asarray(x, np.float64) @ self.components_


def normalize(features: np.ndarray, metadata: pd.DataFrame, method: str = "none",
              reference: np.ndarray | None = None, centred: bool = False) -> np.ndarray:
    """Features with plate effects removed, every statistic fitted on all `reference` rows (default: controls).

    - 'none': unchanged.
    - 'center_scale': per plate, subtract the reference rows' mean and divide by their std (per feature).
    - 'tvn': typical-variation normalisation: per-plate centring on the reference rows, then whitening
      (`TypicalVariationWhitener`) fitted on the reference rows of every plate.

    `centred`: the features already went through `plate_normalize` (only the whitening is left to do).
    This is the descriptive path (E²/C² figures, the mAP profiles): nothing is held out there. Table 1 and
    the cross-fitted efficacy scores use `plate_normalize` and fit the whitening inside each fold instead.
    Per-plate statistics also remove whatever differs between plates in biology: on RxRx19a every plate
    holds one cell line, so HRCE vs VERO is only meaningful with 'none'.
    """
    x = np.asarray(features, np.float32) if centred else plate_normalize(features, metadata, method, reference)
    if method != "tvn":
        return x
    ref = control_mask(metadata) if reference is None else np.asarray(reference, bool)
    conditions = whitening_conditions(metadata)
    return TypicalVariationWhitener().fit(x[ref], conditions=conditions[ref]).transform(x).astype(np.float32)


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


def make_svm(c: float = 1.0, seed: int = 0, whiten: bool = False) -> Pipeline:
    """The soft-margin linear SVM: isotropic scaling, squared-hinge loss, balanced class weights.

    Balanced class weights keep a task with more Active than Mock wells from rewarding the majority class.
    With `whiten`, a `TypicalVariationWhitener` comes first (fit it with `whiten__conditions=`), so every
    fitted step sits inside the one estimator a fold fits on its training rows.
    """
    steps = [("whiten", TypicalVariationWhitener())] if whiten else []
    return Pipeline(steps + [("scale", IsotropicScaler()),
                             ("svm", LinearSVC(C=c, class_weight="balanced", max_iter=20000, random_state=seed))])


def fit_svms(features: np.ndarray, labels: np.ndarray, trains: Sequence[np.ndarray], *, c: float = 1.0,
             seed: int = 0, conditions: np.ndarray | None = None) -> list[Pipeline]:
    """One `make_svm` fitted on each set of training rows, side by side where that gives the same models.

    With more rows than features liblinear solves the primal, which draws no random numbers and releases
    the GIL, so the folds' SVMs fit at once on the machine's cores (Table 1 at RxRx19a scale: 1.6x faster
    on two). Its dual solver (fewer rows than features) draws from one process-wide generator, so those fits
    run one after another and stay reproducible.
    """
    def fit(train: np.ndarray) -> Pipeline:
        fit_params = {} if conditions is None else {"whiten__conditions": np.asarray(conditions)[train]}
        return make_svm(c, seed, whiten=conditions is not None).fit(features[train], labels[train], **fit_params)

    primal = all(len(train) > features.shape[1] for train in trains)
    workers = min(len(trains), os.cpu_count() or 1) if primal else 1
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        return list(pool.map(fit, trains))


def hyperplane(model: Pipeline) -> tuple[np.ndarray, float]:
    """A fitted binary SVM's (w, b) in input-feature space: decision(x) = x @ w + b."""
    scaler, svm = model["scale"], model["svm"]
    w = svm.coef_[0] / scaler.scale_
    b = float(svm.intercept_[0] - np.dot(w, scaler.mean_))
    if "whiten" in model.named_steps:
        w = model["whiten"].components_ @ w
    return w, b


def folds_of_groups(groups: np.ndarray, held_out: Sequence[Sequence[str]]
                    ) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(train, test, k) of a fixed fold assignment: fold k tests the rows whose group is in held_out[k].

    Folds without a row of these groups are dropped (a per-cell-line task sees only that line's plates).
    """
    groups = np.asarray(groups).astype(str)
    folds = []
    for k, names in enumerate(held_out):
        test = np.isin(groups, list(names))
        if test.any():
            folds.append((np.flatnonzero(~test), np.flatnonzero(test), k))
    return folds


def crossfit_decision(features: np.ndarray, labels: np.ndarray, fitted: np.ndarray, groups: np.ndarray,
                      held_out: Sequence[Sequence[str]], *, c: float = 1.0, seed: int = 0,
                      conditions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Linear-SVM decision values of every row under per-fold models, and the model that never saw its group.

    Model k < K (K = len(held_out)) is fitted on the `fitted` rows (e.g. the C+/C- controls, `labels` their
    classes, the positive class last) outside the groups `held_out[k]`; model K on every `fitted` row. Returns
    (decisions [N, K + 1]: every model's value for every row, fold [N]): a row's cross-fitted value is
    `decisions[i, fold[i]]`, with fold[i] = k for a row of held_out[k], K for a row whose group no fold
    holds out (a plate without controls: none of its rows trained model K either). With `conditions`
    the SVM is preceded by TVN whitening fitted on the same training rows.
    """
    groups = np.asarray(groups).astype(str)
    fitted = np.asarray(fitted, bool)
    fold = np.full(len(groups), len(held_out))
    for k, names in enumerate(held_out):
        fold[np.isin(groups, list(names))] = k
    trains = []
    for k in range(len(held_out) + 1):
        train = np.flatnonzero(fitted & (fold != k) if k < len(held_out) else fitted)
        if len(np.unique(labels[train])) < 2:
            raise CVError(f"model {k} has only {sorted(set(labels[train]))} among its training rows")
        trains.append(train)
    planes = [hyperplane(m) for m in fit_svms(features, labels, trains, c=c, seed=seed, conditions=conditions)]
    # Every model's decision values in one pass over the rows, from its hyperplane in feature space (the
    # pipeline's own decision_function makes two float64 copies of the whole matrix per model).
    weights, offsets = np.stack([w for w, _ in planes], axis=1), np.array([b for _, b in planes])
    return row_products(features, weights) + offsets, fold


@dataclasses.dataclass(frozen=True)
class CVResult:
    """Out-of-fold predictions of a grouped cross-validation."""

    labels: np.ndarray  # true class per row
    predicted: np.ndarray  # out-of-fold predicted class
    scores: np.ndarray  # out-of-fold decision values ([N] binary, [N, K] multi-class)
    classes: np.ndarray  # class order of `scores` columns (binary: the positive class is classes[1])
    fold: np.ndarray  # test fold of each row
    num_groups: int
    held_out: tuple[tuple[str, ...], ...] = ()  # the groups each fold held out


def cross_validate(features: np.ndarray | Sequence[np.ndarray], labels: np.ndarray, groups: np.ndarray, *,
                   c: float = 1.0, n_splits: int = 5, seed: int = 0,
                   held_out: Sequence[Sequence[str]] | None = None,
                   conditions: np.ndarray | None = None,
                   labelled: Callable[[np.ndarray], np.ndarray] | None = None) -> CVResult:
    """Out-of-fold linear-SVM predictions with whole groups (plates / experiments) held out.

    `held_out` fixes the folds (see `control_folds`); by default they are drawn for these labels
    (`grouped_folds`). `features` may be one [N, D] array, or one per fold of `held_out`: the features of
    an extractor fitted without that fold's groups. With `conditions` (`whitening_conditions`) the SVM is
    preceded by TVN whitening; like the scaling and the SVM it is fitted on each fold's training rows.
    `labelled` maps a fold's training rows to the ones whose labels it may use (`draw_wells`); every test
    row is still scored.
    """
    labels, groups = np.asarray(labels), np.asarray(groups).astype(str)
    if held_out is None:
        folds = [(train, test, i) for i, (train, test) in enumerate(grouped_folds(labels, groups, n_splits, seed))]
        held_out = [tuple(sorted(set(groups[test]))) for _, test, _ in folds]
    else:
        folds = folds_of_groups(groups, held_out)
    per_fold = not isinstance(features, np.ndarray)
    if per_fold and len(features) != len(held_out):
        raise ValueError(f"{len(features)} per-fold feature arrays for {len(held_out)} folds")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise CVError(f"only one class present ({list(classes)})")
    scores = np.zeros((len(labels),) if len(classes) == 2 else (len(labels), len(classes)))
    predicted = np.empty(len(labels), dtype=labels.dtype)
    fold_of = np.full(len(labels), -1)
    for train, test, _ in folds:
        require_trained(labels, train, test)
    trains = [train if labelled is None else labelled(train) for train, _, _ in folds]
    if per_fold:
        models = [fit_svms(features[k], labels, [train], c=c, seed=seed, conditions=conditions)[0]
                  for train, (_, _, k) in zip(trains, folds)]
    else:
        models = fit_svms(features, labels, trains, c=c, seed=seed, conditions=conditions)
    for i, ((_, test, k), model) in enumerate(zip(folds, models)):
        x = features[k] if per_fold else features
        decision = model.decision_function(x[test])
        if decision.ndim == 2:  # put columns in the global class order (a fold may see them all anyway)
            decision = decision[:, np.searchsorted(model.classes_, classes)]
        scores[test] = decision
        predicted[test] = model.predict(x[test])
        fold_of[test] = i
    untested = np.flatnonzero(fold_of < 0)
    if untested.size:
        raise CVError(f"{untested.size} rows (groups {sorted(set(groups[untested]))[:5]}) are in no test fold")
    return CVResult(labels, predicted, scores, classes, fold_of, len(np.unique(groups)),
                    tuple(tuple(held_out[k]) for _, _, k in folds))


def summarize(result: CVResult) -> dict[str, float]:
    """Accuracy, balanced accuracy and (binary tasks) ROC-AUC of out-of-fold predictions."""
    auc = (metrics.roc_auc_score(result.labels == result.classes[1], result.scores)
           if len(result.classes) == 2 else float("nan"))
    return dict(accuracy=float(metrics.accuracy_score(result.labels, result.predicted)),
                balanced_accuracy=float(metrics.balanced_accuracy_score(result.labels, result.predicted)),
                roc_auc=float(auc), n=int(len(result.labels)), n_groups=result.num_groups,
                n_folds=int(result.fold.max() + 1))


def control_tasks(metadata: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Table 1's tasks as (name, row mask, labels of those rows), all on control sites.

    C+ vs C- with the cell lines merged, the cell lines against each other (on their controls), and C+
    vs C- within each cell line.
    """
    role = control_role(metadata).to_numpy()
    ctrl = np.isin(role, ["C+", "C-"])
    lines = sorted(metadata["group"].astype(str).unique())
    cell = metadata["group"].astype(str).to_numpy()
    tasks = [("C+ vs C- (all cell lines)", ctrl, role[ctrl]),
             (" vs ".join(lines) if len(lines) > 1 else "cell line", ctrl, cell[ctrl])]
    for line in lines:
        mask = ctrl & (cell == line)
        tasks.append((f"C+ vs C- ({line})", mask, role[mask]))
    return tasks


def classify_controls(features: np.ndarray, metadata: pd.DataFrame, *, c: float = 1.0, n_splits: int = 5,
                      group_by: str = "plate", seed: int = 0,
                      whiten: bool = False, fold_features: Sequence[np.ndarray] | None = None,
                      fold_held_out: Sequence[Sequence[str]] | None = None) -> pd.DataFrame:
    """Table 1: one row per task with accuracy, balanced accuracy, ROC-AUC, sizes, the held-out groups, a status.

    Every task uses one fold assignment (`control_folds`). `whiten` fits TVN whitening per fold on the
    training rows (the per-plate centring, `plate_normalize`, comes before). For an extractor fitted on
    labels, `fold_features` (one [N, D] array per fold, rows as `metadata`) replace `features`: fold k's
    come from a model fitted without the groups `fold_held_out[k]`, which must be this assignment's; an
    empty list (no per-fold features) skips every task rather than score train-on-test features.
    A task that cannot be run (a cell line without controls, a class on a single plate) is a row with
    status 'skipped: <reason>' and NaN metrics, not an exception: the other tasks still answer.
    """
    groups = plate_key(metadata, group_by)
    rows, held_out, failure = [], [], None
    try:
        held_out = control_folds(metadata, n_splits=n_splits, group_by=group_by, seed=seed)
    except CVError as e:
        failure = f"skipped: {e}"
    if failure is None and fold_features is not None:
        given = [tuple(g) for g in (fold_held_out or [])]
        if not len(fold_features):
            failure = ("skipped: the feature extractor was fitted on the controls' labels and no per-fold "
                       "features were given (rerun mode=embed)")
        elif len(fold_features) != len(held_out) or (fold_held_out is not None and given != held_out):
            failure = (f"skipped: the per-fold features hold out {given or len(fold_features)}, this analysis' "
                       f"folds are {held_out}: embed with the analysis' n_splits, group_by and seed")
    conditions = whitening_conditions(metadata) if whiten else None
    for name, mask, labels in control_tasks(metadata):
        row = dict(task=name, n=int(mask.sum()), n_groups=int(len(np.unique(groups[mask]))), n_folds=0,
                   accuracy=np.nan, balanced_accuracy=np.nan, roc_auc=np.nan, held_out="", status=failure or "ok")
        if failure is None:
            x = features[mask] if fold_features is None else [f[mask] for f in fold_features]
            try:
                result = cross_validate(x, labels, groups[mask], c=c, held_out=held_out, seed=seed,
                                        conditions=None if conditions is None else conditions[mask])
                row.update(summarize(result), held_out="; ".join(",".join(g) for g in result.held_out))
            except CVError as e:
                row["status"] = f"skipped: {e}"
        rows.append(row)
    columns = ["task", "accuracy", "balanced_accuracy", "roc_auc", "n", "n_groups", "n_folds", "held_out",
               "status"]
    return pd.DataFrame(rows)[columns]


def draw_wells(train: np.ndarray, labels: np.ndarray, wells: np.ndarray, k: int,
               rng: np.random.Generator) -> np.ndarray:
    """The rows of `k` whole wells per class drawn from the training rows `train` (all, for a class with fewer).

    Whole wells: a well's sites share its biology and imaging, so labelling one site labels the well.
    """
    chosen = []
    for cls in np.unique(labels[train]):
        rows = train[labels[train] == cls]
        names = np.unique(wells[rows])
        chosen.append(rows[np.isin(wells[rows], rng.choice(names, size=min(k, len(names)), replace=False))])
    return np.sort(np.concatenate(chosen))


FEW_LABEL_COLUMNS = ["task", "k", "accuracy", "accuracy_sd", "roc_auc", "roc_auc_sd", "draws", "min_wells", "n",
                     "status"]


def classify_few_labels(features: np.ndarray, metadata: pd.DataFrame, ks: Sequence[int], *, draws: int = 5,
                        c: float = 1.0, n_splits: int = 5, group_by: str = "plate",
                        seed: int = 0, whiten: bool = False, label_fitted: bool = False) -> pd.DataFrame:
    """Table 1 with `k` labelled control wells per class: one row per task and k, means and sds over `draws`.

    Table 1's folds (`control_folds`); in each fold the SVM (and TVN whitening with `whiten`) is fitted on k
    whole wells per class drawn from its training groups (`draw_wells`, seeded by seed, k and draw), and
    every held-out control site is scored, as in Table 1. `min_wells` is the fewest wells of a class any fold
    trained on (below k where the training groups hold fewer). A `label_fitted` extractor saw every
    training control's label, so its rows are skipped: its numbers would not be k-label numbers.
    """
    groups = plate_key(metadata, group_by)
    wells = metadata["well_id"].astype(str).to_numpy()
    conditions = whitening_conditions(metadata) if whiten else None
    failure = ("skipped: the feature extractor was fitted on every training control's label" if label_fitted
               else None)
    held_out = []
    if failure is None:
        try:
            held_out = control_folds(metadata, n_splits=n_splits, group_by=group_by, seed=seed)
        except CVError as e:
            failure = f"skipped: {e}"
    rows = []
    for name, mask, labels in control_tasks(metadata):
        for k in ks:
            row = dict(task=name, k=int(k), accuracy=np.nan, accuracy_sd=np.nan, roc_auc=np.nan, roc_auc_sd=np.nan,
                       draws=0, min_wells=0, n=int(mask.sum()), status=failure or "ok")
            if failure is None:
                try:
                    row.update(few_label_draws(features[mask], labels, groups[mask], wells[mask], int(k), draws,
                                                held_out, None if conditions is None else conditions[mask],
                                                c=c, seed=seed))
                except CVError as e:
                    row["status"] = f"skipped: {e}"
            rows.append(row)
    return pd.DataFrame(rows, columns=FEW_LABEL_COLUMNS)


def few_label_draws(x: np.ndarray, labels: np.ndarray, groups: np.ndarray, wells: np.ndarray, k: int, draws: int,
                     held_out: Sequence[Sequence[str]], conditions: np.ndarray | None, *, c: float,
                     seed: int) -> dict:
    """Accuracy and ROC-AUC (mean, sd) over `draws` seeded draws of k wells per class, and the fewest wells."""
    scores, fewest = [], []

    def labelled(train: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = draw_wells(train, labels, wells, k, rng)
        fewest.append(pd.Series(wells[rows]).groupby(labels[rows]).nunique().min())
        return rows

    for draw in range(draws):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k, draw]))
        scores.append(summarize(cross_validate(x, labels, groups, c=c, seed=seed, held_out=held_out,
                                               conditions=conditions, labelled=functools.partial(labelled, rng=rng))))
    table = pd.DataFrame(scores)
    return dict(accuracy=table["accuracy"].mean(), accuracy_sd=table["accuracy"].std(ddof=1) if draws > 1 else 0.0,
                roc_auc=table["roc_auc"].mean(), roc_auc_sd=table["roc_auc"].std(ddof=1) if draws > 1 else 0.0,
                draws=draws, min_wells=int(min(fewest)))
