"""The screen's cross-validation groups: the one fold assignment of its plates (roles and plate keys: `screen`).

Every Table-1 task, the cross-fitted scores and the per-fold fits of a label-fitted extractor (embed stage)
use one assignment of whole plates (or experiments) to folds; it lives here, below both stages, so the
embed stage computes it once, writes it beside the export (`gandl.embed.folds`), and the analysis reads it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pandas as pd
from absl import logging
from sklearn.model_selection import StratifiedGroupKFold

from gandl import defaults, fileio
from gandl.data.screen import control_role, plate_key

FOLDS = "folds.json"  # beside an export: {n_splits, group_by, seed, held_out: [[group, ...], ...]}


@dataclasses.dataclass(frozen=True)
class FoldSettings:
    """How the screen's plates are dealt into folds. The settings are the analysis section's (its Table 1 is what
    the folds are for); the embed stage takes them once, here, for the per-fold fits that must use the same folds,
    and nothing below it reads the analysis section."""

    n_splits: int = 5  # at most this many folds
    group_by: str = "plate"  # plate | experiment: what a fold holds out
    seed: int = 0

    @classmethod
    def of(cls, analysis: defaults.Analysis) -> FoldSettings:
        return cls(analysis.n_splits, analysis.group_by, analysis.seed)


class CVError(ValueError):
    """A task that cannot be cross-validated by groups (too few plates, a class on one plate only)."""


def require_trained(labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> None:
    """Every class of a test fold must be among its training rows: an SVM cannot score a class it never saw."""
    unseen = np.setdiff1d(labels[test], labels[train])
    if unseen.size:
        raise CVError(f"classes {list(unseen)} are in a test fold but not in its training plates; "
                      "add plates or use group_by='plate'")


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
        require_trained(labels, train, test)
    return folds


def control_folds(metadata: pd.DataFrame, *, n_splits: int = 5, group_by: str = "plate",
                  seed: int = 0) -> list[tuple[str, ...]]:
    """The screen's one fold assignment: the groups (plates / experiments) each fold holds out.

    Every Table-1 task of every feature set uses it, and so do the cross-fitted efficacy scores and a
    label-fitted extractor's per-fold fits: fold k's model never saw fold k's groups. Folds are
    stratified by the finest of cell line x control role, cell line, or control role whose every class
    spans two or more groups: a plate that lacks one control kind then leaves only the tasks that need that
    kind, not the cell-line stratification of all the others. Computed from the C+/C- control sites only.
    """
    role = control_role(metadata).to_numpy()
    ctrl = np.isin(role, ["C+", "C-"])
    groups = plate_key(metadata, group_by)[ctrl]
    line = metadata["group"].astype(str).to_numpy()[ctrl]
    labels = role[ctrl]
    for candidate in (line + "|" + role[ctrl], line):
        spans = pd.DataFrame({"y": candidate, "g": groups}).drop_duplicates().groupby("y")["g"].nunique()
        if len(spans) and spans.min() >= 2:
            labels = candidate
            break
    folds = grouped_folds(labels, groups, n_splits, seed)
    return [tuple(sorted(set(groups[test]))) for _, test in folds]


def folds_record(folder: str) -> str:
    """The completion record of `folder`'s fold assignment."""
    return os.path.join(folder, "folds.complete.json")


def write_folds(folder: str, assignment: dict[str, Any]) -> None:
    """Record a fold assignment (`held_out` and the settings that drew it) in `folder`, its completion record last."""
    path = os.path.join(folder, FOLDS)
    fileio.write_json(path, assignment)
    fileio.write_record(folds_record(folder), [path])


def read_folds(folder: str) -> dict[str, Any] | None:
    """The fold assignment recorded in `folder`; None when there is none or its file no longer matches its record
    (logged: the embed stage writes it again)."""
    problems = fileio.verify_record(folds_record(folder))
    if problems:
        logging.warning("the fold assignment in %s is damaged (%s): ignored", folder, "; ".join(problems))
    return fileio.read_json(os.path.join(folder, FOLDS)) if problems == [] else None


def assignment(metadata: pd.DataFrame, settings: FoldSettings) -> dict[str, Any]:
    """`control_folds` with the settings that drew it: what folds.json records."""
    held_out = control_folds(metadata, **dataclasses.asdict(settings))
    return dict(dataclasses.asdict(settings), held_out=[list(groups) for groups in held_out])
