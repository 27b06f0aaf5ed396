"""Procedural fluorescence screens: GAN-DL's embedded default data set and the project's test data.

Three screens are written in on-disk layouts the readers know, so every reader, converter and analysis runs
on them unchanged (`layouts`):

* ``write_rxrx19a``: an RxRx19a-like SARS-CoV-2 screen (HRCE and VERO cells, 5 stains) with Mock / UV /
  Active controls, blank wells and compounds at six half-log doses whose antiviral efficacy follows a
  hidden Hill curve (``truth.csv``; the model is `truth`, ``hidden_efficacy``). The analysis must recover it.
* ``write_rxrx1``: an RxRx1-like 6-stain siRNA set of four other cell lines (HEPG2, HUVEC, RPE, U2OS) for
  zero-shot cell typing; the five stains it shares with RxRx19a are rendered by the same code.
* ``write_cell_painting``: a small 16-bit compound screen in a CellProfiler user's own names (per-site TIFFs
  or OME-Zarr plates), the foreign screen the generic readers are tested on.

Images are drawn, not sampled from noise (`cells`): each site places cells on a jittered lattice, gives every
pixel to its nearest cell (an anisotropic Voronoi partition, which makes confluent cobblestones and free
spindle cells from one rule) and paints each stain from the pixel's coordinates in its cell's frame (nucleus
with chromatin spots, perinuclear reticular ER, cortical actin and stress fibres along the cell axis, nucleoli
and cytoplasmic RNA, membranes and a Golgi blob, filamentous mitochondria). Every length is in field-of-view
units, so a site renders at any resolution. Plate batch effects (per-channel gain and offset, a vignetting
field), per-cell variability and shot noise are the nuisance an analysis must cope with.

Phenotypes (per site, from two levels in [0, 1]):
  infection  Mock/blank 0, UV 0.12, Active 1, compound 1 - efficacy(dose). Infected cells (70 % of cells at
             level 1) carry bright cytoplasmic Syto14 puncta, round up and lose their stress fibres, and the
             site loses up to 40 % of its cells.
  toxicity   a second hidden Hill curve for toxic compounds: up to 75 % fewer cells, and up to 70 % of the
             rest apoptotic (small bright condensed nuclei, shrunken cells), so the Hoechst mean falls.
             Toxic compounds are inert (emax 0); ``cytotoxic_mimicry`` lets them shed the infection phenotype
             as they kill, ``toxic_fraction`` makes more of them: the false hits a hit call must reject.

Sizes: the defaults (``write_rxrx19a(dir, image_size=32)``: 2 cell lines x 2 plates x 65 wells x 2 sites =
520 sites) suit unit tests. The demo screen is ``DEMO_RXRX19A`` (4 plates per line, 24 compounds, 3 sites:
~4,500 sites; ``python -m gandl.data.synthetic --out DIR --kind rxrx19a --demo``, the CLI in `cli`).

The modules are imported one by one: the truth model loads without the drawing code, for the analysis.
"""
