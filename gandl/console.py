"""What a command shows on its console: GAN-DL's own progress lines, and not other libraries' INFO chatter."""

from __future__ import annotations

import logging as pylogging
import os

from absl import logging


class _OwnInfoOnly(pylogging.Filter):
    """Below WARNING, GAN-DL's own records only: other libraries' INFO would bury the progress lines."""

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the gandl package

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or record.pathname.startswith(self.package)


def quiet_third_party_logs() -> None:
    """GAN-DL's INFO lines and progress bars stay; other libraries' INFO goes unless --verbosity > 0 asks."""
    if logging.get_verbosity() <= logging.INFO:
        handler = logging.get_absl_handler()
        if not any(isinstance(added, _OwnInfoOnly) for added in handler.filters):
            handler.addFilter(_OwnInfoOnly())
