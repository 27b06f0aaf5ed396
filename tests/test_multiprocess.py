"""Two processes × 4 CPU devices under jax.distributed on localhost, against one process with 8 devices.

The processes run `gandl.main` itself: each reads its own half of the shards, they train on one global
mesh, save and restore checkpoints together, stop together on a SIGTERM to one of them, and export
embeddings that are gathered into one file. A shared persistent compilation cache keeps relaunches cheap.
"""

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gandl import embed, main
from gandl.data import pipeline
from gandl.train import checkpoint, loop, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "tiny_config.py")
PROCESSES, LOCAL_DEVICES = 2, 4
TIMEOUT_S = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir, mode: str, cache: str, **overrides) -> list[subprocess.Popen]:
    """Start the processes of one multi-process `gandl.main` run; each logs to workdir/<mode>_<i>.log."""
    port = _free_port()
    procs = []
    for i in range(PROCESSES):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(PROCESSES),
                   JAX_PROCESS_ID=str(i), JAX_COMPILATION_CACHE_DIR=cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, "-m", "gandl.main", f"--config={CONFIG}", f"--workdir={workdir}", f"--mode={mode}",
               *[f"--config.{k}={v}" for k, v in overrides.items()]]
        with open(os.path.join(workdir, f"{mode}_{i}.log"), "w") as log:
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _log(workdir, mode: str, i: int) -> str:
    with open(os.path.join(workdir, f"{mode}_{i}.log")) as f:
        return f.read()


def _wait(procs: list[subprocess.Popen], workdir, mode: str) -> list[int]:
    """Exit statuses of all processes; on a timeout kill them all and fail with their logs."""
    deadline = time.time() + TIMEOUT_S
    try:
        return [p.wait(timeout=max(deadline - time.time(), 1)) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("\n".join(f"--- process {i}:\n{_log(workdir, mode, i)[-3000:]}" for i in range(len(procs))))


def _run(workdir, mode: str, cache: str, **overrides) -> None:
    procs = _launch(workdir, mode, cache, **overrides)
    codes = _wait(procs, workdir, mode)
    assert codes == [0] * PROCESSES, "\n".join(_log(workdir, mode, i)[-3000:] for i in range(PROCESSES))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def run(shards_dir, tmp_path_factory, cache):
    """A two-process training run: 10 steps (checkpoint), then relaunched to resume up to step 14."""
    workdir = tmp_path_factory.mktemp("two_processes")
    common = {"data.shards": shards_dir, "zeroshot.enabled": False, "train.steps": 10}
    _run(workdir, "train", cache, **common)
    assert checkpoint.Checkpointer(str(workdir), 10).latest_step() == 10
    _run(workdir, "train", cache, **dict(common, **{"train.steps": 14}))
    return workdir, common


def _restored(workdir) -> tuple:
    _, state, step = checkpoint.restore_run(str(workdir), sharding.make_mesh())
    return jax.device_get((state.g_params, state.d_params, state.ema_params, state.d_opt_state)), step


def test_each_process_reads_its_own_files(shards_dir):
    spec = pipeline.open_shards(shards_dir)
    parts = [set(pipeline.process_files(spec, i, PROCESSES)) for i in range(PROCESSES)]
    assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == set(spec.files)


def test_two_processes_match_one(run, tiny_config, tmp_path):
    """One process, 8 devices, fed what the two processes read (process 0's rows, then process 1's)."""
    workdir, common = run
    cfg = tiny_config.copy_and_resolve_references()
    cfg.update_from_flattened_dict(dict(common, **{"train.steps": 14}))
    spec = pipeline.open_shards(cfg.data.shards)
    streams = [loop.shard_input_fn(cfg, spec, i, PROCESSES) for i in range(PROCESSES)]

    def both(start: int):
        return (np.concatenate(parts) for parts in zip(*(s(start) for s in streams)))

    single = loop.train(cfg, str(tmp_path), input_fn=both, spec=spec)
    assert single.step == 14
    multi, step = _restored(workdir)
    assert step == 14
    ref = jax.device_get((single.state.g_params, single.state.d_params, single.state.ema_params,
                          single.state.d_opt_state))
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(multi)):  # Adam turns rounding into ~1e-4 drift
        assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(a) + 1e-6


def test_sigterm_to_one_process_stops_all_at_one_step(run, cache, tmp_path):
    source, common = run
    workdir = tmp_path / "preempted"
    shutil.copytree(source, workdir)
    procs = _launch(workdir, "train", cache, **dict(common, **{"train.steps": 100_000, "train.log_every": 2}))
    deadline = time.time() + TIMEOUT_S
    while not re.search(r"step (2\d|[3-9]\d|\d{3,})/100000", _log(workdir, "train", 1)):  # running past step 20
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail(_log(workdir, "train", 0)[-3000:] + _log(workdir, "train", 1)[-3000:])
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    assert _wait(procs, workdir, "train") == [main.EXIT_INTERRUPTED] * PROCESSES
    stops = [re.findall(r"stopped at step (\d+)", _log(workdir, "train", i)) for i in range(PROCESSES)]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops
    step = int(stops[0][0])
    assert 20 < step < 100_000
    assert checkpoint.Checkpointer(str(workdir), 10).latest_step() == step


def test_export_gathers_every_site_once(run, cache, tmp_path):
    """Two-process export = one-process export of the same checkpoint, site for site."""
    workdir, common = run
    _run(workdir, "embed", cache, **common)
    multi = np.load(os.path.join(workdir, "embeddings", "step_14", "gandl.npz"))
    reference = tmp_path / "single"
    shutil.copytree(os.path.join(workdir, "checkpoints"), reference / "checkpoints")
    spec = pipeline.open_shards(common["data.shards"])
    mesh = sharding.make_mesh()
    model, d_params, _, _ = embed.restore_discriminator(str(reference), mesh)
    single = embed.export(spec, str(reference / "embeddings"), {"gandl": embed.discriminator_features(
        model, d_params, mesh)}, batch_size=16, provenance={}, progress=False)
    single = np.load(single["gandl"])
    assert len(set(multi["site_id"])) == len(multi["site_id"]) == sum(spec.shard_sizes)
    per_process = [set(np.concatenate([np.load(p)["site_id"] for p in glob.glob(os.path.join(
        workdir, "embeddings", "step_14", "parts", "gandl", f"part-*-p{i:03d}.npz"))])) for i in range(PROCESSES)]
    assert per_process[0].isdisjoint(per_process[1]) and per_process[0] | per_process[1] == set(multi["site_id"])
    np.testing.assert_array_equal(multi["site_id"], single["site_id"])
    np.testing.assert_allclose(multi["features"], single["features"], rtol=1e-4, atol=1e-5)
