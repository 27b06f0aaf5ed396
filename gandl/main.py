"""GAN-DL entry point: one config file, one workdir, one mode (`gandl` is `python -m gandl.main`).

  gandl --config configs/demo.py --workdir /tmp/gandl_demo --mode all

Modes: check, synth, convert, preview, train, embed, analyze, all (convert -> train -> embed -> analyze), each its
stage's runner (`runner`), given the typed config (gandl.defaults.Config) once the config and what the mode reads are
checked (`precheck`, gandl.check), in one line. Every mode resumes; one run per workdir; JAX loads with the mode."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's / XLA's C++ INFO lines: set before they load

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gandl import console, errors  # noqa: E402
from gandl.defaults import Config  # noqa: E402  (the typed config the stages receive: no JAX, no TensorFlow)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file; any of its fields can be "
                                          "overridden with --config.FIELD=VALUE, e.g. --config.data.root=/data/screen",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (local or gs://).")
_MODE = flags.DEFINE_enum("mode", "all", ["check", "synth", "convert", "preview", "train", "embed", "analyze", "all"],
                          "What to run; every mode checks the config (and the data it reads) first, `check` only "
                          "that.")
_DEVICES = flags.DEFINE_string("devices", "", "Check for this many devices (8) or a TPU type (v3-8), simulated on "
                               "this CPU; '' = the devices JAX finds here.")
_COMPILE = flags.DEFINE_list("compile", ["step", "main_step", "embed"],
                             "With --mode check and a TPU type in --devices (and libtpu installed): the programs XLA "
                             "compiles for its topology: step (every phase due), main_step, embed; '' for none "
                             "(the traced estimate). Results are kept in a report cache ($GANDL_COST_CACHE).")


def run_train(config: Config, workdir: str):
    """The train stage, with the probe (above train: handed over here) when train.probe_every asks."""
    from gandl import probe
    from gandl.train import stage

    return stage.run(config, workdir, probe.Probe.from_config(config, workdir) if config.train.probe_every else None)


def run_all(config: Config, workdir: str) -> dict | None:
    """convert -> train -> embed -> analyze, each resuming; None when training was interrupted (preemption)."""
    runner("convert")(config, workdir)
    if run_train(config, workdir).stopped_early:
        return None
    runner("embed")(config, workdir)
    return runner("analyze")(config, workdir)


def runner(mode: str) -> Callable[[Config, str], object]:
    """The stage runner `(config, workdir)` of a mode, its module imported only now."""
    from gandl.data import stage as data_stage

    if mode in ("embed", "analyze"):
        from gandl.analysis import stage as analysis_stage
        from gandl.embed import stage as embed_stage

        return (embed_stage if mode == "embed" else analysis_stage).run
    return {"synth": data_stage.synthesize, "convert": data_stage.convert_screen, "preview": data_stage.preview,
            "train": run_train, "all": run_all}[mode]


def _fail(message: str, status: int) -> NoReturn:
    """End the command with `message` as its one line on stderr and `status`."""
    print(f"gandl: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def precheck(config: ml_collections.ConfigDict, workdir: str, mode: str) -> Config:
    """What `mode` will read, checked before anything slow: the raw screen named by data.root, its schema and
    channels (the synthetic one is checked as it is converted), the shards, the ground truth analysis.truth names;
    every field's rule first (a mistake in the config is said before one in the data); the typed config."""
    from gandl.data import screen

    screen.from_config(config.screen.to_dict(), config.data.kind)  # a preset or field that does not exist
    if mode in ("check", "embed", "all"):
        screen.check_aggregate(config.embed.well_aggregate)
    from gandl import check

    typed = check.check_fields(config)
    if mode in ("check", "convert", "all") and typed.data.root:
        screen.read_configured(typed)
    if mode in ("check", "analyze", "all") and typed.analysis.truth:
        from gandl.analysis import stage

        stage.read_truth(typed, workdir)
    if mode in ("preview", "train", "embed"):
        from gandl import workdir as layout
        from gandl.data import pipeline

        pipeline.open_records(layout.shards(typed.data.shards, workdir), typed.data.rxrx1_utils_image_size)
    return typed


