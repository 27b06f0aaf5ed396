"""Memory and time of the export's gather and of the analysis at RxRx19a scale (305,520 sites × 512).

  python benchmarks/analysis.py                 # full size; --sites 30000 for a quick run

A synthetic screen laid out like RxRx19a (two cell lines, 4 sites per well, Mock/UV/Active controls,
compounds at six doses, a few of them effective) gets random 512-d features with the controls and the
effective compounds displaced along one direction. Its embedding parts are written as a two-process
export leaves them; then each phase runs in a fresh process, and the table reports its wall time and
peak resident memory (VmHWM; the part already held after importing TensorFlow, JAX and pandas is shown
apart), and what the phase adds as a multiple of the feature matrix itself:
  gather   parts -> embeddings npz + parquet + h5ad, and well profiles (parquet + h5ad): what process 0
           does at the end of an export
  analyze  npz -> Table 1, E2/C2 spaces, efficacy, dose-response, hits, phenotypic activity and
           consistency (copairs mAP on well profiles), report.md/html
and, within each phase, its steps (the Hill fits of every compound x cell line apart): each
step's seconds and peak memory, the peak counted from the step's start (the kernel's high-water mark is
reset through /proc/self/clear_refs), with "other" for what runs between them (loading, efficacy scores,
well means, the hit table's bookkeeping, the report's markup).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from gandl import embed, fileio
from gandl.data import rxrx

DOSES_UM = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # six half-log doses (µM)
SITES_PER_WELL, WELLS_PER_PLATE = 4, 308
PART_ROWS = 2048  # an export part: 32 batches of 64


def screen_metadata(num_sites: int, num_compounds: int, seed: int = 0) -> pd.DataFrame:
    """RxRx19a-shaped metadata: 93% HRCE / 7% VERO wells, 12% controls, compounds at six doses."""
    rng = np.random.default_rng(seed)
    wells = num_sites // SITES_PER_WELL
    cell = np.where(np.arange(wells) < int(wells * 0.93), "HRCE", "VERO")
    kind = rng.choice(["Mock", "UV Inactivated SARS-CoV-2", "Active SARS-CoV-2", "compound"], wells,
                      p=[0.04, 0.02, 0.06, 0.88])
    compound = rng.integers(0, num_compounds, wells)
    dose = rng.integers(0, len(DOSES_UM), wells)
    plate_of = np.arange(wells) // WELLS_PER_PLATE
    rows = np.repeat(np.arange(wells), SITES_PER_WELL)
    site = np.tile(np.arange(1, SITES_PER_WELL + 1), wells)
    experiment = np.char.add(np.char.add(cell[rows], "-"), (plate_of[rows] // 50 + 1).astype(str))
    plate = plate_of[rows] % 50 + 1
    index = (np.arange(wells) % WELLS_PER_PLATE)[rows]  # 384-well positions A01 .. P24, row by row
    letters = np.asarray(list("ABCDEFGHIJKLMNOP"))
    well = np.char.add(letters[index // 24], np.char.zfill((index % 24 + 1).astype(str), 2))
    well_id = np.char.add(np.char.add(np.char.add(experiment, "_"), plate.astype(str)), np.char.add("_", well))
    is_compound = kind[rows] == "compound"
    return pd.DataFrame({
        "site_id": np.char.add(np.char.add(well_id, "_"), site.astype(str)), "well_id": well_id,
        "cell_type": cell[rows], "experiment": experiment, "plate": plate, "well": well, "site": site,
        "disease_condition": np.where(is_compound, "Active SARS-CoV-2", kind[rows]),
        "treatment": np.where(is_compound, np.char.add("compound-", compound[rows].astype(str)), ""),
        "treatment_conc": np.where(is_compound, np.asarray(DOSES_UM)[dose[rows]], np.nan), "SMILES": ""})


def screen_features(meta: pd.DataFrame, dim: int, seed: int = 0) -> np.ndarray:
    """N(0, 1) features; healthy controls and the first 10 compounds (rising with dose) moved along one axis."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=dim).astype(np.float32)
    axis /= np.linalg.norm(axis)
    healthy = meta["disease_condition"].isin(["Mock", "UV Inactivated SARS-CoV-2"]).to_numpy()
    compound = meta["treatment"].str.removeprefix("compound-").replace("", "-1").astype(int).to_numpy()
    rescue = np.where((compound >= 0) & (compound < 10), np.log10(meta["treatment_conc"].fillna(1e-3)) + 2, 0)
    shift = 3.0 * (healthy + np.clip(rescue, 0, 2) / 2)
    features = np.empty((len(meta), dim), np.float32)
    for start in range(0, len(meta), 65536):  # in chunks: no N x D float64 temporary
        stop = min(start + 65536, len(meta))
        features[start:stop] = rng.standard_normal((stop - start, dim), np.float32)
        features[start:stop] += shift[start:stop, None].astype(np.float32) * axis
    return features


def write_parts(folder: str, meta: pd.DataFrame, features: np.ndarray, processes: int = 2) -> None:
    """The parts a `processes`-process export leaves: sites dealt out by process, then cut into parts."""
    meta = meta.assign(index=np.arange(len(meta), dtype=np.float64))
    for p in range(processes):
        rows = np.arange(p, len(meta), processes)
        for start in range(0, len(rows), PART_ROWS):
            chunk = rows[start:start + PART_ROWS]
            arrays = {c: meta[c].to_numpy()[chunk] for c in meta}
            arrays = {c: v.astype(str) if v.dtype.kind in "OU" else v.astype(np.float64) for c, v in arrays.items()}
            fileio.write_bytes(embed.part_path(folder, "gandl", start, start + len(chunk), p, processes),
                               embed.npz_bytes(dict(arrays, features=features[chunk])))


