from .selective_scan import (ScanBackend, SelectiveScanInputError, selective_scan, selective_scan_chunked,
                             selective_scan_ref)

__all__ = ["ScanBackend", "SelectiveScanInputError", "selective_scan", "selective_scan_chunked", "selective_scan_ref"]
