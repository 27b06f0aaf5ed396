"""Two processes × 2 CPU devices under jax.distributed on localhost, against one process with 8 devices.

The processes run `gandl.main` itself. Launch 1 trains, each process reading its own half of the shards,
until a SIGTERM to one process makes both save a checkpoint at the same step; one process on 8 devices,
fed the same rows, must reach the same parameters from that checkpoint (which also covers the device
count, 4 vs 8). Launch 2 restores the checkpoint on both processes and exports
embeddings, gathered into one file that must equal a one-process export. Every launch compiles afresh:
a persistent compilation cache does not carry over between multi-process CPU launches.
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

from gandl import embed, errors, sharding
from gandl.data import pipeline
from gandl.defaults import Config
from gandl.features import discriminator
from gandl.models.config import ModelConfig
from gandl.train import checkpoint, loop
from gandl.train import state as state_lib

pytestmark = pytest.mark.slow  # not in the inner loop (tests/conftest.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "tiny_config.py")
PROCESSES, LOCAL_DEVICES = 2, 2
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir, mode: str, **overrides) -> list[subprocess.Popen]:
    """Start the processes of one multi-process `gandl.main` run; each logs to workdir/<mode>_<i>.log."""
    port = _free_port()
    procs = []
    for i in range(PROCESSES):
        xla_flags = re.sub(r"device_count=\d+", f"device_count={LOCAL_DEVICES}", os.environ["XLA_FLAGS"])
        env = dict(os.environ, XLA_FLAGS=xla_flags,
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(PROCESSES),
                   JAX_PROCESS_ID=str(i), TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, "-m", "gandl.main", f"--config={CONFIG}", f"--workdir={workdir}", f"--mode={mode}",
               *[f"--config.{k}={v}" for k, v in overrides.items()]]
        with open(os.path.join(workdir, f"{mode}_{i}.log"), "w") as log:
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _logs(workdir, mode: str) -> list[str]:
    out = []
    for i in range(PROCESSES):
        with open(os.path.join(workdir, f"{mode}_{i}.log")) as f:
            out.append(f.read())
    return out


def _fail(procs: list[subprocess.Popen], workdir, mode: str, why: str) -> None:
    for p in procs:
        p.kill()
    pytest.fail(why + "".join(f"\n--- process {i}:\n{log[-3000:]}" for i, log in enumerate(_logs(workdir, mode))))


def _wait(procs: list[subprocess.Popen], workdir, mode: str) -> list[int]:
    """Exit statuses of all processes; on a timeout kill them all and fail with their logs."""
    deadline = time.time() + TIMEOUT_S
    try:
        return [p.wait(timeout=max(deadline - time.time(), 1)) for p in procs]
    except subprocess.TimeoutExpired:
        _fail(procs, workdir, mode, f"timed out after {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def common(shards_dir) -> dict:
    """Overrides of tests/tiny_config.py: 8 px crops and a 1-layer mapping, which compile fast.

    R1, the Lipschitz penalty and path length stay on (all three run at step 0), so their gradients'
    all-reduce and the path-length batch split over devices are covered too.
    """
    return {"data.shards": shards_dir, "data.crop_size": 8, "model.resolution": 8, "model.mapping_layers": 1,
            "zeroshot.enabled": False, "embed.feature_sets": ("gandl",)}


@pytest.fixture(scope="module")
def run(common, tmp_path_factory):
    """(workdir, stop step) of a two-process training run stopped by a SIGTERM to process 1."""
    workdir = tmp_path_factory.mktemp("two_processes")
    procs = _launch(workdir, "train", **common, **{"train.steps": 100_000, "train.log_every": 1})
    deadline = time.time() + TIMEOUT_S
    while not re.search(r"step [2-9]/100000", _logs(workdir, "train")[1]):  # compiled and running
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            _fail(procs, workdir, "train", "the run did not get going")
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    codes = _wait(procs, workdir, "train")
    logs = _logs(workdir, "train")
    assert codes == [errors.EXIT_INTERRUPTED] * PROCESSES, logs
    stops = [re.findall(r"stopped at step (\d+)", log) for log in logs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops
    return workdir, int(stops[0][0])


def test_each_process_reads_its_own_files(shards_dir):
    spec = pipeline.open_shards(shards_dir)
    parts = [set(pipeline.process_files(spec, i, PROCESSES)) for i in range(PROCESSES)]
    assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == set(spec.files)


def test_sigterm_to_one_process_checkpoints_both_at_one_step(run):
    workdir, step = run
    assert 2 <= step < 100_000
    assert checkpoint.Checkpointer(str(workdir), 10).latest_step() == step


def test_two_processes_match_one(run, common, tiny_config, tmp_path):
    """One process, 8 devices, fed what the two processes read (process 0's rows, then process 1's)."""
    workdir, step = run
    cfg = tiny_config.copy_and_resolve_references()
    cfg.update_from_flattened_dict(dict(common, **{"train.steps": step}))
    spec = pipeline.open_shards(cfg.data.shards)
    settings = loop.TrainSettings.from_config(Config.from_mapping(cfg), str(tmp_path))
    streams = [loop.shard_input_fn(settings, spec, i, PROCESSES) for i in range(PROCESSES)]

    def both(start: int):
        return (np.concatenate(parts) for parts in zip(*(s(start) for s in streams)))

    single = loop.train(settings, str(tmp_path), input_fn=both, spec=spec)
    assert single.step == step and jax.device_count() == 8
    mesh = sharding.make_mesh()
    _, multi, _ = checkpoint.restore_run(str(workdir), mesh)
    with jax.set_mesh(mesh):
        start = state_lib.create(ModelConfig.of_run(cfg), cfg.train, cfg.seed, mesh)
    for name in ("g_params", "d_params", "ema_params"):
        init, one, two = (jax.device_get(getattr(s, name)) for s in (start, single.state, multi))
        one_update = np.concatenate([(b - a).ravel() for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(one))])
        two_update = np.concatenate([(b - a).ravel() for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(two))])
        # Summation order differs (gloo vs in-process all-reduce), Adam amplifies it; other data would not.
        assert np.linalg.norm(one_update - two_update) <= 0.05 * np.linalg.norm(one_update), name


def test_export_gathers_every_site_once(run, common, tmp_path):
    """Two-process export = one-process export of the same checkpoint, site for site."""
    workdir, step = run
    procs = _launch(workdir, "embed", **common)
    assert _wait(procs, workdir, "embed") == [0] * PROCESSES, _logs(workdir, "embed")
    folder = os.path.join(workdir, "embeddings", f"step_{step}")
    multi = np.load(os.path.join(folder, "gandl.npz"))
    spec = pipeline.open_shards(common["data.shards"])
    assert len(set(multi["site_id"])) == len(multi["site_id"]) == sum(spec.shard_sizes)
    per_process = [set(np.concatenate([np.load(p)["site_id"] for p in glob.glob(
        os.path.join(folder, "parts", "gandl", f"part-*-p{i:03d}.npz"))])) for i in range(PROCESSES)]
    assert per_process[0].isdisjoint(per_process[1]) and per_process[0] | per_process[1] == set(multi["site_id"])

    reference = tmp_path / "single"
    shutil.copytree(os.path.join(workdir, "checkpoints"), reference / "checkpoints")
    mesh = sharding.make_mesh()
    model, d_params, _, _ = embed.restore_discriminator(str(reference), mesh)
    single = embed.export(spec, str(reference / "embeddings"), {"gandl": discriminator.feature_fn(
        model, d_params, mesh)}, batch_size=16, provenance={},
        options=pipeline.InputOptions(crop_size=8), progress=False)
    single = np.load(single["gandl"])
    np.testing.assert_array_equal(multi["site_id"], single["site_id"])
    np.testing.assert_allclose(multi["features"], single["features"], rtol=1e-4, atol=1e-5)