def peak_memory_gb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from a parent over exec)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 2**20


def reset_peak_memory() -> None:
    """Restart VmHWM from the current resident size (Linux: writing 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


STEPS = {
    "gather": (("gandl.profiles", "write_h5ad", "site h5ad"),
               ("gandl.profiles", "write_well_profiles", "well profiles (parquet + h5ad)")),
    "analyze": (("gandl.analysis.classify", "classify_controls", "Table 1 SVMs"),
                ("gandl.analysis.spaces", "fit_axes", "E2/C2 axes"),
                ("gandl.analysis.spaces", "coordinates", "E2/C2 coordinates"),
                ("gandl.analysis.hits", "correct_positions", "plate-position correction"),
                ("gandl.analysis.hits", "dose_tests", "rescue tests (moderated t, BH)"),
                ("gandl.analysis.hits", "well_off_axis", "off-axis distances"),
                ("gandl.analysis.efficacy", "fit_hills", "Hill fits"),
                ("gandl.analysis.activity", "phenotypic_activity", "mAP: phenotypic activity"),
                ("gandl.analysis.activity", "phenotypic_consistency", "mAP: phenotypic consistency"),
                *(("gandl.analysis.plots", name, "figures (matplotlib)") for name in
                  ("controls_figure", "compounds_figure", "dose_response_figure", "map_dose_figure",
                   "plate_maps_figure", "drift_figure")),
                ("gandl.analysis.report", "_write_outcome", "writing tables and figures")),
}


def timed_steps(phase: str) -> dict[str, list[float]]:
    """Wrap the analysis steps so that each call adds its seconds and peak GiB to the returned record."""
    import importlib

    record = {"other": [0.0, 0.0]}

    def wrap(label, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            record["other"][1] = max(record["other"][1], peak_memory_gb())
            reset_peak_memory()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds, peak = time.perf_counter() - start, peak_memory_gb()
                reset_peak_memory()
                total = record.setdefault(label, [0.0, 0.0])
                total[0], total[1] = total[0] + seconds, max(total[1], peak)
                record["other"][0] -= seconds
        return timed

    for module, name, label in STEPS[phase]:
        mod = importlib.import_module(module)
        setattr(mod, name, wrap(label, getattr(mod, name)))
    return record


def run_phase(phase: str, folder: str) -> dict:
    """One phase in this process; returns its time, and peak memory before (imports) and after it."""
    from gandl.analysis import io, report

    before = peak_memory_gb()
    start = time.perf_counter()
    if phase not in STEPS:
        raise ValueError(f"unknown phase {phase!r}")
    steps = timed_steps(phase)
    if phase == "gather":
        embed.gather(folder, "gandl", list(rxrx.RXRX19A_COLUMNS), {"feature_set": "gandl"})
    else:
        features, meta = io.load_embeddings(os.path.join(folder, "gandl.npz"))
        report.analyze({"GAN-DL": (features, meta)}, os.path.join(folder, "analysis"))
        hits = pd.read_csv(os.path.join(folder, "analysis", "GAN-DL", "hits.csv"))
        groups = len(pd.read_csv(os.path.join(folder, "analysis", "GAN-DL", "map_activity.csv")))
        steps["curves"] = [len(hits), int((hits["fit_status"] != "too_few_doses").sum()), groups]
    steps["other"][0] += time.perf_counter() - start
    steps["other"][1] = max(steps["other"][1], peak_memory_gb())
    seconds = time.perf_counter() - start
    peak = max([peak_memory_gb()] + [v[1] for k, v in steps.items() if k != "curves"])
    return dict(seconds=seconds, imports_gb=before, peak_gb=peak, steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=305_520)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--compounds", type=int, default=1670)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.folder)))
        return
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        meta = screen_metadata(args.sites, args.compounds)
        features = screen_features(meta, args.dim)
        write_parts(folder, meta, features)
        matrix_gb = features.nbytes / 2**30
        print(f"{len(meta):,} sites × {args.dim} features ({matrix_gb:.2f} GiB float32) written as parts in "
              f"{time.perf_counter() - start:.0f} s")
        del features
        rows = []
        for phase in ("gather", "analyze"):
            out = subprocess.run([sys.executable, __file__, "--phase", phase, "--folder", folder],
                                 capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"phase {phase} failed:\n{out.stderr[-4000:]}")
            rows.append((phase, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"\nGather and analysis of {args.sites:,} sites × {args.dim} features on {os.cpu_count()} CPU cores\n")
    print("| phase | seconds | peak memory (GiB) | of which imports | rest / feature matrix |")
    print("|---|---:|---:|---:|---:|")
    for phase, r in rows:
        rest = (r["peak_gb"] - r["imports_gb"]) / matrix_gb
        print(f"| {phase} | {r['seconds']:.0f} | {r['peak_gb']:.2f} | {r['imports_gb']:.2f} | {rest:.1f}x |")
    for phase, r in rows:
        steps = r["steps"]
        if phase == "analyze":
            curves, fitted, groups = steps.pop("curves")
            print(f"\nSteps of analyze ({curves:,} compound x cell line curves, {fitted:,} with 4+ doses fitted; "
                  f"{groups:,} compound x dose x cell line groups for mAP)\n")
        else:
            print(f"\nSteps of {phase}\n")
        print("| step | seconds | peak memory (GiB) |")
        print("|---|---:|---:|")
        for label, (seconds, peak) in steps.items():
            print(f"| {label} | {seconds:.1f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
