"""False hits and recall of the whole analysis on simulated screens with a known truth, per setting.

  python benchmarks/calibration.py                        # every setting (~5 s a screen on one core at D = 64)
  python benchmarks/calibration.py --replicates 20 --settings iid edge-axis actives-hard --workers 2

Every screen runs `report.analyze_screen` (Table 1, cross-fitted efficacy, dose-response, hits, mAP) on an
RxRx19a-like layout: 2 cell lines x 4 plates, 24 compounds x 6 doses, 16 C+ and 16 C- wells per plate,
3 sites per well, every well at a 384-well position (`gandl.analysis.feature_screens.layout`). Settings:
  noise-D          i.i.d. N(0, 1) features of D dims, no control separation
  plate-noise-224  the same plus a random offset per plate (sd 1) and per well (sd 0.5), 224 dims
  shuffled-real    a real synthetic screen's handcrafted features (its own layout), rows shuffled among the
                   sites of each plate: plate effects stay, every control and compound effect goes
  and every `feature_screens.SETTINGS` entry (C+ = C- + delta, true rescue per compound x dose; `--dim` wide
  unless the setting fixes its own, e.g. off-axis at 512), described in its `description`.
Printed per setting: screens run; the share with >= 1 false hit (a hit whose true rescue stays below 0.5,
or that is cytotoxic) and its 95 % Clopper-Pearson upper bound: on a null setting, the FDR the hit list
promises to keep at 5 %; the mean false discovery proportion; the share of all hits whose true rescue is
below the threshold; hits per screen; the median over screens of the plates' median robust Z′ (the plate QC's:
how strong the assay is, in the terms a screener uses); recall per rescue level (non-cytotoxic pairs with true
rescue >= level called); seconds. Settings are cheap (default 100 screens) unless wider than 224 dims (20).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from scipy import stats

from gandl.analysis import calibration, markup, report
from gandl.data.synthetic import feature_screens

NOISE_SETTINGS = ("noise-32", "noise-224", "noise-512", "noise-5376", "plate-noise-224", "shuffled-real")
SETTINGS = NOISE_SETTINGS + tuple(feature_screens.SETTINGS)
RECALL_LEVELS = tuple(level for level in feature_screens.LEVELS if level >= feature_screens.THRESHOLD)
CHEAP_DIM = 224


def real_screen(seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Handcrafted features of a synthetic screen (4 plates per line, 2 sites per well, 12 compounds, 32 px)."""
    from gandl.data import images, rxrx
    from gandl.data.synthetic import layouts
    from gandl.features import handcrafted

    with tempfile.TemporaryDirectory() as folder:
        root = layouts.write_rxrx19a(folder, seed=seed, image_size=32, plates_per_cell_line=4, sites_per_well=2,
                                     num_compounds=12)
        screen = rxrx.read_rxrx19a(str(root))
        return handcrafted.features(images.read_site_images(screen.paths)), screen.metadata


def setting_dim(setting: str, dim: int) -> int | None:
    """Feature width a setting runs at (None: the real screen's own)."""
    if setting in feature_screens.SETTINGS:
        return feature_screens.SETTINGS[setting].dim or dim
    return None if setting == "shuffled-real" else int(setting.split("-")[-1])


def simulate(setting: str, seed: int, dim: int, real: tuple | None, separation: float | None = None
             ) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame, report.AnalysisConfig]:
    """(features, metadata, truth, analysis config) of one screen of a setting (`separation`: its |delta|, in well
    sds, instead of the setting's: the assay's strength)."""
    rng = np.random.default_rng(seed)
    if setting in feature_screens.SETTINGS:
        chosen = feature_screens.SETTINGS[setting]
        chosen = dataclasses.replace(chosen, separation=separation) if separation else chosen
        features, meta, truth = feature_screens.screen(chosen, setting_dim(setting, dim), rng)
        return features, meta, truth, report.AnalysisConfig(**chosen.analysis)
    if setting == "shuffled-real":
        features, meta = feature_screens.shuffle_within_plates(real[0], real[1], rng), real[1]
    else:
        meta = feature_screens.layout(seed=seed)
        sds = dict(plate_sd=1.0, well_sd=0.5) if setting == "plate-noise-224" else {}
        features = feature_screens.null_features(meta, setting_dim(setting, dim), rng, **sds)
    return features, meta, feature_screens.null_truth(meta), report.AnalysisConfig()


def replicate(seed: int, setting: str, dim: int, real: tuple | None, separation: float | None = None
              ) -> dict[str, float]:
    features, meta, truth, config = simulate(setting, seed, dim, real, separation)
    outcome = report.analyze_screen(features, meta, config, draw=False)
    plates = outcome.get("qc_plates")  # the assay's strength as a screener knows it: its plates' Z′
    z_prime = float(plates["z_prime_robust"].median()) if plates is not None and len(plates) else float("nan")
    return calibration.hit_metrics(outcome, truth, RECALL_LEVELS) | {"z_prime": z_prime}


def summary(metrics: pd.DataFrame) -> dict[str, object]:
    """One table row from the per-screen metrics of a setting (screens whose hit task was skipped left out)."""
    ran = metrics.dropna(subset=["hits"])
    n, k = len(ran), int(ran["any_false"].sum())
    upper = stats.binomtest(k, n).proportion_ci(0.95, method="exact").high if n else float("nan")
    row = {"screens": n, "skipped": len(metrics) - n,
           ">=1 false hit (95% upper)": f"{k / n:.3f} ({upper:.3f})" if n else "—",
           "mean FDP": ran["fdp"].mean(),
           "hits below threshold": ran["below"].sum() / ran["hits"].sum() if ran["hits"].sum() else float("nan"),
           "hits per screen": ran["hits"].mean(), "median plate Z′ (robust)": metrics["z_prime"].median()}
    return row | {key: ran[key].mean() for key in metrics if key.startswith("recall")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, help="screens per setting (default: 100, 20 above 224 dims)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--dim", type=int, default=64, help="feature width of the simulated settings")
    parser.add_argument("--workers", type=int, default=1, help="screens analysed in parallel processes")
    parser.add_argument("--separation", type=float, help="C- to C+ distance in well sds of the simulated settings "
                        "(default: each setting's, 3): how strong the assay is")
    args = parser.parse_args()
    real = real_screen() if "shuffled-real" in args.settings else None
    rows = []
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        mapper = pool.map if args.workers > 1 else map  # the pool starts no process until used
        for setting in args.settings:
            start = time.perf_counter()
            width = setting_dim(setting, args.dim)
            replicates = args.replicates or (100 if width is not None and width <= CHEAP_DIM else 20)
            run = functools.partial(replicate, setting=setting, dim=args.dim, real=real, separation=args.separation)
            metrics = pd.DataFrame(list(mapper(run, range(replicates))))
            rows.append(dict(setting=setting, **summary(metrics), seconds=round(time.perf_counter() - start)))
            print(f"{setting}: done in {rows[-1]['seconds']} s", flush=True)
    print("\n" + markup.markdown_table(pd.DataFrame(rows), False))


if __name__ == "__main__":
    main()
