"""Procedural fluorescence screens: GAN-DL's embedded default data set and the project's test data.

Two screens are written in the official on-disk layouts, so every reader, converter and analysis runs on
them unchanged:

* ``write_rxrx19a``: an RxRx19a-like SARS-CoV-2 screen (HRCE and VERO cells, 5 stains) with Mock / UV /
  Active controls, blank wells and compounds at six half-log doses whose antiviral efficacy follows a
  hidden Hill curve (``truth.csv``, ``hidden_efficacy``). The analysis must recover that truth.
* ``write_rxrx1``: an RxRx1-like 6-stain siRNA set of four other cell lines (HEPG2, HUVEC, RPE, U2OS) for
  zero-shot cell typing; the five stains it shares with RxRx19a are rendered by the same code.

Images are drawn, not sampled from noise: each site places cells on a jittered lattice, gives every pixel
to its nearest cell (an anisotropic Voronoi partition, which makes confluent cobblestones and free spindle
cells from one rule) and paints each stain from the pixel's coordinates in its cell's frame (nucleus with
chromatin spots, perinuclear reticular ER, cortical actin and stress fibres along the cell axis, nucleoli
and cytoplasmic RNA, membranes and a Golgi blob, filamentous mitochondria). Every length is in
field-of-view units, so a site renders at any resolution. Plate batch effects (per-channel gain and
offset, a vignetting field), per-cell variability and shot noise are the nuisance an analysis must cope
with.

Phenotypes (per site, from two levels in [0, 1]):
  infection  Mock/blank 0, UV 0.12, Active 1, compound 1 - efficacy(dose). Infected cells (70 % of cells at
             level 1) carry bright cytoplasmic Syto14 puncta, round up and lose their stress fibres, and the
             site loses up to 40 % of its cells.
  toxicity   a second hidden Hill curve for toxic compounds: up to 75 % fewer cells, and up to 70 % of the
             rest apoptotic (small bright condensed nuclei, shrunken cells).

Sizes: the defaults (``write_rxrx19a(dir, image_size=32)``: 2 cell lines x 2 plates x 65 wells x 2 sites =
520 sites) suit unit tests. The demo screen is ``DEMO_RXRX19A`` (4 plates per line, 24 compounds, 3 sites:
~4,500 sites; ``python -m gandl.data.synthetic --out DIR --kind rxrx19a --demo``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from gandl.data.vocabulary import ACTIVE, BLANK, MOCK, RXRX1_COLUMNS, RXRX19A_COLUMNS, STAINS, UV_INACTIVATED
from gandl.data.vocabulary import image_path as rxrx_image_path

TRUTH_COLUMNS = ("treatment", "cell_type", "effect_class", "emax", "ec50_uM", "hill", "tox_ec50_uM",
                 "tox_hill", "SMILES")

RXRX19A_STAINS = STAINS["rxrx19a"]
RXRX1_STAINS = STAINS["rxrx1"]

# Six half-log doses, 0.0316 .. 10 uM, rounded to three significant digits as a plate map would list them.
DOSES_UM = tuple(float(f"{c:.3g}") for c in 10.0 ** np.arange(-1.5, 1.5, 0.5))

# Infection level of each control condition; UV-inactivated virus is a mild version of the Active phenotype.
CONDITION_INFECTION = {MOCK: 0.0, BLANK: 0.0, UV_INACTIVATED: 0.12, ACTIVE: 1.0}

DEMO_RXRX19A = dict(image_size=64, plates_per_cell_line=4, sites_per_well=3, num_compounds=24,
                    control_wells_per_plate=(16, 8, 16, 4))

_FORMAT_VERSION = 1
# write_rxrx19a's test-bed options at which it draws the standard screen; only other values enter its stamp,
# so a standard screen written before the options existed still resumes.
_TEST_BED_DEFAULTS = dict(morphology_only=False, phenotype_strength=1.0, cell_density=1.0)


# ----------------------------------------------------------------------------------------------------------
# Cell lines


@dataclasses.dataclass(frozen=True)
class CellLine:
    """Morphology of one cell line; lengths in field-of-view units (the image side is 1)."""

    name: str
    density: float  # cells per unit FOV area, untreated
    length: float  # half-length of a cell along its axis
    aspect: float  # half-length / half-width
    taper: float  # narrowing toward the tips: 0 is an ellipse, ~4 a pointed spindle
    jitter: float  # lattice jitter: 0 is a regular cobblestone, 1 is random placement
    nucleus: float  # nucleus half-width
    nucleus_aspect: float
    irregularity: float  # amplitude of the outline's 2nd and 3rd harmonics
    alignment: float  # fraction of cells sharing the site's direction (flow / crowding alignment)
    colonies: float  # 0: uniform; 1: cells gathered in colonies
    fibres: float  # stress-fibre strength
    brightness: Mapping[str, float] = dataclasses.field(default_factory=dict)  # per-stain gain, default 1


CELL_LINES: dict[str, CellLine] = {
    line.name: line
    for line in (
        # Renal cortical epithelium: confluent cobblestones, round nuclei.
        CellLine("HRCE", density=32, length=0.13, aspect=1.15, taper=0.0, jitter=0.25, nucleus=0.034,
                 nucleus_aspect=1.15, irregularity=0.06, alignment=0.0, colonies=0.0, fibres=0.5),
        # African green monkey kidney: fewer, spread spindle cells, oval nuclei, strong fibres.
        CellLine("VERO", density=11, length=0.2, aspect=3.0, taper=2.5, jitter=0.9, nucleus=0.032,
                 nucleus_aspect=1.45, irregularity=0.12, alignment=0.5, colonies=0.0, fibres=1.0,
                 brightness={"WGA": 0.8, "Syto14": 1.15}),
        # Hepatocytes: small cells packed in colonies, high nucleus / cytoplasm ratio.
        CellLine("HEPG2", density=60, length=0.07, aspect=1.1, taper=0.0, jitter=0.3, nucleus=0.025,
                 nucleus_aspect=1.1, irregularity=0.05, alignment=0.0, colonies=1.0, fibres=0.25,
                 brightness={"MitoTracker": 1.3, "ConA": 1.2}),
        # Umbilical vein endothelium: elongated cells aligned in one direction.
        CellLine("HUVEC", density=24, length=0.15, aspect=2.4, taper=2.5, jitter=0.5, nucleus=0.025,
                 nucleus_aspect=1.6, irregularity=0.08, alignment=0.85, colonies=0.0, fibres=0.8),
        # Retinal pigment epithelium: large flat polygonal cells, large oval nuclei.
        CellLine("RPE", density=18, length=0.14, aspect=1.35, taper=0.0, jitter=0.35, nucleus=0.034,
                 nucleus_aspect=1.3, irregularity=0.1, alignment=0.15, colonies=0.0, fibres=0.7,
                 brightness={"Phalloidin": 1.2}),
        # Osteosarcoma: sparse, large, irregular cells with big nuclei and many fibres.
        CellLine("U2OS", density=8, length=0.2, aspect=1.5, taper=0.5, jitter=0.9, nucleus=0.04,
                 nucleus_aspect=1.25, irregularity=0.22, alignment=0.0, colonies=0.0, fibres=1.3,
                 brightness={"Hoechst": 0.85}),
    )
}

# Base signal level of each stain (fraction of the 8-bit range before plate gain).
_STAIN_LEVEL = {"Hoechst": 0.55, "ConA": 0.4, "Phalloidin": 0.45, "Syto14": 0.3, "MitoTracker": 0.45,
                "WGA": 0.45}
# Autofluorescence per stain, and how many photons one unit of intensity holds (sets the shot noise).
_BACKGROUND = {"Hoechst": 0.03, "ConA": 0.04, "Phalloidin": 0.035, "Syto14": 0.04, "MitoTracker": 0.035,
               "WGA": 0.04}
_PHOTONS_PER_UNIT = 300.0
# Normalised distance beyond which a cell paints nothing (outline harmonics stretch it to ~1.5).
_REACH = 1.8
_READ_NOISE = 0.004
# Output scale: 8-bit uses most of the byte range; 16-bit keeps a realistic low range (nuclei ~ 250).
_OUTPUT_SCALE = {8: 255.0, 16: 450.0}


# ----------------------------------------------------------------------------------------------------------
# Plate nuisance


@dataclasses.dataclass(frozen=True)
class PlateEffects:
    """Batch nuisance shared by all sites of one plate: camera/stain gain and offset, illumination."""

    gain: np.ndarray  # [C]
    offset: np.ndarray  # [C], after illumination (camera offset)
    vignette_centre: tuple[float, float]
    vignette: np.ndarray  # [C] strength of the radial fall-off per channel
    gradient: tuple[float, float]  # linear illumination tilt


def sample_plate_effects(rng: np.random.Generator, num_channels: int) -> PlateEffects:
    """Draws one plate's batch effects; big enough that plates separate in a naive embedding."""
    strength = rng.uniform(0.15, 0.35)
    return PlateEffects(
        gain=np.exp(rng.normal(0.0, 0.15, num_channels)).astype(np.float32),
        offset=rng.uniform(0.0, 0.03, num_channels).astype(np.float32),
        vignette_centre=(float(rng.normal(0.5, 0.08)), float(rng.normal(0.5, 0.08))),
        vignette=(strength * rng.uniform(0.8, 1.2, num_channels)).astype(np.float32),
        gradient=(float(rng.normal(0.0, 0.1)), float(rng.normal(0.0, 0.1))),
    )


