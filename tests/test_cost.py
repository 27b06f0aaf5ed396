"""gandl.cost: TPU types as topologies, XLA's compiled memory and FLOPs of the tiny model's programs for a TPU v3-8
(compiled here, without a TPU: libtpu from the `tpu` extra), the report cache, and the refusal of a config whose
programs do not fit in HBM."""

import dataclasses
import os
import subprocess
import sys

import jax
import pytest

from gandl import check, cost, sharding, sweep
from gandl.sweep import REPO_ROOT

pytestmark = pytest.mark.slow  # not in the inner loop (tests/conftest.py)

requires_libtpu = pytest.mark.skipif(
    cost.libtpu_version() is None,
    reason="libtpu is not installed (pip install -e '.[tpu]'), so nothing can be compiled for a TPU here")


@pytest.mark.parametrize("tpu_type, topology, devices", [
    ("v2-8", "v2:2x2", 8), ("v3-8", "v3:2x2", 8), ("v3-32", "v3:4x4", 32), ("v3-128", "v3:8x8", 128),
    ("v4-8", "v4:2x2x1", 4), ("v4-16", "v4:2x2x2", 8), ("v4-32", "v4:2x2x4", 16), ("v4-64", "v4:2x4x4", 32),
    ("v5p-8", "v5p:2x2x1", 4), ("v5p-128", "v5p:4x4x4", 64), ("v5litepod-8", "v5e:2x4", 8),
    ("v5litepod-16", "v5e:4x4", 16), ("v5litepod-32", "v5e:4x8", 32), ("v6e-8", "v6e:2x4", 8),
    ("v6e-256", "v6e:16x16", 256), ("v6e-1", "v6e:1x1", 1),
])
def test_tpu_types_name_their_topologies(tpu_type, topology, devices):
    tpu = cost.tpu_slice(tpu_type)
    assert (tpu.topology, tpu.num_devices) == (topology, devices)
    assert check.device_count(tpu_type) == devices


@pytest.mark.parametrize("bad, message", [("v3-12", "12 is not a power-of-two number of TensorCores"),
                                          ("v9-8", "expected a device count"), ("v3", "expected a device count")])
def test_a_tpu_type_that_does_not_exist_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        cost.tpu_slice(bad)


def test_the_roofline_bound_and_the_amortised_schedule():
    m = cost.Measured("step", batch=32, num_devices=8, fixed_bytes=0, argument_bytes=0, output_bytes=0,
                      alias_bytes=0, temp_bytes=0, code_bytes=0, flops=61.5e12, bytes_accessed=90e9,
                      xla_seconds=0.0, compile_seconds=0.0)
    r = cost.roofline(m, cost.CHIPS["v3"])  # a v3 core: 61.5 TFLOP/s, 450 GB/s
    assert r.flops_seconds == pytest.approx(1.0) and r.bytes_seconds == pytest.approx(0.2)
    assert (r.seconds, r.bound_by) == (r.flops_seconds, "FLOPs")
    t = sweep.call_in_file(os.path.join(REPO_ROOT, "configs", "rxrx19a.py"), "get_config").train
    assert (t.r1_interval, t.pl_interval) == (16, 4)
    assert cost.regularised_fraction(t) == 1 / 16
    t.pl_interval = 3
    assert cost.regularised_fraction(t) == 1 / 48
    t.update(r1_gamma=0.0, lipschitz_weight=0.0)
    assert cost.regularised_fraction(t) == 1 / 3


def test_the_largest_batch_scales_what_is_not_fixed():
    m = cost.Measured("embed", batch=16, num_devices=8, fixed_bytes=100, argument_bytes=100 + 8, output_bytes=2,
                      alias_bytes=0, temp_bytes=90, code_bytes=0, flops=1.0, bytes_accessed=1.0, xla_seconds=0.0,
                      compile_seconds=0.0)
    # 100 fixed bytes, 100 bytes per 2 images per device: 1,000 usable bytes hold 18 per device, 144 in all.
    assert m.largest_batch(1000, lambda b: b % 8 == 0) == 144
    assert m.largest_batch(1000, lambda b: b % 64 == 0) == 128
    assert m.largest_batch(150, lambda b: b % 8 == 0) == 8
    assert m.largest_batch(100, lambda b: b % 8 == 0) == 0
    # The code, and a donated state as XLA lays it out (larger than its logical bytes), do not grow either.
    m = dataclasses.replace(m, argument_bytes=300 + 8, alias_bytes=300, output_bytes=300 + 2, code_bytes=50)
    assert m.largest_batch(1000 + 250, lambda b: b % 8 == 0) == 144


