"""Analysis of embeddings: control classification, E²/C² spaces, efficacy, dose-response, zero-shot.

Modules: `io` (npz loading, site_id joins, well means), `classify` (normalisation, plate-grouped linear
SVMs, Table 1), `spaces` (on/off-perturbation axes), `efficacy` (scores, Hill fits, hit table),
`zeroshot` (cell typing), `baselines` (published embeddings, handcrafted features), `plots` (Figures
3-6) and `report` (`analyze`: everything, for any number of feature sets, into one report folder).
"""
