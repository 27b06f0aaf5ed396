"""E² and C² spaces: every site placed on an on-perturbation and an off-perturbation axis.

The on-perturbation axis is the normal of the linear SVM that separates healthy (C+) from infected (C-)
controls: the direction in feature space along which infection acts. A site's scalar projection on it,
min-max scaled to [-1, 1] over the screen, says how healthy it looks. The off-perturbation axis is the
first principal component of what remains once that direction is projected out (zero-centred): the
largest variation infection does not explain (cell line, toxicity, batch). Plotting controls in this plane
is the paper's E² space (Figure 3); plotting compounds by concentration is its C² space (Figure 4).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from gandl.analysis.classify import hyperplane, make_svm
from gandl.analysis.io import control_role, row_products


@dataclasses.dataclass(frozen=True)
class Axes:
    """The two axes and the constants that scale and centre projections onto them."""

    normal: np.ndarray  # [D] unit SVM normal, pointing from C- toward C+
    threshold: float  # scalar projection of the SVM decision boundary
    on_min: float  # projection range over the fitted sites, mapped to [-1, 1]
    on_max: float
    off_direction: np.ndarray  # [D] unit vector orthogonal to `normal`
    off_mean: float  # mean projection on `off_direction` over the fitted sites

    def scale_on(self, projection: np.ndarray | float) -> np.ndarray | float:
        """Scalar projections mapped linearly so the fitted sites span exactly [-1, 1]."""
        return 2.0 * (projection - self.on_min) / (self.on_max - self.on_min) - 1.0


def _mean_and_covariance(features: np.ndarray, chunk: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D], accumulated in float64 over row chunks (memory O(chunk x D + D²)); each
    chunk's centred product is a float32 matrix product (half the time of a float64 one; relative error ~1e-6,
    far below the sampling error of a covariance)."""
    n, d = features.shape
    mean = features.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d))
    for start in range(0, n, chunk):
        block = np.asarray(features[start:start + chunk], np.float32) - mean.astype(np.float32)
        cov += block.T @ block
    return mean, cov / max(n - 1, 1)


def fit_axes(features: np.ndarray, metadata: pd.DataFrame, *, c: float = 1.0,
             seed: int = 0) -> Axes:
    """Fit the SVM on the C+ / C- controls (cell lines merged) and the off-axis PCA on every site.

    Linear in N: the PCA uses the D x D covariance of the sites, with the normal projected out
    analytically ((I - nn') C (I - nn')), never an N x N matrix or a residual copy of the features.
    """
    role = control_role(metadata).to_numpy()
    ctrl = np.isin(role, ["C+", "C-"])
    found = set(role[ctrl])
    if found != {"C+", "C-"}:
        raise ValueError(f"the on-perturbation axis needs both C+ and C- control sites; found only "
                         f"{sorted(found) or 'no controls'}")
    w, b = hyperplane(make_svm(c, seed).fit(features[ctrl], role[ctrl] == "C+"))
    norm = np.linalg.norm(w)
    normal = w / norm
    projection = row_products(features, normal)
    mean, cov = _mean_and_covariance(features)
    proj = np.eye(len(normal)) - np.outer(normal, normal)
    evals, evecs = np.linalg.eigh(proj @ cov @ proj)
    off = evecs[:, -1]
    off = off * np.sign(off[np.argmax(np.abs(off))])  # eigenvector sign is arbitrary: make it reproducible
    return Axes(normal=normal, threshold=float(-b / norm), on_min=float(projection.min()),
                on_max=float(projection.max()), off_direction=off, off_mean=float(mean @ off))


def project(features: np.ndarray, axes: Axes) -> tuple[np.ndarray, np.ndarray]:
    """(on, off) coordinates of each row: scaled on-perturbation value and centred off-perturbation value."""
    on, off = row_products(features, np.stack([axes.normal, axes.off_direction], axis=1)).T
    return np.asarray(axes.scale_on(on)), off - axes.off_mean


def coordinates(features: np.ndarray, metadata: pd.DataFrame, axes: Axes) -> pd.DataFrame:
    """One row per site: identifiers, control role, perturbation and dose, and its `on` / `off` values."""
    on, off = project(features, axes)
    keep = [c for c in ("site_id", "well_id", "group", "experiment", "plate", "perturbation", "dose")
            if c in metadata]
    frame = metadata[keep].reset_index(drop=True).copy()
    frame["role"] = control_role(metadata).to_numpy()
    frame["on"], frame["off"] = on, off
    return frame