def test_the_estimate_reports_sizes_flops_and_memory(tiny_config):
    report = cost.estimate(tiny_config, note="nothing was compiled")
    assert (report.num_devices, report.resolution, report.num_channels) == (8, 16, 5)
    assert report.g_params > 10_000 and report.d_params > 10_000
    # Every phase costs more than the discriminator's forward pass alone, which is what an embedding is.
    assert report.step_flops_per_image > 10 * report.embed_flops_per_image > 0
    params_bytes = 4 * (2 * report.g_params + report.d_params)  # G, its EMA, D
    assert report.step_bytes_per_device > 3 * params_bytes  # + Adam moments + activations
    assert report.embed_bytes_per_device > 4 * report.d_params
    text = str(report)
    assert "config check passed for 8 device(s)" in text and "GFLOP per image" in text
    assert "nothing was compiled: the memory below is an estimate" in text and "GiB per device (estimate)" in text


def test_without_libtpu_the_check_falls_back_to_the_estimate(tiny_config, monkeypatch):
    monkeypatch.setattr(cost, "libtpu_version", lambda: None)
    report = check.run(tiny_config, "v3-8", ("step", "embed"))
    assert isinstance(report, cost.Estimate)
    assert 'libtpu is not installed (pip install -e ".[tpu]"), so nothing was compiled for v3-8' in str(report)


@pytest.fixture(scope="module")
def compiled_v3(tiny_config, tmp_path_factory):
    """The tiny model's three programs compiled for a TPU v3-8, with every executable XLA built for them."""
    if cost.libtpu_version() is None:
        pytest.skip("libtpu is not installed (pip install -e '.[tpu]'), so nothing can be compiled for a TPU here")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("GANDL_COST_CACHE", str(tmp_path_factory.mktemp("cost_cache")))
    executables = []
    compile_lowered = jax.stages.Lowered.compile

    def compile_and_keep(self, *args, **kwargs):
        executables.append(compile_lowered(self, *args, **kwargs))
        return executables[-1]

    monkeypatch.setattr(jax.stages.Lowered, "compile", compile_and_keep)
    tpu = cost.tpu_slice("v3-8")
    ok = dict(step=lambda b: b % 8 == 0, main_step=lambda b: b % 8 == 0, embed=lambda b: b % 8 == 0)
    report = cost.compile_report(tiny_config, tpu, ("embed", "step", "main_step"), ok)
    monkeypatch.setattr(jax.stages.Lowered, "compile", compile_lowered)
    yield report, executables, ok
    monkeypatch.undo()


@requires_libtpu
def test_the_report_is_what_xla_compiled_for_the_tpu(compiled_v3, tiny_config):
    report, executables, _ = compiled_v3
    assert list(report.programs) == ["step", "main_step", "embed"]  # in PROGRAMS order, whatever was asked
    assert not report.over() and report.tpu.chip.kind == "TPU v3"
    # 15.48 GiB of a v3 core's 16 GiB: XLA's own figure, from the probe program that exceeds it.
    assert 15 * cost.GIB < report.usable_bytes < 16 * cost.GIB
    assert len(executables) == 3  # step, main_step, embed (the HBM probe failed to compile, as it should)
    for (name, c), executable in zip(report.programs.items(), executables, strict=True):
        mem, m = executable.memory_analysis(), c.measured
        assert (m.argument_bytes, m.temp_bytes, m.output_bytes, m.alias_bytes, m.code_bytes) == (
            mem.argument_size_in_bytes, mem.temp_size_in_bytes, mem.output_size_in_bytes,
            mem.alias_size_in_bytes, mem.generated_code_size_in_bytes), name
        assert m.flops == executable.cost_analysis()["flops"] > 0
        assert m.total_bytes == m.argument_bytes + m.output_bytes - m.alias_bytes + m.temp_bytes + m.code_bytes
        assert m.num_devices == 8 and not c.cached
    step, main, embed = (report.programs[p].measured for p in ("step", "main_step", "embed"))
    mesh = sharding.make_mesh(list(cost.devices(report.tpu)))
    state = cost.abstract_state(tiny_config, mesh)
    image = 16 * 16 * 5 * 4
    # Arguments per core: the whole (replicated) train state and this core's 2 of the 16 images, as laid out in
    # the TPU's tiles (padded: more than their logical bytes); the new state is written into the donated one.
    assert step.argument_bytes == main.argument_bytes > cost.tree_bytes(state) + 2 * image
    assert cost.tree_bytes(state) == step.fixed_bytes < step.alias_bytes < step.argument_bytes
    assert embed.argument_bytes > cost.tree_bytes(state.d_params) + 2 * image and embed.alias_bytes == 0
    # Per image: the regularisers cost on top of the main phases, which cost far more than D's forward pass.
    assert step.per_image(step.flops) > main.per_image(main.flops) > 10 * embed.per_image(embed.flops)
    text = str(report)
    assert "config check passed for v3-8 (8 x TPU v3, topology v3:2x2): compiled by XLA" in text
    assert "train step, every phase due" in text and "a lower bound on time" in text
    assert "61.5 TFLOP/s and 450 GB/s of HBM" in text and "every phase due on 1 step in 4" in text


