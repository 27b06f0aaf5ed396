"""The screen vocabulary: column names, condition strings, stains and file layout of RxRx-style screens.

One TensorFlow-free home for the names that the readers (`gandl.data.rxrx`), the synthetic screen
(`gandl.data.synthetic`) and the analysis share, so a spelling is defined once.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

# The official metadata columns, in the order the releases list them.
RXRX19A_COLUMNS = ("site_id", "well_id", "cell_type", "experiment", "plate", "well", "site",
                   "disease_condition", "treatment", "treatment_conc", "SMILES")
RXRX1_COLUMNS = ("site_id", "well_id", "cell_type", "dataset", "experiment", "plate", "well", "site",
                 "well_type", "sirna", "sirna_id")
# What the readers need (image paths, control roles, doses); every other column is kept when present.
RXRX19A_REQUIRED = ("site_id", "cell_type", "experiment", "plate", "well", "site", "disease_condition",
                    "treatment", "treatment_conc")
RXRX1_REQUIRED = ("site_id", "cell_type", "experiment", "plate", "well", "site")
RXRX1_LABEL = "cell_type"  # the zero-shot set's class: an RxRx1-shaped set names its cell type so

# Disease conditions, spelled exactly as in RxRx19a.
MOCK = "Mock"
UV_INACTIVATED = "UV Inactivated SARS-CoV-2"
ACTIVE = "Active SARS-CoV-2"
BLANK = ""  # wells with no disease condition: a category of their own, never merged into another
CONDITIONS = (MOCK, UV_INACTIVATED, ACTIVE, BLANK)

# Stains per channel (w1, w2, ...). Channel maps between screens are derived from these names.
STAINS = {
    "rxrx19a": ("Hoechst", "ConA", "Phalloidin", "Syto14", "WGA"),
    "rxrx1": ("Hoechst", "ConA", "Phalloidin", "Syto14", "MitoTracker", "WGA"),
}
NUCLEAR_STAINS = ("Hoechst", "DNA", "DAPI", "DRAQ5")  # stain names whose mean intensity tracks the cell count
STAIN_TARGETS = {
    "Hoechst": "nuclei (DNA)", "ConA": "endoplasmic reticulum", "Phalloidin": "actin",
    "Syto14": "nucleoli and cytoplasmic RNA", "MitoTracker": "mitochondria",
    "WGA": "Golgi and plasma membrane",
}


def channel_map(source: str, target: str) -> tuple[int, ...]:
    """1-based channels of `source` that feed each channel of `target`, matched by stain.

    RxRx1 -> RxRx19a gives (1, 2, 3, 4, 6): MitoTracker (w5) has no counterpart and WGA moves w6 -> w5.
    """
    src = STAINS[source]
    missing = [s for s in STAINS[target] if s not in src]
    if missing:
        raise ValueError(f"{source} has no channel for the {target} stains {missing}")
    return tuple(src.index(s) + 1 for s in STAINS[target])


def zeroshot_channels(channels: Sequence[int]) -> tuple[int, ...]:
    """The zero-shot (RxRx1) set's channels that feed the model's: `zeroshot.channels`, or by default the stain
    match RxRx1 -> RxRx19a, (1, 2, 3, 4, 6)."""
    return tuple(channels) or channel_map("rxrx1", "rxrx19a")


def image_path(images_dir: str, experiment: str, plate: int, well: str, site: int, channel: int) -> str:
    """The official RxRx file name of one channel of one site, under the screen's `images/` folder."""
    return posixpath.join(str(images_dir), experiment, f"Plate{plate}", f"{well}_s{site}_w{channel}.png")