_NO_PLATE_EFFECT = PlateEffects(np.ones(6, np.float32), np.zeros(6, np.float32), (0.5, 0.5),
                                np.zeros(6, np.float32), (0.0, 0.0))


# ----------------------------------------------------------------------------------------------------------
# Cells


@dataclasses.dataclass(frozen=True)
class _Cells:
    """Per-cell parameters (arrays of length N)."""

    x: np.ndarray
    y: np.ndarray
    cos: np.ndarray  # of the cell axis angle
    sin: np.ndarray
    a: np.ndarray  # half-length
    b: np.ndarray  # half-width
    nu: np.ndarray  # nucleus centre in the cell frame
    nv: np.ndarray
    na: np.ndarray  # nucleus half-axes
    nb: np.ndarray
    ncos: np.ndarray  # nucleus rotation relative to the cell axis
    nsin: np.ndarray
    dna: np.ndarray  # nuclear brightness (DNA content, condensation)
    chromatin: np.ndarray  # chromatin texture contrast
    fibres: np.ndarray
    fibre_cos: np.ndarray  # fibre direction relative to the cell axis
    fibre_sin: np.ndarray
    fibre_phase: np.ndarray
    gu: np.ndarray  # Golgi centre in the cell frame, beside the nucleus
    gv: np.ndarray
    harmonics: np.ndarray  # [N, 4]: outline harmonics as cosine / sine coefficients
    infected: np.ndarray  # viral RNA load, 0 for uninfected cells
    stain: np.ndarray  # [N, 6] per-cell stain brightness, in RXRX1_STAINS order
    taper: float


