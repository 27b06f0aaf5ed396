"""The `gandl` command as a user meets it: --help at once, mistakes in one line before anything slow."""

import importlib.util
import os
import subprocess
import sys

import pytest

from gandl.data.synthetic import layouts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the console script runs, saying at exit whether TensorFlow or JAX were loaded (the slow part of a start).
GANDL = [sys.executable, "-c", "import atexit, sys; atexit.register(lambda: print('gandl-loaded:', sorted(m for m in "
         "('tensorflow', 'jax') if m in sys.modules), file=sys.stderr)); from gandl.main import run; run()"]
NOTHING_SLOW = "gandl-loaded: []"


def _gandl(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([*GANDL, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def _error_line(out: subprocess.CompletedProcess, status: int = 1) -> str:
    """The run's one error line (stderr holds TensorFlow's start-up chatter besides it); `status`: 2 for a mistake in
    the config or the command line, 1 for one in the data."""
    assert out.returncode == status, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("gandl: ")]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


def test_help_answers_at_once_without_loading_tensorflow_or_jax():
    out = _gandl("--help")
    assert out.returncode == 0 and "--config" in out.stdout and "--mode" in out.stdout, out.stderr
    assert NOTHING_SLOW in out.stderr, out.stderr[-2000:]
    loaded = subprocess.run([sys.executable, "-c", "import sys; import gandl.main; "
                             "print(sorted(m for m in ('tensorflow', 'jax', 'pandas') if m in sys.modules))"],
                            capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    assert loaded == "[]"


@pytest.mark.parametrize("args,expected", [
    (("--config", "configs/no_such.py"), "gandl: --config=configs/no_such.py: cannot load it ([Errno 2] No such file"),
    (("--config", "configs/demo.py", "--config.data.kindd=generic"),
     "gandl: a --config override cannot apply: 'kindd' Did you mean \"kind\""),
    (("--config", "configs/demo.py", "--config.screen.preset=rxrx19b"),
     "gandl: screen.preset='rxrx19b': no such preset; known: rxrx19a, rxrx19a_uv, rxrx1, generic"),
    (("--config", "configs/demo.py", "--config.embed.well_aggregate=max"),
     "gandl: embed.well_aggregate='max': expected one of ['median', 'mean']"),
])
def test_config_mistakes_are_one_line(args, expected, tmp_path):
    out = _gandl(*args, "--workdir", str(tmp_path), "--mode", "check")
    assert _error_line(out, status=2).startswith(expected)
    assert NOTHING_SLOW in out.stderr, out.stderr[-2000:]  # said before TensorFlow or JAX load


@pytest.mark.slow
def test_data_mistakes_are_one_line_before_the_model_is_traced(tmp_path):
    root = layouts.write_cell_painting(tmp_path / "screen", image_size=16, plates=1, sites_per_well=1)
    csv = str(root / "metadata.csv")

    def check(data_root: str, *overrides: str) -> subprocess.CompletedProcess:
        return _gandl("--config", "configs/demo.py", "--workdir", str(tmp_path / "run"), "--mode", "check",
                      "--config.data.kind=generic", f"--config.data.root={data_root}",
                      "--config.zeroshot.enabled=False",
                      "--config.data.channel_columns=('FileName_DNA', 'FileName_Actin', 'FileName_RNA')",
                      "--config.screen.plate=Metadata_Plate", "--config.screen.well=Metadata_Well",
                      "--config.screen.site=Metadata_Site", *overrides)

    wrong_root = check("/no/such/screen.csv")
    assert _error_line(wrong_root) == "gandl: /no/such/screen.csv: no such file"
    channels = check(csv)  # the demo's 5-channel model on a 3-channel screen
    assert _error_line(channels).startswith(f"gandl: model.num_channels=5: {csv} has 3 channels ('FileName_DNA', ")
    assert _error_line(channels).endswith("set model.num_channels=3")
    query = check(csv, "--config.model.num_channels=3", "--config.screen.negative=compound == 'DMSO'")
    assert _error_line(query).startswith("gandl: screen.negative=\"compound == 'DMSO'\" names column 'compound', which "
                                         "the metadata lacks (columns: site_id, well_id, Metadata_Plate, ")
    for out in (wrong_root, channels, query):
        assert "train step" not in out.stdout  # refused before the config check traced anything


@pytest.mark.slow
def test_modes_that_run_no_model_trace_nothing(tmp_path):
    out = _gandl("--config", "configs/demo.py", "--workdir", str(tmp_path), "--mode", "analyze")
    assert "config check passed (--mode analyze runs no model: nothing traced)" in out.stdout, out.stderr[-3000:]
    assert _error_line(out) == f"gandl: no embeddings in {tmp_path}/embeddings: run mode=embed first"
    preview = _error_line(_gandl("--config", "configs/demo.py", "--workdir", str(tmp_path), "--mode", "preview"))
    assert preview.startswith(f"gandl: {tmp_path}/shards: no converted shards there (no manifest.json); run --mode "
                              "convert first")


@pytest.mark.parametrize("args,expected", [
    (("--mode", "train", "--devices", "8"), "--devices simulates devices for --mode check only"),
    (("--mode", "check", "--devices", "v3-8", "--compile", "step,stepp"), "--compile: unknown programs ['stepp']"),
    (("--mode", "check", "--devices", "v3-12"), "12 is not a power-of-two number of TensorCores"),
])
@pytest.mark.slow
def test_device_flag_mistakes_are_said_before_any_work(args, expected, tmp_path):
    out = _gandl("--config", "configs/demo.py", "--workdir", str(tmp_path), *args)
    assert expected in _error_line(out, status=2)
    assert "config check" not in out.stdout and not os.listdir(tmp_path)


# What libtpu prints when JAX starts its TPU backend on a machine without a TPU (the `tpu` extra installed).
LIBTPU_NOISE = ("Failed to find host bounds for accelerator type", "unexpected worker hostname")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (the `tpu` extra): JAX starts without its lines anyway")
def test_no_libtpu_start_up_lines_without_a_tpu(tmp_path):
    """A CPU or GPU user's first screen holds none of libtpu's start-up lines: where no TPU chip is attached,
    `gandl` keeps JAX from trying the TPU backend (`sharding.skip_absent_tpu`). JAX_PLATFORMS, which the tests
    set to cpu (conftest) and which would hide them too, is left out, as a user's shell has it."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
    out = subprocess.run([*GANDL, "--config", "configs/demo.py", "--workdir", str(tmp_path), "--mode", "analyze"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert "config check passed" in out.stdout, out.stderr[-3000:]  # JAX started (on the CPU) and the check ran
    assert _error_line(out) == f"gandl: no embeddings in {tmp_path}/embeddings: run mode=embed first"
    for line in LIBTPU_NOISE:
        assert line not in out.stderr, out.stderr[-3000:]
