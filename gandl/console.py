"""What a command shows on its console: GAN-DL's own progress lines, not other libraries' INFO chatter, and a
disk fault once, in GAN-DL's own line (`gandl: <file>: cannot write it (...)`), not also in a library's tracebacks."""

from __future__ import annotations

import logging as pylogging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from absl import logging


class _OwnInfoOnly(pylogging.Filter):
    """Below WARNING, GAN-DL's own records only: other libraries' INFO would bury the progress lines."""

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the gandl package

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or record.pathname.startswith(self.package)


# How the OS, tensorstore and orbax word a failed write on a full or read-only disk (orbax and tensorstore wrap
# the OSError in a ValueError that keeps only its text).
DISK_FAULT = re.compile(r"os_error_code|RESOURCE_EXHAUSTED|PERMISSION_DENIED|No space left|Read-only file system|"
                        r"Permission denied")


def _chain(error: BaseException | None) -> str:
    """The text of an exception and of every exception it was raised from or while handling."""
    texts = []
    while error is not None and len(texts) < 16:
        texts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


class _DiskFaultsOnce(pylogging.Filter):
    """Another library's ERROR record of a disk fault: orbax logs a failed background save from each of its threads
    (with tracebacks) before the save's caller gets the error, which GAN-DL then reports in one line naming the
    checkpoint folder (`gandl.train.checkpoint`)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.levelno < pylogging.ERROR or record.pathname.startswith(_OwnInfoOnly.package):
            return True
        text = record.getMessage() + (_chain(record.exc_info[1]) if record.exc_info else "")
        return not DISK_FAULT.search(text)


def _after_a_failed_save(error: BaseException | None) -> bool:
    """tensorstore's callbacks of a save that failed, run after orbax closed the event loop they report to: each
    prints a traceback (as an unraisable exception), after the fault itself has been raised and said."""
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _skipping_closed_loops(hook: Callable[..., None], error_of: Callable[..., Any]) -> Callable[..., None]:
    """`hook` (sys.excepthook or sys.unraisablehook) but for `_after_a_failed_save`'s tracebacks."""
    def skipping(*args: Any) -> None:
        if not _after_a_failed_save(error_of(*args)):
            hook(*args)

    skipping.skips_closed_loops = True
    return skipping


def quiet_third_party_logs() -> None:
    """GAN-DL's INFO lines and progress bars stay; other libraries' INFO goes unless --verbosity > 0 asks; other
    libraries' reports of a disk fault GAN-DL reports itself go (`_DiskFaultsOnce`, `_after_a_failed_save`)."""
    handler = logging.get_absl_handler()
    wanted = [_DiskFaultsOnce] + ([_OwnInfoOnly] if logging.get_verbosity() <= logging.INFO else [])
    for kind in wanted:
        if not any(isinstance(added, kind) for added in handler.filters):
            handler.addFilter(kind())
    if not getattr(sys.excepthook, "skips_closed_loops", False):
        sys.excepthook = _skipping_closed_loops(sys.excepthook, lambda kind, error, tb: error)
    if not getattr(sys.unraisablehook, "skips_closed_loops", False):
        sys.unraisablehook = _skipping_closed_loops(sys.unraisablehook, lambda unraisable: unraisable.exc_value)