def _sample_cells(rng: np.random.Generator, line: CellLine, infection: float, toxicity: float) -> _Cells:
    """Places cells and draws their states; counts fall with infection and toxicity."""
    spacing = math.sqrt(2.0 / (math.sqrt(3.0) * line.density))
    margin = line.length * 1.1
    side = 1.0 + 2.0 * margin
    # A hexagonal lattice over a square of `side` around the FOV, rotated and shifted at random.
    n_side = int(math.ceil(side * 1.5 / spacing)) + 2
    i, j = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    lx = (j + 0.5 * (i % 2)) * spacing
    ly = i * spacing * math.sqrt(3.0) / 2.0
    lx, ly = lx.ravel() - lx.mean(), ly.ravel() - ly.mean()
    phi = rng.uniform(0.0, math.pi)
    x = 0.5 + lx * math.cos(phi) - ly * math.sin(phi) + rng.uniform(-0.5, 0.5) * spacing
    y = 0.5 + lx * math.sin(phi) + ly * math.cos(phi) + rng.uniform(-0.5, 0.5) * spacing
    jitter_r = line.jitter * spacing * np.sqrt(rng.uniform(0.0, 1.0, x.size))
    jitter_a = rng.uniform(0.0, 2.0 * math.pi, x.size)
    x = x + jitter_r * np.cos(jitter_a)
    y = y + jitter_r * np.sin(jitter_a)
    keep = (x > -margin) & (x < 1.0 + margin) & (y > -margin) & (y < 1.0 + margin)
    survival = (1.0 - 0.4 * infection) * (1.0 - 0.75 * toxicity)
    p_keep = np.full(x.shape, survival)
    if line.colonies > 0:
        centres = rng.uniform(-0.1, 1.1, (4, 2))
        dist2 = (x[:, None] - centres[:, 0]) ** 2 + (y[:, None] - centres[:, 1]) ** 2
        colony = np.clip(np.exp(-dist2 / (2 * 0.16**2)).sum(1) * 1.5, 0.0, 1.0)
        p_keep = p_keep * ((1.0 - line.colonies) + line.colonies * colony)
    keep &= rng.uniform(0.0, 1.0, x.size) < p_keep
    x, y = x[keep].astype(np.float32), y[keep].astype(np.float32)
    n = x.size

    u = lambda lo, hi: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    lognormal = lambda sd: np.exp(rng.normal(0.0, sd, n)).astype(np.float32)  # noqa: E731
    site_direction = rng.uniform(0.0, math.pi)
    aligned = rng.uniform(0.0, 1.0, n) < line.alignment
    theta = np.where(aligned, site_direction + rng.normal(0.0, 0.2, n), rng.uniform(0.0, math.pi, n))
    a = line.length * lognormal(0.15)
    aspect = np.maximum(1.0, line.aspect * lognormal(0.15))
    nb = line.nucleus * lognormal(0.12)
    na = nb * np.maximum(1.0, line.nucleus_aspect * lognormal(0.1))
    dna = 1.0 + (rng.uniform(0.0, 1.0, n) < 0.35) * u(0.3, 0.9)
    chromatin = np.ones(n, np.float32)
    fibres = line.fibres * lognormal(0.25)
    ntheta = rng.normal(0.0, 0.2, n)

    infected = (rng.uniform(0.0, 1.0, n) < 0.7 * infection) * u(0.5, 1.3)
    apoptotic = rng.uniform(0.0, 1.0, n) < 0.7 * toxicity
    mitotic = ~apoptotic & (rng.uniform(0.0, 1.0, n) < 0.03)
    sick = infected > 0
    # Infected cells round up, shrink a little and lose their stress fibres.
    a = np.where(sick, a * 0.8, a)
    aspect = np.where(sick, 1.0 + (aspect - 1.0) * 0.35, aspect)
    fibres = np.where(sick, fibres * 0.15, fibres)
    # Mitotic cells round up around a condensed, bright nucleus.
    round_r = line.length / np.sqrt(line.aspect)
    a = np.where(mitotic, round_r * 0.8, a)
    aspect = np.where(mitotic, 1.0, aspect)
    # Apoptotic cells shrink around a small, bright, smooth, pyknotic nucleus.
    a = np.where(apoptotic, round_r * 0.55, a)
    aspect = np.where(apoptotic, 1.1, aspect)
    fibres = np.where(apoptotic | mitotic, 0.0, fibres)
    for mask, scale, bright in ((mitotic, 0.7, 1.8), (apoptotic, 0.5, 2.4)):
        nb = np.where(mask, nb * scale, nb)
        na = np.where(mask, nb * 1.1, na)
        dna = np.where(mask, bright, dna)
        chromatin = np.where(mask, 0.3, chromatin)
    b = a / aspect
    na = np.minimum(na, 0.75 * a)
    nb = np.minimum(nb, 0.75 * b)
    nu = (u(-0.25, 0.25) * (a - na)).astype(np.float32)
    nv = (u(-0.25, 0.25) * (b - nb)).astype(np.float32)
    amp2, phase2, amp3, phase3 = (u(0.3, 1.0) * line.irregularity, u(0, 2 * math.pi),
                                  u(0.3, 1.0) * line.irregularity, u(0, 2 * math.pi))
    harmonics = np.stack([amp2 * np.cos(phase2), amp2 * np.sin(phase2), amp3 * np.cos(phase3),
                          amp3 * np.sin(phase3)], axis=1)
    stain = np.exp(rng.normal(0.0, 0.2, (n, len(RXRX1_STAINS)))).astype(np.float32)
    stain[apoptotic, RXRX1_STAINS.index("Syto14")] *= 0.5
    stain[apoptotic, RXRX1_STAINS.index("MitoTracker")] *= 0.4
    tilt = rng.normal(0.0, 0.12, n)
    golgi, golgi_r = rng.uniform(0, 2 * math.pi, n), na + 0.3 * nb
    f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
    return _Cells(x=x, y=y, cos=f32(np.cos(theta)), sin=f32(np.sin(theta)), a=f32(a), b=f32(b), nu=nu, nv=nv,
                  na=f32(na), nb=f32(nb), ncos=f32(np.cos(ntheta)), nsin=f32(np.sin(ntheta)), dna=f32(dna),
                  chromatin=chromatin, fibres=f32(fibres), fibre_cos=f32(np.cos(tilt)), fibre_sin=f32(np.sin(tilt)),
                  fibre_phase=u(0, 2 * math.pi), gu=f32(nu + golgi_r * np.cos(golgi)),
                  gv=f32(nv + golgi_r * np.sin(golgi)), harmonics=harmonics.astype(np.float32),
                  infected=f32(infected), stain=stain, taper=line.taper)


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _owners(size: int, c: _Cells) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest and second-nearest cell per pixel in each cell's own elliptical metric, flattened [size*size].

    Returns the owner index and the squared normalised distances to the nearest and second-nearest cell.
    Work is done per tile against only the cells that can reach it (normalised distance < _REACH); a
    pixel no cell reaches gets q = 1e6, which every stain renders as background.
    """
    ca, sa = c.cos / c.a, c.sin / c.a
    cb, sb = c.cos / c.b, c.sin / c.b
    reach = _REACH * c.a  # the long half-axis bounds the reach in every direction
    owner = np.zeros((size, size), np.intp)
    q1 = np.full((size, size), 1e6, np.float32)
    q2 = np.full((size, size), 1e6, np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    tile = max(16, size // 4)
    for top in range(0, size, tile):
        for left in range(0, size, tile):
            ty, tx = coords[top:top + tile], coords[left:left + tile]
            # Distance from each cell centre to the tile rectangle.
            gap_x = np.maximum(np.maximum(tx[0] - c.x, c.x - tx[-1]), 0.0)
            gap_y = np.maximum(np.maximum(ty[0] - c.y, c.y - ty[-1]), 0.0)
            near = np.flatnonzero(gap_x * gap_x + gap_y * gap_y < reach * reach)
            if near.size == 0:
                continue
            dx = tx[None, None, :] - c.x[near, None, None]  # [cells, rows, cols]
            dy = ty[None, :, None] - c.y[near, None, None]
            u = dx * ca[near, None, None] + dy * sa[near, None, None]
            v = dy * cb[near, None, None] - dx * sb[near, None, None]
            q = u * u + v * v * (1.0 + c.taper * u * u) if c.taper else u * u + v * v
            # min over axis 0 is fast where argmin is not; the owner is the index that attains the minimum.
            nearest = q.min(0)
            is_nearest = q == nearest
            index = near.astype(np.float32)[:, None, None]
            block = (slice(top, top + tile), slice(left, left + tile))
            q1[block] = nearest
            owner[block] = np.where(is_nearest, index, np.float32(c.x.size)).min(0)
            if near.size > 1:
                q2[block] = np.where(is_nearest, np.float32(np.inf), q).min(0)
    return owner.ravel(), q1.ravel(), q2.ravel()


def _texture(rng: np.random.Generator, size: int, corr: float) -> tuple[np.ndarray, float]:
    """A smooth unit-variance random field with correlation length `corr` (FOV units).

    Also returns the contrast a pixel keeps of detail that fine: pixels average sub-pixel texture away,
    so textures fade (rather than turn into pixel noise) at low resolution.
    """
    sigma = corr * size
    field = rng.standard_normal((size, size), dtype=np.float32)
    if sigma >= 0.3:
        field = ndimage.gaussian_filter(field, sigma, mode="wrap")
        field /= field.std() + 1e-6
    return field, sigma / math.sqrt(sigma * sigma + 0.3)


def _faded(tex: np.ndarray, contrast: float) -> np.ndarray:
    mean = tex.mean()
    return mean + contrast * (tex - mean)


def _band_limited_cos(phase: np.ndarray, period: float, pixel: float) -> np.ndarray:
    """cos(phase) with the attenuation a pixel's area integration gives a grating of this period."""
    amp = 0.0 if period < 2.0 * pixel else math.exp(-2.0 * (math.pi * 0.5 * pixel / period) ** 2)
    return amp * np.cos(phase)


def render_site(rng: np.random.Generator, cell_line: str | CellLine, *, image_size: int = 64,
                stains: Sequence[str] = RXRX19A_STAINS, infection: float = 0.0, toxicity: float = 0.0,
                plate: PlateEffects | None = None, bit_depth: int = 8,
                histogram: np.ndarray | None = None) -> np.ndarray:
    """Renders one site as an [image_size, image_size, len(stains)] uint8 / uint16 array.

    `infection` and `toxicity` in [0, 1] set the phenotype (module docstring); `plate` adds that plate's
    batch effects (None: an ideal microscope). `histogram` ([len(stains), image_size**2], each row sorted, in
    output units; `reference_histogram`) rank-matches every channel to it: the site keeps only the order of
    its pixels, so its intensity distribution is exactly the reference's. All randomness comes from `rng`.
    """
    _check_size_depth(image_size, bit_depth)
    unknown = set(stains) - set(RXRX1_STAINS)
    if unknown:
        raise ValueError(f"unknown stains {sorted(unknown)}")
    line = CELL_LINES[cell_line] if isinstance(cell_line, str) else cell_line
    cells = _sample_cells(rng, line, float(np.clip(infection, 0, 1)), float(np.clip(toxicity, 0, 1)))
    size = image_size
    px = 1.0 / size
    fields = [("chromatin", 0.0035), ("nucleoli", 0.006), ("reticulum", 0.005), ("puncta", 0.003)]
    if "MitoTracker" in stains:
        fields.append(("mito", 0.0035))
    textures = {name: _texture(rng, size, corr) for name, corr in fields}
    signal = np.zeros((len(stains), size, size), np.float32)
    if cells.x.size:
        signal = _paint(cells, line, stains, size, textures)

    effects = plate or _NO_PLATE_EFFECT
    coords = (np.arange(size, dtype=np.float32) + 0.5) * px
    gx, gy = coords[None, :], coords[:, None]
    cx, cy = effects.vignette_centre
    r2 = ((gx - cx) ** 2 + (gy - cy) ** 2) / 0.5
    tilt = 1.0 + effects.gradient[0] * (gx - 0.5) + effects.gradient[1] * (gy - 0.5)
    out = np.empty((size, size, len(stains)), np.uint16 if bit_depth == 16 else np.uint8)
    noise = rng.standard_normal((2, len(stains), size, size), dtype=np.float32)
    psf = 0.0012 * size
    for ci, stain in enumerate(stains):
        ch = signal[ci]
        if psf >= 0.5:
            ch = ndimage.gaussian_filter(ch, psf)
        k = RXRX1_STAINS.index(stain)
        light = (1.0 - effects.vignette[k] * r2) * tilt
        value = (ch * (_STAIN_LEVEL[stain] * line.brightness.get(stain, 1.0)) + _BACKGROUND[stain]) * light
        value = value * effects.gain[k] + effects.offset[k]
        value = value + np.sqrt(np.maximum(value, 0.0) / _PHOTONS_PER_UNIT) * noise[0, ci]
        value = value + _READ_NOISE * noise[1, ci]
        if histogram is None:
            out[..., ci] = np.clip(np.rint(value * _OUTPUT_SCALE[bit_depth]), 0, 2**bit_depth - 1)
        else:  # ranks of the unquantised values: shot and read noise leave (almost) no ties to break
            flat = np.empty(size * size, out.dtype)
            flat[np.argsort(value, axis=None, kind="stable")] = histogram[ci]
            out[..., ci] = flat.reshape(size, size)
    return out


