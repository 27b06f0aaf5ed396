"""False-call rates of the whole analysis on null screens, per setting, over many replicates.

  python benchmarks/calibration.py                      # 20 replicates of every setting (~25 min on 2 cores)
  python benchmarks/calibration.py --replicates 5 --settings noise-224 noise-512

Every setting runs `report.analyze_screen` (Table 1, cross-fitted efficacy, dose-response, hits, mAP) on
an RxRx19a-like layout (`gandl.analysis.calibration.layout`: 4 plates per cell line, 24 compounds x 6
doses, 16 C+ and 16 C- wells per plate, 3 sites per well) whose features carry no treatment effect:
  noise-D          i.i.d. N(0, 1) features of D dims
  plate-noise-224  the same plus a random offset per plate (sd 1) and per well (sd 0.5), 224 dims
  shuffled-real    a real synthetic screen's handcrafted features (its own layout), rows shuffled among the
                   sites of each plate: plate effects stay, every control and compound effect goes
Printed per setting, mean (max) over replicates: the fraction of compound x cell-line pairs called hits
(nominal FDR 5%: with every null true, the FDR is the chance of any call, so the mean fraction must be well
below it), the fraction of replicates with any hit, the fraction of dose tests with q < 0.05, of mAP groups
called active, and Table 1's C+ vs C- accuracy (chance 0.5).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd

from gandl.analysis import calibration, markup, report

SETTINGS = ("noise-32", "noise-224", "noise-512", "noise-5376", "plate-noise-224", "shuffled-real")


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


def replicate(setting: str, seed: int, layout: pd.DataFrame, real: tuple | None) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    if setting.startswith("noise-"):
        features, meta = calibration.null_features(layout, int(setting.split("-")[1]), rng), layout
    elif setting == "plate-noise-224":
        features, meta = calibration.null_features(layout, 224, rng, plate_sd=1.0, well_sd=0.5), layout
    else:
        features, meta = calibration.shuffle_within_plates(real[0], real[1], rng), real[1]
    return calibration.error_rates(report.analyze_screen(features, meta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    args = parser.parse_args()
    layout = calibration.layout()
    real = real_screen() if "shuffled-real" in args.settings else None
    rows = []
    for setting in args.settings:
        start = time.perf_counter()
        rates = pd.DataFrame([replicate(setting, seed, layout, real) for seed in range(args.replicates)])
        cells = {k: f"{rates[k].mean():.3f} ({rates[k].max():.3f})" for k in rates}
        rows.append(dict(setting=setting, replicates=len(rates), **cells,
                         seconds=round(time.perf_counter() - start)))
        print(f"{setting}: done in {rows[-1]['seconds']} s", flush=True)
    print("\n" + markup.markdown_table(pd.DataFrame(rows), False))


if __name__ == "__main__":
    main()
