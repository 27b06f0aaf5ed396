"""Input throughput: conversion (decode + downscale + write) and the train pipeline (decode + augment + batch).

  python benchmarks/input_pipeline.py            # prints a markdown table

Sources are synthetic RxRx19a sites written as 8-bit PNGs at 4x the output size (1024 px -> 256 px is
the real RxRx19a case). Conversion is timed in one process: shards are independent, so it scales with
worker processes (each pays a few seconds of TensorFlow start-up once). The pipeline is timed with
tf.data limited to one thread and with every core.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

from gandl._tf import tf
from gandl.data import convert, pipeline, rxrx
from gandl.data.screen import Screen
from gandl.data.synthetic import layouts


def _convert_rate(screen: Screen, out: str, size: int, workers: int) -> float:
    start = time.perf_counter()
    options = convert.ConvertOptions(image_size=size, sites_per_shard=8, num_workers=workers)
    convert.convert(screen, out, options, progress=False)
    return screen.num_sites / (time.perf_counter() - start)


def _pipeline_rate(shards: str, threads: int, batch: int, batches: int) -> float:
    ds = pipeline.train_dataset(pipeline.open_shards(shards), pipeline.InputOptions(shuffle_buffer=256),
                                batch_size=batch, seed=0)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    it = ds.with_options(options).as_numpy_iterator()
    next(it)  # warm-up: graph tracing, file opening
    start = time.perf_counter()
    for _ in itertools.islice(it, batches):
        pass
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256", help="output sizes in px")
    parser.add_argument("--plates", type=int, default=1, help="plates per cell line in the source screen")
    parser.add_argument("--batches", type=int, default=40, help="pipeline batches timed per row")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            src = layouts.write_rxrx19a(os.path.join(tmp, f"raw{size}"), image_size=4 * size, sites_per_well=1,
                                        plates_per_cell_line=args.plates, num_compounds=3)
            screen = rxrx.read_rxrx19a(str(src))
            shards = os.path.join(tmp, f"shards{size}")
            rate = _convert_rate(screen, shards, size, workers=1)
            rows.append(("convert", f"{4 * size} -> {size}", "1 process", rate, rate))
            for threads in sorted({1, cores}):
                rate = _pipeline_rate(shards, threads, batch=32, batches=args.batches)
                rows.append(("train pipeline", f"{size}", f"{threads} thread(s)", rate, rate / threads))
    print(f"\nInput throughput on {cores} CPU core(s), {screen.num_sites} sites per screen\n")
    print("| stage | px | parallelism | sites/s | sites/s per core |")
    print("|---|---|---|---:|---:|")
    for stage, px, par, rate, per_core in rows:
        print(f"| {stage} | {px} | {par} | {rate:.1f} | {per_core:.1f} |")


if __name__ == "__main__":
    main()