def reference_histogram(seed: int, lines: Sequence[str], *, image_size: int, stains: Sequence[str],
                        bit_depth: int = 8, sites: int = 4) -> np.ndarray:
    """One intensity histogram per channel for `render_site(histogram=...)`: [len(stains), image_size**2] sorted.

    Pooled over `sites` ideal-microscope sites of every cell line at infection 0 and 1 (their own random
    streams), so no condition, plate or line owns it; every site matched to it has these exact pixel values.
    """
    pool = [render_site(_seed(seed, 19, 4, li, level, i), line, image_size=image_size, stains=stains,
                        infection=float(level), bit_depth=bit_depth)
            for li, line in enumerate(lines) for level in (0, 1) for i in range(sites)]
    pixels = np.stack(pool).reshape(-1, len(stains))
    quantiles = (np.arange(image_size * image_size) + 0.5) / (image_size * image_size)
    return np.quantile(pixels, quantiles, axis=0, method="inverted_cdf").T.astype(pool[0].dtype)


def _paint(c: _Cells, line: CellLine, stains: Sequence[str], size: int,
           textures: Mapping[str, tuple[np.ndarray, float]]) -> np.ndarray:
    """Stain signals [len(stains), size, size] (about 0..1.5) from the cells' geometry."""
    px = 1.0 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) * px
    ys, xs = (g.ravel() for g in np.meshgrid(coords, coords, indexing="ij"))
    k, q1, q2 = _owners(size, c)
    # One gather of every per-cell parameter onto the pixels it owns (one wide gather beats twenty).
    names = ("x", "y", "cos", "sin", "a", "b", "nu", "nv", "na", "nb", "ncos", "nsin", "dna", "chromatin",
             "fibres", "fibre_cos", "fibre_sin", "fibre_phase", "gu", "gv", "infected")
    table = np.concatenate([np.stack([getattr(c, n) for n in names], 1), c.harmonics, c.stain], 1)
    columns = np.ascontiguousarray(table[k].T)
    g = dict(zip(names, columns))
    h = columns[len(names):len(names) + 4]  # amp2 cos p2, amp2 sin p2, amp3 cos p3, amp3 sin p3
    stain_gain = columns[len(names) + 4:]
    dx, dy = xs - g["x"], ys - g["y"]
    cos_t, sin_t = g["cos"], g["sin"]
    a, b = g["a"], g["b"]
    u = dx * cos_t + dy * sin_t  # along the cell axis, FOV units
    v = dy * cos_t - dx * sin_t
    radius = np.sqrt(a * b)
    r = np.sqrt(q1)
    # Outline harmonics cos(2 phi + p2), cos(3 phi + p3) of the pixel's polar angle, from its unit vector.
    inv = 1.0 / np.maximum(np.hypot(u / a, v / b), 1e-6)
    cx, sx = u / a * inv, v / b * inv
    cos2, sin2 = cx * cx - sx * sx, 2.0 * cx * sx
    cos3, sin3 = cx * (4.0 * cx * cx - 3.0), sx * (3.0 - 4.0 * sx * sx)
    r_out = r / (1.0 + h[0] * cos2 - h[1] * sin2 + h[2] * cos3 - h[3] * sin3)
    edge = np.maximum(0.004, 0.7 * px)  # membrane half-width, never below a pixel
    body = _sigmoid((1.0 - r_out) * radius / (0.5 * edge))
    outline = np.exp(-(((1.0 - r_out) * radius / edge) ** 2))
    # Cell-cell junctions: where the second-nearest cell is nearly as near and also reaches this pixel.
    gap = (np.sqrt(q2) - r) * radius * 0.5
    junction = np.exp(-((gap / edge) ** 2)) * _sigmoid((1.0 - np.sqrt(q2)) * radius / (0.5 * edge))
    membrane = body * np.maximum(outline, junction)
    cortex = body * np.maximum(np.exp(-(((1.0 - r_out) * radius / (2 * edge)) ** 2)),
                               np.exp(-((gap / (2 * edge)) ** 2)))
    thickness = body * np.sqrt(np.clip(1.0 - r_out * r_out, 0.0, 1.0))

    nu, nv, na, nb = g["nu"], g["nv"], g["na"], g["nb"]
    cn, sn = g["ncos"], g["nsin"]
    du, dv = u - nu, v - nv
    rn = np.sqrt(((du * cn + dv * sn) / na) ** 2 + ((dv * cn - du * sn) / nb) ** 2)
    nuc_edge = np.maximum(0.0025, 0.5 * px)
    nucleus = _sigmoid((1.0 - rn) * nb / nuc_edge) * body
    cytoplasm = body * (1.0 - nucleus)
    outside_nucleus = np.maximum(rn - 1.0, 0.0) * nb
    perinuclear = np.exp(-outside_nucleus / (0.45 * b))

    def tex(name: str) -> np.ndarray:
        return textures[name][0].ravel()

    def fade(name: str, value: np.ndarray) -> np.ndarray:
        return _faded(value, textures[name][1])

    out = np.empty((len(stains), size * size), np.float32)
    for ci, stain in enumerate(stains):
        gain = stain_gain[RXRX1_STAINS.index(stain)]
        if stain == "Hoechst":
            spots = fade("chromatin", _sigmoid((tex("chromatin") - 0.8) * 3.0))
            val = nucleus * g["dna"] * (0.7 + 0.6 * g["chromatin"] * spots)
        elif stain == "ConA":
            er = fade("reticulum", np.exp(-((tex("reticulum") / 0.6) ** 2)))
            envelope = np.exp(-(((rn - 1.0) * nb / (1.5 * nuc_edge)) ** 2)) * body
            val = cytoplasm * thickness * (0.3 + 0.7 * perinuclear) * (0.45 + 0.9 * er) + 0.5 * envelope
        elif stain == "Phalloidin":
            across = v * g["fibre_cos"] - u * g["fibre_sin"]
            period = 0.013
            wave = 2 * math.pi * across / period + g["fibre_phase"]
            grating = _band_limited_cos(wave, period, px)
            # Each fibre gets its own strength (a hash of its index), so bundles vary like real ones.
            strength = np.sin(np.floor(wave / (2 * math.pi)) * 12.9898 + g["fibre_phase"] * 78.233)
            strength = 0.35 + np.abs(np.sin(strength * 43758.5453))
            along = np.clip(1.0 - (u / a) ** 2, 0.0, 1.0)
            fibre = (0.5 + 0.5 * grating) ** 3 * strength * along * (1.0 - 0.7 * nucleus)
            val = 0.45 * cortex + body * (0.12 + 1.6 * g["fibres"] * fibre)
        elif stain == "Syto14":
            nucleoli = fade("nucleoli", _sigmoid((tex("nucleoli") - 1.2) * 5.0))
            puncta = fade("puncta", _sigmoid((tex("puncta") - 1.3) * 6.0))
            viral = g["infected"] * cytoplasm * perinuclear * (0.35 + 4.0 * puncta)
            val = nucleus * (0.3 + 1.5 * nucleoli) + cytoplasm * thickness * 0.45 * perinuclear + viral
        elif stain == "MitoTracker":
            mito = fade("mito", np.exp(-((tex("mito") / 0.5) ** 2)))
            val = cytoplasm * thickness * np.exp(-outside_nucleus / (0.35 * b)) * (0.15 + 1.2 * mito)
        else:  # wga
            golgi = np.exp(-((u - g["gu"]) ** 2 + (v - g["gv"]) ** 2) / (0.6 * nb) ** 2) * cytoplasm
            grain = fade("reticulum", _sigmoid(tex("reticulum") * 2.0))
            val = membrane * (0.35 + 0.3 * grain) + 1.6 * golgi * (0.5 + grain) + 0.12 * body
        out[ci] = val * gain
    return out.reshape(len(stains), size, size)


