"""``python -m stabledub_core``: see :mod:`stabledub_core.cli`.

The signal handlers go in before the heavy imports (torch, PyAV, MediaPipe take seconds), so a Ctrl-C, SIGTERM or
SIGHUP in the first seconds is one line and exit status 130 too; nothing has been written yet, so the process just
ends. ``main`` then installs its own handlers.
"""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    os.write(2, b"stabledub: interrupted; no output written\n")
    os._exit(130)


if __name__ == "__main__":
    for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, _name):
            signal.signal(getattr(signal, _name), _interrupted_while_starting)
    from stabledub_core.cli.main import main

    sys.exit(main(hard_exit=True))
