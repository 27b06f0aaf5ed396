"""Drawing one site: cell lines, plate nuisance, cells placed and painted stain by stain, then the microscope.

Every length is in field-of-view units (the image side is 1), so a site renders at any resolution; all
randomness of a site comes from the one generator it is given (`keyed_rng`), so any site renders alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from gandl.data.vocabulary import STAINS

RXRX19A_STAINS = STAINS["rxrx19a"]
RXRX1_STAINS = STAINS["rxrx1"]


def keyed_rng(*keys: int) -> np.random.Generator:
    """Independent streams per (screen, plate, well, site): any site renders alone, in any order."""
    return np.random.default_rng(np.random.SeedSequence(list(keys)))


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



def _uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return rng.uniform(lo, hi, n).astype(np.float32)


def _lognormal(rng: np.random.Generator, sd: float, n: int) -> np.ndarray:
    return np.exp(rng.normal(0.0, sd, n)).astype(np.float32)


def _lattice(rng: np.random.Generator, line: CellLine) -> tuple[np.ndarray, np.ndarray, float]:
    """Cell centres on a jittered hexagonal lattice, at random angle and shift; also the margin it covers.

    The lattice spans the FOV plus a margin of about one cell length, so cells cut by the border are drawn too.
    """
    spacing = math.sqrt(2.0 / (math.sqrt(3.0) * line.density))
    margin = line.length * 1.1
    side = 1.0 + 2.0 * margin
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
    return x + jitter_r * np.cos(jitter_a), y + jitter_r * np.sin(jitter_a), margin


def _survivors(rng: np.random.Generator, line: CellLine, x: np.ndarray, y: np.ndarray, margin: float,
               survival: float) -> tuple[np.ndarray, np.ndarray]:
    """The centres within the margin that survive (each with probability `survival`, less between colonies)."""
    keep = (x > -margin) & (x < 1.0 + margin) & (y > -margin) & (y < 1.0 + margin)
    p_keep = np.full(x.shape, survival)
    if line.colonies > 0:
        centres = rng.uniform(-0.1, 1.1, (4, 2))
        dist2 = (x[:, None] - centres[:, 0]) ** 2 + (y[:, None] - centres[:, 1]) ** 2
        colony = np.clip(np.exp(-dist2 / (2 * 0.16**2)).sum(1) * 1.5, 0.0, 1.0)
        p_keep = p_keep * ((1.0 - line.colonies) + line.colonies * colony)
    keep &= rng.uniform(0.0, 1.0, x.size) < p_keep
    return x[keep].astype(np.float32), y[keep].astype(np.float32)


def _healthy_shapes(rng: np.random.Generator, line: CellLine, n: int) -> dict[str, np.ndarray]:
    """Axis angle, size, nucleus, DNA content and fibres of `n` healthy cells, spread around the line's means."""
    site_direction = rng.uniform(0.0, math.pi)
    aligned = rng.uniform(0.0, 1.0, n) < line.alignment
    theta = np.where(aligned, site_direction + rng.normal(0.0, 0.2, n), rng.uniform(0.0, math.pi, n))
    a = line.length * _lognormal(rng, 0.15, n)
    aspect = np.maximum(1.0, line.aspect * _lognormal(rng, 0.15, n))
    nb = line.nucleus * _lognormal(rng, 0.12, n)
    na = nb * np.maximum(1.0, line.nucleus_aspect * _lognormal(rng, 0.1, n))
    dna = 1.0 + (rng.uniform(0.0, 1.0, n) < 0.35) * _uniform(rng, 0.3, 0.9, n)  # cells past S phase
    return dict(theta=theta, a=a, aspect=aspect, nb=nb, na=na, dna=dna, chromatin=np.ones(n, np.float32),
                fibres=line.fibres * _lognormal(rng, 0.25, n), ntheta=rng.normal(0.0, 0.2, n))