# ----------------------------------------------------------------------------------------------------------
# Compounds and the hidden truth

_FIXED_COMPOUNDS = (
    # name, class, SMILES, {cell line: (emax, ec50 uM, hill)}
    ("Remdesivir", "effective",
     "CCC(CC)COC(=O)[C@H](C)N[P@](=O)(OC[C@@H]1[C@H]([C@H]([C@](O1)(C#N)C2=CC=C3N2N=CN=C3N)O)O)OC4=CC=CC=C4",
     {"HRCE": (0.95, 0.25, 1.5), "VERO": (0.9, 1.2, 1.5)}),
    ("GS-441524", "effective", "C1=C2C(=NC=NN2C(=C1)[C@]3([C@@H]([C@@H]([C@H](O3)CO)O)O)C#N)N",
     {"HRCE": (0.9, 0.8, 1.3), "VERO": (0.85, 2.0, 1.3)}),
    ("Polydatin", "inert", "C1=CC(=CC=C1/C=C/C2=CC(=CC(=C2)O[C@H]3[C@@H]([C@H]([C@@H]([C@H](O3)CO)O)O)O)O)O",
     {}),
)
_SMILES_CAPS = ("C", "CC", "CO", "FC(F)(F)", "N#C", "Cl", "CC(C)")
_SMILES_RINGS = ("c{r}ccc(cc{r})", "c{r}ccc(nc{r})", "C{r}CCN(CC{r})", "C{r}CN(C{r})", "c{r}cc(sc{r})",
                 "c{r}cnc(nc{r})")
_SMILES_LINKERS = ("C(=O)N", "NC(=O)", "OC", "S(=O)(=O)N", "CN", "C(=O)O", "")
_SMILES_ENDS = ("c{r}ccccc{r}", "N{r}CCOCC{r}", "C{r}CC{r}", "c{r}ccncc{r}", "O", "N", "C(=O)O")


def _random_smiles(rng: np.random.Generator) -> str:
    """A drug-like-looking SMILES: cap, one to three ring/linker units, terminal group."""
    parts = [str(rng.choice(_SMILES_CAPS))]
    n_rings = int(rng.integers(1, 4))
    for r in range(1, n_rings + 1):
        parts.append(str(rng.choice(_SMILES_RINGS)).format(r=r))
        parts.append(str(rng.choice(_SMILES_LINKERS)))
    parts.append(str(rng.choice(_SMILES_ENDS)).format(r=n_rings + 1))
    return "".join(parts)


def make_truth(rng: np.random.Generator, num_compounds: int, cell_lines: Sequence[str] = ("HRCE", "VERO"),
               ) -> pd.DataFrame:
    """The hidden compound parameters, one row per (compound, cell line); columns TRUTH_COLUMNS.

    The three reference compounds come first; generated ones cycle effective / inert / toxic so every
    class appears. Potency shifts between cell lines (a line-specific EC50), as in the real screen.
    """
    if num_compounds < len(_FIXED_COMPOUNDS):
        raise ValueError(f"num_compounds must be >= {len(_FIXED_COMPOUNDS)} (the reference compounds)")
    rows = []
    for name, cls, smiles, params in _FIXED_COMPOUNDS:
        for line in cell_lines:
            emax, ec50, hill = params.get(line, (0.0, math.nan, math.nan))
            rows.append((name, line, cls, emax, ec50, hill, math.nan, math.nan, smiles))
    classes = ("effective", "inert", "toxic")
    for i in range(num_compounds - len(_FIXED_COMPOUNDS)):
        name, cls, smiles = f"SYN-{i + 1:03d}", classes[i % 3], _random_smiles(rng)
        ec50 = 10 ** rng.uniform(-1.3, 0.5)
        hill = rng.uniform(0.9, 2.5)
        tox_ec50 = 10 ** rng.uniform(0.3, 1.2)
        tox_hill = rng.uniform(1.5, 3.0)
        for line in cell_lines:
            shift = 10 ** rng.normal(0.2, 0.35)  # cell-line potency difference
            if cls == "effective":
                rows.append((name, line, cls, rng.uniform(0.7, 1.0), ec50 * shift, hill, math.nan, math.nan,
                             smiles))
            elif cls == "toxic":
                rows.append((name, line, cls, 0.0, math.nan, math.nan, tox_ec50 * shift, tox_hill, smiles))
            else:
                rows.append((name, line, cls, 0.0, math.nan, math.nan, math.nan, math.nan, smiles))
    return pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))


def _hill(conc: np.ndarray, ec50: float, hill: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.power(np.maximum(conc, 0.0) / ec50, hill)
    return np.nan_to_num(ratio / (1.0 + ratio))


def _truth_row(truth: pd.DataFrame, treatment: str, cell_type: str) -> pd.Series:
    rows = truth[(truth["treatment"] == treatment) & (truth["cell_type"] == cell_type)]
    if len(rows) != 1:
        raise KeyError(f"no hidden truth for treatment {treatment!r} in cell line {cell_type!r}")
    return rows.iloc[0]


def hidden_efficacy(truth: pd.DataFrame, treatment: str, cell_type: str,
                    conc_uM: float | np.ndarray) -> float | np.ndarray:
    """Antiviral efficacy in [0, 1] the images were drawn with: emax * c^h / (ec50^h + c^h).

    0 is the Active phenotype, 1 a full rescue to Mock. A site's infection level is 1 - efficacy.
    """
    row = _truth_row(truth, treatment, cell_type)
    conc = np.asarray(conc_uM, dtype=np.float64)
    value = np.zeros_like(conc) if row["emax"] == 0 else row["emax"] * _hill(conc, row["ec50_uM"], row["hill"])
    return float(value) if value.ndim == 0 else value


def hidden_toxicity(truth: pd.DataFrame, treatment: str, cell_type: str,
                    conc_uM: float | np.ndarray) -> float | np.ndarray:
    """Toxicity level in [0, 1] the images were drawn with (0 for non-toxic compounds)."""
    row = _truth_row(truth, treatment, cell_type)
    conc = np.asarray(conc_uM, dtype=np.float64)
    toxic = not math.isnan(row["tox_ec50_uM"])
    value = _hill(conc, row["tox_ec50_uM"], row["tox_hill"]) if toxic else np.zeros_like(conc)
    return float(value) if value.ndim == 0 else value


# ----------------------------------------------------------------------------------------------------------
# Plate maps and writing

_INNER_WELLS = tuple(f"{r}{c:02d}" for r in "BCDEFGHIJKLMNO" for c in range(2, 24))
_EDGE_WELLS = tuple(f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)
                    if r in "AP" or c in (1, 24))


