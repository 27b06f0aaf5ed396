"""Quiet by default: GAN-DL's INFO lines stay, orbax's INFO goes (unless --verbosity asks for it)."""

import logging as pylogging
import os
import subprocess
import sys
import textwrap

import pytest
from absl import logging as absl_logging

from gandl import console

SCRIPT = textwrap.dedent("""
    import sys

    import numpy as np
    from absl import app

    from gandl import console
    from gandl.data import stage as data_stage
    from gandl.defaults import Config, base_config
    from gandl.train import checkpoint


    def save(workdir):
        manager = checkpoint.Checkpointer(workdir, save_every=1, async_save=False)
        manager.save(1, {"w": np.zeros(3, np.float32)}, {"seed": 0}, force=True)  # orbax logs INFO here
        manager.close()


    def run(argv):
        save(sys.argv[1] + "/before")
        print("QUIET FROM HERE", file=sys.stderr, flush=True)
        console.quiet_third_party_logs()
        save(sys.argv[1] + "/after")
        cfg = base_config()
        cfg.synthetic.update(image_size=16, plates_per_cell_line=1, sites_per_well=1, num_compounds=3)
        cfg.data.update(image_size=16, num_workers=1)
        # GAN-DL logs its "N sites in M shards" line at INFO
        data_stage.convert_screen(Config.from_mapping(cfg), sys.argv[1])


    app.run(run, argv=[sys.argv[0], "--verbosity=0"])
""")


@pytest.mark.slow
def test_gandl_info_lines_stay_and_orbax_info_lines_go(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    before, after = out.stderr.split("QUIET FROM HERE")
    assert "checkpoint_manager.py" in before  # orbax's INFO lines, as a default run printed them
    assert "checkpoint_manager.py" not in after and "orbax" not in after.lower()
    assert " sites in " in after and "shards at" in after  # GAN-DL's own INFO line


def _record(pathname: str, level: int, message: str, error: BaseException | None = None) -> pylogging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return pylogging.LogRecord("absl", level, pathname, 1, message, (), exc_info)


def test_a_disk_fault_gandl_reports_is_not_also_shown_by_the_libraries_it_came_through(monkeypatch, capsys):
    """Issue #32: a full disk during a checkpoint save was one `gandl:` line after 400 lines of orbax's thread logs
    and asyncio tracebacks; those reports of the same fault go, any other error of a library stays."""
    handler = absl_logging.get_absl_handler()
    monkeypatch.setattr(handler, "filters", list(handler.filters))
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)  # the interpreter's own printers: the test reads stderr
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    console.quiet_third_party_logs()
    orbax = "/site-packages/orbax/checkpoint/_src/futures/future.py"
    full = ValueError("RESOURCE_EXHAUSTED: Error writing local file 'x': No space left on device [os_error_code='28']")
    wrapped = RuntimeError("Failed to run 4 Handler Commit operations")
    wrapped.__cause__ = full
    assert not handler.filter(_record(orbax, pylogging.ERROR, f"_SignalingThread.run() raised an exception: {full}"))
    assert not handler.filter(_record(orbax, pylogging.ERROR, "Failed to run 4 Handler Commit operations", wrapped))
    assert handler.filter(_record(orbax, pylogging.ERROR, "a save failed: the tree has no leaves"))
    assert handler.filter(_record(os.path.join(os.path.dirname(console.__file__), "main.py"), pylogging.ERROR,
                                  "No space left on device"))
    sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
    assert capsys.readouterr().err == ""
    sys.excepthook(ValueError, ValueError("a bug"), None)
    assert "ValueError: a bug" in capsys.readouterr().err
    for error in (RuntimeError("Event loop is closed"), ValueError("a leak")):  # raised where nothing can catch it

        class Unraisable:
            def __del__(self, error=error):
                raise error

        Unraisable()  # dropped at once: its __del__'s error goes to sys.unraisablehook
    err = capsys.readouterr().err
    assert "ValueError: a leak" in err and "Event loop is closed" not in err