@requires_libtpu
def test_compiling_for_a_tpu_leaves_no_pod_environment_to_the_processes_started_after(compiled_v3):
    """libtpu writes CLOUD_TPU_TASK_ID and others with setenv(), which child processes inherit: a sweep's runs
    started afterwards took themselves for pod workers and died in jax.distributed.initialize."""
    probe = "from gandl import sharding; print(sharding.initialize_distributed('auto'))"
    child = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 and child.stdout.strip() == "False", child.stderr[-2000:]


@requires_libtpu
def test_a_second_check_comes_from_the_report_cache(compiled_v3, tiny_config, monkeypatch):
    report, _, ok = compiled_v3

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(jax.stages.Lowered, "compile", no_compiling)
    monkeypatch.setattr(cost, "devices", no_compiling)  # not even libtpu's topology is needed
    again = cost.compile_report(tiny_config, report.tpu, ("step", "main_step", "embed"), ok)
    assert all(c.cached for c in again.programs.values())
    assert {p: c.measured for p, c in again.programs.items()} == {p: c.measured for p, c in report.programs.items()}
    assert "3 of 3 programs from the report cache" in str(again)
    # Anything that shapes a program is a new key: another batch, model, step setting or TPU.
    changed = tiny_config.copy_and_resolve_references()
    changed.train.r1_gamma = 0.5
    keys = {cost.cache_key(c, "step", 16, cost.tpu_slice(t)) for c, t in [(tiny_config, "v3-8"), (changed, "v3-8"),
                                                                          (tiny_config, "v4-8")]}
    keys.add(cost.cache_key(tiny_config, "step", 32, cost.tpu_slice("v3-8")))
    assert len(keys) == 4
    changed = tiny_config.copy_and_resolve_references()
    changed.train.steps = 99  # schedules the loop, not the step
    assert cost.cache_key(changed, "step", 16, report.tpu) == cost.cache_key(tiny_config, "step", 16, report.tpu)


@requires_libtpu
def test_a_batch_too_large_for_hbm_is_refused_with_one_that_fits(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("GANDL_COST_CACHE", str(tmp_path))
    big = 2**25  # 4 M images of 16 x 16 x 5 per core: XLA needs ~216 GiB for them
    config = tiny_config.copy_and_resolve_references()
    config.embed.batch_size = big
    with pytest.raises(check.ConfigCheckError) as info:
        check.run(config, "v3-8", ("embed",))
    (failure,) = info.value.failures
    assert failure.startswith(f"embed.batch_size={big}: the embedding batch needs ")
    assert "of HBM XLA can use on a TPU v3 device (v3-8, 8 devices); use embed.batch_size=" in failure
    fits = int(failure.rsplit("=", 1)[1])
    assert 2**20 < fits < big and fits % 8 == 0
    config.embed.batch_size = fits  # compiled while refusing: it fits, and comes from the report cache
    report = check.run(config, "v3-8", ("embed",))
    assert report.programs["embed"].cached and not report.over()
    assert report.programs["embed"].measured.total_bytes <= report.usable_bytes


@requires_libtpu
def test_main_checks_for_a_tpu_and_a_second_check_is_instant(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, GANDL_COST_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "gandl.main", "--config", "tests/tiny_config.py", "--workdir",
               str(tmp_path / "w"), "--mode", "check", "--devices=v5litepod-8", "--compile=embed"]
    first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "config check passed for v5litepod-8 (8 x TPU v5 lite, topology v5e:2x4)" in first.stdout
    assert "embedding batch" in first.stdout and "train step" not in first.stdout
    assert "compiling the embedding batch (batch 16) for v5litepod-8" in first.stderr
    second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert "1 of 1 programs from the report cache" in second.stdout and "compiling" not in second.stderr
    assert not (tmp_path / "w").exists()
    bad = subprocess.run([*command[:-2], "--devices=v3-12"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0 and "12 is not a power-of-two number of TensorCores" in bad.stderr
    assert "Traceback" not in bad.stderr