def _plate_wells(rng: np.random.Generator, n: int) -> list[str]:
    """n wells of a 384-well plate in random positions, inner wells first (edges only when needed)."""
    if n > 384:
        raise ValueError(f"a 384-well plate holds at most 384 wells, asked for {n}")
    inner = list(rng.permutation(_INNER_WELLS))
    return (inner + list(rng.permutation(_EDGE_WELLS)))[:n]


def _seed(*keys: int) -> np.random.Generator:
    """Independent streams per (screen, plate, well, site): any site renders alone, in any order."""
    return np.random.default_rng(np.random.SeedSequence(list(keys)))


def _atomic_write(path: pathlib.Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def png_bytes(channel: np.ndarray) -> bytes:
    """A grayscale PNG (8 or 16 bit) of a 2-D uint8 / uint16 array."""
    buf = io.BytesIO()
    Image.fromarray(channel).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _save_png(path: pathlib.Path, channel: np.ndarray) -> None:
    data = png_bytes(channel)
    _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def image_path(root: pathlib.Path, experiment: str, plate: int, well: str, site: int, channel: int,
               ) -> pathlib.Path:
    """Where a site's channel goes in the screen folder `root` (the official layout under images/)."""
    return pathlib.Path(rxrx_image_path(str(pathlib.Path(root) / "images"), experiment, plate, well, site, channel))


def _prepare(out_dir: str | os.PathLike, params: dict) -> tuple[pathlib.Path, bool]:
    """True when `out_dir` already holds this exact, complete screen; refuses one made with other parameters."""
    root = pathlib.Path(out_dir)
    stamp = root / "synthetic.json"
    if stamp.exists():
        if stamp.read_text() != _stamp_text(params):
            raise ValueError(f"{root} holds a synthetic screen made with other parameters; use a new dir")
        return root, (root / "metadata.csv").exists()
    return root, False


def _stamp_text(params: dict) -> str:
    return json.dumps({"format_version": _FORMAT_VERSION, **params}, sort_keys=True, indent=1)


def _claim(root: pathlib.Path, params: dict) -> None:
    """Mark `root` as this screen's, once its whole design is built: a refused call leaves nothing behind."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "synthetic.json"
    if not stamp.exists():
        _atomic_write(stamp, lambda tmp: tmp.write_text(_stamp_text(params)))


def _write_sites(root: pathlib.Path, records: Sequence[dict], render) -> None:
    """Renders and writes every site whose channel files are not all present yet."""
    for rec in records:
        paths = [image_path(root, rec["experiment"], rec["plate"], rec["well"], rec["site"], ch + 1)
                 for ch in range(rec["_channels"])]
        if all(p.exists() for p in paths):
            continue
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        img = render(rec)
        for ch, path in enumerate(paths):
            if not path.exists():
                _save_png(path, np.ascontiguousarray(img[..., ch]))


def _write_table(path: pathlib.Path, frame: pd.DataFrame) -> None:
    _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_rxrx19a(out_dir: str | os.PathLike, *, seed: int = 0, image_size: int = 64,
                  plates_per_cell_line: int = 2, plates_per_experiment: int = 2, sites_per_well: int = 2,
                  num_compounds: int = 8, control_wells_per_plate: tuple[int, int, int, int] = (6, 3, 6, 2),
                  bit_depth: int = 8, morphology_only: bool = False, phenotype_strength: float = 1.0,
                  cell_density: float = 1.0) -> pathlib.Path:
    """Writes an RxRx19a-like screen (images, metadata.csv, truth.csv) and returns its directory.

    Each plate holds every compound at the six DOSES_UM plus `control_wells_per_plate` = (Mock, UV, Active,
    blank) wells, in a random layout. HRCE and VERO get their own experiments (`HRCE-1`, `HRCE-2`, ... of
    `plates_per_experiment` plates each). metadata.csv is written last: a directory holding it is complete,
    and a rerun with the same parameters returns at once; an interrupted run resumes where it stopped.

    Harder test beds, each off at its default: `morphology_only` rank-matches every channel of every site to
    one `reference_histogram` per channel (shared by all conditions, plates and lines), so only shape,
    arrangement and texture tell conditions apart; `phenotype_strength` in (0, 1] scales every site's
    infection and toxicity level (the infection phenotype and the compound effects; truth.csv keeps the
    relative efficacy); `cell_density` in (0, 1] scales each cell line's cells per site.
    """
    options = dict(morphology_only=morphology_only, phenotype_strength=phenotype_strength, cell_density=cell_density)
    params = dict(kind="rxrx19a", seed=seed, image_size=image_size, plates_per_cell_line=plates_per_cell_line,
                  plates_per_experiment=plates_per_experiment, sites_per_well=sites_per_well,
                  num_compounds=num_compounds, control_wells_per_plate=list(control_wells_per_plate),
                  bit_depth=bit_depth, **{k: v for k, v in options.items() if v != _TEST_BED_DEFAULTS[k]})
    _check_common(image_size, bit_depth, sites_per_well, plates_per_cell_line, plates_per_experiment)
    for name in ("phenotype_strength", "cell_density"):
        if not 0.0 < options[name] <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {options[name]!r}")
    root, done = _prepare(out_dir, params)
    if done:
        return root
    lines = ("HRCE", "VERO")
    truth = make_truth(_seed(seed, 19, 0), num_compounds, lines)
    controls = [(cond, n) for cond, n in zip((MOCK, UV_INACTIVATED, ACTIVE, BLANK), control_wells_per_plate)]
    records = []
    for li, line in enumerate(lines):
        line_truth = truth[truth["cell_type"] == line]
        conditions = [dict(disease_condition=cond, treatment="", treatment_conc=math.nan, SMILES="",
                           infection=CONDITION_INFECTION[cond], toxicity=0.0)
                      for cond, n in controls for _ in range(n)]
        for row in line_truth.itertuples():
            efficacy = hidden_efficacy(truth, row.treatment, line, np.array(DOSES_UM))
            toxicity = hidden_toxicity(truth, row.treatment, line, np.array(DOSES_UM))
            for conc, eff, tox in zip(DOSES_UM, efficacy, toxicity):
                conditions.append(dict(disease_condition=ACTIVE, treatment=row.treatment, treatment_conc=conc,
                                       SMILES=row.SMILES, infection=1.0 - float(eff), toxicity=float(tox)))
        for pi in range(plates_per_cell_line):
            experiment = f"{line}-{pi // plates_per_experiment + 1}"
            plate = pi % plates_per_experiment + 1
            plate_rng = _seed(seed, 19, 1, li, pi)
            effects = sample_plate_effects(plate_rng, len(RXRX1_STAINS))
            for wi, (well, cond) in enumerate(zip(_plate_wells(plate_rng, len(conditions)), conditions)):
                # Well-to-well biology: virus dose (MOI) and seeding vary a little between wells.
                well_rng = _seed(seed, 19, 2, li, pi, wi)
                infection = float(np.clip(cond["infection"] * phenotype_strength * np.exp(well_rng.normal(0, 0.08)),
                                          0, 1))
                for site in range(1, sites_per_well + 1):
                    records.append(dict(
                        site_id=f"{experiment}_{plate}_{well}_{site}", well_id=f"{experiment}_{plate}_{well}",
                        cell_type=line, experiment=experiment, plate=plate, well=well, site=site,
                        disease_condition=cond["disease_condition"], treatment=cond["treatment"],
                        treatment_conc=cond["treatment_conc"], SMILES=cond["SMILES"], _line=line,
                        _infection=infection, _toxicity=cond["toxicity"] * phenotype_strength, _effects=effects,
                        _key=(seed, 19, 3, li, pi, wi, site), _channels=len(RXRX19A_STAINS)))

    cells = {line: dataclasses.replace(CELL_LINES[line], density=CELL_LINES[line].density * cell_density)
             for line in lines}
    histogram = (reference_histogram(seed, lines, image_size=image_size, stains=RXRX19A_STAINS, bit_depth=bit_depth)
                 if morphology_only else None)

    def render(rec: dict) -> np.ndarray:
        return render_site(_seed(*rec["_key"]), cells[rec["_line"]], image_size=image_size, stains=RXRX19A_STAINS,
                           infection=rec["_infection"], toxicity=rec["_toxicity"], plate=rec["_effects"],
                           bit_depth=bit_depth, histogram=histogram)

    _claim(root, params)
    _write_sites(root, records, render)
    _write_table(root / "truth.csv", truth)
    _write_table(root / "metadata.csv", _metadata(records, RXRX19A_COLUMNS))
    return root


RXRX1_CELL_LINES = ("HEPG2", "HUVEC", "RPE", "U2OS")
_NEGATIVE_SIRNA_ID = 1138
_POSITIVE_SIRNA_ID0 = 1108
# Morphology parameters an siRNA knock-down can move, and how far (log-scale sd; positives 2.5x more).
_KNOCKDOWN_TARGETS = ("density", "length", "aspect", "nucleus", "irregularity", "fibres")


def _knockdown(rng: np.random.Generator, strength: float) -> dict[str, float]:
    """An siRNA's phenotype: multiplicative changes to two morphology parameters and one stain."""
    targets = rng.choice(_KNOCKDOWN_TARGETS, size=2, replace=False)
    effect = {str(t): float(np.exp(rng.normal(0.0, strength))) for t in targets}
    effect["stain:" + str(rng.choice(RXRX1_STAINS))] = float(np.exp(rng.normal(0.0, strength)))
    return effect


def _apply_knockdown(line: CellLine, effect: Mapping[str, float]) -> CellLine:
    changes = {k: getattr(line, k) * f for k, f in effect.items() if not k.startswith("stain:")}
    if "aspect" in changes:
        changes["aspect"] = max(1.0, changes["aspect"])
    brightness = dict(line.brightness)
    for k, f in effect.items():
        if k.startswith("stain:"):
            brightness[k[6:]] = brightness.get(k[6:], 1.0) * f
    return dataclasses.replace(line, brightness=brightness, **changes)


def write_rxrx1(out_dir: str | os.PathLike, *, seed: int = 0, image_size: int = 64,
                plates_per_cell_line: int = 1, plates_per_experiment: int = 4, sites_per_well: int = 2,
                num_sirnas: int = 8, num_positive_controls: int = 2, negative_control_wells: int = 4,
                bit_depth: int = 8) -> pathlib.Path:
    """Writes an RxRx1-like 6-stain siRNA set of HEPG2, HUVEC, RPE and U2OS cells (metadata.csv, images).

    Each plate holds every siRNA and positive control once plus `negative_control_wells` EMPTY wells.
    Experiments are `HEPG2-01`, ...; same resumable, atomic writing as `write_rxrx19a`.
    """
    params = dict(kind="rxrx1", seed=seed, image_size=image_size, plates_per_cell_line=plates_per_cell_line,
                  plates_per_experiment=plates_per_experiment, sites_per_well=sites_per_well,
                  num_sirnas=num_sirnas, num_positive_controls=num_positive_controls,
                  negative_control_wells=negative_control_wells, bit_depth=bit_depth)
    _check_common(image_size, bit_depth, sites_per_well, plates_per_cell_line, plates_per_experiment)
    root, done = _prepare(out_dir, params)
    if done:
        return root
    design = _seed(seed, 1, 0)
    names = design.choice(np.arange(10000, 30000), size=num_sirnas + num_positive_controls, replace=False)
    wells = [dict(well_type="treatment", sirna=f"s{names[i]}", sirna_id=i, effect=_knockdown(design, 0.15))
             for i in range(num_sirnas)]
    wells += [dict(well_type="positive_control", sirna=f"s{names[num_sirnas + i]}",
                   sirna_id=_POSITIVE_SIRNA_ID0 + i, effect=_knockdown(design, 0.4))
              for i in range(num_positive_controls)]
    wells += [dict(well_type="negative_control", sirna="EMPTY", sirna_id=_NEGATIVE_SIRNA_ID, effect={})
              for _ in range(negative_control_wells)]
    records = []
    for li, line in enumerate(RXRX1_CELL_LINES):
        for pi in range(plates_per_cell_line):
            experiment = f"{line}-{pi // plates_per_experiment + 1:02d}"
            plate = pi % plates_per_experiment + 1
            plate_rng = _seed(seed, 1, 1, li, pi)
            effects = sample_plate_effects(plate_rng, len(RXRX1_STAINS))
            for wi, (well, w) in enumerate(zip(_plate_wells(plate_rng, len(wells)), wells)):
                for site in range(1, sites_per_well + 1):
                    records.append(dict(
                        site_id=f"{experiment}_{plate}_{well}_{site}", well_id=f"{experiment}_{plate}_{well}",
                        cell_type=line, dataset="train", experiment=experiment, plate=plate, well=well,
                        site=site, well_type=w["well_type"], sirna=w["sirna"], sirna_id=w["sirna_id"],
                        _line=_apply_knockdown(CELL_LINES[line], w["effect"]), _effects=effects,
                        _key=(seed, 1, 3, li, pi, wi, site), _channels=len(RXRX1_STAINS)))

    def render(rec: dict) -> np.ndarray:
        return render_site(_seed(*rec["_key"]), rec["_line"], image_size=image_size, stains=RXRX1_STAINS,
                           plate=rec["_effects"], bit_depth=bit_depth)

    _claim(root, params)
    _write_sites(root, records, render)
    _write_table(root / "metadata.csv", _metadata(records, RXRX1_COLUMNS))
    return root


# A compound screen in a CellProfiler user's own terms: the foreign screen the generic and OME-Zarr readers, and
# the screen schema, are tested on. Its channels (the user's names) are drawn as these stains.
CELL_PAINTING_CHANNELS = {"DNA": "Hoechst", "Actin": "Phalloidin", "RNA": "Syto14"}
CELL_PAINTING_DOSES_UM = (0.1, 0.3, 1.0)
_CELL_PAINTING_WELLS = (("DMSO", 0.0, 1.0),) * 3 + (("staurosporine", 1.0, 0.0),) * 2 + tuple(
    ("cpd-7", dose, 1.0 - efficacy) for dose, efficacy in zip(CELL_PAINTING_DOSES_UM, (0.25, 0.6, 0.9)))


def write_cell_painting(out_dir: str | os.PathLike, *, seed: int = 0, image_size: int = 32, plates: int = 3,
                        sites_per_well: int = 2, layout: str = "csv") -> pathlib.Path:
    """Writes a small 16-bit, 3-channel compound screen with CellProfiler-style metadata; returns its directory.

    Each plate (P1, P2, ...; U2OS cells) holds 3 DMSO wells (the negative control: the disease phenotype, drawn
    as infection), 2 wells of a positive-control compound that reverses it (staurosporine, 1 µM) and one
    compound, cpd-7, at CELL_PAINTING_DOSES_UM reversing it by 25 %, 60 % and 90 %, in a random layout.
    `layout` "csv": 16-bit TIFFs `images/{plate}_{well}_s{site}_{channel}.tif` and `metadata.csv` (one row per
    site: Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_Compound, Metadata_Dose_uM, Metadata_CellLine,
    Metadata_Note (blank but for edge wells), FileName_DNA / _Actin / _RNA relative to it): data.kind=generic.
    "ome_zarr": one HCS plate `{plate}.zarr` per plate (OMERO channel labels, fields = sites) and the plate map
    `metadata.csv` (one row per well: plate, well and the Metadata_ columns): data.kind=ome_zarr.
    metadata.csv is written last: a directory holding it is complete.
    """
    if layout not in ("csv", "ome_zarr"):
        raise ValueError(f"layout must be 'csv' or 'ome_zarr', got {layout!r}")
    params = dict(kind="cell_painting", seed=seed, image_size=image_size, plates=plates,
                  sites_per_well=sites_per_well, layout=layout)
    _check_common(image_size, 16, sites_per_well, plates, 1)
    root, done = _prepare(out_dir, params)
    if done:
        return root
    stains = tuple(CELL_PAINTING_CHANNELS.values())
    wells, sites = [], {}
    for pi in range(plates):
        plate, plate_rng = f"P{pi + 1}", _seed(seed, 27, pi)
        effects = sample_plate_effects(plate_rng, len(RXRX1_STAINS))
        for wi, (well, (compound, dose, infection)) in enumerate(
                zip(_plate_wells(plate_rng, len(_CELL_PAINTING_WELLS)), _CELL_PAINTING_WELLS)):
            wells.append(dict(plate=plate, well=well, Metadata_Compound=compound, Metadata_Dose_uM=dose,
                              Metadata_CellLine="U2OS", Metadata_Note="edge" if well in _EDGE_WELLS else ""))
            for site in range(1, sites_per_well + 1):
                sites[plate, well, site] = render_site(_seed(seed, 27, pi, wi, site), "U2OS", image_size=image_size,
                                                       stains=stains, infection=infection, plate=effects,
                                                       bit_depth=16)
    _claim(root, params)
    plate_map = pd.DataFrame(wells)
    if layout == "csv":
        table = _write_tiffs(root, plate_map, sites)
    else:
        _write_plates(root, plate_map, sites)
        table = plate_map
    _write_table(root / "metadata.csv", table)
    return root


def _write_tiffs(root: pathlib.Path, plate_map: pd.DataFrame, sites: Mapping) -> pd.DataFrame:
    """One 16-bit TIFF per channel of every site; the per-site table in CellProfiler's names."""
    import tifffile

    (root / "images").mkdir(exist_ok=True)
    rows = []
    for (plate, well, site), image in sites.items():
        files = {}
        for c, channel in enumerate(CELL_PAINTING_CHANNELS):
            files[f"FileName_{channel}"] = f"images/{plate}_{well}_s{site}_{channel}.tif"
            plane = np.ascontiguousarray(image[..., c])
            _atomic_write(root / files[f"FileName_{channel}"], lambda tmp, plane=plane: tifffile.imwrite(tmp, plane))
        well_row = plate_map[(plate_map["plate"] == plate) & (plate_map["well"] == well)].iloc[0]
        rows.append(dict(Metadata_Plate=plate, Metadata_Well=well, Metadata_Site=site,
                         **{k: well_row[k] for k in plate_map.columns if k.startswith("Metadata_")}, **files))
    return pd.DataFrame(rows)


def _write_plates(root: pathlib.Path, plate_map: pd.DataFrame, sites: Mapping) -> None:
    """One OME-Zarr HCS plate per plate, written with ome-zarr-py: fields are sites, channels OMERO-labelled."""
    import zarr
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    window = {"min": 0, "max": 65535, "start": 0, "end": 65535}
    omero = {"channels": [{"label": name, "color": "FFFFFF", "window": window} for name in CELL_PAINTING_CHANNELS]}
    for plate, wells in plate_map.groupby("plate", sort=True):
        group = zarr.open_group(str(root / f"{plate}.zarr"), mode="w")
        names = [(w[0], w[1:]) for w in wells["well"]]
        write_plate_metadata(group, sorted({r for r, _ in names}), sorted({c for _, c in names}),
                             [f"{r}/{c}" for r, c in names], field_count=max(k[2] for k in sites), name=plate)
        for (row, column), well in zip(names, wells["well"]):
            well_group = group.require_group(row).require_group(column)
            fields = sorted(site for (p, w, site) in sites if (p, w) == (plate, well))
            write_well_metadata(well_group, [str(f - 1) for f in fields])
            for f in fields:
                write_image(np.moveaxis(sites[plate, well, f], -1, 0), well_group.require_group(str(f - 1)),
                            axes="cyx", scale_factors=(), omero=omero)


def _check_size_depth(image_size: int, bit_depth: int) -> None:
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size must be in 16..1024, got {image_size}")
    if bit_depth not in _OUTPUT_SCALE:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")


def _check_common(image_size: int, bit_depth: int, sites_per_well: int, plates: int, per_experiment: int,
                  ) -> None:
    """Fails before anything is written, so a bad call leaves no half-made directory."""
    _check_size_depth(image_size, bit_depth)
    if min(sites_per_well, plates, per_experiment) < 1:
        raise ValueError("sites_per_well, plates_per_cell_line and plates_per_experiment must be >= 1")


def _metadata(records: Sequence[dict], columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame([{c: r[c] for c in columns} for r in records], columns=list(columns))
    return frame.sort_values(["experiment", "plate", "well", "site"], kind="stable").reset_index(drop=True)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: python -m gandl.data.synthetic --out DIR --kind rxrx19a|rxrx1|cell_painting [--image_size 64] [--demo]
    [--morphology_only] [--phenotype_strength 0.3] [--cell_density 0.5]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--kind", choices=("rxrx19a", "rxrx1", "cell_painting"), default="rxrx19a")
    parser.add_argument("--layout", choices=("csv", "ome_zarr"), default="csv", help="cell_painting only")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--bit_depth", type=int, choices=(8, 16), default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plates_per_cell_line", type=int)
    parser.add_argument("--sites_per_well", type=int)
    parser.add_argument("--num_compounds", type=int, help="rxrx19a only")
    parser.add_argument("--demo", action="store_true", help="rxrx19a: the demo size, DEMO_RXRX19A")
    parser.add_argument("--morphology_only", action="store_true", help="rxrx19a: one intensity histogram per channel")
    parser.add_argument("--phenotype_strength", type=float, help="rxrx19a: in (0, 1], scales infection and compounds")
    parser.add_argument("--cell_density", type=float, help="rxrx19a: in (0, 1], scales the cells per site")
    args = parser.parse_args(argv)
    test_bed = {k: v for k, v in (("morphology_only", args.morphology_only or None),
                                  ("phenotype_strength", args.phenotype_strength),
                                  ("cell_density", args.cell_density)) if v is not None}
    if args.kind != "rxrx19a" and (args.num_compounds is not None or args.demo or test_bed):
        parser.error("--num_compounds, --demo and the test-bed options apply to --kind rxrx19a only")
    if args.kind == "cell_painting":
        print(write_cell_painting(args.out, seed=args.seed, image_size=args.image_size, layout=args.layout,
                                  **{k: getattr(args, k) for k in ("sites_per_well",) if getattr(args, k)}))
        return
    kwargs = dict(DEMO_RXRX19A) if args.demo and args.kind == "rxrx19a" else {}
    kwargs.update(seed=args.seed, image_size=args.image_size, bit_depth=args.bit_depth, **test_bed)
    for name in ("plates_per_cell_line", "sites_per_well", "num_compounds"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    writer = write_rxrx19a if args.kind == "rxrx19a" else write_rxrx1
    print(writer(args.out, **kwargs))


if __name__ == "__main__":
    main()
