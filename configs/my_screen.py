"""Your own screen: a CSV of image paths and metadata in its own column names, with the demo's model.

  python -m gandl.data.synthetic --out /tmp/my_screen --kind cell_painting   # an example screen to try it on
  gandl --config configs/my_screen.py --workdir /tmp/my_run --mode check

The lines marked "yours" describe the example screen (`gandl.data.synthetic.layouts.write_cell_painting`: 3 plates of
U2OS cells, 3 channels of 16-bit TIFFs, DMSO against staurosporine and one compound at three doses, in
CellProfiler's column names); edit them for your screen, or override them on the command line
(--config.data.root=/data/screen.csv). docs/your_screen.md walks through every field.
"""

import os

import ml_collections

from gandl.defaults import call_in_file


def get_config() -> ml_collections.ConfigDict:
    config = call_in_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"), "get_config")
    config.data.update(
        kind="generic",  # a CSV with one image-path column per channel (paths relative to it, or absolute)
        root="/tmp/my_screen/metadata.csv",  # yours
        channel_columns=("FileName_DNA", "FileName_Actin", "FileName_RNA"),  # yours: the image-path columns
        stains=("DNA", "Actin", "RNA"),  # yours: what each channel shows (default: the column names)
        image_size=32,  # sites are area-downscaled to this (a whole factor of yours; the model's side too)
    )
    config.model.num_channels = 3  # = the number of channel columns (or of data.channels, when it picks some)
    config.zeroshot.enabled = False  # zero-shot cell typing reads an RxRx1-layout set into a 5-channel model
    config.screen.update(  # which of your columns mean what (gandl.data.screen.ScreenSchema)
        preset="generic",
        plate="Metadata_Plate", well="Metadata_Well", site="Metadata_Site",  # yours: site_id / well_id from them
        group="Metadata_CellLine",  # yours: the biological group (cell line); None for one group
        perturbation="Metadata_Compound", dose="Metadata_Dose_uM",  # yours
        viability="",  # yours: a per-site cell count (e.g. "Count_Nuclei"): cytotoxic doses are never hits
        negative="Metadata_Compound == 'DMSO'",  # yours: the untreated reference (vehicle)
        positive="Metadata_Compound == 'staurosporine'",  # yours: the phenotype a perfect hit reaches
        # Yours: which perturbed wells are treatments, when some are neither control nor treatment (e.g.
        # "Metadata_Virus != 'UV'"); those are left out of compounds, hits and mAP. "" = every perturbed non-control.
        treated="",
        negative_name="DMSO", positive_name="staurosporine",  # yours: how reports call them
    )
    # The demo's model, trained for 1,000 steps; the probe (train.probe_every, it reads your controls) is off: quicker.
    config.train.update(steps=1000, probe_every=0, checkpoint_every=500, sample_every=500, swd_every=0)
    return config
