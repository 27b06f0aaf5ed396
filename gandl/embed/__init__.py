"""Checkpoint + dataset -> embeddings.npz, profiles.parquet and .h5ad, and well profiles (gandl.profiles).

The feature functions come from `gandl.features` (the GAN-DL embedding, baselines, comparators). Modules:
`stage` (the mode: `run`), `stream` (one pass of the eval pipeline through several feature sets, written as
resumable parts), `records` (what an export depends on, `export.json`, and each set's completion record),
`writers` (parts gathered into the final files) and `folds` (per-fold exports of label-fitted sets).
"""

from gandl.embed.folds import export_folds
from gandl.embed.records import SETTINGS, ExportError, completion_record, export_settings
from gandl.embed.stage import code_version, restore_discriminator, run
from gandl.embed.stream import export, lazy, part_path
from gandl.embed.writers import gather, npz_bytes

__all__ = ["SETTINGS", "ExportError", "code_version", "completion_record", "export", "export_folds",
           "export_settings", "gather", "lazy", "npz_bytes", "part_path", "restore_discriminator", "run"]
