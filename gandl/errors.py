"""Which faults are the user's (said in one line) and their exit statuses; everything else is a bug.

A launcher or script tells the classes apart by the status: a mistake in the config or the command line (2), one
in the data or a fault outside GAN-DL (1), a run stopped by SIGTERM, Ctrl-C or preemption (75, EX_TEMPFAIL: rerun
to resume). Every error that is the user's derives from `UserError` (a mistake in the config or the command line)
or `DataError` (in the data, or a fault outside GAN-DL), and says in its message what is wrong and what to do.
"""

from __future__ import annotations

import sys

EXIT_DATA, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 75


class UserError(Exception):
    """A mistake in the config or on the command line, said in one line (exit 2)."""

    status = EXIT_USAGE


class ConfigError(UserError):
    """A config that cannot run: the entry point names the config file before the message."""


class DataError(UserError):
    """Input data that cannot be used (a damaged, unfinished or foreign file, a metadata table that cannot describe
    a screen), said in one line (exit 1)."""

    status = EXIT_DATA


def exit_status(error: BaseException) -> int | None:
    """The exit status of a user-facing `error`, None for a bug.

    Besides GAN-DL's own errors (`UserError` and its subclasses), the faults outside it are the user's to mend: a
    lost mount, a file another program holds (OSError, and TensorFlow's file errors when it is loaded).
    """
    if isinstance(error, UserError):
        return error.status
    tf = sys.modules.get("tensorflow")
    outside = (OSError,) + ((tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError,
                             tf.errors.NotFoundError) if tf is not None and hasattr(tf, "errors") else ())
    return EXIT_DATA if isinstance(error, outside) else None


def one_line(text: str) -> str:
    """A flag error as one line: config_flags puts the traceback of a config file that raised (a string set where
    ml_collections holds a number) in its message; its first line names the file, its last the field and value."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if "Traceback (most recent call last):" not in lines:
        return text
    return f"{lines[0].rstrip(':')} ({lines[-1]})"