def _config(name: str = "config") -> ml_collections.ConfigDict:
    """The --config file's config; a file that cannot be loaded is said in one line."""
    try:
        _CONFIG.value.keys()  # a config file that failed to load raises on first use
    except OSError as error:
        file = config_flags.get_config_filename(flags.FLAGS[name])
        _fail(f"--{name}={file}: cannot load it ({str(error).strip().splitlines()[-1].strip()})", errors.EXIT_USAGE)
    return _CONFIG.value


def _check_flags(mode: str) -> None:
    """--devices and --compile before anything loads (a mistake: exit 2); `gandl.cost` (JAX) for a TPU type only."""
    if _DEVICES.value and mode != "check":
        _fail("--devices simulates devices for --mode check only", errors.EXIT_USAGE)
    if _DEVICES.value and not _DEVICES.value.isdigit():
        from gandl import cost

        if unknown := sorted(set(_COMPILE.value) - set(cost.PROGRAMS)):
            _fail(f"--compile: unknown programs {unknown}; choose from {', '.join(cost.PROGRAMS)}", errors.EXIT_USAGE)
        cost.tpu_slice(_DEVICES.value)  # a ValueError for a type that does not exist


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]} (try --help)", errors.EXIT_USAGE)
    console.quiet_third_party_logs()
    mode = _MODE.value
    try:
        _check_flags(mode)
    except ValueError as error:
        _fail(str(error), errors.EXIT_USAGE)
    config = _config()
    try:
        typed = precheck(config, _WORKDIR.value, mode)
        from gandl import sharding

        sharding.skip_absent_tpu()  # no libtpu start-up lines where there is no TPU (the `tpu` extra installed)
        from gandl import check  # a config that cannot run here fails now, with every reason

        report = check.run(config, _DEVICES.value, tuple(_COMPILE.value),
                           traced=mode in ("check", "train", "embed", "all"))  # the modes that run the model
        print(report or f"config check passed (--mode {mode} runs no model: nothing traced)", flush=True)
        if mode == "check":
            return
        import jax  # started by the check (with jax.distributed when configured): the first process holds the lock

        from gandl import workdir as layout

        with layout.locked(_WORKDIR.value, mode, hold=jax.process_index() == 0):
            result = runner(mode)(typed, _WORKDIR.value)
    except Exception as error:
        status = errors.exit_status(error)
        if status is None:
            raise
        named = isinstance(error, errors.ConfigError)  # about the config file: named first
        _fail(f"{config_flags.get_config_filename(flags.FLAGS['config']) + ': ' if named else ''}{error}", status)
    except KeyboardInterrupt:  # every stage resumes: what was written stays
        print(f"gandl: --mode {mode} interrupted (Ctrl-C); rerun to resume", file=sys.stderr)
        sys.exit(errors.EXIT_INTERRUPTED)
    if (mode == "train" and result.stopped_early) or (mode == "all" and result is None):
        logging.warning("training stopped early (SIGTERM, Ctrl-C or preemption) with a checkpoint; rerun to resume")
        sys.exit(errors.EXIT_INTERRUPTED)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; --help on stdout (exit 0), flag or config-override mistakes in one line."""
    if any(arg in ("-h", "-?", "--help", "--helpshort") for arg in argv[1:]):
        print(__doc__)
        print(flags.FLAGS.module_help(sys.modules[__name__]))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(f"{errors.one_line(str(error))} (try --help)", errors.EXIT_USAGE)
    except Exception as error:  # noqa: BLE001 (a --config.field override the config lacks, or a value it cannot take)
        cause = error
        while cause.args and isinstance(cause.args[0], BaseException):  # config_flags wraps the KeyError it met
            cause = cause.args[0]
        text = cause.args[0] if cause.args and isinstance(cause.args[0], str) else str(cause)
        _fail(f"a --config override cannot apply: {' '.join(text.split())}", errors.EXIT_USAGE)


def run() -> None:
    """The `gandl` command."""
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
