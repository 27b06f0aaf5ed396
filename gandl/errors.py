"""Which faults are the user's (said in one line) and their exit statuses; everything else is a bug.

A launcher or script tells the classes apart by the status: a mistake in the config or the command line (2), one
in the data or a fault outside GAN-DL (1), a run stopped by SIGTERM, Ctrl-C or preemption (75, EX_TEMPFAIL: rerun
to resume). Nothing here imports a stage: an error class whose module never loaded was never raised.
"""

from __future__ import annotations

import sys

EXIT_DATA, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 75
# The user-facing errors (said in one line, not faults of the code) and their exit statuses; an unloaded module
# raised none.
_USER_ERRORS = ((("gandl.check", "ConfigCheckError"), EXIT_USAGE), (("gandl.data.screen", "SettingError"), EXIT_USAGE),
                (("gandl.train.checkpoint", "OptionsChanged"), EXIT_USAGE),
                (("gandl.data.screen", "MetadataError"), EXIT_DATA),
                (("gandl.data.images", "BadImageError"), EXIT_DATA),
                (("gandl.data.convert", "ConversionError"), EXIT_DATA),
                (("gandl.embed.records", "ExportError"), EXIT_DATA), (("gandl.fileio", "FileFault"), EXIT_DATA),
                # Outside faults: a full or read-only disk, a lost mount, a file another program holds.
                (("builtins", "OSError"), EXIT_DATA),
                (("tensorflow.python.framework.errors_impl", "PermissionDeniedError"), EXIT_DATA),
                (("tensorflow.python.framework.errors_impl", "ResourceExhaustedError"), EXIT_DATA),
                (("tensorflow.python.framework.errors_impl", "NotFoundError"), EXIT_DATA))


def exit_status(error: BaseException) -> int | None:
    """The exit status of a user-facing `error` (the first class of `_USER_ERRORS` it is), None for a bug."""
    for (module, name), status in _USER_ERRORS:
        if module in sys.modules and isinstance(error, getattr(sys.modules[module], name)):
            return status
    return None


def one_line(text: str) -> str:
    """A flag error as one line: config_flags puts the traceback of a config file that raised (a string set where
    ml_collections holds a number) in its message; its first line names the file, its last the field and value."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if "Traceback (most recent call last):" not in lines:
        return text
    return f"{lines[0].rstrip(':')} ({lines[-1]})"