def _fates(rng: np.random.Generator, n: int, infection: float, toxicity: float,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each cell's viral load (0: uninfected), and whether it is apoptotic or in mitosis."""
    infected = (rng.uniform(0.0, 1.0, n) < 0.7 * infection) * _uniform(rng, 0.5, 1.3, n)
    apoptotic = rng.uniform(0.0, 1.0, n) < 0.7 * toxicity
    mitotic = ~apoptotic & (rng.uniform(0.0, 1.0, n) < 0.03)
    return infected, apoptotic, mitotic


def _with_fates(shapes: Mapping[str, np.ndarray], line: CellLine, sick: np.ndarray, apoptotic: np.ndarray,
                mitotic: np.ndarray) -> dict[str, np.ndarray]:
    """The shapes after each cell's fate; adds the half-width `b` and keeps every nucleus inside its cell."""
    a, aspect, fibres = shapes["a"], shapes["aspect"], shapes["fibres"]
    na, nb, dna, chromatin = shapes["na"], shapes["nb"], shapes["dna"], shapes["chromatin"]
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
    return {**shapes, "a": a, "b": b, "na": np.minimum(na, 0.75 * a), "nb": np.minimum(nb, 0.75 * b),
            "fibres": fibres, "dna": dna, "chromatin": chromatin}


def _outline_harmonics(rng: np.random.Generator, irregularity: float, n: int) -> np.ndarray:
    """[n, 4] cosine / sine coefficients of each outline's 2nd and 3rd harmonic (random amplitude and phase)."""
    amp2, phase2, amp3, phase3 = (_uniform(rng, 0.3, 1.0, n) * irregularity, _uniform(rng, 0, 2 * math.pi, n),
                                  _uniform(rng, 0.3, 1.0, n) * irregularity, _uniform(rng, 0, 2 * math.pi, n))
    return np.stack([amp2 * np.cos(phase2), amp2 * np.sin(phase2), amp3 * np.cos(phase3),
                     amp3 * np.sin(phase3)], axis=1).astype(np.float32)


def _stain_gains(rng: np.random.Generator, n: int, apoptotic: np.ndarray) -> np.ndarray:
    """[n, 6] per-cell stain brightness (RXRX1_STAINS order); dying cells lose RNA and mitochondrial signal."""
    stain = np.exp(rng.normal(0.0, 0.2, (n, len(RXRX1_STAINS)))).astype(np.float32)
    stain[apoptotic, RXRX1_STAINS.index("Syto14")] *= 0.5
    stain[apoptotic, RXRX1_STAINS.index("MitoTracker")] *= 0.4
    return stain


def _sample_cells(rng: np.random.Generator, line: CellLine, infection: float, toxicity: float) -> _Cells:
    """Places cells and draws their states; counts fall with infection and toxicity."""
    x, y, margin = _lattice(rng, line)
    x, y = _survivors(rng, line, x, y, margin, survival=(1.0 - 0.4 * infection) * (1.0 - 0.75 * toxicity))
    n = x.size
    healthy = _healthy_shapes(rng, line, n)
    infected, apoptotic, mitotic = _fates(rng, n, infection, toxicity)
    s = _with_fates(healthy, line, infected > 0, apoptotic, mitotic)
    nu = (_uniform(rng, -0.25, 0.25, n) * (s["a"] - s["na"])).astype(np.float32)
    nv = (_uniform(rng, -0.25, 0.25, n) * (s["b"] - s["nb"])).astype(np.float32)
    harmonics = _outline_harmonics(rng, line.irregularity, n)
    stain = _stain_gains(rng, n, apoptotic)
    tilt = rng.normal(0.0, 0.12, n)
    golgi, golgi_r = rng.uniform(0, 2 * math.pi, n), s["na"] + 0.3 * s["nb"]
    f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
    return _Cells(x=x, y=y, cos=f32(np.cos(s["theta"])), sin=f32(np.sin(s["theta"])), a=f32(s["a"]), b=f32(s["b"]),
                  nu=nu, nv=nv, na=f32(s["na"]), nb=f32(s["nb"]), ncos=f32(np.cos(s["ntheta"])),
                  nsin=f32(np.sin(s["ntheta"])), dna=f32(s["dna"]), chromatin=s["chromatin"], fibres=f32(s["fibres"]),
                  fibre_cos=f32(np.cos(tilt)), fibre_sin=f32(np.sin(tilt)),
                  fibre_phase=_uniform(rng, 0, 2 * math.pi, n), gu=f32(nu + golgi_r * np.cos(golgi)),
                  gv=f32(nv + golgi_r * np.sin(golgi)), harmonics=harmonics, infected=f32(infected), stain=stain,
                  taper=line.taper)


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

    `infection` and `toxicity` in [0, 1] set the phenotype (package docstring); `plate` adds that plate's
    batch effects (None: an ideal microscope). `histogram` ([len(stains), image_size**2], each row sorted, in
    output units; `reference_histogram`) rank-matches every channel to it: the site keeps only the order of
    its pixels, so its intensity distribution is exactly the reference's. All randomness comes from `rng`.
    """
    check_size_depth(image_size, bit_depth)
    unknown = set(stains) - set(RXRX1_STAINS)
    if unknown:
        raise ValueError(f"unknown stains {sorted(unknown)}")
    line = CELL_LINES[cell_line] if isinstance(cell_line, str) else cell_line
    cells = _sample_cells(rng, line, float(np.clip(infection, 0, 1)), float(np.clip(toxicity, 0, 1)))
    size = image_size
    fields = [("chromatin", 0.0035), ("nucleoli", 0.006), ("reticulum", 0.005), ("puncta", 0.003)]
    if "MitoTracker" in stains:
        fields.append(("mito", 0.0035))
    textures = {name: _texture(rng, size, corr) for name, corr in fields}
    signal = np.zeros((len(stains), size, size), np.float32)
    if cells.x.size:
        signal = _paint(cells, stains, size, textures)

    effects = plate or _NO_PLATE_EFFECT
    r2, tilt = _illumination(effects, size)
    out = np.empty((size, size, len(stains)), np.uint16 if bit_depth == 16 else np.uint8)
    noise = rng.standard_normal((2, len(stains), size, size), dtype=np.float32)
    psf = 0.0012 * size
    for ci, stain in enumerate(stains):
        ch = ndimage.gaussian_filter(signal[ci], psf) if psf >= 0.5 else signal[ci]
        k = RXRX1_STAINS.index(stain)
        light = (1.0 - effects.vignette[k] * r2) * tilt
        value = (ch * (_STAIN_LEVEL[stain] * line.brightness.get(stain, 1.0)) + _BACKGROUND[stain]) * light
        value = value * effects.gain[k] + effects.offset[k]
        value = value + np.sqrt(np.maximum(value, 0.0) / _PHOTONS_PER_UNIT) * noise[0, ci]
        value = value + _READ_NOISE * noise[1, ci]
        out[..., ci] = _quantise(value, bit_depth, None if histogram is None else histogram[ci], out.dtype)
    return out


def _illumination(effects: PlateEffects, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The plate's vignetting distance (squared, from its centre) and its linear tilt over the site's pixels."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (1.0 / size)
    gx, gy = coords[None, :], coords[:, None]
    cx, cy = effects.vignette_centre
    r2 = ((gx - cx) ** 2 + (gy - cy) ** 2) / 0.5
    return r2, 1.0 + effects.gradient[0] * (gx - 0.5) + effects.gradient[1] * (gy - 0.5)


def _quantise(value: np.ndarray, bit_depth: int, reference: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """Output units: scaled and rounded, or the sorted `reference` values given out in the order of `value`."""
    if reference is None:
        return np.clip(np.rint(value * _OUTPUT_SCALE[bit_depth]), 0, 2**bit_depth - 1)
    # Ranks of the unquantised values: shot and read noise leave (almost) no ties to break.
    flat = np.empty(value.size, dtype)
    flat[np.argsort(value, axis=None, kind="stable")] = reference
    return flat.reshape(value.shape)


def check_size_depth(image_size: int, bit_depth: int) -> None:
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size must be in 16..1024, got {image_size}")
    if bit_depth not in _OUTPUT_SCALE:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")


def reference_histogram(seed: int, lines: Sequence[str], *, image_size: int, stains: Sequence[str],
                        bit_depth: int = 8, sites: int = 4) -> np.ndarray:
    """One intensity histogram per channel for `render_site(histogram=...)`: [len(stains), image_size**2] sorted.

    Pooled over `sites` ideal-microscope sites of every cell line at infection 0 and 1 (their own random
    streams), so no condition, plate or line owns it; every site matched to it has these exact pixel values.
    """
    pool = [render_site(keyed_rng(seed, 19, 4, li, level, i), line, image_size=image_size, stains=stains,
                        infection=float(level), bit_depth=bit_depth)
            for li, line in enumerate(lines) for level in (0, 1) for i in range(sites)]
    pixels = np.stack(pool).reshape(-1, len(stains))
    quantiles = (np.arange(image_size * image_size) + 0.5) / (image_size * image_size)
    return np.quantile(pixels, quantiles, axis=0, method="inverted_cdf").T.astype(pool[0].dtype)



# One gather of every per-cell parameter onto the pixels it owns (one wide gather beats twenty).
_GATHERED = ("x", "y", "cos", "sin", "a", "b", "nu", "nv", "na", "nb", "ncos", "nsin", "dna", "chromatin", "fibres",
             "fibre_cos", "fibre_sin", "fibre_phase", "gu", "gv", "infected")


@dataclasses.dataclass(frozen=True)
class _Pixels:
    """Every pixel (flat, [size * size]) in its owning cell's frame, and its weight in each compartment."""

    px: float  # the pixel side, FOV units
    cell: Mapping[str, np.ndarray]  # the owner's _GATHERED parameters
    stain_gain: np.ndarray  # [6, P] the owner's stain brightness, RXRX1_STAINS order
    u: np.ndarray  # along the owner's axis, FOV units
    v: np.ndarray  # across it
    body: np.ndarray  # inside the cell (soft edge)
    membrane: np.ndarray  # on its outline or a junction with a neighbour
    cortex: np.ndarray  # the broader cortical band under the membrane
    thickness: np.ndarray  # cell height, highest at the centre
    rn: np.ndarray  # normalised distance from the nucleus centre (1 on its edge)
    nuc_edge: float  # nuclear envelope half-width
    nucleus: np.ndarray
    cytoplasm: np.ndarray
    outside_nucleus: np.ndarray  # distance outside the nucleus, FOV units
    perinuclear: np.ndarray  # fall-off away from the nucleus


def _gather(c: _Cells, owner: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The owner's parameters per pixel: _GATHERED by name, outline harmonics [4, P], stain gains [6, P]."""
    table = np.concatenate([np.stack([getattr(c, n) for n in _GATHERED], 1), c.harmonics, c.stain], 1)
    columns = np.ascontiguousarray(table[owner].T)
    return (dict(zip(_GATHERED, columns)), columns[len(_GATHERED):len(_GATHERED) + 4],
            columns[len(_GATHERED) + 4:])


def _outline_distance(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray, h: np.ndarray,
                      r: np.ndarray) -> np.ndarray:
    """Normalised distance `r` rescaled by the outline's harmonics cos(2 phi + p2), cos(3 phi + p3) (1: edge)."""
    inv = 1.0 / np.maximum(np.hypot(u / a, v / b), 1e-6)  # the pixel's polar angle, from its unit vector
    cx, sx = u / a * inv, v / b * inv
    cos2, sin2 = cx * cx - sx * sx, 2.0 * cx * sx
    cos3, sin3 = cx * (4.0 * cx * cx - 3.0), sx * (3.0 - 4.0 * sx * sx)
    return r / (1.0 + h[0] * cos2 - h[1] * sin2 + h[2] * cos3 - h[3] * sin3)


def _pixels(c: _Cells, size: int) -> _Pixels:
    """Each pixel's owner, position in the owner's frame and compartments (cell body, membrane, nucleus, ...)."""
    px = 1.0 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) * px
    ys, xs = (g.ravel() for g in np.meshgrid(coords, coords, indexing="ij"))
    k, q1, q2 = _owners(size, c)
    g, h, stain_gain = _gather(c, k)
    dx, dy = xs - g["x"], ys - g["y"]
    cos_t, sin_t = g["cos"], g["sin"]
    a, b = g["a"], g["b"]
    u = dx * cos_t + dy * sin_t
    v = dy * cos_t - dx * sin_t
    radius = np.sqrt(a * b)
    r = np.sqrt(q1)
    r_out = _outline_distance(u, v, a, b, h, r)
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

    nb, cn, sn = g["nb"], g["ncos"], g["nsin"]
    du, dv = u - g["nu"], v - g["nv"]
    rn = np.sqrt(((du * cn + dv * sn) / g["na"]) ** 2 + ((dv * cn - du * sn) / nb) ** 2)
    nuc_edge = np.maximum(0.0025, 0.5 * px)
    nucleus = _sigmoid((1.0 - rn) * nb / nuc_edge) * body
    outside_nucleus = np.maximum(rn - 1.0, 0.0) * nb
    return _Pixels(px=px, cell=g, stain_gain=stain_gain, u=u, v=v, body=body, membrane=membrane, cortex=cortex,
                   thickness=thickness, rn=rn, nuc_edge=nuc_edge, nucleus=nucleus, cytoplasm=body * (1.0 - nucleus),
                   outside_nucleus=outside_nucleus, perinuclear=np.exp(-outside_nucleus / (0.45 * b)))


@dataclasses.dataclass(frozen=True)
class _Textures:
    """The site's random fields by name, each with the contrast a pixel keeps of it (`_texture`)."""

    fields: Mapping[str, tuple[np.ndarray, float]]

    def __call__(self, name: str) -> np.ndarray:
        return self.fields[name][0].ravel()

    def fade(self, name: str, value: np.ndarray) -> np.ndarray:
        return _faded(value, self.fields[name][1])


def _hoechst(p: _Pixels, tex: _Textures) -> np.ndarray:
    """DNA: the nucleus, with chromatin spots."""
    spots = tex.fade("chromatin", _sigmoid((tex("chromatin") - 0.8) * 3.0))
    return p.nucleus * p.cell["dna"] * (0.7 + 0.6 * p.cell["chromatin"] * spots)


def _con_a(p: _Pixels, tex: _Textures) -> np.ndarray:
    """Endoplasmic reticulum: reticular, densest around the nucleus, and the nuclear envelope."""
    er = tex.fade("reticulum", np.exp(-((tex("reticulum") / 0.6) ** 2)))
    envelope = np.exp(-(((p.rn - 1.0) * p.cell["nb"] / (1.5 * p.nuc_edge)) ** 2)) * p.body
    return p.cytoplasm * p.thickness * (0.3 + 0.7 * p.perinuclear) * (0.45 + 0.9 * er) + 0.5 * envelope


def _phalloidin(p: _Pixels, tex: _Textures) -> np.ndarray:
    """Actin: the cortex and stress fibres along the cell axis."""
    g = p.cell
    across = p.v * g["fibre_cos"] - p.u * g["fibre_sin"]
    period = 0.013
    wave = 2 * math.pi * across / period + g["fibre_phase"]
    grating = _band_limited_cos(wave, period, p.px)
    # Each fibre gets its own strength (a hash of its index), so bundles vary like real ones.
    strength = np.sin(np.floor(wave / (2 * math.pi)) * 12.9898 + g["fibre_phase"] * 78.233)
    strength = 0.35 + np.abs(np.sin(strength * 43758.5453))
    along = np.clip(1.0 - (p.u / g["a"]) ** 2, 0.0, 1.0)
    fibre = (0.5 + 0.5 * grating) ** 3 * strength * along * (1.0 - 0.7 * p.nucleus)
    return 0.45 * p.cortex + p.body * (0.12 + 1.6 * g["fibres"] * fibre)


def _syto14(p: _Pixels, tex: _Textures) -> np.ndarray:
    """RNA: nucleoli, perinuclear cytoplasm, and the viral puncta of infected cells."""
    nucleoli = tex.fade("nucleoli", _sigmoid((tex("nucleoli") - 1.2) * 5.0))
    puncta = tex.fade("puncta", _sigmoid((tex("puncta") - 1.3) * 6.0))
    viral = p.cell["infected"] * p.cytoplasm * p.perinuclear * (0.35 + 4.0 * puncta)
    return p.nucleus * (0.3 + 1.5 * nucleoli) + p.cytoplasm * p.thickness * 0.45 * p.perinuclear + viral


def _mitotracker(p: _Pixels, tex: _Textures) -> np.ndarray:
    """Mitochondria: filaments in the thick cytoplasm around the nucleus."""
    mito = tex.fade("mito", np.exp(-((tex("mito") / 0.5) ** 2)))
    return p.cytoplasm * p.thickness * np.exp(-p.outside_nucleus / (0.35 * p.cell["b"])) * (0.15 + 1.2 * mito)


def _wga(p: _Pixels, tex: _Textures) -> np.ndarray:
    """Membranes and the Golgi blob beside the nucleus."""
    g = p.cell
    golgi = np.exp(-((p.u - g["gu"]) ** 2 + (p.v - g["gv"]) ** 2) / (0.6 * g["nb"]) ** 2) * p.cytoplasm
    grain = tex.fade("reticulum", _sigmoid(tex("reticulum") * 2.0))
    return p.membrane * (0.35 + 0.3 * grain) + 1.6 * golgi * (0.5 + grain) + 0.12 * p.body


_PAINTERS = {"Hoechst": _hoechst, "ConA": _con_a, "Phalloidin": _phalloidin, "Syto14": _syto14,
             "MitoTracker": _mitotracker, "WGA": _wga}


def _paint(c: _Cells, stains: Sequence[str], size: int, textures: Mapping[str, tuple[np.ndarray, float]],
           ) -> np.ndarray:
    """Stain signals [len(stains), size, size] (about 0..1.5) from the cells' geometry."""
    p, tex = _pixels(c, size), _Textures(textures)
    out = np.empty((len(stains), size * size), np.float32)
    for ci, stain in enumerate(stains):
        out[ci] = _PAINTERS[stain](p, tex) * p.stain_gain[RXRX1_STAINS.index(stain)]
    return out.reshape(len(stains), size, size)
