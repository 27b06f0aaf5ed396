"""Analysis of embeddings: control classification, E²/C² spaces, efficacy, dose-response, zero-shot.

Modules: `io` (npz loading, site_id joins, well means, control roles), `classify` (normalisation,
plate-grouped linear SVMs, Table 1), `spaces` (on/off-perturbation axes), `efficacy` (scores, Hill fits,
hit table), `activity` (copairs mAP), `zeroshot` (cell typing), `baselines` (RxRx19a's published
embeddings; extractors computed from images live in `gandl.features`), `calibration` (null screens),
`plots` (Figures 3-6), `markup` (markdown / HTML rendering), `tasks` (the task lists) and `report`
(`analyze`: every task, for any number of feature sets, into one report folder).
"""
