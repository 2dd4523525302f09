"""Optional compiled kernels (mamba-ssm's scan, the causal-conv1d package): import once, fall back when absent."""

from __future__ import annotations

import logging
from typing import Callable, Optional

logger = logging.getLogger(__name__)

# What a missing or broken install raises on import (no package, no CUDA libraries, ABI mismatch).
IMPORT_FAILURES = (ImportError, OSError, RuntimeError)


def try_import(importer: Callable[[], Callable], what: str, fallback: str) -> Optional[Callable]:
    """``importer()``, or None when the kernel is not usable here.

    ImportError/OSError/RuntimeError mean "not available" and are logged at INFO; any other exception propagates.

    Args:
        importer: imports and returns the kernel function.
        what: the kernel's name, for the log line.
        fallback: what runs instead, for the log line.
    """
    try:
        return importer()
    except IMPORT_FAILURES as err:
        logger.info("%s unavailable (%s: %s); using %s", what, type(err).__name__, err, fallback)
        return None
