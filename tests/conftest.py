"""Shared test set-up: 8 simulated CPU devices, and small synthetic screens built once per session.

XLA's LLVM back end runs unoptimised (`--xla_backend_optimization_level=0`, inherited by the subprocesses and
notebook kernels the tests start): the suite is dominated by compiling tiny train steps, which this halves,
while convolutions and matmuls still run in XLA's precompiled kernels. HLO and its numerics are unchanged.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests run on the CPU, also where libtpu is installed (the `tpu` extra: it compiles for TPU topologies
# without initialising a TPU backend), which JAX would otherwise try to start first in every process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from gandl.defaults import Config


def pytest_configure(config):
    """The `slow` marker: end-to-end runs, subprocesses, notebooks, compiles and anything over ~10 s. The inner
    loop is `python -m pytest -m "not slow" -q tests`; CI runs everything."""
    config.addinivalue_line("markers", "slow: end-to-end, multi-process, notebook, compile or >10 s tests "
                                       "(deselect with -m \"not slow\")")


@pytest.fixture(scope="session")
def tiny_screen() -> dict:
    """Arguments of `synthetic.write_rxrx19a` for a small screen: both cell lines, all well kinds."""
    return dict(seed=0, image_size=32, plates_per_cell_line=1, sites_per_well=1, num_compounds=3)


@pytest.fixture(scope="session")
def rxrx19a_dir(tmp_path_factory, tiny_screen) -> str:
    """A small RxRx19a-layout synthetic screen (8-bit PNGs at 32 px), never modified by tests."""
    from gandl.data.synthetic import layouts

    return str(layouts.write_rxrx19a(tmp_path_factory.mktemp("rxrx19a"), **tiny_screen))


@pytest.fixture(scope="session")
def shards_dir(rxrx19a_dir, tmp_path_factory) -> str:
    """`rxrx19a_dir` converted to 16 px shards, never modified by tests."""
    from gandl.data import convert, rxrx

    out = str(tmp_path_factory.mktemp("shards"))
    convert.convert(rxrx.read_rxrx19a(rxrx19a_dir), out,
                    convert.ConvertOptions(image_size=16, sites_per_shard=16, num_workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_config():
    """tests/tiny_config.py; tests that share it share one compiled step."""
    import tiny_config

    return tiny_config.get_config()


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory) -> tuple:
    """(config, workdir, result) of the main job run once on a tiny budget, shared: tests must not change it.

    Two plates per cell line so that zero-shot and the plate-grouped folds have something to hold out.
    """
    from gandl import main

    cfg = tiny_config.copy_and_resolve_references()
    cfg.synthetic.update(seed=0, image_size=16, plates_per_cell_line=2, sites_per_well=1, num_compounds=3)
    cfg.zeroshot.synthetic.update(plates_per_cell_line=2, sites_per_well=1)
    cfg.data.update(image_size=16, sites_per_shard=64, num_workers=1)
    cfg.train.steps = 20
    cfg.analysis.update(n_splits=2, few_labels=(2,), few_label_draws=2)
    workdir = tmp_path_factory.mktemp("tiny_run")
    return cfg, workdir, main.run_all(Config.from_mapping(cfg), str(workdir))
