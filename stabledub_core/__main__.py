"""``python -m stabledub_core``: see :mod:`stabledub_core.cli`."""

import sys

from stabledub_core.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
