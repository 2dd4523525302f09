from .selective_scan import (ScanBackend, SelectiveScanInputError, selective_scan, selective_scan_chunked,
                             selective_scan_ref)
from .selective_scan_cpu import selective_scan_fused_cpu

__all__ = ["ScanBackend", "SelectiveScanInputError", "selective_scan", "selective_scan_chunked",
           "selective_scan_fused_cpu", "selective_scan_ref"]
