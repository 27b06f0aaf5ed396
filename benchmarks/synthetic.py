"""Synthetic screen throughput on one core: sites/s rendered, and written (5 PNGs + metadata) at 64 and 256 px.

Run: python benchmarks/synthetic.py [--sizes 64 256]. "cpu" columns divide by this process's CPU time, so
they stay meaningful when other jobs share the machine; "wall" is what a user waits.
"""

import argparse
import functools
import os

# One core: keep any threaded library from spreading the work.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from gandl.data.synthetic import cells, layouts  # noqa: E402


def _rate(fn, count: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def _render(line: str, size: int, n: int) -> None:
    plate = cells.sample_plate_effects(np.random.default_rng(0), len(cells.RXRX1_STAINS))
    for i in range(n):
        cells.render_site(np.random.default_rng(i), line, image_size=size, infection=(i % 3) / 2,
                          plate=plate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    print(f"{'size':>5} {'what':<28} {'sites':>6} {'wall sites/s':>13} {'cpu sites/s':>12}")
    for size in args.sizes:
        n = max(8, 120 * 64 * 64 // (size * size))
        for line in ("HRCE", "VERO"):
            wall, cpu = _rate(functools.partial(_render, line, size, n), n)
            print(f"{size:>5} {'render_site ' + line:<28} {n:>6} {wall:>13.1f} {cpu:>12.1f}")
        sites_per_well = 2 if size <= 128 else 1
        sites = 2 * (3 * len(layouts.DOSES_UM) + 17) * sites_per_well
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = _rate(functools.partial(
                layouts.write_rxrx19a, tmp, image_size=size, plates_per_cell_line=1, num_compounds=3,
                sites_per_well=sites_per_well), sites)
        print(f"{size:>5} {'write_rxrx19a (5 PNG/site)':<28} {sites:>6} {wall:>13.1f} {cpu:>12.1f}")


if __name__ == "__main__":
    main()
